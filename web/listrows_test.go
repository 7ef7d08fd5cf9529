package web

import (
	"bytes"
	"html/template"
	"testing"
	"time"

	"mailgate/tickets"
)

// listRowsTemplate is the list's row as html/template wrote it before listRows took over.
const listRowsTemplate = `<table><tbody>
{{range .Tickets}}<tr class="status-{{.Status}}{{if .Unverified}} risk{{end}}" id="t{{.ID}}">
<td data-label="#"><a href="/tickets/{{.ID}}">{{.ID}}</a></td>
<td data-label="Subject" class="subject"><a href="/tickets/{{.ID}}">{{if .Subject}}{{.Subject}}{{else}}(no subject){{end}}</a>
{{- if or .Unverified .Quarantined .Bounced .AutoReply .Encrypted}}<br>{{end}}
{{- if .Quarantined}}<span class="badge warn flag-quarantined">quarantined</span>{{else if .Unverified}}<span class="badge warn flag-unverified">unverified sender</span>{{end}}
{{- if .Bounced}}<span class="badge warn flag-bounced">reply bounced</span>{{end}}
{{- if .AutoReply}}<span class="badge flag-auto">auto-reply</span>{{end}}
{{- if .Encrypted}}<span class="badge ok flag-encrypted">encrypted</span>{{end}}</td>
<td data-label="Customer" class="customer">{{if .Unverified}}<span class="unverified-addr" title="not verified: may be spoofed">⚠ {{.Customer}}</span>{{else}}{{.Customer}}{{end}}</td>
<td data-label="Waiting since" class="waiting">{{if .Waiting.IsZero}}<span class="hint">answered</span>{{else}}<time datetime="{{.Waiting.UTC.Format "2006-01-02T15:04:05Z"}}" title="{{whenIn $.Loc .Waiting}}">{{ago $.Now .Waiting}}</time>{{end}}</td>
<td data-label="Status">{{.Status}}</td><td data-label="Assignee">{{if .Assignee}}{{.Assignee}}{{else}}<span class="hint">nobody</span>{{end}}</td><td data-label="Queue">{{.Queue}}</td>
<td data-label="Last activity"><time title="{{whenIn $.Loc .Updated}}">{{ago $.Now .Updated}}</time></td>
</tr>
{{end}}</tbody></table>`

// The list's rows are written in Go for speed; they must come out exactly as html/template
// wrote them, escaping included, whatever a customer puts in a subject or an address.
func TestListRowsAsTheTemplate(t *testing.T) {
	ref := template.Must(template.New("rows").Funcs(funcs).Parse(listRowsTemplate))
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	hostile := []string{"", "plain", `<script>alert(1)</script>`, `"><img src=x onerror=alert(1)>`, `a'b"c&d+e`,
		"nul\x00byte", "bad\xffutf8\xc3", "bidi \u202Efdp.exe", "&amp; already", "tab\tnew\nline", "ünïcödé 日本"}
	var ts []tickets.Ticket
	for i, s := range hostile {
		for flags := range 32 {
			tk := tickets.Ticket{ID: uint64(i*32 + flags + 1), Subject: s, Customer: hostile[(i+1)%len(hostile)] + "@x.example",
				Status: tickets.Status(hostile[(i+2)%len(hostile)]), Assignee: hostile[(i+3)%len(hostile)], Queue: hostile[(i+4)%len(hostile)],
				Unverified: flags&1 != 0, Quarantined: flags&2 != 0, Bounced: flags&4 != 0, AutoReply: flags&8 != 0, Encrypted: flags&16 != 0,
				Updated: now.Add(-time.Duration(flags*flags) * 7 * time.Minute)}
			if flags%3 != 0 {
				tk.Waiting = now.Add(-time.Duration(flags) * 5 * time.Hour)
			}
			ts = append(ts, tk)
		}
	}
	for _, loc := range []*time.Location{nil, time.UTC, time.FixedZone(`<b>"Z'&+`, 3600)} {
		var want bytes.Buffer
		if err := ref.Execute(&want, map[string]any{"Tickets": ts, "Now": now, "Loc": loc}); err != nil {
			t.Fatal(err)
		}
		got := "<table><tbody>\n" + string(listRows(ts, now, loc)) + "</tbody></table>"
		if got != want.String() {
			g, w := got, want.String()
			i := 0
			for i < len(g) && i < len(w) && g[i] == w[i] {
				i++
			}
			t.Fatalf("zone %v: rows differ at byte %d:\n got %q\nwant %q", loc, i, g[i:min(len(g), i+200)], w[i:min(len(w), i+200)])
		}
	}
}
