// Package k8s tests the Kubernetes packaging: the Helm chart, linted and
// rendered by a real helm, and installed into a real kube-apiserver (which
// validates every object of it).
package k8s

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/nexstor/nexstor/api/k8s/v1alpha1"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/operator"
	"github.com/nexstor/nexstor/internal/testutil"
)

func chartDir(t *testing.T) string {
	return filepath.Join(testutil.RepoRoot(t), "deploy", "helm", "nexstor")
}

// helmRun runs helm with args and returns its standard output, failing the
// test with both outputs when it fails.
func helmRun(t *testing.T, args ...string) string {
	t.Helper()
	// Found first: finding it may wait for the build of the Kubernetes
	// peers, which must not eat the time helm has.
	helm := testutil.Helm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, helm, args...)
	// helm keeps its caches and settings under these: keep them in the test.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// minimal are the values without which the chart refuses to render.
var minimal = []string{"--set", "accessPoints={10.0.0.1,10.0.0.2,10.0.0.3}", "--set", "certificates.hosts={10.0.0.1,10.0.0.2,10.0.0.3}"}

// objects splits rendered manifests into objects (kind and the decoded
// document), dropping empty documents.
func objects(t *testing.T, manifests string) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := yaml.NewDecoder(strings.NewReader(manifests))
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("helm template printed invalid YAML: %v", err)
		}
		if m != nil {
			out = append(out, m)
		}
	}
}

func find(objs []map[string]any, kind, nameSuffix string) map[string]any {
	for _, o := range objs {
		md, _ := o["metadata"].(map[string]any)
		if o["kind"] == kind && strings.HasSuffix(md["name"].(string), nameSuffix) {
			return o
		}
	}
	return nil
}

// TestChartRenders: helm lint passes; helm template refuses a chart
// without access points; each storage node's server.yaml, as the init
// container writes it, is a configuration nexstor server accepts; the
// snapshotter runs only when asked for; the StorageClass asks for 3
// replicas.
func TestChartRenders(t *testing.T) {
	helmRun(t, append([]string{"lint", "--strict", chartDir(t)}, minimal...)...)
	helmRun(t, append([]string{"lint", "--strict", chartDir(t), "--set", "tls.enabled=false", "--set", "etcd.endpoints={etcd-0:2379}",
		"--set", "csi.snapshots.enabled=true", "--set", "operator.enabled=false"}, minimal...)...)

	cmd := exec.Command(testutil.Helm(t), "template", "x", chartDir(t))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "accessPoints: give 1, 3, 5 or 7") {
		t.Fatalf("helm template without access points: %v\n%s", err, out)
	}

	for _, tls := range []bool{true, false} {
		args := append([]string{"template", "x", chartDir(t), "-n", "nexstor"}, minimal...)
		if !tls {
			args = append(args, "--set", "tls.enabled=false", "--set", "csi.snapshots.enabled=true")
		}
		objs := objects(t, helmRun(t, args...))
		cm := find(objs, "ConfigMap", "-node")
		if cm == nil {
			t.Fatal("no node ConfigMap")
		}
		in := cm["data"].(map[string]any)["server.yaml.in"].(string)
		yml := strings.NewReplacer("@NODE_NAME@", "worker-1", "@NODE_IP@", "10.0.0.2").Replace(in)
		cfg, err := config.Parse([]byte(yml))
		if err != nil {
			t.Fatalf("server.yaml of the chart (tls %v):\n%s\n%v", tls, yml, err)
		}
		if cfg.NodeName != "worker-1" || cfg.GRPCListen != "10.0.0.2:10124" || len(cfg.AccessPoints) != 3 ||
			cfg.TransportConfig.AllowInsecure == tls || !cfg.UsesEmbeddedEtcd() {
			t.Fatalf("server.yaml of the chart (tls %v) reads as %+v", tls, cfg)
		}
		dep := find(objs, "Deployment", "-csi-controller")
		if dep == nil {
			t.Fatal("no CSI controller Deployment")
		}
		b, _ := yaml.Marshal(dep)
		if got := strings.Contains(string(b), "csi-snapshotter"); got == tls {
			t.Fatalf("snapshotter in the controller: %v with snapshots enabled %v", got, !tls)
		}
		if !strings.Contains(string(b), "--access-points=10.0.0.1:10124,10.0.0.2:10124,10.0.0.3:10124") {
			t.Fatalf("CSI controller without the access points:\n%s", b)
		}
		sc := find(objs, "StorageClass", "nexstor")
		if sc == nil || sc["parameters"].(map[string]any)["repl"] != "3" || sc["provisioner"] != "csi.nexstor.io" {
			t.Fatalf("StorageClass %v", sc)
		}
		if (find(objs, "Job", "-certgen") != nil) != tls {
			t.Fatalf("certgen Job rendered: %v with TLS %v", !tls, tls)
		}
		// The Grafana dashboard ships as a ConfigMap for Grafana's
		// sidecar, byte for byte the file in the chart.
		dash := find(objs, "ConfigMap", "-dashboard")
		if dash == nil {
			t.Fatal("no Grafana dashboard ConfigMap")
		}
		want, err := os.ReadFile(filepath.Join(testutil.RepoRoot(t), testutil.DashboardPath))
		if err != nil {
			t.Fatal(err)
		}
		labels, _ := dash["metadata"].(map[string]any)["labels"].(map[string]any)
		if got, _ := dash["data"].(map[string]any)["nexstor.json"].(string); got != strings.TrimRight(string(want), "\n") || labels["grafana_dashboard"] != "1" {
			t.Fatalf("dashboard ConfigMap: labels %v, %d bytes of JSON, want the %d of %s", labels, len(got), len(want), testutil.DashboardPath)
		}
	}

	// node.steadyMonitor: only an explicit false turns the server's
	// default off; a release whose values lack the key keeps it.
	for _, c := range []struct {
		set  []string
		want bool
	}{{nil, false}, {[]string{"--set", "node.steadyMonitor=true"}, false}, {[]string{"--set", "node.steadyMonitor=false"}, true},
		{[]string{"--set", "node.steadyMonitor=null"}, false}} {
		args := append(append([]string{"template", "x", chartDir(t), "-n", "nexstor"}, minimal...), c.set...)
		ds := find(objects(t, helmRun(t, args...)), "DaemonSet", "-nexstor-node") // not -csi-node
		if ds == nil {
			t.Fatal("no engine DaemonSet")
		}
		b, _ := yaml.Marshal(ds)
		if got := strings.Contains(string(b), "--steady-monitor=false"); got != c.want {
			t.Fatalf("%v: --steady-monitor=false in the engine's args: %v, want %v", c.set, got, c.want)
		}
	}
}

