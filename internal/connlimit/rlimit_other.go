//go:build !unix

package connlimit

// FileLimit is unknown here.
func FileLimit() int { return 0 }
