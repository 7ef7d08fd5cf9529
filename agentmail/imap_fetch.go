package agentmail

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"mailgate/access"
	"mailgate/tickets"
)

// Audit actions of reads through IMAP. Every read of a message goes through tickets.Raw, which
// writes the event in the same commit as the read.
const (
	actionFetch       = "imap.fetch"        // message content: BODY[], BODY[TEXT], RFC822, BINARY…
	actionFetchHeader = "imap.fetch.header" // header data only: ENVELOPE, BODY[HEADER…], sizes, structure
	actionSearch      = "imap.search"       // SEARCH criteria that read the message
)

// resolve turns a client's number set into indexes of sel.entries, ascending and unique.
// "*" is the last message the client knows; ranges beyond it are cut, so a huge range costs
// no more than the mailbox.
func (sel *selected) resolve(set imap.NumSet) []int {
	n := len(sel.entries)
	if n == 0 || imap.IsSearchRes(set) { // SEARCHRES is not offered
		return nil
	}
	in := make([]bool, n)
	switch set := set.(type) {
	case imap.SeqSet:
		for _, r := range set {
			lo, hi := staticRange(r.Start, r.Stop, uint32(n))
			for i := lo; i <= hi && i <= uint32(n); i++ {
				if i > 0 {
					in[i-1] = true
				}
			}
		}
	case imap.UIDSet:
		maxUID := sel.entries[n-1].UID
		for _, r := range set {
			lo, hi := staticRange(uint32(r.Start), uint32(r.Stop), maxUID)
			i := sortSearch(sel.entries, lo)
			for ; i < n && sel.entries[i].UID <= hi; i++ {
				in[i] = true
			}
		}
	}
	var out []int
	for i, ok := range in {
		if ok {
			out = append(out, i)
		}
	}
	return out
}

// staticRange resolves "*" (0) to max and orders the range (RFC 3501 9: "2:4" is "4:2").
func staticRange(start, stop, max uint32) (uint32, uint32) {
	if start == 0 {
		start = max
	}
	if stop == 0 {
		stop = max
	}
	if start > stop {
		start, stop = stop, start
	}
	return start, stop
}

