package app

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"mailgate/config"
	"mailgate/outbound"
	"mailgate/pgp"
	"mailgate/store"
)

var domainRe = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$`)

// Init writes a new installation into dir for domain: the commented mailgate.toml, the data
// key, DKIM keys (RSA-2048 and Ed25519), the gateway's PGP key and a self-signed TLS pair,
// then prints the DNS records to publish. It refuses to overwrite any existing file, and
// checks all of them before writing the first, so a refused run leaves nothing behind.
func Init(dir, domain string, out io.Writer) error {
	domain = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(domain)), ".")
	if !domainRe.MatchString(domain) {
		return fmt.Errorf("-domain %q is not a domain name; write e.g. -domain example.com (the domain of your support address)", domain)
	}
	if dir == "" {
		return errors.New("init needs -dir DIR (where to write the config and keys)")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	path := func(name string) string { return filepath.Join(abs, name) }
	files := []string{
		config.ExampleConfigFile, config.ExampleKeyFile, config.ExampleDKIMKeyFile, config.ExampleDKIMEd25519Key,
		config.ExamplePGPKeyFile, config.ExampleTLSCert, config.ExampleTLSKey,
	}
	var exist []string
	for _, f := range files {
		if _, err := os.Lstat(path(f)); !errors.Is(err, fs.ErrNotExist) {
			exist = append(exist, path(f))
		}
	}
	if len(exist) > 0 {
		return fmt.Errorf("init: refusing to overwrite %s; choose an empty -dir (existing keys may already be in use)", strings.Join(exist, ", "))
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := os.MkdirAll(path(config.ExampleDataDir), 0o700); err != nil {
		return fmt.Errorf("init: %w", err)
	}

	if err := store.WriteNewKey(path(config.ExampleKeyFile)); err != nil {
		return fmt.Errorf("init: data key: %w", err)
	}
	rsaPEM, rsaTXT, err := outbound.GenerateDKIMKey("rsa")
	if err == nil {
		err = writeNew(path(config.ExampleDKIMKeyFile), rsaPEM, 0o600)
	}
	if err != nil {
		return fmt.Errorf("init: DKIM RSA key: %w", err)
	}
	edPEM, edTXT, err := outbound.GenerateDKIMKey("ed25519")
	if err == nil {
		err = writeNew(path(config.ExampleDKIMEd25519Key), edPEM, 0o600)
	}
	if err != nil {
		return fmt.Errorf("init: DKIM Ed25519 key: %w", err)
	}
	support := "support@" + domain
	armored, err := pgp.GenerateKey(domain+" support", support)
	if err == nil {
		err = writeNew(path(config.ExamplePGPKeyFile), armored, 0o600)
	}
	if err != nil {
		return fmt.Errorf("init: PGP key: %w", err)
	}
	host := "mail." + domain
	fp, err := WriteSelfSignedCert(path(config.ExampleTLSCert), path(config.ExampleTLSKey), []string{host}, 365*24*time.Hour)
	if err != nil {
		return fmt.Errorf("init: TLS certificate: %w", err)
	}
	if err := writeNew(path(config.ExampleConfigFile), []byte(config.Example(domain, abs)), 0o640); err != nil {
		return fmt.Errorf("init: config: %w", err)
	}

	d := config.Default()
	fmt.Fprintf(out, "Wrote a new mailgate installation for %s in %s:\n", domain, abs)
	for _, f := range files {
		fmt.Fprintf(out, "  %s\n", path(f))
	}
	fmt.Fprintf(out, `
Next steps:
  1. Read and adjust %s (hostname, [[queue]], [outbound] relay), then run
       mailgate check-config -config %s
  2. Back up %s somewhere other than this machine: without it the database cannot be read.
  3. Replace the self-signed certificate (SHA-256 %s)
     with one from your CA for %s, or keep it for testing only.
  4. Publish these DNS records (zone file syntax):

`, path(config.ExampleConfigFile), path(config.ExampleConfigFile), path(config.ExampleKeyFile), fp, host)
	fmt.Fprint(out, DNSRecords(domain, host, d.Outbound.DKIMSelector, rsaTXT, d.Outbound.DKIMEd25519Selector, edTXT))
	fmt.Fprintf(out, "\n  5. Start it: mailgate serve -config %s\n", path(config.ExampleConfigFile))
	return nil
}

// DNSRecords formats the records a domain publishes for mailgate: MX, SPF, both DKIM keys and
// a DMARC policy. TXT values longer than 255 bytes are split into strings, as DNS requires.
func DNSRecords(domain, host, rsaSelector, rsaTXT, edSelector, edTXT string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "; mail for %s goes to mailgate\n%s.\tIN MX 10 %s.\n", domain, domain, host)
	fmt.Fprintf(&b, "; SPF: which hosts may send as %s; add your relay (e.g. include:your-relay.example) when [outbound] relay is set\n", domain)
	fmt.Fprintf(&b, "%s.\tIN TXT \"v=spf1 mx -all\"\n", domain)
	fmt.Fprintf(&b, "; DKIM: the keys replies are signed with ([outbound] dkim_selector, dkim_ed25519_selector)\n")
	fmt.Fprintf(&b, "%s._domainkey.%s.\tIN TXT %s\n", rsaSelector, domain, txtStrings(rsaTXT))
	fmt.Fprintf(&b, "%s._domainkey.%s.\tIN TXT %s\n", edSelector, domain, txtStrings(edTXT))
	fmt.Fprintf(&b, "; DMARC: start with p=none and rua reports, move to p=quarantine or p=reject once reports are clean\n")
	fmt.Fprintf(&b, "_dmarc.%s.\tIN TXT \"v=DMARC1; p=none; adkim=r; aspf=r; rua=mailto:postmaster@%s\"\n", domain, domain)
	return b.String()
}

// txtStrings quotes a TXT value, split into strings of at most 255 bytes.
func txtStrings(v string) string {
	var parts []string
	for len(v) > 255 {
		parts = append(parts, `"`+v[:255]+`"`)
		v = v[255:]
	}
	parts = append(parts, `"`+v+`"`)
	if len(parts) == 1 {
		return parts[0]
	}
	return "( " + strings.Join(parts, " ") + " )"
}
