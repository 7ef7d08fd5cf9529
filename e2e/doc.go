// Package e2e holds mailgate's end-to-end tests under load and faults: they build the real
// binaries, run `mailgate serve` and `mailgate-load` as separate processes on loopback, and
// kill, starve and stop the daemon as operators and machines do. It has no code of its own.
package e2e
