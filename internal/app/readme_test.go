package app

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"mailgate/config"
)

var update = flag.Bool("update", false, "rewrite the generated parts of README.md")

const (
	readme     = "../../README.md"
	tableBegin = "<!-- BEGIN CONFIG TABLE: generated from the config package by `go test ./internal/app -run TestREADMEConfigTable -update`; edit config, not this -->"
	tableEnd   = "<!-- END CONFIG TABLE -->"
)

// TestREADMEConfigTable keeps the README's configuration reference true: every key the
// config package knows, its default as the package fills it, and the comment `mailgate init`
// writes beside it.
func TestREADMEConfigTable(t *testing.T) {
	want := configTable(t)
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, tableBegin), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the markers %q ... %q", tableBegin, tableEnd)
	}
	got := doc[i+len(tableBegin) : j]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(readme, []byte(doc[:i+len(tableBegin)]+want+doc[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("README.md's configuration table is out of date: run go test ./internal/app -run TestREADMEConfigTable -update\n%s", want)
}

// Keys without a default: the table says "required" instead of the placeholder used to parse.
var required = map[string]bool{
	"hostname": true, "queue.name": true, "queue.address": true,
	"fetch.account.url": true, "fetch.account.username": true, "fetch.account.password_file": true, "fetch.account.queue": true,
}

// Defaults that depend on another key.
var derived = map[string]string{
	"fetch.account.tls": `from url: imaps → "implicit", imap → "starttls"`,
}

// Meanings for keys that the example config leaves without a comment.
var extraMeaning = map[string]string{
	"queue.address":          "the address customers write to; RCPT TO is matched against it",
	"fetch.account.username": "login name at the upstream IMAP server",
}

func configTable(t *testing.T) string {
	// Defaults as the package fills them, including array-of-table elements.
	cfg, err := config.Parse("defaults.toml", []byte(`hostname = "required.example"
[[queue]]
name = "required"
address = "required@required.example"
[[fetch.account]]
url = "imaps://required.example/INBOX"
username = "required"
password_file = "/required"
queue = "required"
`))
	if err != nil {
		t.Fatal(err)
	}
	meaning := exampleComments(t)

	type row struct{ key, def, meaning string }
	sections := map[string][]row{}
	var order []string
	var walk func(v reflect.Value, section string)
	walk = func(v reflect.Value, section string) {
		tt := v.Type()
		for i := 0; i < tt.NumField(); i++ {
			f := tt.Field(i)
			name := f.Tag.Get("toml")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			fv := v.Field(i)
			path := name
			if section != "" {
				path = section + "." + name
			}
			switch {
			case fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(config.Duration{}):
				walk(fv, path)
				continue
			case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct:
				if fv.Len() > 0 {
					walk(fv.Index(0), path)
				}
				continue
			}
			if _, ok := sections[section]; !ok {
				order = append(order, section)
			}
			def := literal(fv)
			if required[path] {
				def = "required"
			}
			if d, ok := derived[path]; ok {
				def = d
			}
			m := meaning[path]
			if m == "" {
				m = extraMeaning[path]
			}
			if m == "" {
				t.Errorf("config key %s has no comment in config.Example and none here: add one", path)
			}
			sections[section] = append(sections[section], row{name, def, m})
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "")

	var b strings.Builder
	b.WriteString("\n")
	for _, sec := range order {
		title := "top level"
		switch sec {
		case "":
		case "queue", "fetch.account":
			title = "[[" + sec + "]] (one block per entry)"
		default:
			title = "[" + sec + "]"
		}
		fmt.Fprintf(&b, "\n**%s**\n\n| key | default | meaning |\n|---|---|---|\n", title)
		for _, r := range sections[sec] {
			fmt.Fprintf(&b, "| `%s` | `%s` | %s |\n", r.key, r.def, strings.ReplaceAll(r.meaning, "|", "\\|"))
		}
	}
	b.WriteString("\n")
	return b.String()
}

func literal(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case string:
		return fmt.Sprintf("%q", x)
	case []string:
		q := make([]string, len(x))
		for i, s := range x {
			q[i] = fmt.Sprintf("%q", s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case config.Duration:
		return fmt.Sprintf("%q", x.String())
	case map[string]string:
		keys := slices.Sorted(maps.Keys(x))
		q := make([]string, len(keys))
		for i, k := range keys {
			q[i] = fmt.Sprintf("%s = %q", k, x[k])
		}
		return "{" + strings.Join(q, ", ") + "}"
	}
	return fmt.Sprint(v.Interface())
}

var (
	sectionLine = regexp.MustCompile(`^\[\[?([a-z_.]+)\]\]?`)
	keyLine     = regexp.MustCompile(`^([a-z0-9_]+) = .*?\s+#\s+(.*)$`)
)

// exampleComments maps "section.key" to the comment config.Example writes beside it.
func exampleComments(t *testing.T) map[string]string {
	out := map[string]string{}
	section := ""
	for _, line := range strings.Split(config.Example("example.com", "/etc/mailgate"), "\n") {
		line = strings.TrimPrefix(line, "# ") // the commented-out [[fetch.account]] block
		if m := sectionLine.FindStringSubmatch(line); m != nil {
			section = m[1]
			continue
		}
		if m := keyLine.FindStringSubmatch(line); m != nil {
			key := m[1]
			if section != "" {
				key = section + "." + key
			}
			out[key] = m[2]
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d commented keys in config.Example", len(out))
	}
	return out
}
