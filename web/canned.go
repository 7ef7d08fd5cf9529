package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"mailgate/audit"
	"mailgate/store"
	"mailgate/tickets"
)

// Canned replies: texts an admin keeps per queue, which agents insert into a reply with the
// ticket's fields filled in. They are sealed like everything else that may quote customers.
const (
	bCanned        = "web_canned" // U64(id) → sealed JSON cannedReply
	maxCannedBytes = 16 << 10
	maxCannedTitle = 80
)

type cannedReply struct {
	ID    uint64 `json:"id"`
	Queue string `json:"queue"`
	Title string `json:"title"`
	Text  string `json:"text"`
}

// cannedFields are the placeholders a canned reply may use.
var cannedFields = []string{"{{customer_name}}", "{{customer_email}}", "{{ticket}}", "{{subject}}", "{{agent}}"}

// fill puts the ticket's values into text. A customer without a verified name is greeted by
// address: a spoofer's chosen display name must not be echoed back as if it were theirs.
func fillCanned(text string, t *tickets.Ticket, agent string) string {
	name := t.Customer
	if p, ok := t.Participant(t.Customer); ok && p.Verified && p.Name != "" {
		name = p.Name
	}
	return strings.NewReplacer("{{customer_name}}", name, "{{customer_email}}", t.Customer,
		"{{ticket}}", strconv.FormatUint(t.ID, 10), "{{subject}}", t.Subject, "{{agent}}", agent).Replace(text)
}

func (s *Server) cannedList(queue string) ([]cannedReply, error) {
	var out []cannedReply
	err := s.opts.DB.View(func(tx *store.Tx) error {
		return tx.ForEach(bCanned, func(_, v []byte) error {
			var c cannedReply
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			if queue == "" || c.Queue == queue {
				out = append(out, c)
			}
			return nil
		})
	})
	return out, err
}

type cannedView struct {
	base
	Replies []cannedReply
	Queues  []string
	Fields  []string
}

func (s *Server) cannedPage(w http.ResponseWriter, r *http.Request) {
	if !s.isAdmin(w, r) {
		return
	}
	s.showCanned(w, r, http.StatusOK, &cannedView{})
}

func (s *Server) showCanned(w http.ResponseWriter, r *http.Request, status int, v *cannedView) {
	notice, msg := v.Notice, v.Error
	v.base = s.base(r, "Canned replies")
	v.Notice, v.Error = notice, msg
	var err error
	if v.Replies, err = s.cannedList(""); err != nil {
		s.internalError(w, r, "list canned replies", err)
		return
	}
	for _, q := range s.opts.Tickets.Queues() {
		v.Queues = append(v.Queues, q.Name)
	}
	v.Fields = cannedFields
	s.render(w, r, status, "canned", v)
}

func (s *Server) cannedPost(w http.ResponseWriter, r *http.Request) {
	if !s.isAdmin(w, r) {
		return
	}
	a := info(r).actor
	f := r.PostForm
	v := &cannedView{}
	switch f.Get("action") {
	case "add":
		c := cannedReply{Queue: f.Get("queue"), Title: strings.TrimSpace(f.Get("title")), Text: strings.ReplaceAll(f.Get("text"), "\r\n", "\n")}
		queues := []string{}
		for _, q := range s.opts.Tickets.Queues() {
			queues = append(queues, q.Name)
		}
		switch {
		case !slices.Contains(queues, c.Queue):
			v.Error = "Choose one of the queues."
		case c.Title == "" || utf8.RuneCountInString(c.Title) > maxCannedTitle || !utf8.ValidString(c.Title):
			v.Error = fmt.Sprintf("Give the reply a title of 1 to %d characters.", maxCannedTitle)
		case strings.TrimSpace(c.Text) == "" || len(c.Text) > maxCannedBytes || !utf8.ValidString(c.Text):
			v.Error = fmt.Sprintf("Write the reply's text (at most %d kB).", maxCannedBytes>>10)
		}
		if v.Error != "" {
			s.showCanned(w, r, http.StatusBadRequest, v)
			return
		}
		err := s.opts.DB.Batch(func(tx *store.Tx) error {
			id, err := tx.NextSeq(bCanned)
			if err != nil {
				return err
			}
			c.ID = id
			b, _ := json.Marshal(c)
			return tx.Put(bCanned, store.U64(id), b)
		})
		if err != nil {
			s.internalError(w, r, "save canned reply", err)
			return
		}
		s.webEvent(r, a.Name, "canned.add", audit.OK, fmt.Sprintf("id=%d queue=%s title=%s", c.ID, c.Queue, strconv.QuoteToASCII(c.Title)))
		v.Notice = "Canned reply “" + c.Title + "” added to " + c.Queue + "."
	case "delete":
		id, ok := parseID(f.Get("id"), 1)
		if !ok {
			s.errorPage(w, r, http.StatusBadRequest, "Unknown canned reply.")
			return
		}
		if err := s.opts.DB.Batch(func(tx *store.Tx) error { return tx.Delete(bCanned, store.U64(id)) }); err != nil {
			s.internalError(w, r, "delete canned reply", err)
			return
		}
		s.webEvent(r, a.Name, "canned.delete", audit.OK, fmt.Sprintf("id=%d", id))
		v.Notice = "Canned reply deleted."
	default:
		s.errorPage(w, r, http.StatusBadRequest, "Unknown action.")
		return
	}
	s.showCanned(w, r, http.StatusOK, v)
}

// canned loads reply id for queue ("" when it is not one of the queue's).
func (s *Server) canned(id uint64, queue string) (cannedReply, bool) {
	var c cannedReply
	var ok bool
	s.opts.DB.View(func(tx *store.Tx) error {
		v, err := tx.Get(bCanned, store.U64(id))
		if err == nil && v != nil && json.Unmarshal(v, &c) == nil && c.Queue == queue {
			ok = true
		}
		return nil
	})
	return c, ok
}
