package agentmail

import (
	"fmt"
	"strings"

	"github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"

	"mailgate/tickets"
)

// plan is what a submitted message that is not a note becomes.
//
// The rule (README "Mail clients"): a message whose To or Cc names the ticket's customer or
// its queue address is a reply; it goes to the customer and every participant, and the other
// addresses in To/Cc join the ticket as participants (never colleagues' or queues' addresses,
// which are refused: the customer's answers must not flow to them). Any other message is a
// forward to colleagues: every recipient must then be an agent's address or a queue address,
// and the copy goes to them alone, never to the customer. Other addresses are refused (5.7.1):
// mailgate is not a relay for agents' private mail, and a message meant for a colleague must
// never reach the customer because it happens to quote a ticket.
type plan struct {
	forward bool
	cc      []string // reply: addresses to add to the ticket
	to      []string // forward: the colleagues and queues
}

func lowerAddr(a string) string { return strings.ToLower(strings.Trim(strings.TrimSpace(a), "<>")) }

// headerRecipients returns the addresses of To and Cc, lower-cased, without duplicates.
func headerRecipients(p *tickets.Parsed) ([]string, error) {
	h := gomail.Header{Header: message.Header{Header: p.Header}}
	var out []string
	seen := map[string]bool{}
	for _, k := range []string{"To", "Cc"} {
		list, err := h.AddressList(k)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", k, err)
		}
		for _, a := range list {
			if x := lowerAddr(a.Address); !seen[x] {
				seen[x] = true
				out = append(out, x)
			}
		}
	}
	return out, nil
}

// plan decides between a reply and a forward, or refuses with the reason (and the audit detail).
func (ss *subSession) plan(p *tickets.Parsed, ad *tickets.Addressing, id uint64) (plan, *smtp.SMTPError, string) {
	hdr, err := headerRecipients(p)
	if err != nil {
		return plan{}, permanent(550, 6, 0, "the To or Cc header cannot be read ("+clip(cleanOneLine(err.Error()), 200)+")"), "unreadable To/Cc"
	}
	own := lowerAddr(ss.agent.Email)
	customer := lowerAddr(ad.Customer)
	queue := lowerAddr(ad.Queue.Address)
	inHdr := map[string]bool{}
	reply := false
	for _, a := range hdr {
		inHdr[a] = true
		reply = reply || a == customer || a == queue
	}
	var env []string
	for _, r := range ss.rcpts {
		env = append(env, lowerAddr(r))
	}
	locals, err := ss.localAddresses()
	if err != nil {
		ss.srv.log.Error("list agents", "err", err)
		return plan{}, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary problem; try again"}, "agents unreadable"
	}
	if reply {
		var pl plan
		for _, r := range env {
			if !inHdr[r] && r != own && r != queue {
				return plan{}, permanent(550, 5, 1, fmt.Sprintf("<%s> is not in To or Cc: blind copies of a reply are not supported (put the address in Cc, or forward separately to a colleague)", r)),
					"blind copy of a reply"
			}
		}
		for _, a := range hdr {
			switch {
			case a == customer || a == queue || a == own:
				// The customer gets every reply; the queue address sends it; the agent's own
				// copy is the ticket itself (IMAP view and web page).
			case ss.srv.opts.Tickets.IsQueueAddress(a):
				return plan{}, permanent(550, 5, 1, fmt.Sprintf("<%s> is a queue address: a reply to the customer cannot be copied to a queue; forward the ticket to it in a separate message", a)),
					"queue address in a reply"
			case locals[a]:
				// A reply-all to a forward seen in the IMAP view names the queue and the
				// colleague: copying them would send the customer's answer (and every later
				// one) to the colleague and show the customer their address.
				return plan{}, permanent(550, 7, 1, fmt.Sprintf("<%s> is a colleague: a reply to the customer cannot copy agents; write to them in a separate message (a forward)", a)),
					"agent address in a reply"
			default:
				pl.cc = append(pl.cc, a)
			}
		}
		return pl, nil, ""
	}

	// Not addressed to the customer: a forward to colleagues, or nothing.
	var pl plan
	pl.forward = true
	seen := map[string]bool{}
	for _, a := range append(env, hdr...) {
		if a == own || seen[a] {
			continue
		}
		seen[a] = true
		switch {
		case a == customer:
			return plan{}, permanent(550, 7, 1, fmt.Sprintf("the customer of ticket #%d is a recipient but is not in To or Cc: a reply must name the customer in To (blind copies are not supported)", id)),
				"customer as a blind copy"
		case slicesContains(ad.Participants, a):
			return plan{}, permanent(550, 7, 1, fmt.Sprintf("<%s> takes part in ticket #%d, but the message is not addressed to the ticket's customer: a reply goes to the customer and every participant, so put the customer in To", a, id)),
				"participant without the customer"
		case locals[a] || ss.isExactQueue(a):
			pl.to = append(pl.to, a)
		default:
			return plan{}, permanent(550, 7, 1, fmt.Sprintf("<%s> is neither the customer of ticket #%d nor a mailgate agent or queue: to answer the customer put the customer in To; to forward the ticket use a colleague's or a queue's address; mailgate sends nothing else", a, id)),
				"recipient outside the ticket and the team: " + clip(cleanOneLine(a), 200)
		}
	}
	if len(pl.to) == 0 {
		return plan{}, permanent(550, 5, 1, "no recipient besides yourself: answer the customer (To: the customer) or write a note (To: <queue>+note@<domain>)"), "no recipient"
	}
	return pl, nil, ""
}

// localAddresses are the enabled agents' addresses, the colleagues a ticket may be forwarded to.
func (ss *subSession) localAddresses() (map[string]bool, error) {
	agents, err := ss.srv.opts.Access.List()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, a := range agents {
		if !a.Disabled && a.Email != "" {
			out[lowerAddr(a.Email)] = true
		}
	}
	return out, nil
}

// isExactQueue reports whether a is a queue's address itself (not a +tag address, which
// would file a forward as something else there).
func (ss *subSession) isExactQueue(a string) bool {
	for _, q := range ss.srv.opts.Tickets.Queues() {
		if lowerAddr(q.Address) == a {
			return true
		}
	}
	return false
}

func slicesContains(list []string, a string) bool {
	for _, x := range list {
		if lowerAddr(x) == a {
			return true
		}
	}
	return false
}

// customerAttachments prepares the attachments of a reply for the customer: a forwarded
// message (message/rfc822, as a mail client attaches a ticket message it shows) loses the
// X-Mailgate-* fields the IMAP view added, so the ticket's internals do not leave with it.
func customerAttachments(atts []tickets.ParsedAttachment) []tickets.ParsedAttachment {
	out := make([]tickets.ParsedAttachment, len(atts))
	for i, a := range atts {
		out[i] = a
		if strings.EqualFold(a.ContentType, "message/rfc822") {
			out[i].Data = stripOurHeaders(a.Data)
		}
	}
	return out
}
