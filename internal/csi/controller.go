package csi

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/wrapperspb"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// VolumeAPI is the part of the management service the controller uses:
// its VolumeService at the leader. *mgmtclient.Client implements it. Every
// call the controller makes through it is safe to repeat.
type VolumeAPI interface {
	DoVolume(ctx context.Context, call func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error) error
}

// Controller is the CSI controller service. It talks only to the
// management service's VolumeService (never to engines), so the csi
// certificate role needs nothing else. A CSI volume is a Nexstor volume:
// its volume_id is the volume's UUID and its name is VolumeName of the CSI
// name. The controller deletes a volume only when DeleteVolume asks for
// it, never because a PV vanished. Safe for concurrent use; every RPC is
// idempotent, as the CSI spec requires.
type Controller struct {
	csi.UnimplementedControllerServer
	api VolumeAPI
	log *slog.Logger
}

// NewController returns the controller service over api.
func NewController(api VolumeAPI, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.Default()
	}
	return &Controller{api: api, log: log}
}

var controllerCaps = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
}

// ControllerGetCapabilities implements csi.ControllerServer. Snapshots
// are volume snapshots of the management service; a clone of a volume is
// made from a transient snapshot of it.
func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	out := &csi.ControllerGetCapabilitiesResponse{}
	for _, t := range controllerCaps {
		out.Capabilities = append(out.Capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return out, nil
}

func (c *Controller) vol(ctx context.Context, call func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error) error {
	return c.api.DoVolume(ctx, call)
}

// getVolume returns the volume whose UUID is id, nil when there is none
// (an id that is not a UUID names none).
func (c *Controller) getVolume(ctx context.Context, id string) (*mgmtv1.Volume, error) {
	if !isVolumeID(id) {
		return nil, nil
	}
	return c.lookup(ctx, id, func(v *mgmtv1.Volume) bool { return v.GetSpec().GetUuid() == id })
}

// lookup gets a volume by name or UUID; nil when there is none or when the
// one found is not the one wanted (a name that looks like another
// volume's UUID).
func (c *Controller) lookup(ctx context.Context, ref string, want func(*mgmtv1.Volume) bool) (*mgmtv1.Volume, error) {
	var v *mgmtv1.Volume
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		v, err = cl.GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: ref})
		return err
	})
	switch {
	case isCode(err, codes.NotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get volume %s: %w", ref, err)
	case !want(v):
		c.log.Warn("volume lookup found another volume", "ref", ref, "found", v.GetSpec().GetName(), "uuid", v.GetSpec().GetUuid())
		return nil, nil
	}
	return v, nil
}

