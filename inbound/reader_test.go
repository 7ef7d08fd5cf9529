package inbound

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

func TestStrictReader(t *testing.T) {
	cases := []struct {
		in   string
		bare bool
	}{
		{"", false},
		{"a\r\nb\r\n", false},
		{"\r\n\r\n", false},
		{"no line end", false},
		{"a\nb\r\n", true},
		{"a\rb\r\n", true},
		{"a\r\r\n", true},
		{"\n", true},
		{"\r", true},
		{"a\r\n\n", true},
		{"a\r\n.\n", true},
		{"ends in CR\r", true},
		{"x\r\n\r", true},
	}
	for _, c := range []string{"\x00", "a\r\n\x00\r\n", "ab\x00"} {
		for _, chunk := range []int{1, 2, 1 << 20} {
			sr := &strictReader{r: &chunkReader{b: []byte(c), n: chunk}}
			if io.Copy(io.Discard, sr); !sr.nul {
				t.Errorf("%q in chunks of %d: NUL not seen", c, chunk)
			}
		}
	}
	clean := &strictReader{r: &chunkReader{b: []byte("a\r\nb\r\n"), n: 1}}
	if io.Copy(io.Discard, clean); clean.nul {
		t.Error("NUL seen in clean text")
	}
	for _, c := range cases {
		// Every way of cutting the input into reads must give the same answer: the state
		// carries across chunk boundaries (a CR at the end of one read, LF at the start of the next).
		for _, chunk := range []int{1, 2, 3, 1 << 20} {
			sr := &strictReader{r: &chunkReader{b: []byte(c.in), n: chunk}}
			out, err := io.ReadAll(sr)
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != c.in {
				t.Fatalf("%q: passed through as %q", c.in, out)
			}
			if sr.bare != c.bare {
				t.Errorf("%q in chunks of %d: bare=%v, want %v", c.in, chunk, sr.bare, c.bare)
			}
		}
	}
	// Errors pass through unchanged (ErrDataTooLarge must keep its 552).
	sr := &strictReader{r: iotest.ErrReader(io.ErrUnexpectedEOF)}
	if _, err := io.ReadAll(sr); err != io.ErrUnexpectedEOF {
		t.Fatalf("error %v", err)
	}
}

type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := min(c.n, len(p), len(c.b))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

func FuzzStrictReader(f *testing.F) {
	f.Add([]byte("a\r\nb\r\n"), uint8(3))
	f.Add([]byte("a\nb\r\r\n"), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		sr := &strictReader{r: &chunkReader{b: in, n: int(chunk) + 1}}
		out, _ := io.ReadAll(sr)
		if !bytes.Equal(out, in) {
			t.Fatal("changed the bytes")
		}
		// Reference: remove every CRLF; any CR or LF left is bare.
		want := bytes.ContainsAny(bytes.ReplaceAll(in, []byte("\r\n"), nil), "\r\n")
		if sr.bare != want {
			t.Fatalf("%q: bare=%v want %v", in, sr.bare, want)
		}
		if sr.nul != bytes.Contains(in, []byte{0}) {
			t.Fatalf("%q: nul=%v", in, sr.nul)
		}
	})
}

func BenchmarkStrictReader(b *testing.B) {
	msg := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n"), 1<<14)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		sr := &strictReader{r: bytes.NewReader(msg)}
		io.Copy(io.Discard, sr)
	}
}
