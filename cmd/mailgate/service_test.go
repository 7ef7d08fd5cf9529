package main

import (
	"bufio"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// unitDirectives reads a systemd unit into directive → values (a directive may repeat).
func unitDirectives(t *testing.T, file string) map[string][]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("%s: line %q is not a directive", file, l)
		}
		out[k] = append(out[k], v)
	}
	return out
}

// TestSystemdUnit checks contrib/mailgate.service: systemd's own verifier accepts it, it has
// the privilege and hardening directives the README promises, and its paths are those of the
// README's install steps, which init then makes work for an unprivileged owner.
func TestSystemdUnit(t *testing.T) {
	unit := filepath.Join("..", "..", "contrib", "mailgate.service")
	d := unitDirectives(t, unit)
	for k, want := range map[string]string{
		"User": "mailgate", "Group": "mailgate", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"ReadWritePaths": "/var/lib/mailgate", "StateDirectory": "mailgate", "StateDirectoryMode": "0700",
		"PrivateTmp": "yes", "ProtectHome": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
		"ExecStart":  "/usr/local/bin/mailgate serve -config /etc/mailgate/mailgate.toml",
		"ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM", "UMask": "0077",
	} {
		if got := strings.Join(d[k], " "); got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}

	// systemd-analyze verify checks the syntax, every directive and the ExecStart binary.
	staged := filepath.Join(t.TempDir(), "mailgate.service")
	text, _ := os.ReadFile(unit)
	os.WriteFile(staged, []byte(strings.ReplaceAll(string(text), "/usr/local/bin/mailgate", bin)), 0o644)
	out, err := exec.Command("systemd-analyze", "verify", staged).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The README's install steps use the unit's paths and user.
	readme, _ := os.ReadFile(filepath.Join("..", "..", "README.md"))
	for _, want := range []string{
		"mailgate init -dir /etc/mailgate -data-dir /var/lib/mailgate -domain example.com -owner mailgate",
		"useradd --system --home-dir /var/lib/mailgate --shell /usr/sbin/nologin mailgate",
		"systemctl enable --now mailgate",
		"systemctl stop mailgate",
		"sudo -u mailgate tar -xf /backup/mailgate-2025-01-31.tar -C /var/lib/mailgate",
		"sudo -u mailgate mailgate audit verify -config /etc/mailgate/mailgate.toml",
		"systemctl start mailgate",
	} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README.md lacks %q", want)
		}
	}
}

// TestInitOwnerRunsUnprivileged follows the install steps with temporary paths: init as root
// with -data-dir and -owner gives the data dir and keys to the service user, and serve and an
// admin command then work as that user, as they do under the unit.
func TestInitOwnerRunsUnprivileged(t *testing.T) {
	owner, uid := "nobody", 65534
	if os.Getuid() != 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		owner, uid = u.Username, os.Getuid()
	}
	root := t.TempDir()
	for _, p := range []string{filepath.Dir(root), root, filepath.Dir(bin)} {
		os.Chmod(p, 0o755)
	}
	etc, data := filepath.Join(root, "etc", "mailgate"), filepath.Join(root, "var", "lib", "mailgate")
	os.MkdirAll(filepath.Dir(etc), 0o755)
	os.MkdirAll(filepath.Dir(data), 0o755)
	r := mailgate(t, root, "init", "-dir", etc, "-data-dir", data, "-domain", "example.com", "-owner", owner)
	if r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(etc, "mailgate.toml")
	u, err := user.Lookup(owner)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(u.Gid)
	// The service owns its data dir and keys; the config and its directory stay the admin's,
	// readable by the service's group.
	for _, c := range []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{
		{data, uid, gid, 0o700}, {filepath.Join(etc, "data.key"), uid, gid, 0o600}, {filepath.Join(etc, "dkim-rsa.key"), uid, gid, 0o600},
		{filepath.Join(etc, "tls.key"), uid, gid, 0o600}, {etc, os.Geteuid(), gid, 0o750}, {cfg, os.Geteuid(), gid, 0o640},
	} {
		st, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if int(sys.Uid) != c.uid || int(sys.Gid) != c.gid || st.Mode().Perm() != c.mode {
			t.Errorf("%s: uid %d gid %d mode %v, want %d %d %v", c.path, sys.Uid, sys.Gid, st.Mode().Perm(), c.uid, c.gid, c.mode)
		}
	}
	if text, _ := os.ReadFile(cfg); !strings.Contains(string(text), `data_dir = "`+data+`"`) {
		t.Fatalf("config does not name the data dir %s", data)
	}
	as := -1
	if os.Getuid() == 0 {
		as = uid
	}
	if r := runAs(t, root, as, "check-config", "-config", cfg); r.code != 0 {
		t.Fatalf("check-config as %s:\n%s", owner, r)
	}
	d := startServeAs(t, root, as, "-config", cfg)
	d.waitReady(t)
	if r := runAs(t, root, as, "agent", "add", "-config", cfg, "-name", "alice", "-email", "alice@example.com", "-role", "admin"); r.code != 0 {
		t.Fatalf("agent add as %s through the socket:\n%s", owner, r)
	}
	if os.Getuid() == 0 {
		// The control socket serves only the daemon's own user.
		if r := mailgate(t, root, "agent", "list", "-config", cfg); r.code == 0 {
			t.Fatalf("root's command was served by a daemon running as %s:\n%s", owner, r)
		}
	}
	d.stop(t)
	if st, err := os.Stat(filepath.Join(data, "mailgate.db")); err != nil || int(st.Sys().(*syscall.Stat_t).Uid) != uid {
		t.Fatalf("database: %v", err)
	}
	if r := mailgate(t, root, "init", "-dir", filepath.Join(root, "x"), "-domain", "example.com", "-owner", "no-such-user-here"); r.code == 0 || !strings.Contains(r.stderr, "useradd") {
		t.Fatalf("unknown owner:\n%s", r)
	}
}

// startServeAs is startServe as another user (uid < 0: this one).
func startServeAs(t *testing.T, dir string, uid int, args ...string) *daemon {
	t.Helper()
	if uid < 0 {
		return startServe(t, dir, args...)
	}
	return startServeWith(t, dir, &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}, args...)
}
