package main

import (
	"fmt"
	"io"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
)

// Default ports of the URIs a target may leave them out of.
const (
	defaultNVMfPort = "4420"
	defaultNBDPort  = "10809"
)

// volumeView is the stable JSON/YAML form of a volume. Sizes are bytes.
type volumeView struct {
	Spec   volumeSpecView   `json:"spec" yaml:"spec"`
	Status volumeStatusView `json:"status" yaml:"status"`
	// Created is when the volume was created (RFC 3339, UTC).
	Created string `json:"created,omitempty" yaml:"created,omitempty"`
}

type volumeSpecView struct {
	Name     string `json:"name" yaml:"name"`
	UUID     string `json:"uuid" yaml:"uuid"`
	Size     uint64 `json:"size" yaml:"size"`
	Replicas uint32 `json:"replicas" yaml:"replicas"`
	Thin     bool   `json:"thin" yaml:"thin"`
	// Protocol publish uses when not told; nvmf when the spec leaves it
	// empty (volume.proto).
	Protocol     string            `json:"protocol" yaml:"protocol"`
	NodeSelector map[string]string `json:"node_selector,omitempty" yaml:"node_selector,omitempty"`
	PoolSelector map[string]string `json:"pool_selector,omitempty" yaml:"pool_selector,omitempty"`
}

type volumeStatusView struct {
	Phase     string `json:"phase" yaml:"phase"`
	Reason    string `json:"reason,omitempty" yaml:"reason,omitempty"`
	Operation string `json:"operation,omitempty" yaml:"operation,omitempty"`
	// Healthy counts the replicas known good, out of Spec.Replicas.
	Healthy  uint32              `json:"healthy" yaml:"healthy"`
	Replicas []volumeReplicaView `json:"replicas" yaml:"replicas"`
	Target   *volumeTargetView   `json:"target,omitempty" yaml:"target,omitempty"`
	// Repairs are what the reconcilers have pending or running on the
	// volume, in the service's order; empty when there are none.
	Repairs []repairView `json:"repairs" yaml:"repairs"`
}

type volumeReplicaView struct {
	UUID       string `json:"uuid" yaml:"uuid"`
	Node       string `json:"node" yaml:"node"`
	Rank       uint32 `json:"rank" yaml:"rank"`
	NodeUUID   string `json:"node_uuid" yaml:"node_uuid"`
	Pool       string `json:"pool" yaml:"pool"`
	State      string `json:"state" yaml:"state"`
	ChildState string `json:"child_state,omitempty" yaml:"child_state,omitempty"`
	Reason     string `json:"reason,omitempty" yaml:"reason,omitempty"`
	// RebuildPercent is the progress of the child's rebuild, 0 to 100.
	RebuildPercent float64 `json:"rebuild_percent,omitempty" yaml:"rebuild_percent,omitempty"`
	Owner          string  `json:"owner,omitempty" yaml:"owner,omitempty"`
	Epoch          uint64  `json:"epoch,omitempty" yaml:"epoch,omitempty"`
	// Local: on the nexus's node.
	Local bool `json:"local,omitempty" yaml:"local,omitempty"`
}

type volumeTargetView struct {
	Node     string   `json:"node" yaml:"node"`
	Rank     uint32   `json:"rank" yaml:"rank"`
	NodeUUID string   `json:"node_uuid" yaml:"node_uuid"`
	Protocol string   `json:"protocol" yaml:"protocol"`
	URI      string   `json:"uri" yaml:"uri"`
	NQN      string   `json:"nqn,omitempty" yaml:"nqn,omitempty"`
	HostNQNs []string `json:"host_nqns,omitempty" yaml:"host_nqns,omitempty"`
	// State is the nexus's: online, degraded, faulted, or unknown when its
	// node does not answer.
	State  string `json:"state" yaml:"state"`
	Reason string `json:"reason,omitempty" yaml:"reason,omitempty"`
	Epoch  uint64 `json:"epoch" yaml:"epoch"`
	// Connect is the command that connects a host to the target: nvme
	// connect for nvmf, nbd-client for nbd; empty when the URI is not one
	// nexctl understands.
	Connect string `json:"connect,omitempty" yaml:"connect,omitempty"`
}

// protocolOr is p, or nvmf, the default, when p is empty.
func protocolOr(p string) string {
	if p == "" {
		return "nvmf"
	}
	return p
}

