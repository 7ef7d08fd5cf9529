package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/tickets"
)

// Request is one admin command, as the CLI sends it over the control socket or runs it directly.
// Args holds the command's arguments as a JSON object (see the *Args types).
type Request struct {
	Cmd  string          `json:"cmd"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is a command's outcome. Data is the machine-readable result (printed by --json),
// Text the human one. Exit is the process exit status the CLI should end with.
type Response struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Exit  int             `json:"exit,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	Text  string          `json:"text,omitempty"`
}

// Caller says who sent a command, for the audit log. Every admin command is audited with
// actor "ctl"; Remote is "ctl" and Detail names the peer (uid, pid) when known.
type Caller struct {
	Remote string
	Detail string
}

// result is what a handler returns: data for --json, text for people, and an exit status.
type result struct {
	data   any
	text   string
	exit   int
	object string // for the audit event
	detail string
}

type handler func(ctx context.Context, a *App, args json.RawMessage) (result, error)

// Argument types, shared by the CLI (which fills them) and the handlers.
type (
	AgentAddArgs struct {
		Name   string   `json:"name"`
		Email  string   `json:"email"`
		Role   string   `json:"role"`
		Queues []string `json:"queues"`
	}
	AgentArgs struct {
		Name  string `json:"name"`
		Label string `json:"label,omitempty"`
		ID    string `json:"id,omitempty"` // an app password's id (revoke-app-password)
	}
	// AgentSetArgs changes what is given: Role when not "", Queues when not nil (an empty
	// list takes every queue away).
	AgentSetArgs struct {
		Name   string    `json:"name"`
		Role   string    `json:"role,omitempty"`
		Queues *[]string `json:"queues,omitempty"`
	}
	TicketListArgs struct {
		Queue  string `json:"queue,omitempty"`
		Status string `json:"status,omitempty"`
	}
	TicketArgs struct {
		ID uint64 `json:"id"`
	}
	TicketReplyArgs struct {
		ID    uint64 `json:"id"`
		Agent string `json:"agent"`
		Text  string `json:"text"`
	}
	PGPImportArgs struct {
		Email string `json:"email"`
		Key   string `json:"key"` // the key file's content (armored or binary as bytes in a string)
	}
	AuditExportArgs struct {
		Since time.Time `json:"since,omitzero"`
	}
	BackupArgs struct {
		Out string `json:"out"` // absolute path, resolved by the CLI
	}
)

var handlers = map[string]handler{
	"agent.add":                 agentAdd,
	"agent.list":                agentList,
	"agent.disable":             agentDisable,
	"agent.reset-mfa":           agentResetMFA,
	"agent.app-password":        agentAppPassword,
	"agent.enable":              agentEnable,
	"agent.set":                 agentSet,
	"agent.reset-password":      agentResetPassword,
	"agent.app-passwords":       agentAppPasswords,
	"agent.revoke-app-password": agentRevokeAppPassword,
	"ticket.list":               ticketList,
	"ticket.show":               ticketShow,
	"ticket.reply":              ticketReply,
	"ticket.purge":              ticketPurge,
	"pgp.import":                pgpImport,
	"pgp.export-public":         pgpExportPublic,
	"audit.verify":              auditVerify,
	"audit.export":              auditExport,
	"backup":                    backup,
}

