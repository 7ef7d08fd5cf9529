//go:build linux

package inbound

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A throwaway Dovecot 2.3 (Debian's dovecot-imapd) serves the upstream mailbox for the fetch
// tests. What it takes to run one from a test, found by trying:
//
//   - Dovecot refuses to give mail access to uid 0 ("userdb returned 0 as uid") and to run
//     imap-login as root. So the whole instance runs as one unprivileged user: the test's
//     own user, or, when the test runs as root, the "dovecot" system user the package
//     creates (the process is started with that uid; its files are chowned to it).
//   - Run that way (not as root), Dovecot cannot chroot or write /var/lib/dovecot:
//     state_dir goes into the temp dir and chroot is emptied for anvil and imap-login.
//   - default_internal_user, default_login_user and the static userdb name that same user;
//     first_valid_uid = 1 admits system uids such as dovecot's.
//   - auth_failure_delay = 0 and no anvil-auth-penalty socket (mode = 0), or every
//     wrong-password attempt costs seconds: Dovecot slows down failing clients.
//   - Mail is delivered the way an MTA does it: a file written into Maildir/tmp and renamed
//     into Maildir/new. Dovecot picks it up at its next mailbox sync (inotify during IDLE).
//
// The config is for Dovecot 2.3; a missing or different dovecot fails the test, never skips.
type dovecot struct {
	dir       string
	port      int // imap: clear text (tls none) or STARTTLS
	tlsPort   int // imaps, with tls
	uid, gid  int // owner of the mail files
	certPEM   []byte
	cmd       *exec.Cmd
	exited    chan struct{}
	delivered atomic.Int64
}

const dovecotUser, dovecotPass = "support", "s3cret-pass"

type dovecotOptions struct {
	tls   bool   // ssl = required, with a generated certificate, and an imaps listener
	extra string // more config lines
}

// fetchFreePort binds 127.0.0.1:0 and closes it: Dovecot gets a number, not a listener.
func fetchFreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func dovecotBinary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"dovecot", "/usr/sbin/dovecot"} {
		if path, err := exec.LookPath(p); err == nil {
			out, err := exec.Command(path, "--version").Output()
			if err != nil {
				t.Fatalf("%s --version: %v", path, err)
			}
			if !strings.HasPrefix(string(out), "2.3.") {
				t.Fatalf("dovecot %s found; these tests write a Dovecot 2.3 config (Debian bookworm's dovecot-imapd)", strings.TrimSpace(string(out)))
			}
			return path
		}
	}
	t.Fatal("dovecot is needed for the fetch tests (Debian package dovecot-imapd, see .ci/install-deps)")
	return ""
}

