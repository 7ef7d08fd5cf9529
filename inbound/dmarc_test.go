package inbound

import (
	"bufio"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/idna"

	"mailgate/internal/testutil"
)

// TestOrgDomainPSL runs the public suffix list's own test cases (checkPublicSuffix lines)
// against OrgDomain. OrgDomain answers in A-labels, so IDN expectations are compared in
// their ASCII form; x/net/publicsuffix needs its input in that form too, which OrgDomain
// converts. No case diverges.
func TestOrgDomainPSL(t *testing.T) {
	f, err := os.Open(testutil.Testdata(t, "dmarc/test_psl.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	re := regexp.MustCompile(`^checkPublicSuffix\((null|'[^']*'), (null|'[^']*')\);`)
	arg := func(s string) string {
		if s == "null" {
			return ""
		}
		return strings.Trim(s, "'")
	}
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n++
		in, want := arg(m[1]), arg(m[2])
		if want != "" {
			a, err := idna.ToASCII(want)
			if err != nil {
				t.Fatalf("%q: %v", want, err)
			}
			want = strings.ToLower(a)
		}
		if got := OrgDomain(in); got != want {
			t.Errorf("OrgDomain(%q) = %q, want %q", in, got, want)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 70 {
		t.Fatalf("only %d checkPublicSuffix lines read", n)
	}
	t.Logf("%d PSL cases", n)
}

func TestAligned(t *testing.T) {
	for _, tc := range []struct {
		auth, from string
		mode       dmarc.AlignmentMode
		want       bool
	}{
		{"example.com", "example.com", dmarc.AlignmentStrict, true},
		{"Example.COM.", "example.com", dmarc.AlignmentStrict, true},
		{"mail.example.com", "example.com", dmarc.AlignmentStrict, false},
		{"mail.example.com", "example.com", dmarc.AlignmentRelaxed, true},
		{"example.com", "news.example.com", dmarc.AlignmentRelaxed, true},
		{"a.example.com", "b.example.com", dmarc.AlignmentRelaxed, true},
		{"example.net", "example.com", dmarc.AlignmentRelaxed, false},
		{"notexample.com", "example.com", dmarc.AlignmentRelaxed, false},
		// Different registrations under a public suffix are different organizations.
		{"alice.co.uk", "bob.co.uk", dmarc.AlignmentRelaxed, false},
		{"co.uk", "bob.co.uk", dmarc.AlignmentRelaxed, false},
		{"alice.github.io", "bob.github.io", dmarc.AlignmentRelaxed, false},
		{"", "example.com", dmarc.AlignmentRelaxed, false},
		{"example.com", "", dmarc.AlignmentRelaxed, false},
		{"bücher.example", "xn--bcher-kva.example", dmarc.AlignmentStrict, true},
	} {
		if got := aligned(tc.auth, tc.from, tc.mode); got != tc.want {
			t.Errorf("aligned(%q, %q, %s) = %v, want %v", tc.auth, tc.from, tc.mode, got, tc.want)
		}
	}
}

func TestIsDMARCRecord(t *testing.T) {
	for rec, want := range map[string]bool{
		"v=DMARC1; p=none":     true,
		"v = DMARC1;p=reject":  true,
		"v=DMARC1":             true,
		"v=dmarc1; p=none":     false,
		"p=none; v=DMARC1":     false,
		"v=spf1 -all":          false,
		"v=DMARC10; p=none":    false,
		"":                     false,
		"some other TXT thing": false,
	} {
		if got := isDMARCRecord(rec); got != want {
			t.Errorf("isDMARCRecord(%q) = %v, want %v", rec, got, want)
		}
	}
}
