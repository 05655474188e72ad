package kernel

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// childOpener opens the test's child devices by URI. The nexus closes a
// child it retires; the backing device must survive that, as a replica does,
// so every Open hands out a handle whose Close leaves the device alone.
type childOpener struct {
	mu   sync.Mutex
	devs map[string]bdev.Device
}

func (o *childOpener) Open(_ context.Context, uri string) (bdev.Device, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	d, ok := o.devs[uri]
	if !ok {
		return nil, fmt.Errorf("no child device %q", uri)
	}
	return keepOpen{d}, nil
}

type keepOpen struct{ bdev.Device }

func (keepOpen) Close() error { return nil }

// TestKernelExt4OnNexusThroughFaultAndRebuild mounts ext4, from the kernel's
// NVMe/TCP host, on a published nexus of two children, and keeps writing
// files while one child fails its writes and is retired (offline), and while it is
// rebuilt (the rebuild held paused so that the guest's writes land during
// it). At the end the children are identical, the file system is clean in the
// guest, and each child alone holds a clean file system with every file.
func TestKernelExt4OnNexusThroughFaultAndRebuild(t *testing.T) {
	env := qemuvm.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	const size = 64 * mib
	a, err := bdev.NewMalloc(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bdev.NewMalloc(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	fb := faulty.New(b, 1)
	uriA := "bdev:///6b65726e-656c-4000-8000-00000000000a"
	uriB := "bdev:///6b65726e-656c-4000-8000-00000000000b"
	var nexusLog testutil.SyncBuffer
	n, err := nexus.New(ctx, nexus.Config{
		Name:     "kernel-ext4",
		UUID:     "6b65726e-656c-4000-8000-0000000000ee",
		Children: []string{uriA, uriB},
		Store:    nexus.NewMemStore(),
		Opener:   &childOpener{devs: map[string]bdev.Device{uriA: a, uriB: fb}},
		Logger:   slog.New(slog.NewTextHandler(&nexusLog, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		if t.Failed() {
			t.Logf("nexus log:\n%s", nexusLog.String())
		}
	})
	nqn := target.NQN("nexus", n.UUID())
	s := serve(t, nqn, n)

	childState := func(uri string) nexus.ChildStatus {
		for _, c := range n.Children() {
			if c.URI == uri {
				return c
			}
		}
		return nexus.ChildStatus{}
	}
	// What the host does at each barrier of the script; an error fails the
	// barrier step, which stops the script.
	barrier := func(name string) error {
		switch name {
		case "fault":
			fb.AddRule(faulty.Rule{Ops: faulty.OpWrite | faulty.OpFlush})
		case "faulted":
			// A child that fails its writes leaves with a write-intent
			// bitmap (offline); this test rebuilds it in full all the same.
			if c := childState(uriB); c.State != nexus.StateOffline || c.Reason != nexus.ReasonIOError || c.DirtyBytes == 0 {
				return fmt.Errorf("child B is %v (%s, %d dirty bytes) after failing writes, want offline (io-error) with a bitmap", c.State, c.Reason, c.DirtyBytes)
			}
			// The rebuild's writes are slowed down and the rebuild paused
			// at once, so the guest's next files land during it.
			fb.ClearRules()
			fb.AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 100 * time.Millisecond})
			if err := n.AddChild(ctx, uriB); err != nil {
				return fmt.Errorf("rebuild child B: %w", err)
			}
			if err := n.Rebuild(uriB, nexus.RebuildPause); err != nil {
				return fmt.Errorf("pause the rebuild: %w", err)
			}
			if c := childState(uriB); c.State != nexus.StateRebuilding {
				return fmt.Errorf("child B is %v during its rebuild, want rebuilding", c.State)
			}
		case "resume":
			fb.ClearRules()
			if err := n.Rebuild(uriB, nexus.RebuildResume); err != nil {
				return fmt.Errorf("resume the rebuild: %w", err)
			}
			st, err := n.WaitRebuild(ctx, uriB)
			if err != nil {
				return fmt.Errorf("wait for the rebuild: %w", err)
			}
			if st.State != nexus.RebuildCompleted {
				return fmt.Errorf("rebuild of child B ended %s: %s", st.State, st.Err)
			}
			for _, c := range n.Children() {
				if c.State != nexus.StateOnline {
					return fmt.Errorf("child %s is %v after the rebuild", c.URI, c.State)
				}
			}
		default:
			return fmt.Errorf("unknown barrier %q", name)
		}
		return nil
	}

	mnt := "/mnt/nexus"
	sets := []fileSet{
		{"/before", 8, 200000, 11},   // both children healthy
		{"/degraded", 8, 200000, 12}, // child B failing and retired
		{"/rebuild", 8, 200000, 13},  // child B rebuilding
	}
	script := []string{
		fmt.Sprintf("connect 10.0.2.2 %d %s %s", s.ioPort, nqn, hostNQN),
		"mkfs $DEV",
		"mount $DEV " + mnt,
	}
	for i, set := range sets {
		script = append(script,
			fmt.Sprintf("write-files %s%s %d %d %d", mnt, set.Dir, set.Count, set.Size, set.Seed),
			"sync",
			"barrier "+[]string{"fault", "faulted", "resume"}[i])
	}
	// Read back from the nexus, not the page cache: reads now also go to
	// the rebuilt child.
	script = append(script, "drop-caches")
	for _, set := range sets {
		script = append(script, fmt.Sprintf("verify-files %s%s %d %d %d", mnt, set.Dir, set.Count, set.Size, set.Seed))
	}
	script = append(script, "umount "+mnt, "fsck $DEV", "disconnect $CTRL")

	vm := env.Boot(t, qemuvm.Config{Script: script, Barrier: barrier})
	res, err := vm.Wait(ctx)
	t.Logf("boot (%s):\n%s", env.Accel, res)
	if err != nil {
		t.Fatal(err)
	}

	rep, err := n.Verify(ctx)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if len(rep.Children) != 2 || len(rep.Mismatches) != 0 {
		t.Errorf("verify compared %v and found %d differing ranges: %v", rep.Children, len(rep.Mismatches), rep.Mismatches)
	}
	// Each child alone must hold the whole file system.
	checkExt4Image(t, "child A", a, size, sets...)
	checkExt4Image(t, "child B (rebuilt)", b, size, sets...)
	if got := bytesEqualDevices(t, a, b, size); got >= 0 {
		t.Errorf("children differ at offset %d", got)
	}
	t.Logf("nexus stats: %+v", n.Stats())
}

// bytesEqualDevices returns the first offset where x and y differ, or -1.
func bytesEqualDevices(t *testing.T, x, y bdev.Device, n int64) int64 {
	t.Helper()
	bx, by := make([]byte, 1<<20), make([]byte, 1<<20)
	for pos := int64(0); pos < n; pos += int64(len(bx)) {
		if _, err := x.ReadAt(bx, pos); err != nil {
			t.Fatal(err)
		}
		if _, err := y.ReadAt(by, pos); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(bx, by) {
			for i := range bx {
				if bx[i] != by[i] {
					return pos + int64(i)
				}
			}
		}
	}
	return -1
}
