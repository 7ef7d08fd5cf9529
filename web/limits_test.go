package web

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHostHeader performs DNS rebinding: requests that name a foreign host are refused with 421
// on every page; hostname, allowed_hosts, the connected address and localhost on loopback pass.
func TestHostHeader(t *testing.T) {
	e := newEnv(t)
	e.cfg.Web.AllowedHosts = []string{"Support.Example.COM."}
	var err error
	e.srv, err = New(e.srv.opts) // the allowed names are read at New
	if err != nil {
		t.Fatal(err)
	}
	c := e.client()
	for host, want := range map[string]int{
		"mailgate.test":            200,
		"MAILGATE.test.":           200,
		"mailgate.test:8443":       200,
		"support.example.com":      200,
		"attacker.example":         421,
		"mailgate.test.attacker":   421,
		"127.0.0.1":                421, // no connection here, so no address it could be
		"localhost":                421,
		"attacker.example:80":      421,
		"[2001:db8::1]:443":        421,
		"mailgate.test@attacker":   421,
		"xn--mailgate-test.evil":   421,
		"support.example.com.evil": 421,
	} {
		c.host = host
		for _, p := range []string{"/login", "/healthz", "/tickets", "/static/style.css"} {
			w := c.get(p)
			if got := w.Code == http.StatusMisdirectedRequest; got != (want == 421) {
				t.Errorf("Host %q %s: %d, want 421 = %v", host, p, w.Code, want == 421)
			}
		}
	}
}

// TestHostHeaderOverTCP checks the same against the real listener, where the connected address
// is known: 127.0.0.1 and localhost pass on loopback (dev mode), a rebinding name does not.
func TestHostHeaderOverTCP(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	defer e.srv.Shutdown(context.Background())
	_, port, _ := net.SplitHostPort(l.Addr().String())
	for host, want := range map[string]int{
		"127.0.0.1:" + port:       200,
		"localhost:" + port:       200,
		"127.0.0.2:" + port:       421,
		"rebind.attacker.example": 421,
		"mailgate.test:" + port:   200,
	} {
		req, _ := http.NewRequest("GET", "http://"+l.Addr().String()+"/healthz", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %q: %d %q, want %d", host, resp.StatusCode, body, want)
		}
	}
}

// TestServeMaxConns fills [web] max_conns with idle connections: the next client reads 503 at
// once, not a hang; when a slot frees, pages answer again.
func TestServeMaxConns(t *testing.T) {
	e := newEnv(t)
	e.cfg.Web.MaxConns = 4
	var err error
	e.srv, err = New(e.srv.opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	defer e.srv.Shutdown(context.Background())
	var idle []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	for e.srv.Conns().Open() < 4 { // the accept loop runs on its own goroutine
		time.Sleep(time.Millisecond)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many connections") {
		t.Fatalf("over max_conns: %d %q", resp.StatusCode, body)
	}
	idle[0].Close()
	for e.srv.Conns().Open() > 3 {
		time.Sleep(time.Millisecond)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	r2, err := client.Get("http://" + l.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusOK {
		t.Fatalf("after a slot freed: %d", r2.StatusCode)
	}
}

// TestServeBusyClosesIdle: once 3/4 of [web] max_conns are taken, keep-alive connections parked
// between requests are closed instead of holding their slot for the idle timeout.
func TestServeBusyClosesIdle(t *testing.T) {
	e := newEnv(t)
	e.cfg.Web.MaxConns = 4
	var err error
	e.srv, err = New(e.srv.opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	defer e.srv.Shutdown(context.Background())
	parked, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer parked.Close()
	parked.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(parked)
	io.WriteString(parked, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 || resp.Close {
		t.Fatalf("first request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	for range 2 { // 3 of 4: busy
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the parked keep-alive connection is still open while busy: %v", err)
	}
}
