package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"mailgate/store"
)

// curl runs curl with args and returns the status code it printed and the body.
func curl(t *testing.T, args ...string) (string, string) {
	t.Helper()
	bin, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed (.ci/install-deps installs it)")
	}
	body := filepath.Join(t.TempDir(), "body")
	out, err := exec.Command(bin, append([]string{"-sS", "--max-time", "10", "-o", body, "-w", "%{http_code}"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	b, _ := os.ReadFile(body)
	return string(out), string(b)
}

// TestMetricsListenerAndHost checks issue 11.6 on the real binary with curl: /metrics and the
// detailed /healthz live on the [metrics] listener behind a bearer token, the web page's
// /healthz says only ok, and a request naming a foreign host is refused with 421.
func TestMetricsListenerAndHost(t *testing.T) {
	dir := t.TempDir()
	s := &site{dir: dir, cfg: filepath.Join(dir, "mailgate.toml"), key: filepath.Join(dir, "data.key"), data: filepath.Join(dir, "data")}
	s.smtp = freePort(t, "tcp")
	if err := store.WriteNewKey(s.key); err != nil {
		t.Fatal(err)
	}
	const token = "4f6b0c2e9d1a7e35b8c0f2a6d4e19b73"
	tokenFile := filepath.Join(dir, "metrics.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`hostname = "mx.e2e.test"
data_dir = %q
key_file = %q

[smtp]
listen = [%q]

[[queue]]
name = "support"
address = %q

[web]
listen = "127.0.0.1:0"

[metrics]
listen = "127.0.0.1:0"
token_file = %q
`, s.data, s.key, s.smtp, queueAddr, tokenFile)
	if err := os.WriteFile(s.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := s.start(t)
	metrics := mustFind(t, d.out.String(), `listening: metrics (http://127\.0\.0\.1:\d+/)metrics`)
	web := "http://" + d.web + "/"
	_, port, _ := strings.Cut(d.web, ":")

	for _, tc := range []struct {
		name string
		args []string
		code string
		body string
	}{
		{"metrics without token", []string{metrics + "metrics"}, "401", "bearer token"},
		{"metrics with a wrong token", []string{"-H", "Authorization: Bearer " + token[:31] + "0", metrics + "metrics"}, "401", ""},
		{"metrics with the token", []string{"-H", "Authorization: Bearer " + token, metrics + "metrics"}, "200", `mailgate_connections_max{service="web"}`},
		{"detailed health with the token", []string{"-H", "Authorization: Bearer " + token, metrics + "healthz"}, "200", "ok\n"},
		{"metrics rebinding", []string{"-H", "Authorization: Bearer " + token, "-H", "Host: attacker.example", metrics + "metrics"}, "421", ""},
		{"no metrics on the page", []string{web + "metrics"}, "404", ""},
		{"public health", []string{web + "healthz"}, "200", "ok\n"},
		{"page by address", []string{web + "login"}, "200", "password"},
		{"page by hostname", []string{"-H", "Host: mx.e2e.test:" + port, web + "login"}, "200", "password"},
		{"page by localhost", []string{"http://localhost:" + port + "/login"}, "200", "password"},
		{"page rebinding", []string{"-H", "Host: attacker.example", web + "login"}, "421", "allowed_hosts"},
		{"health rebinding", []string{"-H", "Host: attacker.example:" + port, web + "healthz"}, "421", ""},
	} {
		code, body := curl(t, tc.args...)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s: %s %.200q, want %s with %q", tc.name, code, body, tc.code, tc.body)
		}
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d\n%s", code, d.out)
	}
}
