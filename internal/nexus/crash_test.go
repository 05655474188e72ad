package nexus

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// The crash test runs a nexus in a child process (this test binary,
// re-executed into TestCrashNexusProcess) over file-backed children and the file
// health store, SIGKILLs it in the middle of its workload, and recreates the
// nexus from the store in the parent.

const (
	crashSize    = 8 << 20
	crashWriters = 4
	envCrashDir  = "NEXUS_CRASH_DIR"
)

type fileOpener struct{ dir string }

func (o fileOpener) Open(_ context.Context, uri string) (bdev.Device, error) {
	name := strings.TrimPrefix(uri, "bdev:///")
	return bdev.OpenFile(filepath.Join(o.dir, name+".img"), bdev.FileOptions{Create: true, Size: crashSize})
}

func crashURI(i int) string { return fmt.Sprintf("bdev:///c%d", i) }

// TestCrashNexusProcess is the child process: it serves a nexus and writes until
// killed. Commands come from the environment; progress goes to stdout.
func TestCrashNexusProcess(t *testing.T) {
	dir := os.Getenv(envCrashDir)
	if dir == "" {
		t.Skip("only run as the child process of TestCrashRecovery")
	}
	round, _ := strconv.Atoi(os.Getenv("NEXUS_CRASH_ROUND"))
	children := strings.Split(os.Getenv("NEXUS_CRASH_CHILDREN"), ",")
	store, err := NewFileStore(filepath.Join(dir, "store"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	ctx := context.Background()
	nx, err := New(ctx, Config{UUID: "crash-nexus", Children: children, Store: store,
		Opener: fileOpener{dir}, RebuildSegment: 256 << 10, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	// Without a health record (round 1) the nexus rebuilds every child
	// but one from it before they count as current.
	for _, r := range nx.Rebuilds() {
		if st, err := nx.WaitRebuild(ctx, r.Child); err != nil || st.State != RebuildCompleted {
			fmt.Println("error rebuild", st, err)
			os.Exit(1)
		}
	}
	journal, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("journal-%d", round)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	var acked []string
	region := int64(crashSize/unit) / crashWriters
	for id := range crashWriters {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(round), uint64(id)))
			buf := make([]byte, 4*unit)
			ver := uint64(round)<<48 | uint64(id)<<40
			for {
				n := int64(1 + rng.IntN(4))
				first := int64(id)*region + rng.Int64N(region-n+1)
				ver++
				stamp(buf[:n*unit], first*unit, ver)
				if _, err := nx.WriteAt(buf[:n*unit], first*unit); err != nil {
					fmt.Println("error write", err)
					os.Exit(1)
				}
				mu.Lock()
				for k := range n {
					acked = append(acked, fmt.Sprintf("%d %d\n", first+k, ver))
				}
				mu.Unlock()
			}
		}()
	}
	for flushes := 1; ; flushes++ {
		mu.Lock()
		batch := acked
		acked = nil
		mu.Unlock()
		// Everything in batch was acknowledged before this flush: after
		// it returns, it is durable and may be journaled.
		if err := nx.Flush(); err != nil {
			fmt.Println("error flush", err)
			os.Exit(1)
		}
		journal.WriteString(strings.Join(batch, "") + "F\n")
		journal.Sync()
		fmt.Println("flushed", flushes)
		if flushes == 20 {
			switch round {
			case 1:
				err = nx.FaultChild(ctx, crashURI(2), "")
				fmt.Println("faulted", err)
			case 2:
				err = nx.AddChild(ctx, crashURI(2))
				fmt.Println("rebuilding", err)
			case 3:
				err = nx.OfflineChild(ctx, crashURI(1))
				fmt.Println("offline", err)
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// runCrashRound starts the child process, waits until it reports its
// round's admin step and some flushes after it, and SIGKILLs it.
func runCrashRound(t *testing.T, dir string, round int, children []string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashNexusProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashDir+"="+dir,
		"NEXUS_CRASH_ROUND="+strconv.Itoa(round), "NEXUS_CRASH_CHILDREN="+strings.Join(children, ","))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Round 2 dies soon after the rebuild starts, to catch it half done
	// when the machine is fast.
	stepFlushes := 15
	if round == 2 {
		stepFlushes = 1
	}
	afterStep := -1
	timeout := time.After(60 * time.Second)
	for afterStep < stepFlushes {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("round %d: the nexus process exited early", round)
			}
			switch {
			case strings.HasPrefix(l, "error"):
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: %s", round, l)
			case strings.HasPrefix(l, "faulted"), strings.HasPrefix(l, "rebuilding"), strings.HasPrefix(l, "offline"):
				if l != strings.Fields(l)[0]+" <nil>" {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("round %d: %s", round, l)
				}
				afterStep = 0
			case strings.HasPrefix(l, "flushed") && afterStep >= 0:
				afterStep++
			}
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: no progress", round)
		}
	}
	// Mid-write: the writers never pause.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines {
		}
	}()
	cmd.Wait()
}

// readJournal merges the flushed part of a round's journal into want.
func readJournal(t *testing.T, path string, want map[int64]uint64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pending [][2]uint64
	for _, l := range strings.Split(string(b), "\n") {
		if l == "F" {
			for _, p := range pending {
				if p[1] > want[int64(p[0])] {
					want[int64(p[0])] = p[1]
				}
			}
			pending = pending[:0]
			continue
		}
		var u, v uint64
		if _, err := fmt.Sscanf(l, "%d %d", &u, &v); err == nil {
			pending = append(pending, [2]uint64{u, v})
		}
	}
}

