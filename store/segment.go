package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Large values live outside the B-tree: bbolt rounds every value up to whole pages, keeps every
// page it ever wrote mapped, and copies a value's pages on each rewrite. A value of blobMin
// bytes or more is compressed, sealed and appended to a segment file beside the database; the
// B-tree keeps a 25-byte reference to it. Segments are append-only, and the
// appends of a write transaction are fsynced before that transaction commits, so a committed
// reference never points at bytes that are not on disk. The transaction also records the end of
// what it wrote (meta/segtail); on open, anything a crashed transaction wrote past that end is
// cut off, so an interrupted commit leaves neither a dangling reference nor orphaned bytes.
const (
	// compressMin: shorter values are sealed as they are (compression would not pay).
	compressMin = 256
	// blobMin: values at least this long go to a segment, however well they compress: raw
	// mail, attachments, decoded text. Shorter ones stay inline, compressed when that pays.
	blobMin = 2048
	// refLen is the length of a reference: format, segment, offset, length, scope.
	refLen = 1 + 4 + 8 + 4 + 8
)

// segMax: a segment is closed and a new one begun once it is this long (a variable for tests).
var segMax int64 = 64 << 20

// SegmentDir is the directory of the segment files that belong to the database at dbPath.
func SegmentDir(dbPath string) string { return dbPath + ".segments" }

func segName(id uint32) string { return fmt.Sprintf("%08d.seg", id) }

// segments manages the segment files of one database.
type segments struct {
	dir      string
	readOnly bool

	mu      sync.RWMutex
	files   map[uint32]*os.File
	retired map[uint32]*os.File // handles of removed segments, for read transactions that began before

	// The writer's state: touched only inside bbolt's write transaction, which is exclusive.
	active uint32
	pos    int64
	dirty  bool // appended since the last fsync
}

// segMark is a position in the segments: the active segment and the offset of its end.
type segMark struct {
	seg uint32
	pos int64
}

var segTailKey = []byte("segtail")

func (m segMark) bytes() []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, m.seg), uint64(m.pos))
}

func parseMark(b []byte) (segMark, bool) {
	if len(b) != 12 {
		return segMark{seg: 1}, false
	}
	return segMark{seg: binary.BigEndian.Uint32(b), pos: int64(binary.BigEndian.Uint64(b[4:]))}, true
}

type blobRef struct {
	seg   uint32
	off   int64
	n     int
	scope uint64
}

func (r blobRef) bytes() []byte {
	out := make([]byte, 0, refLen)
	out = append(out, refFormat)
	out = binary.BigEndian.AppendUint32(out, r.seg)
	out = binary.BigEndian.AppendUint64(out, uint64(r.off))
	out = binary.BigEndian.AppendUint32(out, uint32(r.n))
	return binary.BigEndian.AppendUint64(out, r.scope)
}

func parseRef(v []byte) (blobRef, error) {
	if len(v) != refLen || v[0] != refFormat {
		return blobRef{}, errors.New("malformed blob reference")
	}
	return blobRef{
		seg:   binary.BigEndian.Uint32(v[1:]),
		off:   int64(binary.BigEndian.Uint64(v[5:])),
		n:     int(binary.BigEndian.Uint32(v[13:])),
		scope: binary.BigEndian.Uint64(v[17:]),
	}, nil
}

// blobAD binds a blob to its record and to its place in the segments: a blob moved, swapped
// with another, or pointed at by another record's reference does not open.
func blobAD(recordAD []byte, seg uint32, off int64) []byte {
	out := append(append([]byte(nil), recordAD...), refFormat)
	out = binary.BigEndian.AppendUint32(out, seg)
	return binary.BigEndian.AppendUint64(out, uint64(off))
}

func newSegments(dir string, readOnly bool) *segments {
	return &segments{dir: dir, readOnly: readOnly, files: map[uint32]*os.File{}, active: 1}
}

