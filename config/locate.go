package config

import (
	"strconv"
	"strings"
)

// lineIndex maps key paths to the 1-based line they are written on. Paths are
// dotted key names with an index for array elements: "smtp.listen",
// "smtp.listen[1]", "queue[0].name", "fetch.account[2].url".
//
// BurntSushi/toml keeps key positions private, and for arrays of tables it
// remembers only the last element's, so we scan the (already valid) source
// ourselves. The scanner is forgiving: on anything unexpected it moves on.
type lineIndex map[string]int

// find returns the line of path, else of its nearest enclosing key or table,
// else 0.
func (l lineIndex) find(path string) int {
	for path != "" {
		if n, ok := l[path]; ok {
			return n
		}
		path = parentPath(path)
	}
	return 0
}

func (l lineIndex) has(path string) bool {
	_, ok := l[path]
	return ok
}

// parentPath drops the last ".key" or "[n]" from path.
func parentPath(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

func indexLines(src string) lineIndex {
	s := &scanner{src: src, line: 1, idx: lineIndex{}, arrays: map[string]int{}}
	s.document()
	return s.idx
}

type scanner struct {
	src    string
	pos    int
	line   int
	depth  int
	idx    lineIndex
	arrays map[string]int // [[array table]] path → elements seen so far
	table  string         // current [table] path
}

// maxDepth bounds nesting of arrays and inline tables; past it we stop
// recording and only skip.
const maxDepth = 64

func (s *scanner) eof() bool { return s.pos >= len(s.src) }

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.pos]
}

func (s *scanner) next() {
	if s.eof() {
		return
	}
	if s.src[s.pos] == '\n' {
		s.line++
	}
	s.pos++
}

func (s *scanner) set(path string, line int) {
	s.idx[path] = line
}

func (s *scanner) setFirst(path string, line int) {
	if _, ok := s.idx[path]; !ok {
		s.idx[path] = line
	}
}

// skip passes spaces and tabs, and with newlines also line ends and comments.
func (s *scanner) skip(newlines bool) {
	for !s.eof() {
		switch s.peek() {
		case ' ', '\t':
			s.next()
		case '\r', '\n':
			if !newlines {
				return
			}
			s.next()
		case '#':
			if !newlines {
				return
			}
			for !s.eof() && s.peek() != '\n' {
				s.next()
			}
		default:
			return
		}
	}
}

func (s *scanner) document() {
	for !s.eof() {
		start := s.pos
		s.skip(true)
		if s.eof() {
			return
		}
		if s.peek() == '[' {
			s.header()
		} else {
			s.keyValue(s.table)
		}
		if s.pos == start {
			s.next()
		}
	}
}

// header reads [a.b] or [[a.b]] and makes it the current table.
func (s *scanner) header() {
	line := s.line
	s.next()
	array := false
	if s.peek() == '[' {
		array = true
		s.next()
	}
	keys := s.keys()
	s.skip(false)
	for s.peek() == ']' {
		s.next()
	}
	path := ""
	for i, k := range keys {
		path = joinPath(path, k)
		last := i == len(keys)-1
		if last && array {
			n := s.arrays[path]
			s.arrays[path] = n + 1
			s.setFirst(path, line)
			path = indexPath(path, n)
			s.set(path, line)
			break
		}
		if n, ok := s.arrays[path]; ok && n > 0 {
			// [fetch.account.x] after [[fetch.account]] refers to the last element.
			path = indexPath(path, n-1)
		}
		if last {
			s.set(path, line)
		} else {
			s.setFirst(path, line)
		}
	}
	s.table = path
}

// keys reads a possibly dotted key: a.b, "a b".c, 'x'.
func (s *scanner) keys() []string {
	var out []string
	for {
		s.skip(false)
		k, ok := s.key()
		if !ok {
			return out
		}
		out = append(out, k)
		s.skip(false)
		if s.peek() != '.' {
			return out
		}
		s.next()
	}
}

