package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/units"
)

// fakeVolumes is a VolumeService with canned answers: every call records
// its request, and returns err when set, else the canned response.
type fakeVolumes struct {
	mgmtv1.UnimplementedVolumeServiceServer

	// hold, when set, is called with each call's context before it
	// answers.
	hold func(ctx context.Context)

	mu     sync.Mutex
	reqs   []proto.Message
	err    error
	volume *mgmtv1.Volume
	vols   []*mgmtv1.Volume
	pools  []*mgmtv1.NodePool
	nodes  []*mgmtv1.Node
	del    *mgmtv1.DeleteVolumeResponse
	verify *mgmtv1.VerifyVolumeResponse
	node   *mgmtv1.Node
	events []*mgmtv1.Event

	// Successive answers, for the waits: each GetVolume, ListNodes or
	// ListEvents takes the next one of its list into volume, nodes or
	// events, and the last one stays.
	volumeSeq []*mgmtv1.Volume
	nodesSeq  [][]*mgmtv1.Node
	eventsSeq [][]*mgmtv1.Event
}

// next moves the fake on to the next answer of seq into *cur.
func next[T any](f *fakeVolumes, seq *[]T, cur *T) T {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(*seq) > 0 {
		*cur = (*seq)[0]
		*seq = (*seq)[1:]
	}
	return *cur
}

func (f *fakeVolumes) record(ctx context.Context, req proto.Message) error {
	// Recorded before holding: the test looks as soon as the client gave
	// up, which may be before a held handler returns.
	f.mu.Lock()
	f.reqs = append(f.reqs, proto.Clone(req))
	err := f.err
	f.mu.Unlock()
	if f.hold != nil {
		f.hold(ctx)
		// A service held past the caller's deadline does not answer
		// success: the deadline is what the caller must see, whichever
		// side notices it first.
		if cerr := ctx.Err(); cerr != nil {
			return status.FromContextError(cerr).Err()
		}
	}
	return err
}

// requests returns the requests received so far.
func (f *fakeVolumes) requests() []proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]proto.Message(nil), f.reqs...)
}

// last returns the one request received, failing the test unless exactly
// one was.
func (f *fakeVolumes) last(t *testing.T) proto.Message {
	t.Helper()
	r := f.requests()
	if len(r) != 1 {
		t.Fatalf("the service got %d requests, want 1: %v", len(r), r)
	}
	f.mu.Lock()
	f.reqs = nil
	f.mu.Unlock()
	return r[0]
}

func (f *fakeVolumes) ListPools(ctx context.Context, r *mgmtv1.ListPoolsRequest) (*mgmtv1.ListPoolsResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &mgmtv1.ListPoolsResponse{Pools: f.pools}, nil
}

func (f *fakeVolumes) ListNodes(ctx context.Context, r *mgmtv1.ListNodesRequest) (*mgmtv1.ListNodesResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &mgmtv1.ListNodesResponse{Nodes: next(f, &f.nodesSeq, &f.nodes)}, nil
}

func (f *fakeVolumes) CreateVolume(ctx context.Context, r *mgmtv1.CreateVolumeRequest) (*mgmtv1.Volume, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.volume, nil
}

func (f *fakeVolumes) ListVolumes(ctx context.Context, r *mgmtv1.ListVolumesRequest) (*mgmtv1.ListVolumesResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &mgmtv1.ListVolumesResponse{Volumes: f.vols}, nil
}

func (f *fakeVolumes) GetVolume(ctx context.Context, r *mgmtv1.GetVolumeRequest) (*mgmtv1.Volume, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return next(f, &f.volumeSeq, &f.volume), nil
}

func (f *fakeVolumes) MoveVolume(ctx context.Context, r *mgmtv1.MoveVolumeRequest) (*mgmtv1.Volume, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.volume, nil
}

func (f *fakeVolumes) SetVolumeReplicas(ctx context.Context, r *mgmtv1.SetVolumeReplicasRequest) (*mgmtv1.Volume, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.volume, nil
}

func (f *fakeVolumes) CordonNode(ctx context.Context, r *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.node, nil
}

func (f *fakeVolumes) UncordonNode(ctx context.Context, r *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.node, nil
}

func (f *fakeVolumes) DrainNode(ctx context.Context, r *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.node, nil
}

func (f *fakeVolumes) ListEvents(ctx context.Context, r *mgmtv1.ListEventsRequest) (*mgmtv1.ListEventsResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &mgmtv1.ListEventsResponse{Events: next(f, &f.eventsSeq, &f.events)}, nil
}

func (f *fakeVolumes) DeleteVolume(ctx context.Context, r *mgmtv1.DeleteVolumeRequest) (*mgmtv1.DeleteVolumeResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.del, nil
}

