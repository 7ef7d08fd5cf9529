package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestDiskFull: with the data dir on a full filesystem, SMTP answers 4xx (the sender tries
// again), never 5xx and never a 250 for mail it could not store; nothing is corrupted; and
// mail flows again as soon as there is room.
//
// It mounts an 8 MB tmpfs, which needs root. CI runs as root (.ci/run); elsewhere run
// `sudo go test ./e2e -run TestDiskFull`. Without root the test fails rather than skips: a
// skipped disk-full test reads like a passed one.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestDiskFull mounts a small tmpfs as the data dir and needs root: run the tests as root (CI's .ci/run does), e.g. sudo go test ./e2e -run TestDiskFull")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -t tmpfs -o size=8m tmpfs %s: %v: %s (the test needs a kernel and container that allow tmpfs mounts)", mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	s := newSite(t, filepath.Join(mnt, "data"))
	d := s.start(t)

	r, before := s.startLoad(t, "-n", "50", "-c", "2", "-size", "8192").wait(t)
	if r.Accepted != 50 {
		t.Fatalf("before the disk filled: %+v", r)
	}

	filler := filepath.Join(mnt, "filler")
	fill(t, filler)
	full, during := s.startLoad(t, "-n", "200", "-c", "4", "-size", "16384", "-timeout", "90s").wait(t)
	noPermanentFailures(t, full)
	deferred := 0
	for code, n := range full.Failures {
		if strings.HasPrefix(code, "4") {
			deferred += n
		}
	}
	if deferred == 0 {
		t.Fatalf("no message was deferred with the disk full (%+v): the test did not fill it", full)
	}
	select {
	case <-d.done:
		t.Fatalf("mailgate exited on a full disk: %v\n%s", d.err, d.out)
	default:
	}

	var after []string
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r, after = s.startLoad(t, "-n", "50", "-c", "2", "-size", "8192").wait(t)
	if r.Accepted != 50 {
		t.Fatalf("after space was freed, %d of 50 accepted: %+v", r.Accepted, r)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("mailgate exited %d after SIGTERM:\n%s", code, d.out)
	}
	s.auditVerify(t)
	a := s.open(t)
	checkStored(t, a, append(append(before, during...), after...))
	t.Logf("disk full: %d accepted, %d deferred (%v), none refused; all %d acknowledged messages stored",
		len(during), deferred, full.Failures, len(before)+len(during)+len(after))
}

// fill writes to file until the filesystem has no room left.
func fill(t *testing.T, file string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, size := range []int{1 << 20, 4096, 1} {
		buf := make([]byte, size)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling the disk: %v", err)
				}
				break
			}
		}
	}
}
