// Command mailgate-load measures an SMTP server on this machine: it sends N messages over C
// connections to a loopback address, optionally DKIM-signed, and reports messages/s, the
// latency from the final dot to the 250, and failures by reply code. It can also run the floor
// (a go-smtp server that discards) and a tiny DNS server for the sender's records.
// It refuses any address that is not loopback: it is a benchmark, not a mail cannon.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usage = `mailgate-load: load an SMTP server on loopback and report messages/s and DATA-to-250 latency

Usage:
  mailgate-load [-addr 127.0.0.1:2525] [-n 10000] [-c 8] [-size 8192] [flags]
  mailgate-load -floor [-addr ADDR] ...     first the discard server (the floor), then ADDR
  mailgate-load -sink 127.0.0.1:2526        only run the discard server, until SIGINT/SIGTERM
  mailgate-load -dns-serve 127.0.0.1:5353 -dkim-gen ed25519 -n 0   only serve the sender's DNS records

Every address (-addr, -sink, -dns-serve) must be loopback.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	addr, from, to, helo       string
	n, conns, size, senders    int
	timeout                    time.Duration
	dkimKey, dkimGen           string
	dkimDomain, dkimSelector   string
	record, sink, dnsServe     string
	floor, asJSON              bool
	pregenMax                  int64
	dmarcPolicy                string
	connectTimeout, cmdTimeout time.Duration
	pid                        int
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("mailgate-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.addr, "addr", "127.0.0.1:2525", "the SMTP server to load (loopback only); \"\" with -floor measures only the floor")
	fs.IntVar(&o.n, "n", 10000, "messages to send (0: send none, e.g. with -dns-serve or -sink alone)")
	fs.IntVar(&o.conns, "c", 8, "connections at once")
	fs.IntVar(&o.size, "size", 8192, "bytes per message, headers and DKIM signature included (approximately)")
	fs.StringVar(&o.from, "from", "load@load.example", "envelope and header sender")
	fs.IntVar(&o.senders, "senders", 1, "rotate the sender's local part over this many addresses (load1@, load2@, ...)")
	fs.StringVar(&o.to, "to", "support@localhost", "recipient")
	fs.StringVar(&o.helo, "helo", "", "EHLO name; default: the sender's domain (so SPF's HELO check finds -dns-serve's record)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "stop sending after this long, whatever -n says")
	fs.StringVar(&o.dkimKey, "dkim-key", "", "PEM private key (RSA or Ed25519, PKCS#8 or PKCS#1) to DKIM-sign every message with")
	fs.StringVar(&o.dkimGen, "dkim-gen", "", "sign with a new key of this kind (ed25519 or rsa) made for this run; useful with -dns-serve, which publishes it")
	fs.StringVar(&o.dkimDomain, "dkim-domain", "", "d= of the signature; default: the sender's domain")
	fs.StringVar(&o.dkimSelector, "dkim-selector", "load", "s= of the signature")
	fs.StringVar(&o.record, "record", "", "write the Message-ID of every message that got a 250 to this file, one per line")
	fs.StringVar(&o.sink, "sink", "", "run the discard server (the floor) on this loopback address until SIGINT/SIGTERM")
	fs.BoolVar(&o.floor, "floor", false, "measure a discard server in this process first, then -addr, and report both")
	fs.StringVar(&o.dnsServe, "dns-serve", "", "answer DNS (UDP) on this loopback address with the sender domain's SPF, DKIM and DMARC records while running")
	fs.StringVar(&o.dmarcPolicy, "dmarc-policy", "reject", "p= of the DMARC record -dns-serve publishes")
	fs.BoolVar(&o.asJSON, "json", false, "print the summary as one JSON line on stdout (the readable summary goes to stderr)")
	fs.Int64Var(&o.pregenMax, "pregen-max", 2<<30, "build (and sign) all messages before the clock starts when they fit in this many bytes; else build them while sending")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", 5*time.Second, "bound on connecting and on the greeting")
	fs.DurationVar(&o.cmdTimeout, "command-timeout", time.Minute, "bound on each reply, including the one after the final dot")
	fs.IntVar(&o.pid, "pid", 0, "the server's process id: report its CPU time during the run and its peak RSS (Linux /proc)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags only)", fs.Arg(0))
	}
	if o.n < 0 || o.conns < 1 || o.size < 0 || o.senders < 1 {
		return nil, errors.New("-n and -size must be >= 0, -c and -senders >= 1")
	}
	if o.dkimKey != "" && o.dkimGen != "" {
		return nil, errors.New("give -dkim-key or -dkim-gen, not both")
	}
	if !strings.Contains(o.from, "@") || !strings.Contains(o.to, "@") {
		return nil, errors.New("-from and -to must be addresses (local@domain)")
	}
	if o.dkimDomain == "" {
		o.dkimDomain = domainOf(o.from)
	}
	if o.helo == "" {
		o.helo = domainOf(o.from)
	}
	for _, a := range []struct{ flag, addr string }{{"-addr", o.addr}, {"-sink", o.sink}, {"-dns-serve", o.dnsServe}} {
		if a.addr == "" {
			continue
		}
		if err := checkLoopback(a.addr); err != nil {
			return nil, fmt.Errorf("%s: %w", a.flag, err)
		}
	}
	return o, nil
}

