package bdev

// DisableFallocate makes f zero ranges by writing, as on a filesystem that
// supports neither FALLOC_FL_ZERO_RANGE nor FALLOC_FL_PUNCH_HOLE.
func DisableFallocate(f *File) {
	f.noZeroRange.Store(true)
	f.noPunchHole.Store(true)
}
