package pgp

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecrypt feeds arbitrary messages to Decrypt and VerifySigned with panic recovery off, so a
// panic in our parsing or in go-crypto's fails the target. Seeds: the notmuch PGP/MIME samples.
//
//	go test ./pgp -run '^$' -fuzz FuzzDecrypt -fuzztime 60s
func FuzzDecrypt(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(notmuchDir(f), "*--*"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seeds: %v", err)
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	k := notmuchKey(f)
	known := knownOnly(k.entity)
	recoverPanics = false
	f.Cleanup(func() { recoverPanics = true })
	f.Fuzz(func(t *testing.T, raw []byte) {
		res, err := Decrypt(raw, k, known)
		if err == nil && res == nil {
			t.Fatal("nil result without an error")
		}
		if err == nil && res.SignedBy != "" && res.SignedBy != notmuchFP {
			t.Fatalf("SignedBy %s is not a known key", res.SignedBy)
		}
		v, err := VerifySigned(raw, known)
		if err == nil && (v == nil || !v.Signed) {
			t.Fatal("VerifySigned result without Signed")
		}
	})
}
