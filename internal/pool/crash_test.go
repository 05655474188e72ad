package pool

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
)

// The crash test: a child process (this test binary, re-executed) works on
// a file-backed pool and journals what is durable; the parent kills it with
// SIGKILL at random moments, imports the pool and checks it against the
// journal, round after round on the same pool. Besides data and replica
// admin, the child claims, raises, releases and disowns one replica; the
// parent checks that its owner and epoch are the last acknowledged ones (or
// those of the one operation in flight at the kill). And it takes and
// deletes snapshots of the base replicas, clones them, writes to the clones
// and deletes them: the parent checks that every snapshot keeps the content
// it had when taken, across all later kills, that flushed writes to clones
// read back and unwritten blocks of a clone read as its snapshot, and that
// Check passes after every import.

const (
	crashDirEnv   = "NEXSTOR_POOL_CRASH_DIR"
	crashRoundEnv = "NEXSTOR_POOL_CRASH_ROUND"
	crashBase     = 4       // base replicas, one writer goroutine each
	crashSize     = 2 * mib // size of each base replica
	crashBlock    = 512
	crashBlocks   = crashSize / crashBlock
	crashRounds   = 24
	crashFence    = "fence" // the replica the child claims
)

var crashOwners = [2]uuid.UUID{
	uuid.MustParse("c1a1c1a1-0000-4000-8000-00000000000a"),
	uuid.MustParse("c1a1c1a1-0000-4000-8000-00000000000b"),
}

func crashName(i int) string { return fmt.Sprintf("base%d", i) }

// stamp fills block blk of base replica ri with the content of write id:
// a header naming all three, then bytes derived from them, so any block can
// be attributed to exactly one write (or recognised as garbage).
func stamp(b []byte, id uint64, ri int, blk int64) {
	binary.LittleEndian.PutUint64(b[0:], id)
	binary.LittleEndian.PutUint64(b[8:], uint64(ri))
	binary.LittleEndian.PutUint64(b[16:], uint64(blk))
	// The rest repeats one word derived from all three: cheap to build and
	// compare, and still unique to this (write, replica, block).
	x := id*0x9e3779b97f4a7c15 ^ uint64(ri)<<56 ^ uint64(blk)*0xbf58476d1ce4e5b9
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	binary.LittleEndian.PutUint64(b[24:], x^x>>31)
	for k := 8; 24+k < len(b); k *= 2 {
		copy(b[24+k:], b[24:24+k])
	}
}

