//go:build !linux

package iobuf

import "time"

// Without Linux's madvise every buffer comes from the Go heap.

const largeSupported = false

const trimDelay = time.Second

func getLarge(int) *[]byte { return nil }
func putLarge(*[]byte)     {}
func inArena(uintptr) bool { return false }
func trimIdle(time.Time)   {}

func largeStats(int) (mapped, regions, inUse int) { return 0, 0, 0 }
