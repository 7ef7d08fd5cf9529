package config

import "testing"

func TestIndexLines(t *testing.T) {
	src := `# comment with key = "value"
top = 1 # trailing
text = """
fake = 1
[fake]
"""
lit = '''
[[fake]]
'''
"quoted key" = 'x'
dotted . "a.b" .c = 2

[smtp]
listen = [
  "127.0.0.1:25", # first
  # a comment inside the array
  "[::1]:25",
]
inline = { a = 1, b = { c = "}" } }

[[queue]]
name = "a"

[[queue]]
name = "b"
[queue.sub]
x = 1

[[fetch.account]]
url = "u"
[[fetch.account]]
url = "v"
list = [{ k = 1 }, { k = 2 }]
`
	got := indexLines(src)
	want := map[string]int{
		"top":                        2,
		"text":                       3,
		"lit":                        7,
		"quoted key":                 10,
		"dotted":                     11,
		"dotted.a.b.c":               11,
		"smtp":                       13,
		"smtp.listen":                14,
		"smtp.listen[0]":             15,
		"smtp.listen[1]":             17,
		"smtp.inline":                19,
		"smtp.inline.a":              19,
		"smtp.inline.b.c":            19,
		"queue":                      21,
		"queue[0]":                   21,
		"queue[0].name":              22,
		"queue[1]":                   24,
		"queue[1].name":              25,
		"queue[1].sub":               26,
		"queue[1].sub.x":             27,
		"fetch":                      29,
		"fetch.account[0]":           29,
		"fetch.account[1]":           31,
		"fetch.account[1].url":       32,
		"fetch.account[1].list[1]":   33,
		"fetch.account[1].list[1].k": 33,
	}
	for path, line := range want {
		if got[path] != line {
			t.Errorf("%s: line %d, want %d", path, got[path], line)
		}
	}
	for _, fake := range []string{"fake", "smtp.fake"} {
		if got.has(fake) {
			t.Errorf("%s found inside a string", fake)
		}
	}
	if n := got.find("queue[1].name.nothing"); n != 25 {
		t.Errorf("find falls back to the parent: got %d", n)
	}
	if n := got.find("nothing.at.all"); n != 0 {
		t.Errorf("find of unknown path = %d", n)
	}
}