func (f *fakeVolumes) PublishVolume(ctx context.Context, r *mgmtv1.PublishVolumeRequest) (*mgmtv1.Volume, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.volume, nil
}

func (f *fakeVolumes) UnpublishVolume(ctx context.Context, r *mgmtv1.UnpublishVolumeRequest) (*mgmtv1.Volume, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.volume, nil
}

func (f *fakeVolumes) ResizeVolume(ctx context.Context, r *mgmtv1.ResizeVolumeRequest) (*mgmtv1.Volume, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.volume, nil
}

func (f *fakeVolumes) VerifyVolume(ctx context.Context, r *mgmtv1.VerifyVolumeRequest) (*mgmtv1.VerifyVolumeResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return f.verify, nil
}

// startVolumes serves f on a loopback port, as the leader would, and
// returns its address.
func startVolumes(t *testing.T, f *fakeVolumes) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	mgmtv1.RegisterVolumeServiceServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// volumeRun runs nexctl against the fake service at addr.
func volumeRun(t *testing.T, addr string, args ...string) result {
	t.Helper()
	return nexctlRun(t, time.Minute, append(args, "-a", addr)...)
}

const testNQN = "nqn.2024-11.io.nexstor:nexus:5f0c1e2a-9b8d-4c7e-a6f5-3d2c1b0a9e8f"

// degradedVolume is a published volume with one replica rebuilding and one
// on a node that does not answer.
func degradedVolume() *mgmtv1.Volume {
	return &mgmtv1.Volume{
		Spec: &mgmtv1.VolumeSpec{Name: "v1", Uuid: "0b6d4c1e-8f2a-4e3b-9c7d-1a2b3c4d5e6f", Size: 10 << 30, Replicas: 3, Thin: true,
			Protocol: "nvmf", Placement: &mgmtv1.Placement{NodeSelector: map[string]string{"zone": "a"}}},
		Status: &mgmtv1.VolumeStatus{Phase: "degraded", Reason: "1 of 3 replicas is rebuilding; node-2 does not answer", Healthy: 1,
			Replicas: []*mgmtv1.VolumeReplica{
				{Uuid: "r2", Node: "node-2", Rank: 2, Pool: "p0", State: "unknown", ChildState: "offline", Reason: "node-2 does not answer"},
				{Uuid: "r0", Node: "node-0", Rank: 0, Pool: "p0", State: "online", ChildState: "online", Local: true, Epoch: 4},
				{Uuid: "r1", Node: "node-1", Rank: 1, Pool: "p1", State: "online", ChildState: "rebuilding", RebuildPercent: 42},
			},
			Target: &mgmtv1.VolumeTarget{Node: "node-0", Rank: 0, Protocol: "nvmf", Uri: "nvmf://[fd00::1]:4420/" + testNQN,
				Nqn: testNQN, State: "degraded", Epoch: 4}},
		CreatedMs: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli(),
	}
}

// TestVolumeCreateFlags checks that create's flags become the request's
// fields, sizes parsed as people type them, and that the created volume is
// printed.
func TestVolumeCreateFlags(t *testing.T) {
	f := &fakeVolumes{volume: degradedVolume()}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "create", "v1", "--size", "1.5GiB", "--replicas", "2", "--thin",
		"--selector", "zone=a", "--selector", "rack=r1,disk=ssd", "--pool-selector", "tier=nvme", "--protocol", "NBD",
		"--uuid", "0b6d4c1e-8f2a-4e3b-9c7d-1a2b3c4d5e6f")
	if r.status != 0 {
		t.Fatalf("create: %+v", r)
	}
	want := &mgmtv1.CreateVolumeRequest{Spec: &mgmtv1.VolumeSpec{Name: "v1", Uuid: "0b6d4c1e-8f2a-4e3b-9c7d-1a2b3c4d5e6f",
		Size: 3 << 29, Replicas: 2, Thin: true, Protocol: "nbd", Placement: &mgmtv1.Placement{
			NodeSelector: map[string]string{"zone": "a", "rack": "r1", "disk": "ssd"},
			PoolSelector: map[string]string{"tier": "nvme"}}}}
	if got := f.last(t); !proto.Equal(got, want) {
		t.Errorf("request\n%v\nwant\n%v", got, want)
	}
	for _, s := range []string{"Name:", "v1", "Phase:", "degraded", "1 healthy of 3", "nodes zone=a"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("create does not print %q:\n%s", s, r.stdout)
		}
	}

	// Defaults: 3 thick replicas, the protocol and placement left to the
	// service.
	if r := volumeRun(t, addr, "volume", "create", "v2", "--size", "10GiB"); r.status != 0 {
		t.Fatalf("create with defaults: %+v", r)
	}
	want = &mgmtv1.CreateVolumeRequest{Spec: &mgmtv1.VolumeSpec{Name: "v2", Size: 10 << 30, Replicas: 3}}
	if got := f.last(t); !proto.Equal(got, want) {
		t.Errorf("request\n%v\nwant\n%v", got, want)
	}
}

