package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is one measured run.
type Result struct {
	Target      string         `json:"target"`
	Connections int            `json:"connections"`
	Size        int            `json:"size"`
	Signed      bool           `json:"dkim_signed"`
	Attempted   int            `json:"attempted"`
	Accepted    int            `json:"accepted"`
	Failures    map[string]int `json:"failures"` // reply code ("451") or "net" → messages
	// ConnectFailures counts connections that never reached a transaction: refused ("net",
	// the server is down) or answered with a code (421 while it shuts down).
	ConnectFailures map[string]int `json:"connect_failures,omitempty"`
	Seconds         float64        `json:"seconds"`
	Rate            float64        `json:"rate"` // accepted messages per second
	P50ms           float64        `json:"p50_ms"`
	P90ms           float64        `json:"p90_ms"`
	P99ms           float64        `json:"p99_ms"`
	Maxms           float64        `json:"max_ms"`
	ClientCPU       float64        `json:"client_cpu_seconds"` // this process's CPU during the run
	// With -pid: the server's CPU during the run, per accepted message, and its peak RSS.
	ServerCPU       float64 `json:"server_cpu_seconds,omitempty"`
	ServerCPUPerMsg float64 `json:"server_cpu_ms_per_message,omitempty"`
	ServerPeakRSSMB float64 `json:"server_peak_rss_mb,omitempty"`
	TimedOut        bool    `json:"timed_out,omitempty"`
}

func (r *Result) print(w io.Writer) {
	fmt.Fprintf(w, "%s: %d/%d accepted in %.2fs = %.0f msg/s over %d connections; DATA-to-250 p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms; client CPU %.2fs\n",
		r.Target, r.Accepted, r.Attempted, r.Seconds, r.Rate, r.Connections, r.P50ms, r.P90ms, r.P99ms, r.Maxms, r.ClientCPU)
	if r.ServerPeakRSSMB > 0 {
		fmt.Fprintf(w, "  server: CPU %.2fs (%.3f ms per message), peak RSS %.1f MB\n", r.ServerCPU, r.ServerCPUPerMsg, r.ServerPeakRSSMB)
	}
	if len(r.Failures) > 0 {
		fmt.Fprintf(w, "  failed messages by reply code: %s\n", joinCounts(r.Failures))
	}
	if len(r.ConnectFailures) > 0 {
		fmt.Fprintf(w, "  failed connections: %s\n", joinCounts(r.ConnectFailures))
	}
	if r.TimedOut {
		fmt.Fprintln(w, "  stopped by -timeout before -n messages were sent")
	}
}

func joinCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// stats gathers what the workers observed.
type stats struct {
	mu        sync.Mutex
	lat       []time.Duration
	failures  map[string]int
	connFails map[string]int
	attempted int
}

func (s *stats) connFail(code string) {
	if code == "" {
		code = "net"
	}
	s.mu.Lock()
	s.connFails[code]++
	s.mu.Unlock()
}

func (s *stats) fail(code string) {
	s.mu.Lock()
	s.failures[code]++
	s.mu.Unlock()
}

