package csi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/units"
)

// DriverName is the driver's name: GetPluginInfo's name and the
// provisioner of a StorageClass.
const DriverName = "csi.nexstor.io"

// TopologyKey is the key of the one topology segment the driver knows: the
// node's name in the Nexstor system (its member name).
const TopologyKey = "topology.nexstor.io/node"

// StorageClass parameters (CreateVolumeRequest.parameters). Keys under
// "csi.storage.k8s.io/" are Kubernetes' own (external-provisioner's extra
// metadata) and are ignored; any other key is refused, so that a typo is
// not silently a default.
const (
	// ParamReplicas: the number of replicas, 1 to the number of nodes;
	// DefaultReplicas when absent.
	ParamReplicas = "repl"
	// ParamThin: "true" allocates the replicas' clusters on first write.
	ParamThin = "thin"
	// ParamProtocol: how the volume is published; only "nvmf" (the
	// default): the node plugin attaches over NVMe/TCP.
	ParamProtocol = "protocol"
	// ParamFsType: the file system of mount volumes, ext4 (the default) or
	// xfs, when the volume capability names none.
	ParamFsType = "fsType"
	// ParamNodeSelectorPrefix + key = value: the replicas' nodes must
	// carry the label key=value (server.yaml labels).
	ParamNodeSelectorPrefix = "nodeSelector."
	// ParamPoolSelectorPrefix + key = value: the replicas' pools must
	// carry the label key=value.
	ParamPoolSelectorPrefix = "poolSelector."

	kubernetesParamPrefix = "csi.storage.k8s.io/"
)

// Volume context keys (CreateVolumeResponse.volume.volume_context), which
// the CO passes to the node plugin.
const (
	// ContextFsType is the file system the node makes on a blank mount
	// volume when the capability names none.
	ContextFsType = "fsType"
	// ContextName is the Nexstor volume name, for people reading a PV.
	ContextName = "volumeName"
)

// Publish context keys (ControllerPublishVolumeResponse.publish_context):
// where and as whom the node attaches the volume.
const (
	// PublishURI is the nexus's nvmf://host:port/<nqn>.
	PublishURI = "uri"
	// PublishNQN is the subsystem NQN of the nexus.
	PublishNQN = "nqn"
	// PublishHostNQN is the host NQN the nexus admits; the node connects
	// with it. Empty when the nexus admits any host.
	PublishHostNQN = "hostNqn"
	// PublishCapacity is the volume's size in bytes when it was
	// published (decimal); informative, later resizes do not update it.
	PublishCapacity = "capacity"
)

// Defaults of CreateVolume.
const (
	// DefaultReplicas is the replica count when ParamReplicas is absent,
	// as `nexctl volume create`.
	DefaultReplicas = 3
	// DefaultCapacity is the size of a volume created without a capacity
	// range, in bytes.
	DefaultCapacity = 1 << 30
	// BlockSize is the granularity of volume sizes in bytes: capacities
	// are rounded up to it.
	BlockSize = 4096
	// DefaultFsType is the file system made on a blank mount volume when
	// neither the capability nor the volume context names one.
	DefaultFsType = "ext4"
)

// supportedFsTypes are the file systems the node plugin makes, mounts and
// grows.
var supportedFsTypes = []string{"ext4", "xfs"}

// volumeParams are the parsed StorageClass parameters.
type volumeParams struct {
	Replicas     uint32
	Thin         bool
	FsType       string // "" when not given
	NodeSelector map[string]string
	PoolSelector map[string]string
}