// TestVolumeBadInput checks that input the service would refuse is refused
// before any call, with exit status 2 and the flag named.
func TestVolumeBadInput(t *testing.T) {
	f := &fakeVolumes{volume: degradedVolume()}
	addr := startVolumes(t, f)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"volume", "create", "v1", "--size", "0"}, []string{"--size 0", "above 0"}},
		{[]string{"volume", "create", "v1", "--size", "lots"}, []string{"--size", "lots"}},
		{[]string{"volume", "create", "v1"}, []string{`"size" not set`}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--replicas", "0"}, []string{"--replicas 0", "at least 1"}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--replicas", "-1"}, []string{"--replicas -1"}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--selector", "zone"}, []string{`--selector "zone"`, "key=value"}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--selector", "=a"}, []string{"--selector", "key=value"}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--pool-selector", "bad key=x"}, []string{"--pool-selector", `"bad key"`}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--selector", "zone=a", "--selector", "zone=b"}, []string{"zone=a", "zone=b"}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--protocol", "iscsi"}, []string{"--protocol", "iscsi", "nvmf"}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "--uuid", "nope"}, []string{"--uuid", "nope"}},
		{[]string{"volume", "create", "Vol_1", "--size", "1GiB"}, []string{`"Vol_1"`, "lowercase"}},
		{[]string{"volume", "create", "v1", "--size", "1GiB", "extra"}, []string{"accepts 1 arg(s)"}},
		{[]string{"volume", "publish", "v1", "--host-nqn", "host-1"}, []string{"--host-nqn", "host-1", "/etc/nvme/hostnqn"}},
		{[]string{"volume", "publish", "v1", "--protocol", "nbd", "--host-nqn", "nqn.2014-08.org.nvmexpress:uuid:1"}, []string{"--host-nqn", "nbd"}},
		{[]string{"volume", "resize", "v1", "0"}, []string{"SIZE 0"}},
		{[]string{"volume", "resize", "v1"}, []string{"accepts 2 arg(s)"}},
		{[]string{"volume", "craete", "v1"}, []string{"did you mean `nexctl volume create`"}},
		{[]string{"node", "list", "--bogus"}, []string{"unknown flag --bogus"}},
	} {
		r := volumeRun(t, addr, tc.args...)
		wantError(t, r, exitUsage, "cli.usage", tc.want...)
		if r.stdout != "" {
			t.Errorf("%v printed on stdout:\n%s", tc.args, r.stdout)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("bad input reached the service %d times: %v", n, f.requests())
	}
}

// TestVolumeSuggestedSizeIsAccepted gives a size that is not whole 4KiB
// blocks: the size suggested is accepted as printed, and is the next one.
func TestVolumeSuggestedSizeIsAccepted(t *testing.T) {
	f := &fakeVolumes{volume: degradedVolume()}
	addr := startVolumes(t, f)
	for _, args := range [][]string{{"volume", "create", "v1", "--size", "10000001"}, {"volume", "resize", "v1", "10000001"}} {
		r := volumeRun(t, addr, args...)
		wantError(t, r, exitUsage, "cli.usage", "10000001", "4KiB")
		m := regexp.MustCompile(`give (\S+)\n`).FindStringSubmatch(r.stderr)
		if m == nil {
			t.Fatalf("%v: no size suggested:\n%s", args, r.stderr)
		}
		n, err := units.ParseSize(m[1])
		if err != nil || n != 10002432 {
			t.Fatalf("%v: suggested %q parses as %d, %v; want 10002432", args, m[1], n, err)
		}
		args[len(args)-1] = m[1]
		if r := volumeRun(t, addr, args...); r.status != 0 {
			t.Fatalf("the suggested size %s is refused: %+v", m[1], r)
		}
		var size uint64
		switch req := f.last(t).(type) {
		case *mgmtv1.CreateVolumeRequest:
			size = req.GetSpec().GetSize()
		case *mgmtv1.ResizeVolumeRequest:
			size = req.GetSize()
			if req.GetName() != "v1" {
				t.Errorf("resize of %q", req.GetName())
			}
		}
		if size != 10002432 {
			t.Errorf("%v sent size %d, want 10002432", args, size)
		}
	}
}