// CreateVolume implements csi.ControllerServer: it creates (or finds, for
// a retried call) the Nexstor volume VolumeName(name). An existing volume
// is returned when it satisfies the request; otherwise the call is
// AlreadyExists, naming the difference. A volume that cannot be placed is
// ResourceExhausted with the scheduler's reasons.
func (c *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, badRequest("CreateVolume: name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()...); err != nil {
		return nil, err
	}
	p, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	fs, err := capabilityFsType(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	if fs != "" && p.FsType != "" && fs != p.FsType {
		return nil, badRequest("CreateVolume %s: the capability asks for %s, parameter %s for %s", req.GetName(), fs, ParamFsType, p.FsType)
	}
	if fs == "" {
		fs = p.FsType
	}
	size, err := volumeSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	name := VolumeName(req.GetName())
	// A content source: the volume is restored from a snapshot (of the
	// source volume, for a clone), at the snapshot's size, grown after to
	// the size asked for.
	src := req.GetVolumeContentSource()
	var snap string
	want := size
	if src != nil {
		existing, err := c.lookup(ctx, name, func(v *mgmtv1.Volume) bool { return v.GetSpec().GetName() == name })
		if err != nil {
			return nil, err
		}
		if existing != nil && existing.GetSpec().GetFromSnapshot() != "" && src.GetVolume() != nil {
			// A retried clone: its transient snapshot may be gone.
			snap, size = existing.GetSpec().GetFromSnapshot(), existing.GetSpec().GetSize()
			defer c.deleteSnapshot(ctx, src.GetVolume().GetVolumeId()+"/"+cloneSnapshotName(req.GetName())) //nolint:errcheck // best effort
		} else {
			var cleanup func()
			if snap, size, cleanup, err = c.contentSource(ctx, req); err != nil {
				return nil, err
			}
			defer cleanup()
		}
		if existing != nil && existing.GetSpec().GetFromSnapshot() != snap {
			return nil, fault.New(fault.AlreadyExists, CodeVolumeExists,
				fmt.Sprintf("CreateVolume %s: volume %s exists with other content", req.GetName(), name), "")
		}
		if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && size > uint64(lim) {
			return nil, fault.New(fault.OutOfRange, CodeCapacity,
				fmt.Sprintf("CreateVolume %s: the source holds %d bytes, more than the limit of %d", req.GetName(), size, lim), "")
		}
		if req.GetCapacityRange().GetRequiredBytes() == 0 || want < size {
			want = size
		}
		p.Thin = true
	}
	var v *mgmtv1.Volume
	for attempt := 0; ; attempt++ {
		existing, err := c.lookup(ctx, name, func(v *mgmtv1.Volume) bool { return v.GetSpec().GetName() == name })
		if err != nil {
			return nil, err
		}
		spec := &mgmtv1.VolumeSpec{Name: name, Size: size, Replicas: p.Replicas, Thin: p.Thin, Protocol: "nvmf",
			Placement: &mgmtv1.Placement{NodeSelector: p.NodeSelector, PoolSelector: p.PoolSelector}, FromSnapshot: snap}
		if existing != nil {
			s := existing.GetSpec()
			r := req.GetCapacityRange()
			if src != nil {
				r = nil // grown after it was restored; sized below
			}
			if d := specDifference(s.GetSize(), uint64(s.GetReplicas()), s.GetThin(), s.GetPlacement().GetNodeSelector(),
				s.GetPlacement().GetPoolSelector(), p, r); d != "" {
				return nil, fault.New(fault.AlreadyExists, CodeVolumeExists,
					fmt.Sprintf("CreateVolume %s: volume %s exists with %s", req.GetName(), name, d), "")
			}
			// The existing spec, so that the management service's
			// idempotent create finishes a create left half done.
			spec.Size, spec.Protocol = s.GetSize(), s.GetProtocol()
		}
		err = c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			var err error
			v, err = cl.CreateVolume(ctx, &mgmtv1.CreateVolumeRequest{Spec: spec})
			return err
		})
		if err == nil {
			break
		}
		if isCode(err, codes.AlreadyExists) && existing == nil && attempt == 0 {
			continue // created meanwhile by another call: compare with it
		}
		if fault.CodeOf(err) == "volume.not_placeable" {
			return nil, fault.Wrap(err, fault.ResourceExhausted, CodeNoCapacity, fmt.Sprintf("CreateVolume %s", req.GetName()), "")
		}
		return nil, fmt.Errorf("CreateVolume %s: create volume %s: %w", req.GetName(), name, err)
	}
	if src != nil && v.GetSpec().GetSize() < want {
		err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			var err error
			v, err = cl.ResizeVolume(ctx, &mgmtv1.ResizeVolumeRequest{Name: name, Size: want})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("CreateVolume %s: grow volume %s to %d bytes: %w", req.GetName(), name, want, err)
		}
	}
	c.log.Info("volume created", "csi_name", req.GetName(), "volume", name, "uuid", v.GetSpec().GetUuid(), "size", v.GetSpec().GetSize(),
		"from_snapshot", snap)
	members, err := c.memberNames(ctx)
	if err != nil {
		return nil, err
	}
	vctx := map[string]string{ContextName: name}
	if fs != "" {
		vctx[ContextFsType] = fs
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:           v.GetSpec().GetUuid(),
		CapacityBytes:      int64(v.GetSpec().GetSize()),
		VolumeContext:      vctx,
		ContentSource:      src,
		AccessibleTopology: accessibleTopology(replicaNodes(v), req.GetAccessibilityRequirements(), func(n string) bool { return members[n] != nil }),
	}}, nil
}

