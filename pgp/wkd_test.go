package pgp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

func TestWKDHash(t *testing.T) {
	for _, c := range []struct{ local, want string }{
		{"Joe.Doe", "iy9q119eutrkn8s1mk4r39qejnbu3n5q"}, // the draft's example
		{"joe.doe", "iy9q119eutrkn8s1mk4r39qejnbu3n5q"},
		{"JOE.DOE", "iy9q119eutrkn8s1mk4r39qejnbu3n5q"},
	} {
		if got := WKDHash(c.local); got != c.want {
			t.Errorf("WKDHash(%q) = %s, want %s", c.local, got, c.want)
		}
	}
	if len(WKDHash("support")) != 32 {
		t.Error("hash is not 32 characters")
	}
}

func get(t *testing.T, h http.Handler, method, host, path string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, "http://"+host+path, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestWKDHandler(t *testing.T) {
	k := testGateway(t)
	// sales@ has no user ID on the key: it must not be served.
	h := WKDHandler(k, []string{"Support@Example.com", "billing@example.com", "sales@example.com"}, nil)
	support := WKDHash("support")

	for _, c := range []struct {
		name, method, host, path string
		status                   int
		uid                      string
	}{
		{"direct", "GET", "example.com", "/.well-known/openpgpkey/hu/" + support + "?l=support", 200, "support@example.com"},
		{"direct by IP", "GET", "127.0.0.1:8443", "/.well-known/openpgpkey/hu/" + WKDHash("billing"), 200, "billing@example.com"},
		{"advanced", "GET", "openpgpkey.example.com", "/.well-known/openpgpkey/example.com/hu/" + support, 200, "support@example.com"},
		{"head", "HEAD", "example.com", "/.well-known/openpgpkey/hu/" + support, 200, ""},
		{"policy", "GET", "example.com", "/.well-known/openpgpkey/policy", 200, ""},
		{"advanced policy", "GET", "openpgpkey.example.com", "/.well-known/openpgpkey/example.com/policy", 200, ""},
		{"no uid", "GET", "example.com", "/.well-known/openpgpkey/hu/" + WKDHash("sales"), 404, ""},
		{"unknown", "GET", "example.com", "/.well-known/openpgpkey/hu/" + WKDHash("nobody"), 404, ""},
		{"other domain", "GET", "openpgpkey.example.org", "/.well-known/openpgpkey/example.org/hu/" + support, 404, ""},
		{"other path", "GET", "example.com", "/.well-known/openpgpkey/hu/" + support + "/x", 404, ""},
		{"outside", "GET", "example.com", "/tickets", 404, ""},
		{"post", "POST", "example.com", "/.well-known/openpgpkey/hu/" + support, 405, ""},
	} {
		rec := get(t, h, c.method, c.host, c.path)
		if rec.Code != c.status {
			t.Errorf("%s: status %d, want %d", c.name, rec.Code, c.status)
			continue
		}
		if c.uid == "" {
			continue
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/octet-stream" {
			t.Errorf("%s: Content-Type %q", c.name, ct)
		}
		el, err := openpgp.ReadKeyRing(bytes.NewReader(rec.Body.Bytes()))
		if err != nil || len(el) != 1 {
			t.Fatalf("%s: binary key: %v", c.name, err)
		}
		e := el[0]
		if e.PrivateKey != nil {
			t.Fatalf("%s: WKD leaks the private key", c.name)
		}
		if fingerprint(e) != k.Fingerprint() {
			t.Errorf("%s: wrong key", c.name)
		}
		if len(e.Identities) != 1 {
			t.Errorf("%s: %d user IDs, want only the one asked for", c.name, len(e.Identities))
		}
		for _, id := range e.Identities {
			if id.UserId.Email != c.uid {
				t.Errorf("%s: user ID %s, want %s", c.name, id.UserId.Email, c.uid)
			}
		}
		if err := checkRecipient(e, c.uid, time.Now()); err != nil {
			t.Errorf("%s: served key unusable: %v", c.name, err)
		}
	}
}

// pathLog is a handler wrapper that records the paths asked for.
type pathLog struct {
	mu    sync.Mutex
	paths []string
	next  http.Handler
}

func (p *pathLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.paths = append(p.paths, r.URL.Path)
	p.mu.Unlock()
	p.next.ServeHTTP(w, r)
}

func TestLookupWKDOverride(t *testing.T) {
	k := testGateway(t)
	logged := &pathLog{next: WKDHandler(k, []string{"support@example.com"}, nil)}
	srv := httptest.NewServer(logged)
	defer srv.Close()
	ctx := context.Background()

	e, err := LookupWKD(ctx, srv.Client(), srv.URL, "Support@Example.com")
	if err != nil {
		t.Fatal(err)
	}
	if fingerprint(e) != k.Fingerprint() {
		t.Error("wrong key")
	}
	// The handler answers the advanced path, so the direct one is never asked.
	if len(logged.paths) != 1 || !strings.Contains(logged.paths[0], "/example.com/hu/") {
		t.Errorf("asked %v, want the advanced path only", logged.paths)
	}

	_, err = LookupWKD(ctx, srv.Client(), srv.URL, "nobody@example.com")
	if !errors.Is(err, ErrNoKey) {
		t.Errorf("unknown address: %v, want ErrNoKey", err)
	}
}

func TestLookupWKDFallbackAndLimits(t *testing.T) {
	k := testGateway(t)
	wkd := WKDHandler(k, []string{"support@example.com", "billing@example.com"}, nil)
	mux := http.NewServeMux()
	// Advanced layout missing: only the direct path answers.
	mux.HandleFunc("/.well-known/openpgpkey/example.com/", http.NotFound)
	mux.Handle("/.well-known/openpgpkey/hu/", wkd)
	// A key served for the wrong address: its UIDs do not match.
	mux.HandleFunc("/.well-known/openpgpkey/example.net/hu/", func(w http.ResponseWriter, r *http.Request) {
		// Not a key at all. Fixed bytes: random ones (a fingerprint) sometimes parse as an
		// empty packet stream and give a different error.
		w.Write([]byte("<html>not found</html>\n"))
	})
	mux.HandleFunc("/.well-known/openpgpkey/example.org/hu/", func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte{0x99}, maxKeyBytes+10))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := context.Background()

	if _, err := LookupWKD(ctx, srv.Client(), srv.URL, "billing@example.com"); err != nil {
		t.Fatalf("direct fallback: %v", err)
	}
	if _, err := LookupWKD(ctx, srv.Client(), srv.URL, "x@example.net"); err == nil || !strings.Contains(err.Error(), "not an OpenPGP key") {
		t.Errorf("garbage reply: %v", err)
	}
	if _, err := LookupWKD(ctx, srv.Client(), srv.URL, "x@example.org"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized reply: %v", err)
	}
	if _, err := LookupWKD(ctx, srv.Client(), srv.URL, "x@exa mple.org"); err == nil {
		t.Error("bad address accepted")
	}

	// A key whose user IDs name another address teaches nothing for this one.
	other := customer(t, "someone@else.example", time.Now().Add(-time.Hour), 0)
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		other.Serialize(w)
	}))
	defer srv2.Close()
	if _, err := LookupWKD(ctx, srv2.Client(), srv2.URL, "carol@example.com"); err == nil || !strings.Contains(err.Error(), "no user ID") {
		t.Errorf("mismatched UID: %v", err)
	}
}

