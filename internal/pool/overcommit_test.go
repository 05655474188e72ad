package pool

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// TestOvercommitLimit: creating or growing replicas beyond capacity × limit
// fails with ErrOvercommit (also ErrNoSpace), naming capacity, committed,
// asked and limit, and changes nothing; up to the limit works, thin or
// thick; SetOvercommit changes the limit durably.
func TestOvercommitLimit(t *testing.T) {
	mem := newMalloc(t, 16*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{Overcommit: 150})
	st := p.Stats()
	if st.Overcommit != 150 || st.CommitLimit != st.Capacity*150/100 {
		t.Fatalf("stats %+v, want a limit of 150%%", st)
	}
	limit := st.CommitLimit / 512 * 512
	mustReplica(t, p, "thick", 2*mib, false)
	mustReplica(t, p, "thin", limit-2*mib-512, true)
	before, beforeStats := p.Replicas(), p.Stats()
	wantRefused := func(err error, asked int64) {
		t.Helper()
		if !errors.Is(err, ErrOvercommit) || !errors.Is(err, ErrNoSpace) {
			t.Fatalf("beyond the limit: %v, want ErrOvercommit", err)
		}
		for _, n := range []string{
			fmt.Sprintf("capacity %d bytes", st.Capacity),
			fmt.Sprintf("committed %d", limit-512),
			fmt.Sprintf("asked %d", asked),
			"limit 150%",
		} {
			if !strings.Contains(err.Error(), n) {
				t.Fatalf("error does not say %q: %v", n, err)
			}
		}
		if got := p.Replicas(); !equalInfos(got, before) || p.Stats() != beforeStats {
			t.Fatalf("refused change changed the pool: %+v", p.Stats())
		}
	}
	_, err := p.CreateReplica(ReplicaOptions{Name: "more", Size: 1024, Thin: true})
	wantRefused(err, 1024)
	wantRefused(p.ResizeReplica("thin", limit-2*mib+512), 1024)
	// A thick replica within the limit but beyond the free clusters is
	// ErrNoSpace, not an over-commit.
	if err := p.SetOvercommit(1000); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateReplica(ReplicaOptions{Name: "fat", Size: st.Capacity}); !errors.Is(err, ErrNoSpace) || errors.Is(err, ErrOvercommit) {
		t.Fatalf("thick beyond the free space: %v, want ErrNoSpace only", err)
	}
	// Exactly at the limit is allowed.
	if err := p.SetOvercommit(150); err != nil {
		t.Fatal(err)
	}
	if err := p.ResizeReplica("thin", limit-2*mib); err != nil {
		t.Fatalf("growing to exactly the limit: %v", err)
	}
	if st := p.Stats(); st.Committed != limit {
		t.Fatalf("committed %d, want %d", st.Committed, limit)
	}
	// Lowering the limit below what is committed keeps the replicas and
	// refuses growth.
	if err := p.SetOvercommit(100); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Replicas != 2 || st.Overcommit != 100 || st.CommitLimit != st.Capacity {
		t.Fatalf("after lowering the limit: %+v", st)
	}
	if _, err := p.CreateReplica(ReplicaOptions{Name: "more", Size: 512, Thin: true}); !errors.Is(err, ErrOvercommit) {
		t.Fatalf("create over a lowered limit: %v", err)
	}
	for _, bad := range []int{-1, 1, 99, MaxOvercommit + 1} {
		if err := p.SetOvercommit(bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("SetOvercommit(%d): %v, want ErrInvalid", bad, err)
		}
	}
	gen := p.sb.Generation
	if err := p.SetOvercommit(400); err != nil {
		t.Fatal(err)
	}
	if p.sb.Generation != gen+1 {
		t.Fatalf("generation %d after SetOvercommit, want %d", p.sb.Generation, gen+1)
	}
	if err := p.SetOvercommit(400); err != nil || p.sb.Generation != gen+1 {
		t.Fatalf("setting the same limit again: %v, generation %d", err, p.sb.Generation)
	}
	// Durable: probe and import without a close see it.
	if info, err := Probe(mem); err != nil || info.Overcommit != 400 {
		t.Fatalf("Probe: %+v %v", info, err)
	}
	q := mustImport(t, noClose{mem})
	defer q.Close()
	if st := q.Stats(); st.Overcommit != 400 || st.CommitLimit != st.Capacity*4 {
		t.Fatalf("after import %+v", st)
	}
	for _, bad := range []int{99, MaxOvercommit + 1} {
		if _, err := Create(newMalloc(t, 8*mib), CreateOptions{Name: "x", Overcommit: bad}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Create with over-commit %d: %v, want ErrInvalid", bad, err)
		}
	}
	d := mustCreate(t, newMalloc(t, 8*mib), CreateOptions{})
	defer d.Close()
	if st := d.Stats(); st.Overcommit != DefaultOvercommit || st.CommitLimit != st.Capacity*DefaultOvercommit/100 {
		t.Fatalf("default limit: %+v", st)
	}
}

// TestSetOvercommitFailedWrite: a superblock rewrite whose write fails on
// copy 0 (nothing of it lands) leaves the old limit, on copy 1 (copy 0 was
// written and flushed) the new one; either way import finds both copies
// equal afterwards, and the failed pool refuses metadata changes meanwhile.
func TestSetOvercommitFailedWrite(t *testing.T) {
	for c, want := range []int{DefaultOvercommit, 300} {
		t.Run(fmt.Sprintf("copy-%d", c), func(t *testing.T) {
			mem := newMalloc(t, 8*mib)
			fd := faulty.New(noClose{mem}, int64(c))
			p := mustCreate(t, fd, CreateOptions{})
			mustReplica(t, p, "r", mib, true)
			rule := fd.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: int64(c) * 4096, Len: 512, Count: 1})
			if err := p.SetOvercommit(300); !errors.Is(err, ErrClosed) || fd.Fired(rule) != 1 {
				t.Fatalf("SetOvercommit with copy %d failing: %v (fired %d)", c, err, fd.Fired(rule))
			}
			if _, err := p.CreateReplica(ReplicaOptions{Name: "x", Size: mib, Thin: true}); !errors.Is(err, ErrClosed) {
				t.Fatalf("create after a failed superblock write: %v, want ErrClosed", err)
			}
			_ = p.Close()
			q := mustImport(t, noClose{mem})
			defer q.Close()
			if st := q.Stats(); st.Overcommit != want || st.Replicas != 1 {
				t.Fatalf("after import: %+v, want the limit %d%%", st, want)
			}
			if _, repair, err := readSuperblocks(mem); err != nil || len(repair) != 0 {
				t.Fatalf("superblock copies after import: repair %v, %v", repair, err)
			}
		})
	}
}
