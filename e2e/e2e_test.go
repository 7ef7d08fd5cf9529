package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"mailgate/access"
	"mailgate/config"
	"mailgate/internal/app"
	"mailgate/store"
	"mailgate/tickets"
)

// Paths of the binaries TestMain builds once for every test.
var (
	mailgateBin string
	loadBin     string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailgate-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mailgateBin = filepath.Join(dir, "mailgate")
	loadBin = filepath.Join(dir, "mailgate-load")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go") // go test's own toolchain
	}
	for _, b := range []struct{ out, pkg string }{{mailgateBin, "mailgate/cmd/mailgate"}, {loadBin, "mailgate/cmd/mailgate-load"}} {
		cmd := exec.Command(gobin, "build", "-o", b.out, b.pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build %s: %v\n", b.pkg, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// site is one mailgate installation in a temporary directory: config, key, data dir.
type site struct {
	dir, cfg, key, data string
	smtp                string   // fixed 127.0.0.1:port, so the load tool finds it again after a restart
	dns                 string   // where the load tool answers DNS for the sender domain
	wrap                []string // a command serve runs under, e.g. prlimit; nil: none
}

const (
	queueAddr  = "support@e2e.test"
	senderDom  = "load.example"
	senderAddr = "load@" + senderDom
)

// newSite writes a config whose SMTP port stays the same across restarts and whose DNS is
// the load tool's (-dns-serve). dataDir "" means <dir>/data.
func newSite(t *testing.T, dataDir string) *site {
	t.Helper()
	dir := t.TempDir()
	s := &site{dir: dir, cfg: filepath.Join(dir, "mailgate.toml"), key: filepath.Join(dir, "data.key"), data: dataDir}
	if s.data == "" {
		s.data = filepath.Join(dir, "data")
	}
	s.smtp = freePort(t, "tcp")
	s.dns = freePort(t, "udp")
	if err := store.WriteNewKey(s.key); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`hostname = "mx.e2e.test"
data_dir = %q
key_file = %q

[smtp]
listen = [%q]
max_conns_per_ip = 1000
messages_per_minute_per_ip = 100000000
read_timeout = "30s"

[dns]
resolver = %q
timeout = "2s"

[[queue]]
name = "support"
address = %q

[outbound]
dkim_domain = "e2e.test"

[web]
listen = "127.0.0.1:0"

[metrics]
listen = "127.0.0.1:0"
`, s.data, s.key, s.smtp, s.dns, queueAddr)
	if err := os.WriteFile(s.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// freePort returns a loopback address with a port that was free a moment ago.
func freePort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// daemon is a running `mailgate serve`.
type daemon struct {
	t    *testing.T
	cmd  *exec.Cmd
	web  string
	out  *syncBuffer // stdout and stderr together
	done chan struct{}
	err  error // from Wait, once done is closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs `mailgate serve -config` and waits for "ready".
func (s *site) start(t *testing.T) *daemon {
	t.Helper()
	d := &daemon{t: t, out: &syncBuffer{}, done: make(chan struct{})}
	name, args := mailgateBin, []string{"serve", "-config", s.cfg}
	if len(s.wrap) > 0 {
		name, args = s.wrap[0], append(append(append([]string(nil), s.wrap[1:]...), mailgateBin), args...)
	}
	d.cmd = exec.Command(name, args...)
	d.cmd.Dir = s.dir
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stderr = d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		seen := false
		for sc.Scan() {
			line := sc.Text()
			d.out.Write([]byte(line + "\n"))
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "listening:" && f[1] == "web" {
				d.web = strings.TrimSuffix(strings.TrimPrefix(f[2], "http://"), "/")
			}
			if line == "ready" && !seen {
				seen = true
				close(ready)
			}
		}
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	select {
	case <-ready:
	case <-d.done:
		t.Fatalf("mailgate serve exited before it was ready: %v\n%s", d.err, d.out)
	case <-time.After(60 * time.Second):
		t.Fatalf("mailgate serve not ready after 60s:\n%s", d.out)
	}
	return d
}

// kill SIGKILLs the daemon: no drain, no close, as a power cut or the OOM killer would.
func (d *daemon) kill() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	<-d.done
}

// stop sends SIGTERM and returns the exit code.
func (d *daemon) stop() int {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		d.t.Fatalf("mailgate did not stop within 60s of SIGTERM:\n%s", d.out)
	}
	return d.cmd.ProcessState.ExitCode()
}

// result is what mailgate-load -json reports for the target.
type result struct {
	Attempted       int            `json:"attempted"`
	Accepted        int            `json:"accepted"`
	Failures        map[string]int `json:"failures"`
	ConnectFailures map[string]int `json:"connect_failures"`
	Rate            float64        `json:"rate"`
}

// load is a running mailgate-load against s, with the sender's DNS served by it.
type load struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	record string
}

// loadRuns numbers mailgate-load runs for their DKIM selectors.
var loadRuns atomic.Int64

// startLoad runs mailgate-load against s: DKIM-signed mail from load.example, whose SPF,
// DKIM and DMARC records it serves itself, recording the Message-IDs that got a 250.
func (s *site) startLoad(t *testing.T, args ...string) *load {
	t.Helper()
	l := &load{record: filepath.Join(t.TempDir(), "accepted.txt")}
	// Each run signs with a new key, so it publishes it under a new selector, as a real key
	// rotation does: mailgate caches DNS answers, and an old key under the same name would
	// still be served from its cache.
	selector := fmt.Sprintf("load%d", loadRuns.Add(1))
	all := append([]string{"-addr", s.smtp, "-to", queueAddr, "-from", senderAddr, "-dkim-gen", "ed25519",
		"-dkim-selector", selector, "-dns-serve", s.dns, "-record", l.record, "-json"}, args...)
	l.cmd = exec.Command(loadBin, all...)
	l.cmd.Stdout, l.cmd.Stderr = &l.stdout, &l.stderr
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l.cmd.ProcessState == nil {
			l.cmd.Process.Kill()
			l.cmd.Wait()
		}
	})
	return l
}

