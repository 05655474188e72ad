package operator

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	v1alpha1 "github.com/nexstor/nexstor/api/k8s/v1alpha1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/security/certgen"
	"github.com/nexstor/nexstor/internal/testutil"
)

// waitFor polls cond until it holds, failing the test with the last
// observation after limit (a bound on a hang, not a timing assertion).
func waitFor(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v; last seen: %s", what, limit, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startEnvtest runs the built kube-apiserver on Debian's etcd, with the
// chart's CRDs installed, and returns a client of it.
func startEnvtest(t *testing.T) (*envtest.Environment, client.Client) {
	t.Helper()
	env := &envtest.Environment{
		BinaryAssetsDirectory:    testutil.EnvtestAssets(t),
		CRDDirectoryPaths:        []string{filepath.Join(testutil.RepoRoot(t), "deploy", "helm", "nexstor", "crds")},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 3 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	if _, err := env.Start(); err != nil {
		t.Fatalf("envtest (kube-apiserver %s, etcd): %v", testutil.K8sVersion, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stopping envtest: %v", err)
		}
	})
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return env, c
}

// startDevSystem runs a one-node Nexstor system in this process (what
// `nexstor dev --nodes 1` runs) with a small pool p0, and returns its
// access point.
func startDevSystem(t *testing.T) (string, *testutil.SyncBuffer) {
	t.Helper()
	dir := t.TempDir()
	base := testutil.FreePortRange(t, 8)
	logs := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan ctlserver.DevSystem, 1)
	done := make(chan error, 1)
	o := ctlserver.DevOptions{Nodes: 1, DataDir: dir, GRPCPort: base, NVMfPort: base + 1, NBDPort: base + 2, EtcdPort: base + 3,
		DiscoveryPort: base + 5, MetricsPort: -1, PoolSize: "64MiB", HeartbeatInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Ready:  func(s ctlserver.DevSystem) { ready <- s }}
	go func() { done <- ctlserver.RunDev(ctx, o) }()
	var sys ctlserver.DevSystem
	select {
	case sys = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("dev system: %v\n%s", err, logs.String())
	case <-time.After(3 * time.Minute):
		cancel()
		<-done
		t.Fatalf("dev system not up after 3 minutes\n%s", logs.String())
	}
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return sys.Configs[0].GRPCListen, logs
}

func getDP(t *testing.T, c client.Client, name string) (*v1alpha1.DiskPool, error) {
	t.Helper()
	var dp v1alpha1.DiskPool
	err := c.Get(context.Background(), types.NamespacedName{Name: name}, &dp)
	return &dp, err
}

// waitState waits until DiskPool name has the state and returns it.
func waitState(t *testing.T, c client.Client, name, state string) *v1alpha1.DiskPool {
	t.Helper()
	var dp *v1alpha1.DiskPool
	waitFor(t, 2*time.Minute, fmt.Sprintf("DiskPool %s %s", name, state), func() (bool, string) {
		var err error
		dp, err = getDP(t, c, name)
		if err != nil {
			return false, err.Error()
		}
		return dp.Status.State == state, fmt.Sprintf("%+v", dp.Status)
	})
	return dp
}