// TestVolumeServiceRefusal checks that a refusal of the service (the
// scheduler's, listing its reasons) is printed once, as it came, and exits
// 1.
func TestVolumeServiceRefusal(t *testing.T) {
	msg := "3 replicas need 3 nodes; eligible: node-a, node-b; node-c: pool p0 has 512MiB free, needs 1GiB"
	f := &fakeVolumes{err: fault.New(fault.FailedPrecondition, "volume.not_placeable", msg,
		"add nodes or pools, free space, or ask for fewer replicas")}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "create", "v1", "--size", "1GiB")
	wantError(t, r, exitFailed, "volume.not_placeable", msg, "fewer replicas")
	if strings.Count(r.stderr, "node-c") != 1 || r.stdout != "" {
		t.Errorf("the refusal is not printed once:\nstdout %s\nstderr %s", r.stdout, r.stderr)
	}
	// The size in a reason is one create accepts.
	m := regexp.MustCompile(`has (\S+) free`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no size in %s", r.stderr)
	}
	if _, err := parseVolumeSize(&cobra.Command{}, "--size", m[1]); err != nil {
		t.Errorf("the size %s of the reason is refused: %v", m[1], err)
	}

	f.err = fault.New(fault.NotFound, "volume.not_found", `volume "v9" not found`, "list the volumes with `nexctl volume list`")
	for _, args := range [][]string{{"volume", "get", "v9"}, {"volume", "delete", "v9"}, {"volume", "publish", "v9"},
		{"volume", "unpublish", "v9"}, {"volume", "verify", "v9"}, {"volume", "resize", "v9", "2GiB"}} {
		wantError(t, volumeRun(t, addr, args...), exitFailed, "volume.not_found", `volume "v9" not found`, "nexctl volume list")
	}
}

// TestVolumeGet prints a degraded published volume: every replica with its
// states and rebuild progress, the target and how to connect.
func TestVolumeGet(t *testing.T) {
	f := &fakeVolumes{volume: degradedVolume()}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "get", "v1")
	if r.status != 0 {
		t.Fatalf("get: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.GetVolumeRequest{Name: "v1"}) {
		t.Errorf("request %v", got)
	}
	lines := strings.Split(r.stdout, "\n")
	row := func(prefix string) []string {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return strings.Fields(l)
			}
		}
		t.Errorf("no line starts with %q:\n%s", prefix, r.stdout)
		return nil
	}
	// NODE RANK POOL STATE CHILD REBUILD LOCAL UUID REASON
	if got := row("node-0 "); strings.Join(got, " ") != "node-0 0 p0 online online - yes r0 -" {
		t.Errorf("node-0 row %q", got)
	}
	if got := row("node-1 "); strings.Join(got, " ") != "node-1 1 p1 online rebuilding 42.0% - r1 -" {
		t.Errorf("node-1 row %q", got)
	}
	if got := row("node-2 "); len(got) < 5 || got[3] != "unknown" || got[4] != "offline" || !strings.Contains(r.stdout, "node-2 does not answer") {
		t.Errorf("node-2 row %q", got)
	}
	for _, s := range []string{"Phase:", "degraded", "Reason:", "1 of 3 replicas is rebuilding", "Nexus state:", "Epoch:",
		"nvmf://[fd00::1]:4420/" + testNQN, "Hosts:", "any host", "2025-01-02T03:04:05Z",
		"Connect:", "nvme connect -t tcp -a fd00::1 -s 4420 -n " + testNQN} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("get does not print %q:\n%s", s, r.stdout)
		}
	}

	// An unpublished volume says how to publish it.
	v := degradedVolume()
	v.Status.Target = nil
	f.volume = v
	r = volumeRun(t, addr, "volume", "get", "v1")
	if r.status != 0 || !strings.Contains(r.stdout, "not published") || !strings.Contains(r.stdout, "nexctl volume publish v1") {
		t.Errorf("get of an unpublished volume: %+v", r)
	}
	// A volume without a phase is never shown better than unknown.
	f.volume = &mgmtv1.Volume{Spec: &mgmtv1.VolumeSpec{Name: "v1", Size: 4096, Replicas: 1}}
	r = volumeRun(t, addr, "volume", "get", "v1", "-o", "json")
	var got volumeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.Status.Phase != "unknown" || got.Spec.Protocol != "nvmf" {
		t.Errorf("get of a volume without status: %+v", r)
	}
}