func (s *scanner) key() (string, bool) {
	switch s.peek() {
	case '"':
		start := s.pos
		s.next()
		for !s.eof() && s.peek() != '"' && s.peek() != '\n' {
			if s.peek() == '\\' {
				s.next()
			}
			s.next()
		}
		s.next()
		raw := s.src[start:min(s.pos, len(s.src))]
		if k, err := strconv.Unquote(raw); err == nil {
			return k, true
		}
		return strings.Trim(raw, `"`), true
	case '\'':
		s.next()
		start := s.pos
		for !s.eof() && s.peek() != '\'' && s.peek() != '\n' {
			s.next()
		}
		k := s.src[start:s.pos]
		s.next()
		return k, true
	}
	start := s.pos
	for !s.eof() && isBare(s.peek()) {
		s.next()
	}
	return s.src[start:s.pos], s.pos > start
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// keyValue reads key = value under table.
func (s *scanner) keyValue(table string) {
	line := s.line
	keys := s.keys()
	if len(keys) == 0 {
		return
	}
	path := table
	for i, k := range keys {
		path = joinPath(path, k)
		if i < len(keys)-1 {
			s.setFirst(path, line)
		}
	}
	s.set(path, line)
	s.skip(false)
	if s.peek() != '=' {
		return
	}
	s.next()
	s.value(path)
}

func (s *scanner) value(path string) {
	s.skip(false)
	rest := s.src[s.pos:]
	switch {
	case strings.HasPrefix(rest, `"""`), strings.HasPrefix(rest, `'''`):
		s.multiline(rest[:3])
	case strings.HasPrefix(rest, `"`), strings.HasPrefix(rest, `'`):
		q := rest[0]
		s.next()
		for !s.eof() && s.peek() != q && s.peek() != '\n' {
			if q == '"' && s.peek() == '\\' {
				s.next()
			}
			s.next()
		}
		s.next()
	case strings.HasPrefix(rest, "["):
		s.array(path)
	case strings.HasPrefix(rest, "{"):
		s.inline(path)
	default:
		for !s.eof() && !strings.ContainsRune(",]}#\r\n", rune(s.peek())) {
			s.next()
		}
	}
}

func (s *scanner) multiline(delim string) {
	s.pos += 3
	for !s.eof() {
		if delim[0] == '"' && s.peek() == '\\' {
			s.next()
			s.next()
			continue
		}
		if strings.HasPrefix(s.src[s.pos:], delim) {
			s.pos += 3
			// Up to two more quotes belong to the content: """a""""
			for i := 0; i < 2 && s.peek() == delim[0]; i++ {
				s.next()
			}
			return
		}
		s.next()
	}
}

func (s *scanner) array(path string) {
	s.next() // [
	s.depth++
	defer func() { s.depth-- }()
	for i := 0; !s.eof(); i++ {
		s.skip(true)
		if s.peek() == ']' {
			s.next()
			return
		}
		elem := indexPath(path, i)
		if s.depth <= maxDepth {
			s.set(elem, s.line)
		}
		before := s.pos
		s.value(elem)
		s.skip(true)
		switch s.peek() {
		case ',':
			s.next()
		case ']':
			s.next()
			return
		default:
			if s.pos == before {
				s.next()
			}
			return
		}
	}
}

func (s *scanner) inline(path string) {
	s.next() // {
	s.depth++
	defer func() { s.depth-- }()
	for !s.eof() {
		s.skip(true) // TOML 1.1 allows newlines in inline tables
		if s.peek() == '}' {
			s.next()
			return
		}
		line := s.line
		keys := s.keys()
		if len(keys) == 0 {
			return
		}
		p := path
		for i, k := range keys {
			p = joinPath(p, k)
			if s.depth <= maxDepth && i < len(keys)-1 {
				s.setFirst(p, line)
			}
		}
		if s.depth <= maxDepth {
			s.set(p, line)
		}
		s.skip(false)
		if s.peek() != '=' {
			return
		}
		s.next()
		s.value(p)
		s.skip(true)
		switch s.peek() {
		case ',':
			s.next()
		case '}':
			s.next()
			return
		default:
			return
		}
	}
}
