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
// B-tree keeps a short reference to it. Segments are append-only, and a blob is fsynced before
// the transaction that commits its reference, so a committed reference never points at bytes
// that are not on disk. There are two ways in:
//
//   - A value prepared ahead (DB.Prepare, the mail path) is sealed under a fresh key of its own
//     and written and fsynced by its writer's goroutine before the transaction, the fsync shared
//     with the other writers preparing at the same time and running beside bbolt's commits. The
//     transaction then only stores a reference (blobRefFormat) that carries the blob's place and
//     key, itself sealed under the record's key and bound to the record, so destroying a scope's
//     key still makes its blobs unreadable. A commit of such references needs no segment fsync.
//   - A value put in the transaction (Put, PutScoped, migrations, compaction) is sealed under
//     the record's key and appended there (refFormat); those appends are fsynced before bbolt
//     commits.
//
// Every commit that stores a reference records the end of the furthest blob referenced
// (meta/segtail); on open, anything past it is cut off, so an interrupted commit leaves no
// dangling reference. A blob that is prepared but never committed (a duplicate message, a failed
// transaction, a crash) is an orphan below that end; compaction reclaims its space.
const (
	// compressMin: shorter values are sealed as they are. Above it, a value is stored
	// compressed only when that makes it shorter (random keys and hashes do not shrink).
	compressMin = 48
	// blobMin: values at least this long go to a segment, however well they compress: raw
	// mail, attachments, decoded text. Shorter ones stay inline, compressed when that pays.
	blobMin = 2048
	// refLen is the length of a reference: format, segment, offset, length, scope.
	refLen = 1 + 4 + 8 + 4 + 8
	// blobRefPlainLen is what a sealed reference (blobRefFormat) holds: segment, offset,
	// length, blob key.
	blobRefPlainLen = 4 + 8 + 4 + KeySize
	// blobRefLen is the length of a sealed reference: format, scope, then the sealed place and key.
	blobRefLen = 1 + 8 + sealOverhead + blobRefPlainLen
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
	gone    map[uint32]bool     // segments compaction removed: a prepared blob there is lost

	// wmu guards where the next blob goes: preparers reserve space outside the write
	// transaction, beside the transaction's own appends.
	wmu    sync.Mutex
	active uint32
	pos    int64  // end of the last reservation in the active segment
	resv   uint64 // reservations made, so a rollback can tell whether anyone reserved after it

	// The write transaction's state: touched only inside bbolt's write transaction, which is
	// exclusive (Batch runs all its calls in one).
	txMark  segMark          // where the writer stood when the transaction began
	txResv  uint64           // resv then
	txOwn   uint64           // reservations the transaction made itself
	txDirty map[uint32]bool  // segments the transaction appended to, to fsync before commit
	txEnd   segMark          // end of the furthest blob the transaction references
	txRefs  bool             // the transaction stored a blob reference
	stores  map[uint32]int64 // prepared references stored into each segment, for compaction

	group groupSync
}

// groupSync makes the blobs of concurrent preparers durable with one fdatasync per segment
// file for all who wrote before it began: a preparer joins the pending round, and whoever finds
// no round running starts the pending one.
type groupSync struct {
	mu      sync.Mutex
	cond    sync.Cond
	running bool
	pending *syncRound // the round that will cover writes registered now
}