// startDovecot runs one instance for the test and stops it at cleanup.
func startDovecot(t testing.TB, o dovecotOptions) *dovecot {
	t.Helper()
	bin := dovecotBinary(t)
	d := &dovecot{dir: t.TempDir(), port: fetchFreePort(t), uid: os.Getuid(), gid: os.Getgid(), exited: make(chan struct{})}
	runAs, err := user.LookupId(strconv.Itoa(d.uid))
	if err != nil {
		t.Fatal(err)
	}
	group, err := user.LookupGroupId(strconv.Itoa(d.gid))
	if err != nil {
		t.Fatal(err)
	}
	asRoot := d.uid == 0
	if asRoot {
		if runAs, err = user.Lookup("dovecot"); err != nil {
			t.Fatalf("running as root, the test needs the system user dovecot (created by dovecot-core): %v", err)
		}
		d.uid, _ = strconv.Atoi(runAs.Uid)
		d.gid, _ = strconv.Atoi(runAs.Gid)
		if group, err = user.LookupGroupId(runAs.Gid); err != nil {
			t.Fatal(err)
		}
		// t.TempDir's parent is root's and 0700: let the dovecot user through.
		if err := os.Chmod(filepath.Dir(d.dir), 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(d.dir, "passwd"), []byte(dovecotUser+":{PLAIN}"+dovecotPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(d.dir, dovecotUser, "Maildir", sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ssl := "ssl = no\ndisable_plaintext_auth = no\n"
	imaps := "  inet_listener imaps {\n    port = 0\n  }\n"
	if o.tls {
		d.tlsPort = fetchFreePort(t)
		var key []byte
		d.certPEM, key = fetchSelfSignedCert(t)
		if err := os.WriteFile(filepath.Join(d.dir, "cert.pem"), d.certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d.dir, "key.pem"), key, 0o600); err != nil {
			t.Fatal(err)
		}
		ssl = fmt.Sprintf("ssl = required\nssl_cert = <%s/cert.pem\nssl_key = <%s/key.pem\n", d.dir, d.dir)
		imaps = fmt.Sprintf("  inet_listener imaps {\n    port = %d\n    ssl = yes\n  }\n", d.tlsPort)
	}
	conf := fmt.Sprintf(`# mailgate fetch test: one unprivileged Dovecot 2.3 instance
listen = 127.0.0.1
protocols = imap
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
%[2]smail_location = maildir:%[1]s/%%u/Maildir
default_internal_user = %[3]s
default_internal_group = %[4]s
default_login_user = %[3]s
first_valid_uid = 1
auth_failure_delay = 0
passdb {
  driver = passwd-file
  args = %[1]s/passwd
}
userdb {
  driver = static
  args = uid=%[5]d gid=%[6]d home=%[1]s/%%u
}
service anvil {
  chroot =
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service imap-login {
  chroot =
  inet_listener imap {
    port = %[7]d
  }
%[8]s}
%[9]s
`, d.dir, ssl, runAs.Username, group.Name, d.uid, d.gid, d.port, imaps, o.extra)
	confFile := filepath.Join(d.dir, "dovecot.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if asRoot {
		if err := chownTree(d.dir, d.uid, d.gid); err != nil {
			t.Fatal(err)
		}
	}
	d.cmd = exec.Command(bin, "-F", "-c", confFile)
	d.cmd.Dir = d.dir
	d.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + d.dir}
	var out bytes.Buffer
	d.cmd.Stdout, d.cmd.Stderr = &out, &out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if asRoot {
		d.cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(d.uid), Gid: uint32(d.gid)}
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start dovecot: %v", err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("dovecot output:\n%s\ndovecot.log:\n%s", out.String(), d.logText())
		}
	})
	ports := []int{d.port}
	if d.tlsPort != 0 {
		ports = append(ports, d.tlsPort)
	}
	for _, p := range ports {
		deadline := time.Now().Add(15 * time.Second)
		for {
			c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-d.exited:
				t.Fatalf("dovecot exited at start: %s\n%s\n%s", d.cmd.ProcessState, out.String(), d.logText())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("dovecot does not listen on %d: %v\n%s", p, err, d.logText())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return d
}

func (d *dovecot) logText() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dovecot.log"))
	return string(b)
}

func chownTree(dir string, uid, gid int) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// maildir is the directory of folder ("" = INBOX) in Maildir++ layout.
func (d *dovecot) maildir(folder string) string {
	m := filepath.Join(d.dir, dovecotUser, "Maildir")
	if folder != "" {
		m = filepath.Join(m, "."+folder)
	}
	return m
}

// deliver puts raw into the INBOX as an MTA does: write into tmp/, rename into new/.
func (d *dovecot) deliver(t testing.TB, raw []byte) {
	t.Helper()
	n := d.delivered.Add(1)
	name := fmt.Sprintf("%d.M%dP%d.mailgate-test", time.Now().Unix(), n, os.Getpid())
	tmp := filepath.Join(d.maildir(""), "tmp", name)
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(tmp, d.uid, d.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.maildir(""), "new", name)); err != nil {
		t.Fatal(err)
	}
}

// flags finds the message with Message-ID <id> in folder and returns its maildir flags
// ("" while it is still in new/, else the letters after ":2,"); found is false when the
// folder does not hold it.
func (d *dovecot) flags(t testing.TB, folder, id string) (flags string, found bool) {
	t.Helper()
	return d.flagsOf(t, folder, "Message-ID: <"+id+">")
}

// flagsOf is flags for the message that contains needle.
func (d *dovecot) flagsOf(t testing.TB, folder, needle string) (flags string, found bool) {
	t.Helper()
	want := []byte(needle)
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(d.maildir(folder), sub))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(d.maildir(folder), sub, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, want) {
				continue
			}
			if _, info, ok := strings.Cut(e.Name(), ":2,"); ok {
				return info, true
			}
			return "", true
		}
	}
	return "", false
}

// fetchSelfSignedCert makes a certificate for 127.0.0.1 and localhost.
func fetchSelfSignedCert(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "upstream.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}
