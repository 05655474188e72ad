package engine

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

// TestNexusANAPublication: a nexus published over nvmf with a controller ID
// range and an ANA state gives hosts controllers of that range and refuses
// their I/O while inaccessible; SetNexusANAState and republishing change the
// state; refusals name what is wrong; the publication comes back with its
// range and state after a restart.
func TestNexusANAPublication(t *testing.T) {
	dir := t.TempDir()
	start := func() *Server {
		s, err := StartServer(ServerOptions{DataDir: filepath.Join(dir, "data"), GRPCListen: "127.0.0.1:0",
			NVMfListen: "127.0.0.1:0", NBDListen: "127.0.0.1:0", Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := start()
	defer func() { s.Shutdown(time.Second) }()
	ctx := context.Background()
	e := s.Engine
	if _, err := e.CreatePool(ctx, PoolSpec{Name: "p", Disk: "file://" + filepath.Join(dir, "p.img") + "?size=64MiB", ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	r, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: "r", Pool: "p", Size: 4 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	ni, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", Children: []string{"bdev:///" + r.UUID}})
	if err != nil {
		t.Fatal(err)
	}
	nqn := target.NQN("nexus", ni.UUID)

	// Refusals.
	_, err = e.PublishNexusWith(ctx, "n0", PublishNexusOptions{Protocol: ProtocolNBD, MinCNTLID: 5})
	wantFault(t, err, fault.InvalidArgument, "n0", "nbd")
	_, err = e.PublishNexusWith(ctx, "n0", PublishNexusOptions{MinCNTLID: 9, MaxCNTLID: 8})
	wantFault(t, err, fault.InvalidArgument, "n0", "9..8")
	_, err = e.PublishNexusWith(ctx, "n0", PublishNexusOptions{MaxCNTLID: 0xFFFF})
	wantFault(t, err, fault.InvalidArgument, "65535")
	_, err = e.PublishNexusWith(ctx, "n0", PublishNexusOptions{ANAState: 9})
	wantFault(t, err, fault.InvalidArgument, "n0", "ANA state")
	_, err = e.SetNexusANAState(ctx, "n0", nvme.ANAOptimized)
	wantFault(t, err, fault.FailedPrecondition, "n0", "not published over nvmf")
	if fault.CodeOf(err) != "nexus.not_published_nvmf" {
		t.Fatalf("code %q", fault.CodeOf(err))
	}

	ni, err = e.PublishNexusWith(ctx, "n0", PublishNexusOptions{MinCNTLID: 100, MaxCNTLID: 199, ANAState: nvme.ANAInaccessible})
	if err != nil {
		t.Fatal(err)
	}
	if sh := ni.Share; sh == nil || sh.ANAState != nvme.ANAInaccessible || sh.MinCNTLID != 100 || sh.MaxCNTLID != 199 {
		t.Fatalf("publication %+v", ni.Share)
	}
	m := NexusToProto(ni)
	if m.GetAnaState() != enginev1.AnaState_ANA_STATE_INACCESSIBLE || m.GetMinCntlid() != 100 || m.GetMaxCntlid() != 199 {
		t.Fatalf("API message: ana %v cntlid %d..%d", m.GetAnaState(), m.GetMinCntlid(), m.GetMaxCntlid())
	}

	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, err := initiator.Connect(cctx, s.NVMfAddr(), nqn, initiator.Options{IOQueues: 1, MaxReconnect: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if id := c.CNTLID(); id < 100 || id > 199 {
		t.Fatalf("controller ID %d outside 100..199", id)
	}
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("ana!"), 1024)
	if _, err := ns.WriteAt(data, 0); !errors.Is(err, nvme.StatusANAInaccessible) {
		t.Fatalf("write while inaccessible: %v", err)
	}

	// Republishing the same way returns it; another range is refused.
	if _, err := e.PublishNexusWith(ctx, "n0", PublishNexusOptions{MinCNTLID: 100, MaxCNTLID: 199}); err != nil {
		t.Fatal(err)
	}
	_, err = e.PublishNexusWith(ctx, "n0", PublishNexusOptions{MinCNTLID: 1, MaxCNTLID: 99})
	wantFault(t, err, fault.FailedPrecondition, "n0")

	ni, err = e.SetNexusANAState(ctx, "n0", nvme.ANAOptimized)
	if err != nil || ni.Share.ANAState != nvme.ANAOptimized {
		t.Fatalf("SetNexusANAState: %v %+v", err, ni.Share)
	}
	if _, err := ns.WriteAt(data, 0); err != nil {
		t.Fatalf("write while optimized: %v", err)
	}
	// Republishing with a state sets it.
	ni, err = e.PublishNexusWith(ctx, "n0", PublishNexusOptions{MinCNTLID: 100, MaxCNTLID: 199, ANAState: nvme.ANANonOptimized})
	if err != nil || ni.Share.ANAState != nvme.ANANonOptimized {
		t.Fatalf("republish with a state: %v %+v", err, ni.Share)
	}
	if _, err := ns.WriteAt(data, 4096); err != nil {
		t.Fatalf("write while non-optimized: %v", err)
	}
	if _, err := e.SetNexusANAState(ctx, "n0", nvme.ANAChange); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.WriteAt(data, 0); !errors.Is(err, nvme.StatusANATransition) {
		t.Fatalf("write in the change state: %v", err)
	}
	c.Close()

	// The state file keeps the range and the state; a restart restores
	// them.
	b, err := os.ReadFile(filepath.Join(dir, "data", StateFileName))
	if err != nil || !strings.Contains(string(b), `"ana_state": "change"`) || !strings.Contains(string(b), `"min_cntlid": 100`) {
		t.Fatalf("state file (%v):\n%s", err, b)
	}
	if err := s.Shutdown(time.Second); err != nil {
		t.Fatal(err)
	}
	s = start()
	ni, err = s.Engine.Nexus("n0")
	if err != nil || ni.Share == nil || ni.Share.ANAState != nvme.ANAChange || ni.Share.MinCNTLID != 100 || ni.Share.MaxCNTLID != 199 {
		t.Fatalf("after a restart: %v %+v", err, ni.Share)
	}
	c, err = initiator.Connect(cctx, s.NVMfAddr(), nqn, initiator.Options{IOQueues: 1, MaxReconnect: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if id := c.CNTLID(); id < 100 || id > 199 {
		t.Fatalf("controller ID %d outside 100..199 after a restart", id)
	}
	ns, err = c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.ReadAt(make([]byte, 4096), 0); !errors.Is(err, nvme.StatusANATransition) {
		t.Fatalf("read in the restored change state: %v", err)
	}
	if _, err := s.Engine.SetNexusANAState(ctx, "n0", nvme.ANAOptimized); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := ns.ReadAt(got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back after the restart: %v", err)
	}

	// Over nbd there is no ANA state.
	if _, err := s.Engine.UnpublishNexus(ctx, "n0"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Engine.PublishNexus(ctx, "n0", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	_, err = s.Engine.SetNexusANAState(ctx, "n0", nvme.ANAOptimized)
	wantFault(t, err, fault.FailedPrecondition, "nvmf")
	ni, _ = s.Engine.Nexus("n0")
	if m := NexusToProto(ni); m.GetAnaState() != enginev1.AnaState_ANA_STATE_UNSPECIFIED || m.GetMinCntlid() != 0 {
		t.Fatalf("nbd publication reports ANA %v cntlid %d", m.GetAnaState(), m.GetMinCntlid())
	}
	if ANAStateFromProto(enginev1.AnaState(1000)).Valid() || ANAStateFromProto(enginev1.AnaState_ANA_STATE_CHANGE) != nvme.ANAChange {
		t.Fatal("ANAStateFromProto")
	}
}