// TestDiskPool runs the operator against a real kube-apiserver (envtest)
// and a real Nexstor system, and follows a DiskPool through its life: the
// pool is created on the node's engine with its labels and its status
// filled from the engine; new labels reach the management service and a
// volume's pool selector; a pool taken away is imported back from its disk (same UUID, not
// formatted); a DiskPool for an unknown node waits; node and disk cannot
// change; deleting a DiskPool whose pool holds a replica leaves both and
// names the volume; once the volume is gone the pool is destroyed and the
// DiskPool goes.
func TestDiskPool(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: kube-apiserver, etcd and a Nexstor system; not in -short mode")
	}
	env, c := startEnvtest(t)
	ap, logs := startDevSystem(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("system log:\n%s", logs.String())
		}
	})
	sys, err := NewSystemClient([]string{ap}, engineclient.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	eng, err := engineclient.New(ap, engineclient.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	mc, err := mgmtclient.New([]string{ap}, mgmtclient.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()

	opLogs := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	opDone := make(chan error, 1)
	go func() {
		opDone <- Run(ctx, Options{Config: env.Config, System: sys, Resync: 500 * time.Millisecond,
			Log: slog.New(slog.NewTextHandler(opLogs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	}()
	defer func() {
		cancel()
		if err := <-opDone; err != nil {
			t.Errorf("operator: %v", err)
		}
		if t.Failed() {
			t.Logf("operator log:\n%s", opLogs.String())
		}
	}()
	bg := context.Background()

	// A DiskPool becomes a pool, with the engine's figures in its status.
	disk := "file://" + filepath.Join(t.TempDir(), "dp1.img") + "?size=1GiB"
	dp := &v1alpha1.DiskPool{ObjectMeta: metav1.ObjectMeta{Name: "dp1"},
		Spec: v1alpha1.DiskPoolSpec{Node: "node-0", Disk: disk, Labels: map[string]string{"tier": "silver"}}}
	if err := c.Create(bg, dp); err != nil {
		t.Fatal(err)
	}
	dp = waitState(t, c, "dp1", v1alpha1.StateOnline)
	p, err := eng.GetPool(bg, &enginev1.GetPoolRequest{Name: "dp1"})
	if err != nil {
		t.Fatalf("the engine has no pool dp1: %v", err)
	}
	// A file:// disk gets the io_uring engine, and the engine records it so;
	// the DiskPool still names the same disk and is Online.
	if p.GetDisk() != "uring://"+strings.TrimPrefix(disk, "file://") || dp.Status.UUID != p.GetUuid() || dp.Status.Capacity != int64(p.GetCapacity()) || dp.Status.Capacity <= 0 ||
		dp.Status.Available <= 0 || dp.Status.Used != 0 || dp.Status.Replicas != 0 {
		t.Fatalf("status %+v of pool %+v", dp.Status, p)
	}
	if !slices.Contains(dp.Finalizers, v1alpha1.Finalizer) {
		t.Fatalf("finalizers %v", dp.Finalizers)
	}
	uuid := p.GetUuid()
	if !maps.Equal(p.GetLabels(), map[string]string{"tier": "silver"}) {
		t.Fatalf("pool labels %v", p.GetLabels())
	}

	// Labels follow the spec; a bad key is refused by the API server.
	dp.Spec.Labels = map[string]string{"tier": "gold", "nexstor.io/zone": "a"}
	if err := c.Update(bg, dp); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "the management service seeing dp1's new labels", func() (bool, string) {
		var pools []*mgmtv1.NodePool
		err := mc.DoVolume(bg, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			resp, err := cl.ListPools(ctx, &mgmtv1.ListPoolsRequest{})
			pools = resp.GetPools()
			return err
		})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pools {
			if p.GetPool().GetName() == "dp1" {
				return maps.Equal(p.GetPool().GetLabels(), dp.Spec.Labels), fmt.Sprint(p.GetPool().GetLabels())
			}
		}
		return false, fmt.Sprint(pools)
	})
	dp, _ = getDP(t, c, "dp1")
	dp.Spec.Labels = map[string]string{"-bad": "x"}
	if err := c.Update(bg, dp); !apierrors.IsInvalid(err) {
		t.Fatalf("a bad label key: %v", err)
	}

	// A pool exported behind the operator's back is imported again from its
	// disk: the same pool, not a new one on a formatted disk.
	if _, err := eng.ExportPool(bg, &enginev1.ExportPoolRequest{Name: "dp1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "pool dp1 imported again", func() (bool, string) {
		p, err := eng.GetPool(bg, &enginev1.GetPoolRequest{Name: "dp1"})
		if err != nil {
			return false, err.Error()
		}
		return p.GetUuid() == uuid, fmt.Sprintf("%+v", p)
	})

	// Node and disk are fixed.
	dp, _ = getDP(t, c, "dp1")
	dp.Spec.Node = "node-1"
	if err := c.Update(bg, dp); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "node cannot change") {
		t.Fatalf("changing the node: %v", err)
	}

	// A DiskPool for a node the system does not have waits, saying why; a
	// disk that holds another pool is never formatted.
	ghost := &v1alpha1.DiskPool{ObjectMeta: metav1.ObjectMeta{Name: "ghost"}, Spec: v1alpha1.DiskPoolSpec{Node: "node-9", Disk: "/dev/null"}}
	if err := c.Create(bg, ghost); err != nil {
		t.Fatal(err)
	}
	ghost = waitState(t, c, "ghost", v1alpha1.StatePending)
	if !strings.Contains(ghost.Status.Message, "node-9 is not a member") {
		t.Fatalf("status %+v", ghost.Status)
	}
	twin := &v1alpha1.DiskPool{ObjectMeta: metav1.ObjectMeta{Name: "twin"}, Spec: v1alpha1.DiskPoolSpec{Node: "node-0", Disk: disk}}
	if err := c.Create(bg, twin); err != nil {
		t.Fatal(err)
	}
	twin = waitState(t, c, "twin", v1alpha1.StateError)
	if !strings.Contains(twin.Status.Message, "dp1") {
		t.Fatalf("a DiskPool on the disk of pool dp1: status %+v", twin.Status)
	}
	if p, err := eng.GetPool(bg, &enginev1.GetPoolRequest{Name: "dp1"}); err != nil || p.GetUuid() != uuid {
		t.Fatalf("pool dp1 after a DiskPool named its disk: %+v, %v", p, err)
	}
	// Both go at once: neither made a pool.
	for _, o := range []*v1alpha1.DiskPool{ghost, twin} {
		if err := c.Delete(bg, o); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 2*time.Minute, "DiskPool "+o.Name+" gone", func() (bool, string) {
			_, err := getDP(t, c, o.Name)
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
	}

	// A volume that selects tier=gold gets its replica in dp1.
	err = mc.DoVolume(bg, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		_, err := cl.CreateVolume(ctx, &mgmtv1.CreateVolumeRequest{Spec: &mgmtv1.VolumeSpec{Name: "v1", Size: 256 << 20, Replicas: 1,
			Placement: &mgmtv1.Placement{PoolSelector: map[string]string{"tier": "gold"}}}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "DiskPool dp1 counting the replica", func() (bool, string) {
		dp, err := getDP(t, c, "dp1")
		if err != nil {
			return false, err.Error()
		}
		return dp.Status.Replicas == 1 && dp.Status.Committed == 256<<20, fmt.Sprintf("%+v", dp.Status)
	})

	// Deleting the DiskPool leaves the pool while it holds the replica.
	dp, _ = getDP(t, c, "dp1")
	if err := c.Delete(bg, dp); err != nil {
		t.Fatal(err)
	}
	dp = waitState(t, c, "dp1", v1alpha1.StateDeleting)
	waitFor(t, 2*time.Minute, "DiskPool dp1 naming volume v1", func() (bool, string) {
		dp, err := getDP(t, c, "dp1")
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(dp.Status.BlockedBy, []string{"volume v1"}) && strings.Contains(dp.Status.Message, "volume v1"),
			fmt.Sprintf("%+v", dp.Status)
	})
	if p, err := eng.GetPool(bg, &enginev1.GetPoolRequest{Name: "dp1"}); err != nil || p.GetReplicaCount() != 1 {
		t.Fatalf("pool dp1 while its DiskPool is deleted and a replica is in it: %+v, %v", p, err)
	}

	// Once the volume is gone, so are the pool and the DiskPool.
	err = mc.DoVolume(bg, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		_, err := cl.DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: "v1"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Minute, "DiskPool dp1 gone", func() (bool, string) {
		dp, err := getDP(t, c, "dp1")
		if err != nil {
			return apierrors.IsNotFound(err), err.Error()
		}
		return false, fmt.Sprintf("%+v", dp.Status)
	})
	if _, err := eng.GetPool(bg, &enginev1.GetPoolRequest{Name: "dp1"}); err == nil {
		t.Fatal("pool dp1 is still on the engine after its DiskPool went")
	}
	// Its disk was destroyed, not left as a pool to import.
	if _, err := eng.ImportPool(bg, &enginev1.ImportPoolRequest{Disk: disk}); err == nil {
		t.Fatal("the disk of the destroyed pool dp1 still imports")
	}
}

// TestCertSecrets: certgen's certificates become one Secret per role plus
// the CA's in a real API server, and a second run leaves them alone (the
// chart's Job may run again without replacing the system's CA).
func TestCertSecrets(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: kube-apiserver and etcd; not in -short mode")
	}
	env, c := startEnvtest(t)
	bg := context.Background()
	if err := c.Create(bg, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "nexstor"}}); err != nil {
		t.Fatal(err)
	}
	write := func() (bool, string) {
		dir := t.TempDir()
		if err := certgen.GenerateAll(dir, certgen.Options{Hosts: []string{"10.0.0.1"}}); err != nil {
			t.Fatal(err)
		}
		exists, err := WriteCertSecrets(bg, env.Config, "nexstor", "nexstor-certs", dir, false)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		return exists, string(b)
	}
	exists, ca := write()
	if exists {
		t.Fatal("the first run found a CA")
	}
	for _, name := range CertSecretNames("nexstor-certs") {
		var s corev1.Secret
		if err := c.Get(bg, types.NamespacedName{Namespace: "nexstor", Name: name}, &s); err != nil {
			t.Fatal(err)
		}
		role := strings.TrimPrefix(name, "nexstor-certs-")
		if string(s.Data["ca.crt"]) != ca || len(s.Data[role+".crt"]) == 0 || len(s.Data[role+".key"]) == 0 || len(s.Data) != 3-boolInt(role == "ca") {
			t.Fatalf("secret %s has %d keys", name, len(s.Data))
		}
	}
	if exists, _ := write(); !exists {
		t.Fatal("the second run did not find the CA")
	}
	var s corev1.Secret
	if err := c.Get(bg, types.NamespacedName{Namespace: "nexstor", Name: "nexstor-certs-ca"}, &s); err != nil || string(s.Data["ca.crt"]) != ca {
		t.Fatalf("the CA was replaced by a second run (%v)", err)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
