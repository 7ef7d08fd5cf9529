package smtp

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// mailgate: a command handled after the session ended (a pipelined RCPT behind the error
// that closed the connection, say) must not call a method on a nil Session.
func TestCommandAfterSessionEnded(t *testing.T) {
	for _, tc := range []struct{ name, cmd, arg string }{
		{"MAIL", "MAIL", "FROM:<a@example.org>"},
		{"RCPT", "RCPT", "TO:<b@example.org>"},
		{"DATA", "DATA", ""},
		{"BDAT", "BDAT", "0 LAST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server, client := net.Pipe()
			defer client.Close()
			c := newConn(server, NewServer(nil))
			c.helo = "client.example.org"
			c.fromReceived = true
			c.recipients = []string{"b@example.org"}
			// c.session is nil: the state Close leaves behind.
			got := make(chan string, 1)
			go func() {
				client.SetReadDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(client) // until the server closes
				got <- string(b)
			}()
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("%s with no session panicked: %v", tc.cmd, p)
					}
				}()
				c.handle(tc.cmd, tc.arg)
			}()
			c.Close()
			// Upstream's own recover answers "421 4.0.0 Internal server error" after the panic.
			if reply := <-got; !strings.HasPrefix(reply, "421 4.4.0 ") {
				t.Fatalf("%s with no session answered %q, want 421 4.4.0", tc.cmd, reply)
			}
		})
	}
}
