package initiator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
	"github.com/nexstor/nexstor/internal/nvmf/claimtest"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/testutil/netproxy"
)

var (
	replicaID = bdev.Identity{
		UUID:  uuid.UUID{0x9b, 0x2e, 0x8c, 0x1a, 0x3f, 0x4d, 0x4c, 0x55, 0x8e, 0x21, 0x0d, 0x6f, 0x1b, 0x7a, 0x9c, 0x3e},
		NGUID: [16]byte{0xC1, 0xC2, 0xC3, 0xC4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xC0},
	}
	nexusA = uuid.UUID{0xA0, 15: 0xA0}
	nexusB = uuid.UUID{0xB0, 15: 0xB0}
)

// claimFixture serves a claimable replica as namespace 1 and a plain malloc
// device as namespace 2.
type claimFixture struct {
	*fixture
	rep *claimtest.Device
}

func newClaimFixture(t *testing.T, inner bdev.Device) *claimFixture {
	t.Helper()
	if inner == nil {
		m, err := bdev.NewMalloc(4<<20, 512)
		if err != nil {
			t.Fatal(err)
		}
		inner = m
	}
	rep := claimtest.New(inner, replicaID)
	tgt := target.New(nil)
	sub, err := tgt.AddSubsystem(testNQN, target.SubsystemOptions{AllowAnyHost: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.AddNamespace(rep, target.NamespaceOptions{UUID: replicaID.UUID, NGUID: replicaID.NGUID}); err != nil {
		t.Fatal(err)
	}
	plain, _ := bdev.NewMalloc(1<<20, 512)
	if _, err := sub.AddNamespace(plain, target.NamespaceOptions{UUID: [16]byte{0xEE}}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tgt, sub: sub}
	f.listen("127.0.0.1:0")
	t.Cleanup(func() { f.kill() })
	return &claimFixture{fixture: f, rep: rep}
}

// connectAt connects to the fixture's subsystem at addr (the target or a
// proxy in front of it) and returns namespace nsid.
func (f *claimFixture) connectAt(addr string, nsid uint32, opts Options) (*Controller, *Namespace) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, addr, testNQN, opts)
	if err != nil {
		f.t.Fatalf("Connect: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	ns, err := c.Namespace(nsid)
	if err != nil {
		f.t.Fatal(err)
	}
	return c, ns
}

func mustClaim(t *testing.T, ns *Namespace, owner uuid.UUID, epoch uint64) *ClaimedNamespace {
	t.Helper()
	h, err := ns.Claim(context.Background(), bdev.Claim{Owner: owner, Epoch: epoch})
	if err != nil {
		t.Fatalf("claim for %s at epoch %d: %v", owner, epoch, err)
	}
	return h.(*ClaimedNamespace)
}

func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func wantFenced(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("%s: %v, want an error wrapping bdev.ErrFenced", what, err)
	}
}

func TestIdentityAndClaimState(t *testing.T) {
	f := newClaimFixture(t, nil)
	_, ns := f.connectAt(f.addr, 1, Options{})
	if ns.Identity() != replicaID {
		t.Fatalf("identity %v, want %v", ns.Identity(), replicaID)
	}
	st, err := ns.ClaimState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Identity != replicaID || st.Owner != uuid.Nil || st.Epoch != 0 || !st.Blank {
		t.Fatalf("claim state %+v", st)
	}
	h := mustClaim(t, ns, nexusA, 4)
	if _, err := h.WriteAt(pattern(1, 512), 0); err != nil {
		t.Fatal(err)
	}
	if st, _ = ns.ClaimState(context.Background()); st.Owner != nexusA || st.Epoch != 4 || st.Blank {
		t.Fatalf("claim state after a claimed write %+v", st)
	}

	// A namespace whose device takes no claims says so.
	c2, plain := f.connectAt(f.addr, 2, Options{})
	if id := plain.Identity(); id.UUID != [16]byte{0xEE} || id.NGUID != [16]byte{8: 0xEE} {
		t.Fatalf("identity of namespace 2: %v", id)
	}
	if _, err := plain.ClaimState(context.Background()); !errors.Is(err, ErrNotClaimable) {
		t.Fatalf("claim state of namespace 2: %v", err)
	}
	if _, err := plain.Claim(context.Background(), bdev.Claim{Owner: nexusA, Epoch: 1}); !errors.Is(err, ErrNotClaimable) {
		t.Fatalf("claim of namespace 2: %v", err)
	}
	if c2.Err() != nil {
		t.Fatalf("controller after refusals: %v", c2.Err())
	}
	if _, err := ns.Claim(context.Background(), bdev.Claim{Epoch: 9}); err == nil {
		t.Fatal("claim without an owner accepted")
	}
}

// TestTwoInitiatorsClaim: the first initiator's handle is fenced once the
// second claims with a higher epoch, and the second's once the first claims
// again at an equal one; stale and foreign claims are refused with the
// numbers and the owner; a controller that never claimed may not write.
func TestTwoInitiatorsClaim(t *testing.T) {
	f := newClaimFixture(t, nil)
	ctx := context.Background()
	_, nsA := f.connectAt(f.addr, 1, Options{})
	_, nsB := f.connectAt(f.addr, 1, Options{})
	_, nsC := f.connectAt(f.addr, 1, Options{})
	buf := make([]byte, 4096)

	a := mustClaim(t, nsA, nexusA, 1)
	if _, err := a.WriteAt(pattern(0xAA, 4096), 0); err != nil {
		t.Fatal(err)
	}
	b := mustClaim(t, nsB, nexusA, 2)
	_, err := a.WriteAt(pattern(0xAA, 4096), 4096)
	wantFenced(t, "write of the superseded first initiator", err)
	_, err = a.ReadAt(buf, 0)
	wantFenced(t, "read of the superseded first initiator", err)
	wantFenced(t, "flush of the superseded first initiator", a.Flush())
	wantFenced(t, "raise of the superseded first initiator", a.Raise(ctx, 7))
	wantFenced(t, "release of the superseded first initiator", a.Release(ctx))
	// Its plain namespace goes through the same (fenced) association.
	_, err = nsA.WriteAt(pattern(0xAA, 4096), 0)
	wantFenced(t, "write of the superseded first initiator's namespace", err)
	if _, err := b.WriteAt(pattern(0xBB, 4096), 0); err != nil {
		t.Fatal(err)
	}

	a2 := mustClaim(t, nsA, nexusA, 2) // equal epoch
	_, err = b.WriteAt(pattern(0xBB, 4096), 0)
	wantFenced(t, "write of the second initiator superseded at an equal epoch", err)
	if _, err := a2.WriteAt(pattern(0xA2, 4096), 4096); err != nil {
		t.Fatal(err)
	}

	var stale *bdev.StaleEpochError
	_, err = nsC.Claim(ctx, bdev.Claim{Owner: nexusA, Epoch: 1})
	if !errors.As(err, &stale) || stale.Epoch != 1 || stale.Current != 2 || !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("stale claim: %v, want a *bdev.StaleEpochError 1 < 2", err)
	}
	var owned *bdev.OwnedError
	_, err = nsC.Claim(ctx, bdev.Claim{Owner: nexusB, Epoch: 10})
	if !errors.As(err, &owned) || owned.Owner != nexusA || !errors.Is(err, bdev.ErrOwned) {
		t.Fatalf("foreign claim: %v, want a *bdev.OwnedError naming %s", err, nexusA)
	}
	// C never claimed: it reads, but its writes meet the owner.
	if _, err := nsC.ReadAt(buf, 0); err != nil || buf[0] != 0xBB {
		t.Fatalf("unclaimed read: %v, %#x", err, buf[0])
	}
	if _, err := nsC.WriteAt(buf, 0); !errors.Is(err, bdev.ErrOwned) {
		t.Fatalf("unclaimed write to an owned namespace: %v, want bdev.ErrOwned", err)
	}
	if st, _ := nsC.ClaimState(ctx); st.Owner != nexusA || st.Epoch != 2 {
		t.Fatalf("claim state after the refusals %+v", st)
	}
}

