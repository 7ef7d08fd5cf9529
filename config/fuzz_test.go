package config

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse: no input makes Parse panic, and every failure is a list of
// problems with a message and a line inside the file.
func FuzzParse(f *testing.F) {
	f.Add(devTOML)
	f.Add([]byte(Example("example.com", "/etc/mailgate")))
	f.Add([]byte(uncommentFetch(Example("example.com", "/etc/mailgate"))))
	f.Add([]byte(minimal("[smtp]\nmax_msg_bytes = \"x\"\nlisten = \"a\"\n")))
	f.Add([]byte("[queue]\nname = 5\n[[fetch.account]]\nurl = \"imap://u:p@[::1\"\n"))
	f.Add([]byte("a = \"\"\"\n[smtp]\nb = 1\n\"\"\"\nqueue = [{name = \"x\", address = 1}, 3]\n"))
	f.Add([]byte("hostname = [[[[[]]]]]\nweb = {listen = {a = {b = 1}}}\n"))
	f.Add([]byte("[a\n"))
	f.Add([]byte("\"\\u00e9\".'x'.y = 1\n[[queue]]\n[queue.x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err == nil {
			if c == nil {
				t.Fatal("Parse returned neither config nor error")
			}
			return
		}
		var errs *Errors
		if !errors.As(err, &errs) || len(*errs) == 0 {
			t.Fatalf("Parse error %T %v is not a non-empty *Errors", err, err)
		}
		lines := strings.Count(string(data), "\n") + 1
		for _, p := range *errs {
			if p.Msg == "" || p.File != "fuzz.toml" || p.Line < 0 || p.Line > lines {
				t.Fatalf("bad problem %+v (file has %d lines)", p, lines)
			}
		}
		_ = err.Error()
	})
}