// list returns the ids of the segment files present, in order.
func (sg *segments) list() ([]uint32, error) {
	ents, err := os.ReadDir(sg.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok || len(name) != 8 {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 32)
		if err != nil || n == 0 {
			continue
		}
		ids = append(ids, uint32(n))
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, nil
}

// recover brings the files back to the last commit, tail: what a transaction that never
// committed appended is cut off, segments it began are removed.
func (sg *segments) recover(tail segMark) error {
	if err := os.MkdirAll(sg.dir, 0o700); err != nil {
		return err
	}
	ids, err := sg.list()
	if err != nil {
		return err
	}
	found := false
	for _, id := range ids {
		p := filepath.Join(sg.dir, segName(id))
		switch {
		case id > tail.seg:
			if err := os.Remove(p); err != nil {
				return err
			}
		case id == tail.seg:
			found = true
			fi, err := os.Stat(p)
			if err != nil {
				return err
			}
			if fi.Size() < tail.pos {
				return fmt.Errorf("segment %s holds %d bytes but the database references %d: it was truncated; restore the data directory from a backup", p, fi.Size(), tail.pos)
			}
			if fi.Size() > tail.pos {
				if err := os.Truncate(p, tail.pos); err != nil {
					return err
				}
				if err := fsyncPath(p); err != nil {
					return err
				}
			}
		}
	}
	if !found && tail.pos > 0 {
		return fmt.Errorf("segment %s is missing but the database references it: restore the data directory from a backup", filepath.Join(sg.dir, segName(tail.seg)))
	}
	sg.active, sg.pos = tail.seg, tail.pos
	return syncDir(sg.dir)
}

func fsyncPath(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// file returns the handle of segment id, opening it on first use.
func (sg *segments) file(id uint32) (*os.File, error) {
	sg.mu.RLock()
	f := sg.files[id]
	if f == nil {
		f = sg.retired[id]
	}
	sg.mu.RUnlock()
	if f != nil {
		return f, nil
	}
	sg.mu.Lock()
	defer sg.mu.Unlock()
	if f := sg.files[id]; f != nil {
		return f, nil
	}
	flag := os.O_RDWR
	if sg.readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(filepath.Join(sg.dir, segName(id)), flag, 0)
	if err != nil {
		return nil, fmt.Errorf("segment %d: %w", id, err)
	}
	sg.files[id] = f
	return f, nil
}

// mark is where the writer stands; rollback returns to it.
func (sg *segments) mark() segMark { return segMark{sg.active, sg.pos} }

// rollback forgets what a transaction that did not commit appended: the next one writes over it.
func (sg *segments) rollback(m segMark) {
	sg.active, sg.pos, sg.dirty = m.seg, m.pos, false
}

// place returns where a record of n bytes goes, beginning a new segment when the active one is
// full (only between transactions' appends, so one transaction syncs one file).
func (sg *segments) place(n int) (uint32, int64, error) {
	if sg.readOnly {
		return 0, 0, errors.New("the database is open read-only")
	}
	if !sg.dirty && sg.pos > 0 && sg.pos+int64(n) > segMax {
		if err := sg.rotate(); err != nil {
			return 0, 0, err
		}
	}
	if sg.pos == 0 && !sg.dirty {
		// The segment may not exist yet (a new database, or just rotated).
		if _, err := os.Stat(filepath.Join(sg.dir, segName(sg.active))); errors.Is(err, os.ErrNotExist) {
			if err := sg.create(sg.active); err != nil {
				return 0, 0, err
			}
		}
	}
	return sg.active, sg.pos, nil
}

func (sg *segments) create(id uint32) error {
	p := filepath.Join(sg.dir, segName(id))
	// Nothing committed references a segment past the active one, so whatever an earlier,
	// rolled-back rotation left under this name is garbage.
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	sg.mu.Lock()
	if old := sg.files[id]; old != nil {
		old.Close()
	}
	sg.files[id] = f
	sg.mu.Unlock()
	return syncDir(sg.dir)
}

func (sg *segments) rotate() error {
	f, err := sg.file(sg.active)
	if err != nil {
		return err
	}
	// Bytes past pos were written by transactions that rolled back; the closed segment keeps
	// only what is committed.
	if err := f.Truncate(sg.pos); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := sg.create(sg.active + 1); err != nil {
		return err
	}
	sg.active, sg.pos = sg.active+1, 0
	return nil
}

// write appends rec at off, which place returned.
func (sg *segments) write(rec []byte, off int64) error {
	f, err := sg.file(sg.active)
	if err != nil {
		return err
	}
	sg.dirty = true
	if _, err := f.WriteAt(rec, off); err != nil {
		return fmt.Errorf("write segment %d: %w", sg.active, err)
	}
	sg.pos = off + int64(len(rec))
	return nil
}

// sync makes the transaction's appends durable; it runs before bbolt commits.
func (sg *segments) sync() error {
	if !sg.dirty {
		return nil
	}
	f, err := sg.file(sg.active)
	if err != nil {
		return err
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("fsync segment %d: %w", sg.active, err)
	}
	sg.dirty = false
	return nil
}

// read returns the n bytes at off of segment seg.
func (sg *segments) read(seg uint32, off int64, n int) ([]byte, error) {
	f, err := sg.file(seg)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read segment %d at %d: %w", seg, off, err)
	}
	return buf, nil
}

// size is the total length of the segment files, for metrics.
func (sg *segments) size() int64 {
	ids, _ := sg.list()
	var n int64
	for _, id := range ids {
		if fi, err := os.Stat(filepath.Join(sg.dir, segName(id))); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// retire removes segment id, keeping its handle open for readers that may still need it.
func (sg *segments) retire(id uint32) error {
	if _, err := sg.file(id); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(sg.dir, segName(id))); err != nil {
		return err
	}
	sg.mu.Lock()
	if sg.retired == nil {
		sg.retired = map[uint32]*os.File{}
	}
	sg.retired[id] = sg.files[id]
	delete(sg.files, id)
	sg.mu.Unlock()
	return syncDir(sg.dir)
}

// closeRetired closes the handles of segments removed by the previous compaction.
func (sg *segments) closeRetired() {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	for id, f := range sg.retired {
		f.Close()
		delete(sg.retired, id)
	}
}

func (sg *segments) close() {
	sg.closeRetired()
	sg.mu.Lock()
	defer sg.mu.Unlock()
	for id, f := range sg.files {
		f.Close()
		delete(sg.files, id)
	}
}