// TestCrashChild is the child side; it does nothing unless started by TestCrash.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("runs only as the child of TestCrash")
	}
	round, _ := strconv.ParseUint(os.Getenv(crashRoundEnv), 10, 32)
	die := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "crash child: "+format+"\n", args...)
		os.Exit(3)
	}
	dev, err := bdev.OpenFile(filepath.Join(dir, "pool.img"), bdev.FileOptions{})
	if err != nil {
		die("open: %v", err)
	}
	p, err := Import(dev)
	if err != nil {
		die("import: %v", err)
	}
	jf, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("journal-%d", round)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		die("journal: %v", err)
	}
	var jmu sync.Mutex
	journal := func(lines ...string) {
		jmu.Lock()
		defer jmu.Unlock()
		if _, err := jf.WriteString(strings.Join(lines, "")); err != nil {
			die("journal: %v", err)
		}
		if err := jf.Sync(); err != nil {
			die("journal sync: %v", err)
		}
	}
	var ids atomic.Uint64
	ids.Store(round << 32)
	fmt.Println("ready")

	go crashClaims(p, round, journal, die)
	go crashSnaps(p, round, journal, die)

	for ri := range crashBase {
		go func() {
			rng := rand.New(rand.NewPCG(round, uint64(ri)))
			h, err := p.OpenReplica(crashName(ri))
			if err != nil {
				die("open replica: %v", err)
			}
			buf := make([]byte, 64*crashBlock)
			var pending []string
			for {
				n := 1 + rng.Int64N(64)
				blk := rng.Int64N(crashBlocks - n + 1)
				id := ids.Add(1)
				switch op := rng.IntN(40); {
				case op == 0: // unmap (whole clusters, partial ones, or both)
					journal(fmt.Sprintf("U %d %d %d %d\n", id, ri, blk, n))
					if err := h.Unmap(blk*crashBlock, n*crashBlock); err != nil {
						die("unmap: %v", err)
					}
					pending = append(pending, fmt.Sprintf("u %d %d %d %d\n", id, ri, blk, n))
				case op < 6:
					if err := h.Flush(); err != nil {
						die("flush: %v", err)
					}
					journal(pending...)
					pending = pending[:0]
				default:
					for k := range n {
						stamp(buf[k*crashBlock:(k+1)*crashBlock], id, ri, blk+k)
					}
					if _, err := h.WriteAt(buf[:n*crashBlock], blk*crashBlock); err != nil {
						die("write: %v", err)
					}
					pending = append(pending, fmt.Sprintf("w %d %d %d %d\n", id, ri, blk, n))
				}
			}
		}()
	}
	// Meanwhile, create, use, grow and destroy short-lived replicas.
	rng := rand.New(rand.NewPCG(round, 99))
	kept := 0
	for n := 0; ; n++ {
		name := fmt.Sprintf("tmp-%d-%d", round, n)
		thin := rng.IntN(2) == 0
		journal("C " + name + "\n")
		if _, err := p.CreateReplica(ReplicaOptions{Name: name, Size: 512 * kib, Thin: thin}); err != nil {
			die("create %s: %v", name, err)
		}
		journal("c " + name + "\n")
		h, err := p.OpenReplica(name)
		if err != nil {
			die("open %s: %v", name, err)
		}
		// Stamped as if from replica 99, so that a cluster passing from a
		// destroyed temporary replica to a base one without being zeroed
		// shows as foreign data there.
		buf := make([]byte, 64*kib)
		for k := range int64(len(buf) / crashBlock) {
			stamp(buf[k*crashBlock:(k+1)*crashBlock], 0, 99, k)
		}
		for k := range int64(4) {
			if _, err := h.WriteAt(buf, k*128*kib); err != nil {
				die("write %s: %v", name, err)
			}
		}
		if err := p.ResizeReplica(name, 768*kib); err != nil {
			die("resize %s: %v", name, err)
		}
		_ = h.Close()
		if kept < 4 && rng.IntN(3) == 0 {
			kept++
			continue // keep a few; the parent destroys them
		}
		journal("X " + name + "\n")
		if err := p.DestroyReplica(name); err != nil {
			die("destroy %s: %v", name, err)
		}
		journal("d " + name + "\n")
		time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
	}
}

// crashClaims is the child's claimer: one goroutine taking the fence
// replica through claims (by its owner, or a new one when it is unowned,
// at the same or a higher epoch), raises, releases and disowns, journaling
// each operation before ("K", "R", "L", "O") and after it returns ("k",
// "r", "l", "o"). It checks on the way that a superseded or released
// handle is fenced.
func crashClaims(p *Pool, round uint64, journal func(...string), die func(string, ...any)) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(round, 77))
	h, err := p.OpenReplica(crashFence)
	if err != nil {
		die("open %s: %v", crashFence, err)
	}
	st, err := h.ClaimState(ctx)
	if err != nil {
		die("claim state: %v", err)
	}
	owner, epoch := st.Owner, st.Epoch
	var cur bdev.Claimed
	buf := make([]byte, crashBlock)
	fenced := func(c bdev.Claimed, what string) {
		if _, err := c.WriteAt(buf, 0); !errors.Is(err, bdev.ErrFenced) {
			die("write through a %s handle: %v, want ErrFenced", what, err)
		}
		c.Close()
	}
	for {
		switch op := rng.IntN(8); {
		case op < 4 || cur == nil && op < 6:
			o := owner
			if o == (uuid.UUID{}) {
				o = crashOwners[rng.IntN(2)]
			}
			e := epoch + uint64(rng.IntN(2))
			journal(fmt.Sprintf("K %s %d\n", o, e))
			c, err := h.Claim(ctx, bdev.Claim{Owner: o, Epoch: e})
			if err != nil {
				die("claim by %s at %d: %v", o, e, err)
			}
			journal(fmt.Sprintf("k %s %d\n", o, e))
			if cur != nil {
				fenced(cur, "superseded")
			}
			cur, owner, epoch = c, o, e
			if _, err := cur.WriteAt(buf, int64(rng.IntN(64))*crashBlock); err != nil {
				die("write through the claim: %v", err)
			}
		case op == 4 && cur != nil:
			e := epoch + 1 + uint64(rng.IntN(3))
			journal(fmt.Sprintf("R %d\n", e))
			if err := cur.Raise(ctx, e); err != nil {
				die("raise to %d: %v", e, err)
			}
			journal(fmt.Sprintf("r %d\n", e))
			epoch = e
		case op == 5 && cur != nil:
			journal("L\n")
			if err := cur.Release(ctx); err != nil {
				die("release: %v", err)
			}
			journal("l\n")
			fenced(cur, "released")
			cur, owner = nil, uuid.UUID{}
		default:
			journal("O\n")
			if err := p.Disown(crashFence); err != nil {
				die("disown: %v", err)
			}
			journal("o\n")
			if cur != nil {
				fenced(cur, "disowned")
			}
			cur, owner = nil, uuid.UUID{}
		}
		time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
	}
}

