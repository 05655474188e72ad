package pool

import (
	"fmt"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// benchPool creates a pool on a file of size bytes (in TMPDIR) and a thin
// replica "r" of rsize bytes whose first alloc bytes are written.
func benchPool(b *testing.B, size, cs, rsize, alloc int64) (*Pool, *Replica) {
	b.Helper()
	f, err := bdev.OpenFile(newFile(b, size), bdev.FileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	p := mustCreate(b, f, CreateOptions{ClusterSize: cs})
	mustReplica(b, p, "r", rsize, true)
	h := mustOpen(b, p, "r")
	buf := make([]byte, min(cs, 1<<20))
	fill(buf, 3)
	for off := int64(0); off < alloc; off += int64(len(buf)) {
		if _, err := h.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := h.Flush(); err != nil {
		b.Fatal(err)
	}
	return p, h
}

// BenchmarkSnapshotPause measures CreateSnapshot of a replica with the
// given bytes allocated: the time I/O to the replica is paused (one log
// write and flush, and copying the cluster map), plus microseconds of
// checks. The snapshot is deleted again between iterations (untimed).
func BenchmarkSnapshotPause(b *testing.B) {
	for _, c := range []struct{ alloc, cs int64 }{{64 * mib, 4 * mib}, {1 << 30, 4 * mib}, {64 * mib, 64 * kib}, {1 << 30, 64 * kib}} {
		b.Run(fmt.Sprintf("allocated=%dMiB/cluster=%dKiB", c.alloc>>20, c.cs>>10), func(b *testing.B) {
			p, h := benchPool(b, c.alloc+64*mib, c.cs, c.alloc, c.alloc)
			defer p.Close()
			defer h.Close()
			b.ResetTimer()
			for i := range b.N {
				name := fmt.Sprintf("s%d", i)
				if _, err := p.CreateSnapshot("r", SnapshotOptions{Name: name}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := p.DeleteSnapshot(name); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkSnapshotPauseMem is BenchmarkSnapshotPause on a RAM device,
// whose flush costs nothing: what remains is the CPU time of the pause
// (encoding the record, copying the map, counting references).
func BenchmarkSnapshotPauseMem(b *testing.B) {
	for _, cs := range []int64{4 * mib, 64 * kib} {
		b.Run(fmt.Sprintf("allocated=1024MiB/cluster=%dKiB", cs>>10), func(b *testing.B) {
			m, err := bdev.NewMalloc(1<<30+64*mib, 512)
			if err != nil {
				b.Fatal(err)
			}
			p := mustCreate(b, m, CreateOptions{ClusterSize: cs})
			defer p.Close()
			mustReplica(b, p, "r", 1<<30, true)
			h := mustOpen(b, p, "r")
			defer h.Close()
			buf := make([]byte, 4*kib)
			for off := int64(0); off < 1<<30; off += cs {
				if _, err := h.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				name := fmt.Sprintf("s%d", i)
				if _, err := p.CreateSnapshot("r", SnapshotOptions{Name: name}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := p.DeleteSnapshot(name); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkFirstWrite measures one 4 KiB write (queue depth 1) to a thin
// replica on a file, by cluster size, in three cases: "plain", a cluster
// the replica holds alone (a device write); "fresh", an unallocated cluster
// (zeroing around the data, a device write and a metadata commit); and
// "cow", a cluster shared with a snapshot (copying the rest of the cluster,
// the write and a metadata commit). Every "fresh" and "cow" write goes to
// a cluster not written since; when they run out the snapshot (or the
// replica) is replaced, untimed.
func BenchmarkFirstWrite(b *testing.B) {
	for _, cs := range []int64{64 * kib, 256 * kib, 1 * mib, 4 * mib} {
		for _, mode := range []string{"plain", "fresh", "cow"} {
			b.Run(fmt.Sprintf("cluster=%dKiB/%s", cs>>10, mode), func(b *testing.B) {
				const span = 128 * mib
				alloc := int64(span)
				if mode == "fresh" {
					alloc = 0
				}
				// Room for the replica and a copy of each of its clusters.
				p, h := benchPool(b, 2*span+64*mib, cs, span, alloc)
				defer p.Close()
				clusters := span / cs
				buf := make([]byte, 4*kib)
				fill(buf, 5)
				renew := func(round int) {
					switch mode {
					case "cow":
						if round > 0 {
							if err := p.DeleteSnapshot(fmt.Sprintf("s%d", round-1)); err != nil {
								b.Fatal(err)
							}
						}
						if _, err := p.CreateSnapshot("r", SnapshotOptions{Name: fmt.Sprintf("s%d", round)}); err != nil {
							b.Fatal(err)
						}
					case "fresh":
						if round > 0 {
							_ = h.Close()
							if err := p.DestroyReplica("r"); err != nil {
								b.Fatal(err)
							}
							mustReplica(b, p, "r", span, true)
							h = mustOpen(b, p, "r")
						}
					}
				}
				renew(0)
				b.SetBytes(4 * kib)
				b.ResetTimer()
				for i := range int64(b.N) {
					k := i % clusters
					if k == 0 && i > 0 {
						b.StopTimer()
						renew(int(i / clusters))
						b.StartTimer()
					}
					// A block in the middle of the cluster: the copy covers
					// both sides of it.
					if _, err := h.WriteAt(buf, k*cs+cs/2); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				_ = h.Close()
			})
		}
	}
}