func newVolumeView(v *mgmtv1.Volume) volumeView {
	sp, st := v.GetSpec(), v.GetStatus()
	vv := volumeView{
		Spec: volumeSpecView{Name: sp.GetName(), UUID: sp.GetUuid(), Size: sp.GetSize(), Replicas: sp.GetReplicas(),
			Thin: sp.GetThin(), Protocol: protocolOr(sp.GetProtocol()),
			NodeSelector: sp.GetPlacement().GetNodeSelector(), PoolSelector: sp.GetPlacement().GetPoolSelector()},
		Status: volumeStatusView{Phase: st.GetPhase(), Reason: st.GetReason(), Operation: st.GetOperation(),
			Healthy: st.GetHealthy(), Replicas: []volumeReplicaView{}, Repairs: []repairView{}},
		Created: msTime(v.GetCreatedMs()),
	}
	if vv.Status.Phase == "" {
		// Never show a volume as better than its status says.
		vv.Status.Phase = "unknown"
	}
	for _, r := range st.GetReplicas() {
		vv.Status.Replicas = append(vv.Status.Replicas, volumeReplicaView{UUID: r.GetUuid(), Node: r.GetNode(), Rank: r.GetRank(),
			NodeUUID: r.GetNodeUuid(), Pool: r.GetPool(), State: r.GetState(), ChildState: r.GetChildState(), Reason: r.GetReason(),
			RebuildPercent: r.GetRebuildPercent(), Owner: r.GetOwner(), Epoch: r.GetEpoch(), Local: r.GetLocal()})
	}
	for _, r := range st.GetRepairs() {
		vv.Status.Repairs = append(vv.Status.Repairs, newRepairView(r))
	}
	sort.SliceStable(vv.Status.Replicas, func(i, j int) bool { return vv.Status.Replicas[i].Rank < vv.Status.Replicas[j].Rank })
	if t := st.GetTarget(); t != nil {
		tv := &volumeTargetView{Node: t.GetNode(), Rank: t.GetRank(), NodeUUID: t.GetNodeUuid(), Protocol: protocolOr(t.GetProtocol()),
			URI: t.GetUri(), NQN: t.GetNqn(), HostNQNs: t.GetHostNqns(), State: t.GetState(), Reason: t.GetReason(), Epoch: t.GetEpoch()}
		if tv.State == "" {
			tv.State = "unknown"
		}
		tv.Connect = connectCommand(tv)
		vv.Status.Target = tv
	}
	return vv
}

// shellSafeRE matches words a POSIX shell takes as they are.
var shellSafeRE = regexp.MustCompile(`^[A-Za-z0-9._:/@%+=,-]+$`)

// shellWord quotes s for a POSIX shell when it needs it.
func shellWord(s string) string {
	if shellSafeRE.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// targetAddr splits a target URI of scheme into host (without IPv6
// brackets), port (def when left out) and path (without its leading
// slash); ok is false when uri is not of that form.
func targetAddr(uri, scheme, def string) (host, port, path string, ok bool) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != scheme || u.Hostname() == "" {
		return "", "", "", false
	}
	port = u.Port()
	if port == "" {
		port = def
	}
	return u.Hostname(), port, strings.TrimPrefix(u.Path, "/"), true
}

// connectCommand is the command that connects a host to t: for nvmf,
// `nvme connect -t tcp -a HOST -s PORT -n NQN` (with --hostnqn when one
// host alone is admitted, so that the host presents that NQN); for nbd,
// `nbd-client -N NAME HOST PORT /dev/nbd0`. It is "" when the URI cannot be
// read.
func connectCommand(t *volumeTargetView) string {
	switch t.Protocol {
	case "nvmf":
		host, port, nqn, ok := targetAddr(t.URI, "nvmf", defaultNVMfPort)
		if t.NQN != "" {
			nqn = t.NQN
		}
		if !ok || nqn == "" {
			return ""
		}
		line := fmt.Sprintf("nvme connect -t tcp -a %s -s %s -n %s", shellWord(host), port, shellWord(nqn))
		if len(t.HostNQNs) == 1 {
			line += " --hostnqn " + shellWord(t.HostNQNs[0])
		}
		return line
	case "nbd":
		host, port, name, ok := targetAddr(t.URI, "nbd", defaultNBDPort)
		if !ok || name == "" {
			return ""
		}
		return fmt.Sprintf("nbd-client -N %s %s %s /dev/nbd0", shellWord(name), shellWord(host), port)
	}
	return ""
}

// connectHelp prints how a host connects to the target t.
func connectHelp(w io.Writer, t *volumeTargetView) error {
	if t.Connect == "" {
		_, err := fmt.Fprintf(w, "Connect to %s with a %s client.\n", t.URI, t.Protocol)
		return err
	}
	switch t.Protocol {
	case "nvmf":
		fmt.Fprintf(w, "Connect a host with the kernel's NVMe/TCP initiator (modprobe nvme-tcp; nvme-cli):\n  %s\n", t.Connect)
		if len(t.HostNQNs) > 1 {
			fmt.Fprintf(w, "Only these host NQNs are admitted (the host's is in /etc/nvme/hostnqn): %s\n", strings.Join(t.HostNQNs, ", "))
		}
		_, err := fmt.Fprintf(w, "The volume then shows in `nvme list`; disconnect with: nvme disconnect -n %s\n",
			shellWord(nqnOf(t)))
		return err
	default:
		_, err := fmt.Fprintf(w, "Connect with an NBD client:\n  nbdinfo %s\n  %s    # modprobe nbd; disconnect with nbd-client -d /dev/nbd0\n",
			shellWord(t.URI), t.Connect)
		return err
	}
}

