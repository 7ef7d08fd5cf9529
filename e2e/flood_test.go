package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailgate/internal/connlimit"
	"mailgate/store"
)

// The open-file limit the flooded daemon runs under, and the MX cap that follows from it.
const floodNofile = 1024

// TestConnectionFlood performs issue 11.3's attack on the real binary: idle SMTP connections
// from many loopback addresses, each address within max_conns_per_ip, more in total than the
// daemon's open-file limit. The MX takes its share of the limit and answers everyone else 421
// at once; /healthz, the control socket (mailgate ticket list), IMAP and the metrics listener
// keep answering while it is full. Before the fix the daemon ran out of descriptors: every
// listener stopped answering.
func TestConnectionFlood(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Fatal("prlimit (util-linux) is needed to give the daemon a small open-file limit")
	}
	s := floodSite(t)
	s.wrap = []string{"prlimit", fmt.Sprintf("--nofile=%d:%d", floodNofile, floodNofile), "--"}
	d := s.start(t)
	out := d.out.String()
	imapAddr := mustFind(t, out, `listening: imap (127\.0\.0\.1:\d+)`)
	metricsURL := mustFind(t, out, `listening: metrics (http://127\.0\.0\.1:\d+/)metrics`)
	smtpCap := connlimit.Split(floodNofile).SMTP

	// 20 connections from each of 60 addresses: 1,200, more than the 1,024 descriptors.
	const perAddr, addrs = 20, 60
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	refused := 0
	for i := range perAddr * addrs {
		local := net.IPv4(127, 11, byte(i/perAddr/200), byte(1+i/perAddr%200))
		line, c := greet(t, s.smtp, local)
		switch {
		case strings.HasPrefix(line, "220 "):
			held = append(held, c)
		case line == "421 4.7.0 too many connections, try later":
			refused++
			c.Close()
		default:
			t.Fatalf("SMTP connection %d (from %s, %d held): %q; the daemon stopped answering\n%s", i+1, local, len(held), line, d.out)
		}
	}
	t.Logf("flood: %d SMTP connections held, %d refused with 421 (cap %d from an open-file limit of %d)", len(held), refused, smtpCap, floodNofile)
	if len(held) != smtpCap {
		t.Fatalf("%d SMTP connections held, want the cap %d", len(held), smtpCap)
	}

	// While the MX is full: one more client, from a fresh address, is told so.
	if line, c := greet(t, s.smtp, net.IPv4(127, 12, 0, 1)); line != "421 4.7.0 too many connections, try later" {
		t.Fatalf("SMTP over the cap: %q", line)
	} else {
		c.Close()
	}
	// The web page answers.
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + d.web + "/healthz")
	if err != nil {
		t.Fatalf("/healthz while SMTP is full: %v\n%s", err, d.out)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Fatalf("/healthz while SMTP is full: %d %q", resp.StatusCode, body)
	}
	// The control socket answers (the daemon holds the database, so this cannot go direct).
	if code, out := s.cli(t, "ticket", "list", "--json"); code != 0 || !strings.HasPrefix(strings.TrimSpace(out), "[") {
		t.Fatalf("mailgate ticket list while SMTP is full: exit %d\n%s", code, out)
	}
	// IMAP answers a command.
	ic, err := net.DialTimeout("tcp", imapAddr, 10*time.Second)
	if err != nil {
		t.Fatalf("IMAP while SMTP is full: %v", err)
	}
	ic.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(ic)
	greeting, _ := br.ReadString('\n')
	fmt.Fprint(ic, "a1 CAPABILITY\r\n")
	var tagged string
	for {
		line, err := br.ReadString('\n')
		if err != nil || strings.HasPrefix(line, "a1 ") {
			tagged = line
			break
		}
	}
	ic.Close()
	if !strings.HasPrefix(greeting, "* OK") || !strings.HasPrefix(tagged, "a1 OK") {
		t.Fatalf("IMAP while SMTP is full: greeting %q, CAPABILITY %q", greeting, tagged)
	}
	// The metrics listener says what happened.
	resp, err = client.Get(metricsURL + "metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`mailgate_connections_open{service="smtp"} %d`, smtpCap),
		fmt.Sprintf(`mailgate_connections_refused_total{reason="full",service="smtp"} %d`, refused+1),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// The flood ends: the MX takes mail again.
	for _, c := range held {
		c.Close()
	}
	held = nil
	waitUntil(t, "an SMTP greeting after the flood", func() bool {
		line, c := greet(t, s.smtp, net.IPv4(127, 0, 0, 1))
		c.Close()
		return strings.HasPrefix(line, "220 ")
	})
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM\n%s", code, d.out)
	}
}

// floodSite is newSite with the default connection limits: 20 per address, max_conns from the
// open-file limit. busy_idle_timeout is long so the flood stays while the test looks around.
func floodSite(t *testing.T) *site {
	t.Helper()
	dir := t.TempDir()
	s := &site{dir: dir, cfg: filepath.Join(dir, "mailgate.toml"), key: filepath.Join(dir, "data.key"), data: filepath.Join(dir, "data")}
	s.smtp = freePort(t, "tcp")
	if err := store.WriteNewKey(s.key); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`hostname = "mx.e2e.test"
data_dir = %q
key_file = %q

[smtp]
listen = [%q]
busy_idle_timeout = "2m"

[[queue]]
name = "support"
address = %q

[web]
listen = "127.0.0.1:0"

[imap]
listen = ["127.0.0.1:0"]

[metrics]
listen = "127.0.0.1:0"
`, s.data, s.key, s.smtp, queueAddr)
	if err := os.WriteFile(s.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// greet connects to addr from local and returns the first line the server sends.
func greet(t *testing.T, addr string, local net.IP) (string, net.Conn) {
	t.Helper()
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: local}, Timeout: 10 * time.Second}
	c, err := dl.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		line = "error: " + err.Error()
	}
	c.SetReadDeadline(time.Time{})
	return strings.TrimRight(line, "\r\n"), c
}

func mustFind(t *testing.T, s, re string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no %q in:\n%s", re, s)
	}
	return m[1]
}

// waitUntil polls cond (the daemon works on its own goroutines; no fixed sleep is assumed).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
