// Package testutil holds helpers shared by mailgate's tests: finding the third-party test data
// that lives beside the project in ../shared/testdata.
package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// Testdata returns the path of rel inside ../shared/testdata (relative to the module root).
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
	p := filepath.Join(dir, "..", "shared", "testdata", rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("testdata %s: %v (the shared test data must sit beside the project root)", rel, err)
	}
	return p
}
