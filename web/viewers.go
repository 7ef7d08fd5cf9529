package web

import (
	"slices"
	"sync"
	"time"
)

// Collision hints: who else had a ticket open lately. Kept in memory only (it is a hint, not a
// lock), bounded, and forgotten after viewerTTL.
const (
	viewerTTL     = 15 * time.Minute
	viewerTickets = 10000
)

type viewer struct {
	Name string
	At   time.Time
}

type viewTracker struct {
	mu   sync.Mutex
	byID map[uint64][]viewer
}

// seen records that name opens ticket id at now and returns the others who opened it within
// viewerTTL, most recent first.
func (v *viewTracker) seen(id uint64, name string, now time.Time) []viewer {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.byID == nil {
		v.byID = map[uint64][]viewer{}
	}
	if len(v.byID) >= viewerTickets {
		for k, list := range v.byID { // drop what has expired; if nothing has, start afresh
			if len(list) == 0 || now.Sub(list[0].At) > viewerTTL {
				delete(v.byID, k)
			}
		}
		if len(v.byID) >= viewerTickets {
			clear(v.byID)
		}
	}
	var others []viewer
	kept := []viewer{{Name: name, At: now}}
	for _, w := range v.byID[id] {
		if w.Name == name || now.Sub(w.At) > viewerTTL {
			continue
		}
		kept = append(kept, w)
		others = append(others, w)
	}
	slices.SortFunc(kept, func(a, b viewer) int { return b.At.Compare(a.At) })
	v.byID[id] = kept
	return others
}