// checkCrashChild checks that every flushed write reads back from the child
// file: each journaled unit holds its version or a later one, and every
// unit is either zeroes or a well-formed stamp of its own offset.
func checkCrashChild(t *testing.T, path string, want map[int64]uint64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	exp := make([]byte, unit)
	zero := make([]byte, unit)
	for u := int64(0); u < crashSize/unit; u++ {
		got := b[u*unit : (u+1)*unit]
		ver := binary.LittleEndian.Uint64(got[8:])
		if string(got) == string(zero) {
			if want[u] != 0 {
				t.Fatalf("%s: unit %d is zeroes, want version >= %#x", filepath.Base(path), u, want[u])
			}
			continue
		}
		stamp(exp, u*unit, ver)
		if string(got) != string(exp) {
			t.Fatalf("%s: unit %d is not a well-formed stamp (offset %d version %#x)", filepath.Base(path), u, binary.LittleEndian.Uint64(got), ver)
		}
		if ver < want[u] {
			t.Fatalf("%s: unit %d has version %#x, older than the flushed %#x", filepath.Base(path), u, ver, want[u])
		}
	}
}

func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	store, err := NewFileStore(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := map[int64]uint64{}
	all := []string{crashURI(0), crashURI(1), crashURI(2)}
	recreate := func(children []string, force bool) (*Nexus, error) {
		return New(ctx, Config{UUID: "crash-nexus", Children: children, Store: store, Opener: fileOpener{dir},
			RebuildSegment: 256 << 10, Force: force, Logger: slog.New(slog.DiscardHandler)})
	}
	// resynced waits for the resync that follows a crash and checks that
	// the children agree afterwards.
	resynced := func(nx *Nexus) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := nx.WaitResync(wctx); err != nil {
			t.Fatal(err)
		}
		rep, err := nx.Verify(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Mismatches) != 0 {
			t.Fatalf("children differ after the resync: %+v", rep.Mismatches)
		}
		t.Logf("resync repaired %d bytes", nx.Stats().ResyncRepaired)
	}
	check := func(children []string) {
		t.Helper()
		for _, c := range children {
			checkCrashChild(t, filepath.Join(dir, strings.TrimPrefix(c, "bdev:///")+".img"), want)
		}
	}

	// Round 1: three children; c2 is faulted mid-run, then the process dies.
	runCrashRound(t, dir, 1, all)
	readJournal(t, filepath.Join(dir, "journal-1"), want)
	if len(want) == 0 {
		t.Fatal("round 1 journaled nothing")
	}
	_, err = recreate(all, false)
	var se *StaleChildError
	if !errors.As(err, &se) || len(se.Children) != 1 || se.Children[0].URI != crashURI(2) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("recreating over the faulted child: %v", err)
	}
	nx, err := recreate(all[:2], false)
	if err != nil {
		t.Fatal(err)
	}
	if !nx.UncleanShutdown() {
		t.Fatal("a killed nexus is not reported as crashed")
	}
	resynced(nx)
	for _, c := range nx.Children() {
		if c.State != StateOnline {
			t.Fatalf("children %+v", nx.Children())
		}
	}
	nx.Close()
	check(all[:2])

	// Round 2: c2 is added back and rebuilt while writing; the process
	// dies during or after the rebuild.
	runCrashRound(t, dir, 2, all[:2])
	readJournal(t, filepath.Join(dir, "journal-2"), want)
	rec, err := store.Load(ctx, "crash-nexus")
	if err != nil {
		t.Fatal(err)
	}
	c2 := rec.Children[2].State
	nx, err = recreate(all, false)
	switch c2 {
	case StateRebuilding:
		if !errors.Is(err, ErrStaleChild) {
			t.Fatalf("recreating over a half-rebuilt child: %v", err)
		}
		t.Log("killed during the rebuild: the half-rebuilt child is refused")
		if nx, err = recreate(all[:2], false); err != nil {
			t.Fatal(err)
		}
		resynced(nx)
		if err := nx.AddChild(ctx, crashURI(2)); err != nil {
			t.Fatal(err)
		}
		if st := waitRebuild(t, nx, crashURI(2)); st.State != RebuildCompleted {
			t.Fatalf("rebuild %+v", st)
		}
	case StateOnline:
		if err != nil {
			t.Fatal(err)
		}
		resynced(nx)
		t.Log("killed after the rebuild completed")
	default:
		t.Fatalf("c2 recorded as %s", c2)
	}
	nx.Close()
	check(all)

	// Round 3: c1 goes offline mid-run; recreated, it is still offline with
	// its bitmap, and a partial rebuild brings it back.
	runCrashRound(t, dir, 3, all)
	readJournal(t, filepath.Join(dir, "journal-3"), want)
	nx, err = recreate(all, false)
	if err != nil {
		t.Fatal(err)
	}
	resynced(nx)
	cs := nx.Children()
	if cs[1].State != StateOffline || cs[1].DirtyBytes == 0 {
		t.Fatalf("children %+v", cs)
	}
	if err := nx.OnlineChild(ctx, crashURI(1)); err != nil {
		t.Fatal(err)
	}
	// The writer may have touched every segment while c1 was away, so the
	// partial rebuild is checked against the bitmap, not the device size.
	st := waitRebuild(t, nx, crashURI(1))
	if st.State != RebuildCompleted || !st.Partial || st.Total != cs[1].DirtyBytes {
		t.Fatalf("partial rebuild %+v, want exactly the %d dirty bytes", st, cs[1].DirtyBytes)
	}
	resynced(nx)
	nx.Close()
	check(all)
}
