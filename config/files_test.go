package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("x"), mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; set it exactly.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// writeExampleFiles creates every file Example(domain, dir) refers to.
func writeExampleFiles(t *testing.T, dir string) {
	t.Helper()
	for _, name := range []string{ExampleKeyFile, ExampleDKIMKeyFile, ExampleDKIMEd25519Key, ExamplePGPKeyFile, ExampleTLSKey, "imap.pass"} {
		writeFile(t, filepath.Join(dir, name), 0o600)
	}
	writeFile(t, filepath.Join(dir, ExampleTLSCert), 0o644)
}

// uncommentFetch turns the commented [[fetch.account]] block of Example into TOML.
func uncommentFetch(text string) string {
	lines := strings.Split(text, "\n")
	in := false
	for i, l := range lines {
		switch {
		case l == "# [[fetch.account]]":
			in = true
		case !strings.HasPrefix(l, "# "):
			in = false
		}
		if in {
			lines[i] = strings.TrimPrefix(l, "# ")
		}
	}
	return strings.Join(lines, "\n")
}

func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	path := filepath.Join(dir, ExampleConfigFile)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func loadProblems(t *testing.T, path string) Errors {
	t.Helper()
	_, err := Load(path)
	if err == nil {
		return nil
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Load returned %T (%v), want *Errors", err, err)
	}
	return *errs
}

func TestExampleLoads(t *testing.T) {
	dir := t.TempDir()
	writeExampleFiles(t, dir)
	path := writeConfig(t, dir, Example("example.com", dir))
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Example does not load:\n%v", err)
	}
	if c.Path != path || c.Hostname != "mail.example.com" || c.Outbound.DKIMDomain != "example.com" {
		t.Errorf("loaded %+v", c)
	}
	if q, ok := c.QueueByAddress("support@example.com"); !ok || !q.AutoAck {
		t.Errorf("queue: %+v %v", q, ok)
	}

	// Every value that Example does not tailor to dir/domain is the default,
	// so the example and Default cannot drift apart.
	want := Default()
	want.Hostname = "mail.example.com"
	want.DataDir = filepath.Join(dir, ExampleDataDir)
	want.KeyFile = filepath.Join(dir, ExampleKeyFile)
	want.SMTP.TLSCert, want.SMTP.TLSKey = filepath.Join(dir, ExampleTLSCert), filepath.Join(dir, ExampleTLSKey)
	want.Web.TLSCert, want.Web.TLSKey = want.SMTP.TLSCert, want.SMTP.TLSKey
	want.IMAP.TLSCert, want.IMAP.TLSKey = want.SMTP.TLSCert, want.SMTP.TLSKey
	want.Outbound.DKIMDomain = "example.com"
	want.Outbound.DKIMKeyFile = filepath.Join(dir, ExampleDKIMKeyFile)
	want.Outbound.DKIMEd25519KeyFile = filepath.Join(dir, ExampleDKIMEd25519Key)
	want.PGP.KeyFile = filepath.Join(dir, ExamplePGPKeyFile)
	want.Queues = []Queue{{Name: "support", Address: "support@example.com", AutoAck: true, Aliases: []string{}}}
	want.Path, want.lines, want.source = c.Path, c.lines, c.source
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Example differs from the defaults:\n got %+v\nwant %+v", c, want)
	}
}

