package nexus

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

func childByURI(t *testing.T, n *Nexus, uri string) *child {
	t.Helper()
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	for _, c := range n.children {
		if c.uri == uri {
			return c
		}
	}
	t.Fatalf("no child %s", uri)
	return nil
}

// A slow child's write is handed to a worker even when the children after
// it are quick and issued inline: a quick child's write lands while the slow
// one's is still held.
func TestFanOutHandsOffSlowChildren(t *testing.T) {
	const size = 1 << 20
	op := newTestOpener()
	mem := make([]*bdev.Malloc, 3)
	var uris []string
	gate := make(chan struct{})
	for i := range mem {
		m, err := bdev.NewMalloc(size, 512)
		if err != nil {
			t.Fatal(err)
		}
		mem[i] = m
		var d bdev.Device = m
		if i == 1 {
			d = &blockedWrites{Device: m, release: gate}
		}
		op.add(childURI(i), d)
		uris = append(uris, childURI(i))
	}
	store := NewMemStore()
	seedRecord(t, store, "fanout", uris)
	n, err := New(context.Background(), Config{UUID: "fanout", Name: "nx", Size: size,
		Children: uris, Store: store, Opener: op, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// Child 1 has shown itself slow, children 0 and 2 quick.
	childByURI(t, n, uris[1]).cost.Store(int64(time.Millisecond))
	childByURI(t, n, uris[2]).cost.Store(0)

	buf := bytes.Repeat([]byte{0xa5}, 4096)
	done := make(chan error, 1)
	go func() {
		_, err := n.WriteAt(buf, 8192)
		done <- err
	}()
	got := make([]byte, 4096)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := mem[2].ReadAt(got, 8192); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, buf) {
			break
		}
		if time.Now().After(deadline) {
			close(gate)
			t.Fatal("the quick child after a held slow child was not written: the slow child was issued inline before it")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the write was acknowledged (%v) while a child's write was held", err)
	default:
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, m := range mem {
		if _, err := m.ReadAt(got, 8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, buf) {
			t.Fatalf("child %d lacks the write", i)
		}
	}
}

// A child's cost follows its service time: one that takes 100 µs a write
// stops counting as quick, and its writes are then handed off.
func TestFanOutLearnsSlowChildren(t *testing.T) {
	r := newRig(t, 3, 1<<20, Config{})
	r.faults[r.uris[2]].AddRule(faulty.Rule{Ops: faulty.OpWrite, Delay: true, Latency: 100 * time.Microsecond})
	buf := make([]byte, 4096)
	// One write in costSample is timed: 512 leave no real chance of none.
	for i := range 512 {
		if _, err := r.nx.WriteAt(buf, int64(i%16)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if c := childByURI(t, r.nx, r.uris[2]); c.quick() {
		t.Fatalf("a child taking 100 µs a write still counts as quick (cost %v)", time.Duration(c.cost.Load()))
	}
	// Flushes are not measured: a child's cost is its writes'.
	before := childByURI(t, r.nx, r.uris[0]).cost.Load()
	r.faults[r.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpFlush, Delay: true, Latency: 20 * time.Millisecond})
	if err := r.nx.Flush(); err != nil {
		t.Fatal(err)
	}
	if after := childByURI(t, r.nx, r.uris[0]).cost.Load(); after != before {
		t.Fatalf("a flush changed the child's write cost from %v to %v", time.Duration(before), time.Duration(after))
	}
}

// A child's first I/O sets its cost outright: a 30 µs write (a remote
// child's) makes it slow at once, where an eighth of it would still read
// as quick; later ones move it by an eighth of the difference.
func TestChildCostFirstSample(t *testing.T) {
	var slow, fast child
	slow.observe(30 * time.Microsecond)
	if slow.quick() {
		t.Fatalf("a child whose first write took 30 µs counts as quick (cost %v)", time.Duration(slow.cost.Load()))
	}
	fast.observe(2 * time.Microsecond)
	if !fast.quick() {
		t.Fatalf("a child whose first write took 2 µs counts as slow (cost %v)", time.Duration(fast.cost.Load()))
	}
	slow.observe(14 * time.Microsecond)
	if got, want := time.Duration(slow.cost.Load()), 28*time.Microsecond; got != want {
		t.Fatalf("cost after 30 µs then 14 µs: %v, want %v", got, want)
	}
}

// startingDev is a device that can start writes (it runs them at once).
type startingDev struct{ bdev.Device }

func (d *startingDev) StartWrite(p []byte, off int64) (bdev.Pending, error) {
	_, err := d.WriteAt(p, off)
	return nil, err
}

// A view lists the writable children that can start writes in the order of
// their seq, which every view keeps whatever the children's states, with
// the mask of their places among the writable ones; with more than 64
// writable children it lists none.
func TestViewStartersInSeqOrder(t *testing.T) {
	m, err := bdev.NewMalloc(1<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(seq uint64, st ChildState, starts bool) *child {
		c := &child{seq: seq, dev: m}
		if starts {
			c.dev = &startingDev{m}
		}
		c.state.Store(int32(st))
		return c
	}
	n := &Nexus{}
	n.children = []*child{
		mk(7, StateOnline, true),
		mk(3, StateRebuilding, true),
		mk(5, StateOnline, false),
		mk(4, StateOffline, true),
		mk(6, StateOnline, true),
	}
	n.publishLocked()
	v := n.view.Load()
	// writable: seq 7, 5, 6 (online), then 3 (rebuilding)
	var got []uint64
	for _, st := range v.starters {
		if bdev.Device(st.ws.(*startingDev)) != v.writable[st.i].dev {
			t.Fatalf("starter %d is not writable[%d]'s device", st.i, st.i)
		}
		got = append(got, v.writable[st.i].seq)
	}
	if !slices.Equal(got, []uint64{3, 6, 7}) || v.startMask != 1|1<<2|1<<3 {
		t.Fatalf("starters by seq %v, mask %#b; want [3 6 7], 0b1101", got, v.startMask)
	}
	n.children = nil
	for i := range 65 {
		n.children = append(n.children, mk(uint64(i+1), StateOnline, true))
	}
	n.publishLocked()
	if v := n.view.Load(); len(v.starters) != 0 || v.startMask != 0 {
		t.Fatalf("65 writable children: %d starters, mask %#x; want none", len(v.starters), v.startMask)
	}
}
