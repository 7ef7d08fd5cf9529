package agentmail

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// greetings opens n connections to addr from distinct loopback addresses and returns the first
// line each reads, and whether the server then closed it.
func greetings(t *testing.T, addr string, n int) (lines []string, closed []bool) {
	t.Helper()
	for i := range n {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 7, byte(1+i))}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		line, _ := br.ReadString('\n')
		lines = append(lines, strings.TrimSpace(line))
		if strings.Contains(line, "too many") {
			_, err := br.ReadByte()
			closed = append(closed, err != nil)
		} else {
			closed = append(closed, false)
		}
	}
	return lines, closed
}

// TestIMAPMaxConns: IMAP over [imap] max_conns answers BYE and closes, from any address;
// submission, with its own budget, still answers.
func TestIMAPMaxConns(t *testing.T) {
	e := newEnv(t)
	srv := NewIMAP(IMAPOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, Hostname: testHost, Logger: quiet, MaxConns: 2})
	defer srv.Close()
	addr := e.serve(srv.Serve)
	lines, closed := greetings(t, addr, 3)
	if !strings.HasPrefix(lines[0], "* OK") || !strings.HasPrefix(lines[1], "* OK") {
		t.Fatalf("greetings under the cap: %q", lines[:2])
	}
	if lines[2] != "* BYE too many connections, try later" || !closed[2] {
		t.Fatalf("over the cap: %q, closed %v", lines[2], closed[2])
	}
	if n := srv.Conns().Refused()["full"]; n != 1 {
		t.Fatalf("refused as full: %d", n)
	}
	sub, _ := greetings(t, e.subAddr, 1)
	if !strings.HasPrefix(sub[0], "220 ") {
		t.Fatalf("submission while IMAP is full: %q", sub[0])
	}
}

func TestSubmissionMaxConns(t *testing.T) {
	e := newEnv(t)
	srv := NewSubmission(SubmissionOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, Hostname: testHost, Logger: quiet, MaxConns: 2})
	defer srv.Close()
	addr := e.serve(srv.Serve)
	lines, closed := greetings(t, addr, 3)
	if !strings.HasPrefix(lines[0], "220 ") || !strings.HasPrefix(lines[1], "220 ") {
		t.Fatalf("greetings under the cap: %q", lines[:2])
	}
	if lines[2] != "421 4.7.0 too many connections, try later" || !closed[2] {
		t.Fatalf("over the cap: %q, closed %v", lines[2], closed[2])
	}
}
