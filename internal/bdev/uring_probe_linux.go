package bdev

// ProbeURing reports whether this process may use io_uring: it sets up a
// small ring, as OpenFile does for uring://, and tears it down again. The
// error is the one io_uring_setup gave (ENOSYS on a kernel without
// io_uring, EPERM where kernel.io_uring_disabled or a seccomp filter refuses
// it), wrapped with the step that failed.
func ProbeURing() error {
	r, err := newURing(4)
	if err != nil {
		return err
	}
	return r.close()
}
