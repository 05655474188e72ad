package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/testutil"
)

// The tests of this file are the engine pieces volumes use: replicas owned
// from their creation, a stable host NQN, the system health store, and
// growing a nexus online.

// TestCreateReplicaOwned: a replica created for an owner is owned from the
// start, durably; only that owner's nexus may use it, and destroying or
// resizing it needs that owner. A repeat with the same spec returns it,
// with another owner is AlreadyExists naming the owner.
func TestCreateReplicaOwned(t *testing.T) {
	dir := t.TempDir()
	r := localEngine(t, dir, nil)
	e := r.e
	ctx := context.Background()
	owner := uuid.NewString()
	other := uuid.NewString()
	id := uuid.NewString()
	spec := CreateReplicaOptions{Name: "r0", Pool: "p0", Size: safetySize, Thin: true, UUID: id, Owner: strings.ToUpper(owner)}

	_, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: "bad", Pool: "p0", Size: safetySize, Owner: "not-a-uuid"})
	wantFault(t, err, fault.InvalidArgument, "bad", "not-a-uuid")
	ri, err := e.CreateReplica(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if ri.Owner != owner || ri.Epoch != 0 {
		t.Fatalf("created %+v", ri)
	}
	again, err := e.CreateReplica(ctx, spec)
	if err != nil || again.UUID != id || again.Owner != owner {
		t.Fatalf("repeat: %+v %v", again, err)
	}
	o2 := spec
	o2.Owner = other
	_, err = e.CreateReplica(ctx, o2)
	wantFault(t, err, fault.AlreadyExists, "r0", "owner "+owner)
	o2.Owner = ""
	_, err = e.CreateReplica(ctx, o2)
	wantFault(t, err, fault.AlreadyExists, "r0", "owner "+owner)

	// Destroy and resize need the owner.
	_, err = e.ResizeReplica(ctx, "r0", 2*safetySize, Access{})
	wantFault(t, err, fault.FailedPrecondition, "r0", owner)
	err = e.DestroyReplica(ctx, "r0", Access{Owner: other})
	wantFault(t, err, fault.FailedPrecondition, "r0", owner)
	if _, err := e.ResizeReplica(ctx, "r0", 2*safetySize, Access{Owner: owner}); err != nil {
		t.Fatal(err)
	}

	// Another nexus may not open it; the owner's may.
	_, err = e.CreateNexus(ctx, CreateNexusOptions{Name: "thief", UUID: other, Children: []string{"bdev:///" + id}})
	wantFault(t, err, fault.FailedPrecondition, "thief", owner)
	ni, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", UUID: owner, Children: []string{"bdev:///" + id}})
	if err != nil {
		t.Fatal(err)
	}
	if ni.State != NexusOnline {
		t.Fatalf("owner's nexus %+v", ni)
	}
	if err := e.DestroyNexus(ctx, "n0"); err != nil {
		t.Fatal(err)
	}

	// Created owned, without a nexus ever claiming it: still owned after
	// a restart (the pool's create record holds it).
	if _, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: "r1", Pool: "p0", Size: safetySize, Thin: true, Owner: owner}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	r.e, err = New(Config{DataDir: filepath.Join(dir, "data"), Backend: PoolBackend{}, NBD: r.nbd, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ri, err = r.e.Replica("r1")
	if err != nil || ri.Owner != owner || ri.Epoch != 0 {
		t.Fatalf("after the restart %+v %v", ri, err)
	}
	err = r.e.DestroyReplica(ctx, "r1", Access{})
	wantFault(t, err, fault.FailedPrecondition, "r1", owner)
	if err := r.e.DestroyReplica(ctx, "r1", Access{Owner: owner}); err != nil {
		t.Fatal(err)
	}
}

// TestHostNQNAdmitsNexus: a replica shared only to host X is a child of a
// nexus on an engine whose host NQN is X, and refused to one whose host
// NQN is Y.
func TestHostNQNAdmitsNexus(t *testing.T) {
	const (
		hostX = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555"
		hostY = "nqn.2014-08.org.nvmexpress:uuid:66666666-7777-4888-8999-aaaaaaaaaaaa"
	)
	dir := t.TempDir()
	s, err := StartServer(ServerOptions{DataDir: filepath.Join(dir, "b"), GRPCListen: "127.0.0.1:0",
		NVMfListen: testutil.FreeAddr(t), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(time.Second) })
	ctx := context.Background()
	if _, err := s.Engine.CreatePool(ctx, PoolSpec{Name: "p0", Disk: "malloc:///b?size=64MiB", ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Engine.CreateReplica(ctx, CreateReplicaOptions{Name: "rb", Pool: "p0", Size: safetySize, Thin: true}); err != nil {
		t.Fatal(err)
	}
	rb, err := s.Engine.ShareReplica(ctx, "rb", ProtocolNVMf, []string{hostX})
	if err != nil {
		t.Fatal(err)
	}
	child := rb.Share.URI

	_, err = New(Config{DataDir: filepath.Join(dir, "bad"), Backend: PoolBackend{}, HostNQN: "not an nqn", Logger: quietLogger()})
	wantFault(t, err, fault.InvalidArgument, "not an nqn")

	for _, tc := range []struct {
		host string
		ok   bool
	}{{hostY, false}, {hostX, true}} {
		e, err := New(Config{DataDir: filepath.Join(dir, "a-"+tc.host[len(tc.host)-4:]), Backend: PoolBackend{},
			HostNQN: tc.host, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		ni, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", Children: []string{child}})
		switch {
		case tc.ok && err != nil:
			t.Errorf("host %s: %v", tc.host, err)
		case tc.ok && childOf(t, ni, child).State != nexus.StateOnline:
			t.Errorf("host %s: %+v", tc.host, ni)
		case !tc.ok:
			wantFault(t, err, fault.Unavailable, "n0", child, "host")
		}
		if tc.ok {
			if err := e.DestroyNexus(ctx, "n0"); err != nil {
				t.Error(err)
			}
		}
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}
}

// sysStore is a system health store for tests: a MemStore that counts and
// can be made to fail loads and saves, and that refuses a save whose
// generation does not follow the stored one, as the management service's
// does.
type sysStore struct {
	*nexus.MemStore
	failLoads atomic.Int64 // loads still to fail
	downLoads atomic.Bool  // every load fails
	failSaves atomic.Bool
	loads     atomic.Int64
	mu        sync.Mutex
}

var errSysDown = errors.New("management service unreachable")

func newSysStore() *sysStore { return &sysStore{MemStore: nexus.NewMemStore()} }

func (s *sysStore) Load(ctx context.Context, id string) (nexus.HealthRecord, error) {
	s.loads.Add(1)
	if s.downLoads.Load() || s.failLoads.Add(-1) >= 0 {
		return nexus.HealthRecord{}, errSysDown
	}
	return s.MemStore.Load(ctx, id)
}

func (s *sysStore) Save(ctx context.Context, rec nexus.HealthRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failSaves.Load() {
		return fmt.Errorf("health.stale_generation: nexus %s: generation %d is stale: another nexus of this volume saved its record first", rec.NexusUUID, rec.Generation)
	}
	cur, err := s.MemStore.Load(ctx, rec.NexusUUID)
	if err == nil && cur.Generation != rec.Generation-1 {
		return fmt.Errorf("stale generation %d, stored %d", rec.Generation, cur.Generation)
	}
	return s.MemStore.Save(ctx, rec)
}

// waitRestored waits (bounded) until the nexus is no longer being restored
// and returns it.
func waitRestored(t *testing.T, e *Engine, name string) NexusInfo {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ni, err := e.Nexus(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(ni.Reason, "restoring") {
			return ni
		}
		if time.Now().After(deadline) {
			t.Fatalf("nexus %s still restoring: %+v", name, ni)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSystemHealthStore: a nexus of the system store keeps its record
// there (not in the node's file), is restored from it after a restart
// (retrying a store that is down a moment), stays faulted when the store
// stays unreachable or has no record (its children untouched), and its
// destroy deletes the record there.
func TestSystemHealthStore(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	sys := newSysStore()
	data := filepath.Join(dir, "data")
	var e *Engine
	start := func(store nexus.HealthStore) {
		t.Helper()
		cfg := Config{DataDir: data, Backend: PoolBackend{}, NBD: newMemExporter(), Logger: quietLogger()}
		if store != nil {
			cfg.SystemHealth = store
		}
		var err error
		if e, err = New(cfg); err != nil {
			t.Fatal(err)
		}
	}
	start(nil)
	t.Cleanup(func() { e.Close() })
	if _, err := e.CreatePool(ctx, PoolSpec{Name: "p0", Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "p0.img"), 64<<20), ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	var children []string
	for _, name := range []string{"r1", "r2"} {
		ri, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: name, Pool: "p0", Size: safetySize, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, "bdev:///"+ri.UUID)
	}
	id := uuid.NewString()
	spec := CreateNexusOptions{Name: "n0", UUID: id, Children: children, HealthStore: HealthStoreSystem}
	_, err := e.CreateNexus(ctx, spec)
	wantFault(t, err, fault.FailedPrecondition, "system health store", "--health-store local")
	_, err = e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", UUID: id, Children: children, HealthStore: "etcd"})
	wantFault(t, err, fault.InvalidArgument, "etcd")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	start(sys)
	ni, err := e.CreateNexus(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if ni.State != NexusOnline || ni.HealthStore != HealthStoreSystem {
		t.Fatalf("created %+v", ni)
	}
	if _, err := sys.MemStore.Load(ctx, id); err != nil {
		t.Fatalf("no record in the system store: %v", err)
	}
	if _, err := e.health.Load(ctx, id); !errors.Is(err, nexus.ErrNoRecord) {
		t.Fatalf("a record in the node's file store: %v", err)
	}
	local := spec
	local.HealthStore = ""
	_, err = e.CreateNexus(ctx, local)
	wantFault(t, err, fault.AlreadyExists, "n0", "health store system")
	if again, err := e.CreateNexus(ctx, spec); err != nil || again.UUID != id {
		t.Fatalf("repeat: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(data, StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	var st persistentState
	if err := json.Unmarshal(b, &st); err != nil || len(st.Nexuses) != 1 || st.Nexuses[0].HealthStore != HealthStoreSystem {
		t.Fatalf("state file %s (%v)", b, err)
	}
	dev, err := e.servingNexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(pattern(7), 0); err != nil {
		t.Fatal(err)
	}
	epochs := func() map[string]uint64 {
		t.Helper()
		out := map[string]uint64{}
		for _, name := range []string{"r1", "r2"} {
			ri, err := e.Replica(name)
			if err != nil {
				t.Fatal(err)
			}
			out[name] = ri.Epoch
		}
		return out
	}

	// Restarted with the store down for a few loads: retried, restored.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	sys.failLoads.Store(3)
	start(sys)
	ni = waitRestored(t, e, "n0")
	if ni.State != NexusOnline || ni.Size != safetySize {
		t.Fatalf("restored %+v", ni)
	}
	if dev, err = e.servingNexus("n0"); err != nil {
		t.Fatal(err)
	}
	mustRead(t, dev, 0, pattern(7))
	before := epochs()

	// Restarted with the store down for good: faulted, with the store's
	// error, and the children are not claimed anew.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { systemRestoreTimeout = d }(systemRestoreTimeout)
	systemRestoreTimeout = time.Second
	sys.downLoads.Store(true)
	start(sys)
	if ni, _ := e.Nexus("n0"); ni.State != NexusFaulted {
		t.Fatalf("while restoring: %+v", ni)
	}
	_, err = e.PublishNexus(ctx, "n0", ProtocolNBD, nil)
	wantFault(t, err, fault.Unavailable, "n0")
	ni = waitRestored(t, e, "n0")
	if ni.State != NexusFaulted || !strings.Contains(ni.Reason, errSysDown.Error()) {
		t.Fatalf("with the store down: %+v", ni)
	}
	if got := epochs(); !sameEpochs(got, before) {
		t.Fatalf("children claimed without the record: epochs %v, before %v", got, before)
	}

	// No system store configured any more: faulted, saying so.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	sys.downLoads.Store(false)
	start(nil)
	if ni, _ := e.Nexus("n0"); ni.State != NexusFaulted || !strings.Contains(ni.Reason, "no system health store") {
		t.Fatalf("without a system store: %+v", ni)
	}

	// The record gone from the store (destroyed elsewhere): faulted, the
	// children untouched.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := sys.MemStore.Load(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := sys.MemStore.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	start(sys)
	ni = waitRestored(t, e, "n0")
	if ni.State != NexusFaulted || !strings.Contains(ni.Reason, "not in the system health store") {
		t.Fatalf("without a record: %+v", ni)
	}
	if got := epochs(); !sameEpochs(got, before) {
		t.Fatalf("children claimed without the record: epochs %v, before %v", got, before)
	}

	// Destroying that faulted nexus leaves its children's claims alone:
	// they may be a newer instance's, elsewhere.
	if err := e.DestroyNexus(ctx, "n0"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"r1", "r2"} {
		if ri, err := e.Replica(name); err != nil || ri.Owner != id || ri.Epoch != before[name] {
			t.Fatalf("after destroying the faulted nexus: %+v %v", ri, err)
		}
	}

	// With the record back, the nexus created again over it is online,
	// and a restart restores it; destroying it deletes the record in the
	// system store.
	if err := sys.MemStore.Save(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if ni, err := e.CreateNexus(ctx, spec); err != nil || ni.State != NexusOnline {
		t.Fatalf("created over the record: %+v %v", ni, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	start(sys)
	if ni := waitRestored(t, e, "n0"); ni.State != NexusOnline {
		t.Fatalf("restored again: %+v", ni)
	}
	if err := e.DestroyNexus(ctx, "n0"); err != nil {
		t.Fatal(err)
	}
	if _, err := sys.MemStore.Load(ctx, id); !errors.Is(err, nexus.ErrNoRecord) {
		t.Fatalf("record after destroy: %v", err)
	}
}

func sameEpochs(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestSystemStoreConflictStopsNexus: a save the system store refuses
// because another nexus of the volume saved first stops the nexus, which
// reports the store's reason.
func TestSystemStoreConflictStopsNexus(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	sys := newSysStore()
	rig := &nexusRig{dir: dir, nbd: newMemExporter()}
	e, err := New(Config{DataDir: filepath.Join(dir, "data"), Backend: PoolBackend{}, NBD: rig.nbd, Logger: quietLogger(),
		SystemHealth: sys})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreatePool(ctx, PoolSpec{Name: "p0", Disk: "malloc:///p0?size=64MiB", ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	var children []string
	for _, name := range []string{"r1", "r2"} {
		ri, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: name, Pool: "p0", Size: safetySize, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, "bdev:///"+ri.UUID)
	}
	if _, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", Children: children, HealthStore: HealthStoreSystem}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PublishNexus(ctx, "n0", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	dev := rig.dev(t, "n0")
	if _, err := dev.WriteAt(pattern(1), 0); err != nil {
		t.Fatal(err)
	}
	sys.failSaves.Store(true)
	_, err = e.NexusChildOp(ctx, "n0", ChildOffline, children[1])
	wantFault(t, err, fault.Unavailable, "n0", "another nexus")
	ni, err := e.Nexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	if ni.State != NexusFaulted || !strings.Contains(ni.Reason, "stale_generation") || !strings.Contains(ni.Reason, "another nexus") {
		t.Fatalf("after a refused save: %+v", ni)
	}
	if _, err := dev.WriteAt(pattern(2), 0); !errors.Is(err, nexus.ErrNexusFailed) {
		t.Fatalf("write after a refused save: %v", err)
	}
	// Destroyed, it leaves the record, which may be the other instance's.
	id := ni.UUID
	if err := e.DestroyNexus(ctx, "n0"); err != nil {
		t.Fatal(err)
	}
	if _, err := sys.MemStore.Load(ctx, id); err != nil {
		t.Fatalf("the record after destroying the failed nexus: %v", err)
	}
}

// TestResizeNexusThroughGRPC grows a volume the way the management service
// does, through the engines' gRPC API: replicas created owned (one local,
// one on another node shared over NVMe/TCP), a nexus over them published
// over NVMe/TCP, then the replicas grown by their owner and the nexus
// resized. The connected host gets the namespace-attribute-changed event
// and sees the new size, writes past the old end land on both replicas, and
// the engine restarts with the new size.
func TestResizeNexusThroughGRPC(t *testing.T) {
	const (
		from = 4 << 20
		to   = 12 << 20
	)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := func(name string) *Server {
		s, err := StartServer(ServerOptions{DataDir: filepath.Join(dir, name), GRPCListen: "127.0.0.1:0",
			NVMfListen: testutil.FreeAddr(t), NBDListen: "127.0.0.1:0", Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	client := func(s *Server) *engineclient.Client {
		c, err := engineclient.New(s.GRPCAddr(), engineclient.Options{Insecure: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	b := start("b")
	t.Cleanup(func() { b.Shutdown(time.Second) })
	a := start("a")
	t.Cleanup(func() { a.Shutdown(time.Second) })
	cb, ca := client(b), client(a)
	nexusID := uuid.NewString()
	for _, x := range []struct {
		c    *engineclient.Client
		disk string
	}{{cb, "malloc:///b?size=64MiB"}, {ca, fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "a.img"), 64<<20)}} {
		if _, err := x.c.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: "p0", Disk: x.disk, ClusterSize: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	rb, err := cb.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "rb", Pool: "p0", Size: from, Thin: true,
		Uuid: uuid.NewString(), Owner: nexusID})
	if err != nil || rb.GetOwner() != nexusID {
		t.Fatalf("owned replica on b: %v %v", rb, err)
	}
	if rb, err = cb.ShareReplica(ctx, &enginev1.ShareReplicaRequest{Name: "rb", Protocol: ProtocolNVMf}); err != nil {
		t.Fatal(err)
	}
	ra, err := ca.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "ra", Pool: "p0", Size: from, Thin: true,
		Uuid: uuid.NewString(), Owner: nexusID})
	if err != nil {
		t.Fatal(err)
	}
	local, remote := "bdev:///"+ra.GetUuid(), rb.GetShare().GetUri()
	n, err := ca.CreateNexus(ctx, &enginev1.CreateNexusRequest{Name: "vol", Uuid: nexusID, Children: []string{local, remote}})
	if err != nil || n.GetState() != enginev1.NexusState_NEXUS_STATE_ONLINE {
		t.Fatalf("nexus %v %v", n, err)
	}
	if n, err = ca.PublishNexus(ctx, &enginev1.PublishNexusRequest{Name: "vol", Protocol: ProtocolNVMf}); err != nil {
		t.Fatal(err)
	}
	nqn := "nqn.2024-11.io.nexstor:nexus:" + nexusID
	events := make(chan initiator.Event, 4)
	host, err := initiator.Connect(ctx, a.NVMfAddr(), nqn, initiator.Options{IOQueues: 1, MaxReconnect: 1,
		OnEvent: func(ev initiator.Event) { events <- ev }})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	ns, err := host.Namespace(1)
	if err != nil || ns.Size() != from {
		t.Fatalf("namespace %v", err)
	}
	if _, err := ns.WriteAt(pattern(3), 0); err != nil {
		t.Fatal(err)
	}

	// Refusals, through gRPC, with nothing changed.
	_, err = ca.ResizeNexus(ctx, &enginev1.ResizeNexusRequest{Name: "vol", Size: to})
	wantFault(t, err, fault.FailedPrecondition, "vol", "grow")
	_, err = ca.ResizeNexus(ctx, &enginev1.ResizeNexusRequest{Name: "vol", Size: from / 2})
	wantFault(t, err, fault.InvalidArgument, "vol")
	_, err = ca.ResizeNexus(ctx, &enginev1.ResizeNexusRequest{Name: "vol", Size: from + 100})
	wantFault(t, err, fault.InvalidArgument, "vol", "block")
	_, err = ca.ResizeNexus(ctx, &enginev1.ResizeNexusRequest{Name: "nope", Size: to})
	wantFault(t, err, fault.NotFound, "nope")
	if n, err := ca.ResizeNexus(ctx, &enginev1.ResizeNexusRequest{Name: "vol", Size: from}); err != nil || n.GetSize() != from {
		t.Fatalf("resize to the same size: %v %v", n, err)
	}
	// Growing a replica needs its owner.
	_, err = cb.ResizeReplica(ctx, &enginev1.ResizeReplicaRequest{Name: "rb", Size: to})
	wantFault(t, err, fault.FailedPrecondition, "rb", nexusID)
	for _, x := range []struct {
		c    *engineclient.Client
		name string
	}{{cb, "rb"}, {ca, "ra"}} {
		if _, err := x.c.ResizeReplica(ctx, &enginev1.ResizeReplicaRequest{Name: x.name, Size: to, Owner: nexusID}); err != nil {
			t.Fatal(err)
		}
	}

	n, err = ca.ResizeNexus(ctx, &enginev1.ResizeNexusRequest{Name: "vol", Size: to})
	if err != nil || n.GetSize() != to || n.GetState() != enginev1.NexusState_NEXUS_STATE_ONLINE {
		t.Fatalf("resize: %v %v", n, err)
	}
	select {
	case ev := <-events:
		if !ev.NamespaceChanged() || !slices.Equal(ev.Changed, []uint32{1}) {
			t.Fatalf("event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("the host got no namespace-attribute-changed event")
	}
	if err := ns.Revalidate(ctx); err != nil || ns.Size() != to {
		t.Fatalf("host sees %d bytes (%v), want %d", ns.Size(), err, to)
	}
	if _, err := ns.WriteAt(pattern(4), to-64<<10); err != nil {
		t.Fatalf("write at the new end: %v", err)
	}
	mustRead(t, ns, 0, pattern(3))
	mustRead(t, ns, to-64<<10, pattern(4))
	if rep, err := ca.Verify(ctx, &enginev1.VerifyRequest{Nexus: "vol"}); err != nil || len(rep.GetMismatches()) != 0 || rep.GetSegments() != to/nexus.DefaultRebuildSegment {
		t.Fatalf("verify %v %v", rep, err)
	}
	// The remote replica has the write past its old end.
	got := readReplica(t, b.Engine, rb.GetUuid(), to)
	if !bytes.Equal(got[to-64<<10:], pattern(4)) {
		t.Fatal("the remote replica lacks the write past the old end")
	}
	if n, err = ca.UnpublishNexus(ctx, &enginev1.UnpublishNexusRequest{Name: "vol"}); err != nil {
		t.Fatal(err)
	}
	host.Close()

	// Restarted, the nexus comes back at the new size.
	if err := a.Shutdown(time.Second); err != nil {
		t.Fatal(err)
	}
	a2, err := StartServer(ServerOptions{DataDir: filepath.Join(dir, "a"), GRPCListen: "127.0.0.1:0",
		NVMfListen: testutil.FreeAddr(t), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a2.Shutdown(time.Second) })
	ni, err := a2.Engine.Nexus("vol")
	if err != nil || ni.Size != to || ni.State != NexusOnline {
		t.Fatalf("after the restart %+v %v", ni, err)
	}
	d, err := a2.Engine.servingNexus("vol")
	if err != nil {
		t.Fatal(err)
	}
	mustRead(t, d, to-64<<10, pattern(4))
}
