package initiator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

const testNQN = "nqn.2024-11.io.nexstor:replica:test"

type fixture struct {
	t    testing.TB
	tgt  *target.Target
	sub  *target.Subsystem
	dev  *bdev.Malloc
	addr string
	stop context.CancelFunc
	done chan error
	once *sync.Once
}

// kill stops the listener and closes every connection of the target.
func (f *fixture) kill() {
	f.once.Do(func() {
		f.stop()
		<-f.done
		f.tgt.Close()
	})
}

// newFixture serves a malloc namespace of size bytes on a loopback port.
func newFixture(t testing.TB, size int64, opts target.SubsystemOptions) *fixture {
	t.Helper()
	dev, err := bdev.NewMalloc(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	tgt := target.New(nil)
	sub, err := tgt.AddSubsystem(testNQN, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.AddNamespace(dev, target.NamespaceOptions{UUID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tgt, sub: sub, dev: dev}
	f.listen("127.0.0.1:0")
	t.Cleanup(func() { f.kill() })
	return f
}

func (f *fixture) listen(addr string) {
	f.t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	f.stop = cancel
	f.done = make(chan error, 1)
	f.once = new(sync.Once)
	go func() { f.done <- f.tgt.Serve(ctx, l) }()
}

func (f *fixture) connect(opts Options) *Controller {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, f.addr, testNQN, opts)
	if err != nil {
		f.t.Fatalf("Connect: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

func TestBdevConformance(t *testing.T) {
	for _, dg := range []bool{false, true} {
		f := newFixture(t, 4<<20, target.SubsystemOptions{AllowAnyHost: true})
		c := f.connect(Options{HeaderDigest: dg, DataDigest: dg, IOQueues: 2, QueueDepth: 32})
		ns, err := c.Namespace(1)
		if err != nil {
			t.Fatal(err)
		}
		if ns.Size() != 4<<20 || ns.BlockSize() != 512 {
			t.Fatalf("geometry %d/%d", ns.Size(), ns.BlockSize())
		}
		if err := bdevtest.TestDevice(ns); err != nil {
			t.Fatalf("digests %v: %v", dg, err)
		}
	}
}

// TestConcurrentVerifiedIO runs thousands of random reads and writes from
// many goroutines, each on its own region, with both digests on, and checks
// every byte against a shadow copy.
func TestConcurrentVerifiedIO(t *testing.T) {
	const size = 5 << 20
	f := newFixture(t, size, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{HeaderDigest: true, DataDigest: true, IOQueues: 3, QueueDepth: 16})
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	const workers = 20
	const region = size / workers
	const ops = 100
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			fill := rand.NewChaCha8([32]byte{byte(w)})
			base := int64(w * region)
			shadow := make([]byte, region)
			buf := make([]byte, 128<<10)
			for range ops {
				blocks := 1 + rng.IntN(16)
				if rng.IntN(10) == 0 {
					blocks = 33 + rng.IntN(96) // beyond in-capsule: R2T
				}
				n := blocks * 512
				off := int64(rng.IntN(region/512-blocks)) * 512
				p := buf[:n]
				if rng.IntN(2) == 0 {
					fill.Read(p)
					if _, err := ns.WriteAt(p, base+off); err != nil {
						errs <- err
						return
					}
					copy(shadow[off:], p)
				} else {
					if _, err := ns.ReadAt(p, base+off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(p, shadow[off:off+int64(n)]) {
						errs <- errors.New("read data differs from what was written")
						return
					}
				}
			}
			full := make([]byte, region)
			if _, err := ns.ReadAt(full, base); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(full, shadow) {
				errs <- errors.New("final region contents differ")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAllowList(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowedHosts: []string{"nqn.2014-08.org.example:good"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Connect(ctx, f.addr, testNQN, Options{HostNQN: "nqn.2014-08.org.example:bad"})
	if !errors.Is(err, nvme.StatusConnectInvalidHost) {
		t.Fatalf("disallowed host: got %v, want Connect Invalid Host", err)
	}
	var st nvme.Status
	if !errors.As(err, &st) || st.SCT() != 1 || st.SC() != 0x84 {
		t.Fatalf("status %v, want SCT 1 SC 0x84", err)
	}
	c := f.connect(Options{HostNQN: "nqn.2014-08.org.example:good"})
	if _, err := c.Namespace(1); err != nil {
		t.Fatal(err)
	}
	// A host allowed later connects too.
	f.sub.AllowHost("nqn.2014-08.org.example:bad")
	c2, err := Connect(ctx, f.addr, testNQN, Options{HostNQN: "nqn.2014-08.org.example:bad"})
	if err != nil {
		t.Fatalf("after AllowHost: %v", err)
	}
	c2.Close()
}

func TestUnknownSubsystem(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Connect(ctx, f.addr, "nqn.2024-11.io.nexstor:replica:nope", Options{})
	if !errors.Is(err, nvme.StatusConnectInvalidParam) {
		t.Fatalf("got %v, want Connect Invalid Parameters", err)
	}
}

// TestTargetKilledMidIO stops the target under load: every command must
// fail within its timeout, and the controller must come back once a
// target listens on the same address again.
func TestTargetKilledMidIO(t *testing.T) {
	f := newFixture(t, 8<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{IOQueues: 2, QueueDepth: 8, CommandTimeout: 3 * time.Second, ReconnectDelay: 50 * time.Millisecond, KeepAlive: time.Second})
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures, successes int
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64((w*64+i%64)*4096) % (8 << 20)
				var err error
				if i%2 == 0 {
					_, err = ns.WriteAt(buf, off)
				} else {
					_, err = ns.ReadAt(buf, off)
				}
				mu.Lock()
				if err != nil {
					failures++
				} else {
					successes++
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	// Kill: stop listening and drop every connection.
	f.kill()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait() // would hang if a command never completed
	if failures == 0 || successes == 0 {
		t.Fatalf("expected successes before and failures after the kill, got %d and %d", successes, failures)
	}

	// Bring a new target up on the same address with the same data.
	tgt := target.New(nil)
	sub, err := tgt.AddSubsystem(testNQN, target.SubsystemOptions{AllowAnyHost: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.AddNamespace(f.dev, target.NamespaceOptions{}); err != nil {
		t.Fatal(err)
	}
	f.tgt = tgt
	f.listen(f.addr)
	want := bytes.Repeat([]byte{0xA5}, 4096)
	if _, err := ns.WriteAt(want, 0); err != nil {
		t.Fatalf("write after the target came back: %v", err)
	}
	got := make([]byte, 4096)
	if _, err := ns.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after reconnect: %v", err)
	}
}

func TestCommandTimeoutWithoutTarget(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{CommandTimeout: 500 * time.Millisecond, ReconnectDelay: 20 * time.Millisecond})
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	f.kill()
	_, err = ns.ReadAt(make([]byte, 512), 0)
	if err == nil {
		t.Fatal("read succeeded with no target")
	}
	if !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("got %v, want a timeout or connection loss", err)
	}
}

func TestDiscovery(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowedHosts: []string{"nqn.2014-08.org.example:h1"}})
	other, err := f.tgt.AddSubsystem("nqn.2024-11.io.nexstor:nexus:other", target.SubsystemOptions{AllowAnyHost: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = other
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.tgt.ServeDiscovery(ctx, l) }()
	defer func() { cancel(); <-done }()

	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	ents, err := Discover(dctx, l.Addr().String(), Options{HostNQN: "nqn.2014-08.org.example:h1"})
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(f.addr)
	seen := map[string]bool{}
	for _, e := range ents {
		if e.TrType != nvme.TrTypeTCP || e.SubType != nvme.SubTypeNVMe || e.TrSvcID != port || e.TrAddr != "127.0.0.1" || e.AdrFam != nvme.AdrFamIPv4 || e.CNTLID != 0xFFFF {
			t.Errorf("entry %+v", e)
		}
		seen[e.SubNQN] = true
	}
	if !seen[testNQN] || !seen["nqn.2024-11.io.nexstor:nexus:other"] || len(ents) != 2 {
		t.Fatalf("entries %+v", ents)
	}
	// Another host sees only the open subsystem.
	ents, err = Discover(dctx, l.Addr().String(), Options{HostNQN: "nqn.2014-08.org.example:h2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].SubNQN != "nqn.2024-11.io.nexstor:nexus:other" {
		t.Fatalf("entries for h2: %+v", ents)
	}
	// The discovery port refuses NVM subsystems.
	if _, err := Connect(dctx, l.Addr().String(), testNQN, Options{HostNQN: "nqn.2014-08.org.example:h1"}); err == nil {
		t.Fatal("connect to an NVM subsystem through the discovery port succeeded")
	}
}

func TestDeallocateAndZeroes(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{})
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, 64<<10)
	if _, err := ns.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := ns.Deallocate(4096, 8192); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<10)
	if _, err := ns.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[4096 : 4096+8192])
	if !bytes.Equal(got, want) {
		t.Fatal("deallocated range does not read as zeroes")
	}
	if err := ns.Deallocate(1<<20, 512); err == nil {
		t.Fatal("deallocate beyond the end succeeded")
	}
	ids, err := c.ActiveNamespaces()
	if err != nil || len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("active namespaces %v %v", ids, err)
	}
	if _, err := c.Namespace(2); err == nil {
		t.Fatal("inactive namespace 2 identified")
	}
	_ = binary.LittleEndian
}

func TestClosedControllerFailsDeviceCalls(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{})
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.ReadAt(make([]byte, 512), 0); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	if err := ns.Flush(); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("flush after Close: %v", err)
	}
}

// TestSubmitOnDeadQueueReturns submits on a queue whose reader has already
// failed every command and exited. A slot is still free then, and picking it
// used to leave the command waiting for a completion nobody would deliver.
func TestSubmitOnDeadQueueReturns(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{IOQueues: 1, QueueDepth: 8, CommandTimeout: 200 * time.Millisecond, MaxReconnect: 1})
	s, err := c.session()
	if err != nil {
		t.Fatal(err)
	}
	q := s.io[0]
	q.kill(ErrConnectionLost)
	<-q.readerEnd
	buf := make([]byte, 512)
	for i := range 64 {
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.CmdWrite)
		sqe.SetNSID(1)
		res := make(chan error, 1)
		go func() { _, err := q.submit(&sqe, buf, true); res <- err }()
		select {
		case err := <-res:
			var ns errNotSent
			if !errors.As(err, &ns) {
				t.Fatalf("submit %d on a dead queue: %v, want a not-sent error", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("submit %d on a dead queue never returned", i)
		}
	}
}

// stalledPeer accepts one connection, answers the ICReq, and then stops
// reading: the far side of a partition, whose window closes. The returned
// channel yields the connection once initialized.
func stalledPeer(t *testing.T) (string, <-chan *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan *net.TCPConn, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		tc := conn.(*net.TCPConn)
		t.Cleanup(func() { tc.Close() })
		tc.SetReadBuffer(4096)
		dec := pdu.NewDecoder(bufio.NewReader(io.LimitReader(tc, 128)), 4096)
		if h, err := dec.Next(); err != nil || h.Type != pdu.TypeICReq {
			return
		}
		bw := bufio.NewWriter(tc)
		if pdu.NewEncoder(bw).WriteICResp(pdu.ICResp{PFV: pdu.PFV0, MaxH2CData: 128 << 10}) != nil || bw.Flush() != nil {
			return
		}
		ch <- tc
	}()
	return l.Addr().String(), ch
}

// TestTimeoutEndsWriteToStalledPeer: commands whose capsules cannot even be
// written, because the peer stopped reading, still fail within the command
// timeout. Afterwards the peer receives a reset and never the bytes that
// were still queued: a write reported as failed cannot land later.
func TestTimeoutEndsWriteToStalledPeer(t *testing.T) {
	addr, peer := stalledPeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := Options{CommandTimeout: 300 * time.Millisecond}
	q, err := dialQueue(ctx, addr, &opts, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer q.kill(ErrClosed)
	pc := <-peer
	const n, size = 4, 1 << 20
	q.conn.(*net.TCPConn).SetWriteBuffer(4096)
	q.inline = size
	res := make(chan error, n)
	for i := range n {
		go func() {
			var sqe pdu.SQE
			sqe.SetOpcode(nvme.CmdWrite)
			sqe.SetNSID(1)
			buf := bytes.Repeat([]byte{byte(i)}, size)
			_, err := q.submit(&sqe, buf, true)
			res <- err
		}()
	}
	for i := range n {
		select {
		case err := <-res:
			if err == nil {
				t.Fatalf("write %d to a stalled peer succeeded", i)
			}
			if !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrConnectionLost) {
				t.Fatalf("write %d: %v, want a timeout or connection loss", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("write %d to a stalled peer never returned", i)
		}
	}

	// The peer now reads what reached it before the reset, then the reset.
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.Copy(io.Discard, pc)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer read %d bytes and then %v; want a connection reset", got, err)
	}
	if got >= n*size {
		t.Fatalf("peer received all %d bytes after the host gave up; queued data was not discarded", got)
	}
	t.Logf("peer received %d of %d bytes before the reset", got, n*size)
}

// TestLateTimerSparesNextCommand: a slot's timer that fires just as its
// command completes may run after the slot has been reused. It must not
// time out the command now in the slot, nor kill the queue under it.
func TestLateTimerSparesNextCommand(t *testing.T) {
	f := newFixture(t, 1<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{IOQueues: 1, QueueDepth: 4, CommandTimeout: 10 * time.Second})
	s, err := c.session()
	if err != nil {
		t.Fatal(err)
	}
	q := s.io[0]
	slot := &q.cmds[0]
	q.mu.Lock()
	slot.active, slot.deadline = true, time.Now().Add(time.Minute) // a fresh command
	q.mu.Unlock()
	q.expire(slot) // the previous command's firing, arriving late
	q.mu.Lock()
	slot.active = false
	q.mu.Unlock()
	if isClosed(q.dead) || slot.timedOut.Load() {
		t.Fatalf("a stale timer firing killed the queue (%v) or marked the new command timed out (%v)", isClosed(q.dead), slot.timedOut.Load())
	}
	q.mu.Lock()
	slot.active, slot.deadline = true, time.Now().Add(-time.Millisecond) // one that did time out
	q.mu.Unlock()
	q.expire(slot)
	if !isClosed(q.dead) || !slot.timedOut.Load() {
		t.Fatal("an expired command did not kill its queue")
	}
	<-q.readerEnd
}

const stallAddrEnv = "NEXSTOR_INITIATOR_STALL_ADDR"

// TestStalledWriterProcess is the child of TestProcessDeathResetsConnection:
// it starts a large write to a stalled peer and blocks in it until killed.
func TestStalledWriterProcess(t *testing.T) {
	addr := os.Getenv(stallAddrEnv)
	if addr == "" {
		t.Skip("child process of TestProcessDeathResetsConnection")
	}
	opts := Options{CommandTimeout: time.Hour}
	q, err := dialQueue(context.Background(), addr, &opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	q.conn.(*net.TCPConn).SetWriteBuffer(4096)
	q.inline = 4 << 20
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.CmdWrite)
	sqe.SetNSID(1)
	fmt.Println("writing")
	q.submit(&sqe, make([]byte, 4<<20), true)
	t.Fatal("the write to a stalled peer returned")
}

// TestProcessDeathResetsConnection: when the process holding a connection
// dies with writes queued in its kernel, the peer gets a reset, not the
// queued bytes followed by an orderly end: after a partition heals, writes
// of a host that crashed meanwhile do not land late.
func TestProcessDeathResetsConnection(t *testing.T) {
	addr, peer := stalledPeer(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestStalledWriterProcess$", "-test.v")
	cmd.Env = append(os.Environ(), stallAddrEnv+"="+addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "writing" {
	}
	var pc *net.TCPConn
	select {
	case pc = <-peer:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the child process never connected")
	}
	// The child is now blocked writing: its socket buffer and ours hold
	// bytes the peer has not read. (If it is not blocked yet, fewer bytes
	// are queued; the check below holds all the same.)
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Kill()
	cmd.Wait()
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.Copy(io.Discard, pc)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer read %d bytes and then %v after the host process died; want a connection reset", got, err)
	}
}

// TestQueueDepths connects with the shallowest depths a caller may ask
// for, and the deepest: each I/O queue keeps exactly that many commands in flight, and
// Connect asks for one queue entry more (SQSIZE, 0's based, equals the
// depth), as a queue of N entries holds at most N-1 commands and a target
// refuses SQSIZE 0. More writers than slots then verify every byte.
func TestQueueDepths(t *testing.T) {
	// The deepest request is held to what the target's largest queue
	// (CAP.MQES+1 = MaxQueueEntries entries) can hold.
	for _, depth := range []int{1, 2, 3, target.MaxQueueEntries} {
		t.Run(fmt.Sprint("qd", depth), func(t *testing.T) {
			const size = 1 << 20
			f := newFixture(t, size, target.SubsystemOptions{AllowAnyHost: true})
			c := f.connect(Options{IOQueues: 2, QueueDepth: depth})
			depth := min(depth, target.MaxQueueEntries-1)
			s, err := c.session()
			if err != nil {
				t.Fatal(err)
			}
			if len(s.io) != 2 {
				t.Fatalf("%d I/O queues, want 2", len(s.io))
			}
			for _, q := range s.io {
				if len(q.cmds) != depth || cap(q.free) != depth {
					t.Fatalf("queue %d: %d command slots, want %d", q.qid, len(q.cmds), depth)
				}
			}
			if n := len(s.admin.cmds); n != adminDepth-1 {
				t.Fatalf("admin queue: %d command slots, want %d", n, adminDepth-1)
			}
			ns, err := c.Namespace(1)
			if err != nil {
				t.Fatal(err)
			}
			const workers = 6
			const region = size / workers / 4096 * 4096
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					off := int64(w * region)
					want := bytes.Repeat([]byte{byte(w + 1)}, 4096)
					got := make([]byte, 4096)
					for i := range 20 {
						at := off + int64(i%(region/4096))*4096
						if _, err := ns.WriteAt(want, at); err != nil {
							errs <- fmt.Errorf("write at %d: %w", at, err)
							return
						}
						if _, err := ns.ReadAt(got, at); err != nil {
							errs <- fmt.Errorf("read at %d: %w", at, err)
							return
						}
						if !bytes.Equal(got, want) {
							errs <- fmt.Errorf("read at %d: data differs from what was written", at)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

// TestStartWrite starts writes of every kind from one goroutine before
// waiting for any: in the capsule, through R2T, and one longer than a
// command (run at once, nil Pending), then reads everything back. Writes
// that cannot start fail at once; a write the connection loses fails in
// Wait, which frees its slot all the same.
func TestStartWrite(t *testing.T) {
	const size = 8 << 20
	f := newFixture(t, size, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{IOQueues: 2, QueueDepth: 8, CommandTimeout: 2 * time.Second, ReconnectDelay: 20 * time.Millisecond, MaxReconnect: 1, KeepAlive: -1})
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	shadow := make([]byte, size)
	fill := rand.NewChaCha8([32]byte{9})
	type started struct {
		p bdev.Pending
		n int
	}
	var pend []started
	off := int64(0)
	for _, n := range []int{4096, 512, 64 << 10, 4096, 200 << 10, 8192} {
		p := make([]byte, n)
		fill.Read(p)
		w, err := ns.StartWrite(p, off)
		if err != nil || w == nil {
			t.Fatalf("StartWrite(%d bytes at %d) = %v, %v; want a pending write", n, off, w, err)
		}
		copy(shadow[off:], p)
		pend = append(pend, started{w, n})
		off += int64(n)
	}
	long := make([]byte, maxTransfer+64<<10)
	fill.Read(long)
	if w, err := ns.StartWrite(long, off); w != nil || err != nil {
		t.Fatalf("StartWrite of %d bytes = %v, %v; want it run at once", len(long), w, err)
	}
	copy(shadow[off:], long)
	for i, s := range pend {
		if err := s.p.Wait(); err != nil {
			t.Fatalf("write %d (%d bytes): %v", i, s.n, err)
		}
	}
	got := make([]byte, size)
	if _, err := ns.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, shadow) {
		t.Fatal("read back differs from what the started writes wrote")
	}

	if w, err := ns.StartWrite(make([]byte, 4096), size); w != nil || err == nil {
		t.Fatalf("StartWrite past the end = %v, %v; want a range error", w, err)
	} else if _, ok := errors.AsType[*bdev.RangeError](err); !ok {
		t.Fatalf("StartWrite past the end: %v, want a *bdev.RangeError", err)
	}

	// Lost with the connection: every slot is freed by Wait, so more
	// writes than the queue depth, in turn, all end.
	f.kill()
	for i := range 3 * 8 {
		w, err := ns.StartWrite(make([]byte, 4096), 0)
		if w != nil {
			err = w.Wait()
		}
		if err == nil {
			t.Fatalf("write %d succeeded with the target gone", i)
		}
	}
	ns.Close()
	if w, err := ns.StartWrite(make([]byte, 4096), 0); w != nil || !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("StartWrite after Close = %v, %v; want bdev.ErrClosed", w, err)
	}
}
