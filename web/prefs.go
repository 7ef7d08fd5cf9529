package web

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // time zones work on hosts without a zoneinfo database

	"mailgate/audit"
	"mailgate/store"
)

// Agents' page settings that only web uses (today the time zone), sealed in web's own bucket.
const bPrefs = "web_prefs" // agent name → sealed JSON prefs

type prefs struct {
	TZ string `json:"tz,omitempty"`
}

type prefCache struct {
	mu  sync.Mutex
	loc map[string]*time.Location
}

// location is the agent's time zone for the pages; UTC until they choose one.
func (s *Server) location(name string) *time.Location {
	c := &s.prefs
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.loc[name]; ok {
		return l
	}
	loc := time.UTC
	s.opts.DB.View(func(tx *store.Tx) error {
		v, err := tx.Get(bPrefs, []byte(name))
		var p prefs
		if err == nil && v != nil && json.Unmarshal(v, &p) == nil && p.TZ != "" {
			if l, err := time.LoadLocation(p.TZ); err == nil {
				loc = l
			}
		}
		return nil
	})
	if c.loc == nil {
		c.loc = map[string]*time.Location{}
	}
	c.loc[name] = loc
	return loc
}

// validZone accepts IANA names ("Europe/Berlin") and UTC, nothing that names a file.
func validZone(tz string) (*time.Location, bool) {
	if tz == "" || len(tz) > 64 || strings.Contains(tz, "..") || strings.HasPrefix(tz, "/") || tz == "Local" {
		return nil, false
	}
	for _, r := range tz {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/_+-", r)) {
			return nil, false
		}
	}
	l, err := time.LoadLocation(tz)
	return l, err == nil
}

// zones offered in the form's list; any IANA name may be typed.
var commonZones = []string{"UTC", "Europe/London", "Europe/Berlin", "Europe/Paris", "Europe/Zurich", "Europe/Madrid", "Europe/Rome",
	"Europe/Warsaw", "Europe/Helsinki", "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
	"America/Sao_Paulo", "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney"}

func (s *Server) timezonePost(w http.ResponseWriter, r *http.Request) {
	a := info(r).actor
	tz := strings.TrimSpace(r.PostForm.Get("tz"))
	loc, ok := validZone(tz)
	if !ok {
		s.showAccount(w, r, http.StatusBadRequest, &accountView{base: base{Error: "Unknown time zone " + strconv.QuoteToASCII(clip(tz, 64)) + ": write a name like Europe/Berlin or America/New_York."}})
		return
	}
	b, _ := json.Marshal(prefs{TZ: loc.String()})
	if err := s.opts.DB.Batch(func(tx *store.Tx) error { return tx.Put(bPrefs, []byte(a.Name), b) }); err != nil {
		s.internalError(w, r, "save time zone", err)
		return
	}
	s.prefs.mu.Lock()
	delete(s.prefs.loc, a.Name)
	s.prefs.mu.Unlock()
	s.webEvent(r, a.Name, "account.timezone", audit.OK, "tz="+loc.String())
	s.showAccount(w, r, http.StatusOK, &accountView{base: base{Notice: "Times are now shown in " + loc.String() + "."}})
}
