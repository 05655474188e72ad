package k8s

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/csi"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/testutil"
)

// pvcWait bounds each wait of TestPVCBinds for the cluster to act (a bind,
// a release, a deletion); none of them is a timing assertion, only a bound
// on a hung test.
const pvcWait = 3 * time.Minute

// startProc starts a long-running peer of a test with its output kept, and
// stops it (SIGTERM, then SIGKILL after 30 s) when the test ends, printing
// the output when the test failed.
func startProc(t *testing.T, name string, bin string, args ...string) *testutil.SyncBuffer {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, tail(out.String(), 200))
		}
	})
	return out
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond until it holds, failing the test with what cond last
// said when it does not within pvcWait.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(pvcWait)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, pvcWait, state)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestPVCBinds runs the dynamic provisioning path of a real cluster: a
// PersistentVolumeClaim of a Nexstor StorageClass becomes a Bound PV through
// the real CSI external-provisioner (calling `nexstor csi --mode
// controller` on a unix socket) and the PV controller of a real
// kube-controller-manager, on a real kube-apiserver, against a running
// three-node dev system. The PV's volume handle names a volume that the
// management service lists with the size and replica count asked for.
// Deleting the claim of a reclaim-Delete PV deletes the volume (DeleteVolume)
// and the PV; a reclaim-Retain PV whose claim is gone is Released and its
// volume is left alone, also after the provisioner has handled the deletion
// of the other.
//
// Bounded: each wait is at most pvcWait (3 minutes); once the binaries are
// built it takes about 20 seconds (with -race, on a loaded 2-core machine).
func TestPVCBinds(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: kube-apiserver, kube-controller-manager, csi-provisioner and a dev system; not in -short mode")
	}
	kcm := testutil.KubeControllerManager(t)
	provisioner := testutil.CSIProvisioner(t)
	kubeconfig, rc := startAPIServer(t)
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	nexstor := testutil.BuildBinary(t, "nexstor")
	dir := t.TempDir()

	// A three-node dev system on loopback, without TLS.
	base := testutil.FreePortRange(t, 12)
	dev := startProc(t, "nexstor dev", nexstor, "dev", "--nodes", "3", "--data-dir", filepath.Join(dir, "dev"),
		"--pool-size", "512MiB", "--demo", "", "--grpc-port", strconv.Itoa(base), "--nbd-port", strconv.Itoa(base+3),
		"--nvmf-port", strconv.Itoa(base+6), "--discovery-port", strconv.Itoa(base+9), "--etcd-port", strconv.Itoa(base+10),
		"--metrics-port", "-1")
	deadline := time.Now().Add(pvcWait)
	for !strings.Contains(dev.String(), "Press Ctrl-C to stop") {
		if time.Now().After(deadline) {
			t.Fatalf("the dev system did not come up:\n%s", dev.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	ap := "127.0.0.1:" + strconv.Itoa(base)
	mc, err := mgmtclient.New([]string{ap}, mgmtclient.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	volumes := func() map[string]*mgmtv1.Volume {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var resp *mgmtv1.ListVolumesResponse
		err := mc.DoVolume(ctx, func(ctx context.Context, v mgmtv1.VolumeServiceClient) error {
			var err error
			resp, err = v.ListVolumes(ctx, &mgmtv1.ListVolumesRequest{})
			return err
		})
		if err != nil {
			t.Fatalf("listing volumes: %v", err)
		}
		out := map[string]*mgmtv1.Volume{}
		for _, v := range resp.GetVolumes() {
			out[v.GetSpec().GetUuid()] = v
		}
		return out
	}

	// The CSI controller, and the sidecar and the PV controller in front of
	// it, as the chart runs them (less leader election).
	sock := filepath.Join(dir, "csi.sock")
	startProc(t, "nexstor csi", nexstor, "csi", "--mode", "controller", "--endpoint", "unix://"+sock, "-a", ap, "--insecure")
	startProc(t, "csi-provisioner", provisioner, "--csi-address="+sock, "--kubeconfig="+kubeconfig, "--leader-election=false",
		"--timeout=60s", "--worker-threads=1", "--extra-create-metadata", "-v=4")
	startProc(t, "kube-controller-manager", kcm, "--kubeconfig="+kubeconfig, "--leader-elect=false",
		"--use-service-account-credentials=false", "--secure-port=0",
		"--controllers=persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller")

	ctx := context.Background()
	// The nodes, as the kubelet registers them with the node plugin
	// (NodeGetInfo: the node's member name, its topology segment): the
	// provisioner offers an Immediate volume the topology of every node
	// that runs the driver, and waits while none does.
	for _, n := range []string{"node-0", "node-1", "node-2"} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n,
			Labels: map[string]string{csi.TopologyKey: n}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.StorageV1().CSINodes().Create(ctx, &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: n},
			Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: csi.DriverName, NodeID: n,
				TopologyKeys: []string{csi.TopologyKey}}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	immediate := storagev1.VolumeBindingImmediate
	for _, sc := range []struct {
		name    string
		reclaim corev1.PersistentVolumeReclaimPolicy
		repl    string
	}{{"nexstor-delete", corev1.PersistentVolumeReclaimDelete, "3"}, {"nexstor-retain", corev1.PersistentVolumeReclaimRetain, "2"}} {
		reclaim := sc.reclaim
		_, err := cs.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
			ObjectMeta:    metav1.ObjectMeta{Name: sc.name},
			Provisioner:   csi.DriverName,
			Parameters:    map[string]string{csi.ParamReplicas: sc.repl},
			ReclaimPolicy: &reclaim, VolumeBindingMode: &immediate,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}

	// claim creates a PVC of class and size and waits for it to be Bound;
	// it returns the PV, having checked the Nexstor volume it names.
	claim := func(name, class string, size int64, repl uint32) *corev1.PersistentVolume {
		t.Helper()
		_, err := cs.CoreV1().PersistentVolumeClaims("default").Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeClaimSpec{
				StorageClassName: &class,
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var pvc *corev1.PersistentVolumeClaim
		waitFor(t, "PVC "+name+" Bound", func() (bool, string) {
			pvc, err = cs.CoreV1().PersistentVolumeClaims("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return pvc.Status.Phase == corev1.ClaimBound, fmt.Sprintf("phase %s, annotations %v", pvc.Status.Phase, pvc.Annotations)
		})
		pv, err := cs.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the PV %q of bound PVC %s: %v", pvc.Spec.VolumeName, name, err)
		}
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != csi.DriverName || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != pvc.UID ||
			pv.Spec.StorageClassName != class {
			t.Fatalf("PV of PVC %s: %+v", name, pv.Spec)
		}
		v := volumes()[pv.Spec.CSI.VolumeHandle]
		if v == nil {
			t.Fatalf("PV %s names volume %q, which the management service does not list (it lists %v)", pv.Name, pv.Spec.CSI.VolumeHandle, volumes())
		}
		if v.GetSpec().GetSize() != uint64(size) || v.GetSpec().GetReplicas() != repl {
			t.Fatalf("volume %s of PVC %s: size %d, %d replicas; want %d, %d", v.GetSpec().GetUuid(), name, v.GetSpec().GetSize(),
				v.GetSpec().GetReplicas(), size, repl)
		}
		// The PV's node affinity is the volume's accessible topology: its
		// replicas' nodes.
		var affinity []string
		if na := pv.Spec.NodeAffinity; na != nil && na.Required != nil {
			for _, term := range na.Required.NodeSelectorTerms {
				for _, e := range term.MatchExpressions {
					if e.Key == csi.TopologyKey {
						affinity = append(affinity, e.Values...)
					}
				}
			}
		}
		if len(affinity) == 0 {
			t.Fatalf("PV %s has no node affinity on %s: %+v", pv.Name, csi.TopologyKey, pv.Spec.NodeAffinity)
		}
		for _, r := range v.GetStatus().GetReplicas() {
			if !slices.Contains(affinity, r.GetNode()) {
				t.Fatalf("PV %s node affinity %v lacks replica node %s", pv.Name, affinity, r.GetNode())
			}
		}
		if got := pv.Spec.Capacity[corev1.ResourceStorage]; got.Value() != size {
			t.Fatalf("PV %s capacity %s, want %d", pv.Name, got.String(), size)
		}
		return pv
	}

	// Reclaim Retain: the claim vanishes, the PV is Released, the volume
	// stays.
	kept := claim("keep", "nexstor-retain", 64<<20, 2)
	if err := cs.CoreV1().PersistentVolumeClaims("default").Delete(ctx, "keep", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "PV "+kept.Name+" Released", func() (bool, string) {
		pv, err := cs.CoreV1().PersistentVolumes().Get(ctx, kept.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return pv.Status.Phase == corev1.VolumeReleased, "phase " + string(pv.Status.Phase)
	})

	// Reclaim Delete: the claim's deletion deletes the volume through
	// DeleteVolume, then the PV.
	gone := claim("scratch", "nexstor-delete", 128<<20, 3)
	if err := cs.CoreV1().PersistentVolumeClaims("default").Delete(ctx, "scratch", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "PV "+gone.Name+" deleted", func() (bool, string) {
		pv, err := cs.CoreV1().PersistentVolumes().Get(ctx, gone.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		return false, fmt.Sprintf("phase %s, finalizers %v", pv.Status.Phase, pv.Finalizers)
	})
	vols := volumes()
	if v := vols[gone.Spec.CSI.VolumeHandle]; v != nil {
		t.Fatalf("volume %s of the deleted reclaim-Delete PV is still there: %v", gone.Spec.CSI.VolumeHandle, v)
	}
	// The provisioner has deleted a PV since the retained one was
	// Released: it has seen that one too, and left it alone.
	if vols[kept.Spec.CSI.VolumeHandle] == nil {
		t.Fatalf("volume %s of the reclaim-Retain PV was deleted after its claim vanished", kept.Spec.CSI.VolumeHandle)
	}
	pv, err := cs.CoreV1().PersistentVolumes().Get(ctx, kept.Name, metav1.GetOptions{})
	if err != nil || pv.Status.Phase != corev1.VolumeReleased {
		t.Fatalf("the reclaim-Retain PV after its claim vanished: %v, %v", err, pv.Status)
	}
}
