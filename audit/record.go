package audit

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// recordFormat leads a record stored in the compact form. Records written before it are the
// JSON of record, which starts with '{', so the first byte tells the two apart and old
// databases read, verify and export as they are.
//
// The compact form exists for size: one event is stored per inbound mail, and as JSON with hex
// hashes it was ~370 bytes, above the store's compression threshold (where zstd does not pay on
// hex) and about a third of the database. Compact it is ~185 bytes. After the format byte:
// uvarint seq, varint time in Unix microseconds, then actor, action, object, remote, result
// and detail as uvarint length and bytes, then one byte for prev's length (0 or 32), prev, and
// the 32-byte hash. The hashes are stored raw; record keeps them as lowercase hex, which is
// what the chain, the mirror and export use.
const recordFormat = 1

var errRecord = errors.New("audit record malformed")

// encodeRecord is the stored form of rec. It refuses what decodeRecord could not give back
// exactly, and times that JSON cannot carry (export and the mirror must stay possible).
func encodeRecord(rec record) ([]byte, error) {
	t := rec.Time
	if t.Location() != time.UTC || t.Nanosecond()%1000 != 0 {
		return nil, fmt.Errorf("audit record %d: time %v is not UTC in whole microseconds", rec.Seq, t)
	}
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("audit record %d: year %d outside 0..9999", rec.Seq, y)
	}
	n := 1 + 2*binary.MaxVarintLen64 + 1 + 2*hashLen
	strs := [...]string{rec.Actor, rec.Action, rec.Object, rec.Remote, rec.Result, rec.Detail}
	for _, s := range strs {
		n += binary.MaxVarintLen64 + len(s)
	}
	b := make([]byte, 0, n)
	b = append(b, recordFormat)
	b = binary.AppendUvarint(b, rec.Seq)
	b = binary.AppendVarint(b, t.UnixMicro())
	for _, s := range strs {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	if rec.Prev == "" {
		b = append(b, 0)
	} else {
		b = append(b, hashLen)
		var ok bool
		if b, ok = appendRawHash(b, rec.Prev); !ok {
			return nil, fmt.Errorf("audit record %d: prev is not a lowercase hex SHA-256", rec.Seq)
		}
	}
	b, ok := appendRawHash(b, rec.Hash)
	if !ok {
		return nil, fmt.Errorf("audit record %d: hash is not a lowercase hex SHA-256", rec.Seq)
	}
	return b, nil
}

// appendRawHash appends the 32 bytes that h spells in lowercase hex. Uppercase is refused:
// it would come back lowercase, a different record.
func appendRawHash(b []byte, h string) ([]byte, bool) {
	if len(h) != 2*hashLen {
		return b, false
	}
	for i := 0; i < len(h); i += 2 {
		hi, ok1 := nibble(h[i])
		lo, ok2 := nibble(h[i+1])
		if !ok1 || !ok2 {
			return b, false
		}
		b = append(b, hi<<4|lo)
	}
	return b, true
}

func nibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// decodeRecord reads a stored value, compact or JSON. Every length is checked against what is
// left, and nothing may follow the hash, so a cut or garbled value is an error.
func decodeRecord(v []byte) (record, error) {
	var rec record
	if len(v) == 0 || v[0] != recordFormat {
		if err := json.Unmarshal(v, &rec); err != nil {
			return record{}, errRecord
		}
		return rec, nil
	}
	d := decoder{b: v[1:]}
	rec.Seq = d.uvarint()
	us := d.varint()
	for _, s := range [...]*string{&rec.Actor, &rec.Action, &rec.Object, &rec.Remote, &rec.Result, &rec.Detail} {
		*s = string(d.bytes(d.uvarint()))
	}
	switch d.byte() {
	case 0:
	case hashLen:
		rec.Prev = hex.EncodeToString(d.bytes(hashLen))
	default:
		d.bad = true
	}
	rec.Hash = hex.EncodeToString(d.bytes(hashLen))
	rec.Time = time.UnixMicro(us).UTC()
	if y := rec.Time.Year(); d.bad || len(d.b) != 0 || y < 0 || y > 9999 {
		return record{}, errRecord
	}
	return rec, nil
}

// decoder reads from b until something does not fit; then bad is set and every read gives zero.
type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) uvarint() uint64 {
	if d.bad {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.bad = true
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) varint() int64 {
	if d.bad {
		return 0
	}
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.bad = true
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) byte() byte {
	if d.bad || len(d.b) == 0 {
		d.bad = true
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) bytes(n uint64) []byte {
	if d.bad || n > uint64(len(d.b)) {
		d.bad = true
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}
