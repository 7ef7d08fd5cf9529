package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// swaks sends one message with the real swaks client and returns its transcript and exit code.
func swaks(t *testing.T, server, from, to string, extra ...string) (string, int) {
	t.Helper()
	args := append([]string{"--server", server, "--from", from, "--to", to, "--helo", "client.example.org",
		"--timeout", "60"}, extra...)
	out, err := exec.Command("/usr/bin/swaks", args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	return string(out), 0
}

// TestQueueAliasesAndPostmasterWithSwaks runs an installation whose queue changed its address:
// a customer's reply to the old address (an alias) still joins the ticket, postmaster@ and the
// DMARC rua address that init prints are accepted into the reports queue, and anything else is
// refused at RCPT.
func TestQueueAliasesAndPostmasterWithSwaks(t *testing.T) {
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	text, _ := os.ReadFile(cfg)
	s := strings.Replace(string(text), `address = "support@example.com"`, `address = "help@example.com"`, 1)
	s = strings.Replace(s, `aliases = []`, `aliases = ["support@example.com"]`, 1)
	s = strings.Replace(s, "auto_ack = true", "auto_ack = false", 1)
	s = strings.Replace(s, "\n[outbound]\n", "\n[[queue]]\nname = \"reports\"\naddress = \"dmarc-reports@example.com\"\npostmaster = true\n\n[outbound]\n", 1)
	// DNS lookups of the test senders' domains must fail fast, not wait for the network.
	s = strings.Replace(s, `resolver = ""`, `resolver = "127.0.0.1:9"`, 1)
	s = strings.Replace(s, `timeout = "10s"`, `timeout = "1s"`, 1)
	os.WriteFile(cfg, []byte(s), 0o640)
	if r := mailgate(t, dir, "check-config", "-config", cfg); r.code != 0 {
		t.Fatalf("check-config:\n%s", r)
	}
	d := startServe(t, dir, "-config", cfg)
	d.waitReady(t)
	smtpAddr := d.line(t, `^listening: smtp (127\.0\.0\.1:\d+) \(STARTTLS\)$`)[1]

	// The first mail goes to the new address; the customer answers our reply at the old one.
	if out, code := swaks(t, smtpAddr, "alice@example.org", "help@example.com", "--header", "Subject: Broken widget",
		"--header", "Message-ID: <first@example.org>", "--body", "It broke."); code != 0 {
		t.Fatalf("swaks to the queue address:\n%s", out)
	}
	var list []ticketJSON
	jsonOut(t, dir, &list, "ticket", "list", "-config", cfg)
	if len(list) != 1 || list[0].Queue != "support" {
		t.Fatalf("tickets: %+v", list)
	}
	id := *list[0].ID
	reply := filepath.Join(dir, "reply.txt")
	os.WriteFile(reply, []byte("Which widget?\n"), 0o600)
	mailgate(t, dir, "agent", "add", "-config", cfg, "-name", "bob", "-email", "bob@example.com", "-role", "agent", "-queue", "support")
	if r := mailgate(t, dir, "ticket", "reply", "-config", cfg, "-agent", "bob", "-text-file", reply, itoa(id)); r.code != 0 {
		t.Fatalf("reply:\n%s", r)
	}
	var show map[string]any
	jsonOut(t, dir, &show, "ticket", "show", "-config", cfg, itoa(id))
	msgs := show["messages"].([]any)
	ourID := msgs[len(msgs)-1].(map[string]any)["message_id"].(string)
	if out, code := swaks(t, smtpAddr, "alice@example.org", "support@example.com", "--header", "Subject: Re: Broken widget",
		"--header", "In-Reply-To: "+ourID, "--header", "References: <first@example.org> "+ourID, "--body", "The blue one."); code != 0 {
		t.Fatalf("swaks to the old address (alias) was refused:\n%s", out)
	}
	jsonOut(t, dir, &show, "ticket", "show", "-config", cfg, itoa(id))
	if n := len(show["messages"].([]any)); n != 3 {
		t.Fatalf("the reply to the old address did not join ticket %d (%d messages)", id, n)
	}

	// postmaster at the domain and at the host, and the DMARC rua address init prints.
	initOut := mailgate(t, ".", "init", "-dir", filepath.Join(t.TempDir(), "x"), "-domain", "example.com").stdout
	if !strings.Contains(initOut, "rua=mailto:postmaster@example.com") {
		t.Fatalf("init prints another rua address:\n%s", initOut)
	}
	for _, rcpt := range []string{"postmaster@example.com", "Postmaster@mail.example.com", "dmarc-reports@example.com"} {
		if out, code := swaks(t, smtpAddr, "noreply-dmarc-support@google.com", rcpt, "--header", "Subject: Report domain: example.com Submitter: google.com",
			"--body", "aggregate report"); code != 0 {
			t.Fatalf("swaks to %s was refused:\n%s", rcpt, out)
		}
	}
	jsonOut(t, dir, &list, "ticket", "list", "-config", cfg, "-queue", "reports")
	if len(list) != 3 {
		t.Fatalf("reports queue: %+v", list)
	}
	// Anything else is still refused at RCPT, with nothing stored.
	out, code := swaks(t, smtpAddr, "alice@example.org", "sales@example.com", "--body", "x")
	if code == 0 || !strings.Contains(out, "550") {
		t.Fatalf("unknown recipient accepted:\n%s", out)
	}
	jsonOut(t, dir, &list, "ticket", "list", "-config", cfg)
	if len(list) != 4 {
		t.Fatalf("tickets after the refused mail: %d", len(list))
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
