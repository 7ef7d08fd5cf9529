package store

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/chacha20poly1305"
)

// The first byte of every stored value says what follows, so the format can change later.
const (
	// sealFormat: a sealed value, the plaintext as is (the only format of schema 1).
	sealFormat = 1
	// zstdFormat: a sealed value whose plaintext is zstd-compressed; the format byte is in the AD.
	zstdFormat = 2
	// refFormat: a plain reference to a sealed, compressed blob in a segment file (segment.go).
	refFormat = 3
	// blobRefFormat: a sealed reference to a blob sealed under a key of its own, which the
	// reference carries (a prepared value, segment.go). Also the format of such a blob.
	blobRefFormat = 4
)

type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) *sealer {
	a, err := chacha20poly1305.NewX(key)
	if err != nil {
		panic(err) // only a wrong key length, which callers rule out
	}
	return &sealer{aead: a}
}

// sealOverhead is what sealing adds to a plaintext.
const sealOverhead = 1 + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead

func (s *sealer) seal(plain, ad []byte) []byte { return s.sealAs(sealFormat, plain, ad) }

func (s *sealer) sealAs(format byte, plain, ad []byte) []byte {
	out := make([]byte, 1+chacha20poly1305.NonceSizeX, 1+chacha20poly1305.NonceSizeX+len(plain)+chacha20poly1305.Overhead)
	out[0] = format
	if _, err := rand.Read(out[1:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return s.aead.Seal(out, out[1:1+chacha20poly1305.NonceSizeX], plain, ad)
}

var errOpen = errors.New("sealed value does not authenticate (tampered, moved or wrong key)")

func (s *sealer) open(sealed, ad []byte) ([]byte, error) { return s.openAs(sealFormat, sealed, ad) }

func (s *sealer) openAs(format byte, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < sealOverhead || sealed[0] != format {
		return nil, errOpen
	}
	n := 1 + chacha20poly1305.NonceSizeX
	plain, err := s.aead.Open(nil, sealed[1:n], sealed[n:], ad)
	if err != nil {
		return nil, errOpen
	}
	return plain, nil
}

// ad binds a record to its place: bucket, key and scope. Moving or swapping records makes them
// fail to open.
func ad(bucket string, key []byte, scope uint64) []byte {
	out := make([]byte, 0, len(bucket)+len(key)+13)
	out = binary.BigEndian.AppendUint32(out, uint32(len(bucket)))
	out = append(out, bucket...)
	out = binary.BigEndian.AppendUint64(out, scope)
	return append(out, key...)
}
