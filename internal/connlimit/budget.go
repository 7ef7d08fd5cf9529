package connlimit

// Budget is the default connection cap of each service: its share of the open-file limit.
type Budget struct{ SMTP, Submission, IMAP, Web int }

// Split divides the open-file limit nofile between the services. A reserve (an eighth, at
// least 128) stays for everything else that needs descriptors: the database, the control
// socket, DNS lookups during verification, relay and fetch connections, logs, and refusing
// connections over a cap (each is accepted before it is refused). Of the rest the MX gets 40%,
// submission 10%, IMAP and the web page 20% each; 10% is left unassigned. Each share has a
// ceiling, because memory, not descriptors, is what runs out first above it. A limit that is
// not known (0) counts as 1024, the usual soft limit.
func Split(nofile int) Budget {
	if nofile <= 0 {
		nofile = 1024
	}
	reserve := max(128, nofile/8)
	avail := max(nofile-reserve, 0)
	share := func(pct, ceiling int) int { return min(max(avail*pct/100, 4), ceiling) }
	return Budget{SMTP: share(40, 2000), Submission: share(10, 200), IMAP: share(20, 500), Web: share(20, 500)}
}

// Sum is the number of descriptors the caps can hold together.
func (b Budget) Sum() int { return b.SMTP + b.Submission + b.IMAP + b.Web }