func sortSearch(entries []tickets.MailboxEntry, uid uint32) int {
	lo, hi := 0, len(entries)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if entries[m].UID < uid {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// needsMessage reports whether the fetch reads anything beyond UID and flags.
func needsMessage(o *imap.FetchOptions) bool {
	return o.Envelope || o.BodyStructure != nil || o.RFC822Size || o.InternalDate ||
		len(o.BodySection) > 0 || len(o.BinarySection) > 0 || len(o.BinarySectionSize) > 0
}

// readsContent reports whether the fetch returns message content (not only header data).
func readsContent(o *imap.FetchOptions) bool {
	for _, bs := range o.BodySection {
		if bs.Specifier != imap.PartSpecifierHeader && bs.Specifier != imap.PartSpecifierMIME {
			return true
		}
	}
	return len(o.BinarySection) > 0
}

// setsSeen reports whether the fetch marks messages \Seen (RFC 3501 6.4.5: BODY[] without .PEEK).
func setsSeen(o *imap.FetchOptions) bool {
	for _, bs := range o.BodySection {
		if !bs.Peek {
			return true
		}
	}
	for _, bs := range o.BinarySection {
		if !bs.Peek {
			return true
		}
	}
	return false
}

func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, o *imap.FetchOptions) error {
	if err := s.refresh(); err != nil {
		return err
	}
	sel := s.sel
	idx := sel.resolve(numSet)
	if len(idx) == 0 {
		return nil
	}
	changed := map[uint32]bool{}
	if setsSeen(o) && !sel.readOnly && sel.queue != "" {
		// Under EXAMINE nothing changes (go-imap leaves that to us, issue #672).
		var uids []uint32
		for _, i := range idx {
			if uid := sel.entries[i].UID; !sel.seen[uid] {
				uids = append(uids, uid)
			}
		}
		if err := s.setSeen(uids, true); err != nil {
			return err
		}
		for _, uid := range uids {
			changed[uid] = true
		}
	}
	if !needsMessage(o) {
		for _, i := range idx {
			if err := s.writeFetch(w, i, nil, o, changed[sel.entries[i].UID]); err != nil {
				return err
			}
		}
		return nil
	}
	action := actionFetchHeader
	if readsContent(o) {
		action = actionFetch
	}
	// Reads run ahead of the writer, at most FetchWindow at once, so their audited reads share
	// commits (each is a write transaction); a slot frees when its message has been written, so
	// at most FetchWindow messages are held in memory.
	type result struct {
		sv  *served
		err error
	}
	results := make([]chan result, len(idx))
	for j := range results {
		results[j] = make(chan result, 1)
	}
	slots := make(chan struct{}, s.srv.opts.FetchWindow)
	stop := make(chan struct{})
	defer close(stop)
	actor, queue := s.actor, sel.queue // the loads may outlive this command after an error
	go func() {
		for j, i := range idx {
			select {
			case slots <- struct{}{}:
			case <-stop:
				return
			}
			e := sel.entries[i]
			go func() {
				sv, err := s.srv.load(actor, queue, e, action)
				results[j] <- result{sv, err}
			}()
		}
	}()
	for j, i := range idx {
		r := <-results[j]
		if r.err != nil {
			s.srv.log.Error("fetch", "queue", sel.queue, "uid", sel.entries[i].UID, "err", r.err)
			return errTemporary
		}
		err := s.writeFetch(w, i, r.sv, o, changed[sel.entries[i].UID])
		<-slots
		if err != nil {
			return err
		}
	}
	return nil
}

// load reads one message through tickets (audited) and renders it.
func (s *IMAPServer) load(actor access.Actor, queue string, e tickets.MailboxEntry, action string) (*served, error) {
	m, raw, err := s.opts.Tickets.Raw(actor, e.Ticket, e.Seq, action)
	if errors.Is(err, tickets.ErrNotFound) {
		m, raw = nil, nil
	} else if err != nil {
		return nil, err
	}
	return s.render.render(queue, e.Ticket, e.Seq, m, raw), nil
}

// writeFetch writes one FETCH response. The response writer holds the connection's write lock
// until closed, so it is closed on every path.
func (s *session) writeFetch(w *imapserver.FetchWriter, i int, sv *served, o *imap.FetchOptions, flagsChanged bool) (err error) {
	sel := s.sel
	e := sel.entries[i]
	rw := w.CreateMessage(uint32(i + 1))
	defer func() {
		if cerr := rw.Close(); err == nil {
			err = cerr
		}
	}()
	if o.UID {
		rw.WriteUID(imap.UID(e.UID))
	}
	if o.Flags || flagsChanged {
		rw.WriteFlags(sel.flags(e.UID))
	}
	if sv == nil {
		return nil
	}
	if o.InternalDate {
		d := sv.date
		if d.IsZero() {
			d = time.Unix(0, 0).UTC()
		}
		rw.WriteInternalDate(d)
	}
	if o.RFC822Size {
		rw.WriteRFC822Size(int64(len(sv.body)))
	}
	if o.Envelope {
		rw.WriteEnvelope(envelope(sv.body))
	}
	if o.BodyStructure != nil {
		rw.WriteBodyStructure(fixStructure(imapserver.ExtractBodyStructure(bytes.NewReader(sv.body))))
	}
	for _, bs := range o.BodySection {
		buf := imapserver.ExtractBodySection(bytes.NewReader(sv.body), bs)
		if err := writeLiteral(rw.WriteBodySection(bs, int64(len(buf))), buf); err != nil {
			return err
		}
	}
	for _, bs := range o.BinarySection {
		buf := imapserver.ExtractBinarySection(bytes.NewReader(sv.body), bs)
		if err := writeLiteral(rw.WriteBinarySection(bs, int64(len(buf))), buf); err != nil {
			return err
		}
	}
	for _, bss := range o.BinarySectionSize {
		rw.WriteBinarySectionSize(bss, imapserver.ExtractBinarySectionSize(bytes.NewReader(sv.body), bss))
	}
	return nil
}

func writeLiteral(wc io.WriteCloser, buf []byte) error {
	_, werr := wc.Write(buf)
	cerr := wc.Close()
	return errors.Join(werr, cerr)
}

func envelope(body []byte) *imap.Envelope {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		return &imap.Envelope{}
	}
	return imapserver.ExtractEnvelope(h)
}

// setSeen changes \Seen for the agent, durably, and tells the agent's other sessions.
func (s *session) setSeen(uids []uint32, seen bool) error {
	if len(uids) == 0 {
		return nil
	}
	sel := s.sel
	if err := s.srv.seen.set(s.agent.Name, sel.queue, uids, seen); err != nil {
		s.srv.log.Error("store seen flags", "queue", sel.queue, "err", err)
		return errTemporary
	}
	ch := make([]flagChange, len(uids))
	for i, uid := range uids {
		if seen {
			sel.seen[uid] = true
		} else {
			delete(sel.seen, uid)
		}
		ch[i] = flagChange{uid: uid, seen: seen}
	}
	s.srv.flagsChanged(sel, ch)
	return nil
}

