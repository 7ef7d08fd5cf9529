// Package testutil holds helpers shared by mailgate's tests: finding the third-party test data
// kept in the repository's top-level testdata folder (sources and licences in its README).
package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// Testdata returns the path of rel inside the module root's testdata folder. Nothing outside
// the repository is read, so a clone passes its tests on its own.
// A missing file fails the test: the data is part of the build, never optional.
func Testdata(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("testdata %s: no go.mod above the test directory", rel)
		}
		dir = parent
	}
	p := filepath.Join(dir, "testdata", rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("testdata %s: %v (third-party test data belongs in <repo>/testdata, see its README)", rel, err)
	}
	return p
}