// syncRound is one group fdatasync. Its error goes to the preparers it covered only: the
// pages a failed flush dropped are theirs, and the next round flushes what was written after.
type syncRound struct {
	files map[uint32]bool
	done  bool
	err   error
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

// after reports whether m lies past o.
func (m segMark) after(o segMark) bool {
	return m.seg > o.seg || m.seg == o.seg && m.pos > o.pos
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

// blobKeyRef is the content of a sealed reference: where a prepared blob is and its key.
type blobKeyRef struct {
	seg uint32
	off int64
	n   int
	key []byte
}

func (r blobKeyRef) plain() []byte {
	out := make([]byte, 0, blobRefPlainLen)
	out = binary.BigEndian.AppendUint32(out, r.seg)
	out = binary.BigEndian.AppendUint64(out, uint64(r.off))
	out = binary.BigEndian.AppendUint32(out, uint32(r.n))
	return append(out, r.key...)
}

// sealRef seals r under s, bound to the record (recordAD): moved to another record, or opened
// without the scope's key, it does not open. The scope goes in front in the clear, as in
// refFormat, so compaction knows which key opens it.
func sealRef(s *sealer, scope uint64, recordAD []byte, r blobKeyRef) []byte {
	out := binary.BigEndian.AppendUint64([]byte{blobRefFormat}, scope)
	return append(out, s.sealAs(blobRefFormat, r.plain(), append(recordAD, blobRefFormat))...)
}

// refScope is the scope written in the clear in front of a sealed reference.
func refScope(v []byte) (uint64, bool) {
	if len(v) != blobRefLen || v[0] != blobRefFormat {
		return 0, false
	}
	return binary.BigEndian.Uint64(v[1:]), true
}

func openRef(s *sealer, recordAD, v []byte) (blobKeyRef, error) {
	if len(v) != blobRefLen || v[0] != blobRefFormat {
		return blobKeyRef{}, errors.New("malformed blob reference")
	}
	p, err := s.openAs(blobRefFormat, v[9:], append(recordAD, blobRefFormat))
	if err != nil {
		return blobKeyRef{}, err
	}
	if len(p) != blobRefPlainLen {
		return blobKeyRef{}, errors.New("malformed blob reference")
	}
	return blobKeyRef{
		seg: binary.BigEndian.Uint32(p),
		off: int64(binary.BigEndian.Uint64(p[4:])),
		n:   int(binary.BigEndian.Uint32(p[12:])),
		key: p[16:],
	}, nil
}

// blobKeyAD binds a prepared blob to its place: moved in the segments, it does not open. Its
// record is bound by the reference, which alone holds the key.
func blobKeyAD(seg uint32, off int64) []byte {
	out := binary.BigEndian.AppendUint32([]byte{blobRefFormat}, seg)
	return binary.BigEndian.AppendUint64(out, uint64(off))
}

func newSegments(dir string, readOnly bool) *segments {
	sg := &segments{dir: dir, readOnly: readOnly, files: map[uint32]*os.File{}, active: 1}
	sg.group.cond.L = &sg.group.mu
	return sg
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

// mark is where the next reservation goes.
func (sg *segments) mark() segMark {
	sg.wmu.Lock()
	defer sg.wmu.Unlock()
	return segMark{sg.active, sg.pos}
}

// begin starts a write transaction's bookkeeping.
func (sg *segments) begin() {
	sg.wmu.Lock()
	sg.txMark, sg.txResv = segMark{sg.active, sg.pos}, sg.resv
	sg.wmu.Unlock()
	sg.txOwn, sg.txDirty, sg.txEnd, sg.txRefs = 0, nil, segMark{}, false
}

// rollback forgets what a transaction that did not commit appended: the next writer writes over
// it, unless a preparer reserved space after it (then it is an orphan for compaction).
func (sg *segments) rollback() {
	sg.wmu.Lock()
	if sg.active == sg.txMark.seg && sg.resv == sg.txResv+sg.txOwn {
		sg.pos = sg.txMark.pos
	}
	sg.wmu.Unlock()
	sg.txOwn, sg.txDirty, sg.txEnd, sg.txRefs = 0, nil, segMark{}, false
}

// referenced notes that the transaction stores a reference to the blob that ends at end.
func (sg *segments) referenced(seg uint32, end int64) {
	if m := (segMark{seg, end}); !sg.txRefs || m.after(sg.txEnd) {
		sg.txEnd = m
	}
	sg.txRefs = true
}

// reserve returns where a blob of n bytes goes, beginning a new segment when the active one is
// full. Preparers and the write transaction both reserve here; the space is theirs to write.
func (sg *segments) reserve(n int) (uint32, int64, error) {
	if sg.readOnly {
		return 0, 0, errors.New("the database is open read-only")
	}
	sg.wmu.Lock()
	defer sg.wmu.Unlock()
	if sg.pos > 0 && sg.pos+int64(n) > segMax {
		if err := sg.rotate(); err != nil {
			return 0, 0, err
		}
	}
	if sg.pos == 0 {
		// The segment may not exist yet (a new database, or just rotated).
		if _, err := os.Stat(filepath.Join(sg.dir, segName(sg.active))); errors.Is(err, os.ErrNotExist) {
			if err := sg.create(sg.active); err != nil {
				return 0, 0, err
			}
		}
	}
	seg, off := sg.active, sg.pos
	sg.pos += int64(n)
	sg.resv++
	return seg, off, nil
}

func (sg *segments) create(id uint32) error {
	p := filepath.Join(sg.dir, segName(id))
	// Nothing committed references a segment past the active one (open removed any such file
	// that a crashed run left), so whatever is under this name is garbage.
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

// rotate closes the active segment; wmu is held.
func (sg *segments) rotate() error {
	f, err := sg.file(sg.active)
	if err != nil {
		return err
	}
	// Bytes past pos were written by transactions that rolled back; the closed segment keeps
	// only what was reserved. Every reservation lies below pos, so a preparer that has not
	// written yet keeps its place (its write extends the file again if need be).
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

// writeAt writes rec at off of segment seg, a place reserve returned.
func (sg *segments) writeAt(seg uint32, rec []byte, off int64) error {
	f, err := sg.file(seg)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(rec, off); err != nil {
		return fmt.Errorf("write segment %d: %w", seg, err)
	}
	return nil
}

// writeTx writes a blob of the write transaction at a place it reserved; sync makes it durable
// before the commit.
func (sg *segments) writeTx(seg uint32, off int64, rec []byte) error {
	sg.txOwn++
	if sg.txDirty == nil {
		sg.txDirty = map[uint32]bool{}
	}
	sg.txDirty[seg] = true
	if err := sg.writeAt(seg, rec, off); err != nil {
		return err
	}
	sg.referenced(seg, off+int64(len(rec)))
	return nil
}

// testHookSegmentSync runs whenever a write transaction fsyncs its own appends (tests count them).
var testHookSegmentSync func()

// sync makes the transaction's appends durable; it runs before bbolt commits.
func (sg *segments) sync() error {
	if len(sg.txDirty) == 0 {
		return nil
	}
	if testHookSegmentSync != nil {
		testHookSegmentSync()
	}
	for id := range sg.txDirty {
		if err := sg.fdatasync(id); err != nil {
			return err
		}
	}
	sg.txDirty = nil
	return nil
}

// testHookFsync, when set, fails the fdatasync of a segment (tests).
var testHookFsync func(id uint32) error

func (sg *segments) fdatasync(id uint32) error {
	if testHookFsync != nil {
		if err := testHookFsync(id); err != nil {
			return fmt.Errorf("fsync segment %d: %w", id, err)
		}
	}
	f, err := sg.file(id)
	if err != nil {
		return err
	}
	// Through the file's own descriptor lock, so a handle closed meanwhile is an error and
	// never a sync of whatever file reused its number.
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fdatasync(int(fd)) }); err != nil {
		serr = err
	}
	if serr != nil {
		return fmt.Errorf("fsync segment %d: %w", id, serr)
	}
	return nil
}

// durable returns once what a preparer wrote to segment seg is on disk: the first group sync
// that begins after the call covers it, and one preparer runs that sync for everyone waiting.
func (sg *segments) durable(seg uint32) error {
	return sg.wait(sg.register(seg))
}

// register enters a finished write to segment seg in the pending group round.
func (sg *segments) register(seg uint32) *syncRound {
	g := &sg.group
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pending == nil {
		g.pending = &syncRound{files: map[uint32]bool{}}
	}
	g.pending.files[seg] = true
	return g.pending
}

// wait returns once round r has run, running it if no round is running.
func (sg *segments) wait(r *syncRound) error {
	g := &sg.group
	g.mu.Lock()
	defer g.mu.Unlock()
	for !r.done {
		if g.running {
			g.cond.Wait()
			continue
		}
		// No round runs and r is not done, so r is the pending round: start it.
		g.pending, g.running = nil, true
		g.mu.Unlock()
		var err error
		for id := range r.files {
			if err = sg.fdatasync(id); err != nil {
				if sg.isGone(id) {
					err = nil // removed by compaction: a blob there will not be referenced
					continue
				}
				break
			}
		}
		g.mu.Lock()
		r.err, r.done, g.running = err, true, false
		g.cond.Broadcast()
	}
	return r.err
}

func (sg *segments) isGone(id uint32) bool {
	sg.mu.RLock()
	defer sg.mu.RUnlock()
	return sg.gone[id]
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

// retire removes segment id, keeping its handle open for readers that may still need it. The
// caller holds the write transaction (see CompactSegments), so no transaction that stores a
// reference into it is under way; later ones see it gone.
func (sg *segments) retire(id uint32) error {
	if _, err := sg.file(id); err != nil {
		return err
	}
	sg.mu.Lock()
	if sg.gone == nil {
		sg.gone = map[uint32]bool{}
	}
	sg.gone[id] = true
	sg.mu.Unlock()
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