// wait waits for the load tool and returns its result and the Message-IDs that got a 250.
func (l *load) wait(t *testing.T) (result, []string) {
	t.Helper()
	if err := l.cmd.Wait(); err != nil {
		t.Fatalf("mailgate-load: %v\n%s", err, l.stderr.String())
	}
	var rep struct {
		Target *result `json:"target"`
	}
	if err := json.Unmarshal(l.stdout.Bytes(), &rep); err != nil || rep.Target == nil {
		t.Fatalf("mailgate-load output %q: %v\n%s", l.stdout.String(), err, l.stderr.String())
	}
	b, err := os.ReadFile(l.record)
	if err != nil {
		t.Fatal(err)
	}
	ids := strings.Fields(string(b))
	if len(ids) != rep.Target.Accepted {
		t.Fatalf("-record lists %d ids, the report says %d accepted", len(ids), rep.Target.Accepted)
	}
	t.Logf("mailgate-load: %s", strings.TrimSpace(l.stderr.String()))
	return *rep.Target, ids
}

// noPermanentFailures fails when any message got a 5xx: a daemon under faults must defer
// (4xx) or drop the connection, never bounce the sender's mail.
func noPermanentFailures(t *testing.T, r result) {
	t.Helper()
	for code, n := range r.Failures {
		if strings.HasPrefix(code, "5") {
			t.Errorf("%d messages got %s: a fault must never answer 5xx", n, code)
		}
	}
}

// cli runs a mailgate admin command against s and returns its exit code and output.
func (s *site) cli(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(mailgateBin, append(args, "-config", s.cfg)...)
	cmd.Dir = s.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// auditVerify runs `mailgate audit verify` and fails the test unless it exits 0.
func (s *site) auditVerify(t *testing.T) {
	t.Helper()
	if code, out := s.cli(t, "audit", "verify"); code != 0 {
		t.Fatalf("mailgate audit verify: exit %d\n%s", code, out)
	}
}

var admin = access.Actor{Name: "e2e", Role: access.RoleAdmin, Remote: "e2e"}

// open opens s's store in this process (the daemon must be stopped), like an admin command
// does, so that thousands of Message-IDs can be looked up without thousands of processes.
func (s *site) open(t *testing.T) *app.App {
	t.Helper()
	cfg, err := config.Load(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.Open(cfg, app.Options{LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// checkStored fails for every id that is not in the store, and checks that each stored message
// can be read back with its verdict.
func checkStored(t *testing.T, a *app.App, ids []string) {
	t.Helper()
	missing := 0
	for i, id := range ids {
		tk, seq, ok := a.Tickets.FindMessage(id)
		if !ok {
			if missing < 5 {
				t.Errorf("acknowledged message %s is not stored", id)
			}
			missing++
			continue
		}
		if i%50 != 0 { // read every 50th back in full
			continue
		}
		m, raw, err := a.Tickets.Raw(admin, tk, seq, "e2e.check")
		if err != nil || len(raw) == 0 || m.Auth == nil {
			t.Errorf("message %s (ticket %d/%d): %v, %d bytes", id, tk, seq, err, len(raw))
			continue
		}
		// The load tool signs and publishes the keys: anything but pass is a bug, except a DNS
		// answer that came too late on a starved machine (temperror, stored unverified).
		if (m.Auth.DKIM != "pass" || m.Auth.DMARC != "pass") && m.Auth.DKIM != "temperror" && m.Auth.DMARC != "temperror" {
			t.Errorf("message %s stored with verdict %+v, want DKIM and DMARC pass", id, *m.Auth)
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged messages are not stored", missing, len(ids))
	}
}

// tickets lists every ticket of s (in this process).
func allTickets(t *testing.T, a *app.App) []tickets.Ticket {
	t.Helper()
	var out []tickets.Ticket
	for off := 0; ; off += 500 {
		l, err := a.Tickets.List(admin, tickets.Filter{Offset: off, Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l...)
		if len(l) < 500 {
			return out
		}
	}
}