// TestVolumeStableJSON pins the JSON field names: scripts read them.
func TestVolumeStableJSON(t *testing.T) {
	v := degradedVolume()
	v.Status.Replicas = v.Status.Replicas[1:2]
	v.Status.Target.HostNqns = []string{"nqn.2014-08.org.nvmexpress:uuid:h1"}
	b, err := json.Marshal(newVolumeView(v))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"spec":{"name":"v1","uuid":"0b6d4c1e-8f2a-4e3b-9c7d-1a2b3c4d5e6f","size":10737418240,"replicas":3,"thin":true,` +
		`"protocol":"nvmf","node_selector":{"zone":"a"}},` +
		`"status":{"phase":"degraded","reason":"1 of 3 replicas is rebuilding; node-2 does not answer","healthy":1,` +
		`"replicas":[{"uuid":"r0","node":"node-0","rank":0,"node_uuid":"","pool":"p0","state":"online","child_state":"online","epoch":4,"local":true}],` +
		`"target":{"node":"node-0","rank":0,"node_uuid":"","protocol":"nvmf","uri":"nvmf://[fd00::1]:4420/` + testNQN + `",` +
		`"nqn":"` + testNQN + `","host_nqns":["nqn.2014-08.org.nvmexpress:uuid:h1"],"state":"degraded","epoch":4,` +
		`"connect":"nvme connect -t tcp -a fd00::1 -s 4420 -n ` + testNQN + ` --hostnqn nqn.2014-08.org.nvmexpress:uuid:h1"},"repairs":[]},` +
		`"created":"2025-01-02T03:04:05Z"}`
	if string(b) != want {
		t.Fatalf("volume JSON\n%s\nwant\n%s", b, want)
	}
	p := newSystemPoolView(&mgmtv1.NodePool{Node: "node-1", Rank: 1, NodeState: "joined", ReportedMs: 1000,
		Pool: &mgmtv1.PoolReport{Name: "p0", Uuid: "u", Disk: "/dev/sdb", State: "online", Capacity: 1000, Free: 500, Committed: 250,
			OvercommitPercent: 250, ClusterSize: 4 << 20, Replicas: 2}})
	b, _ = json.Marshal(p)
	want = `{"node":"node-1","rank":1,"node_state":"joined","name":"p0","uuid":"u","disk":"/dev/sdb","state":"online","capacity":1000,` +
		`"free":500,"committed":250,"committed_percent":25,"overcommit_percent":250,"cluster_size":4194304,"replicas":2,` +
		`"reported":"1970-01-01T00:00:01Z"}`
	if string(b) != want {
		t.Fatalf("pool JSON\n%s\nwant\n%s", b, want)
	}
}

// TestConnectCommand builds the line a host connects with from the
// target's URI.
func TestConnectCommand(t *testing.T) {
	for _, tc := range []struct {
		t    volumeTargetView
		want string
	}{
		{volumeTargetView{Protocol: "nvmf", URI: "nvmf://10.0.0.1:4420/" + testNQN}, "nvme connect -t tcp -a 10.0.0.1 -s 4420 -n " + testNQN},
		{volumeTargetView{Protocol: "nvmf", URI: "nvmf://node-1:14420/x", NQN: testNQN}, "nvme connect -t tcp -a node-1 -s 14420 -n " + testNQN},
		{volumeTargetView{Protocol: "nvmf", URI: "nvmf://[fd00::5]/" + testNQN}, "nvme connect -t tcp -a fd00::5 -s 4420 -n " + testNQN},
		{volumeTargetView{Protocol: "nvmf", URI: "nvmf://10.0.0.1:4420/" + testNQN, HostNQNs: []string{"nqn.h1", "nqn.h2"}},
			"nvme connect -t tcp -a 10.0.0.1 -s 4420 -n " + testNQN},
		{volumeTargetView{Protocol: "nbd", URI: "nbd://10.0.0.2:10809/nexus/v1"}, "nbd-client -N nexus/v1 10.0.0.2 10809 /dev/nbd0"},
		{volumeTargetView{Protocol: "nbd", URI: "nbd://[::1]/it's"}, `nbd-client -N 'it'\''s' ::1 10809 /dev/nbd0`},
		{volumeTargetView{Protocol: "nvmf", URI: "nbd://10.0.0.2:10809/v1"}, ""},
		{volumeTargetView{Protocol: "nvmf", URI: "nvmf://10.0.0.1:4420"}, ""},
		{volumeTargetView{Protocol: "nvmf", URI: ""}, ""},
	} {
		if got := connectCommand(&tc.t); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.t, got, tc.want)
		}
	}
}

