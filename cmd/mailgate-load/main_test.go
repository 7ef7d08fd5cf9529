package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

func TestRefusesAddressesOffThisMachine(t *testing.T) {
	for _, addr := range []string{"8.8.8.8:25", "192.168.1.1:25", "10.0.0.1:2525", "[2001:db8::1]:25", "mail.example.com:25", "0.0.0.0:2525", "nonsense"} {
		for _, flag := range []string{"-addr", "-sink", "-dns-serve"} {
			if _, err := parseFlags([]string{flag, addr}, io.Discard); err == nil {
				t.Errorf("%s %s accepted", flag, addr)
			}
		}
	}
	for _, addr := range []string{"127.0.0.1:2525", "127.5.6.7:25", "[::1]:2525", "localhost:2525"} {
		if _, err := parseFlags([]string{"-addr", addr}, io.Discard); err != nil {
			t.Errorf("-addr %s refused: %v", addr, err)
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"-addr", "203.0.113.5:25", "-n", "1"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "loopback") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

// testServer is a go-smtp server that keeps what it accepts and can refuse on demand.
type testServer struct {
	mu   sync.Mutex
	msgs [][]byte
	// verdict decides the reply to the n-th DATA (0-based); nil accepts everything.
	verdict func(n int) error
	rcpt    func(to string) error
	srv     *smtp.Server
	addr    string
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	ts := &testServer{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = l.Addr().String()
	ts.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &testSession{ts: ts}, nil }))
	ts.srv.Domain = "test.localhost"
	ts.srv.ErrorLog = discardLog{}
	go ts.srv.Serve(l)
	t.Cleanup(func() { ts.srv.Close() })
	return ts
}

type testSession struct{ ts *testServer }

func (s *testSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *testSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.ts.rcpt != nil {
		return s.ts.rcpt(to)
	}
	return nil
}
func (s *testSession) Reset()        {}
func (s *testSession) Logout() error { return nil }
func (s *testSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.ts.mu.Lock()
	defer s.ts.mu.Unlock()
	n := len(s.ts.msgs)
	s.ts.msgs = append(s.ts.msgs, b)
	if s.ts.verdict != nil {
		return s.ts.verdict(n)
	}
	return nil
}

func opts(t *testing.T, args ...string) *options {
	t.Helper()
	o, err := parseFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// runJSON runs the tool with -json and returns its report.
func runJSON(t *testing.T, o *options) report {
	t.Helper()
	o.asJSON = true
	var out bytes.Buffer
	if err := runOpts(context.Background(), o, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("not one JSON line: %q (%v)", out.String(), err)
	}
	return rep
}

func TestFloorAndTargetInOneRun(t *testing.T) {
	ts := newTestServer(t)
	rep := runJSON(t, opts(t, "-floor", "-addr", ts.addr, "-n", "200", "-c", "4", "-size", "2048"))
	if rep.Floor == nil || rep.Target == nil || rep.Ratio == nil {
		t.Fatalf("report lacks a part: %+v", rep)
	}
	for _, r := range []*Result{rep.Floor, rep.Target} {
		if r.Attempted != 200 || r.Accepted != 200 || len(r.Failures) != 0 || r.Rate <= 0 || r.P99ms < r.P50ms || r.Maxms < r.P99ms {
			t.Errorf("%s: %+v", r.Target, r)
		}
	}
	if len(ts.msgs) != 200 {
		t.Fatalf("target got %d messages", len(ts.msgs))
	}
	ids := map[string]bool{}
	for _, m := range ts.msgs {
		if len(m) < 1900 || len(m) > 2300 {
			t.Errorf("message of %d bytes, asked for 2048", len(m))
		}
		id := header(m, "Message-Id")
		if id == "" || ids[id] {
			t.Fatalf("Message-ID %q missing or repeated", id)
		}
		ids[id] = true
	}
}

func header(msg []byte, name string) string {
	for _, l := range strings.Split(string(msg), "\r\n") {
		if l == "" {
			break
		}
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Signed messages verify against the records -dns-serve publishes, looked up over UDP the way
// mailgate's [dns] resolver does; -record lists exactly the messages that got a 250.
func TestSignedMessagesVerifyThroughServedDNS(t *testing.T) {
	for _, kind := range []string{"ed25519", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			ts := newTestServer(t)
			ts.verdict = func(n int) error {
				if n%5 == 4 {
					return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
				}
				return nil
			}
			rec := filepath.Join(t.TempDir(), "ids")
			o := opts(t, "-addr", ts.addr, "-n", "50", "-c", "3", "-dkim-gen", kind, "-dkim-domain", "sign.example",
				"-from", "alice@sign.example", "-record", rec)
			key, err := loadSigner(o)
			if err != nil {
				t.Fatal(err)
			}
			d, err := serveDNS("127.0.0.1:0", records(o, key))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			rc, err := newRecorder(rec)
			if err != nil {
				t.Fatal(err)
			}
			r, err := load(context.Background(), o, ts.addr, newGenerator(o, key), nil, rc, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			if r.Accepted != 40 || r.Failures["451"] != 10 || r.Attempted != 50 {
				t.Fatalf("accepted %d, failures %v, attempted %d", r.Accepted, r.Failures, r.Attempted)
			}
			res := resolver(d.Addr().String())
			lookup := func(name string) ([]string, error) { return res.LookupTXT(context.Background(), name) }
			var accepted []string
			for i, m := range ts.msgs {
				vs, err := dkim.VerifyWithOptions(bytes.NewReader(m), &dkim.VerifyOptions{LookupTXT: lookup})
				if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "sign.example" {
					t.Fatalf("message %d: %v %+v", i, err, vs)
				}
				if i%5 != 4 {
					accepted = append(accepted, strings.Trim(header(m, "Message-Id"), "<>"))
				}
			}
			for name, want := range map[string]string{"sign.example": "v=spf1 ", "_dmarc.sign.example": "v=DMARC1; p=reject"} {
				if txt, err := res.LookupTXT(context.Background(), name); err != nil || len(txt) != 1 || !strings.HasPrefix(txt[0], want) {
					t.Errorf("TXT %s = %q, %v", name, txt, err)
				}
			}
			var de *net.DNSError
			if _, err := res.LookupTXT(context.Background(), "other.example"); !errors.As(err, &de) || !de.IsNotFound {
				t.Errorf("unknown name: %v, want NXDOMAIN", err)
			}
			got, _ := os.ReadFile(rec)
			lines := strings.Fields(string(got))
			slices.Sort(lines)
			slices.Sort(accepted)
			if !slices.Equal(lines, accepted) {
				t.Fatalf("-record has %d ids, %d were accepted", len(lines), len(accepted))
			}
		})
	}
}

func resolver(server string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server)
	}}
}

