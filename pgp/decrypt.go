package pgp

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperr "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	"github.com/emersion/go-message/textproto"
)

// maxDecrypted bounds the plaintext of one message (after decompression): a compression bomb
// stops here instead of filling memory. A variable only so tests can lower it.
var maxDecrypted int64 = 64 << 20

// maxDepth bounds how deep Decrypt looks for an encrypted part inside other multiparts.
const maxDepth = 4

var (
	// ErrNotEncrypted means the message holds no PGP-encrypted data: store and show it as is.
	ErrNotEncrypted = errors.New("the message is not PGP-encrypted")
	// ErrNotSigned means the message is not an OpenPGP multipart/signed message.
	ErrNotSigned = errors.New("the message is not PGP/MIME-signed")
	// ErrUndecryptable is matched (errors.Is) by every *UndecryptableError.
	ErrUndecryptable = errors.New("the PGP-encrypted data cannot be read")
)

// UndecryptableError says why encrypted data could not be read. The message should be stored
// as received and marked with Reason.
type UndecryptableError struct {
	Reason string
	Err    error
}

func (e *UndecryptableError) Error() string { return "cannot decrypt: " + e.Reason }

func (e *UndecryptableError) Unwrap() error { return e.Err }

// Is lets errors.Is(err, ErrUndecryptable) match any UndecryptableError.
func (e *UndecryptableError) Is(target error) bool { return target == ErrUndecryptable }

func undecryptable(reason string, err error) error {
	return &UndecryptableError{Reason: reason, Err: err}
}

// KnownKeys finds a customer key by the key id of its primary key or a subkey; nil when
// unknown. Keyring.KnownFor(from) builds one.
type KnownKeys func(keyID uint64) *openpgp.Entity

// Decrypted is what Decrypt and VerifySigned found.
type Decrypted struct {
	// Inner is the decrypted MIME entity (header and body) as the sender wrote it. For inline
	// PGP it is a text/plain entity around the plaintext; for VerifySigned it is the signed part.
	Inner     []byte
	Encrypted bool
	Signed    bool
	// SignedBy is the signer's fingerprint, set only when a signature verifies with a key
	// that known returned.
	SignedBy string
	// SignatureErr says, for people, why a signature present did not verify (unknown key, bad
	// signature, expired key).
	SignatureErr string
	Inline       bool // inline PGP in a text/plain part rather than PGP/MIME
	Wrapped      bool // the encrypted part sat inside another multipart (a mailing list footer, a forward)
}

// ErrParserPanic is wrapped by the error of a Decrypt or VerifySigned whose parser panicked and
// was recovered; the caller logs it, this package has no logger.
var ErrParserPanic = errors.New("a PGP parser panicked")

// recoverPanics turns a panic in a parser (ours or go-crypto's) into an UndecryptableError so
// one hostile message cannot take the daemon down. The fuzz target switches it off to find them.
var recoverPanics = true

// What inbound does with this file, for a message raw from sender F (From, DMARC result known):
//
//	known := keyring.KnownFor(F)               // only F's stored key may vouch for a signature
//	res, err := pgp.Decrypt(raw, gatewayKey, known)
//	switch {
//	case err == nil:                            // store raw as received plus res.Inner (sealed);
//	                                            // mark "encrypted", "signed by <res.SignedBy>" or res.SignatureErr
//	case errors.Is(err, pgp.ErrNotEncrypted):   // try pgp.VerifySigned(raw, known) for multipart/signed
//	case errors.Is(err, pgp.ErrUndecryptable):  // store raw as received, mark with the error's Reason
//	}
//	keyring.LearnAutocrypt(F, dmarcPass, msg.Header.Get("Autocrypt"), date) // once per message

// Decrypt finds PGP-encrypted data in raw (an RFC 5322 message) and decrypts it with the
// gateway key: RFC 3156 multipart/encrypted at the top or nested in other multiparts, else an
// inline armored PGP MESSAGE in a text/plain part. A signature inside (one-pass, or a
// multipart/signed entity inside the encryption) is verified against known. A message without
// PGP encryption gives ErrNotEncrypted; damaged, foreign or unsupported encrypted data gives
// an *UndecryptableError. It never panics.
func Decrypt(raw []byte, gateway *Key, known KnownKeys) (res *Decrypted, err error) {
	if recoverPanics {
		defer func() {
			if p := recover(); p != nil {
				res, err = nil, undecryptable("the PGP data crashed the parser", fmt.Errorf("%w: %v", ErrParserPanic, p))
			}
		}()
	}
	if gateway == nil {
		return nil, errors.New("decrypt: no gateway key configured")
	}
	return decryptEntity(raw, gateway, known, 0)
}