// claimModel is what the parent knows of the fence replica's claim: the
// state after the last acknowledged operation, and the state the one
// operation in flight at the kill would leave, if any.
type claimModel struct {
	owner   uuid.UUID
	epoch   uint64
	pending *claimState
	ops     int // acknowledged operations since the last check
}

// line applies one journal line of the claimer.
func (m *claimModel) line(f []string) error {
	next := claimState{owner: m.owner, epoch: m.epoch}
	switch f[0] {
	case "K", "k":
		if len(f) != 3 {
			return errors.New("want owner and epoch")
		}
		o, err := uuid.Parse(f[1])
		if err != nil {
			return err
		}
		e, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			return err
		}
		next.owner, next.epoch = o, e
	case "R", "r":
		if len(f) != 2 {
			return errors.New("want an epoch")
		}
		e, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return err
		}
		next.epoch = e
	case "L", "l", "O", "o":
		next.owner = uuid.UUID{}
	}
	if f[0] == strings.ToUpper(f[0]) { // begun
		m.pending = &next
		return nil
	}
	if m.pending == nil || *m.pending != next {
		return fmt.Errorf("acknowledged %v without its start", f)
	}
	m.owner, m.epoch, m.pending = next.owner, next.epoch, nil
	m.ops++
	return nil
}

