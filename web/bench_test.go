package web

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"mailgate/access"
)

// benchGet serves path to the logged-in client c without touching its cookie map, so it may run
// in parallel.
func benchGet(b *testing.B, e *env, c *client, path string) {
	r := httptest.NewRequest(http.MethodGet, "http://mailgate.test"+path, nil)
	r.RemoteAddr = c.remote
	r.AddCookie(&http.Cookie{Name: sessionCookie, Value: c.cookies[sessionCookie]})
	w := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		b.Fatalf("GET %s: %d", path, w.Code)
	}
}

// ticketWith20 makes a ticket with 20 messages: the customer's mail (with an HTML part) and
// alternating notes and replies.
func ticketWith20(b *testing.B, e *env) uint64 {
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true,
		body: strings.Repeat("Where is my order? It was due last week.\n", 20),
		html: "<p>" + strings.Repeat("Where is my <b>order</b>? ", 50) + "</p>"})
	admin := access.Actor{Name: "setup", Role: access.RoleAdmin}
	for i := 2; i <= 20; i++ {
		text := strings.Repeat("We are looking into it, step "+strconv.Itoa(i)+".\n", 10)
		var err error
		if i%2 == 0 {
			_, err = e.tk.AddNote(admin, id, text)
		} else {
			_, err = e.tk.Reply(admin, id, text)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return id
}

// BenchmarkTicketPage renders a ticket of 20 messages: session check, the audited read (one
// group-committed write), and the template.
func BenchmarkTicketPage(b *testing.B) {
	e := newEnv(b)
	id := ticketWith20(b, e)
	c := e.loggedIn("alice", access.RoleAgent, "support")
	path := "/tickets/" + strconv.FormatUint(id, 10)
	b.ReportAllocs()
	for b.Loop() {
		benchGet(b, e, c, path)
	}
}

// BenchmarkTicketPageParallel is the same page under concurrent load: audited reads share commits.
func BenchmarkTicketPageParallel(b *testing.B) {
	e := newEnv(b)
	id := ticketWith20(b, e)
	c := e.loggedIn("alice", access.RoleAgent, "support")
	path := "/tickets/" + strconv.FormatUint(id, 10)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchGet(b, e, c, path)
		}
	})
}

// BenchmarkTicketPageHTML renders the same ticket with the sanitised HTML part shown.
func BenchmarkTicketPageHTML(b *testing.B) {
	e := newEnv(b)
	id := ticketWith20(b, e)
	c := e.loggedIn("alice", access.RoleAgent, "support")
	path := "/tickets/" + strconv.FormatUint(id, 10) + "?html=1"
	b.ReportAllocs()
	for b.Loop() {
		benchGet(b, e, c, path)
	}
}

// BenchmarkTicketList renders the first page (50 rows) of a queue of 500 tickets.
func BenchmarkTicketList(b *testing.B) {
	e := newEnv(b)
	for i := 0; i < 500; i++ {
		e.ingest(mail{from: "c" + strconv.Itoa(i) + "@customer.example", subject: "Question " + strconv.Itoa(i), verified: true})
	}
	c := e.loggedIn("alice", access.RoleAgent, "support")
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchGet(b, e, c, "/tickets")
		}
	})
}