// TestLookupWKDHTTPSOnly runs the real URL scheme (no override) against a loopback TLS server:
// every host name dials the test server (its certificate covers example.com and *.example.com).
// The advanced URL answers 404, so the lookup falls back to the direct one; a redirect to plain
// HTTP is refused.
func TestLookupWKDHTTPSOnly(t *testing.T) {
	k := testGateway(t)
	wkd := WKDHandler(k, []string{"support@example.com", "billing@example.com"}, nil)
	mux := http.NewServeMux()
	mux.Handle("/.well-known/openpgpkey/hu/"+WKDHash("support"), wkd)
	mux.HandleFunc("/.well-known/openpgpkey/hu/"+WKDHash("billing"), func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://example.com/.well-known/openpgpkey/hu/"+WKDHash("support"), http.StatusFound)
	})
	logged := &pathLog{next: mux}
	srv := httptest.NewTLSServer(logged)
	defer srv.Close()
	client := srv.Client()
	tr := client.Transport.(*http.Transport).Clone()
	addr := srv.Listener.Addr().String()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: tr.TLSClientConfig.RootCAs}
	client.Transport = tr
	ctx := context.Background()

	e, err := LookupWKD(ctx, client, "", "support@example.com")
	if err != nil {
		t.Fatalf("https lookup: %v", err)
	}
	if fingerprint(e) != k.Fingerprint() {
		t.Error("wrong key")
	}
	want := []string{"/.well-known/openpgpkey/example.com/hu/" + WKDHash("support"), "/.well-known/openpgpkey/hu/" + WKDHash("support")}
	if strings.Join(logged.paths, " ") != strings.Join(want, " ") {
		t.Errorf("asked %v, want advanced then direct %v", logged.paths, want)
	}
	_, err = LookupWKD(ctx, client, "", "billing@example.com")
	if err == nil || !strings.Contains(err.Error(), "HTTPS only") {
		t.Errorf("redirect to http: %v, want refusal", err)
	}
}

func TestWKDReadsAtMostLimit(t *testing.T) {
	// A server that never stops sending must not be read past the limit.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, io.LimitReader(zeros{}, 8*maxKeyBytes))
	}))
	defer srv.Close()
	_, err := LookupWKD(context.Background(), srv.Client(), srv.URL, "a@example.com")
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("endless reply: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