// Refusals are counted by reply code, and a 421 makes the tool reconnect and go on.
func TestFailuresByCodeAndReconnect(t *testing.T) {
	ts := newTestServer(t)
	ts.rcpt = func(to string) error {
		if strings.HasPrefix(to, "nobody") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	rep := runJSON(t, opts(t, "-addr", ts.addr, "-n", "30", "-c", "2", "-to", "nobody@localhost"))
	if rep.Target.Accepted != 0 || rep.Target.Failures["550"] != 30 {
		t.Fatalf("%+v", rep.Target)
	}

	ts2 := newTestServer(t)
	ts2.verdict = func(n int) error {
		if n%3 == 0 {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "closing"}
		}
		return nil
	}
	rep = runJSON(t, opts(t, "-addr", ts2.addr, "-n", "30", "-c", "2"))
	if rep.Target.Accepted != 20 || rep.Target.Failures["421"] != 10 {
		t.Fatalf("%+v", rep.Target)
	}
}

// With nothing listening, the tool retries until -timeout, counts the refused connections and
// reports the run as cut short, without failing.
func TestServerDownUntilTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	rep := runJSON(t, opts(t, "-addr", addr, "-n", "5", "-c", "2", "-timeout", "300ms"))
	if rep.Target.Accepted != 0 || rep.Target.Attempted != 0 || rep.Target.ConnectFailures["net"] == 0 || !rep.Target.TimedOut {
		t.Fatalf("%+v", rep.Target)
	}
}

// -pid reports the server's CPU and peak memory; here the "server" is this test process.
func TestServerStatsFromProc(t *testing.T) {
	ts := newTestServer(t)
	o := opts(t, "-addr", ts.addr, "-n", "100", "-c", "2", "-pid", strconv.Itoa(os.Getpid()))
	rep := runJSON(t, o)
	if rep.Target.ServerPeakRSSMB <= 1 || rep.Target.ServerCPU < 0 {
		t.Fatalf("server stats %+v", rep.Target)
	}
	if _, err := parseFlags([]string{"-pid", "x"}, io.Discard); err == nil {
		t.Error("-pid x accepted")
	}
	o = opts(t, "-addr", ts.addr, "-n", "1", "-pid", "999999999")
	if err := runOpts(context.Background(), o, io.Discard, io.Discard); err == nil {
		t.Error("a pid that does not exist gave no error")
	}
}

func TestKeyFileAndDotStuffing(t *testing.T) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	f := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	s, err := loadSigner(opts(t, "-dkim-key", f))
	if err != nil || !s.Public().(ed25519.PublicKey).Equal(k.Public()) {
		t.Fatalf("key: %v", err)
	}
	if _, err := parseKey([]byte("nope")); err == nil {
		t.Error("garbage parsed as a key")
	}
	for in, want := range map[string]string{
		".a\r\nb\r\n..c\r\n": "..a\r\nb\r\n...c\r\n",
		"x":                  "x\r\n",
		"a\r\n.":             "a\r\n..\r\n",
	} {
		if got := string(dotStuff([]byte(in))); got != want {
			t.Errorf("dotStuff(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkFloor(b *testing.B) {
	s, err := startSink("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	o, _ := parseFlags([]string{"-n", "1", "-c", "8"}, io.Discard)
	o.n = b.N
	gen := newGenerator(o, nil)
	b.ResetTimer()
	r, err := load(context.Background(), o, s.Addr().String(), gen, nil, nil, 0)
	if err != nil || r.Accepted != b.N {
		b.Fatalf("%v %+v", err, r)
	}
	b.ReportMetric(r.P99ms, "p99-ms")
}