// maxLayers bounds encryption inside encryption (a forwarded encrypted message is decrypted too).
const maxLayers = 3

func decryptEntity(raw []byte, gateway *Key, known KnownKeys, layer int) (*Decrypted, error) {
	h, body, err := readEntity(raw)
	if err != nil {
		return nil, fmt.Errorf("%w (header unreadable: %v)", ErrNotEncrypted, err)
	}
	f := finder{limit: int64(len(raw)) + 1}
	f.walk(h, body, 0)
	var res *Decrypted
	switch {
	case f.encrypted != nil:
		res, err = decryptData(f.encrypted, gateway, known)
		if err != nil {
			return nil, err
		}
		res.Wrapped = f.wrapped
	case f.broken:
		return nil, undecryptable("the PGP/MIME structure is broken: no encrypted part after the application/pgp-encrypted part", nil)
	case f.smime:
		return nil, undecryptable("S/MIME encryption (application/pkcs7-mime) is not supported; ask the sender to use OpenPGP", nil)
	case f.inline != nil:
		res, err = decryptData(f.inline, gateway, known)
		if err != nil {
			return nil, err
		}
		cs := f.inlineCharset
		if cs == "" {
			cs = "utf-8"
		}
		inner := "Content-Type: " + mime.FormatMediaType("text/plain", map[string]string{"charset": cs}) +
			"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
		res.Inner = append([]byte(inner), res.Inner...)
		res.Inline = true
		return res, nil
	default:
		return nil, ErrNotEncrypted
	}
	switch t, _ := contentType(res.Inner); t {
	case "multipart/signed":
		// RFC 3156 6.1: signed first, then encrypted as a whole.
		if v, verr := VerifySigned(res.Inner, known); verr == nil && !res.Signed {
			res.Signed, res.SignedBy, res.SignatureErr = true, v.SignedBy, v.SignatureErr
		} else if errors.Is(verr, ErrParserPanic) && !res.Signed {
			res.Signed, res.SignatureErr = true, "the signature crashed the parser"
		}
	case "multipart/encrypted":
		// Encrypted again inside: show the innermost readable entity.
		if layer+1 < maxLayers {
			if in, ierr := decryptEntity(res.Inner, gateway, known, layer+1); ierr == nil {
				if res.Signed {
					in.Signed, in.SignedBy, in.SignatureErr = true, res.SignedBy, res.SignatureErr
				}
				in.Wrapped = in.Wrapped || res.Wrapped
				return in, nil
			}
		}
	}
	return res, nil
}

// finder walks the MIME tree for the first encrypted payload.
type finder struct {
	limit         int64
	encrypted     []byte // the armored (or binary) OpenPGP message of a multipart/encrypted
	wrapped       bool
	smime         bool
	broken        bool   // a PGP/MIME multipart/encrypted without a readable encrypted part
	inline        []byte // an armored PGP MESSAGE block found in a text/plain part
	inlineCharset string
}

func (f *finder) walk(h textproto.Header, body io.Reader, depth int) {
	if f.encrypted != nil || depth > maxDepth {
		return
	}
	t, params := parseContentType(h.Get("Content-Type"))
	switch {
	case t == "multipart/encrypted":
		if p := f.pgpPayload(body, params["boundary"]); p != nil {
			f.encrypted, f.wrapped = p, depth > 0
		} else if proto := strings.ToLower(params["protocol"]); proto == "" || proto == "application/pgp-encrypted" {
			f.broken = true
		}
	case t == "application/pkcs7-mime" || t == "application/x-pkcs7-mime":
		st := strings.ToLower(params["smime-type"])
		if st == "" || st == "enveloped-data" || st == "authenveloped-data" {
			f.smime = true
		}
	case strings.HasPrefix(t, "multipart/"):
		if params["boundary"] == "" {
			return
		}
		mr := textproto.NewMultipartReader(body, params["boundary"])
		for f.encrypted == nil {
			p, err := mr.NextPart()
			if err != nil {
				return
			}
			f.walk(p.Header, p, depth+1)
		}
	case t == "text/plain" || t == "":
		if f.inline != nil {
			return
		}
		data, err := f.decoded(h, body)
		if err != nil {
			return
		}
		if blk := armorBlock(data, "PGP MESSAGE"); blk != nil {
			f.inline, f.inlineCharset = blk, params["charset"]
		}
	}
}

