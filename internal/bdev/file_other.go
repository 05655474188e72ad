//go:build !linux

package bdev

import (
	"errors"
	"runtime"
)

var errNoFile = errors.New("bdev: the file backend needs Linux (pread/pwrite, O_DIRECT, fallocate); running on " + runtime.GOOS)

// File is a Device backed by a regular file or block device; it is only
// implemented on Linux, where OpenFile is the way to get one.
type File struct{}

// OpenFile fails on this platform.
func OpenFile(path string, opts FileOptions) (*File, error) { return nil, errNoFile }

func (*File) ReadAt(p []byte, off int64) (int, error)  { return 0, errNoFile }
func (*File) WriteAt(p []byte, off int64) (int, error) { return 0, errNoFile }
func (*File) Flush() error                             { return errNoFile }
func (*File) Unmap(off, length int64) error            { return errNoFile }
func (*File) WriteZeroes(off, length int64) error      { return errNoFile }
func (*File) Size() int64                              { return 0 }
func (*File) BlockSize() int                           { return 512 }
func (*File) Close() error                             { return errNoFile }
func (*File) Path() string                             { return "" }
func (*File) Direct() bool                             { return false }
func (*File) IsBlockDevice() bool                      { return false }
func (*File) URing() bool                              { return false }

// ProbeURing fails on this platform: io_uring is Linux only.
func ProbeURing() error { return errNoFile }