// nqnOf is the target's NQN: its own, else the URI's path.
func nqnOf(t *volumeTargetView) string {
	if t.NQN != "" {
		return t.NQN
	}
	_, _, nqn, _ := targetAddr(t.URI, "nvmf", defaultNVMfPort)
	return nqn
}

// selector formats a label selector as k=v,k=v sorted by key.
func selector(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func volumeTable(w io.Writer, vols []volumeView) error {
	t := output.NewTable(w, "NAME", "SIZE", "REPLICAS", "PHASE", "TARGET", "PROTOCOL")
	for _, v := range vols {
		target, proto := "", v.Spec.Protocol
		if tv := v.Status.Target; tv != nil {
			target, proto = tv.Node, tv.Protocol
		}
		t.Row(v.Spec.Name, output.Size(v.Spec.Size), fmt.Sprintf("%d/%d", v.Status.Healthy, v.Spec.Replicas),
			v.Status.Phase, target, proto)
	}
	return t.Flush()
}

func (a *app) printVolume(v *mgmtv1.Volume) error {
	vv := newVolumeView(v)
	return output.Print(a.out, a.outFormat(), vv, func(w io.Writer) error { return volumeDetail(w, vv) })
}

func volumeDetail(w io.Writer, v volumeView) error { return volumeDetailAt(w, v, time.Now()) }

// volumeDetailAt prints v for people; now is when the countdowns of its
// repairs are counted from.
func volumeDetailAt(w io.Writer, v volumeView, now time.Time) error {
	placement := []string{}
	if len(v.Spec.NodeSelector) > 0 {
		placement = append(placement, "nodes "+selector(v.Spec.NodeSelector))
	}
	if len(v.Spec.PoolSelector) > 0 {
		placement = append(placement, "pools "+selector(v.Spec.PoolSelector))
	}
	kv := []string{"Name", v.Spec.Name, "UUID", v.Spec.UUID, "Size", output.Size(v.Spec.Size), "Type", kind(v.Spec.Thin),
		"Replicas", fmt.Sprintf("%d healthy of %d", v.Status.Healthy, v.Spec.Replicas),
		"Protocol", v.Spec.Protocol, "Placement", strings.Join(placement, "; "), "Created", v.Created,
		"Phase", v.Status.Phase}
	if v.Status.Reason != "" {
		kv = append(kv, "Reason", v.Status.Reason)
	}
	if v.Status.Operation != "" {
		kv = append(kv, "Operation", v.Status.Operation+" (under way)")
	}
	if err := output.KeyValues(w, kv...); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nReplicas:")
	if len(v.Status.Replicas) == 0 {
		fmt.Fprintln(w, "  none")
	} else {
		t := output.NewTable(w, "NODE", "RANK", "POOL", "STATE", "CHILD", "REBUILD", "LOCAL", "UUID", "REASON")
		for _, r := range v.Status.Replicas {
			rebuild := ""
			if r.ChildState == "rebuilding" || r.RebuildPercent > 0 {
				rebuild = fmt.Sprintf("%.1f%%", r.RebuildPercent)
			}
			local := ""
			if r.Local {
				local = "yes"
			}
			t.Row(r.Node, itoa(uint64(r.Rank)), r.Pool, r.State, r.ChildState, rebuild, local, r.UUID, r.Reason)
		}
		if err := t.Flush(); err != nil {
			return err
		}
	}
	if err := repairsText(w, v.Status.Repairs, now); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nTarget:")
	tv := v.Status.Target
	if tv == nil {
		_, err := fmt.Fprintf(w, "  not published (publish it with `nexctl volume publish %s`)\n", v.Spec.Name)
		return err
	}
	hosts := "any host"
	if len(tv.HostNQNs) > 0 {
		hosts = strings.Join(tv.HostNQNs, ", ")
	}
	kv = []string{"  Node", fmt.Sprintf("%s (rank %d)", tv.Node, tv.Rank), "  Protocol", tv.Protocol, "  URI", tv.URI,
		"  Nexus state", tv.State}
	if tv.Reason != "" {
		kv = append(kv, "  Reason", tv.Reason)
	}
	kv = append(kv, "  Epoch", itoa(tv.Epoch))
	if tv.Protocol == "nvmf" {
		kv = append(kv, "  Hosts", hosts)
	}
	kv = append(kv, "  Connect", tv.Connect)
	return output.KeyValues(w, kv...)
}
