package app

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"mailgate/config"
)

// TestApplyConnBudget: caps left at 0 get their share of the open-file limit, explicit ones are
// kept, and settings that add up to more than the limit allows are warned about.
func TestApplyConnBudget(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := config.Default()
	cfg.IMAP.MaxConns = 77
	applyConnBudget(cfg, 1024, log)
	if cfg.SMTP.MaxConns != 358 || cfg.SMTP.SubmissionMaxConns != 89 || cfg.IMAP.MaxConns != 77 || cfg.Web.MaxConns != 179 {
		t.Fatalf("caps smtp %d submission %d imap %d web %d", cfg.SMTP.MaxConns, cfg.SMTP.SubmissionMaxConns, cfg.IMAP.MaxConns, cfg.Web.MaxConns)
	}
	if !strings.Contains(logs.String(), "connection caps") || strings.Contains(logs.String(), "WARN") {
		t.Fatalf("log: %s", logs.String())
	}
	logs.Reset()
	cfg = config.Default()
	cfg.SMTP.MaxConns = 5000
	applyConnBudget(cfg, 1024, log)
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "LimitNOFILE") {
		t.Fatalf("no warning for caps above the limit: %s", logs.String())
	}
}