// Store changes \Seen, the only flag this view keeps. Under EXAMINE it refuses (go-imap does
// not, issue #672).
func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, f *imap.StoreFlags, o *imap.StoreOptions) error {
	sel := s.sel
	if sel.readOnly {
		return errExamined
	}
	hasSeen := false
	for _, fl := range f.Flags {
		if !strings.EqualFold(string(fl), string(imap.FlagSeen)) {
			return errOnlySeen
		}
		hasSeen = true
	}
	var want, act bool
	switch f.Op {
	case imap.StoreFlagsSet:
		want, act = hasSeen, true
	case imap.StoreFlagsAdd:
		want, act = true, hasSeen
	case imap.StoreFlagsDel:
		want, act = false, hasSeen
	}
	idx := sel.resolve(numSet)
	if act && sel.queue != "" {
		var uids []uint32
		for _, i := range idx {
			if uid := sel.entries[i].UID; sel.seen[uid] != want {
				uids = append(uids, uid)
			}
		}
		if err := s.setSeen(uids, want); err != nil {
			return err
		}
	}
	if f.Silent {
		return nil
	}
	_, isUID := numSet.(imap.UIDSet)
	for _, i := range idx {
		if err := s.writeFetch(w, i, nil, &imap.FetchOptions{UID: isUID, Flags: true}, false); err != nil {
			return err
		}
	}
	return nil
}

// Search answers SEARCH and UID SEARCH. Criteria on flags, numbers and UIDs need no message;
// any other criterion reads the message through tickets, audited as imap.search.
func (s *session) Search(kind imapserver.NumKind, c *imap.SearchCriteria, o *imap.SearchOptions) (*imap.SearchData, error) {
	if err := s.refresh(); err != nil {
		return nil, err
	}
	sel := s.sel
	cache := map[int]*served{}
	var loadErr error
	load := func(i int) *served {
		if sv, ok := cache[i]; ok {
			return sv
		}
		sv, err := s.srv.load(s.actor, sel.queue, sel.entries[i], actionSearch)
		if err != nil {
			loadErr = err
			sv = &served{}
		}
		cache[i] = sv
		return sv
	}
	data := &imap.SearchData{}
	var seqs imap.SeqSet
	var uids imap.UIDSet
	for i, e := range sel.entries {
		ok := s.match(i, c, load)
		if loadErr != nil {
			s.srv.log.Error("search", "queue", sel.queue, "err", loadErr)
			return nil, errTemporary
		}
		if !ok {
			continue
		}
		num := uint32(i + 1)
		if kind == imapserver.NumKindUID {
			num = e.UID
			uids.AddNum(imap.UID(e.UID))
		} else {
			seqs.AddNum(num)
		}
		if data.Min == 0 {
			data.Min = num
		}
		data.Max = num
		data.Count++
	}
	if kind == imapserver.NumKindUID {
		data.All = uids
	} else {
		data.All = seqs
	}
	return data, nil
}

// match evaluates c for message i; cheap criteria first, so messages are read only when needed.
func (s *session) match(i int, c *imap.SearchCriteria, load func(int) *served) bool {
	sel := s.sel
	e := sel.entries[i]
	n := uint32(len(sel.entries))
	for _, set := range c.SeqNum {
		if !inSeqSet(set, uint32(i+1), n) {
			return false
		}
	}
	for _, set := range c.UID {
		if !inUIDSet(set, e.UID, sel.entries[n-1].UID) {
			return false
		}
	}
	for _, f := range c.Flag {
		if !s.hasFlag(e.UID, f) {
			return false
		}
	}
	for _, f := range c.NotFlag {
		if s.hasFlag(e.UID, f) {
			return false
		}
	}
	if needsContent(c) {
		sv := load(i)
		if sv.body == nil {
			return false
		}
		if !matchDate(sv.date, c.Since, c.Before) {
			return false
		}
		if c.Larger > 0 && int64(len(sv.body)) <= c.Larger {
			return false
		}
		if c.Smaller > 0 && int64(len(sv.body)) >= c.Smaller {
			return false
		}
		if !matchContent(sv.body, c) {
			return false
		}
	}
	for _, not := range c.Not {
		if s.match(i, &not, load) {
			return false
		}
	}
	for _, or := range c.Or {
		if !s.match(i, &or[0], load) && !s.match(i, &or[1], load) {
			return false
		}
	}
	return true
}