// blockState is what the parent knows about one block of a base replica.
type blockState struct {
	last      uint64 // id of the last flushed write or unmap; 0: none
	lastUnmap bool   // the last flushed operation was an unmap
	unmapIdea uint64 // highest id of an unmap that may have run (flushed or not)
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "pool.img")
	f, err := bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: 32 * mib})
	if err != nil {
		t.Fatal(err)
	}
	p := mustCreate(t, f, CreateOptions{Name: "crash"})
	for i := range crashBase {
		mustReplica(t, p, crashName(i), crashSize, true)
	}
	mustReplica(t, p, crashFence, 256*kib, true)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	model := make([][]blockState, crashBase)
	for i := range model {
		model[i] = make([]blockState, crashBlocks)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("kill schedule seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var lines, killedReady int
	var claims claimModel
	snaps := newSnapModel()
	claimRounds := 0
	for round := 1; round <= crashRounds; round++ {
		waitReady := rng.IntN(4) != 0
		delay := time.Duration(rng.IntN(250)) * time.Millisecond
		t0 := time.Now()
		ready := runCrashChild(t, exe, dir, round, waitReady, delay)
		t1 := time.Now()
		if ready {
			killedReady++
		}
		n, temps := readJournal(t, filepath.Join(dir, fmt.Sprintf("journal-%d", round)), model, &claims, snaps)
		lines += n
		f, err := bdev.OpenFile(path, bdev.FileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, err := Import(f)
		if err != nil {
			t.Fatalf("round %d: import after kill: %v", round, err)
		}
		if err := p.Check(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		t2 := time.Now()
		claimRounds += verifyClaims(t, round, p, &claims)
		verifyBase(t, round, p, model)
		verifySnaps(t, round, p, snaps)
		t3 := time.Now()
		verifyTemps(t, round, p, temps)
		t4 := time.Now()
		if err := p.Check(); err != nil {
			t.Fatalf("round %d after cleanup: %v", round, err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if os.Getenv("NEXSTOR_POOL_TEST_LOG") != "" {
			t.Logf("round %d: child %v, import %v, base %v, temps %v, close %v", round, t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), t4.Sub(t3), time.Since(t4))
		}
	}
	t.Logf("%d rounds (%d killed after import), %d journal lines verified, %d rounds with claim operations; "+
		"%d snapshots and %d clones verified, %d clone blocks checked against their snapshot, %d snapshot operations",
		crashRounds, killedReady, lines, claimRounds, snaps.snapChecks, snaps.cloneChecks, snaps.fromSnap, snaps.ops)
	if killedReady == 0 || lines == 0 || claimRounds == 0 || snaps.snapChecks == 0 || snaps.cloneChecks == 0 || snaps.ops == 0 {
		t.Fatalf("the child never got to work: %d rounds killed after import, %d journal lines, %d rounds with claims", killedReady, lines, claimRounds)
	}
}

// runCrashChild starts the child, kills it after delay (counted from its
// "ready" line when waitReady), and reports whether it had become ready.
func runCrashChild(t *testing.T, exe, dir string, round int, waitReady bool, delay time.Duration) bool {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashRoundEnv+"="+strconv.Itoa(round))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readyc := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		r := false
		for sc.Scan() {
			if sc.Text() == "ready" && !r {
				r = true
				readyc <- true
			}
		}
		if !r {
			readyc <- false
		}
	}()
	ready := false
	if waitReady {
		select {
		case ready = <-readyc:
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: child not ready after a minute", round)
		}
	}
	time.Sleep(delay)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("round %d: child ended on its own (%v): %s", round, err, stderr.String())
	}
	if !waitReady {
		select {
		case ready = <-readyc:
		default:
		}
	}
	return ready
}

// verifyClaims checks the fence replica's owner and epoch against the
// claim model: the last acknowledged state, or that of the operation in
// flight at the kill. The model then takes the state found. It returns 1
// when the round journaled any claim operation.
func verifyClaims(t *testing.T, round int, p *Pool, m *claimModel) int {
	t.Helper()
	ri, err := p.ReplicaInfo(crashFence)
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	got := claimState{owner: ri.Owner, epoch: ri.Epoch}
	acked := claimState{owner: m.owner, epoch: m.epoch}
	if got != acked && (m.pending == nil || got != *m.pending) {
		t.Fatalf("round %d: fence replica owned by %s at epoch %d; acknowledged %s at %d, in flight %+v",
			round, got.owner, got.epoch, acked.owner, acked.epoch, m.pending)
	}
	did := 0
	if m.ops > 0 {
		did = 1
	}
	*m = claimModel{owner: got.owner, epoch: got.epoch}
	return did
}

// readJournal applies a round's journal to the model and returns the
// number of lines and the temporary replicas' last events. A last line
// without its newline was cut by the kill and is ignored.
func readJournal(t *testing.T, path string, model [][]blockState, claims *claimModel, snaps *snapModel) (int, map[string]string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	temps := map[string]string{}
	n := 0
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		n++
		f := strings.Fields(line)
		switch f[0] {
		case "C", "c", "X", "d":
			temps[f[1]] = f[0]
		case "K", "k", "R", "r", "L", "l", "O", "o":
			if err := claims.line(f); err != nil {
				t.Fatalf("journal line %q: %v", line, err)
			}
		case "S", "s", "SX", "sx", "N", "n", "NX", "nx", "CW", "cw":
			if err := snaps.line(f); err != nil {
				t.Fatalf("journal line %q: %v", line, err)
			}
		case "w", "u", "U":
			var id, ri, blk, cnt uint64
			if _, err := fmt.Sscanf(line[2:], "%d %d %d %d", &id, &ri, &blk, &cnt); err != nil {
				t.Fatalf("journal line %q: %v", line, err)
			}
			for b := blk; b < blk+cnt; b++ {
				s := &model[ri][b]
				switch f[0] {
				case "U":
					s.unmapIdea = max(s.unmapIdea, id)
				default:
					s.last, s.lastUnmap = id, f[0] == "u"
				}
			}
		default:
			t.Fatalf("journal line %q", line)
		}
	}
	return n, temps
}

