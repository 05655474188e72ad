// Package v1alpha1 is the Kubernetes API of Nexstor, group nexstor.io,
// version v1alpha1: the DiskPool custom resource that the operator
// (`nexstor operator`) turns into a pool on a node's engine. The CRD that
// declares it is deploy/helm/nexstor/crds/nexstor.io_diskpools.yaml; the two
// must describe the same fields.
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and Version of the API.
const (
	Group   = "nexstor.io"
	Version = "v1alpha1"
)

// GroupVersion is the API's group and version.
var GroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// AddToScheme registers DiskPool and DiskPoolList in a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &DiskPool{}, &DiskPoolList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// Finalizer is the finalizer the operator puts on every DiskPool: the
// object stays until its pool is destroyed (or its node has left the
// system), so a pool holding replicas is never forgotten by accident.
const Finalizer = "nexstor.io/diskpool"

// DiskPool asks for a pool on one node's disk. It is cluster-scoped; its
// name is the pool's name on the node (1-63 characters of a-z 0-9 . -, as
// Kubernetes names are, starting with a letter or digit).
type DiskPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DiskPoolSpec   `json:"spec"`
	Status DiskPoolStatus `json:"status,omitempty"`
}

// DiskPoolSpec is what the user asks for. Node and Disk cannot change once
// set (the CRD refuses it): a pool does not move.
type DiskPoolSpec struct {
	// Node is the name of the Nexstor node (its server.yaml node_name, as
	// `nexctl node list` shows it) whose engine owns the disk.
	Node string `json:"node"`
	// Disk is the disk URI as nexctl takes it: aio:///dev/sdb,
	// uring:///dev/nvme1n1, file:///var/lib/nexstor/d0.img?size=10GiB, or
	// a bare device path (aio). A disk that already holds a Nexstor pool of
	// this name is imported; a blank one is formatted; a disk holding
	// anything else, or a pool of another name, is never written to.
	Disk string `json:"disk"`
	// Labels of the pool, matched by the poolSelector.<label> parameters
	// of StorageClasses (and nexctl volume create --pool-selector). They
	// may change at any time; the operator sets them on the engine.
	Labels map[string]string `json:"labels,omitempty"`
}

// The states of a DiskPool (DiskPoolStatus.State).
const (
	// StatePending: the pool does not exist yet and cannot be made now
	// (the node is not a member or does not run its engine); retried.
	StatePending = "Pending"
	// StateOnline: the pool is imported and serving.
	StateOnline = "Online"
	// StateFaulted: the engine knows the pool but cannot serve it
	// (Message says why).
	StateFaulted = "Faulted"
	// StateUnknown: the node did not answer; the figures are the last ones
	// read and may be stale.
	StateUnknown = "Unknown"
	// StateError: the engine refused the pool (Message says why and what to
	// do); retried, since the disk or the node may be fixed.
	StateError = "Error"
	// StateDeleting: the DiskPool is being deleted and its pool is not
	// destroyed yet (BlockedBy names what holds it).
	StateDeleting = "Deleting"
)

// DiskPoolStatus is what the operator last observed, never better than
// it is: figures are from the engine itself.
type DiskPoolStatus struct {
	// State is one of Pending, Online, Faulted, Unknown, Error, Deleting.
	State string `json:"state,omitempty"`
	// Message says why the pool is in its state.
	Message string `json:"message,omitempty"`
	// UUID is the pool's UUID.
	UUID string `json:"uuid,omitempty"`
	// Capacity is the size of the pool's data area in bytes.
	Capacity int64 `json:"capacity,omitempty"`
	// Used is the bytes in clusters that replicas own.
	Used int64 `json:"used,omitempty"`
	// Available is the bytes not allocated to any replica.
	Available int64 `json:"available,omitempty"`
	// Committed is the sum of the sizes of the pool's replicas (thin
	// replicas may commit more than the capacity).
	Committed int64 `json:"committed,omitempty"`
	// Replicas is the number of replicas in the pool.
	Replicas int32 `json:"replicas,omitempty"`
	// BlockedBy, while the DiskPool is being deleted, names the volumes
	// (and replicas of no volume) still in the pool: it is destroyed only
	// once they have left it.
	BlockedBy []string `json:"blockedBy,omitempty"`
	// ObservedGeneration is the metadata.generation the status describes.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// DiskPoolList is a list of DiskPools.
type DiskPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DiskPool `json:"items"`
}

// DeepCopyInto copies p into out.
func (p *DiskPool) DeepCopyInto(out *DiskPool) {
	*out = *p
	out.TypeMeta = p.TypeMeta
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = p.Spec
	if p.Spec.Labels != nil {
		out.Spec.Labels = make(map[string]string, len(p.Spec.Labels))
		for k, v := range p.Spec.Labels {
			out.Spec.Labels[k] = v
		}
	}
	p.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a copy of p.
func (p *DiskPool) DeepCopy() *DiskPool {
	if p == nil {
		return nil
	}
	out := new(DiskPool)
	p.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *DiskPool) DeepCopyObject() runtime.Object { return p.DeepCopy() }

// DeepCopyInto copies s into out.
func (s *DiskPoolStatus) DeepCopyInto(out *DiskPoolStatus) {
	*out = *s
	if s.BlockedBy != nil {
		out.BlockedBy = append([]string(nil), s.BlockedBy...)
	}
}

// DeepCopyInto copies l into out.
func (l *DiskPoolList) DeepCopyInto(out *DiskPoolList) {
	*out = *l
	out.TypeMeta = l.TypeMeta
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]DiskPool, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a copy of l.
func (l *DiskPoolList) DeepCopy() *DiskPoolList {
	if l == nil {
		return nil
	}
	out := new(DiskPoolList)
	l.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *DiskPoolList) DeepCopyObject() runtime.Object { return l.DeepCopy() }
