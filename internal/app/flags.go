package app

import (
	"flag"
	"fmt"
	"strings"
)

// ParseArgs parses args with fs, allowing flags before, between and after positional
// arguments (`ticket show 7 --json` is `ticket show --json 7`), with one or two dashes.
// A lone "--" ends the flags. It returns the positional arguments in order.
func ParseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		if strings.HasPrefix(a, "---") || name == "" {
			return nil, fmt.Errorf("bad flag syntax: %s", a)
		}
		flags = append(flags, "-"+name)
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // fs.Parse reports it with the usage text
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 >= len(args) {
			return nil, fmt.Errorf("flag needs an argument: -%s", name)
		}
		i++
		flags = append(flags, args[i])
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	return pos, nil
}

// Strings is a flag that may be repeated (-queue a -queue b) or given as a comma list.
type Strings []string

func (s *Strings) String() string { return strings.Join(*s, ",") }

// Set adds one or more comma-separated values.
func (s *Strings) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}
