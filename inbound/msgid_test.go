package inbound

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"crypto/ed25519"

	"github.com/emersion/go-msgauth/dkim"

	"mailgate/internal/dnsmock"
	"mailgate/tickets"
)

// signAs DKIM-signs msg for domain with srvDKIMKey (selector "s1").
func signAs(t testing.TB, domain string, msg []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(msg), &dkim.SignOptions{
		Domain: domain, Selector: "s1", Signer: srvDKIMKey,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID", "In-Reply-To"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// laxSigned publishes lsigned.example: DKIM key s1, SPF that refuses 127.0.0.1, DMARC p=none.
// Its mail passes DMARC only through the signature, and a forgery of it is accepted unverified.
func laxSigned(r *dnsmock.Resolver) {
	r.TXT["lsigned.example"] = []string{"v=spf1 -all"}
	r.TXT["_dmarc.lsigned.example"] = []string{"v=DMARC1; p=none"}
	r.TXT["s1._domainkey.lsigned.example"] = []string{"v=DKIM1; k=ed25519; p=" +
		base64.StdEncoding.EncodeToString(srvDKIMKey.Public().(ed25519.PublicKey))}
}

// ticketOf returns the ticket holding the stored message with Message-ID id and subject subj.
func (e *srvEnv) ticketOf(t *testing.T, id, subj string) (tickets.Message, *tickets.Ticket) {
	t.Helper()
	for _, m := range e.stored(t) {
		if m.MessageID == id && m.Subject == subj {
			tk, _, err := e.tk.Get(srvAdmin, m.Ticket)
			if err != nil {
				t.Fatal(err)
			}
			return m.Message, tk
		}
	}
	t.Fatalf("no message %s %q stored", id, subj)
	return tickets.Message{}, nil
}

// TestServerMessageIDReuseCannotStealThread performs issue 11.2 through the SMTP server: a
// stranger sends new mail reusing a customer's Message-ID, then the customer's genuine
// DKIM-signed follow-up arrives. It must join the customer's own ticket, whether the stranger
// forged the customer's From (p=none domain) or wrote as himself (p=reject domain).
func TestServerMessageIDReuseCannotStealThread(t *testing.T) {
	for _, c := range []struct {
		name, customer, attackerFrom, mailFrom string
	}{
		// The forgery is accepted unverified; before the fix the follow-up joined the forger's
		// ticket and turned its badge verified.
		{"p=none customer, From forged", "carol@lsigned.example", "carol@lsigned.example", "mallory@lax.example"},
		// The forger cannot pass as the customer; before the fix the follow-up opened a third
		// ticket instead of joining its own.
		{"p=reject customer, stranger's From", "carol@signed.example", "mallory@lax.example", "mallory@lax.example"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newSrvEnvDNS(t, nil, nil, laxSigned)
			domain := c.customer[strings.IndexByte(c.customer, '@')+1:]
			rcpt := []string{"support@example.com"}
			first := signAs(t, domain, srvMail(c.customer, "Order 17 missing", "c1@"+domain))
			if err := send(e.addr, "mx."+domain, c.customer, rcpt, first); err != nil {
				t.Fatalf("customer: %v", err)
			}
			_, ownTicket := e.ticketOf(t, "c1@"+domain, "Order 17 missing")
			attack := srvMail(c.attackerFrom, "Invoice update", "c1@"+domain)
			if err := send(e.addr, "client.lax.example", c.mailFrom, rcpt, attack); err != nil {
				t.Fatalf("stranger: %v", err)
			}
			follow := signAs(t, domain, srvMail(c.customer, "Re: Order 17 missing", "c2@"+domain, "In-Reply-To: <c1@"+domain+">"))
			if err := send(e.addr, "mx."+domain, c.customer, rcpt, follow); err != nil {
				t.Fatalf("follow-up: %v", err)
			}
			// A retransmission of the customer's first mail is still stored once, after all that.
			if err := send(e.addr, "mx."+domain, c.customer, rcpt, first); err != nil {
				t.Fatalf("retransmission: %v", err)
			}

			fm, followTicket := e.ticketOf(t, "c2@"+domain, "Re: Order 17 missing")
			if !fm.Verified {
				t.Fatalf("follow-up not verified: %+v", fm.Auth)
			}
			if followTicket.ID != ownTicket.ID {
				t.Fatalf("the customer's follow-up went to ticket %d, not its own ticket %d", followTicket.ID, ownTicket.ID)
			}
			own, ownNow := e.ticketOf(t, "c1@"+domain, "Order 17 missing")
			if ownNow.ID != ownTicket.ID {
				t.Fatalf("the customer's first mail was stored again, in ticket %d", ownNow.ID)
			}
			ownTicket = ownNow
			if !own.Verified {
				t.Fatalf("customer's first mail not verified: %+v", own.Auth)
			}
			if ownTicket.Messages != 2 {
				t.Fatalf("customer's ticket holds %d messages, want 2 (first + follow-up, the retransmission deduplicated)", ownTicket.Messages)
			}
			am, attackTicket := e.ticketOf(t, "c1@"+domain, "Invoice update")
			if attackTicket.ID == ownTicket.ID || attackTicket.Messages != 1 {
				t.Fatalf("the stranger's mail is in ticket %d (%d messages), want its own ticket", attackTicket.ID, attackTicket.Messages)
			}
			if am.Verified || !am.IDTaken || !strings.Contains(am.Problem, "Message-ID") {
				t.Fatalf("the stranger's mail: verified %t, id taken %t, problem %q", am.Verified, am.IDTaken, am.Problem)
			}
			for _, p := range attackTicket.Participants {
				if p.Verified {
					t.Fatalf("the stranger's ticket gained a verified participant: %+v", attackTicket.Participants)
				}
			}
			if n := len(e.stored(t)); n != 3 {
				t.Fatalf("stored %d messages, want 3", n)
			}
			// The index still names the customer's first message.
			if id, seq, ok := e.tk.FindMessage("<c1@" + domain + ">"); !ok || id != ownTicket.ID || seq != own.Seq {
				t.Fatalf("index names ticket %d seq %d, want %d/%d", id, seq, ownTicket.ID, own.Seq)
			}
		})
	}
}