// TestVolumePublish checks publish's request and that it prints the URI
// first, then the exact command that connects a host.
func TestVolumePublish(t *testing.T) {
	v := degradedVolume()
	v.Status.Target.HostNqns = []string{"nqn.2014-08.org.nvmexpress:uuid:h1"}
	f := &fakeVolumes{volume: v}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "publish", "v1", "--node", "node-0", "--protocol", "nvmf",
		"--host-nqn", "nqn.2014-08.org.nvmexpress:uuid:h1")
	if r.status != 0 {
		t.Fatalf("publish: %+v", r)
	}
	want := &mgmtv1.PublishVolumeRequest{Name: "v1", Node: "node-0", Protocol: "nvmf", HostNqns: []string{"nqn.2014-08.org.nvmexpress:uuid:h1"}}
	if got := f.last(t); !proto.Equal(got, want) {
		t.Errorf("request\n%v\nwant\n%v", got, want)
	}
	lines := strings.Split(r.stdout, "\n")
	if lines[0] != "nvmf://[fd00::1]:4420/"+testNQN {
		t.Errorf("the first line is not the URI:\n%s", r.stdout)
	}
	connect := "  nvme connect -t tcp -a fd00::1 -s 4420 -n " + testNQN + " --hostnqn nqn.2014-08.org.nvmexpress:uuid:h1"
	found := false
	for _, l := range lines {
		found = found || l == connect
	}
	if !found {
		t.Errorf("publish does not print the line %q:\n%s", connect, r.stdout)
	}

	// No flags: the service picks the node and the protocol.
	v.Status.Target = &mgmtv1.VolumeTarget{Node: "node-1", Rank: 1, Protocol: "nbd", Uri: "nbd://10.0.0.2:10809/nexus/v1", State: "online"}
	r = volumeRun(t, addr, "volume", "publish", "v1")
	if r.status != 0 {
		t.Fatalf("publish: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.PublishVolumeRequest{Name: "v1"}) {
		t.Errorf("request %v", got)
	}
	for _, s := range []string{"nbd://10.0.0.2:10809/nexus/v1\n", "nbdinfo nbd://10.0.0.2:10809/nexus/v1",
		"nbd-client -N nexus/v1 10.0.0.2 10809 /dev/nbd0"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("publish over nbd does not print %q:\n%s", s, r.stdout)
		}
	}
	// JSON carries the connect line for scripts.
	r = volumeRun(t, addr, "volume", "publish", "v1", "-o", "json")
	var got volumeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.Status.Target == nil ||
		got.Status.Target.Connect != "nbd-client -N nexus/v1 10.0.0.2 10809 /dev/nbd0" {
		t.Errorf("publish -o json: %+v", r)
	}
}