// needsContent reports whether c itself (not its Not/Or children) needs the message.
func needsContent(c *imap.SearchCriteria) bool {
	return !c.Since.IsZero() || !c.Before.IsZero() || !c.SentSince.IsZero() || !c.SentBefore.IsZero() ||
		len(c.Header) > 0 || len(c.Body) > 0 || len(c.Text) > 0 || c.Larger > 0 || c.Smaller > 0
}

func (s *session) hasFlag(uid uint32, f imap.Flag) bool {
	return strings.EqualFold(string(f), string(imap.FlagSeen)) && s.sel.seen[uid]
}

func inSeqSet(set imap.SeqSet, num, max uint32) bool {
	if imap.IsSearchRes(set) {
		return false
	}
	for _, r := range set {
		lo, hi := staticRange(r.Start, r.Stop, max)
		if num >= lo && num <= hi {
			return true
		}
	}
	return false
}

func inUIDSet(set imap.UIDSet, uid, max uint32) bool {
	if imap.IsSearchRes(set) {
		return false
	}
	for _, r := range set {
		lo, hi := staticRange(uint32(r.Start), uint32(r.Stop), max)
		if uid >= lo && uid <= hi {
			return true
		}
	}
	return false
}

// matchDate compares dates only, ignoring time and zone (RFC 3501 6.4.4).
func matchDate(t, since, before time.Time) bool {
	if since.IsZero() && before.IsZero() {
		return true
	}
	t = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	if !since.IsZero() && t.Before(since) {
		return false
	}
	return before.IsZero() || t.Before(before)
}

// matchContent checks the header, body and text criteria and the sent date against body, the
// message as served (decoded: transfer encodings and charsets are undone before comparing).
func matchContent(body []byte, c *imap.SearchCriteria) bool {
	e, err := message.Read(bytes.NewReader(body))
	if e == nil {
		return false
	}
	_ = err // unknown charsets and encodings still give a readable entity
	h := e.Header
	for _, hc := range c.Header {
		if !headerContains(h, hc.Key, hc.Value) {
			return false
		}
	}
	if !c.SentSince.IsZero() || !c.SentBefore.IsZero() {
		d, err := (&mail.Header{Header: h}).Date()
		if err != nil || !matchDate(d, c.SentSince, c.SentBefore) {
			return false
		}
	}
	if len(c.Body) == 0 && len(c.Text) == 0 {
		return true
	}
	var headers, text strings.Builder
	for f := h.Fields(); f.Next(); {
		v, _ := f.Text()
		headers.WriteString(v)
		headers.WriteByte('\n')
	}
	collectText(e, &text, 0)
	bodyText := strings.ToLower(text.String())
	allText := strings.ToLower(headers.String()) + bodyText
	for _, b := range c.Body {
		if !strings.Contains(bodyText, strings.ToLower(b)) {
			return false
		}
	}
	for _, t := range c.Text {
		if !strings.Contains(allText, strings.ToLower(t)) {
			return false
		}
	}
	return true
}

func headerContains(h message.Header, key, value string) bool {
	fs := h.FieldsByKey(key)
	if value == "" {
		return fs.Len() > 0
	}
	value = strings.ToLower(value)
	for fs.Next() {
		v, _ := fs.Text()
		if strings.Contains(strings.ToLower(v), value) {
			return true
		}
	}
	return false
}

// collectText gathers the decoded text parts, within the same limits as serving.
func collectText(e *message.Entity, out *strings.Builder, depth int) {
	if depth > maxServedDepth || out.Len() > 32<<20 {
		return
	}
	if mr := e.MultipartReader(); mr != nil {
		for parts := 0; parts < maxServedParts; parts++ {
			p, err := mr.NextPart()
			if p == nil || (err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err)) {
				return
			}
			collectText(p, out, depth+1)
		}
		return
	}
	ct, _, _ := e.Header.ContentType()
	if ct == "" || strings.HasPrefix(ct, "text/") || strings.HasPrefix(ct, "message/") {
		b, _ := io.ReadAll(io.LimitReader(e.Body, 16<<20))
		out.Write(b)
		out.WriteByte('\n')
	}
}