// parseParams checks and parses CreateVolume parameters.
func parseParams(p map[string]string) (volumeParams, error) {
	out := volumeParams{Replicas: DefaultReplicas}
	for _, k := range slices.Sorted(maps.Keys(p)) {
		v := p[k]
		switch {
		case k == ParamReplicas:
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil || n == 0 {
				return out, badRequest("parameter %s=%q: want a replica count of 1 or more", k, v)
			}
			out.Replicas = uint32(n)
		case k == ParamThin:
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return out, badRequest("parameter %s=%q: want true or false", k, v)
			}
			out.Thin = b
		case k == ParamProtocol:
			if v != "nvmf" {
				return out, badRequest("parameter %s=%q: the node plugin attaches volumes over NVMe/TCP only: use nvmf or leave it out", k, v)
			}
		case k == ParamFsType:
			if !slices.Contains(supportedFsTypes, v) {
				return out, badRequest("parameter %s=%q: use %s", k, v, strings.Join(supportedFsTypes, " or "))
			}
			out.FsType = v
		case strings.HasPrefix(k, ParamNodeSelectorPrefix) && len(k) > len(ParamNodeSelectorPrefix):
			if out.NodeSelector == nil {
				out.NodeSelector = map[string]string{}
			}
			out.NodeSelector[strings.TrimPrefix(k, ParamNodeSelectorPrefix)] = v
		case strings.HasPrefix(k, ParamPoolSelectorPrefix) && len(k) > len(ParamPoolSelectorPrefix):
			if out.PoolSelector == nil {
				out.PoolSelector = map[string]string{}
			}
			out.PoolSelector[strings.TrimPrefix(k, ParamPoolSelectorPrefix)] = v
		case strings.HasPrefix(k, kubernetesParamPrefix):
		default:
			return out, badRequest("parameter %q is not one the driver knows: use %s, %s, %s, %s, %s<label> or %s<label>",
				k, ParamReplicas, ParamThin, ParamProtocol, ParamFsType, ParamNodeSelectorPrefix, ParamPoolSelectorPrefix)
		}
	}
	return out, nil
}

var volumeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// VolumeName returns the Nexstor volume name of a CSI volume name. A name
// that is a valid volume name (1-63 of [a-z0-9.-], such as Kubernetes'
// pvc-<uuid>) is kept, so that operators find the PV's volume under the
// PV's name; any other name (upper case, too long, or a bare UUID, which
// volume lookups would take for a volume ID) becomes its sanitized prefix
// followed by 16 hex digits of its SHA-256, which is deterministic (a
// retried CreateVolume finds its volume) and keeps distinct names apart.
func VolumeName(csiName string) string {
	if volumeNameRE.MatchString(csiName) {
		if _, err := uuid.Parse(csiName); err != nil {
			return csiName
		}
	}
	sum := sha256.Sum256([]byte(csiName))
	var b strings.Builder
	for _, r := range strings.ToLower(csiName) {
		if b.Len() >= 40 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	prefix := strings.Trim(b.String(), ".-")
	if prefix == "" {
		prefix = "csi"
	}
	return prefix + "-" + hex.EncodeToString(sum[:8])
}

// volumeSize chooses the size of a new volume from a capacity range: the
// required bytes rounded up to BlockSize, or DefaultCapacity (capped by
// the limit) when none are required. A range holding no multiple of
// BlockSize is OutOfRange.
func volumeSize(r *csi.CapacityRange) (uint64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, badRequest("capacity range: required %d and limit %d bytes must not be negative", req, lim)
	}
	var size uint64
	if req == 0 {
		size = DefaultCapacity
		if lim > 0 && size > uint64(lim) {
			size = uint64(lim) / BlockSize * BlockSize
		}
	} else {
		size = (uint64(req) + BlockSize - 1) / BlockSize * BlockSize
	}
	if size == 0 || lim > 0 && size > uint64(lim) {
		return 0, fault.New(fault.OutOfRange, CodeCapacity,
			fmt.Sprintf("capacity range [%d, %d] bytes holds no volume size: sizes are multiples of %d bytes", req, lim, BlockSize), "")
	}
	return size, nil
}

// fitsRange reports whether an existing volume of size bytes satisfies a
// capacity range.
func fitsRange(size uint64, r *csi.CapacityRange) bool {
	return size >= uint64(max(r.GetRequiredBytes(), 0)) && (r.GetLimitBytes() <= 0 || size <= uint64(r.GetLimitBytes()))
}