// replicaNodes lists the nodes of a volume's replicas.
func replicaNodes(v *mgmtv1.Volume) []string {
	var out []string
	for _, r := range v.GetStatus().GetReplicas() {
		if r.GetNode() != "" && !slices.Contains(out, r.GetNode()) {
			out = append(out, r.GetNode())
		}
	}
	return out
}

// memberNames returns the system's nodes by name.
func (c *Controller) memberNames(ctx context.Context) (map[string]*mgmtv1.Node, error) {
	var resp *mgmtv1.ListNodesResponse
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.ListNodes(ctx, &mgmtv1.ListNodesRequest{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := map[string]*mgmtv1.Node{}
	for _, n := range resp.GetNodes() {
		out[n.GetMember().GetName()] = n
	}
	return out, nil
}

// DeleteVolume implements csi.ControllerServer. A volume that does not
// exist is deleted already; a published one is unpublished first.
// Replicas on nodes that are down are removed when they return (the
// management service keeps the volume "deleting" until then), so the call
// succeeds without them.
func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, badRequest("DeleteVolume: volume_id is required")
	}
	v, err := c.getVolume(ctx, id)
	if err != nil || v == nil {
		return &csi.DeleteVolumeResponse{}, err
	}
	name := v.GetSpec().GetName()
	if t := v.GetStatus().GetTarget(); t != nil {
		c.log.Info("unpublishing a volume before deleting it", "volume", name, "node", t.GetNode())
		if err := c.unpublish(ctx, name); err != nil {
			return nil, fmt.Errorf("DeleteVolume %s: %w", id, err)
		}
	}
	var resp *mgmtv1.DeleteVolumeResponse
	err = c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		resp, err = cl.DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: name})
		return err
	})
	if isCode(err, codes.NotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("DeleteVolume %s: delete volume %s: %w", id, name, err)
	}
	if len(resp.GetPending()) > 0 {
		c.log.Warn("volume deleted; replicas on nodes that are down go when they return", "volume", name, "pending", resp.GetPending())
	} else {
		c.log.Info("volume deleted", "volume", name, "uuid", id)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *Controller) unpublish(ctx context.Context, name string) error {
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		_, err := cl.UnpublishVolume(ctx, &mgmtv1.UnpublishVolumeRequest{Name: name})
		return err
	})
	if err != nil && !isCode(err, codes.NotFound) {
		return fmt.Errorf("unpublish volume %s: %w", name, err)
	}
	return nil
}

