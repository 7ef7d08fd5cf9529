package store

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// zstd, not our own code: a compressor is a format and a decoder that must survive every input,
// and klauspost/compress is pure Go, fuzzed, and has no cgo; its EncodeAll/DecodeAll are safe
// for concurrent use, so one encoder serves every writer.
var (
	zenc *zstd.Encoder
	zdec *zstd.Decoder
)

func init() {
	var err error
	// The checksum is left out: every compressed value is sealed, and the AEAD tag already
	// authenticates every byte.
	zenc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false),
		zstd.WithLowerEncoderMem(true), zstd.WithZeroFrames(true))
	if err != nil {
		panic(err)
	}
	zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(1<<30))
	if err != nil {
		panic(err)
	}
}

func compress(plain []byte) []byte {
	return zenc.EncodeAll(plain, make([]byte, 0, len(plain)/2+64))
}

func decompress(c []byte) ([]byte, error) {
	out, err := zdec.DecodeAll(c, nil)
	if err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	return out, nil
}
