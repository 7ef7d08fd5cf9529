package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procStats reads a process's CPU time and peak resident memory from /proc (Linux), so that
// a run can report what the server under test spent (-pid).
type procStats struct {
	cpu     time.Duration
	peakRSS int64 // bytes (VmHWM)
}

// userHZ is the unit of /proc/<pid>/stat times: USER_HZ, 100 on every Linux architecture Go
// supports (the kernel converts internally).
const userHZ = 100

func readProc(pid int) (procStats, error) {
	var st procStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, fmt.Errorf("-pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; the fields after it start past the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, fmt.Errorf("-pid %d: unreadable /proc stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return st, fmt.Errorf("-pid %d: short /proc stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14 of stat(5)
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return st, fmt.Errorf("-pid %d: bad cpu times in /proc stat", pid)
	}
	st.cpu = time.Duration(utime+stime) * time.Second / userHZ
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, fmt.Errorf("-pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			st.peakRSS = kb << 10
		}
	}
	return st, nil
}