// verifyBase checks every block of the base replicas: it holds its last
// flushed version or a later write's, never an older or foreign one, and
// reads as zeroes only when nothing was flushed to it or an unmap may have.
func verifyBase(t *testing.T, round int, p *Pool, model [][]blockState) {
	t.Helper()
	buf := make([]byte, crashSize)
	want := make([]byte, crashBlock)
	zero := make([]byte, crashBlock)
	for ri := range crashBase {
		h, err := p.OpenReplica(crashName(ri))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if _, err := h.ReadAt(buf, 0); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		_ = h.Close()
		for b := range int64(crashBlocks) {
			got := buf[b*crashBlock : (b+1)*crashBlock]
			s := model[ri][b]
			if bytes.Equal(got, zero) {
				if s.last != 0 && !s.lastUnmap && s.unmapIdea < s.last {
					t.Fatalf("round %d: %s block %d reads zeroes; flushed write %#x lost", round, crashName(ri), b, s.last)
				}
				continue
			}
			id := binary.LittleEndian.Uint64(got)
			stamp(want, id, ri, b)
			if !bytes.Equal(got, want) {
				t.Fatalf("round %d: %s block %d holds garbage or another block's data (header id %#x replica %d block %d)",
					round, crashName(ri), b, id, binary.LittleEndian.Uint64(got[8:]), binary.LittleEndian.Uint64(got[16:]))
			}
			if id < s.last || (id == s.last && s.lastUnmap) {
				t.Fatalf("round %d: %s block %d holds write %#x, older than the flushed %#x", round, crashName(ri), b, id, s.last)
			}
		}
	}
}

// verifyTemps checks the short-lived replicas against their journal events
// and destroys the survivors.
func verifyTemps(t *testing.T, round int, p *Pool, temps map[string]string) {
	t.Helper()
	exists := map[string]bool{}
	for _, ri := range p.Replicas() {
		exists[ri.Name] = true
	}
	for name, ev := range temps {
		if ev == "c" && !exists[name] {
			t.Fatalf("round %d: replica %s lost: its creation was acknowledged", round, name)
		}
	}
	for _, ri := range p.Replicas() {
		if ri.Name == crashFence || strings.HasPrefix(ri.Name, "clone-") {
			continue
		}
		if strings.HasPrefix(ri.Name, "base") {
			if ri.Size != crashSize {
				t.Fatalf("round %d: %s has size %d", round, ri.Name, ri.Size)
			}
			continue
		}
		if strings.HasPrefix(ri.Name, fmt.Sprintf("tmp-%d-", round)) && temps[ri.Name] == "" {
			t.Fatalf("round %d: replica %s exists but was never created", round, ri.Name)
		}
		if temps[ri.Name] == "d" {
			t.Fatalf("round %d: replica %s exists after its destroy was acknowledged", round, ri.Name)
		}
		if ri.Size != 512*kib && ri.Size != 768*kib {
			t.Fatalf("round %d: replica %s has size %d", round, ri.Name, ri.Size)
		}
		if err := p.DestroyReplica(ri.Name); err != nil {
			t.Fatal(err)
		}
	}
}

