package web

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/internal/testutil"
	"mailgate/store"
	"mailgate/tickets"
)

// scaleSeedVersion names the cached seeded stores in os.TempDir(). Bump it whenever the store
// format, the tickets model or the seed below changes, so no run measures a stale file.
const scaleSeedVersion = "v5" // v2: work-queue fields and the sealed search index; v3: store schema 2 (segments); v4: the segments kept with the file; v5: schema 3 (inbound text apart)

// scaleKey is the master key of the seeded stores (the same fixed key newEnv uses).
var scaleKey = bytes.Repeat([]byte{9}, 32)

// scaleWriters is how many goroutines ingest the seed: concurrent ingests share commits, so
// 100,000 fsynced tickets take seconds, not an fsync each.
const scaleWriters = 128

// BenchmarkScale is issue 6's load goal: the ticket list and a random ticket page under 8×GOMAXPROCS
// concurrent clients, through the real handler on a loopback HTTP server, with 1,000 and
// 100,000 tickets in the store. It reports every request's latency as p50/p99/max in ms (goal:
// p99 <= 50 ms at 100,000 tickets). The seeded store is built once per version and size and
// kept in os.TempDir(); each run works on a copy, because every view appends audit events.
func BenchmarkScale(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run("tickets="+strconv.Itoa(n), func(b *testing.B) {
			base, cookie := scaleEnv(b, seededStore(b, n))
			b.Run("list", func(b *testing.B) {
				scaleLoad(b, base, cookie, func(*rand.Rand) string { return "/tickets" })
			})
			b.Run("list-by-activity", func(b *testing.B) {
				scaleLoad(b, base, cookie, func(*rand.Rand) string { return "/tickets?sort=activity" })
			})
			// Issue 14.2: a search finding one customer by address, and the worst case, a word
			// in every ticket (all of them match and are sorted).
			b.Run("search-address", func(b *testing.B) {
				scaleLoad(b, base, cookie, func(r *rand.Rand) string {
					return "/tickets?q=c" + strconv.Itoa(1+r.IntN(n)) + "%40customer.example"
				})
			})
			b.Run("search-two-words", func(b *testing.B) {
				scaleLoad(b, base, cookie, func(r *rand.Rand) string { return "/tickets?q=order+" + strconv.Itoa(1+r.IntN(n)) })
			})
			b.Run("search-common-word", func(b *testing.B) {
				scaleLoad(b, base, cookie, func(*rand.Rand) string { return "/tickets?q=late" })
			})
			b.Run("ticket", func(b *testing.B) {
				scaleLoad(b, base, cookie, func(r *rand.Rand) string { return "/tickets/" + strconv.Itoa(1+r.IntN(n)) })
			})
		})
	}
}

// seededStore returns the path of a store holding n tickets, seeding it on first use.
func seededStore(b *testing.B, n int) string {
	b.Helper()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("mailgate-web-scale-%s-%d.db", scaleSeedVersion, n))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	// Seed under a private name and rename: a cancelled run leaves no half-seeded cache behind.
	// The segments go first, so a database file under the real name always has its segments.
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	os.RemoveAll(store.SegmentDir(tmp))
	defer os.Remove(tmp)
	defer os.RemoveAll(store.SegmentDir(tmp))
	start := time.Now()
	if err := seed(tmp, n); err != nil {
		b.Fatalf("seed %d tickets: %v", n, err)
	}
	os.RemoveAll(store.SegmentDir(path))
	if err := os.Rename(store.SegmentDir(tmp), store.SegmentDir(path)); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d tickets in %v into %s", n, time.Since(start).Round(time.Millisecond), path)
	return path
}