// Example writes every key of the schema (the fetch account as comments).
func TestExampleHasEveryKey(t *testing.T) {
	text := Example("example.com", "/etc/mailgate")
	lines := indexLines(uncommentFetch(text))
	var walk func(rt reflect.Type, path string)
	walk = func(rt reflect.Type, path string) {
		for i := 0; i < rt.NumField(); i++ {
			name := rt.Field(i).Tag.Get("toml")
			if name == "" || name == "-" {
				continue
			}
			p := joinPath(path, name)
			ft := rt.Field(i).Type
			switch {
			case isTable(ft):
				walk(ft, p)
				continue
			case ft.Kind() == reflect.Slice && isTable(ft.Elem()):
				walk(ft.Elem(), indexPath(p, 0))
				continue
			}
			if !lines.has(p) {
				t.Errorf("Example lacks %s", p)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
}

// The commented [[fetch.account]] block is valid once uncommented.
func TestExampleFetchBlockLoads(t *testing.T) {
	dir := t.TempDir()
	writeExampleFiles(t, dir)
	text := uncommentFetch(Example("example.com", dir))
	c, err := Load(writeConfig(t, dir, text))
	if err != nil {
		t.Fatalf("uncommented fetch block:\n%v", err)
	}
	if len(c.Fetch.Accounts) != 1 || c.Fetch.Accounts[0].Poll.Duration != time.Minute || c.Fetch.Accounts[0].TLS != "implicit" {
		t.Errorf("fetch accounts: %+v", c.Fetch.Accounts)
	}
}

func TestExampleQuotesOddPaths(t *testing.T) {
	dir := filepath.Join(t.TempDir(), `odd "dir" \ with # hash`)
	writeExampleFiles(t, dir)
	c, err := Load(writeConfig(t, dir, Example("example.org", dir)))
	if err != nil {
		t.Fatalf("Example with odd dir:\n%v", err)
	}
	if c.KeyFile != filepath.Join(dir, ExampleKeyFile) {
		t.Errorf("key_file = %q", c.KeyFile)
	}
}

func TestExampleRelativeDirBecomesAbsolute(t *testing.T) {
	text := Example("example.com", "relative/dir")
	c, err := Parse("/somewhere/else/mailgate.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if want := filepath.Join(wd, "relative/dir", ExampleKeyFile); c.KeyFile != want {
		t.Errorf("key_file = %q, want %q", c.KeyFile, want)
	}
}

func TestKeyFileChecks(t *testing.T) {
	type tc struct {
		name  string
		setup func(dir string) // create files; the example's files exist beforehand
		msg   []string         // "" = must load
		at    string           // text of the line the problem must point at
	}
	cases := []tc{
		{"all present", func(string) {}, nil, ""},
		{"data key missing", func(dir string) { os.Remove(filepath.Join(dir, ExampleKeyFile)) },
			[]string{"key_file", "does not exist", `run "mailgate init -dir DIR -domain DOMAIN"`}, "key_file ="},
		{"data key 0644", func(dir string) { os.Chmod(filepath.Join(dir, ExampleKeyFile), 0o644) },
			[]string{"key_file", "has mode 0644", "chmod 600"}, "key_file ="},
		{"data key 0640", func(dir string) { os.Chmod(filepath.Join(dir, ExampleKeyFile), 0o640) },
			[]string{"has mode 0640"}, "key_file ="},
		{"data key 0400 is fine", func(dir string) { os.Chmod(filepath.Join(dir, ExampleKeyFile), 0o400) }, nil, ""},
		{"data key is a directory", func(dir string) {
			os.Remove(filepath.Join(dir, ExampleKeyFile))
			os.Mkdir(filepath.Join(dir, ExampleKeyFile), 0o700)
		}, []string{"is not a regular file"}, "key_file ="},
		{"dkim key 0644", func(dir string) { os.Chmod(filepath.Join(dir, ExampleDKIMKeyFile), 0o644) },
			[]string{"dkim_key_file in [outbound]", "has mode 0644"}, "dkim_key_file ="},
		{"ed25519 key missing", func(dir string) { os.Remove(filepath.Join(dir, ExampleDKIMEd25519Key)) },
			[]string{"dkim_ed25519_key_file in [outbound]", "does not exist"}, "dkim_ed25519_key_file ="},
		{"pgp key 0604", func(dir string) { os.Chmod(filepath.Join(dir, ExamplePGPKeyFile), 0o604) },
			[]string{"key_file in [pgp]", "has mode 0604"}, ExamplePGPKeyFile + `"`},
		{"tls key 0644", func(dir string) { os.Chmod(filepath.Join(dir, ExampleTLSKey), 0o644) },
			[]string{"tls_key in [smtp]", "has mode 0644"}, "tls_key ="},
		{"tls cert missing", func(dir string) { os.Remove(filepath.Join(dir, ExampleTLSCert)) },
			[]string{"tls_cert in [smtp]", "does not exist"}, "tls_cert ="},
		{"data_dir is a file", func(dir string) { writeFile(t, filepath.Join(dir, ExampleDataDir), 0o600) },
			[]string{"data_dir", "is not a directory"}, "data_dir ="},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeExampleFiles(t, dir)
			text := Example("example.com", dir)
			c.setup(dir)
			errs := loadProblems(t, writeConfig(t, dir, text))
			if c.msg == nil {
				if errs != nil {
					t.Fatalf("want no problems, got:\n%v", errs.Error())
				}
				return
			}
			wantProblem(t, errs, lineOf(t, text, c.at), c.msg...)
		})
	}
}

func TestFetchAndRelayPasswordFiles(t *testing.T) {
	dir := t.TempDir()
	writeExampleFiles(t, dir)
	writeFile(t, filepath.Join(dir, "relay.pass"), 0o644)
	text := strings.Replace(Example("example.com", dir), `relay_password_file = ""`,
		`relay_password_file = "relay.pass"`, 1) // relative: next to the config
	text = strings.Replace(text, `relay_username = ""`, `relay_username = "u"`, 1)
	text += "\n[[fetch.account]]\nurl = \"imaps://imap.example.com/INBOX\"\nusername = \"u\"\npassword_file = \"missing.pass\"\nqueue = \"support\"\n"
	errs := loadProblems(t, writeConfig(t, dir, text))
	wantProblem(t, errs, lineOf(t, text, "relay_password_file ="), "relay_password_file in [outbound]", "has mode 0644")
	wantProblem(t, errs, lineOf(t, text, "password_file = \"missing"), "password_file in [[fetch.account]] #1", filepath.Join(dir, "missing.pass"), "does not exist")
	if len(errs) != 2 {
		t.Errorf("want 2 problems, got:\n%v", errs.Error())
	}
}

// A default that names a missing file has no line to point at.
func TestMissingDefaultKeyFileHasNoLine(t *testing.T) {
	c := Default()
	c.Hostname = "mail.example.com"
	c.KeyFile = filepath.Join(t.TempDir(), "nope.key")
	c.Queues = []Queue{{Name: "support", Address: "support@example.com"}}
	err := Validate(c)
	var errs *Errors
	if !errors.As(err, &errs) || len(*errs) != 1 || (*errs)[0].Line != 0 || !strings.Contains(err.Error(), "mailgate init") {
		t.Fatalf("Validate = %v", err)
	}
}

// Parse does not look at the file system at all.
func TestParseStatsNothing(t *testing.T) {
	if _, err := Parse("x.toml", []byte(Example("example.com", filepath.Join(t.TempDir(), "absent")))); err != nil {
		t.Fatalf("Parse checked files: %v", err)
	}
}

func TestDev(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	c, err := Dev(dir)
	if err != nil {
		t.Fatalf("Dev: %v", err)
	}
	if !c.Dev || c.Path != "" {
		t.Errorf("Dev = %v, Path = %q", c.Dev, c.Path)
	}
	for _, ch := range []struct{ name, got, want string }{
		{"hostname", c.Hostname, "localhost"},
		{"data_dir", c.DataDir, dir},
		{"key_file", c.KeyFile, filepath.Join(dir, "data.key")},
		{"smtp", strings.Join(c.SMTP.Listen, ","), "127.0.0.1:2525"},
		{"submission", strings.Join(c.SMTP.SubmissionListen, ","), "127.0.0.1:2587"},
		{"web", c.Web.Listen, "127.0.0.1:8025"},
		{"web tls", c.Web.TLSCert, ""},
		{"imap", strings.Join(c.IMAP.Listen, ","), "127.0.0.1:2143"},
		{"relay", c.Outbound.Relay, ""},
		{"dkim_domain", c.Outbound.DKIMDomain, "localhost"},
		{"dkim_key_file", c.Outbound.DKIMKeyFile, filepath.Join(dir, "dkim.key")},
		{"pgp key_file", c.PGP.KeyFile, filepath.Join(dir, "pgp.key")},
		{"outbox", c.DataPath("outbox"), filepath.Join(dir, "outbox")},
	} {
		if ch.got != ch.want {
			t.Errorf("dev %s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
	q, ok := c.QueueByAddress("support@localhost")
	if !ok || q.Name != "support" || !q.AutoAck || len(c.Queues) != 1 {
		t.Errorf("dev queues: %+v", c.Queues)
	}
	// Missing keys are fine in dev mode (created on first start)...
	if err := Validate(c); err != nil {
		t.Errorf("Validate(dev) = %v", err)
	}
	// ...but a key that is there must still be private.
	writeFile(t, c.KeyFile, 0o644)
	err = Validate(c)
	if err == nil || !strings.Contains(err.Error(), DevFile+":5: key_file") || !strings.Contains(err.Error(), "0644") {
		t.Errorf("Validate(dev with 0644 key) = %v", err)
	}
	if _, err := Dev(dir); err == nil {
		t.Error("Dev accepted a 0644 data key")
	}
}

func TestDevDefaultDir(t *testing.T) {
	c, err := Dev("")
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "mailgate-data" || c.KeyFile != filepath.Join("mailgate-data", "data.key") {
		t.Errorf("Dev(\"\"): data_dir %q key_file %q", c.DataDir, c.KeyFile)
	}
}

// The TOML block of CONTRACT.md (a copy in testdata) must stay valid.
func TestContractExampleParses(t *testing.T) {
	data, err := os.ReadFile("testdata/contract.toml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("testdata/contract.toml", data)
	if err != nil {
		t.Fatalf("CONTRACT.md's config does not parse:\n%v", err)
	}
	if c.Hostname != "mail.example.com" || c.Outbound.DKIMDomain != "example.com" || len(c.Queues) != 1 {
		t.Errorf("contract config: %+v", c)
	}
	// Its commented [[fetch.account]] is valid too.
	c, err = Parse("testdata/contract.toml", []byte(strings.ReplaceAll(string(data), "\n# ", "\n")))
	if err != nil {
		t.Fatalf("CONTRACT.md's fetch account does not parse:\n%v", err)
	}
	if len(c.Fetch.Accounts) != 1 || c.Fetch.Accounts[0].Queue != "support" {
		t.Errorf("contract fetch accounts: %+v", c.Fetch.Accounts)
	}
}
