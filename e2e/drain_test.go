package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDrains: on SIGTERM a transaction under way finishes with its 250, new
// connections get 421 (or find nothing listening), and mailgate exits 0 with the message
// stored and its stop audited.
func TestSIGTERMDrains(t *testing.T) {
	s := newSite(t, "")
	d := s.start(t)
	c := dialSMTP(t, s.smtp)
	c.cmd("", "220")
	c.cmd("EHLO drain.example", "250")
	c.cmd("MAIL FROM:<a@drain.example>", "250")
	c.cmd("RCPT TO:<"+queueAddr+">", "250")
	c.cmd("DATA", "354")
	c.write("From: <a@drain.example>\r\nTo: <" + queueAddr + ">\r\nSubject: in flight at SIGTERM\r\nMessage-ID: <drain-1@drain.example>\r\n\r\nThe first half,\r\n")

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Wait (bounded) until the daemon turns new connections away.
	var turnedAway string
	for deadline := time.Now().Add(30 * time.Second); turnedAway == ""; {
		if time.Now().After(deadline) {
			t.Fatalf("30s after SIGTERM new connections are still welcomed:\n%s", d.out)
		}
		nc, err := net.DialTimeout("tcp", s.smtp, 2*time.Second)
		if err != nil {
			turnedAway = "connection refused: " + err.Error()
			break
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(nc).ReadString('\n')
		nc.Close()
		switch {
		case strings.HasPrefix(line, "421"):
			turnedAway = strings.TrimSpace(line)
		case strings.HasPrefix(line, "220"):
			time.Sleep(20 * time.Millisecond) // the signal has not arrived yet
		case err != nil:
			turnedAway = "closed: " + err.Error()
		default:
			t.Fatalf("a new connection during the drain got %q", line)
		}
	}
	t.Logf("new connection during the drain: %s", turnedAway)

	c.write("the second half.\r\n.\r\n")
	c.cmd("", "250")
	// The session is over for this server: the next command gets 421, or the connection ends.
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	c.write("NOOP\r\n")
	if line, err := c.r.ReadString('\n'); err == nil && !strings.HasPrefix(line, "421") {
		t.Errorf("after its transaction the draining session got %q, want 421 or the end", line)
	} else if err != nil && !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("after its transaction: %v", err)
	}

	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("mailgate did not exit after the drain:\n%s", d.out)
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(d.out.String(), "stopped") {
		t.Fatalf("mailgate exited %d after SIGTERM:\n%s", code, d.out)
	}

	code, out := s.cli(t, "ticket", "list", "--json")
	if code != 0 {
		t.Fatalf("ticket list: %d %s", code, out)
	}
	var list []struct {
		ID      uint64 `json:"id"`
		Subject string `json:"subject"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].Subject != "in flight at SIGTERM" {
		t.Fatalf("after the drain the tickets are %+v (%v)\n%s", list, err, out)
	}
	s.auditVerify(t)
	code, out = s.cli(t, "audit", "export")
	if code != 0 || !strings.Contains(out, `"action":"daemon.stop"`) {
		t.Fatalf("audit export (exit %d) has no daemon.stop event:\n%s", code, out)
	}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// smtpConn is a hand-driven SMTP client, for conversations a library would not hold.
type smtpConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialSMTP(t *testing.T, addr string) *smtpConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &smtpConn{t: t, conn: nc, r: bufio.NewReader(nc)}
}

func (c *smtpConn) write(s string) {
	c.t.Helper()
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// cmd sends line (none when "") and reads a reply, which must start with want.
func (c *smtpConn) cmd(line, want string) string {
	c.t.Helper()
	if line != "" {
		c.write(line + "\r\n")
	}
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	var last string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("after %q: %v", line, err)
		}
		last = l
		if len(l) < 4 || l[3] != '-' {
			break
		}
	}
	if !strings.HasPrefix(last, want) {
		c.t.Fatalf("%q answered %q, want %s", line, strings.TrimSpace(last), want)
	}
	return last
}
