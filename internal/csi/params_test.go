package csi

import (
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

func TestVolumeName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"pvc-3f1c0a52-8b1e-4c61-9f5e-0e6d2a7b9c11", "pvc-3f1c0a52-8b1e-4c61-9f5e-0e6d2a7b9c11"},
		{"data", "data"},
		{"a.b-c", "a.b-c"},
	} {
		if got := VolumeName(tc.in); got != tc.want {
			t.Errorf("VolumeName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := "sanity-controller-create-maxlen-" + strings.Repeat("a", 96)
	seen := map[string]string{}
	for _, in := range []string{
		"Sanity-1A2B3C4D-5E6F7A8B", "sanity-1a2b3c4d-5e6f7a8b-", "sanity-1A2B3C4D-5E6F7A8b", // differ only in case or a trailing dash
		long, long + "b", "3f1c0a52-8b1e-4c61-9f5e-0e6d2a7b9c11", "---", "UPPER",
	} {
		got := VolumeName(in)
		if !volumeNameRE.MatchString(got) || isVolumeID(got) {
			t.Errorf("VolumeName(%q) = %q: not a valid volume name, or a UUID", in, got)
		}
		if VolumeName(in) != got {
			t.Errorf("VolumeName(%q) is not deterministic", in)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("VolumeName(%q) = VolumeName(%q) = %q", in, other, got)
		}
		seen[got] = in
	}
}

func TestParseParams(t *testing.T) {
	p, err := parseParams(nil)
	if err != nil || p.Replicas != DefaultReplicas || p.Thin || p.FsType != "" {
		t.Fatalf("defaults: %+v, %v", p, err)
	}
	p, err = parseParams(map[string]string{"repl": "2", "thin": "true", "protocol": "nvmf", "fsType": "xfs",
		"nodeSelector.zone": "a", "poolSelector.class": "ssd", "csi.storage.k8s.io/pvc/name": "claim"})
	if err != nil || p.Replicas != 2 || !p.Thin || p.FsType != "xfs" || p.NodeSelector["zone"] != "a" || p.PoolSelector["class"] != "ssd" {
		t.Fatalf("all set: %+v, %v", p, err)
	}
	for _, bad := range []map[string]string{{"repl": "0"}, {"repl": "x"}, {"thin": "maybe"}, {"protocol": "nbd"},
		{"fsType": "btrfs"}, {"replicas": "3"}, {"nodeSelector.": "x"}} {
		if _, err := parseParams(bad); faultgrpc.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("parseParams(%v): %v, want InvalidArgument", bad, err)
		}
	}
}

func TestVolumeSize(t *testing.T) {
	for _, tc := range []struct {
		req, lim int64
		want     uint64
		code     codes.Code
	}{
		{0, 0, DefaultCapacity, codes.OK},
		{1, 0, 4096, codes.OK},
		{4096, 4096, 4096, codes.OK},
		{5000, 0, 8192, codes.OK},
		{0, 10000, 8192, codes.OK},
		{5000, 6000, 0, codes.OutOfRange},
		{0, 100, 0, codes.OutOfRange},
		{-1, 0, 0, codes.InvalidArgument},
	} {
		got, err := volumeSize(&csi.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim})
		if got != tc.want || faultgrpc.CodeOf(err) != tc.code {
			t.Errorf("volumeSize(%d, %d) = %d, %v; want %d, %v", tc.req, tc.lim, got, err, tc.want, tc.code)
		}
	}
	if !fitsRange(8192, &csi.CapacityRange{RequiredBytes: 5000}) || fitsRange(8192, &csi.CapacityRange{RequiredBytes: 1, LimitBytes: 4096}) {
		t.Error("fitsRange")
	}
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}}}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}
}

func TestCapabilities(t *testing.T) {
	rwo := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	for _, c := range []*csi.VolumeCapability{mountCap(rwo, ""), mountCap(rwo, "ext4"), mountCap(rwo, "xfs"), blockCap(rwo),
		blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER), mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, "")} {
		if p := capabilityProblem(c); p != "" {
			t.Errorf("%v: %s", c, p)
		}
	}
	for _, c := range []*csi.VolumeCapability{nil, mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, ""),
		blockCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY), mountCap(rwo, "btrfs"),
		{AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo}}} {
		if capabilityProblem(c) == "" {
			t.Errorf("%v accepted", c)
		}
	}
	if err := checkCapabilities(); faultgrpc.CodeOf(err) != codes.InvalidArgument {
		t.Errorf("no capability: %v", err)
	}
	if _, err := capabilityFsType([]*csi.VolumeCapability{mountCap(rwo, "ext4"), mountCap(rwo, "xfs")}); err == nil {
		t.Error("two file systems accepted")
	}
}

