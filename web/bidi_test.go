package web

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailgate/access"
	"mailgate/config"
	"mailgate/inbound"
	"mailgate/internal/dnsmock"
)

// hiddenRunes are the characters that must never survive in an attachment name: bidi
// overrides, embeddings, isolates and marks, the Arabic letter mark, zero-width space, BOM.
var hiddenRunes = "\u202A\u202B\u202C\u202D\u202E\u2066\u2067\u2068\u2069\u200E\u200F\u061C\u200B\uFEFF"

// TestAttachmentNameBidiViaSMTP (issue 11.5): "invoice\u202Efdp.exe" arrives through the real
// SMTP server. Shown raw it reads "invoiceexe.pdf"; stored, on the page and in the download's
// Content-Disposition it must read "invoicefdp.exe", the real extension last.
func TestAttachmentNameBidiViaSMTP(t *testing.T) {
	e := newEnv(t)
	cfg := config.Default()
	cfg.Hostname = "mx.mailgate.test"
	cfg.Queues = []config.Queue{{Name: "support", Address: "support@example.com"}}
	srv := inbound.NewServer(cfg, e.tk, &inbound.Verifier{Resolver: &dnsmock.Resolver{}, Timeout: 5 * time.Second},
		inbound.ServerOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})

	// Both ways a client may name the file: RFC 2231 (filename*) and an RFC 2047 word.
	for i, disp := range []string{
		"attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe",
		"attachment; filename=\"=?UTF-8?Q?invoice=E2=80=AE=E2=81=A6fdp=E2=80=8F.exe?=\"",
	} {
		msg := "From: carol@customer.example\r\nTo: support@example.com\r\nSubject: invoice " + strconv.Itoa(i) +
			"\r\nMessage-ID: <bidi" + strconv.Itoa(i) + "@customer.example>\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
			"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: " + disp + "\r\n\r\nMZ\r\n--B--\r\n"
		c, err := smtp.Dial(l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SendMail("carol@customer.example", []string{"support@example.com"}, strings.NewReader(msg)); err != nil {
			t.Fatalf("send: %v", err)
		}
		c.Close()
	}

	agent := e.loggedIn("alice", access.RoleAgent, "support")
	for id := uint64(1); id <= 2; id++ {
		path := "/tickets/" + strconv.FormatUint(id, 10)
		_, msgs, err := e.tk.Get(access.Actor{Name: "t", Role: access.RoleAdmin}, id)
		if err != nil || len(msgs) != 1 || len(msgs[0].Attachments) != 1 {
			t.Fatalf("ticket %d: %v %+v", id, err, msgs)
		}
		if got := msgs[0].Attachments[0].Name; got != "invoicefdp.exe" {
			t.Errorf("ticket %d: stored name %q", id, got)
		}
		page := agent.get(path).Body.String()
		mustContain(t, "page", page, ">invoicefdp.exe</a>")
		if strings.ContainsAny(page, hiddenRunes) || strings.Contains(page, "&#8238;") {
			t.Errorf("ticket %d: the page holds a bidi control", id)
		}
		w := agent.get(path + "/messages/1/attachments/0")
		cd := w.Header().Get("Content-Disposition")
		if w.Code != 200 || cd != `attachment; filename="invoicefdp.exe"; filename*=UTF-8''invoicefdp.exe` {
			t.Errorf("ticket %d: download %d, Content-Disposition %q", id, w.Code, cd)
		}
	}
}
