package app

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
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
	return InitWith(InitOptions{Dir: dir, Domain: domain}, out)
}

// InitOptions says where init writes and for whom.
type InitOptions struct {
	Dir    string // config and keys
	Domain string
	// DataDir is the config's data_dir; "" = DIR/data. A systemd installation uses
	// /var/lib/mailgate (contrib/mailgate.service).
	DataDir string
	// Owner, when set, is the user that runs serve: init (run as root) gives it the data dir
	// and the keys (mode 0600, readable by that user only); DIR and the config stay root's,
	// readable by the user's group.
	Owner string
}

// InitWith is Init with a separate data dir and an owner.
func InitWith(o InitOptions, out io.Writer) error {
	dir, domain := o.Dir, o.Domain
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
	dataDir := path(config.ExampleDataDir)
	if o.DataDir != "" {
		if dataDir, err = filepath.Abs(o.DataDir); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(dataDir, DBFile)); err == nil {
			return fmt.Errorf("init: -data-dir %s holds a database already; choose an empty data dir", dataDir)
		}
	}
	uid, gid := -1, -1
	if o.Owner != "" {
		if uid, gid, err = lookupOwner(o.Owner); err != nil {
			return err
		}
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
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
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
	if err := writeNew(path(config.ExampleConfigFile), []byte(config.ExampleWith(domain, abs, dataDir)), 0o640); err != nil {
		return fmt.Errorf("init: config: %w", err)
	}
	if uid >= 0 {
		// The service owns its data dir and its keys (mode 0600). DIR and the config stay
		// the admin's, readable by the service's group only: the service cannot rewrite its
		// own config.
		type owned struct {
			path     string
			uid, gid int
			mode     os.FileMode // 0: keep the mode it was written with
		}
		own := []owned{{abs, os.Geteuid(), gid, 0o750}, {path(config.ExampleConfigFile), os.Geteuid(), gid, 0o640}, {dataDir, uid, gid, 0o700}}
		for _, f := range files {
			if f != config.ExampleConfigFile {
				own = append(own, owned{path(f), uid, gid, 0})
			}
		}
		for _, f := range own {
			err := os.Lchown(f.path, f.uid, f.gid)
			if err == nil && f.mode != 0 {
				err = os.Chmod(f.path, f.mode)
			}
			if err != nil {
				return fmt.Errorf("init: -owner %s: %w", o.Owner, err)
			}
		}
	}

	d := config.Default()
	fmt.Fprintf(out, "Wrote a new mailgate installation for %s in %s:\n", domain, abs)
	for _, f := range files {
		fmt.Fprintf(out, "  %s\n", path(f))
	}
	fmt.Fprintf(out, "Data dir: %s\n", dataDir)
	if o.Owner != "" {
		fmt.Fprintf(out, "The data dir and the keys belong to %s; %s and the config are readable by its group\n", o.Owner, abs)
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
	fmt.Fprint(out, DNSRecords(domain, host, []DKIMRecord{{d.Outbound.DKIMSelector, rsaTXT}, {d.Outbound.DKIMEd25519Selector, edTXT}}, nil))
	fmt.Fprintf(out, "     (mailgate dns-records -config %s prints them again)\n", path(config.ExampleConfigFile))
	fmt.Fprintf(out, "\n  5. Start it: mailgate serve -config %s\n", path(config.ExampleConfigFile))
	return nil
}

// DKIMRecord is one DKIM key as DNS publishes it: its selector and the TXT value.
type DKIMRecord struct {
	Selector string
	TXT      string
}

// DNSRecords formats the records a domain publishes for mailgate: the host's addresses, MX,
// SPF, every DKIM key and a DMARC policy. init and dns-records both print it, so an existing
// installation gets exactly what a new one was told. hostIPs are the addresses the MX host
// listens on when the config names them; without them the A/AAAA lines are left for the admin
// to fill in. TXT values longer than 255 bytes are split into strings, as DNS requires.
func DNSRecords(domain, host string, dkim []DKIMRecord, hostIPs []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "; the host mailgate runs on: its MX name must resolve to the address customers' servers reach\n")
	if len(hostIPs) == 0 {
		fmt.Fprintf(&b, "; %s.\tIN A <this server's public IPv4>\n", host)
		fmt.Fprintf(&b, "; %s.\tIN AAAA <this server's public IPv6, if it has one>\n", host)
	}
	for _, ip := range hostIPs {
		rr := "A"
		if strings.Contains(ip, ":") {
			rr = "AAAA"
		}
		fmt.Fprintf(&b, "%s.\tIN %s %s\n", host, rr, ip)
	}
	fmt.Fprintf(&b, "; MX, SPF and DMARC live at the apex of %s: MERGE them with the records it has already.\n", domain)
	fmt.Fprintf(&b, "; A domain has one SPF and one DMARC record; add to an existing one instead of publishing a second.\n")
	fmt.Fprintf(&b, "; mail for %s goes to mailgate\n%s.\tIN MX 10 %s.\n", domain, domain, host)
	fmt.Fprintf(&b, "; SPF: which hosts may send as %s; add your relay (e.g. include:your-relay.example) when [outbound] relay is set\n", domain)
	fmt.Fprintf(&b, "%s.\tIN TXT \"v=spf1 mx -all\"\n", domain)
	fmt.Fprintf(&b, "; DKIM: the keys replies are signed with ([outbound] dkim_selector, dkim_ed25519_selector)\n")
	for _, k := range dkim {
		fmt.Fprintf(&b, "%s._domainkey.%s.\tIN TXT %s\n", k.Selector, domain, txtStrings(k.TXT))
	}
	fmt.Fprintf(&b, "; DMARC: start with p=none and rua reports (mailgate files them, see README), move to p=quarantine or p=reject once reports are clean\n")
	fmt.Fprintf(&b, "_dmarc.%s.\tIN TXT \"v=DMARC1; p=none; adkim=r; aspf=r; rua=mailto:%s\"\n", domain, ReportsAddress(domain))
	return b.String()
}