func TestAccessibleTopology(t *testing.T) {
	member := func(n string) bool { return strings.HasPrefix(n, "node-") }
	names := func(ts []*csi.Topology) []string {
		var out []string
		for _, x := range ts {
			out = append(out, topologyNode(x))
		}
		return out
	}
	reps := []string{"node-1", "node-2"}
	if got := names(accessibleTopology(reps, nil, member)); !slices.Equal(got, reps) {
		t.Errorf("no requirement: %v", got)
	}
	// WaitForFirstConsumer: the chosen node comes first among the
	// preferred ones, and is added.
	req := &csi.TopologyRequirement{Preferred: []*csi.Topology{nodeTopology("node-0"), nodeTopology("node-1")},
		Requisite: []*csi.Topology{nodeTopology("node-0"), nodeTopology("node-1")}}
	if got := names(accessibleTopology(reps, req, member)); !slices.Equal(got, []string{"node-1", "node-2", "node-0"}) {
		t.Errorf("preferred: %v", got)
	}
	// A requisite that holds no replica node: its members are added, a
	// node that is not a member is not.
	req = &csi.TopologyRequirement{Requisite: []*csi.Topology{nodeTopology("node-5"), nodeTopology("elsewhere")}}
	if got := names(accessibleTopology(reps, req, member)); !slices.Equal(got, []string{"node-1", "node-2", "node-5"}) {
		t.Errorf("requisite: %v", got)
	}
}

func TestPage(t *testing.T) {
	ids := []string{
		"10000000-0000-0000-0000-000000000000", "20000000-0000-0000-0000-000000000000",
		"30000000-0000-0000-0000-000000000000", "40000000-0000-0000-0000-000000000000",
	}
	id := func(s string) string { return s }
	got, next, err := page(ids, id, "", 3)
	if err != nil || len(got) != 3 || next != ids[2] {
		t.Fatalf("first page: %v %q %v", got, next, err)
	}
	got, next, err = page(ids, id, next, 3)
	if err != nil || !slices.Equal(got, ids[3:]) || next != "" {
		t.Fatalf("second page: %v %q %v", got, next, err)
	}
	// The volume a token names was deleted: the page starts after it.
	got, _, err = page([]string{ids[0], ids[1], ids[3]}, id, ids[2], 0)
	if err != nil || !slices.Equal(got, ids[3:]) {
		t.Fatalf("after a deleted token: %v %v", got, err)
	}
	if _, _, err := page(ids, id, "bogus", 0); faultgrpc.CodeOf(err) != codes.Aborted {
		t.Fatalf("bad token: %v", err)
	}
}

func TestTargetFromContext(t *testing.T) {
	const id = "3f1c0a52-8b1e-4c61-9f5e-0e6d2a7b9c11"
	nqn := "nqn.2024-11.io.nexstor:nexus:" + id
	tg, err := targetFromContext(id, map[string]string{PublishURI: "nvmf://10.0.0.1:4420/" + nqn, PublishNQN: nqn,
		PublishHostNQN: "nqn.h", PublishCapacity: "8192"})
	if err != nil || tg.HostNQN != "nqn.h" || tg.Capacity != 8192 || tg.VolumeID != id {
		t.Fatalf("%+v %v", tg, err)
	}
	for _, pc := range []map[string]string{
		{},
		{PublishURI: "nvmf://10.0.0.1:4420/" + nqn, PublishNQN: "nqn.other"},
		{PublishURI: "nbd://10.0.0.1:10809/x", PublishNQN: nqn},
		{PublishURI: "nvmf://10.0.0.1/" + nqn, PublishNQN: nqn},
		{PublishURI: "nvmf://10.0.0.1:4420/" + nqn, PublishNQN: nqn, PublishCapacity: "-1"},
	} {
		if _, err := targetFromContext(id, pc); faultgrpc.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%v: %v", pc, err)
		}
	}
}

func TestPathHealth(t *testing.T) {
	kinds := func(h *csi.VolumeHealth) []csi.VolumeHealthErrorType {
		var out []csi.VolumeHealthErrorType
		for _, e := range h.GetHealthStatuses() {
			out = append(out, e.GetStatus())
		}
		return out
	}
	live, down := Path{Name: "nvme1", State: "live", Live: true}, Path{Name: "nvme2", State: "connecting"}
	for _, tc := range []struct {
		paths []Path
		want  []csi.VolumeHealthErrorType
	}{
		{[]Path{live}, nil},
		{[]Path{live, down}, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_DEGRADED}},
		{[]Path{down}, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_INACCESSIBLE}},
		{nil, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_INACCESSIBLE}},
	} {
		if got := kinds(pathHealth("v", tc.paths)); !slices.Equal(got, tc.want) {
			t.Errorf("%v: %v, want %v", tc.paths, got, tc.want)
		}
	}
}