// TestChartInstalls installs the chart with helm into a real kube-apiserver
// (on Debian's etcd, no nodes): the server validates every object (the CRD
// included, from the chart's crds/), and the objects are there afterwards,
// a DiskPool from the values among them.
func TestChartInstalls(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: kube-apiserver and etcd; not in -short mode")
	}
	kubeconfig, rc := startAPIServer(t)
	args := append([]string{"install", "nexstor", chartDir(t), "--kubeconfig", kubeconfig, "-n", "nexstor", "--create-namespace",
		"--set", "csi.snapshots.enabled=true",
		"--set", "diskPools[0].name=worker-1-nvme0", "--set", "diskPools[0].node=worker-1", "--set", "diskPools[0].disk=uring:///dev/nvme1n1",
		"--set", "diskPools[0].labels.tier=nvme"},
		minimal...)
	out := helmRun(t, args...)
	if !strings.Contains(out, "STATUS: deployed") {
		t.Fatalf("helm install:\n%s", out)
	}
	list := helmRun(t, "list", "--kubeconfig", kubeconfig, "-n", "nexstor")
	if !strings.Contains(list, "deployed") {
		t.Fatalf("helm list:\n%s", list)
	}

	scheme, err := operator.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	get := func(ns, name string, obj client.Object) {
		t.Helper()
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
			t.Fatalf("%T %s/%s after helm install: %v", obj, ns, name, err)
		}
	}
	var ds appsv1.DaemonSet
	get("nexstor", "nexstor-node", &ds)
	if c := ds.Spec.Template.Spec.Containers[0]; !ds.Spec.Template.Spec.HostNetwork || c.SecurityContext == nil || !*c.SecurityContext.Privileged {
		t.Fatalf("node DaemonSet not privileged on the host network: %+v", ds.Spec.Template.Spec)
	}
	get("nexstor", "nexstor-csi-node", &appsv1.DaemonSet{})
	var dep appsv1.Deployment
	get("nexstor", "nexstor-csi-controller", &dep)
	if n := len(dep.Spec.Template.Spec.Containers); n != 6 {
		t.Fatalf("CSI controller has %d containers, want the driver, 4 sidecars and the liveness probe", n)
	}
	get("nexstor", "nexstor-operator", &appsv1.Deployment{})
	get("nexstor", "nexstor-certgen", &batchv1.Job{})
	get("", "csi.nexstor.io", &storagev1.CSIDriver{})
	var sc storagev1.StorageClass
	get("", "nexstor", &sc)
	if sc.Parameters["repl"] != "3" {
		t.Fatalf("StorageClass parameters %v", sc.Parameters)
	}
	get("", "diskpools.nexstor.io", &apiextensionsv1.CustomResourceDefinition{})
	var dp v1alpha1.DiskPool
	get("", "worker-1-nvme0", &dp)
	if dp.Spec.Node != "worker-1" || dp.Spec.Disk != "uring:///dev/nvme1n1" || dp.Spec.Labels["tier"] != "nvme" {
		t.Fatalf("DiskPool %+v", dp.Spec)
	}

	helmRun(t, "uninstall", "nexstor", "--kubeconfig", kubeconfig, "-n", "nexstor")
}
