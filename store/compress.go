package store

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// zstd, not our own code: a compressor is a format and a decoder that must survive every input,
// and klauspost/compress is pure Go, fuzzed, and has no cgo; its EncodeAll/DecodeAll are safe
// for concurrent use, so one encoder serves every writer.
var (
	zenc     *zstd.Encoder // segment blobs
	zencDict *zstd.Encoder // values kept in the B-tree, primed with recordDict
	zdec     *zstd.Decoder // both: a frame names the dictionary it needs
)

func init() {
	var err error
	// The checksum is left out: every compressed value is sealed, and the AEAD tag already
	// authenticates every byte.
	opts := []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false),
		zstd.WithLowerEncoderMem(true), zstd.WithZeroFrames(true)}
	zenc, err = zstd.NewWriter(nil, opts...)
	if err != nil {
		panic(err)
	}
	// A small window: with a dictionary each encoder keeps a history buffer the size of its
	// window (4 MiB each by default), and these values are shorter than 2 KiB.
	zencDict, err = zstd.NewWriter(nil, append(opts, zstd.WithWindowSize(32<<10),
		zstd.WithEncoderDictRaw(recordDictID, []byte(recordDict)))...)
	if err != nil {
		panic(err)
	}
	zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(1<<30), zstd.WithDecoderDictRaw(recordDictID, []byte(recordDict)))
	if err != nil {
		panic(err)
	}
}

// compress uses the record dictionary for what stays in the B-tree: a ticket's JSON shrinks
// from 223 to 122 bytes with it, a message's 71-byte stub to 29, because on its own a short
// record has no earlier text to refer to and its field names cost their full length. Blobs
// are long enough to find their own repeats.
func compress(plain []byte) []byte {
	e := zenc
	if len(plain) < blobMin {
		e = zencDict
	}
	return e.EncodeAll(plain, make([]byte, 0, len(plain)/2+64))
}

func decompress(c []byte) ([]byte, error) {
	out, err := zdec.DecodeAll(c, nil)
	if err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	return out, nil
}
