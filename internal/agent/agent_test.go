package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/nvmehost"
)

type fakeHost struct {
	subs      []nvmehost.Subsystem
	connected []nvmehost.ConnectOptions
	deleted   []string
}

func (h *fakeHost) Subsystems() ([]nvmehost.Subsystem, error) { return h.subs, nil }
func (h *fakeHost) Connect(o nvmehost.ConnectOptions) (string, error) {
	h.connected = append(h.connected, o)
	return "nvme9", nil
}
func (h *fakeHost) Delete(c string) error { h.deleted = append(h.deleted, c); return nil }

type fakeVolumes struct {
	asked int
	vols  map[string]*mgmtv1.Volume
}

func (f *fakeVolumes) GetVolume(_ context.Context, id string) (*mgmtv1.Volume, error) {
	f.asked++
	v, ok := f.vols[id]
	if !ok {
		return nil, errors.New("no such volume")
	}
	return v, nil
}

const nqn = NexusNQNPrefix + "v1"

func published(uri string) *mgmtv1.Volume {
	return &mgmtv1.Volume{Spec: &mgmtv1.VolumeSpec{Name: "data"},
		Status: &mgmtv1.VolumeStatus{Target: &mgmtv1.VolumeTarget{Protocol: "nvmf", Uri: uri + "/" + nqn, Nqn: nqn}}}
}

func ctrl(name, state, addr, port string) nvmehost.Controller {
	return nvmehost.Controller{Name: name, State: state, Transport: "tcp", Addr: addr, Port: port}
}

// TestFollowsAMove: the path to the old place dies; the agent connects the
// new place (through the address map), then removes the dead path once the
// new one is live; a live volume is not asked about between rechecks.
func TestFollowsAMove(t *testing.T) {
	h := &fakeHost{subs: []nvmehost.Subsystem{
		{Name: "nvme-subsys0", NQN: nqn, Controllers: []nvmehost.Controller{ctrl("nvme0", "live", "10.0.2.2", "4420")}},
		{Name: "nvme-subsys1", NQN: "nqn.someone-else", Controllers: []nvmehost.Controller{ctrl("nvme1", "connecting", "10.9.9.9", "1")}},
	}}
	vols := &fakeVolumes{vols: map[string]*mgmtv1.Volume{"v1": published("nvmf://127.0.0.1:4420")}}
	a := New(Config{Host: h, Volumes: vols, HostNQN: "nqn.host", HostID: "host-id", AddressMap: map[string]string{"127.0.0.1": "10.0.2.2"}, Recheck: 100})
	ctx := context.Background()
	if acts, err := a.Pass(ctx); err != nil || len(acts) != 0 || vols.asked != 0 {
		t.Fatalf("all live: %v %v, asked %d", acts, err, vols.asked)
	}
	// The nexus's node dies; the volume is moved.
	h.subs[0].Controllers[0].State = "connecting"
	vols.vols["v1"] = published("nvmf://127.0.0.1:4430")
	acts, err := a.Pass(ctx)
	if err != nil || len(acts) != 1 || acts[0].Kind != "connect" || len(h.connected) != 1 {
		t.Fatalf("after the move: %v %v", acts, err)
	}
	if o := h.connected[0]; o.NQN != nqn || o.Addr != "10.0.2.2" || o.Port != "4430" || o.HostNQN != "nqn.host" || o.HostID != "host-id" || o.CtrlLossTmo != DefaultCtrlLossTmo {
		t.Fatalf("connect options: %+v", o)
	}
	// The new path is connecting: nothing more yet.
	h.subs[0].Controllers = append(h.subs[0].Controllers, ctrl("nvme9", "connecting", "10.0.2.2", "4430"))
	if acts, err := a.Pass(ctx); err != nil || len(acts) != 0 || len(h.connected) != 1 {
		t.Fatalf("while the new path connects: %v %v", acts, err)
	}
	// Live: the dead path goes.
	h.subs[0].Controllers[1].State = "live"
	vols.asked = 0
	acts, err = a.Pass(ctx)
	if err != nil || len(acts) != 1 || acts[0].Kind != "delete" || acts[0].Ctrl != "nvme0" || len(h.deleted) != 1 || vols.asked != 1 {
		t.Fatalf("cleanup: %v %v %v", acts, err, h.deleted)
	}
}

// TestNothingToDo: an unpublished volume, a path that is reconnecting to
// where the volume is, and a volume the service does not know leave the
// paths alone (the last is an error of the pass).
func TestNothingToDo(t *testing.T) {
	h := &fakeHost{subs: []nvmehost.Subsystem{
		{Name: "a", NQN: nqn, Controllers: []nvmehost.Controller{ctrl("nvme0", "connecting", "10.0.0.1", "4420")}},
		{Name: "b", NQN: NexusNQNPrefix + "gone", Controllers: []nvmehost.Controller{ctrl("nvme1", "connecting", "10.0.0.1", "4420")}},
	}}
	vols := &fakeVolumes{vols: map[string]*mgmtv1.Volume{"v1": published("nvmf://10.0.0.1:4420")}}
	a := New(Config{Host: h, Volumes: vols})
	acts, err := a.Pass(context.Background())
	if len(acts) != 0 || len(h.connected) != 0 || len(h.deleted) != 0 || err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("pass: %v %v", acts, err)
	}
	vols.vols["v1"] = &mgmtv1.Volume{Spec: &mgmtv1.VolumeSpec{Name: "data"}, Status: &mgmtv1.VolumeStatus{}}
	if acts, _ := a.Pass(context.Background()); len(acts) != 0 || len(h.connected) != 0 {
		t.Fatalf("unpublished: %v", acts)
	}
}

