package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// Issue 11.7: `mailgate agent app-password` refuses an auditor with a clear error.
func TestAgentAppPasswordRefusesAuditor(t *testing.T) {
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	for _, a := range [][]string{
		{"agent", "add", "-config", cfg, "-name", "eve", "-email", "eve@example.com", "-role", "auditor"},
		{"agent", "add", "-config", cfg, "-name", "bob", "-email", "bob@example.com", "-role", "agent", "-queue", "support"},
	} {
		if r := mailgate(t, dir, a...); r.code != 0 {
			t.Fatalf("%q:\n%s", a, r)
		}
	}
	r := mailgate(t, dir, "agent", "app-password", "-config", cfg, "eve")
	if r.code == 0 || !strings.Contains(r.stderr, "auditors have no app passwords") || strings.Contains(r.stdout, "App password") {
		t.Fatalf("app-password for an auditor:\n%s", r)
	}
	if r := mailgate(t, dir, "agent", "app-password", "-config", cfg, "bob"); r.code != 0 || !strings.Contains(r.stdout, "App password for bob") {
		t.Fatalf("app-password for an agent:\n%s", r)
	}
	r = mailgate(t, dir, "audit", "export", "-config", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, `"action":"apppassword.new"`) || !strings.Contains(r.stdout, `"result":"denied"`) {
		t.Fatalf("the refusal is not in the audit log:\n%s", r)
	}
}
