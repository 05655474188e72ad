package qemuvm

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// slotWait bounds how long a boot waits for another one to finish before it
// goes ahead anyway: a stuck lock must not turn into a hung test.
const slotWait = 10 * time.Minute

// Boots are serialized across every test process of the machine (go test
// runs packages in parallel): two emulated guests competing for a few cores
// each run slowly enough to miss the NVMe keep-alive and I/O timeouts.
var slotSem = make(chan struct{}, 1)

// bootSlot is the right to run one guest: the process-wide mutex plus an
// exclusive flock on a file next to the kernel cache.
type bootSlot struct {
	once sync.Once
	held bool // of slotSem
	f    *os.File
}

func acquireSlot(t testing.TB) *bootSlot {
	t.Helper()
	start := time.Now()
	s := &bootSlot{}
	select {
	case slotSem <- struct{}{}:
		s.held = true
	case <-time.After(slotWait):
		t.Logf("qemuvm: another guest of this process ran for %v; booting anyway", slotWait)
	}
	path := filepath.Join(filepath.Dir(KernelDir()), ".qemuvm-boot.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		t.Logf("qemuvm: boot lock %s: %v; booting without it", path, err)
		return s
	}
	for {
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
			s.f = f
			break
		}
		if time.Since(start) > slotWait {
			t.Logf("qemuvm: another guest held %s for %v; booting anyway", path, slotWait)
			f.Close()
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Logf("qemuvm: waited %v for another guest to finish", d.Round(time.Millisecond))
	}
	return s
}

// release gives the slot back; it is idempotent.
func (s *bootSlot) release() {
	if s == nil {
		return
	}
	s.once.Do(func() {
		if s.f != nil {
			unix.Flock(int(s.f.Fd()), unix.LOCK_UN)
			s.f.Close()
		}
		if s.held {
			<-slotSem
		}
	})
}