// TestFollowsAPlannedMove: the path to the old place stays live but turns
// ANA inaccessible (a planned move); the agent asks at once, without
// waiting for a recheck, connects the new place, and leaves the old path
// until it is no longer live (its nexus destroyed).
func TestFollowsAPlannedMove(t *testing.T) {
	old := ctrl("nvme0", "live", "10.0.2.2", "4420")
	old.ANAState = "optimized"
	h := &fakeHost{subs: []nvmehost.Subsystem{{Name: "nvme-subsys0", NQN: nqn, Controllers: []nvmehost.Controller{old}}}}
	vols := &fakeVolumes{vols: map[string]*mgmtv1.Volume{"v1": published("nvmf://127.0.0.1:4420")}}
	a := New(Config{Host: h, Volumes: vols, AddressMap: map[string]string{"127.0.0.1": "10.0.2.2"}, Recheck: 100})
	ctx := context.Background()
	if acts, err := a.Pass(ctx); err != nil || len(acts) != 0 || vols.asked != 0 {
		t.Fatalf("optimized: %v %v, asked %d", acts, err, vols.asked)
	}
	h.subs[0].Controllers[0].ANAState = "inaccessible"
	vols.vols["v1"] = published("nvmf://127.0.0.1:4430")
	acts, err := a.Pass(ctx)
	if err != nil || len(acts) != 1 || acts[0].Kind != "connect" || acts[0].Port != "4430" || vols.asked != 1 {
		t.Fatalf("inaccessible: %v %v, asked %d", acts, err, vols.asked)
	}
	nw := ctrl("nvme9", "live", "10.0.2.2", "4430")
	nw.ANAState = "optimized"
	h.subs[0].Controllers = append(h.subs[0].Controllers, nw)
	if acts, err := a.Pass(ctx); err != nil || len(acts) != 0 || len(h.deleted) != 0 {
		t.Fatalf("the old path is live: %v %v %v", acts, err, h.deleted)
	}
	h.subs[0].Controllers[0].State = "connecting"
	if acts, err := a.Pass(ctx); err != nil || len(acts) != 1 || acts[0].Kind != "delete" || acts[0].Ctrl != "nvme0" {
		t.Fatalf("the old nexus is gone: %v %v", acts, err)
	}
}

// reportingVolumes also takes reports of failed paths; the service moves
// the volume to moveTo on a report.
type reportingVolumes struct {
	fakeVolumes
	reports []string // uri
	moveTo  string
}

func (f *reportingVolumes) ReportPathFailure(_ context.Context, id, uri, host string) (*mgmtv1.Volume, error) {
	f.reports = append(f.reports, uri)
	if f.moveTo != "" {
		f.vols[id] = published(f.moveTo)
	}
	return f.vols[id], nil
}

// TestReportsAFailedPath: the only path, to where the volume is, stops
// being live: the agent reports it (at most every ReportEvery), and when
// the service moves the volume on the report, connects the new place in
// the same pass.
func TestReportsAFailedPath(t *testing.T) {
	h := &fakeHost{subs: []nvmehost.Subsystem{{Name: "nvme-subsys0", NQN: nqn, Controllers: []nvmehost.Controller{ctrl("nvme0", "connecting", "10.0.0.1", "4420")}}}}
	vols := &reportingVolumes{fakeVolumes: fakeVolumes{vols: map[string]*mgmtv1.Volume{"v1": published("nvmf://10.0.0.1:4420")}}}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := New(Config{Host: h, Volumes: vols, HostNQN: "nqn.host", Now: func() time.Time { return now }})
	ctx := context.Background()
	// The service finds the nexus serving: nothing moves.
	if acts, err := a.Pass(ctx); err != nil || len(acts) != 0 || len(vols.reports) != 1 || vols.reports[0] != "nvmf://10.0.0.1:4420/"+nqn {
		t.Fatalf("first pass: %v %v %v", acts, err, vols.reports)
	}
	now = now.Add(time.Second)
	if _, err := a.Pass(ctx); err != nil || len(vols.reports) != 1 {
		t.Fatalf("reported again within ReportEvery: %v %v", err, vols.reports)
	}
	// Later, the service confirms and moves it: connected at once.
	now = now.Add(DefaultReportEvery)
	vols.moveTo = "nvmf://10.0.0.2:4420"
	acts, err := a.Pass(ctx)
	if err != nil || len(vols.reports) != 2 || len(acts) != 1 || acts[0].Kind != "connect" || acts[0].Addr != "10.0.0.2" {
		t.Fatalf("after the move: %v %v %v", acts, err, vols.reports)
	}
	// A live path, or a planned move under way (another path serves):
	// no report.
	h.subs[0].Controllers = append(h.subs[0].Controllers, nvmehost.Controller{Name: "nvme1", State: "live", Addr: "10.0.0.2", Port: "4420", ANAState: "optimized"})
	now = now.Add(DefaultReportEvery)
	vols.vols["v1"] = published("nvmf://10.0.0.1:4420")
	if _, err := a.Pass(ctx); err != nil || len(vols.reports) != 2 {
		t.Fatalf("reported while a path serves: %v %v", err, vols.reports)
	}
}
