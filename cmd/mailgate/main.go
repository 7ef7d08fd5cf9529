// Command mailgate is the support mailbox daemon and its admin tool: `serve`, `init`,
// `check-config`, `version` and the admin commands of CONTRACT.md. It parses flags and
// prints; everything a test would want to check lives in mailgate/internal/app.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"mailgate/config"
	"mailgate/internal/app"
)

// version is set at build time with -ldflags "-X main.version=..."; else the module's.
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			return fmt.Sprintf("%s (%s%s)", v, rev, dirty)
		}
		return v
	}
	return "unknown"
}

const usage = `mailgate: a secure support mailbox

Usage:
  mailgate serve [-config FILE]          run the daemon (no -config: dev mode in ./mailgate-data)
  mailgate check-config -config FILE     check a config file; prints file:line: problem
  mailgate init -dir DIR -domain D [-data-dir D] [-owner USER]
                                         write a config, keys and a certificate; print DNS records
  mailgate dns-records -config FILE      print the DNS records of this installation (from its keys)
  mailgate version

Admin commands (each takes -config FILE, default: the dev data dir ./mailgate-data, and --json):
  mailgate agent add -name N -email E -role admin|agent|auditor [-queue Q ...]
  mailgate agent list | enable N | disable N | reset-mfa N | reset-password N
  mailgate agent set N [-role R] [-queue Q ...] [-no-queues]
  mailgate agent app-password N [-label L] | app-passwords N | revoke-app-password N ID
  mailgate ticket list [-queue Q] [-status S]
  mailgate ticket show ID
  mailgate ticket reply ID -agent N -text-file F
  mailgate ticket purge ID               destroy a ticket for good (its key is deleted)
  mailgate pgp import -email E -file KEY.asc
  mailgate pgp export-public
  mailgate audit verify
  mailgate audit export [-since RFC3339]
  mailgate backup -out FILE

Flags may come before or after arguments, with one dash or two.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(rest, stdout, stderr)
	case "check-config":
		return checkConfig(rest, stdout, stderr)
	case "init":
		return initCmd(rest, stdout, stderr)
	case "dns-records":
		return dnsRecords(rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "mailgate %s\n", versionString())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "agent", "ticket", "pgp", "audit":
		sub, args, ok := subcommand(rest)
		if !ok {
			fmt.Fprintf(stderr, "mailgate %s: which subcommand?\n\n%s", cmd, usage)
			return 2
		}
		return admin(cmd+" "+sub, args, stdin, stdout, stderr)
	case "backup":
		return admin("backup", rest, stdin, stdout, stderr)
	}
	fmt.Fprintf(stderr, "mailgate: unknown command %q\n\n%s", cmd, usage)
	return 2
}

// subcommand finds the subcommand word in args, which may follow the flags every admin
// command takes (`ticket --json show 7`), and returns the other args in order.
func subcommand(args []string) (string, []string, bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-config" || a == "--config":
			i++ // its value
		case strings.HasPrefix(a, "-"):
		default:
			rest := append(append([]string{}, args[:i]...), args[i+1:]...)
			return a, rest, true
		}
	}
	return "", nil, false
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mailgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// printConfigError prints config problems one per line (file:line: what to do).
func printConfigError(w io.Writer, err error) {
	var ce *config.Errors
	if errors.As(err, &ce) {
		for _, p := range *ce {
			fmt.Fprintln(w, p.String())
		}
		fmt.Fprintf(w, "%d problem(s) found\n", len(*ce))
		return
	}
	fmt.Fprintf(w, "mailgate: %v\n", err)
}

func serve(args []string, stdout, stderr io.Writer) int {
	tuneGC()
	fs := newFlags("serve", stderr)
	cfgPath := fs.String("config", "", "config file; without it mailgate runs in dev mode with its data in ./mailgate-data")
	listen := map[string]*string{}
	for _, s := range []string{"smtp", "submission", "web", "imap", "metrics"} {
		listen[s] = fs.String("listen-"+s, "", "override the "+s+" listener(s): host:port[,host:port], port 0 = any free port, \"none\" = off (for tests and port clashes)")
	}
	pos, err := app.ParseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "mailgate serve: unexpected argument %q\n", pos[0])
		return 2
	}
	o := app.ServeOptions{ConfigPath: *cfgPath, Version: versionString(), Stdout: stdout, Logs: stderr, Listen: map[string]string{}}
	for k, v := range listen {
		o.Listen[k] = *v
	}
	if err := app.Serve(context.Background(), o); err != nil {
		var ce *config.Errors
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, "mailgate: not started: the config has problems:")
		}
		printConfigError(stderr, err)
		return 1
	}
	return 0
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("check-config", stderr)
	cfgPath := fs.String("config", "", "the config file to check")
	pos, err := app.ParseArgs(fs, args)
	if err != nil {
		return 2
	}
	if *cfgPath == "" && len(pos) == 1 {
		*cfgPath = pos[0]
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "mailgate check-config: give -config FILE")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err == nil {
		// Open the keys and password files as serve does, as this user: "ok" means serve
		// gets past them.
		err = app.Preflight(cfg)
	}
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

func dnsRecords(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("dns-records", stderr)
	cfgPath := fs.String("config", "", "the installation's config file")
	pos, err := app.ParseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "mailgate dns-records: unexpected argument %q\n", pos[0])
		return 2
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "mailgate dns-records: give -config FILE")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	out, err := app.InstallationRecords(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "mailgate: %v\n", err)
		return 1
	}
	io.WriteString(stdout, out)
	return 0
}

func initCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("init", stderr)
	dir := fs.String("dir", "", "directory to write mailgate.toml and the keys into")
	domain := fs.String("domain", "", "the domain of the support address, e.g. example.com")
	dataDir := fs.String("data-dir", "", "the data dir (database, outbox, control socket); default DIR/data, e.g. /var/lib/mailgate")
	owner := fs.String("owner", "", "the user that runs serve: init (as root) gives it the data dir, DIR and the keys")
	if _, err := app.ParseArgs(fs, args); err != nil {
		return 2
	}
	if *dir == "" || *domain == "" {
		fmt.Fprintln(stderr, "mailgate init: give -dir DIR and -domain DOMAIN")
		return 2
	}
	if err := app.InitWith(app.InitOptions{Dir: *dir, Domain: *domain, DataDir: *dataDir, Owner: *owner}, stdout); err != nil {
		fmt.Fprintf(stderr, "mailgate: %v\n", err)
		return 1
	}
	return 0
}

// admin builds the request for an admin command and runs it through the daemon or directly.
func admin(name string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlags(name, stderr)
	cfgPath := fs.String("config", "", "config file (default: the dev-mode data dir ./mailgate-data)")
	asJSON := fs.Bool("json", false, "print machine-readable JSON")
	var req app.Request
	var build func(pos []string) (any, error)

	positional := func(pos []string, what string) (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("mailgate %s needs exactly one %s", name, what)
		}
		return pos[0], nil
	}
	ticketID := func(pos []string) (uint64, error) {
		s, err := positional(pos, "ticket ID")
		if err != nil {
			return 0, err
		}
		id, err := strconv.ParseUint(strings.TrimPrefix(s, "#"), 10, 64)
		if err != nil || id == 0 {
			return 0, fmt.Errorf("ticket ID %q is not a ticket number", s)
		}
		return id, nil
	}
	noArgs := func(pos []string) error {
		if len(pos) > 0 {
			return fmt.Errorf("mailgate %s takes no arguments (got %q)", name, pos[0])
		}
		return nil
	}
	readFile := func(f, what string) (string, error) {
		if f == "" {
			return "", fmt.Errorf("mailgate %s needs -%s FILE", name, what)
		}
		var b []byte
		var err error
		if f == "-" {
			b, err = io.ReadAll(io.LimitReader(stdin, 16<<20))
		} else {
			b, err = os.ReadFile(f)
		}
		if err != nil {
			return "", err
		}
		return string(b), nil
	}

	switch name {
	case "agent add":
		var a app.AgentAddArgs
		fs.StringVar(&a.Name, "name", "", "login name")
		fs.StringVar(&a.Email, "email", "", "the agent's address")
		fs.StringVar(&a.Role, "role", "", "admin, agent or auditor")
		fs.Var((*app.Strings)(&a.Queues), "queue", "a queue the agent works (repeat for more)")
		build = func(pos []string) (any, error) { return a, noArgs(pos) }
	case "agent list":
		build = func(pos []string) (any, error) { return nil, noArgs(pos) }
	case "agent disable", "agent reset-mfa", "agent enable", "agent reset-password", "agent app-passwords":
		build = func(pos []string) (any, error) {
			n, err := positional(pos, "agent name")
			return app.AgentArgs{Name: n}, err
		}
	case "agent app-password":
		label := fs.String("label", "", "what the password is for (e.g. \"laptop thunderbird\")")
		build = func(pos []string) (any, error) {
			n, err := positional(pos, "agent name")
			return app.AgentArgs{Name: n, Label: *label}, err
		}
	case "agent revoke-app-password":
		build = func(pos []string) (any, error) {
			if len(pos) != 2 {
				return nil, fmt.Errorf("mailgate %s needs the agent's name and the app password's ID (see agent app-passwords NAME)", name)
			}
			return app.AgentArgs{Name: pos[0], ID: pos[1]}, nil
		}
	case "agent set":
		role := fs.String("role", "", "the new role: admin, agent or auditor")
		var queues []string
		fs.Var((*app.Strings)(&queues), "queue", "a queue the agent works (repeat for more); replaces the agent's queues")
		noQueues := fs.Bool("no-queues", false, "take every queue away from the agent")
		build = func(pos []string) (any, error) {
			n, err := positional(pos, "agent name")
			a := app.AgentSetArgs{Name: n, Role: *role}
			switch {
			case *noQueues && len(queues) > 0:
				return nil, errors.New("mailgate agent set: give -queue or -no-queues, not both")
			case *noQueues:
				a.Queues = &[]string{}
			case len(queues) > 0:
				a.Queues = &queues
			}
			return a, err
		}
	case "ticket list":
		var a app.TicketListArgs
		fs.StringVar(&a.Queue, "queue", "", "only this queue")
		fs.StringVar(&a.Status, "status", "", "only this status: new, open, pending, solved, closed")
		build = func(pos []string) (any, error) { return a, noArgs(pos) }
	case "ticket show", "ticket purge":
		build = func(pos []string) (any, error) {
			id, err := ticketID(pos)
			return app.TicketArgs{ID: id}, err
		}
	case "ticket reply":
		agent := fs.String("agent", "", "the agent the reply is sent as")
		textFile := fs.String("text-file", "", "file holding the reply text (- for standard input)")
		build = func(pos []string) (any, error) {
			id, err := ticketID(pos)
			if err != nil {
				return nil, err
			}
			text, err := readFile(*textFile, "text-file")
			return app.TicketReplyArgs{ID: id, Agent: *agent, Text: text}, err
		}
	case "pgp import":
		email := fs.String("email", "", "the customer's address")
		file := fs.String("file", "", "the customer's public key (armored or binary)")
		build = func(pos []string) (any, error) {
			if err := noArgs(pos); err != nil {
				return nil, err
			}
			key, err := readFile(*file, "file")
			return app.PGPImportArgs{Email: *email, Key: key}, err
		}
	case "pgp export-public", "audit verify":
		build = func(pos []string) (any, error) { return nil, noArgs(pos) }
	case "audit export":
		since := fs.String("since", "", "only events at or after this time (RFC 3339, e.g. 2025-01-31T00:00:00Z)")
		build = func(pos []string) (any, error) {
			var a app.AuditExportArgs
			if *since != "" {
				t, err := time.Parse(time.RFC3339, *since)
				if err != nil {
					return nil, fmt.Errorf("-since %q is not an RFC 3339 time; write e.g. 2025-01-31T00:00:00Z", *since)
				}
				a.Since = t
			}
			return a, noArgs(pos)
		}
	case "backup":
		out := fs.String("out", "", "where to write the copy of the database")
		build = func(pos []string) (any, error) {
			if *out == "" {
				return nil, errors.New("mailgate backup needs -out FILE")
			}
			abs, err := filepath.Abs(*out)
			return app.BackupArgs{Out: abs}, errors.Join(err, noArgs(pos))
		}
	default:
		fmt.Fprintf(stderr, "mailgate: unknown command %q\n\n%s", name, usage)
		return 2
	}

	pos, err := app.ParseArgs(fs, args)
	if err != nil {
		return 2
	}
	argv, err := build(pos)
	if err != nil {
		fmt.Fprintf(stderr, "mailgate: %v\n", err)
		return 2
	}
	req.Cmd = strings.ReplaceAll(name, " ", ".")
	if argv != nil {
		if req.Args, err = json.Marshal(argv); err != nil {
			fmt.Fprintf(stderr, "mailgate: %v\n", err)
			return 2
		}
	}
	cfg, err := app.CommandConfig(*cfgPath)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	resp, err := app.Run(context.Background(), cfg, req)
	if err != nil {
		fmt.Fprintf(stderr, "mailgate: %v\n", err)
		return 1
	}
	if resp.Error != "" {
		fmt.Fprintf(stderr, "mailgate %s: %s\n", name, resp.Error)
		return max(resp.Exit, 1)
	}
	switch {
	case *asJSON && resp.Data != nil:
		var v any
		if json.Unmarshal(resp.Data, &v) == nil {
			b, _ := json.MarshalIndent(v, "", "  ")
			stdout.Write(append(b, '\n'))
		} else {
			stdout.Write(append(resp.Data, '\n'))
		}
	default:
		io.WriteString(stdout, resp.Text)
	}
	return resp.Exit
}

// tuneGC trades memory for speed where the daemon can afford it: every message allocates its
// parse and verification garbage, and at Go's default the collector ran often enough to cost a
// fifth of the CPU per message. A soft memory limit keeps the heap bounded all the same.
// GOGC and GOMEMLIMIT in the environment win.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(128 << 20)
	}
}