// TestClaimHandles: the handles of one controller: a new claim supersedes
// the earlier handle locally, Raise keeps the handle, Release fences it and
// unowns the device, Close closes only the handle.
func TestClaimHandles(t *testing.T) {
	f := newClaimFixture(t, nil)
	ctx := context.Background()
	_, ns := f.connectAt(f.addr, 1, Options{})
	h1 := mustClaim(t, ns, nexusA, 1)
	h2 := mustClaim(t, ns, nexusA, 1)
	_, err := h1.WriteAt(pattern(1, 512), 0)
	wantFenced(t, "write of a handle superseded by the same controller", err)
	refused := f.rep.Refused()
	if _, err := h2.WriteAt(pattern(2, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := h2.Raise(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := h2.Raise(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if st, _ := ns.ClaimState(ctx); st.Epoch != 5 || st.Owner != nexusA {
		t.Fatalf("after raises %+v", st)
	}
	if _, err := h2.WriteAt(pattern(2, 512), 512); err != nil {
		t.Fatalf("write after raise: %v", err)
	}
	if f.rep.Refused() != refused {
		t.Fatal("the superseded handle's write reached the target; it must fail locally")
	}
	if err := h2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = h2.WriteAt(pattern(2, 512), 0)
	wantFenced(t, "write after release", err)
	if st, _ := ns.ClaimState(ctx); st.Epoch != 5 || st.Owner != uuid.Nil {
		t.Fatalf("after release %+v", st)
	}
	if _, err := ns.WriteAt(pattern(3, 512), 0); err != nil {
		t.Fatalf("unclaimed write after release: %v", err)
	}
	h3 := mustClaim(t, ns, nexusB, 6)
	h3.Close()
	if _, err := h3.ReadAt(make([]byte, 512), 0); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("read of a closed handle: %v", err)
	}
	if _, err := ns.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("the namespace after closing its handle: %v", err)
	}
	if st, _ := ns.ClaimState(ctx); st.Owner != nexusB {
		t.Fatalf("closing the handle gave up the claim: %+v", st)
	}
	// A handle stays usable when its Namespace is closed.
	h4 := mustClaim(t, ns, nexusB, 6)
	ns.Close()
	if _, err := h4.WriteAt(pattern(4, 512), 0); err != nil {
		t.Fatalf("handle after its namespace closed: %v", err)
	}
}

func TestClaimedNamespaceConformance(t *testing.T) {
	f := newClaimFixture(t, nil)
	_, ns := f.connectAt(f.addr, 1, Options{IOQueues: 2, QueueDepth: 16})
	if err := bdevtest.TestDevice(mustClaim(t, ns, nexusA, 1)); err != nil {
		t.Fatal(err)
	}
}

func TestNoSpaceMapped(t *testing.T) {
	m, _ := bdev.NewMalloc(1<<20, 512)
	full := faulty.New(m, 1)
	full.AddRule(faulty.Rule{Ops: faulty.OpWrite, Err: fmt.Errorf("pool p: %w", bdev.ErrNoSpace)})
	f := newClaimFixture(t, full)
	_, ns := f.connectAt(f.addr, 1, Options{})
	h := mustClaim(t, ns, nexusA, 1)
	if _, err := h.WriteAt(pattern(1, 512), 0); !errors.Is(err, bdev.ErrNoSpace) {
		t.Fatalf("write to a full pool: %v, want bdev.ErrNoSpace", err)
	}
	if _, err := h.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}

// proxied connects through a netproxy in front of the fixture.
func (f *claimFixture) proxied(opts Options) (*netproxy.Proxy, *Controller, *Namespace) {
	f.t.Helper()
	p, err := netproxy.Listen(f.addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { p.Close() })
	c, ns := f.connectAt(p.Addr(), 1, opts)
	return p, c, ns
}

// TestReconnectRestoresClaim: after the connection is cut and comes back,
// the namespace keeps working at the same claim: the new association was
// claimed again before the waiting write went through it.
func TestReconnectRestoresClaim(t *testing.T) {
	f := newClaimFixture(t, nil)
	p, c, ns := f.proxied(Options{IOQueues: 2, CommandTimeout: 10 * time.Second, ReconnectDelay: 20 * time.Millisecond})
	h := mustClaim(t, ns, nexusA, 3)
	if err := h.Raise(context.Background(), 4); err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(pattern(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	claims := f.rep.Claims()
	cntlid := c.CNTLID()
	p.Drop()
	waitFor(t, "the connection loss to be noticed", func() bool { return c.CNTLID() == 0 })
	p.Restore()
	// Any write unclaimed on the new association would meet the owner.
	if _, err := h.WriteAt(pattern(2, 4096), 4096); err != nil {
		t.Fatalf("write after reconnecting: %v", err)
	}
	if c.CNTLID() == cntlid {
		t.Fatal("no new association")
	}
	if f.rep.Claims() != claims+1 {
		t.Fatalf("%d claims after reconnecting, want %d", f.rep.Claims(), claims+1)
	}
	if st, _ := f.rep.ClaimState(context.Background()); st.Owner != nexusA || st.Epoch != 4 {
		t.Fatalf("device state %+v, want the raised claim", st)
	}
	got := make([]byte, 8192)
	if _, err := h.ReadAt(got, 0); err != nil || !bytes.Equal(got, append(pattern(1, 4096), pattern(2, 4096)...)) {
		t.Fatalf("read back: %v", err)
	}
	// Another host's handle at the old epoch stays refused.
	_, nsB := f.connectAt(f.addr, 1, Options{})
	if _, err := nsB.Claim(context.Background(), bdev.Claim{Owner: nexusA, Epoch: 3}); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("claim below the restored epoch: %v", err)
	}
}

// TestReconnectAfterSupersededIsFencedForGood: a controller that reconnects
// after another claimed the namespace with a newer epoch cannot restore its
// claim: it is fenced for good, and stops reconnecting.
func TestReconnectAfterSupersededIsFencedForGood(t *testing.T) {
	f := newClaimFixture(t, nil)
	p, c, ns := f.proxied(Options{CommandTimeout: 10 * time.Second, ReconnectDelay: 20 * time.Millisecond})
	h := mustClaim(t, ns, nexusA, 1)
	if _, err := h.WriteAt(pattern(0xAA, 4096), 0); err != nil {
		t.Fatal(err)
	}
	_, nsB := f.connectAt(f.addr, 1, Options{})
	hb := mustClaim(t, nsB, nexusA, 2)
	p.Drop()
	waitFor(t, "the connection loss to be noticed", func() bool { return c.CNTLID() == 0 })
	p.Restore()
	_, err := h.WriteAt(pattern(0xAA, 4096), 0)
	wantFenced(t, "write after reconnecting superseded", err)
	wantFenced(t, "controller", c.Err())
	_, err = ns.ReadAt(make([]byte, 512), 0)
	wantFenced(t, "read of the namespace after reconnecting superseded", err)
	done := make(chan struct{})
	go func() { c.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the controller is still reconnecting after being fenced")
	}
	if _, err := hb.WriteAt(pattern(0xBB, 4096), 0); err != nil {
		t.Fatalf("the newer claim's write: %v", err)
	}
	if st, _ := f.rep.ClaimState(context.Background()); st.Epoch != 2 {
		t.Fatalf("device state %+v", st)
	}
}

// TestPartitionFencing is the data-safety case: a nexus partitioned from a
// replica while its writes are in the network is replaced by one with a
// newer epoch; when the partition heals, the old writes, delivered late,
// are refused, and the replica holds only the new nexus's data.
func TestPartitionFencing(t *testing.T) {
	f := newClaimFixture(t, nil)
	// No keep-alive and a long command timeout: A's controller on the
	// target lives through the partition, and A waits for its writes
	// rather than giving up, so that the late writes do reach the target.
	p, _, nsA := f.proxied(Options{IOQueues: 2, CommandTimeout: time.Minute, KeepAlive: -1})
	const region = 64 << 10
	a := mustClaim(t, nsA, nexusA, 1)
	if _, err := a.WriteAt(pattern(0xA1, region), 0); err != nil {
		t.Fatal(err)
	}

	p.Blackhole()
	const late = 16
	results := make(chan error, late+1)
	var wg sync.WaitGroup
	for i := range late {
		wg.Go(func() {
			_, err := a.WriteAt(pattern(0xA2, 4096), int64(i%16)*4096)
			results <- err
		})
	}
	refused := f.rep.Refused()
	_, nsB := f.connectAt(f.addr, 1, Options{})
	b := mustClaim(t, nsB, nexusA, 2)
	if _, err := b.WriteAt(pattern(0xB1, region), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	p.Restore()
	wg.Wait()
	_, err := a.WriteAt(pattern(0xA3, 4096), 0)
	results <- err
	close(results)
	for err := range results {
		wantFenced(t, "write of the partitioned nexus", err)
	}
	if n := f.rep.Refused() - refused; n < late+1 {
		t.Fatalf("the device refused %d writes of the partitioned nexus, want all %d", n, late+1)
	}
	got := make([]byte, region)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != 0xB1 {
			t.Fatalf("byte %d is %#x: only the new nexus's data (0xb1) may be there", i, v)
		}
	}
}

// TestCloseEndsReconnectWait: Close cuts short the wait between reconnect
// attempts, however long.
func TestCloseEndsReconnectWait(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{ReconnectDelay: time.Hour})
	f.kill()
	waitFor(t, "the connection loss to be noticed", func() bool { return c.CNTLID() == 0 })
	closeWithin(t, c)
}

// TestCloseEndsReconnectHandshake: Close ends a reconnect that is stuck in
// its handshake with a target that accepted the connection and says
// nothing, whatever the command timeout.
func TestCloseEndsReconnectHandshake(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{CommandTimeout: time.Hour, ReconnectDelay: time.Millisecond, KeepAlive: -1})
	f.kill()
	// A silent server on the target's address takes the reconnects.
	l, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	select {
	case conn := <-accepted:
		defer conn.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect attempt")
	}
	closeWithin(t, c)
}

func closeWithin(t *testing.T, c *Controller) {
	t.Helper()
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the reconnect")
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Fatalf("Err after Close: %v", c.Err())
	}
	done = make(chan struct{})
	go func() { c.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the reconnect goroutine outlived Close")
	}
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSiblingQueueNamesTheCause: when one queue's command times out in a
// partition, the whole association is torn down, and a command waiting on
// another, healthy-looking queue must fail naming the timeout, not a bare
// "closed": callers (the nexus) record this error as why a child retired.
func TestSiblingQueueNamesTheCause(t *testing.T) {
	f := newClaimFixture(t, nil)
	p, _, ns := f.proxied(Options{IOQueues: 2, CommandTimeout: 400 * time.Millisecond,
		ReconnectDelay: 20 * time.Millisecond, MaxReconnect: 1, KeepAlive: -1})
	if _, err := ns.WriteAt(pattern(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	errs := make(chan error, 2)
	// Consecutive commands go to different queues; the second is sent well
	// after the first, so the first queue's timeout ends the association
	// while the second's command still has time left.
	go func() { _, err := ns.WriteAt(pattern(2, 4096), 0); errs <- err }()
	time.Sleep(150 * time.Millisecond)
	go func() { _, err := ns.WriteAt(pattern(3, 4096), 4096); errs <- err }()
	for range 2 {
		err := <-errs
		if err == nil {
			t.Fatal("a write through a partition succeeded")
		}
		if !strings.Contains(err.Error(), "timed out") {
			t.Fatalf("write failed with %q, want the timeout that ended the association named", err)
		}
	}
}