// load sends o.n messages to addr over o.conns connections, stopping at o.timeout or when ctx
// ends. msgs holds prepared messages, or is nil to build them on the way. pid > 0 is the
// server's process, whose CPU and memory are reported.
func load(ctx context.Context, o *options, addr string, gen *generator, msgs []message, rec *recorder, pid int) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	st := &stats{failures: map[string]int{}, connFails: map[string]int{}, lat: make([]time.Duration, 0, o.n)}
	var next atomic.Int64
	get := func() (message, bool, error) {
		i := int(next.Add(1) - 1)
		if i >= o.n {
			return message{}, false, nil
		}
		if msgs != nil {
			return msgs[i], true, nil
		}
		m, err := gen.make(i)
		return m, err == nil, err
	}
	var srv0 procStats
	if pid > 0 {
		var err error
		if srv0, err = readProc(pid); err != nil {
			return nil, err
		}
	}
	cpu0 := cpuTime()
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, o.conns)
	for range o.conns {
		wg.Go(func() {
			if err := worker(ctx, o, addr, st, get, rec); err != nil {
				errc <- err
				cancel()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	r := &Result{
		Target: addr, Connections: o.conns, Size: o.size, Signed: gen.key != nil,
		Attempted: st.attempted, Accepted: len(st.lat), Failures: st.failures, ConnectFailures: st.connFails,
		Seconds: elapsed.Seconds(), ClientCPU: (cpuTime() - cpu0).Seconds(),
		TimedOut: st.attempted < o.n && ctx.Err() != nil,
	}
	if r.Seconds > 0 {
		r.Rate = float64(r.Accepted) / r.Seconds
	}
	if pid > 0 {
		srv1, err := readProc(pid)
		if err != nil {
			return nil, err
		}
		r.ServerCPU = (srv1.cpu - srv0.cpu).Seconds()
		if r.Accepted > 0 {
			r.ServerCPUPerMsg = r.ServerCPU * 1000 / float64(r.Accepted)
		}
		r.ServerPeakRSSMB = float64(srv1.peakRSS) / (1 << 20)
	}
	slices.Sort(st.lat)
	r.P50ms, r.P90ms, r.P99ms = pct(st.lat, 50), pct(st.lat, 90), pct(st.lat, 99)
	if len(st.lat) > 0 {
		r.Maxms = ms(st.lat[len(st.lat)-1])
	}
	return r, nil
}

// pct is the nearest-rank percentile of sorted d, in milliseconds.
func pct(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	i := (len(d)*p + 99) / 100
	return ms(d[max(i-1, 0)])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// worker keeps one connection busy: one message after another in the same session, a new
// connection after any error (the server restarting, a 421), until there is nothing to send.
func worker(ctx context.Context, o *options, addr string, st *stats, get func() (message, bool, error), rec *recorder) error {
	var c *client
	defer func() {
		if c != nil {
			c.quit()
		}
	}()
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		if c == nil {
			var code string
			var err error
			c, code, err = dial(ctx, o, addr)
			if err != nil {
				st.connFail(code)
				select { // the server is down or refusing: retry until the deadline
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, 500*time.Millisecond)
				continue
			}
			backoff = 10 * time.Millisecond
		}
		m, ok, err := get()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		st.mu.Lock()
		st.attempted++
		st.mu.Unlock()
		d, code, err := c.send(ctx, o, m)
		switch {
		case err != nil:
			st.fail(code)
			c.close()
			c = nil
		case code == "250":
			st.mu.Lock()
			st.lat = append(st.lat, d)
			st.mu.Unlock()
			if rec != nil {
				rec.Add(m.id)
			}
		default:
			st.fail(code)
			if code == "421" {
				c.close()
				c = nil
			}
		}
	}
	return nil
}

// client is a minimal pipelining SMTP client: it times the reply to the final dot exactly.
type client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	pipe bool
}

// errReply is a reply that ends the connection (the server said 421 or spoke nonsense).
var errReply = errors.New("connection unusable")

func dial(ctx context.Context, o *options, addr string) (*client, string, error) {
	d := net.Dialer{Timeout: o.connectTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	c := &client{conn: conn, r: bufio.NewReaderSize(conn, 8192), w: bufio.NewWriterSize(conn, 64<<10)}
	conn.SetDeadline(time.Now().Add(o.connectTimeout))
	code, _, err := c.reply()
	if err != nil || code != "220" {
		conn.Close()
		if err == nil {
			err = fmt.Errorf("greeting %s", code)
		}
		return nil, code, err
	}
	fmt.Fprintf(c.w, "EHLO %s\r\n", o.helo)
	if err := c.w.Flush(); err != nil {
		conn.Close()
		return nil, "", err
	}
	code, lines, err := c.reply()
	if err != nil || code != "250" {
		conn.Close()
		if err == nil {
			err = fmt.Errorf("EHLO answered %s", code)
		}
		return nil, code, err
	}
	for _, l := range lines {
		if strings.EqualFold(strings.TrimSpace(l), "PIPELINING") {
			c.pipe = true
		}
	}
	return c, "", nil
}

// reply reads one (possibly multi-line) reply: its code and the text of each line.
func (c *client) reply() (string, []string, error) {
	var lines []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			return "", lines, err
		}
		l = strings.TrimRight(l, "\r\n")
		if len(l) < 3 {
			return "", lines, fmt.Errorf("%w: short reply %q", errReply, l)
		}
		if _, err := strconv.Atoi(l[:3]); err != nil {
			return "", lines, fmt.Errorf("%w: bad reply %q", errReply, l)
		}
		if len(l) > 4 {
			lines = append(lines, l[4:])
		} else {
			lines = append(lines, "")
		}
		if len(l) == 3 || l[3] == ' ' {
			return l[:3], lines, nil
		}
	}
}

// send runs one transaction. It returns the time from writing the final dot to the reply,
// the deciding reply code ("net" when the connection failed) and an error when the
// connection cannot be used any more.
func (c *client) send(ctx context.Context, o *options, m message) (time.Duration, string, error) {
	deadline := time.Now().Add(o.cmdTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.conn.SetDeadline(deadline)
	cmds := []string{"MAIL FROM:<" + m.from + ">\r\n", "RCPT TO:<" + o.to + ">\r\n", "DATA\r\n"}
	want := []string{"250", "250", "354"}
	var failed string
	if c.pipe {
		for _, cmd := range cmds {
			c.w.WriteString(cmd)
		}
		if err := c.w.Flush(); err != nil {
			return 0, "net", err
		}
		for i := range cmds {
			code, _, err := c.reply()
			if err != nil {
				if failed != "" { // e.g. a 421 to MAIL, then the server hung up
					return 0, failed, errReply
				}
				return 0, "net", err
			}
			if code != want[i] && failed == "" {
				failed = code
			}
		}
	} else {
		for i, cmd := range cmds {
			c.w.WriteString(cmd)
			if err := c.w.Flush(); err != nil {
				return 0, "net", err
			}
			code, _, err := c.reply()
			if err != nil {
				return 0, "net", err
			}
			if code != want[i] {
				failed = code
				break
			}
		}
	}
	if failed != "" {
		if failed == "421" {
			return 0, failed, errReply
		}
		// A refused MAIL or RCPT leaves no transaction (DATA got 503/554); reset anyway.
		c.w.WriteString("RSET\r\n")
		if err := c.w.Flush(); err != nil {
			return 0, failed, err
		}
		if _, _, err := c.reply(); err != nil {
			return 0, failed, err
		}
		return 0, failed, nil
	}
	if _, err := c.w.Write(m.data); err != nil {
		return 0, "net", err
	}
	if err := c.w.Flush(); err != nil {
		return 0, "net", err
	}
	t0 := time.Now()
	c.w.WriteString(".\r\n")
	if err := c.w.Flush(); err != nil {
		return 0, "net", err
	}
	code, _, err := c.reply()
	d := time.Since(t0)
	if err != nil {
		return 0, "net", err
	}
	return d, code, nil
}

func (c *client) quit() {
	c.conn.SetDeadline(time.Now().Add(time.Second))
	c.w.WriteString("QUIT\r\n")
	if c.w.Flush() == nil {
		c.reply()
	}
	c.conn.Close()
}

func (c *client) close() { c.conn.Close() }
