package web

import (
	"html/template"
	"regexp"
	"strconv"
	"strings"
)

// urlRe finds web links in plain text; only http and https become links.
var urlRe = regexp.MustCompile(`https?://[^\s<>"'\x60]+`)

// mailText renders a message's plain text for the page: every character escaped, web links
// clickable (they open without our page as referrer or opener), and quoted runs of two or more
// lines ("> ...") folded away behind a summary, as mail clients do.
func mailText(text string) template.HTML {
	var b strings.Builder
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i := 0; i < len(lines); {
		j := i
		for j < len(lines) && strings.HasPrefix(strings.TrimLeft(lines[j], " "), ">") {
			j++
		}
		if j-i >= 2 {
			b.WriteString(`<details class="quoted"><summary>quoted text (`)
			b.WriteString(strconv.Itoa(j - i))
			b.WriteString(" lines)</summary>")
			for _, l := range lines[i:j] {
				linkify(&b, l)
				b.WriteByte('\n')
			}
			b.WriteString("</details>")
			i = j
			continue
		}
		linkify(&b, lines[i])
		b.WriteByte('\n')
		i++
	}
	return template.HTML(b.String()) // built from escaped pieces only
}

func linkify(b *strings.Builder, line string) {
	last := 0
	for _, m := range urlRe.FindAllStringIndex(line, -1) {
		start, end := m[0], m[1]
		for end > start && strings.ContainsRune(".,;:!?)]}", rune(line[end-1])) {
			end--
		}
		b.WriteString(template.HTMLEscapeString(line[last:start]))
		u := template.HTMLEscapeString(line[start:end])
		b.WriteString(`<a href="` + u + `" rel="noopener noreferrer nofollow" target="_blank">` + u + `</a>`)
		last = end
	}
	b.WriteString(template.HTMLEscapeString(line[last:]))
}
