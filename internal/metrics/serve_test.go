package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, url, host, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if host != "" {
		req.Host = host
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestListenerHandler drives the metrics listener over real loopback TCP: token, Host check,
// and the detailed /healthz the public page no longer shows.
func TestListenerHandler(t *testing.T) {
	health := errors.New("smtp listener down")
	ts := httptest.NewServer(ListenerHandler(HandlerOptions{Token: "s3cret-token", Hostname: "mx.example.com",
		Health: func() error { return health }}))
	defer ts.Close()
	Connections("smtp", func() ConnStats {
		return ConnStats{Open: 7, Max: 9, Refused: map[string]uint64{"full": 3}}
	})
	defer Connections("smtp", nil)

	for _, tc := range []struct {
		name, path, host, token string
		code                    int
		body                    string
	}{
		{"no token", "/metrics", "", "", 401, "bearer token"},
		{"wrong token", "/metrics", "", "s3cret-tokem", 401, ""},
		{"short token", "/metrics", "", "s3cret", 401, ""},
		{"token", "/metrics", "", "s3cret-token", 200, `mailgate_connections_refused_total{reason="full",service="smtp"} 3`},
		{"hostname", "/metrics", "mx.example.com:9025", "s3cret-token", 200, `mailgate_connections_open{service="smtp"} 7`},
		{"localhost", "/metrics", "localhost", "s3cret-token", 200, "mailgate_"},
		{"rebinding", "/metrics", "attacker.example:9025", "s3cret-token", 421, ""},
		{"other address", "/metrics", "127.0.0.9", "s3cret-token", 421, ""},
		{"health detail", "/healthz", "", "s3cret-token", 503, "unavailable: smtp listener down"},
		{"health needs the token", "/healthz", "", "", 401, ""},
		{"nothing else", "/login", "", "s3cret-token", 404, ""},
	} {
		code, body := get(t, ts.URL+tc.path, tc.host, tc.token)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s: %d %.200q, want %d with %q", tc.name, code, body, tc.code, tc.body)
		}
	}
	health = nil
	if code, body := get(t, ts.URL+"/healthz", "", "s3cret-token"); code != 200 || body != "ok\n" {
		t.Errorf("healthy: %d %q", code, body)
	}

	open := httptest.NewServer(ListenerHandler(HandlerOptions{}))
	defer open.Close()
	if code, _ := get(t, open.URL+"/metrics", "", ""); code != 200 {
		t.Errorf("without a token_file: %d", code)
	}
}