// capabilityProblem says why the driver cannot serve a volume capability,
// "" when it can. The driver serves single-node access modes (a nexus is
// exported to one node), as a block device or mounted with a file system
// it makes and grows.
func capabilityProblem(c *csi.VolumeCapability) string {
	if c == nil {
		return "no volume capability"
	}
	switch m := c.GetAccessMode().GetMode(); m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	default:
		return fmt.Sprintf("access mode %s: a volume is attached to one node at a time; use a SINGLE_NODE mode", m)
	}
	switch {
	case c.GetBlock() != nil:
	case c.GetMount() != nil:
		if fs := c.GetMount().GetFsType(); fs != "" && !slices.Contains(supportedFsTypes, fs) {
			return fmt.Sprintf("file system %q: use %s", fs, strings.Join(supportedFsTypes, " or "))
		}
	default:
		return "access type: give block or mount"
	}
	return ""
}

// checkCapabilities refuses a missing or unsupported capability.
func checkCapabilities(cs ...*csi.VolumeCapability) error {
	if len(cs) == 0 {
		return badRequest("no volume capability given")
	}
	for _, c := range cs {
		if c == nil {
			return badRequest("no volume capability given")
		}
		if p := capabilityProblem(c); p != "" {
			return fault.New(fault.InvalidArgument, CodeCapability, "volume capability: "+p, "")
		}
	}
	return nil
}

// capabilityFsType is the file system the capabilities ask for ("" for
// none); capabilities naming two different ones are refused.
func capabilityFsType(cs []*csi.VolumeCapability) (string, error) {
	fs := ""
	for _, c := range cs {
		f := c.GetMount().GetFsType()
		if f == "" {
			continue
		}
		if fs != "" && f != fs {
			return "", badRequest("volume capabilities ask for two file systems, %s and %s", fs, f)
		}
		fs = f
	}
	return fs, nil
}

// specDifference names how an existing volume differs from what a
// CreateVolume asks for ("" when it satisfies the request).
func specDifference(size, replicas uint64, thin bool, nodeSel, poolSel map[string]string, p volumeParams, r *csi.CapacityRange) string {
	switch {
	case !fitsRange(size, r):
		return fmt.Sprintf("size %s, outside the requested range [%d, %d] bytes", units.FormatSizeExact(int64(size)), r.GetRequiredBytes(), r.GetLimitBytes())
	case replicas != uint64(p.Replicas):
		return fmt.Sprintf("%d replicas, not %d", replicas, p.Replicas)
	case thin != p.Thin:
		return fmt.Sprintf("thin=%v, not %v", thin, p.Thin)
	case !maps.Equal(nodeSel, p.NodeSelector) && len(nodeSel)+len(p.NodeSelector) > 0:
		return "another node selector"
	case !maps.Equal(poolSel, p.PoolSelector) && len(poolSel)+len(p.PoolSelector) > 0:
		return "another pool selector"
	}
	return ""
}

// topologyNode returns the node a topology names, "" when it has no
// segment of TopologyKey.
func topologyNode(t *csi.Topology) string { return t.GetSegments()[TopologyKey] }

func nodeTopology(node string) *csi.Topology {
	return &csi.Topology{Segments: map[string]string{TopologyKey: node}}
}

// accessibleTopology is where a new volume is reported accessible: the
// nodes of its replicas, where its nexus reads locally. Any member can host
// the nexus, so a node the CO asked for is accessible too: the first
// preferred one (the node Kubernetes chose for the pod under
// WaitForFirstConsumer), and, when none of those is among the requisite
// nodes, every requisite member, so that the answer never contradicts the
// request.
func accessibleTopology(replicaNodes []string, req *csi.TopologyRequirement, member func(string) bool) []*csi.Topology {
	nodes := slices.Clone(replicaNodes)
	add := func(n string) {
		if n != "" && member(n) && !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	if p := req.GetPreferred(); len(p) > 0 {
		add(topologyNode(p[0]))
	}
	if rq := req.GetRequisite(); len(rq) > 0 {
		inRequisite := false
		for _, t := range rq {
			if slices.Contains(nodes, topologyNode(t)) {
				inRequisite = true
			}
		}
		if !inRequisite {
			for _, t := range rq {
				add(topologyNode(t))
			}
		}
	}
	out := make([]*csi.Topology, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, nodeTopology(n))
	}
	return out
}

// isVolumeID reports whether id has the form of the driver's volume IDs
// (the Nexstor volume UUID).
func isVolumeID(id string) bool {
	_, err := uuid.Parse(id)
	return err == nil && len(id) == 36
}
