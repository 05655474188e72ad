package bdev

// DisableFallocate makes f zero ranges by writing, as on a filesystem that
// supports neither FALLOC_FL_ZERO_RANGE nor FALLOC_FL_PUNCH_HOLE.
func DisableFallocate(f *File) {
	f.noZeroRange.Store(true)
	f.noPunchHole.Store(true)
}

// SwapFD replaces f's descriptor with fd and returns the one it had, so a
// test can make a real system call fail on f (fdatasync on a pipe is
// EINVAL).
func SwapFD(f *File, fd int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.fd
	f.fd = fd
	return old
}

// URingSetupFault sets up an io_uring of entries entries and returns the
// fault OpenFile would return for path if that failed, or nil (the ring is
// released again).
func URingSetupFault(path string, entries uint32) error {
	r, err := newURing(entries)
	if err != nil {
		return uringUnavailable(path, err)
	}
	return r.close()
}

// RefuseNowaitReads makes f behave as a file that refuses RWF_NOWAIT
// reads (tmpfs): without O_DIRECT its reads are preads.
func RefuseNowaitReads(f *File) { f.noNowait.Store(true) }

// ReadCached is f.readCached: how much of p, read at off, the page cache
// holds, copied without waiting for the disk, and whether the file refuses
// such reads.
func ReadCached(f *File, p []byte, off int64) (int, bool) { return f.readCached(p, off) }
