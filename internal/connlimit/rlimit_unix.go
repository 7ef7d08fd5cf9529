//go:build unix

package connlimit

import (
	"math"
	"syscall"
)

// FileLimit returns the process's open-file limit (RLIMIT_NOFILE, soft; the Go runtime raises
// it to the hard limit at start), or 0 when it cannot be read.
func FileLimit() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	if r.Cur > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(r.Cur)
}