// Commands lists the command names Dispatch knows.
func Commands() []string {
	out := make([]string, 0, len(handlers))
	for k := range handlers {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Dispatch runs req against a and audits it as actor "ctl". It never panics on bad input.
func (a *App) Dispatch(ctx context.Context, c Caller, req Request) Response {
	h, ok := handlers[req.Cmd]
	if !ok {
		return Response{Error: fmt.Sprintf("unknown command %q", req.Cmd), Exit: 2}
	}
	res, err := h(ctx, a, req.Args)
	outcome := audit.OK
	switch {
	case err != nil:
		outcome = audit.Failed
		if errors.Is(err, access.ErrForbidden) || errors.Is(err, tickets.ErrForbidden) {
			outcome = audit.Denied
		}
	case res.exit != 0:
		outcome = audit.Failed
	}
	detail := strings.TrimSpace(c.Detail + " " + res.detail)
	if err != nil {
		detail = strings.TrimSpace(detail + " error=" + strconv.Quote(clip(err.Error(), 200)))
	}
	remote := c.Remote
	if remote == "" {
		remote = "ctl"
	}
	if aerr := a.Audit.Append(audit.Event{
		Actor: access.Ctl.Name, Action: "ctl." + req.Cmd, Object: res.object, Remote: remote, Result: outcome, Detail: detail,
	}); aerr != nil && err == nil {
		// An admin command whose audit event cannot be written did not happen as far as
		// the record goes: say so rather than pretend.
		err = fmt.Errorf("audit the command: %w", aerr)
	}
	if err != nil {
		return Response{Error: err.Error(), Exit: 1}
	}
	resp := Response{OK: res.exit == 0, Exit: res.exit, Text: res.text}
	if res.data != nil {
		b, merr := json.Marshal(res.data)
		if merr != nil {
			return Response{Error: "encode result: " + merr.Error(), Exit: 1}
		}
		resp.Data = b
	}
	return resp
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func decode[T any](raw json.RawMessage) (T, error) {
	var v T
	if len(raw) == 0 {
		return v, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return v, fmt.Errorf("bad arguments: %w", err)
	}
	return v, nil
}

func table(rows [][]string) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	w.Flush()
	return b.String()
}

// --- agents ---

func agentAdd(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[AgentAddArgs](raw)
	if err != nil {
		return result{}, err
	}
	if args.Name == "" || args.Email == "" || args.Role == "" {
		return result{}, errors.New("agent add needs -name, -email and -role (admin, agent or auditor)")
	}
	cred, err := a.Access.Create(access.Ctl, args.Name, args.Email, access.Role(args.Role), args.Queues)
	if err != nil {
		return result{object: "agent/" + args.Name}, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Agent %s added (role %s", args.Name, args.Role)
	if len(args.Queues) > 0 {
		fmt.Fprintf(&b, ", queues %s", strings.Join(args.Queues, ", "))
	}
	fmt.Fprintf(&b, ").\nThese secrets are shown once; hand them over safely.\n")
	fmt.Fprintf(&b, "  password:  %s\n  TOTP:      %s\n", cred.Password, cred.TOTPURI)
	if len(cred.RecoveryCodes) > 0 {
		fmt.Fprintf(&b, "  recovery codes (each works once instead of a TOTP code):\n")
		for _, c := range cred.RecoveryCodes {
			fmt.Fprintf(&b, "    %s\n", c)
		}
	}
	data := struct {
		Name  string   `json:"name"`
		Email string   `json:"email"`
		Role  string   `json:"role"`
		Queue []string `json:"queues"`
		*access.Credentials
	}{args.Name, args.Email, args.Role, nonNil(args.Queues), cred}
	return result{data: data, text: b.String(), object: "agent/" + args.Name, detail: "role=" + args.Role}, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func agentList(_ context.Context, a *App, _ json.RawMessage) (result, error) {
	agents, err := a.Access.List()
	if err != nil {
		return result{}, err
	}
	rows := [][]string{{"NAME", "ROLE", "QUEUES", "EMAIL", "STATE"}}
	for _, ag := range agents {
		state := "active"
		switch {
		case ag.Disabled:
			state = "disabled"
		case !ag.MFAEnrolled:
			state = "mfa not enrolled"
		}
		rows = append(rows, []string{ag.Name, string(ag.Role), strings.Join(ag.Queues, ","), ag.Email, state})
	}
	return result{data: agents, text: table(rows), object: "agents"}, nil
}

func agentName(raw json.RawMessage, what string) (AgentArgs, error) {
	args, err := decode[AgentArgs](raw)
	if err == nil && args.Name == "" {
		err = fmt.Errorf("%s needs the agent's name", what)
	}
	return args, err
}

func agentDisable(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := agentName(raw, "agent disable")
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	if err := a.Access.Disable(access.Ctl, args.Name); err != nil {
		return result{object: obj}, err
	}
	return result{data: map[string]any{"name": args.Name, "disabled": true},
		text: fmt.Sprintf("Agent %s disabled; its sessions are ended.\n", args.Name), object: obj}, nil
}

func agentResetMFA(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := agentName(raw, "agent reset-mfa")
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	uri, err := a.Access.ResetMFA(access.Ctl, args.Name)
	if err != nil {
		return result{object: obj}, err
	}
	return result{data: map[string]any{"name": args.Name, "totp_uri": uri},
		text:   fmt.Sprintf("New TOTP secret for %s (shown once; its recovery codes are void and its sessions ended):\n  %s\n", args.Name, uri),
		object: obj}, nil
}

func agentAppPassword(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := agentName(raw, "agent app-password")
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	label := args.Label
	if label == "" {
		label = "mailgate agent app-password " + time.Now().UTC().Format("2006-01-02")
	}
	pw, err := a.Access.NewAppPassword(access.Ctl, args.Name, label)
	if err != nil {
		return result{object: obj}, err
	}
	return result{data: map[string]any{"name": args.Name, "label": label, "password": pw},
		text:   fmt.Sprintf("App password for %s (IMAP and SMTP submission only; shown once):\n  %s\n", args.Name, pw),
		object: obj}, nil
}

func agentEnable(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := agentName(raw, "agent enable")
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	if err := a.Access.Enable(access.Ctl, args.Name); err != nil {
		return result{object: obj}, err
	}
	return result{data: map[string]any{"name": args.Name, "disabled": false},
		text: fmt.Sprintf("Agent %s enabled; it may log in again (its old sessions stay ended).\n", args.Name), object: obj}, nil
}

func agentSet(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[AgentSetArgs](raw)
	if err == nil && args.Name == "" {
		err = errors.New("agent set needs the agent's name")
	}
	if err == nil && args.Role == "" && args.Queues == nil {
		err = errors.New("agent set needs -role ROLE, -queue Q (repeat for more) or -no-queues")
	}
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	var changed []string
	// Role first: a refused role change (the last admin) leaves the queues as they were.
	if args.Role != "" {
		if err := a.Access.SetRole(access.Ctl, args.Name, access.Role(args.Role)); err != nil {
			return result{object: obj}, err
		}
		changed = append(changed, "role="+args.Role)
	}
	if args.Queues != nil {
		if err := a.Access.SetQueues(access.Ctl, args.Name, *args.Queues); err != nil {
			return result{object: obj, detail: strings.Join(changed, " ")}, err
		}
		changed = append(changed, "queues="+strings.Join(*args.Queues, ","))
	}
	ag, err := a.Access.Get(args.Name)
	if err != nil {
		return result{object: obj}, err
	}
	return result{data: ag,
		text:   fmt.Sprintf("Agent %s: role %s, queues %s. Its sessions see the change on their next request.\n", ag.Name, ag.Role, orNone(ag.Queues)),
		object: obj, detail: strings.Join(changed, " ")}, nil
}

func orNone(qs []string) string {
	if len(qs) == 0 {
		return "(none)"
	}
	return strings.Join(qs, ", ")
}

func agentResetPassword(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := agentName(raw, "agent reset-password")
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	pw, err := a.Access.ResetPassword(access.Ctl, args.Name)
	if err != nil {
		return result{object: obj}, err
	}
	return result{data: map[string]any{"name": args.Name, "password": pw},
		text:   fmt.Sprintf("New password for %s (shown once; its sessions are ended, TOTP and app passwords unchanged):\n  %s\n", args.Name, pw),
		object: obj}, nil
}

func agentAppPasswords(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := agentName(raw, "agent app-passwords")
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	aps, err := a.Access.AppPasswords(access.Ctl, args.Name)
	if err != nil {
		return result{object: obj}, err
	}
	if aps == nil {
		aps = []access.AppPassword{}
	}
	rows := [][]string{{"ID", "LABEL", "CREATED", "LAST USED"}}
	for _, ap := range aps {
		last := "never"
		if !ap.LastUsed.IsZero() {
			last = ap.LastUsed.Local().Format("2006-01-02 15:04")
		}
		rows = append(rows, []string{ap.ID, oneLine(ap.Label), ap.Created.Local().Format("2006-01-02 15:04"), last})
	}
	return result{data: aps, text: table(rows), object: obj, detail: fmt.Sprintf("count=%d", len(aps))}, nil
}

func agentRevokeAppPassword(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[AgentArgs](raw)
	if err == nil && (args.Name == "" || args.ID == "") {
		err = errors.New("agent revoke-app-password needs the agent's name and the password's ID (see agent app-passwords NAME)")
	}
	if err != nil {
		return result{}, err
	}
	obj := "agent/" + args.Name
	if err := a.Access.RevokeAppPassword(access.Ctl, args.Name, args.ID); err != nil {
		return result{object: obj, detail: "id=" + clip(oneLine(args.ID), 32)}, err
	}
	return result{data: map[string]any{"name": args.Name, "id": args.ID, "revoked": true},
		text:   fmt.Sprintf("App password %s of %s revoked; mail clients using it can no longer log in.\n", args.ID, args.Name),
		object: obj, detail: "id=" + args.ID}, nil
}

// --- tickets ---

func ticketList(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[TicketListArgs](raw)
	if err != nil {
		return result{}, err
	}
	if args.Queue != "" {
		if _, ok := a.Tickets.Queue(args.Queue); !ok {
			return result{}, fmt.Errorf("no queue named %q; the config has: %s", args.Queue, strings.Join(queueNames(a), ", "))
		}
	}
	if args.Status != "" && !tickets.ValidStatus(tickets.Status(args.Status)) {
		return result{}, fmt.Errorf("status %q: write one of new, open, pending, solved, closed", args.Status)
	}
	const page = 500
	all := []tickets.Ticket{}
	var before uint64
	for {
		ts, err := a.Tickets.List(access.Ctl, tickets.Filter{Queue: args.Queue, Status: tickets.Status(args.Status), Before: before, Limit: page})
		if err != nil {
			return result{}, err
		}
		all = append(all, ts...)
		if len(ts) < page {
			break
		}
		before = ts[len(ts)-1].ID
	}
	rows := [][]string{{"ID", "STATUS", "QUEUE", "UPDATED", "MSGS", "CUSTOMER", "SUBJECT"}}
	for _, t := range all {
		rows = append(rows, []string{strconv.FormatUint(t.ID, 10), string(t.Status), t.Queue,
			t.Updated.Local().Format("2006-01-02 15:04"), strconv.Itoa(t.Messages), t.Customer, clip(oneLine(t.Subject), 60)})
	}
	return result{data: all, text: table(rows), object: "tickets",
		detail: fmt.Sprintf("queue=%s status=%s count=%d", args.Queue, args.Status, len(all))}, nil
}

func queueNames(a *App) []string {
	var out []string
	for _, q := range a.Tickets.Queues() {
		out = append(out, q.Name)
	}
	return out
}

// oneLine keeps terminal output to one line per field whatever a subject holds.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

func ticketShow(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[TicketArgs](raw)
	if err != nil {
		return result{}, err
	}
	obj := "ticket/" + strconv.FormatUint(args.ID, 10)
	t, msgs, err := a.Tickets.Get(access.Ctl, args.ID)
	if err != nil {
		return result{object: obj}, err
	}
	// The ticket's fields, with "messages" the thread rather than its count (CONTRACT.md).
	b, err := json.Marshal(t)
	if err != nil {
		return result{}, err
	}
	var view map[string]any
	if err := json.Unmarshal(b, &view); err != nil {
		return result{}, err
	}
	if msgs == nil {
		msgs = []tickets.Message{}
	}
	view["messages"] = msgs
	view["message_count"] = len(msgs)

	var s strings.Builder
	fmt.Fprintf(&s, "Ticket #%d  [%s]  queue %s\nSubject:  %s\nCustomer: %s\nCreated:  %s\nUpdated:  %s\n",
		t.ID, t.Status, t.Queue, oneLine(t.Subject), t.Customer, t.Created.Local().Format(time.RFC3339), t.Updated.Local().Format(time.RFC3339))
	for _, m := range msgs {
		fmt.Fprintf(&s, "\n--- #%d %s  %s", m.Seq, m.Direction, m.Date.Local().Format("2006-01-02 15:04"))
		if m.Author != "" {
			fmt.Fprintf(&s, "  by %s", m.Author)
		}
		fmt.Fprintln(&s)
		fmt.Fprintf(&s, "From: %s\nTo:   %s\nSubject: %s\n", m.From, m.To, oneLine(m.Subject))
		if m.Direction == tickets.In {
			switch {
			case m.Verified:
				fmt.Fprintf(&s, "Sender: verified")
			default:
				fmt.Fprintf(&s, "Sender: NOT VERIFIED (do not disclose account data)")
			}
			if m.Auth != nil {
				fmt.Fprintf(&s, " (spf=%s dkim=%s dmarc=%s)", m.Auth.SPF, m.Auth.DKIM, m.Auth.DMARC)
			}
			fmt.Fprintln(&s)
		}
		if m.Encrypted {
			fmt.Fprintln(&s, "Encrypted: yes")
		}
		if m.Problem != "" {
			fmt.Fprintf(&s, "Problem: %s\n", m.Problem)
		}
		fmt.Fprintf(&s, "\n%s\n", strings.TrimRight(m.Text, "\n"))
	}
	return result{data: view, text: s.String(), object: obj}, nil
}

func ticketReply(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[TicketReplyArgs](raw)
	if err != nil {
		return result{}, err
	}
	obj := "ticket/" + strconv.FormatUint(args.ID, 10)
	if args.Agent == "" {
		return result{object: obj}, errors.New("ticket reply needs -agent NAME: the reply is sent as that agent, with that agent's rights")
	}
	ag, err := a.Access.Get(args.Agent)
	if err != nil {
		return result{object: obj}, err
	}
	if ag.Disabled {
		return result{object: obj}, fmt.Errorf("agent %s is disabled: %w", args.Agent, access.ErrForbidden)
	}
	m, err := a.Tickets.Reply(ag.Actor("ctl"), args.ID, args.Text)
	if err != nil {
		return result{object: obj, detail: "agent=" + args.Agent}, err
	}
	return result{data: m, text: fmt.Sprintf("Reply queued on ticket #%d as message %d (%s).\n", args.ID, m.Seq, m.MessageID),
		object: obj, detail: "agent=" + args.Agent}, nil
}

func ticketPurge(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[TicketArgs](raw)
	if err != nil {
		return result{}, err
	}
	obj := "ticket/" + strconv.FormatUint(args.ID, 10)
	if err := a.Tickets.Purge(access.Ctl, args.ID); err != nil {
		return result{object: obj}, err
	}
	return result{data: map[string]any{"id": args.ID, "purged": true},
		text:   fmt.Sprintf("Ticket #%d destroyed: its key is deleted, its messages can never be read again.\n", args.ID),
		object: obj}, nil
}

// --- pgp ---

func pgpImport(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[PGPImportArgs](raw)
	if err != nil {
		return result{}, err
	}
	if args.Email == "" || args.Key == "" {
		return result{}, errors.New("pgp import needs -email ADDRESS and -file KEY.asc")
	}
	obj := "pgpkey/" + strings.ToLower(args.Email)
	fp, err := a.Keyring.Import(args.Email, []byte(args.Key), "ctl")
	if err != nil {
		return result{object: obj}, err
	}
	return result{data: map[string]any{"email": args.Email, "fingerprint": fp},
		text:   fmt.Sprintf("Key %s stored for %s; replies to that address are encrypted (see [pgp] encrypt).\n", fp, args.Email),
		object: obj, detail: "fingerprint=" + fp}, nil
}

func pgpExportPublic(_ context.Context, a *App, _ json.RawMessage) (result, error) {
	if a.Gateway == nil {
		return result{object: "pgp/gateway"}, errors.New("no gateway key: set [pgp] key_file (mailgate init writes one)")
	}
	pub := string(a.Gateway.ArmoredPublic())
	return result{data: map[string]any{"fingerprint": a.Gateway.Fingerprint(), "armored": pub}, text: pub,
		object: "pgp/gateway"}, nil
}

// --- audit ---

func auditVerify(_ context.Context, a *App, _ json.RawMessage) (result, error) {
	n, err := a.Audit.Verify()
	if ce, ok := audit.IsChainError(err); ok {
		return result{
			data:   map[string]any{"ok": false, "events": n, "bad_seq": ce.Seq, "reason": ce.Reason},
			text:   fmt.Sprintf("audit chain BROKEN at seq %d: %s (%d events before it are intact)\n", ce.Seq, ce.Reason, n),
			exit:   1,
			object: "audit",
			detail: fmt.Sprintf("bad_seq=%d", ce.Seq),
		}, nil
	}
	if err != nil {
		return result{object: "audit"}, err
	}
	return result{data: map[string]any{"ok": true, "events": n},
		text: fmt.Sprintf("audit chain intact: %d events\n", n), object: "audit", detail: fmt.Sprintf("events=%d", n)}, nil
}

func auditExport(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[AuditExportArgs](raw)
	if err != nil {
		return result{}, err
	}
	var b bytes.Buffer
	if err := a.Audit.Export(&b, audit.Filter{Since: args.Since}); err != nil {
		return result{object: "audit"}, err
	}
	detail := ""
	if !args.Since.IsZero() {
		detail = "since=" + args.Since.Format(time.RFC3339)
	}
	return result{text: b.String(), object: "audit", detail: detail}, nil
}

// --- backup ---

func backup(_ context.Context, a *App, raw json.RawMessage) (result, error) {
	args, err := decode[BackupArgs](raw)
	if err != nil {
		return result{}, err
	}
	if args.Out == "" || !filepath.IsAbs(args.Out) {
		return result{}, errors.New("backup needs -out FILE (an absolute path)")
	}
	out := filepath.Clean(args.Out)
	if same(out, a.DB.Path()) {
		return result{object: "backup"}, errors.New("backup -out names the live database; write the copy somewhere else")
	}
	if st, err := os.Stat(filepath.Dir(out)); err != nil || !st.IsDir() {
		return result{object: "backup"}, fmt.Errorf("backup: directory %s does not exist", filepath.Dir(out))
	}
	size, err := a.DB.Backup(out)
	if err != nil {
		return result{object: "backup"}, err
	}
	return result{data: map[string]any{"out": out, "bytes": size},
		text: fmt.Sprintf("Backup written to %s (%d bytes): a tar of the database and its segments. Restore it with `tar -xf %s -C %s` into an empty data directory; it opens with the same key_file (%s).\n",
			out, size, out, a.Cfg.DataDir, a.Cfg.KeyFile),
		object: "backup", detail: fmt.Sprintf("out=%s bytes=%d", out, size)}, nil
}

// same reports whether two paths name the same file (following links), or are equal.
func same(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