// seed ingests n small, distinct customer mails across both queues from scaleWriters goroutines.
func seed(path string, n int) error {
	db, err := store.Open(path, scaleKey, store.Options{})
	if err != nil {
		return err
	}
	defer db.Close()
	l, err := audit.New(db, "")
	if err != nil {
		return err
	}
	clk := testutil.NewClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	tk := tickets.New(db, l, tickets.Options{Hostname: "mail.example.com", Queues: testQueues, Now: clk.Now})
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		errMu sync.Mutex
		errs  []error
	)
	for range scaleWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				m := mail{queue: testQueues[i%2].Name, from: "c" + strconv.Itoa(i) + "@customer.example",
					subject: "Question " + strconv.Itoa(i),
					body:    "Hello, my order " + strconv.Itoa(i) + " is late.\r\nCould you look into it?"}
				res, err := tk.Ingest(tickets.Incoming{Queue: m.queue, Raw: m.raw(i), Via: "smtp", Remote: "192.0.2.9:25",
					Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}})
				if err == nil && !res.New {
					err = fmt.Errorf("mail %d: outcome %s, want a new ticket", i, res.Outcome)
				}
				if err != nil {
					errMu.Lock()
					errs = append(errs, err)
					errMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// scaleEnv opens a private copy of the seeded store at src with the real access, tickets and
// web, serves the handler on a loopback httptest.Server, and logs an agent of both queues in
// through it. It returns the base URL and the session cookie.
func scaleEnv(b *testing.B, src string) (string, string) {
	b.Helper()
	dst := filepath.Join(b.TempDir(), "mailgate.db")
	if err := copyFile(src, dst); err != nil {
		b.Fatal(err)
	}
	// Values of 2 KiB and more (mail, full posting chunks) live in the segment files.
	segs, err := os.ReadDir(store.SegmentDir(src))
	if err != nil {
		b.Fatal(err)
	}
	if err := os.Mkdir(store.SegmentDir(dst), 0o700); err != nil {
		b.Fatal(err)
	}
	for _, f := range segs {
		if err := copyFile(filepath.Join(store.SegmentDir(src), f.Name()), filepath.Join(store.SegmentDir(dst), f.Name())); err != nil {
			b.Fatal(err)
		}
	}
	db, err := store.Open(dst, scaleKey, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	l, err := audit.New(db, "")
	if err != nil {
		b.Fatal(err)
	}
	clk := testutil.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	logger := slog.New(slog.NewTextHandler(io.Discard, nil)) // the production level; the lines are formatted, then dropped
	e := &env{t: b, db: db, log: l, clk: clk, mailer: &fakeMailer{}, logs: &lockedBuffer{},
		secrets: map[string]string{}, pw: map[string]string{}}
	e.acc = access.New(db, l, access.Options{Now: clk.Now, Argon2: fastArgon2, Logger: logger,
		KnownQueue: func(q string) bool { return q == "support" || q == "billing" }})
	e.tk = tickets.New(db, l, tickets.Options{Hostname: "mail.example.com", Queues: testQueues, Mailer: e.mailer, Now: clk.Now})
	e.cfg = newEnvConfig()
	e.srv, err = New(Options{Config: e.cfg, Access: e.acc, Tickets: e.tk, Audit: l, DB: db, Logger: logger, Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(e.srv.Handler())
	b.Cleanup(ts.Close)
	e.addAgent("scale", access.RoleAgent, "support", "billing")
	cookie := httpLogin(b, e, ts.URL, "scale")

	// One look at each page before timing: the session works and the pages show the seed.
	for path, want := range map[string]string{"/tickets": "Question ", "/tickets/1": "Question ", "/tickets?q=c1%40customer.example": "Question 1<"} {
		code, body := scaleGet(http.DefaultClient, ts.URL, cookie, path)
		if code != http.StatusOK || !strings.Contains(body, want) {
			b.Fatalf("GET %s: %d, want 200 with %q", path, code, want)
		}
	}
	return ts.URL, cookie
}

// newEnvConfig is the web configuration newEnv uses.
func newEnvConfig() *config.Config {
	cfg := config.Default()
	cfg.Web.Listen = "127.0.0.1:0"
	return cfg
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// httpLogin runs the real login (password, then TOTP code) over HTTP and returns the session
// cookie's value.
func httpLogin(b *testing.B, e *env, base, name string) string {
	b.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	jar := map[string]string{}
	do := func(method, path string, form url.Values) (*http.Response, string) {
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			b.Fatal(err)
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", base)
		}
		for k, v := range jar {
			req.AddCookie(&http.Cookie{Name: k, Value: v})
		}
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		page, _ := io.ReadAll(resp.Body)
		for _, ck := range resp.Cookies() {
			if ck.MaxAge < 0 {
				delete(jar, ck.Name)
			} else {
				jar[ck.Name] = ck.Value
			}
		}
		return resp, string(page)
	}
	_, page := do(http.MethodGet, "/login", nil)
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		b.Fatal("no CSRF token on /login")
	}
	resp, _ := do(http.MethodPost, "/login", url.Values{"csrf": {m[1]}, "username": {name}, "password": {e.pw[name]}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login/code" {
		b.Fatalf("password step: %d", resp.StatusCode)
	}
	resp, _ = do(http.MethodPost, "/login/code", url.Values{"csrf": {m[1]}, "code": {e.code(name)}})
	if resp.StatusCode != http.StatusSeeOther || jar[sessionCookie] == "" {
		b.Fatalf("code step: %d", resp.StatusCode)
	}
	return jar[sessionCookie]
}

// scaleGet fetches path with the session cookie and reads the whole answer.
func scaleGet(c *http.Client, base, cookie, path string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		return 0, err.Error()
	}
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: cookie})
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(body)
}

// scaleLoad requests path(rand) from SCALE_CLIENTS concurrent clients (default 8, the team of
// agents working at once that the other goals assume), timing each request from send to the
// last byte read, and reports the latency percentiles.
func scaleLoad(b *testing.B, base, cookie string, path func(*rand.Rand) string) {
	// Keep-alive connections for every client goroutine, as browsers hold them.
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var (
		mu      sync.Mutex
		lat     []time.Duration
		failed  atomic.Int64
		lastErr atomic.Value
		seeds   atomic.Uint64
	)
	clients := 8
	if v, err := strconv.Atoi(os.Getenv("SCALE_CLIENTS")); err == nil && v > 0 {
		clients = v
	}
	b.SetParallelism(max(1, clients/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seeds.Add(1), 42))
		own := make([]time.Duration, 0, 256)
		for pb.Next() {
			p := path(r)
			start := time.Now()
			code, body := scaleGet(c, base, cookie, p)
			own = append(own, time.Since(start))
			if code != http.StatusOK {
				failed.Add(1)
				lastErr.Store(fmt.Sprintf("GET %s: %d %.200s", p, code, body))
			}
		}
		mu.Lock()
		lat = append(lat, own...)
		mu.Unlock()
	})
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed; last: %v", n, len(lat), lastErr.Load())
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	// The machine may be shared: latency then includes waiting for a core, while the CPU time
	// per request (server and client, with the garbage collector) is what the code costs.
	b.ReportMetric(ms(cpu)/float64(len(lat)), "cpu-ms/op")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100 // ceil(len·p/100), a 1-based rank
	return sorted[max(i, 1)-1]
}