// ControllerPublishVolume implements csi.ControllerServer: it publishes
// the volume for the node named node_id (a member's name) over NVMe/TCP:
// the management service puts the nexus on that node (or, for a 1-replica
// volume, on its replica's node) and admits only that node's host NQN. The
// answer says where and as whom to connect (PublishURI, PublishNQN,
// PublishHostNQN). Publishing again for the same node returns the same
// context; a volume published for another node is FailedPrecondition.
func (c *Controller) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	switch {
	case id == "":
		return nil, badRequest("ControllerPublishVolume: volume_id is required")
	case node == "":
		return nil, badRequest("ControllerPublishVolume %s: node_id is required", id)
	}
	if err := checkCapabilities(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	v, err := c.getVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(id)
	}
	members, err := c.memberNames(ctx)
	if err != nil {
		return nil, err
	}
	m := members[node]
	if m == nil {
		return nil, fault.New(fault.NotFound, CodeNodeNotFound,
			fmt.Sprintf("ControllerPublishVolume %s: node %q is not a member of the Nexstor system", id, node), "")
	}
	var hosts []string
	if h := m.GetMember().GetHostNqn(); h != "" {
		hosts = []string{h}
	}
	name := v.GetSpec().GetName()
	t := v.GetStatus().GetTarget()
	// Published already for this node: the same answer. (The nexus may
	// be on another node than the consumer, such as the replica's node of
	// a 1-replica volume; what identifies the consumer is the host NQN
	// the nexus admits.)
	if t == nil || t.GetProtocol() != "nvmf" || len(hosts) == 0 || !slices.Equal(t.GetHostNqns(), hosts) {
		err = c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			var err error
			v, err = cl.PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: name, Node: node, Protocol: "nvmf", HostNqns: hosts})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("ControllerPublishVolume %s on %s: publish volume %s: %w", id, node, name, err)
		}
		t = v.GetStatus().GetTarget()
	}
	if t.GetUri() == "" || t.GetNqn() == "" {
		return nil, fmt.Errorf("ControllerPublishVolume %s on %s: the management service published volume %s without an NVMe/TCP address (target %v)",
			id, node, name, t)
	}
	c.log.Info("volume published", "volume", name, "node", node, "nexus_node", t.GetNode(), "uri", t.GetUri())
	pc := map[string]string{PublishURI: t.GetUri(), PublishNQN: t.GetNqn(),
		PublishCapacity: strconv.FormatUint(v.GetSpec().GetSize(), 10)}
	if len(hosts) > 0 {
		pc[PublishHostNQN] = hosts[0]
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: pc}, nil
}

// ControllerUnpublishVolume implements csi.ControllerServer: it removes
// the volume's nexus. It succeeds when the volume is gone, is not
// published, or is published for another node than node_id (an empty
// node_id means any node); the management service removes a nexus whose
// node is dead when the node returns.
func (c *Controller) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, badRequest("ControllerUnpublishVolume: volume_id is required")
	}
	v, err := c.getVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	t := v.GetStatus().GetTarget()
	if v == nil || t == nil {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if n := req.GetNodeId(); n != "" {
		members, err := c.memberNames(ctx)
		if err != nil {
			return nil, err
		}
		if on := consumers(v, members); !slices.Contains(on, n) {
			c.log.Info("unpublish for a node the volume is not published to: nothing to do", "volume", v.GetSpec().GetName(),
				"node", n, "published_to", on)
			return &csi.ControllerUnpublishVolumeResponse{}, nil
		}
	}
	if err := c.unpublish(ctx, v.GetSpec().GetName()); err != nil {
		return nil, fmt.Errorf("ControllerUnpublishVolume %s: %w", id, err)
	}
	c.log.Info("volume unpublished", "volume", v.GetSpec().GetName(), "node", req.GetNodeId(), "nexus_node", t.GetNode())
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// ValidateVolumeCapabilities implements csi.ControllerServer: capabilities
// the driver serves are confirmed; otherwise the answer says why not.
func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, badRequest("ValidateVolumeCapabilities: volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, badRequest("ValidateVolumeCapabilities %s: no volume capability given", id)
	}
	v, err := c.getVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(id)
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if p := capabilityProblem(vc); p != "" {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: p}, nil
		}
	}
	if len(req.GetParameters()) > 0 {
		p, err := parseParams(req.GetParameters())
		if err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: fault.Message(err)}, nil
		}
		s := v.GetSpec()
		if d := specDifference(s.GetSize(), uint64(s.GetReplicas()), s.GetThin(), s.GetPlacement().GetNodeSelector(),
			s.GetPlacement().GetPoolSelector(), p, nil); d != "" {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: "the volume has " + d}, nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters()}}, nil
}