// pgpPayload returns the OpenPGP message of an RFC 3156 multipart/encrypted body: the part
// after the application/pgp-encrypted control part. A missing or odd protocol parameter is
// tolerated, since the part types say the same.
func (f *finder) pgpPayload(body io.Reader, boundary string) []byte {
	if boundary == "" {
		return nil
	}
	mr := textproto.NewMultipartReader(body, boundary)
	sawControl := false
	for {
		p, err := mr.NextPart()
		if err != nil {
			return nil
		}
		t, _ := parseContentType(p.Header.Get("Content-Type"))
		if t == "application/pgp-encrypted" {
			sawControl = true
			continue
		}
		if !sawControl {
			continue
		}
		data, err := f.decoded(p.Header, p)
		if err != nil {
			return nil
		}
		if blk := armorBlock(data, "PGP MESSAGE"); blk != nil {
			return blk
		}
		return data // perhaps binary; ReadMessage will say
	}
}

// decoded reads a part body, undoing its Content-Transfer-Encoding, within the limit.
func (f *finder) decoded(h textproto.Header, body io.Reader) ([]byte, error) {
	var r io.Reader = io.LimitReader(body, f.limit)
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, &base64Cleaner{r: r})
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	}
	return io.ReadAll(r)
}

// base64Cleaner drops what a base64 decoder chokes on in mail (line breaks, spaces).
type base64Cleaner struct{ r io.Reader }