// TestVolumeListAndLifecycle covers list, delete (with replicas left on
// dead nodes), unpublish and resize.
func TestVolumeListAndLifecycle(t *testing.T) {
	unpub := &mgmtv1.Volume{Spec: &mgmtv1.VolumeSpec{Name: "a", Size: 1 << 30, Replicas: 1, Protocol: "nbd"},
		Status: &mgmtv1.VolumeStatus{Phase: "online", Healthy: 1}}
	f := &fakeVolumes{vols: []*mgmtv1.Volume{degradedVolume(), unpub}, volume: unpub,
		del: &mgmtv1.DeleteVolumeResponse{Pending: []string{"replica r2 on node-2"}}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "list")
	if r.status != 0 {
		t.Fatalf("list: %+v", r)
	}
	f.last(t)
	want := "NAME  SIZE   REPLICAS  PHASE     TARGET  PROTOCOL\n" +
		"a     1GiB   1/1       online    -       nbd\n" +
		"v1    10GiB  1/3       degraded  node-0  nvmf\n"
	if r.stdout != want {
		t.Errorf("list:\n%s\nwant\n%s", r.stdout, want)
	}
	f.vols = nil
	if r := volumeRun(t, addr, "volume", "list", "-o", "json"); r.status != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("empty list: %+v", r)
	}
	f.last(t)

	r = volumeRun(t, addr, "volume", "delete", "v1", "--force")
	if r.status != 0 || !strings.Contains(r.stdout, "volume v1 is deleting") || !strings.Contains(r.stdout, "  replica r2 on node-2\n") {
		t.Errorf("delete with a replica pending: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.DeleteVolumeRequest{Name: "v1", Force: true}) {
		t.Errorf("request %v", got)
	}
	f.del = &mgmtv1.DeleteVolumeResponse{}
	if r := volumeRun(t, addr, "volume", "delete", "a"); r.status != 0 || r.stdout != "volume a deleted\n" {
		t.Errorf("delete: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.DeleteVolumeRequest{Name: "a"}) {
		t.Errorf("request %v", got)
	}
	r = volumeRun(t, addr, "volume", "delete", "a", "-o", "json")
	var dv deleteView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &dv) != nil || dv.Pending == nil || len(dv.Pending) != 0 {
		t.Errorf("delete -o json: %+v", r)
	}
	f.last(t)

	if r := volumeRun(t, addr, "volume", "unpublish", "a"); r.status != 0 || r.stdout != "volume a unpublished\n" {
		t.Errorf("unpublish: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.UnpublishVolumeRequest{Name: "a"}) {
		t.Errorf("request %v", got)
	}
	f.volume = degradedVolume()
	f.volume.Spec.Size = 20 << 30
	if r := volumeRun(t, addr, "volume", "resize", "v1", "20GiB"); r.status != 0 || r.stdout != "volume v1 is 20GiB\n" {
		t.Errorf("resize: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.ResizeVolumeRequest{Name: "v1", Size: 20 << 30}) {
		t.Errorf("request %v", got)
	}
	if r := volumeRun(t, addr, "volume", "move", "v1", "--node", "node-0"); r.status != 0 ||
		r.stdout != "volume v1 is published on node-0: nvmf://[fd00::1]:4420/"+testNQN+"\n" {
		t.Errorf("move: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.MoveVolumeRequest{Name: "v1", Node: "node-0"}) {
		t.Errorf("request %v", got)
	}
	if r := volumeRun(t, addr, "volume", "move"); r.status != 2 || len(f.requests()) != 0 {
		t.Errorf("move without a name: %+v", r)
	}
}

// TestVolumeVerify checks that mismatches print as offset/length pairs
// and fail the command, and that identical replicas pass.
func TestVolumeVerify(t *testing.T) {
	f := &fakeVolumes{verify: &mgmtv1.VerifyVolumeResponse{Segments: 80, Children: []string{"bdev:///r0", "nvmf://n1/r1"}}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "verify", "v1")
	if r.status != 0 || !strings.Contains(r.stdout, "replicas identical") || !strings.Contains(r.stdout, "80 segments") {
		t.Errorf("verify of identical replicas: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.VerifyVolumeRequest{Name: "v1"}) {
		t.Errorf("request %v", got)
	}
	f.verify.Mismatches = []uint64{0, 4096, 1 << 30, 8 << 20}
	r = volumeRun(t, addr, "volume", "verify", "v1")
	if r.status != exitFailed || !strings.Contains(r.stderr, "differ in 2 ranges") {
		t.Errorf("verify with mismatches: %+v", r)
	}
	if !strings.Contains(r.stdout, "OFFSET      LENGTH\n0           4096\n1073741824  8388608\n") {
		t.Errorf("mismatches are not offset/length pairs:\n%s", r.stdout)
	}
	f.last(t)
	r = volumeRun(t, addr, "volume", "verify", "v1", "-o", "json")
	var vv volumeVerifyView
	if r.status != exitFailed || json.Unmarshal([]byte(r.stdout), &vv) != nil || vv.Identical || len(vv.Mismatches) != 2 ||
		vv.Mismatches[1] != (rangeView{Offset: 1 << 30, Length: 8 << 20}) {
		t.Errorf("verify -o json: %+v", r)
	}
	f.last(t)
	f.verify.Mismatches = []uint64{0, 4096, 8192}
	if r := volumeRun(t, addr, "volume", "verify", "v1"); r.status != exitFailed || !strings.Contains(r.stderr, "3 mismatch values") {
		t.Errorf("verify with an odd number of values: %+v", r)
	}
}

// TestNodeList prints the members with their storage totals.
func TestNodeList(t *testing.T) {
	f := &fakeVolumes{nodes: []*mgmtv1.Node{
		{Member: &mgmtv1.Member{Rank: 1, Name: "node-1", Address: "10.0.0.2:10124", State: "unresponsive", FaultDomain: "/r2",
			Cordoned: true}, Pools: 1, Capacity: 10 << 30, Free: 1 << 30, Committed: 20 << 30, Replicas: 5},
		{Member: &mgmtv1.Member{Rank: 0, Name: "node-0", Address: "10.0.0.1:10124", State: "joined", FaultDomain: "/r1",
			Labels: map[string]string{"zone": "a", "disk": "nvme"}}, Pools: 2, Capacity: 20 << 30, Free: 15 << 30,
			Committed: 5 << 30, Replicas: 3, Nexuses: 1},
	}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "node", "list")
	if r.status != 0 {
		t.Fatalf("node list: %+v", r)
	}
	want := "RANK  NAME    ADDRESS         STATE                  FAULT DOMAIN  LABELS            POOLS  CAPACITY  FREE   COMMITTED  REPLICAS  NEXUSES\n" +
		"0     node-0  10.0.0.1:10124  joined                 /r1           disk=nvme,zone=a  2      20GiB     15GiB  5GiB       3         1\n" +
		"1     node-1  10.0.0.2:10124  unresponsive,cordoned  /r2           -                 1      10GiB     1GiB   20GiB      5         0\n"
	if r.stdout != want {
		t.Errorf("node list:\n%s\nwant\n%s", r.stdout, want)
	}
	r = volumeRun(t, addr, "node", "list", "-o", "json")
	var views []nodeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &views) != nil || len(views) != 2 || views[1].Name != "node-1" ||
		!views[1].Cordoned || views[0].Labels["zone"] != "a" || views[0].Nexuses != 1 {
		t.Errorf("node list -o json: %+v", r)
	}
	if !strings.Contains(r.stdout, `"cordoned": false`) {
		t.Errorf("node list -o json hides cordoned false:\n%s", r.stdout)
	}
}

// TestPoolListSources checks which source pool list asks: the management
// service without --engine (every node's pools, or --node's), the engine
// with --engine or $NEXSTOR_ENGINE, and neither when both are named.
func TestPoolListSources(t *testing.T) {
	now := time.Now()
	f := &fakeVolumes{pools: []*mgmtv1.NodePool{
		{Node: "node-1", Rank: 1, NodeState: "unresponsive", ReportedMs: now.Add(-2 * time.Hour).UnixMilli(),
			Pool: &mgmtv1.PoolReport{Name: "p0", Disk: "/dev/sdb", State: "online", Capacity: 10 << 30, Free: 4 << 30, Committed: 25 << 30, Replicas: 7}},
		{Node: "node-0", Rank: 0, NodeState: "joined",
			Pool: &mgmtv1.PoolReport{Name: "p1", Disk: "/dev/sdc", State: "faulted", Reason: "checksum mismatch in the metadata log"}},
	}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "pool", "list")
	if r.status != 0 {
		t.Fatalf("pool list: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.ListPoolsRequest{}) {
		t.Errorf("request %v", got)
	}
	lines := strings.Split(r.stdout, "\n")
	if len(lines) < 3 || strings.Join(strings.Fields(lines[0]), " ") != "NODE RANK NAME DISK STATE CAPACITY FREE COMMITTED REPLICAS REPORT AGE" ||
		strings.Join(strings.Fields(lines[1]), " ") != "node-0 0 p1 /dev/sdc faulted - - - - never" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[2]), " "), "node-1 1 p0 /dev/sdb online (node unresponsive) 10GiB 4GiB 250.0% 7 2h0m") {
		t.Errorf("pool list:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "node-0/p1: checksum mismatch in the metadata log") {
		t.Errorf("pool list does not say why p1 is faulted:\n%s", r.stdout)
	}

	if r := volumeRun(t, addr, "pool", "list", "--node", "node-1", "-o", "json"); r.status != 0 || !strings.Contains(r.stdout, `"node_state": "unresponsive"`) {
		t.Errorf("pool list --node: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.ListPoolsRequest{Node: "node-1"}) {
		t.Errorf("request %v", got)
	}

	// --engine asks that engine, and $NEXSTOR_ENGINE does when no access
	// point is named.
	eng := startEngine(t, "127.0.0.1:0").GRPCAddr()
	if r := nexctlRun(t, time.Minute, "pool", "list", "--engine", eng, "-o", "json"); r.status != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("pool list --engine: %+v", r)
	}
	t.Setenv("NEXSTOR_ENGINE", eng)
	var out, errb bytes.Buffer
	if st := run([]string{"pool", "list", "-o", "json"}, &out, &errb); st != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Errorf("pool list with NEXSTOR_ENGINE: %d %s %s", st, out.String(), errb.String())
	}
	out.Reset()
	if st := run([]string{"pool", "list", "-a", addr, "-o", "json"}, &out, &errb); st != 0 || !strings.Contains(out.String(), `"node": "node-1"`) {
		t.Errorf("pool list -a with NEXSTOR_ENGINE: %d %s %s", st, out.String(), errb.String())
	}
	f.last(t)
	r = volumeRun(t, addr, "pool", "list", "--engine", eng)
	wantError(t, r, exitUsage, "cli.usage", "--engine", "--access-points", "one or the other")
	if n := len(f.requests()); n != 0 {
		t.Errorf("the service was asked %d times", n)
	}
}

// TestVolumeTimeout checks that --timeout bounds a call that changes the
// system: a service that does not answer fails the command when it ends.
func TestVolumeTimeout(t *testing.T) {
	f := &fakeVolumes{hold: func(ctx context.Context) { <-ctx.Done() }}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "create", "v1", "--size", "1GiB", "--timeout", "3s")
	if r.status != exitFailed || !strings.Contains(r.stderr, "deadline") {
		t.Errorf("create against a service that does not answer: %+v", r)
	}
	if len(f.requests()) == 0 {
		t.Error("the service was not called")
	}
}
