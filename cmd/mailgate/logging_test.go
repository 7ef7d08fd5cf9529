package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The warnings the daemon gives while it starts (here: a queue address the gateway PGP key has
// no user ID for, so WKD does not publish it) go to the configured slog handler, in its
// format, not through the standard log package.
func TestStartWarningsUseTheConfiguredLog(t *testing.T) {
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(b), `format = "text"`, `format = "json"`, 1)
	text += "\n[[queue]]\nname = \"billing\"\naddress = \"billing@example.com\"\n"
	os.WriteFile(cfg, []byte(text), 0o640)

	d := startServe(t, dir, "-config", cfg)
	settle(t, d)
	d.stop(t)
	found := false
	for _, l := range strings.Split(strings.TrimSpace(d.logs()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil || m["msg"] == nil || m["level"] == nil {
			t.Fatalf("log line is not slog JSON: %q", l)
		}
		if strings.HasPrefix(m["msg"].(string), "wkd: the gateway key has no user ID") && m["addr"] == "billing@example.com" && m["level"] == "WARN" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no WKD warning for billing@example.com in the log:\n%s", d.logs())
	}
}
