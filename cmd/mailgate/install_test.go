package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailgate/outbound"
)

// runAs runs the binary in dir, as uid/gid when uid >= 0, and gives up after a minute so a
// serve that unexpectedly starts cannot hang the test.
func runAs(t *testing.T, dir string, uid int, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("mailgate %q did not stop within a minute (serve started?):\n%s", args, r)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("mailgate %q: %v", args, err)
	}
	return r
}

// problems returns the "mailgate: …" lines of a failed run, the part both commands share.
func problems(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "mailgate: ") && !strings.Contains(l, "not started") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestCheckConfigOpensFilesLikeServe breaks the data key and a DKIM key in the ways that stop
// serve (too short, too open, unreadable for the user running it, not a key) and checks that
// check-config fails on each with the message serve gives, instead of saying "ok".
func TestCheckConfigOpensFilesLikeServe(t *testing.T) {
	uid := -1
	if os.Getuid() == 0 {
		// Root reads every file; the unreadable case runs both commands as nobody, the way
		// an installation runs serve as its own unprivileged user.
		uid = 65534
		os.Chmod(filepath.Dir(bin), 0o755)
	}
	cases := []struct {
		name  string
		spoil func(dir string)
		want  string
		asUID bool
	}{
		{"short key", func(dir string) { os.WriteFile(filepath.Join(dir, "data.key"), []byte("00112233\n"), 0o600) }, "want 64 hex characters", false},
		{"open key", func(dir string) { os.Chmod(filepath.Join(dir, "data.key"), 0o644) }, "chmod 600", false},
		{"unreadable key", func(dir string) {
			if uid < 0 {
				os.Chmod(filepath.Join(dir, "data.key"), 0o000)
			}
		}, "permission denied", true},
		{"bad dkim key", func(dir string) {
			os.WriteFile(filepath.Join(dir, "dkim-rsa.key"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
		}, "dkim_key_file", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "etc")
			if r := mailgate(t, root, "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
				t.Fatalf("init:\n%s", r)
			}
			cfg := filepath.Join(dir, "mailgate.toml")
			as := -1
			if c.asUID && uid >= 0 {
				as = uid
				// nobody may read the config and walk the directories, but not the keys.
				for _, p := range []string{filepath.Dir(root), root, dir, filepath.Join(dir, "data")} {
					os.Chmod(p, 0o755)
				}
				os.Chmod(cfg, 0o644)
			}
			c.spoil(dir)
			chk := runAs(t, root, as, "check-config", "-config", cfg)
			if chk.code != 1 || strings.Contains(chk.stdout, "ok") || !strings.Contains(chk.stderr, c.want) {
				t.Fatalf("check-config: want exit 1 naming %q:\n%s", c.want, chk)
			}
			srv := runAs(t, root, as, "serve", "-config", cfg, "-listen-smtp", "127.0.0.1:0", "-listen-web", "127.0.0.1:0",
				"-listen-submission", "none", "-listen-imap", "none")
			if srv.code == 0 || !strings.Contains(srv.stderr, c.want) {
				t.Fatalf("serve: want a failure naming %q:\n%s", c.want, srv)
			}
			pc, ps := problems(chk.stderr), problems(srv.stderr)
			if c.name == "open key" {
				// The mode is a config check: both print it as file:line.
				pc, ps = chk.stderr[:strings.Index(chk.stderr, "\n")], srv.stderr[strings.Index(srv.stderr, "\n")+1:]
				ps = ps[:strings.Index(ps, "\n")]
			}
			if pc == "" || pc != ps {
				t.Fatalf("check-config and serve disagree:\ncheck-config: %q\nserve:        %q", pc, ps)
			}
			if _, err := os.Stat(filepath.Join(dir, "data", "mailgate.db")); !os.IsNotExist(err) {
				t.Fatalf("serve created the database before failing on its files: %v", err)
			}
		})
	}
}

// TestDNSRecordsCommand reprints the records of an installation from its config and key files:
// the DKIM TXT values are those of the key files under the configured selectors, the host's
// address comes from the MX listener, and the apex records carry the merge note.
func TestDNSRecordsCommand(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "etc")
	initOut := mailgate(t, root, "init", "-dir", dir, "-domain", "example.com")
	if initOut.code != 0 {
		t.Fatalf("init:\n%s", initOut)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	r := mailgate(t, root, "dns-records", "-config", cfg)
	if r.code != 0 {
		t.Fatalf("dns-records:\n%s", r)
	}
	// What init printed for the keys, dns-records prints again: one function makes both.
	for _, l := range strings.Split(initOut.stdout, "\n") {
		if strings.Contains(l, "IN ") && !strings.HasPrefix(strings.TrimSpace(l), ";") && !strings.Contains(r.stdout, l) {
			t.Errorf("init printed %q, dns-records does not:\n%s", l, r.stdout)
		}
	}
	joined := func(s string) string { // a zone's split TXT strings, joined
		return regexp.MustCompile(`"\s+"`).ReplaceAllString(s, "")
	}
	for _, k := range []struct{ file, sel string }{{"dkim-rsa.key", "mailgate"}, {"dkim-ed25519.key", "mailgate-ed25519"}} {
		signer, err := outbound.LoadDKIMKey(filepath.Join(dir, k.file))
		if err != nil {
			t.Fatal(err)
		}
		want := k.sel + "._domainkey.example.com.\tIN TXT "
		txt := outbound.DNSRecord(signer.Public())
		if !strings.Contains(joined(r.stdout), txt) || !strings.Contains(r.stdout, want) {
			t.Errorf("no %s record with %s in:\n%s", want, txt, r.stdout)
		}
	}
	for _, want := range []string{"MERGE", "IN A <this server's public IPv4>", "rua=mailto:postmaster@example.com", "example.com.\tIN MX 10 mail.example.com."} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dns-records lacks %q:\n%s", want, r.stdout)
		}
	}

	// A rotated selector and a listener on a public address.
	text, _ := os.ReadFile(cfg)
	s := strings.Replace(string(text), `dkim_selector = "mailgate"`, `dkim_selector = "s2026"`, 1)
	s = strings.Replace(s, `listen = ["0.0.0.0:25"]`, `listen = ["192.0.2.10:25", "[2001:db8::25]:25"]`, 1)
	if s == string(text) {
		t.Fatal("config template changed; update the test")
	}
	os.WriteFile(cfg, []byte(s), 0o640)
	r = mailgate(t, root, "dns-records", "-config", cfg)
	for _, want := range []string{"s2026._domainkey.example.com.\tIN TXT", "mail.example.com.\tIN A 192.0.2.10", "mail.example.com.\tIN AAAA 2001:db8::25"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("dns-records lacks %q:\n%s", want, r)
		}
	}
	if strings.Contains(r.stdout, "mailgate._domainkey") {
		t.Errorf("the old selector is still printed:\n%s", r.stdout)
	}
	if r := mailgate(t, root, "dns-records"); r.code != 2 {
		t.Errorf("without -config: want exit 2:\n%s", r)
	}
}
