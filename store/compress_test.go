package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Values compressed with the dictionary cannot be read without its exact bytes: a change would
// make every stored ticket unreadable. A new dictionary needs a new ID, kept beside this one.
func TestRecordDictPinned(t *testing.T) {
	sum := sha256.Sum256([]byte(recordDict))
	if got := hex.EncodeToString(sum[:]); got != recordDictSHA256 {
		t.Fatalf("recordDict changed (sha256 %s, pinned %s): stored records compressed with dictionary %d would no longer open", got, recordDictSHA256, recordDictID)
	}
}

const recordDictSHA256 = "2906a58524f65ff5b581ecac3955c7fccc6f8bd60d2a9b3b0382c30a41c54437"

func TestCompressShortRecordWithDict(t *testing.T) {
	ticket := []byte(`{"id":30001,"queue":"support","subject":"Printer on floor 3 is offline","status":"new","customer":"ann@customer.example","participants":[{"address":"ann@customer.example","name":"Ann Example","verified":true}],"created":"2026-12-05T07:52:35.005352704Z","updated":"2026-12-05T07:52:35.005384217Z","messages":1,"waiting":"2026-12-05T07:52:35.002420635Z","derived":1}`)
	c := compress(ticket)
	plainZstd := zenc.EncodeAll(ticket, nil)
	if len(c) >= len(plainZstd)*3/4 {
		t.Fatalf("compressed ticket is %d bytes, without the dictionary %d: the dictionary is not used", len(c), len(plainZstd))
	}
	got, err := decompress(c)
	if err != nil || !bytes.Equal(got, ticket) {
		t.Fatalf("round trip: %v %q", err, got)
	}
	// A frame without a dictionary (values written before it, and blobs) still opens.
	got, err = decompress(plainZstd)
	if err != nil || !bytes.Equal(got, ticket) {
		t.Fatalf("frame without dictionary: %v %q", err, got)
	}
	// A frame asking for a dictionary we do not have is an error, not garbage.
	other, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(recordDictID+1, []byte(recordDict)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decompress(other.EncodeAll(ticket, nil)); err == nil {
		t.Fatal("a frame naming an unknown dictionary decompressed")
	}
}

// A stored value is compressed only when that makes it shorter.
func TestShortRandomValueStoredAsIs(t *testing.T) {
	db, _ := openTest(t)
	a, b := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b"))
	val := append(append(a[:], b[:]...), 'x') // 65 bytes that do not compress
	if err := db.Update(func(tx *Tx) error { return tx.Put("b", []byte("k"), val) }); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		raw, _ := tx.GetPlain("b", []byte("k"))
		if raw[0] != sealFormat || len(raw) != len(val)+sealOverhead {
			t.Errorf("a random 65-byte value stored as format %d, %d bytes", raw[0], len(raw))
		}
		got, err := tx.Get("b", []byte("k"))
		if err != nil || !bytes.Equal(got, val) {
			t.Errorf("read back: %v", err)
		}
		return nil
	})
}

func TestPutIncompressible(t *testing.T) {
	db, _ := openTest(t)
	short := bytes.Repeat([]byte("compressible "), 20)
	long := bytes.Repeat([]byte("compressible "), 400)
	err := db.Update(func(tx *Tx) error {
		if err := tx.PutIncompressible("b", []byte("short"), short); err != nil {
			return err
		}
		return tx.PutIncompressible("b", []byte("long"), long)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		raw, _ := tx.GetPlain("b", []byte("short"))
		if raw[0] != sealFormat || len(raw) != len(short)+sealOverhead {
			t.Errorf("short value stored as format %d, %d bytes: want sealed as is", raw[0], len(raw))
		}
		raw, _ = tx.GetPlain("b", []byte("long"))
		if raw[0] != refFormat {
			t.Errorf("long value stored as format %d: want a segment reference", raw[0])
		}
		for k, want := range map[string][]byte{"short": short, "long": long} {
			got, err := tx.Get("b", []byte(k))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s read back: %v", k, err)
			}
		}
		return nil
	})
}