// ReportsAddress is where the DMARC record that init prints asks for aggregate reports.
func ReportsAddress(domain string) string { return "postmaster@" + domain }

// InstallationRecords rebuilds the DNS records of an existing installation from its config
// and its DKIM key files: the selectors and keys it really signs with.
func InstallationRecords(cfg *config.Config) (string, error) {
	oc := cfg.Outbound
	domain := strings.ToLower(oc.DKIMDomain)
	if domain == "" && len(cfg.Queues) > 0 {
		if at := strings.LastIndexByte(cfg.Queues[0].Address, '@'); at >= 0 {
			domain = strings.ToLower(cfg.Queues[0].Address[at+1:])
		}
	}
	if domain == "" {
		return "", errors.New("no domain: set [outbound] dkim_domain (your From domain)")
	}
	var dkim []DKIMRecord
	for _, k := range []struct{ field, file, selector string }{
		{"dkim_key_file", oc.DKIMKeyFile, oc.DKIMSelector},
		{"dkim_ed25519_key_file", oc.DKIMEd25519KeyFile, oc.DKIMEd25519Selector},
	} {
		if k.file == "" {
			continue
		}
		signer, err := outbound.LoadDKIMKey(k.file)
		if err != nil {
			return "", fmt.Errorf("outbound: %s: %w", k.field, err)
		}
		dkim = append(dkim, DKIMRecord{Selector: k.selector, TXT: outbound.DNSRecord(signer.Public())})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "; DNS records for mailgate on %s (config %s)\n", cfg.Hostname, cfg.Path)
	if len(dkim) == 0 {
		fmt.Fprintf(&b, "; no DKIM key is configured ([outbound] dkim_key_file): replies go out unsigned\n")
	}
	b.WriteString(DNSRecords(domain, strings.TrimSuffix(strings.ToLower(cfg.Hostname), "."), dkim, listenIPs(cfg.SMTP.Listen)))
	return b.String(), nil
}

// listenIPs returns the public addresses of the MX listeners, when the config names them.
func listenIPs(listen []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range listen {
		h, _, err := net.SplitHostPort(a)
		ip := net.ParseIP(h)
		if err != nil || ip == nil || ip.IsUnspecified() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || seen[ip.String()] {
			continue
		}
		seen[ip.String()] = true
		out = append(out, ip.String())
	}
	return out
}

// lookupOwner finds the user init gives the installation to. Only root can give files away.
func lookupOwner(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return -1, -1, fmt.Errorf("init: -owner %s: %w (create it first, e.g. useradd --system --home-dir /var/lib/mailgate --shell /usr/sbin/nologin %s)", name, err, name)
	}
	if uid, err = strconv.Atoi(u.Uid); err == nil {
		gid, err = strconv.Atoi(u.Gid)
	}
	if err != nil {
		return -1, -1, fmt.Errorf("init: -owner %s: %w", name, err)
	}
	if os.Geteuid() != 0 && os.Geteuid() != uid {
		return -1, -1, fmt.Errorf("init: -owner %s needs root (files can only be given away by root); run init as root or as %s", name, name)
	}
	return uid, gid, nil
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
