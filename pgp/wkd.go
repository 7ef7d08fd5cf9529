package pgp

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Web Key Directory, draft-koch-openpgp-webkey-service: keys live at
// https://openpgpkey.<domain>/.well-known/openpgpkey/<domain>/hu/<hash> (advanced method) or
// https://<domain>/.well-known/openpgpkey/hu/<hash> (direct method).

var zbase32 = base32.NewEncoding("ybndrfg8ejkmcpqxot1uwisza345h769").WithPadding(base32.NoPadding)

// WKDHash is the z-base-32 encoded SHA-1 of the local part with ASCII letters lower-cased
// (the draft leaves non-ASCII characters alone), 32 characters.
func WKDHash(localPart string) string {
	sum := sha1.Sum([]byte(asciiLower(localPart)))
	return zbase32.EncodeToString(sum[:])
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

const wkdPrefix = "/.well-known/openpgpkey/"

// WKDHandler serves the gateway key by WKD for each address (both the direct and the advanced
// path layout, so the same listener works behind example.com and openpgpkey.example.com):
// `hu/<hash>` answers the binary public key carrying only the user IDs of that address, and
// `policy` an empty policy file. Everything else is 404. Addresses the key has no user ID for
// are not served (logged once here, to log; nil means slog.Default()), since clients drop keys
// whose user IDs do not match.
func WKDHandler(key *Key, addresses []string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &wkdHandler{keys: map[string]map[string][]byte{}}
	for _, a := range addresses {
		local, domain, err := splitAddr(strings.TrimSpace(a))
		if err != nil {
			log.Warn("wkd: skipping address", "addr", a, "err", err)
			continue
		}
		pub, ok := key.publicFor(local + "@" + domain)
		if !ok {
			log.Warn("wkd: the gateway key has no user ID for this address; not published", "addr", a, "fingerprint", key.Fingerprint())
			continue
		}
		if h.keys[domain] == nil {
			h.keys[domain] = map[string][]byte{}
		}
		h.keys[domain][WKDHash(local)] = pub
	}
	return h
}

type wkdHandler struct {
	keys map[string]map[string][]byte // domain → hash → binary key
}

func (h *wkdHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, wkdPrefix)
	if !ok {
		http.NotFound(w, r)
		return
	}
	parts := strings.Split(rest, "/")
	var domain, hash string
	switch {
	case len(parts) == 1 && parts[0] == "policy":
		h.policy(w)
		return
	case len(parts) == 2 && parts[1] == "policy" && h.keys[strings.ToLower(parts[0])] != nil:
		h.policy(w)
		return
	case len(parts) == 2 && parts[0] == "hu":
		hash = parts[1]
		domain = h.directDomain(r.Host, hash)
	case len(parts) == 3 && parts[1] == "hu":
		domain, hash = strings.ToLower(parts[0]), parts[2]
	default:
		http.NotFound(w, r)
		return
	}
	pub := h.keys[domain][hash]
	if pub == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Access-Control-Allow-Origin", "*") // the draft asks for it, for web clients
	w.Header().Set("Content-Length", fmt.Sprint(len(pub)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(pub)
}

func (h *wkdHandler) policy(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.WriteHeader(http.StatusOK)
}

// directDomain picks the domain of a direct-method request: the Host when it is one of ours,
// else the only domain that has the hash (a listener reached by IP address).
func (h *wkdHandler) directDomain(host, hash string) string {
	if hn, _, err := net.SplitHostPort(host); err == nil {
		host = hn
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if h.keys[host] != nil {
		return host
	}
	found := ""
	for d, m := range h.keys {
		if m[hash] != nil {
			if found != "" {
				return "" // ambiguous without a Host we know
			}
			found = d
		}
	}
	return found
}

// LookupWKD fetches email's key by WKD: the advanced URL first, then the direct one. Only HTTPS
// is used (redirects to anything else are refused) unless baseURL is set, which replaces
// "https://openpgpkey.<domain>" and "https://<domain>" for tests and local mirrors. Replies are
// size-limited. Of the keys returned, only user IDs for email are kept; keys without one, or
// not valid for encryption now, are dropped; the newest remaining key wins.
func LookupWKD(ctx context.Context, client *http.Client, baseURL, email string) (*openpgp.Entity, error) {
	local, domain, err := splitAddr(strings.TrimSpace(email))
	if err != nil {
		return nil, fmt.Errorf("wkd: %w", err)
	}
	if !validHostname(domain) {
		return nil, fmt.Errorf("wkd: %q is not a domain name", domain)
	}
	addr := local + "@" + domain
	hash := WKDHash(local)
	q := "?l=" + url.QueryEscape(local)
	advanced := "https://openpgpkey." + domain
	direct := "https://" + domain
	if baseURL != "" {
		advanced = strings.TrimRight(baseURL, "/")
		direct = advanced
	}
	urls := []string{
		advanced + wkdPrefix + domain + "/hu/" + hash + q,
		direct + wkdPrefix + "hu/" + hash + q,
	}

	c := &http.Client{Timeout: 30 * time.Second}
	if client != nil {
		cc := *client
		c = &cc
	}
	httpsOnly := baseURL == ""
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		if httpsOnly && req.URL.Scheme != "https" {
			return fmt.Errorf("refusing redirect to %s: WKD is HTTPS only", req.URL.Scheme)
		}
		return nil
	}

	var errs []error
	notFound := 0
	for _, u := range urls {
		e, err := wkdFetch(ctx, c, u, addr)
		if err == nil {
			return e, nil
		}
		if errors.Is(err, ErrNoKey) {
			notFound++
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if notFound == len(urls) {
		return nil, fmt.Errorf("wkd %s: %w", addr, ErrNoKey)
	}
	return nil, fmt.Errorf("wkd %s: %w", addr, errors.Join(errs...))
}

func wkdFetch(ctx context.Context, c *http.Client, u, addr string) (*openpgp.Entity, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%s: %w", req.URL.Host, ErrNoKey)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", req.URL.Host, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxKeyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.URL.Host, err)
	}
	if len(body) > maxKeyBytes {
		return nil, fmt.Errorf("%s: key larger than %d bytes", req.URL.Host, maxKeyBytes)
	}
	var el openpgp.EntityList
	if bytes.HasPrefix(bytes.TrimSpace(body), []byte("-----BEGIN")) {
		el, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(body)) // not per the draft, but seen
	} else {
		el, err = openpgp.ReadKeyRing(bytes.NewReader(body))
	}
	if err != nil {
		return nil, fmt.Errorf("%s: not an OpenPGP key: %w", req.URL.Host, err)
	}
	// The draft lets a server return revoked keys beside the current one.
	now := time.Now()
	var best *openpgp.Entity
	var reasons []string
	for _, e := range el {
		if !keepUIDsFor(e, addr) {
			reasons = append(reasons, fingerprint(e)+" has no user ID for "+addr)
			continue
		}
		if err := checkRecipient(e, addr, now); err != nil {
			reasons = append(reasons, err.Error())
			continue
		}
		if best == nil || e.PrimaryKey.CreationTime.After(best.PrimaryKey.CreationTime) {
			best = e
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%s: no usable key (%s)", req.URL.Host, strings.Join(reasons, "; "))
	}
	return best, nil
}

func validHostname(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
