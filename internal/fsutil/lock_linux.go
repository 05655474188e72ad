package fsutil

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// HeldError reports that another open file description holds the lock of a
// file: another process, or another part of this one.
type HeldError struct {
	Path string
	// PID is the process holding the lock, 0 when it cannot be told.
	PID int
}

func (e *HeldError) Error() string { return fmt.Sprintf("%s is in use by %s", e.Path, e.Holder()) }

// Holder names the holder for people: "process 1234", or "another process"
// when its PID is unknown.
func (e *HeldError) Holder() string {
	if e.PID > 0 {
		return fmt.Sprintf("process %d", e.PID)
	}
	return "another process"
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// ErrHeld matches every *HeldError.
var ErrHeld = errors.New("fsutil: file is locked by another holder")

// LockFD takes an exclusive, non-blocking flock on an open file. The lock
// belongs to the open file description: it is released when the file is
// closed (or the process exits, however it exits), and a second open of the
// same file, even in this process, cannot take it. When it is held, the
// error is a *HeldError naming the holder's PID when /proc/locks tells it.
func LockFD(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return &HeldError{Path: f.Name(), PID: lockHolder(f)}
		default:
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
	}
}

// Lock is an exclusive lock file, such as the one that keeps two servers
// off one data dir.
type Lock struct{ f *os.File }

// LockFile creates path if needed and takes its exclusive lock (see LockFD).
// It writes the holder's PID into the file, for people; the lock itself is
// the flock, which a crash releases.
func LockFile(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := LockFD(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock. The file is left in place.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// lockHolder finds the PID of the FLOCK holder of f's inode in /proc/locks,
// or 0.
func lockHolder(f *os.File) int {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0
	}
	locks, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer locks.Close()
	// Lines look like: "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF".
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	s := bufio.NewScanner(locks)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}