// listVolumes returns every volume that is not being deleted, by UUID.
func (c *Controller) listVolumes(ctx context.Context) ([]*mgmtv1.Volume, error) {
	var resp *mgmtv1.ListVolumesResponse
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.ListVolumes(ctx, &mgmtv1.ListVolumesRequest{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	out := slices.DeleteFunc(resp.GetVolumes(), func(v *mgmtv1.Volume) bool { return v.GetStatus().GetPhase() == "deleting" })
	slices.SortFunc(out, func(a, b *mgmtv1.Volume) int { return strings.Compare(a.GetSpec().GetUuid(), b.GetSpec().GetUuid()) })
	return out, nil
}

// page cuts a list sorted by UUID at a starting token (the last UUID of
// the previous page: the page starts after it, so a volume deleted or
// created between pages neither shifts nor repeats entries) and at
// maxEntries; next is the token of the following page, "" at the end. A
// token that is not a UUID is Aborted, as the CSI spec asks.
func page[T any](items []T, id func(T) string, token string, maxEntries int32) (out []T, next string, err error) {
	if maxEntries < 0 {
		return nil, "", badRequest("max_entries %d must not be negative", maxEntries)
	}
	if token != "" {
		if !isVolumeID(token) {
			return nil, "", fault.New(fault.Aborted, CodeBadToken, fmt.Sprintf("starting_token %q is not a token this driver gave", token), "list again from the start")
		}
		i, _ := slices.BinarySearchFunc(items, token, func(x T, t string) int { return strings.Compare(id(x), t) })
		for i < len(items) && id(items[i]) == token {
			i++
		}
		items = items[i:]
	}
	if maxEntries > 0 && len(items) > int(maxEntries) {
		return items[:maxEntries], id(items[maxEntries-1]), nil
	}
	return items, "", nil
}

// ListVolumes implements csi.ControllerServer, with the node each volume
// is published on.
func (c *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vols, err := c.listVolumes(ctx)
	if err != nil {
		return nil, err
	}
	vols, next, err := page(vols, func(v *mgmtv1.Volume) string { return v.GetSpec().GetUuid() }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	members, err := c.memberNames(ctx)
	if err != nil {
		return nil, err
	}
	out := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		out.Entries = append(out.Entries, &csi.ListVolumesResponse_Entry{Volume: csiVolume(v),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: consumers(v, members)}})
	}
	return out, nil
}

func csiVolume(v *mgmtv1.Volume) *csi.Volume {
	out := &csi.Volume{VolumeId: v.GetSpec().GetUuid(), CapacityBytes: int64(v.GetSpec().GetSize()),
		VolumeContext: map[string]string{ContextName: v.GetSpec().GetName()}}
	for _, n := range replicaNodes(v) {
		out.AccessibleTopology = append(out.AccessibleTopology, nodeTopology(n))
	}
	return out
}

// consumers are the nodes a volume is published to: the members whose
// host NQN its nexus admits (the nexus itself may run elsewhere); the
// nexus's node when it admits any host.
func consumers(v *mgmtv1.Volume, members map[string]*mgmtv1.Node) []string {
	t := v.GetStatus().GetTarget()
	if t == nil {
		return nil
	}
	if len(t.GetHostNqns()) == 0 {
		return []string{t.GetNode()}
	}
	var out []string
	for name, n := range members {
		if h := n.GetMember().GetHostNqn(); h != "" && slices.Contains(t.GetHostNqns(), h) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// ControllerGetVolume implements csi.ControllerServer.
func (c *Controller) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, badRequest("ControllerGetVolume: volume_id is required")
	}
	v, err := c.getVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(req.GetVolumeId())
	}
	members, err := c.memberNames(ctx)
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{Volume: csiVolume(v),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: consumers(v, members)}}, nil
}

// volumeHealth reports a volume's phase as CSI health: online is healthy;
// degraded (a replica missing or rebuilding) is DEGRADED; faulted, unknown
// (the nexus's node does not answer), creating and deleting are
// INACCESSIBLE. Health is never reported better than the management
// service knows it.
func volumeHealth(v *mgmtv1.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.GetSpec().GetUuid()}
	st := v.GetStatus()
	msg := st.GetPhase()
	if st.GetReason() != "" {
		msg += ": " + st.GetReason()
	}
	msg = fmt.Sprintf("%s (%d of %d replicas healthy)", msg, st.GetHealthy(), v.GetSpec().GetReplicas())
	switch st.GetPhase() {
	case "online":
	case "degraded":
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_DEGRADED, Reason: "degraded", Message: msg})
	default:
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: st.GetPhase(), Message: msg})
	}
	return h
}

