package agentmail

import (
	"errors"
	"strings"

	"mailgate/access"
)

// login checks a mail client's credentials. Only app passwords are accepted:
// access.CheckAppPassword never matches the web password, and it throttles and audits.
// user is the agent's name or, because mail clients default to it, the agent's address.
func login(acc *access.Service, user, pass, remote string) (*access.Agent, error) {
	name := user
	if strings.Contains(user, "@") {
		name = nameByEmail(acc, user)
	}
	return acc.CheckAppPassword(name, pass, remote)
}

// nameByEmail maps an address to the one agent that has it; otherwise it returns addr itself,
// which then fails (throttled and audited) like any unknown name.
func nameByEmail(acc *access.Service, addr string) string {
	agents, err := acc.List()
	if err != nil {
		return addr
	}
	found := ""
	for _, a := range agents {
		if strings.EqualFold(a.Email, addr) {
			if found != "" {
				return addr // two agents share the address: make the client use the name
			}
			found = a.Name
		}
	}
	if found == "" {
		return addr
	}
	return found
}

// loginProblem sorts a login error into what the client is told.
type loginProblem int

const (
	loginBad       loginProblem = iota // wrong name or password
	loginThrottled                     // too many failures: try later
	loginDisabled                      // right credentials, disabled account
	loginInternal                      // store trouble: try later
)

func classifyLogin(err error) loginProblem {
	if _, ok := access.RetryAfter(err); ok {
		return loginThrottled
	}
	switch {
	case errors.Is(err, access.ErrBadLogin):
		return loginBad
	case errors.Is(err, access.ErrDisabled):
		return loginDisabled
	}
	return loginInternal
}