// crashSnaps is the child's snapshot worker: it takes snapshots of the
// base replicas (while their writers run), clones them, writes to the
// clones, and deletes snapshots and clones, journaling each operation
// before ("S", "N", "CW", "SX", "NX") and after it returns ("s" with the
// snapshot's digest, "n", "cw" once flushed, "sx", "nx").
func crashSnaps(p *Pool, round uint64, journal func(...string), die func(string, ...any)) {
	rng := rand.New(rand.NewPCG(round, 55))
	var snaps, clones []string
	for _, si := range p.Snapshots() {
		snaps = append(snaps, si.Name)
	}
	for _, ri := range p.Replicas() {
		if strings.HasPrefix(ri.Name, "clone-") {
			clones = append(clones, ri.Name)
		}
	}
	pick := func(l []string) (string, []string) {
		i := rng.IntN(len(l))
		n := l[i]
		return n, append(l[:i:i], l[i+1:]...)
	}
	buf := make([]byte, 16*crashBlock)
	for n := 0; ; n++ {
		switch op := rng.IntN(10); {
		case op < 3 && len(snaps) < 3:
			name := fmt.Sprintf("snap-%d-%d", round, n)
			ri := rng.IntN(crashBase)
			journal(fmt.Sprintf("S %s %d\n", name, ri))
			if _, err := p.CreateSnapshot(crashName(ri), SnapshotOptions{Name: name}); err != nil {
				die("snapshot %s: %v", name, err)
			}
			h, err := p.OpenSnapshot(name)
			if err != nil {
				die("open snapshot %s: %v", name, err)
			}
			b := make([]byte, h.Size())
			if _, err := h.ReadAt(b, 0); err != nil {
				die("read snapshot %s: %v", name, err)
			}
			_ = h.Close()
			journal(fmt.Sprintf("s %s %x\n", name, sha256.Sum256(b)))
			snaps = append(snaps, name)
		case op < 5 && len(snaps) > 0 && len(clones) < 2:
			name := fmt.Sprintf("clone-%d-%d", round, n)
			snap := snaps[rng.IntN(len(snaps))]
			journal(fmt.Sprintf("N %s %s\n", name, snap))
			if _, err := p.CloneSnapshot(snap, ReplicaOptions{Name: name}); err != nil {
				die("clone %s: %v", name, err)
			}
			journal(fmt.Sprintf("n %s %s\n", name, snap))
			clones = append(clones, name)
		case op < 8 && len(clones) > 0:
			name := clones[rng.IntN(len(clones))]
			h, err := p.OpenReplica(name)
			if err != nil {
				die("open clone %s: %v", name, err)
			}
			cnt := 1 + rng.Int64N(16)
			blk := rng.Int64N(crashBlocks - cnt + 1)
			id := round<<32 | 1<<31 | uint64(n)
			ri := cloneStampID(name)
			for k := range cnt {
				stamp(buf[k*crashBlock:(k+1)*crashBlock], id, ri, blk+k)
			}
			journal(fmt.Sprintf("CW %s %d %d %d\n", name, id, blk, cnt))
			if _, err := h.WriteAt(buf[:cnt*crashBlock], blk*crashBlock); err != nil {
				die("write clone %s: %v", name, err)
			}
			if err := h.Flush(); err != nil {
				die("flush clone %s: %v", name, err)
			}
			_ = h.Close()
			journal(fmt.Sprintf("cw %s %d %d %d\n", name, id, blk, cnt))
		case op == 8 && len(snaps) > 0:
			var name string
			name, snaps = pick(snaps)
			journal("SX " + name + "\n")
			if err := p.DeleteSnapshot(name); err != nil {
				die("delete snapshot %s: %v", name, err)
			}
			journal("sx " + name + "\n")
		case op == 9 && len(clones) > 0:
			var name string
			name, clones = pick(clones)
			journal("NX " + name + "\n")
			if err := p.DestroyReplica(name); err != nil {
				die("delete clone %s: %v", name, err)
			}
			journal("nx " + name + "\n")
		}
		time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
	}
}

// cloneStampID is the replica number clone blocks are stamped with: 1000
// plus a hash of the clone's name, so they never pass for a base block.
func cloneStampID(name string) int {
	h := sha256.Sum256([]byte(name))
	return 1000 + int(binary.LittleEndian.Uint16(h[:]))
}

// snapModel is what the parent knows of the snapshots and clones.
type snapModel struct {
	// snaps: name -> digest ("" while unknown); an entry exists once its
	// creation began. snapState: "S" creating, "s" acknowledged, "SX"
	// being deleted, "sx" deleted.
	snaps     map[string]string
	snapState map[string]string
	clones    map[string]*cloneModel
	// What was verified: snapshots and clones found and checked, clone
	// blocks compared with their snapshot, operations journaled.
	snapChecks, cloneChecks, fromSnap, ops int
}

type cloneModel struct {
	state  string // "N", "n", "NX", "nx"
	origin string
	// last flushed write id per block; touched: blocks any write began on.
	last    map[int64]uint64
	touched map[int64]bool
}

func newSnapModel() *snapModel {
	return &snapModel{snaps: map[string]string{}, snapState: map[string]string{}, clones: map[string]*cloneModel{}}
}

func (m *snapModel) line(f []string) error {
	m.ops++
	switch f[0] {
	case "S", "SX", "sx":
		if f[0] == "S" {
			m.snaps[f[1]] = ""
		}
		m.snapState[f[1]] = f[0]
	case "s":
		if len(f) != 3 {
			return errors.New("want a digest")
		}
		m.snaps[f[1]], m.snapState[f[1]] = f[2], "s"
	case "N":
		m.clones[f[1]] = &cloneModel{state: "N", origin: f[2], last: map[int64]uint64{}, touched: map[int64]bool{}}
	case "n", "NX", "nx":
		c := m.clones[f[1]]
		if c == nil {
			return errors.New("clone never created")
		}
		c.state = f[0]
	case "CW", "cw":
		c := m.clones[f[1]]
		if c == nil {
			return errors.New("clone never created")
		}
		var id uint64
		var blk, cnt int64
		if _, err := fmt.Sscanf(strings.Join(f[2:], " "), "%d %d %d", &id, &blk, &cnt); err != nil {
			return err
		}
		for b := blk; b < blk+cnt; b++ {
			if f[0] == "CW" {
				c.touched[b] = true
			} else {
				c.last[b] = id
			}
		}
	}
	return nil
}

