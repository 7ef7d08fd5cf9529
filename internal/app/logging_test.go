package app

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// slogTopLevel are the log/slog functions that write through the default logger. Until a
// program sets one, that is the standard log package: plain text on stderr, whatever
// [log] format says. mailgate passes its *slog.Logger instead.
var slogTopLevel = map[string]bool{
	"Debug": true, "Info": true, "Warn": true, "Error": true, "Log": true, "LogAttrs": true,
	"DebugContext": true, "InfoContext": true, "WarnContext": true, "ErrorContext": true,
}

// TestNoStandardLog reads every non-test Go file of the module (not of modules inside it): none may import the standard
// log package or log through slog's package-level functions.
func TestNoStandardLog(t *testing.T) {
	root := filepath.Join("..", "..")
	fset := token.NewFileSet()
	files := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (n == "testdata" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			// Another module (a patched third-party copy) is not mailgate's code; mailgate
			// routes its loggers (e.g. go-smtp's ErrorLog) where it sets them up.
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil && path != root {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		files++
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		slogName := ""
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			switch p {
			case "log":
				t.Errorf("%s: imports the standard log package; take a *slog.Logger", fset.Position(imp.Pos()))
			case "log/slog":
				slogName = "slog"
				if imp.Name != nil {
					slogName = imp.Name.Name
				}
			}
		}
		if slogName == "" {
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == slogName && slogTopLevel[sel.Sel.Name] {
				t.Errorf("%s: slog.%s logs through the default logger (the standard log package); use the component's *slog.Logger", fset.Position(call.Pos()), sel.Sel.Name)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("read only %d Go files under %s", files, root)
	}
}