func domainOf(addr string) string { return addr[strings.LastIndexByte(addr, '@')+1:] }

// checkLoopback accepts host:port where host is a loopback IP literal or a name that resolves
// only to loopback addresses (localhost).
func checkLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", hostport, err)
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return fmt.Errorf("%s is not a loopback address; mailgate-load only talks to this machine (127.0.0.1, ::1)", host)
		}
		return nil
	}
	if !strings.EqualFold(host, "localhost") {
		return fmt.Errorf("%q is not a loopback address; give 127.0.0.1 or ::1", host)
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return fmt.Errorf("resolve %s: %v", host, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("%s resolves to %s, which is not loopback", host, ip)
		}
	}
	return nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailgate-load: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runOpts(ctx, o, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "mailgate-load: %v\n", err)
		return 1
	}
	return 0
}

// report is the machine-readable summary (-json).
type report struct {
	Floor  *Result  `json:"floor,omitempty"`
	Target *Result  `json:"target,omitempty"`
	Ratio  *float64 `json:"ratio_to_floor,omitempty"` // target rate / floor rate
}

func runOpts(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	human := stdout
	if o.asJSON {
		human = stderr
	}
	key, err := loadSigner(o)
	if err != nil {
		return err
	}
	if o.dnsServe != "" {
		d, err := serveDNS(o.dnsServe, records(o, key))
		if err != nil {
			return err
		}
		defer d.Close()
		fmt.Fprintf(human, "dns: answering for %s on %s (udp)\n", o.dkimDomain, d.Addr())
	}
	if o.sink != "" {
		s, err := startSink(o.sink)
		if err != nil {
			return err
		}
		fmt.Fprintf(human, "sink: discarding mail on %s until SIGINT/SIGTERM\n", s.Addr())
		<-ctx.Done()
		s.Close()
		fmt.Fprintf(human, "sink: %d messages discarded\n", s.Count())
		return nil
	}
	if o.n == 0 {
		if o.dnsServe != "" {
			<-ctx.Done() // serve DNS only
		}
		return nil
	}
	gen := newGenerator(o, key)
	msgs, err := gen.prepare(o, human)
	if err != nil {
		return err
	}
	var rep report
	if o.floor {
		s, err := startSink("127.0.0.1:0")
		if err != nil {
			return err
		}
		r, err := load(ctx, o, s.Addr().String(), gen, msgs, nil, 0)
		s.Close()
		if err != nil {
			return err
		}
		r.Target = "floor (go-smtp discard) " + r.Target
		rep.Floor = r
		r.print(human)
	}
	if o.addr != "" && ctx.Err() == nil {
		var rec *recorder
		if o.record != "" {
			if rec, err = newRecorder(o.record); err != nil {
				return err
			}
		}
		r, err := load(ctx, o, o.addr, gen, msgs, rec, o.pid)
		if rec != nil {
			if cerr := rec.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return err
		}
		rep.Target = r
		r.print(human)
		if rep.Floor != nil && rep.Floor.Rate > 0 {
			ratio := r.Rate / rep.Floor.Rate
			rep.Ratio = &ratio
			fmt.Fprintf(human, "target/floor: %.2f\n", ratio)
		}
	}
	if o.asJSON {
		b, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, string(b))
	}
	return nil
}

// recorder writes the Message-IDs that got a 250.
type recorder struct {
	f  *os.File
	ch chan string
	wg chan error
}

func newRecorder(path string) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("-record: %w", err)
	}
	r := &recorder{f: f, ch: make(chan string, 1024), wg: make(chan error, 1)}
	go func() {
		var b strings.Builder
		var werr error
		flush := func() {
			if b.Len() > 0 && werr == nil {
				_, werr = io.WriteString(f, b.String())
			}
			b.Reset()
		}
		for id := range r.ch {
			b.WriteString(id)
			b.WriteByte('\n')
			if b.Len() > 64<<10 {
				flush()
			}
		}
		flush()
		r.wg <- werr
	}()
	return r, nil
}

func (r *recorder) Add(id string) { r.ch <- id }

func (r *recorder) Close() error {
	close(r.ch)
	err := <-r.wg
	if serr := r.f.Sync(); err == nil {
		err = serr
	}
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}