// ControllerGetVolumeHealth implements csi.ControllerServer.
func (c *Controller) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, badRequest("ControllerGetVolumeHealth: volume_id is required")
	}
	v, err := c.getVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(req.GetVolumeId())
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: volumeHealth(v)}, nil
}

// ControllerListVolumeHealth implements csi.ControllerServer.
func (c *Controller) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	vols, err := c.listVolumes(ctx)
	if err != nil {
		return nil, err
	}
	vols, next, err := page(vols, func(v *mgmtv1.Volume) string { return v.GetSpec().GetUuid() }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	out := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, v := range vols {
		out.Entries = append(out.Entries, volumeHealth(v))
	}
	return out, nil
}

// GetCapacity implements csi.ControllerServer: the free bytes of the
// online pools of joined, uncordoned nodes that the parameters' selectors
// and the topology (one node) admit. maximum_volume_size is the largest of
// those pools' free space, since each replica lives in one pool.
func (c *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	p, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if capabilityProblem(vc) != "" {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	node := ""
	if t := req.GetAccessibleTopology(); t != nil {
		if node = topologyNode(t); node == "" {
			return &csi.GetCapacityResponse{}, nil // a segment this driver does not know
		}
	}
	members, err := c.memberNames(ctx)
	if err != nil {
		return nil, err
	}
	var pools *mgmtv1.ListPoolsResponse
	err = c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		pools, err = cl.ListPools(ctx, &mgmtv1.ListPoolsRequest{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("GetCapacity: list pools: %w", err)
	}
	var total, largest uint64
	for _, np := range pools.GetPools() {
		m := members[np.GetNode()].GetMember()
		if m == nil || m.GetState() != "joined" || m.GetCordoned() || node != "" && np.GetNode() != node ||
			np.GetPool().GetState() != "online" || !selects(p.NodeSelector, m.GetLabels()) || !selects(p.PoolSelector, np.GetPool().GetLabels()) {
			continue
		}
		free := np.GetPool().GetFree()
		total += free
		largest = max(largest, free)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: int64(total), MaximumVolumeSize: wrapInt64(largest),
		MinimumVolumeSize: wrapInt64(BlockSize)}, nil
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// ControllerExpandVolume implements csi.ControllerServer: the volume grows
// online (replicas, then the nexus) to the required bytes rounded up to
// BlockSize; a volume already that large is left as it is. A mount volume
// then needs NodeExpandVolume to grow its file system.
func (c *Controller) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, badRequest("ControllerExpandVolume: volume_id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, badRequest("ControllerExpandVolume %s: capacity_range is required", id)
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if err := checkCapabilities(vc); err != nil {
			return nil, err
		}
	}
	size, err := volumeSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	v, err := c.getVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(id)
	}
	nodeExpansion := req.GetVolumeCapability().GetBlock() == nil
	if cur := v.GetSpec().GetSize(); cur >= size {
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(cur), NodeExpansionRequired: nodeExpansion}, nil
	}
	name := v.GetSpec().GetName()
	err = c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		v, err = cl.ResizeVolume(ctx, &mgmtv1.ResizeVolumeRequest{Name: name, Size: size})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ControllerExpandVolume %s: resize volume %s: %w", id, name, err)
	}
	c.log.Info("volume expanded", "volume", name, "size", v.GetSpec().GetSize())
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(v.GetSpec().GetSize()), NodeExpansionRequired: nodeExpansion}, nil
}

func wrapInt64(n uint64) *wrapperspb.Int64Value { return wrapperspb.Int64(int64(n)) }