func (c *base64Cleaner) Read(p []byte) (int, error) {
	for {
		n, err := c.r.Read(p)
		j := 0
		for _, b := range p[:n] {
			if b == '\r' || b == '\n' || b == ' ' || b == '\t' {
				continue
			}
			p[j] = b
			j++
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// armorBlock returns the first "-----BEGIN <typ>-----" … "-----END <typ>-----" block in data
// that starts at the beginning of a line, or nil.
func armorBlock(data []byte, typ string) []byte {
	begin := []byte("-----BEGIN " + typ + "-----")
	end := []byte("-----END " + typ + "-----")
	off := 0
	for {
		i := bytes.Index(data[off:], begin)
		if i < 0 {
			return nil
		}
		i += off
		if i == 0 || data[i-1] == '\n' {
			j := bytes.Index(data[i:], end)
			if j < 0 {
				return nil
			}
			return data[i : i+j+len(end)]
		}
		off = i + len(begin)
	}
}

// decryptData decrypts one OpenPGP message (armored or binary) and verifies a signature in it.
func decryptData(data []byte, gateway *Key, known KnownKeys) (*Decrypted, error) {
	var r io.Reader = bytes.NewReader(data)
	if bytes.HasPrefix(data, []byte("-----BEGIN ")) {
		blk, err := armor.Decode(bytes.NewReader(data))
		if err != nil {
			return nil, undecryptable("the ASCII armor is damaged", err)
		}
		if blk.Type != openpgp.MessageType {
			return nil, undecryptable("the armor holds a "+blk.Type+", not a PGP MESSAGE", nil)
		}
		r = blk.Body
	}
	// Read the armor fully first: a checksum error then reads as damage, not as a decryption failure.
	bin, err := io.ReadAll(io.LimitReader(r, maxDecrypted+1))
	if err != nil {
		return nil, undecryptable("the ASCII armor is damaged", err)
	}
	cfg := newConfig(time.Now())
	// The library's cap is a backstop with room for packet headers and signatures: the
	// LimitReader below trips first, so an oversized plaintext is reported as such rather than
	// as the generic parsing error go-crypto gives inside encrypted data.
	limit := maxDecrypted + 1<<20
	cfg.MaxDecompressedMessageSize = &limit
	kr := decryptRing{gateway: gateway.entity, known: known}
	md, err := openpgp.ReadMessage(bytes.NewReader(bin), kr, nil, cfg)
	if err != nil {
		if errors.Is(err, pgperr.ErrKeyIncorrect) {
			return nil, undecryptable("it is not encrypted to the gateway key "+gateway.Fingerprint()+
				" (recipients: "+recipients(bin)+")", err)
		}
		return nil, undecryptable(describeReadError(err), err)
	}
	plain, err := io.ReadAll(io.LimitReader(md.UnverifiedBody, maxDecrypted+1))
	if err != nil {
		return nil, undecryptable(describeReadError(err), err)
	}
	if int64(len(plain)) > maxDecrypted {
		return nil, undecryptable(fmt.Sprintf("the plaintext exceeds %d bytes", maxDecrypted), pgperr.ErrMessageTooLarge)
	}
	res := &Decrypted{Inner: plain, Encrypted: md.IsEncrypted}
	if !md.IsEncrypted {
		return nil, fmt.Errorf("%w (the PGP data is only signed)", ErrNotEncrypted)
	}
	if md.IsSigned {
		res.Signed = true
		res.SignedBy, res.SignatureErr = signatureResult(md, known)
	}
	return res, nil
}

// signatureResult reads the verdict out of md (after the body was read to EOF).
// Only a key that known returns counts: the gateway key is in the ring for decryption, but a
// signature by it is not a customer's.
func signatureResult(md *openpgp.MessageDetails, known KnownKeys) (signedBy, problem string) {
	if md.SignatureError == nil && md.SignedBy != nil && md.SignedBy.Entity != nil {
		if known != nil && known(md.SignedBy.PublicKey.KeyId) == md.SignedBy.Entity {
			return fingerprint(md.SignedBy.Entity), ""
		}
		return "", "signed by key " + md.SignedBy.PublicKey.KeyIdString() + ", which is not the key known for the sender"
	}
	issuer := ""
	if len(md.SignatureCandidates) > 0 {
		issuer = fmt.Sprintf("%016X", md.SignatureCandidates[0].IssuerKeyId)
	}
	switch {
	case md.SignatureError == nil, errors.Is(md.SignatureError, pgperr.ErrUnknownIssuer):
		return "", "signed by key " + issuer + ", which is not the key known for the sender"
	case errors.Is(md.SignatureError, pgperr.ErrKeyExpired):
		return "", "the signing key " + issuer + " had expired"
	case errors.Is(md.SignatureError, pgperr.ErrKeyRevoked):
		return "", "the signing key " + issuer + " is revoked"
	case errors.Is(md.SignatureError, pgperr.ErrSignatureExpired):
		return "", "the signature has expired"
	}
	return "", "the signature by key " + issuer + " does not verify (the message was changed, or the signature is broken)"
}

func describeReadError(err error) string {
	var se pgperr.StructuralError
	var ue pgperr.UnsupportedError
	var de pgperr.DecryptWithSessionKeyError
	var sig pgperr.SignatureError
	switch {
	case errors.Is(err, pgperr.ErrMessageTooLarge):
		return fmt.Sprintf("the decompressed plaintext exceeds %d bytes", maxDecrypted)
	case errors.As(err, &de), errors.Is(err, pgperr.ErrMDCHashMismatch), errors.Is(err, pgperr.ErrMDCMissing),
		errors.As(err, &sig):
		return "the encrypted data was changed or damaged (integrity check failed)"
	case errors.As(err, &ue):
		return "it uses an unsupported OpenPGP feature (" + string(ue) + ")"
	case errors.As(err, &se):
		return "the OpenPGP data is malformed (" + string(se) + ")"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "the OpenPGP data is truncated"
	}
	return "the OpenPGP data cannot be read (" + err.Error() + ")"
}

// recipients lists the key ids a message is encrypted to, for the error message.
func recipients(bin []byte) string {
	var ids []string
	pr := packet.NewReader(bytes.NewReader(bin))
	for len(ids) < 16 {
		p, err := pr.Next()
		if err != nil {
			break
		}
		switch k := p.(type) {
		case *packet.EncryptedKey:
			ids = append(ids, fmt.Sprintf("%016X", k.KeyId))
		case *packet.SymmetricKeyEncrypted:
			ids = append(ids, "a passphrase")
		default:
			return strings.Join(ids, ", ")
		}
	}
	if len(ids) == 0 {
		return "none"
	}
	return strings.Join(ids, ", ")
}

// decryptRing offers the gateway key for decryption and known keys for signatures.
type decryptRing struct {
	gateway *openpgp.Entity
	known   KnownKeys
}

func (r decryptRing) EntitiesById(id uint64) []*openpgp.Entity {
	if hasKeyID(r.gateway, id) {
		return []*openpgp.Entity{r.gateway}
	}
	if r.known != nil {
		if e := r.known(id); e != nil && hasKeyID(e, id) {
			return []*openpgp.Entity{e}
		}
	}
	return nil
}

func (r decryptRing) KeysById(id uint64) []openpgp.Key {
	return openpgp.EntityList(r.EntitiesById(id)).KeysById(id)
}

// VerifySigned verifies an RFC 3156 multipart/signed message (a detached signature over the
// first part's exact bytes) against known. The result has Signed set, SignedBy when the
// signature verifies with a known key, SignatureErr otherwise, and Inner = the signed part.
// A message that is not PGP/MIME-signed gives ErrNotSigned.
func VerifySigned(raw []byte, known KnownKeys) (res *Decrypted, err error) {
	if recoverPanics {
		defer func() {
			if p := recover(); p != nil {
				res, err = nil, fmt.Errorf("verify: the signature crashed the parser: %w: %v", ErrParserPanic, p)
			}
		}()
	}
	raw = crlf(raw) // the signature covers the CRLF form (RFC 3156 5)
	h, body, err := readEntity(raw)
	if err != nil {
		return nil, fmt.Errorf("%w (header unreadable: %v)", ErrNotSigned, err)
	}
	t, params := parseContentType(h.Get("Content-Type"))
	if t != "multipart/signed" || !strings.EqualFold(params["protocol"], "application/pgp-signature") {
		return nil, ErrNotSigned
	}
	rest, _ := io.ReadAll(body)
	signed, sigPart, ok := splitSigned(rest, params["boundary"])
	if !ok {
		return nil, fmt.Errorf("%w: the multipart/signed structure is broken", ErrNotSigned)
	}
	sh, sb, err := readEntity(sigPart)
	if err != nil {
		return nil, fmt.Errorf("%w: the signature part is unreadable: %v", ErrNotSigned, err)
	}
	f := finder{limit: int64(len(sigPart)) + 1}
	sig, err := f.decoded(sh, sb)
	if err != nil {
		return nil, fmt.Errorf("%w: the signature part is unreadable: %v", ErrNotSigned, err)
	}
	res = &Decrypted{Inner: signed, Signed: true}
	var sigReader io.Reader = bytes.NewReader(sig)
	if blk := armorBlock(sig, "PGP SIGNATURE"); blk != nil {
		ab, err := armor.Decode(bytes.NewReader(blk))
		if err != nil {
			res.SignatureErr = "the signature's ASCII armor is damaged"
			return res, nil
		}
		sigReader = ab.Body
	}
	cfg := newConfig(time.Now())
	md, err := openpgp.VerifyDetachedSignatureReader(decryptRing{known: known}, bytes.NewReader(signed), sigReader, cfg)
	if err != nil {
		if errors.Is(err, pgperr.ErrUnknownIssuer) {
			res.SignatureErr = "the signature part holds no signature"
		} else {
			res.SignatureErr = "the signature cannot be read (" + describeReadError(err) + ")"
		}
		return res, nil
	}
	if _, err := io.Copy(io.Discard, md.UnverifiedBody); err != nil {
		res.SignatureErr = "the signature cannot be read (" + describeReadError(err) + ")"
		return res, nil
	}
	res.SignedBy, res.SignatureErr = signatureResult(md, known)
	return res, nil
}

// splitSigned cuts a CRLF multipart body into its first part's bytes (exactly as signed:
// without the CRLF that belongs to the next delimiter) and the whole second part.
func splitSigned(body []byte, boundary string) (signed, sig []byte, ok bool) {
	if boundary == "" {
		return nil, nil, false
	}
	delim := []byte("--" + boundary)
	var starts, ends []int
	pos := 0
	for pos < len(body) {
		eol := bytes.Index(body[pos:], []byte("\r\n"))
		next := len(body)
		line := body[pos:]
		if eol >= 0 {
			line, next = body[pos:pos+eol], pos+eol+2
		}
		if bytes.HasPrefix(line, delim) {
			tail := bytes.TrimRight(line[len(delim):], " \t")
			closing := bytes.Equal(tail, []byte("--"))
			if closing || len(tail) == 0 {
				if len(starts) > len(ends) {
					ends = append(ends, max(pos-2, starts[len(starts)-1]))
				}
				if closing {
					break
				}
				starts = append(starts, next)
			}
		}
		pos = next
	}
	if len(ends) < 2 {
		return nil, nil, false
	}
	return body[starts[0]:ends[0]], body[starts[1]:ends[1]], true
}

// readEntity splits a MIME entity into its header and a reader of its body.
func readEntity(raw []byte) (textproto.Header, io.Reader, error) {
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return textproto.Header{}, nil, err
	}
	return h, br, nil
}

// contentType is the media type of a MIME entity's header.
func contentType(entity []byte) (string, map[string]string) {
	h, _, err := readEntity(entity)
	if err != nil {
		return "", nil
	}
	return parseContentType(h.Get("Content-Type"))
}

// parseContentType lower-cases the media type and keeps whatever parameters parse; a broken
// parameter list still yields the type.
func parseContentType(v string) (string, map[string]string) {
	t, params, err := mime.ParseMediaType(v)
	if err != nil && t == "" {
		t, _, _ = strings.Cut(v, ";")
		t = strings.ToLower(strings.TrimSpace(t))
	}
	if params == nil {
		params = map[string]string{}
	}
	return t, params
}
