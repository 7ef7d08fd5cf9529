package config

import (
	_ "embed"
	"encoding"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

//go:embed dev.toml
var devTOML []byte

// DevFile names the embedded dev default in problems.
const DevFile = "dev.toml (embedded)"

// Load reads path, parses it and runs every check including the file checks
// (key files exist with mode 0600 or stricter). Problems come back as *Errors;
// a file that cannot be read is a plain wrapped error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, errs := parse(path, data, filepath.Dir(path))
	if c != nil {
		c.Path = path
		errs = append(errs, c.checkFiles()...)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse checks syntax, schema (unknown keys, wrong types) and values, but
// touches no file: Validate (called by Load) adds the file checks. Relative
// paths in the text are taken relative to the directory of name.
func Parse(name string, data []byte) (*Config, error) {
	c, errs := parse(name, data, filepath.Dir(name))
	if err := errs.err(); err != nil {
		return nil, err
	}
	c.Path = name
	return c, nil
}

// Validate runs the value checks and the file checks (stat only) on c, which
// may have been built in code. Problems point at the lines c was parsed from,
// when it was. In dev mode missing key files are fine: the daemon creates them.
func Validate(c *Config) error {
	errs := append(c.checkValues(), c.checkFiles()...)
	return errs.err()
}

// Dev returns the embedded dev default with its relative paths under dataDir
// ("./mailgate-data" when empty). Dev is set so key files may be missing.
func Dev(dataDir string) (*Config, error) {
	if dataDir == "" {
		dataDir = "./mailgate-data"
	}
	c, errs := parse(DevFile, devTOML, dataDir)
	if c != nil {
		c.Dev = true
		errs = append(errs, c.checkFiles()...)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// parse returns the config (nil on a syntax error) and every problem found.
func parse(name string, data []byte, base string) (*Config, Errors) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{{File: name, Line: pe.Position.Line, Msg: "TOML syntax: " + pe.Message}}
		}
		return nil, Errors{{File: name, Msg: "TOML syntax: " + err.Error()}}
	}
	c := Default()
	d := &decoder{file: name, lines: indexLines(string(data))}
	d.table(reflect.ValueOf(c).Elem(), raw, "", "")
	c.lines, c.source = d.lines, name
	c.fillDerived()
	c.resolve(base)
	errs := append(d.errs, c.checkValues()...)
	return c, errs
}

// fillDerived sets defaults that depend on other values.
func (c *Config) fillDerived() {
	for i := range c.Fetch.Accounts {
		a := &c.Fetch.Accounts[i]
		if a.TLS == "" {
			a.TLS = "implicit"
			if strings.HasPrefix(strings.ToLower(a.URL), "imap://") {
				a.TLS = "starttls"
			}
		}
	}
}

// resolve makes relative paths relative to base (the config file's directory),
// so the daemon's working directory does not matter.
func (c *Config) resolve(base string) {
	for _, f := range c.files() {
		if *f.val != "" && !filepath.IsAbs(*f.val) {
			*f.val = filepath.Join(base, *f.val)
		}
	}
	if c.DataDir != "" && !filepath.IsAbs(c.DataDir) {
		c.DataDir = filepath.Join(base, c.DataDir)
	}
}

// decoder fills a Config from the generic TOML tree by reflection, so that
// every unknown key and every wrong type is reported, not just the first.
type decoder struct {
	file  string
	lines lineIndex
	errs  Errors
}

func (d *decoder) at(path, format string, args ...any) {
	d.errs = append(d.errs, Problem{File: d.file, Line: d.lines.find(path), Msg: fmt.Sprintf(format, args...)})
}

var (
	durationType      = reflect.TypeOf(Duration{})
	textUnmarshalType = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

type field struct {
	name string
	v    reflect.Value
}

func fieldsOf(v reflect.Value) []field {
	var out []field
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name := sf.Tag.Get("toml")
		if !sf.IsExported() || name == "" || name == "-" {
			continue
		}
		out = append(out, field{name, v.Field(i)})
	}
	return out
}

// isTable reports whether Go type t stands for a TOML table.
func isTable(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && t != durationType
}

// table decodes m into struct v. path is the TOML key path of the table,
// section how to name it in messages ("[smtp]", "[[queue]] #2").
func (d *decoder) table(v reflect.Value, m map[string]any, path, section string) {
	fields := fieldsOf(v)
	byName := map[string]reflect.Value{}
	names := make([]string, 0, len(fields))
	for _, f := range fields {
		byName[f.name] = f.v
		names = append(names, f.name)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		li, lj := d.lines.find(joinPath(path, keys[i])), d.lines.find(joinPath(path, keys[j]))
		if li != lj {
			return li < lj
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		kp := joinPath(path, k)
		fv, ok := byName[k]
		if !ok {
			d.unknown(kp, k, section, names)
			continue
		}
		d.value(fv, m[k], kp, k, section)
	}
}

func (d *decoder) unknown(path, key, section string, names []string) {
	where := ""
	if section != "" {
		where = " in " + section
	}
	msg := fmt.Sprintf("unknown key %q%s", key, where)
	if s := suggest(key, names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	} else if homes := homesOf(key); len(homes) > 0 {
		msg += fmt.Sprintf("; %q belongs in %s", key, orList(homes))
	} else {
		msg += "; known keys here: " + strings.Join(names, ", ")
	}
	d.at(path, "%s", msg)
}

// homesOf lists the sections that have a key of this name (for a key put
// under the wrong table, e.g. tls_cert at the top).
func homesOf(key string) []string {
	var out []string
	var walk func(t reflect.Type, section string)
	walk = func(t reflect.Type, section string) {
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			name := sf.Tag.Get("toml")
			if name == "" || name == "-" {
				continue
			}
			ft := sf.Type
			sub := name
			if section != "" {
				sub = section + "." + name
			}
			if name == key && section != "" && (isTable(ft) || ft.Kind() == reflect.Slice && isTable(ft.Elem())) {
				out = append(out, sectionName(t, section)) // e.g. [[account]] for [[fetch.account]]
			}
			switch {
			case isTable(ft):
				walk(ft, sub)
			case ft.Kind() == reflect.Slice && isTable(ft.Elem()):
				walk(ft.Elem(), sub)
			case name == key:
				out = append(out, sectionName(t, section))
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	return out
}

func sectionName(t reflect.Type, section string) string {
	switch {
	case section == "":
		return "the top level (before any [table])"
	case t == reflect.TypeOf(Queue{}) || t == reflect.TypeOf(FetchAccount{}):
		return "[[" + section + "]]"
	}
	return "[" + section + "]"
}

func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// tomlType names the TOML type of a decoded value.
func tomlType(x any) string {
	switch x.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date/time"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("a %T", x)
}

func (d *decoder) value(v reflect.Value, x any, path, key, section string) {
	where := key
	if section != "" {
		where = key + " in " + section
	}
	t := v.Type()
	wrong := func(hint string) {
		d.at(path, "%s must be %s, not %s; %s", where, typeWord(t), tomlType(x), hint)
	}
	switch {
	case reflect.PointerTo(t).Implements(textUnmarshalType):
		s, ok := x.(string)
		if !ok {
			wrong("write e.g. " + key + " = " + exampleLiteral(t, x))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			d.at(path, "%s: %v", where, err)
		}
	case t.Kind() == reflect.String:
		s, ok := x.(string)
		if !ok {
			wrong("write e.g. " + key + " = " + exampleLiteral(t, x))
			return
		}
		v.SetString(s)
	case t.Kind() == reflect.Bool:
		b, ok := x.(bool)
		if !ok {
			wrong("write " + key + " = true or " + key + " = false (no quotes)")
			return
		}
		v.SetBool(b)
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		n, ok := x.(int64)
		if !ok {
			wrong("write e.g. " + key + " = " + exampleLiteral(t, x))
			return
		}
		if t.Kind() == reflect.Int && (n > math.MaxInt || n < math.MinInt) {
			d.at(path, "%s: %d is too large", where, n)
			return
		}
		v.SetInt(n)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		arr, ok := x.([]any)
		if !ok {
			wrong("write e.g. " + key + " = " + exampleLiteral(t, x))
			return
		}
		out := make([]string, 0, len(arr))
		for i, e := range arr {
			s, ok := e.(string)
			if !ok {
				d.at(indexPath(path, i), "%s: element %d must be a string, not %s; quote it: %s",
					where, i+1, tomlType(e), strconv.Quote(fmt.Sprint(e)))
				continue
			}
			out = append(out, s)
		}
		v.Set(reflect.ValueOf(out))
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String && t.Elem().Kind() == reflect.String:
		m, ok := x.(map[string]any)
		if !ok {
			wrong(`write e.g. ` + key + ` = { de = "..." }`)
			return
		}
		if len(m) == 0 {
			return // {} is the default: no entries
		}
		out := reflect.MakeMapWithSize(t, len(m))
		for k, e := range m {
			s, ok := e.(string)
			if !ok {
				d.at(path+"."+k, "%s: %s must be a string, not %s; quote it", where, k, tomlType(e))
				continue
			}
			out.SetMapIndex(reflect.ValueOf(k), reflect.ValueOf(s))
		}
		v.Set(out)
	case t.Kind() == reflect.Slice && isTable(t.Elem()):
		var elems []map[string]any
		switch a := x.(type) {
		case []map[string]any:
			elems = a
		case []any:
			for i, e := range a {
				m, ok := e.(map[string]any)
				if !ok {
					d.at(indexPath(path, i), "%s: element %d must be a table, not %s; write one [[%s]] block per entry",
						where, i+1, tomlType(e), path)
					continue
				}
				elems = append(elems, m)
			}
		case map[string]any:
			d.at(path, "%s must be written [[%s]] (double brackets, one block per entry), not [%s]", where, path, path)
			return
		default:
			wrong("write one [[" + path + "]] block per entry")
			return
		}
		out := reflect.MakeSlice(t, 0, len(elems))
		for i, m := range elems {
			ev := reflect.New(t.Elem()).Elem()
			ev.Set(reflect.ValueOf(elemDefault(t.Elem())))
			d.table(ev, m, indexPath(path, i), fmt.Sprintf("[[%s]] #%d", path, i+1))
			out = reflect.Append(out, ev)
		}
		v.Set(out)
	case isTable(t):
		m, ok := x.(map[string]any)
		if !ok {
			d.at(path, "%s must be a table, not %s; write [%s] on a line of its own and its keys below it", where, tomlType(x), path)
			return
		}
		d.table(v, m, path, "["+path+"]")
	default:
		// A schema type this decoder does not know: a bug here, not in the file.
		d.at(path, "%s: unsupported field type %s (mailgate bug)", where, t)
	}
}

func elemDefault(t reflect.Type) any {
	switch t {
	case reflect.TypeOf(Queue{}):
		return defaultQueue()
	case reflect.TypeOf(FetchAccount{}):
		return defaultFetchAccount()
	}
	return reflect.Zero(t).Interface()
}

func typeWord(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration string"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Bool:
		return "a boolean"
	case t.Kind() == reflect.Int, t.Kind() == reflect.Int64:
		return "an integer"
	case t.Kind() == reflect.Slice:
		return "an array of strings"
	}
	return "a " + t.String()
}

// exampleLiteral suggests what to write: the found value in the right type
// when it converts cleanly ("25" → 25), else a typical value.
func exampleLiteral(t reflect.Type, found any) string {
	switch {
	case t == durationType:
		if n, ok := found.(int64); ok {
			return strconv.Quote(strconv.FormatInt(n, 10) + "s")
		}
		return `"10m"`
	case t.Kind() == reflect.String:
		switch f := found.(type) {
		case int64, float64, bool:
			return strconv.Quote(fmt.Sprint(f))
		}
		return `"..."`
	case t.Kind() == reflect.Int, t.Kind() == reflect.Int64:
		if s, ok := found.(string); ok {
			if _, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil {
				return strings.TrimSpace(s) + " (no quotes)"
			}
		}
		if f, ok := found.(float64); ok && f == math.Trunc(f) && math.Abs(f) < 1e18 {
			return strconv.FormatInt(int64(f), 10)
		}
		return "100"
	case t.Kind() == reflect.Slice:
		if s, ok := found.(string); ok {
			return "[" + strconv.Quote(s) + "]"
		}
		return `["..."]`
	}
	return `"..."`
}
