package csi

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

func wantCode(t *testing.T, what string, err error, c codes.Code) {
	t.Helper()
	if got := faultgrpc.CodeOf(err); got != c {
		t.Fatalf("%s: %v (%s), want %s", what, err, got, c)
	}
}

func (d *devSystem) get(t *testing.T, ref string) *mgmtv1.Volume {
	t.Helper()
	var v *mgmtv1.Volume
	err := d.client.DoVolume(context.Background(), func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		v, err = cl.GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: ref})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestControllerOnSystem checks what csi-sanity does not: what a created
// volume is made of, where and to whom it is published, and how the
// controller treats volumes and nodes that are gone.
func TestControllerOnSystem(t *testing.T) {
	sys := startDev(t)
	c := NewController(sys.client, nil)
	ctx := context.Background()
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "xfs")

	// Create: the parameters shape the volume; the size is rounded up to
	// 4096 bytes; the topology is the replica nodes plus the consumer
	// Kubernetes chose (WaitForFirstConsumer's first preferred node).
	req := &csi.CreateVolumeRequest{Name: "pvc-0d9ad1a4-0c3e-4f51-9a6c-0d1e2f3a4b5c", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 10<<20 + 1},
		Parameters:    map[string]string{ParamReplicas: "1", ParamThin: "true", "csi.storage.k8s.io/pvc/name": "data"},
		AccessibilityRequirements: &csi.TopologyRequirement{
			Preferred: []*csi.Topology{nodeTopology("node-2")},
			Requisite: []*csi.Topology{nodeTopology("node-0"), nodeTopology("node-1"), nodeTopology("node-2")}}}
	resp, err := c.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	vol := resp.GetVolume()
	v := sys.get(t, vol.GetVolumeId())
	if v.Spec.Name != req.Name || v.Spec.Replicas != 1 || !v.Spec.Thin || v.Spec.Size != 10<<20+4096 || vol.GetCapacityBytes() != 10<<20+4096 {
		t.Fatalf("created %+v, answered %+v", v.Spec, vol)
	}
	if vol.GetVolumeContext()[ContextFsType] != "xfs" || vol.GetVolumeContext()[ContextName] != req.Name {
		t.Fatalf("volume context %v", vol.GetVolumeContext())
	}
	var topo []string
	for _, tp := range vol.GetAccessibleTopology() {
		topo = append(topo, topologyNode(tp))
	}
	replicaNode := v.Status.Replicas[0].Node
	if topo[0] != replicaNode || !slices.Contains(topo, "node-2") || len(topo) > 2 {
		t.Fatalf("topology %v, replica on %s", topo, replicaNode)
	}
	// Again: the same volume. With another size: AlreadyExists.
	again, err := c.CreateVolume(ctx, req)
	if err != nil || again.GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("create again: %v %v", again, err)
	}
	bigger := proto.Clone(req).(*csi.CreateVolumeRequest)
	bigger.CapacityRange = &csi.CapacityRange{RequiredBytes: 64 << 20}
	_, err = c.CreateVolume(ctx, bigger)
	wantCode(t, "create with another size", err, codes.AlreadyExists)
	// More replicas than nodes: the management service's refusal.
	tooMany := proto.Clone(req).(*csi.CreateVolumeRequest)
	tooMany.Name, tooMany.Parameters = "too-many", map[string]string{ParamReplicas: "9"}
	_, err = c.CreateVolume(ctx, tooMany)
	wantCode(t, "9 replicas on 3 nodes", err, codes.InvalidArgument)
	// Not placeable (a pool label no pool has): ResourceExhausted.
	nowhere := proto.Clone(req).(*csi.CreateVolumeRequest)
	nowhere.Name, nowhere.Parameters = "nowhere", map[string]string{ParamReplicas: "1", ParamPoolSelectorPrefix + "class": "none"}
	_, err = c.CreateVolume(ctx, nowhere)
	wantCode(t, "create with an unmatched pool selector", err, codes.ResourceExhausted)

	// Publish for node-1: the nexus admits that node's host NQN only (it
	// runs on the replica's node: the volume has one replica), and the
	// publish context says where and as whom to connect.
	member := map[string]*mgmtv1.Member{}
	for _, m := range sys.members {
		member[m.Name] = m
	}
	pub := &csi.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: "node-1", VolumeCapability: rwo}
	pr, err := c.ControllerPublishVolume(ctx, pub)
	if err != nil {
		t.Fatal(err)
	}
	pc := pr.GetPublishContext()
	v = sys.get(t, vol.GetVolumeId())
	tgt := v.GetStatus().GetTarget()
	if tgt.GetNode() != replicaNode || pc[PublishURI] != tgt.GetUri() || pc[PublishNQN] != tgt.GetNqn() || !strings.HasPrefix(pc[PublishURI], "nvmf://") {
		t.Fatalf("publish context %v, target %+v", pc, tgt)
	}
	if pc[PublishHostNQN] == "" || pc[PublishHostNQN] != member["node-1"].GetHostNqn() || !slices.Equal(tgt.GetHostNqns(), []string{pc[PublishHostNQN]}) {
		t.Fatalf("host NQN %q, node-1's %q, admitted %v", pc[PublishHostNQN], member["node-1"].GetHostNqn(), tgt.GetHostNqns())
	}
	if _, err := targetFromContext(vol.GetVolumeId(), pc); err != nil {
		t.Fatalf("the node cannot read the publish context: %v", err)
	}
	if again, err := c.ControllerPublishVolume(ctx, pub); err != nil || again.GetPublishContext()[PublishURI] != pc[PublishURI] {
		t.Fatalf("publish again: %v %v", again, err)
	}
	other := proto.Clone(pub).(*csi.ControllerPublishVolumeRequest)
	other.NodeId = "node-2"
	_, err = c.ControllerPublishVolume(ctx, other)
	wantCode(t, "publish on a second node", err, codes.FailedPrecondition)
	other.NodeId = "node-9"
	_, err = c.ControllerPublishVolume(ctx, other)
	wantCode(t, "publish on a node that is not a member", err, codes.NotFound)
	if l, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{}); err != nil || !slices.ContainsFunc(l.GetEntries(), func(e *csi.ListVolumesResponse_Entry) bool {
		return e.GetVolume().GetVolumeId() == vol.GetVolumeId() && slices.Equal(e.GetStatus().GetPublishedNodeIds(), []string{"node-1"})
	}) {
		t.Fatalf("list: %v %v", l, err)
	}

	// Unpublish for another node (the nexus's own, say), or one that is
	// gone: nothing changes. For node-1: unpublished.
	for _, n := range []string{replicaNode, "node-9"} {
		if _, err := c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: n}); err != nil {
			t.Fatal(err)
		}
		if sys.get(t, vol.GetVolumeId()).GetStatus().GetTarget() == nil {
			t.Fatalf("unpublish for %s unpublished the volume published for node-1", n)
		}
	}
	if _, err := c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: "node-1"}); err != nil {
		t.Fatal(err)
	}
	if tg := sys.get(t, vol.GetVolumeId()).GetStatus().GetTarget(); tg != nil {
		t.Fatalf("still published after unpublish for node-1: %+v", tg)
	}
	if _, err := c.ControllerPublishVolume(ctx, pub); err != nil {
		t.Fatal(err)
	}

	// Expansion: the file system's turn next for a mount volume, not for
	// a block one.
	ex, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 20 << 20}, VolumeCapability: rwo})
	if err != nil || ex.GetCapacityBytes() != 20<<20 || !ex.GetNodeExpansionRequired() {
		t.Fatalf("expand mount: %v %v", ex, err)
	}
	ex, err = c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapability: blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)})
	if err != nil || ex.GetCapacityBytes() != 20<<20 || ex.GetNodeExpansionRequired() {
		t.Fatalf("expand block to less than it has: %v %v", ex, err)
	}

	// Capacity: one node's share is part of the whole; a node the driver
	// does not know has none.
	all, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil || all.GetAvailableCapacity() <= 0 || all.GetMaximumVolumeSize().GetValue() <= 0 {
		t.Fatalf("capacity: %v %v", all, err)
	}
	one, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: nodeTopology("node-1")})
	if err != nil || one.GetAvailableCapacity() <= 0 || one.GetAvailableCapacity() >= all.GetAvailableCapacity() {
		t.Fatalf("capacity of node-1: %v of %v (%v)", one, all, err)
	}
	none, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: nodeTopology("node-9")})
	if err != nil || none.GetAvailableCapacity() != 0 {
		t.Fatalf("capacity of a node that is not a member: %v %v", none, err)
	}

	// Delete a published volume: unpublished, then deleted; again, and
	// for an ID that names nothing, success.
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	for _, v := range sys.volumes(t) {
		if v.GetSpec().GetUuid() == vol.GetVolumeId() {
			t.Fatalf("volume still listed after delete: %+v", v.GetStatus())
		}
	}
	for _, id := range []string{vol.GetVolumeId(), "not-a-volume-id"} {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("delete %s again: %v", id, err)
		}
	}
	// Unpublish of a volume that is gone succeeds; publish is NotFound.
	if _, err := c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: "node-1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.ControllerPublishVolume(ctx, pub)
	wantCode(t, "publish a deleted volume", err, codes.NotFound)
}

func TestVolumeHealth(t *testing.T) {
	for phase, want := range map[string][]csi.VolumeHealthErrorType{
		"online":   nil,
		"degraded": {csi.VolumeHealthErrorType_DEGRADED},
		"faulted":  {csi.VolumeHealthErrorType_INACCESSIBLE},
		"unknown":  {csi.VolumeHealthErrorType_INACCESSIBLE},
		"creating": {csi.VolumeHealthErrorType_INACCESSIBLE},
	} {
		h := volumeHealth(&mgmtv1.Volume{Spec: &mgmtv1.VolumeSpec{Uuid: testVol, Replicas: 3},
			Status: &mgmtv1.VolumeStatus{Phase: phase, Reason: "why", Healthy: 2}})
		var got []csi.VolumeHealthErrorType
		for _, e := range h.GetHealthStatuses() {
			got = append(got, e.GetStatus())
			if !strings.Contains(e.GetMessage(), "2 of 3 replicas healthy") || !strings.Contains(e.GetMessage(), "why") {
				t.Errorf("%s: message %q", phase, e.GetMessage())
			}
		}
		if !slices.Equal(got, want) || h.GetVolumeId() != testVol {
			t.Errorf("%s: %v, want %v", phase, got, want)
		}
	}
}