// verifySnaps checks the snapshots and clones against the model, then
// makes the model match the pool (operations in flight at the kill went
// one way or the other).
func verifySnaps(t *testing.T, round int, p *Pool, m *snapModel) {
	t.Helper()
	present := map[string]bool{}
	for _, si := range p.Snapshots() {
		present[si.Name] = true
		if _, known := m.snaps[si.Name]; !known {
			t.Fatalf("round %d: snapshot %s exists but was never taken", round, si.Name)
		}
		if m.snapState[si.Name] == "sx" {
			t.Fatalf("round %d: snapshot %s exists after its deletion was acknowledged", round, si.Name)
		}
		d := fmt.Sprintf("%x", snapDigest(t, p, si.Name))
		if want := m.snaps[si.Name]; want != "" && d != want {
			t.Fatalf("round %d: snapshot %s changed: digest %s, taken with %s", round, si.Name, d, want)
		}
		m.snaps[si.Name], m.snapState[si.Name] = d, "s"
		m.snapChecks++
	}
	for name, st := range m.snapState {
		if !present[name] {
			if st == "s" {
				t.Fatalf("round %d: snapshot %s lost: its creation was acknowledged", round, name)
			}
			delete(m.snaps, name)
			delete(m.snapState, name)
		}
	}
	clonePresent := map[string]bool{}
	want := make([]byte, crashBlock)
	for _, ri := range p.Replicas() {
		if !strings.HasPrefix(ri.Name, "clone-") {
			continue
		}
		clonePresent[ri.Name] = true
		c := m.clones[ri.Name]
		if c == nil || c.state == "nx" {
			t.Fatalf("round %d: clone %s exists but was never made, or after its deletion was acknowledged", round, ri.Name)
		}
		c.state = "n"
		h := mustOpen(t, p, ri.Name)
		b := readAll(t, h)
		h.Close()
		var sb []byte
		if m.snapState[c.origin] == "s" {
			sh, err := p.OpenSnapshot(c.origin)
			if err != nil {
				t.Fatal(err)
			}
			sb = readAll(t, sh)
			sh.Close()
		}
		cri := cloneStampID(ri.Name)
		for blk := range int64(crashBlocks) {
			got := b[blk*crashBlock : (blk+1)*crashBlock]
			id := binary.LittleEndian.Uint64(got)
			stamp(want, id, cri, blk)
			switch {
			case bytes.Equal(got, want):
				if !c.touched[blk] || id < c.last[blk] {
					t.Fatalf("round %d: clone %s block %d holds write %#x, flushed %#x, touched %v", round, ri.Name, blk, id, c.last[blk], c.touched[blk])
				}
			case c.last[blk] != 0:
				t.Fatalf("round %d: clone %s block %d lost flushed write %#x", round, ri.Name, blk, c.last[blk])
			case sb != nil:
				if !bytes.Equal(got, sb[blk*crashBlock:(blk+1)*crashBlock]) {
					t.Fatalf("round %d: clone %s block %d differs from its snapshot %s and was never written", round, ri.Name, blk, c.origin)
				}
				m.fromSnap++
			default:
				// The snapshot is gone: the block is still a base block.
				if !bytes.Equal(got, make([]byte, crashBlock)) {
					stamp(want, id, int(binary.LittleEndian.Uint64(got[8:])), blk)
					if !bytes.Equal(got, want) || binary.LittleEndian.Uint64(got[8:]) >= crashBase {
						t.Fatalf("round %d: clone %s block %d holds garbage", round, ri.Name, blk)
					}
				}
			}
		}
		m.cloneChecks++
	}
	for name, c := range m.clones {
		if !clonePresent[name] {
			if c.state == "n" {
				t.Fatalf("round %d: clone %s lost: its creation was acknowledged", round, name)
			}
			delete(m.clones, name)
		}
	}
}
