package k8s

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nexstor/nexstor/internal/testutil"
)

// startAPIServer starts kube-apiserver on Debian's etcd (envtest) and
// returns a kubeconfig file of a system:masters user, and the server's
// client configuration.
func startAPIServer(t *testing.T) (string, *rest.Config) {
	t.Helper()
	env := &envtest.Environment{BinaryAssetsDirectory: testutil.EnvtestAssets(t), ControlPlaneStartTimeout: 3 * time.Minute,
		ControlPlaneStopTimeout: time.Minute}
	if _, err := env.Start(); err != nil {
		t.Fatalf("kube-apiserver %s on etcd: %v", testutil.K8sVersion, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stopping envtest: %v", err)
		}
	})
	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return kubeconfig, env.Config
}

// TestKubectlPlugin: `kubectl nexstor` finds the system a release of the
// chart describes in its namespace (the chart's client ConfigMap, read from
// a real kube-apiserver) and runs nexctl against it: `get volumes` and
// `get nodes` list a running system's volume and node. It says what it
// found (`config`), names the namespace and the fix when there is no
// release there, and with TLS reads the admin certificate from the Secret
// the ConfigMap names (or says which Secret is missing).
func TestKubectlPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: kube-apiserver, etcd and a dev system; not in -short mode")
	}
	kubeconfig, rc := startAPIServer(t)
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	plugin := testutil.BuildBinary(t, "kubectl-nexstor")
	testutil.BuildBinary(t, "nexctl") // beside the plugin, where it looks first

	// A one-node dev system on loopback, without TLS.
	base := testutil.FreePortRange(t, 10)
	dir := t.TempDir()
	dev := exec.Command(testutil.BuildBinary(t, "nexstor"), "dev", "--nodes", "1", "--data-dir", filepath.Join(dir, "dev"),
		"--pool-size", "256MiB", "--demo-size", "64MiB", "--grpc-port", strconv.Itoa(base), "--nbd-port", strconv.Itoa(base+1),
		"--nvmf-port", strconv.Itoa(base+2), "--discovery-port", strconv.Itoa(base+3), "--etcd-port", strconv.Itoa(base+4),
		"--metrics-port", strconv.Itoa(base+6))
	out := &testutil.SyncBuffer{}
	dev.Stdout, dev.Stderr = out, out
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dev.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { dev.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			dev.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("dev system:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(out.String(), "Press Ctrl-C to stop") {
		if time.Now().After(deadline) {
			t.Fatalf("the dev system did not come up:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	helmRun(t, "install", "nx", chartDir(t), "--kubeconfig", kubeconfig, "-n", "storage", "--create-namespace",
		"--set", "accessPoints={127.0.0.1}", "--set", "port="+strconv.Itoa(base), "--set", "tls.enabled=false")
	kubectl := func(args ...string) (string, string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, plugin, append(args, "--kubeconfig", kubeconfig)...)
		cmd.Env = append(os.Environ(), "NEXSTOR_ACCESS_POINTS=", "NEXSTOR_CERT_DIR="+filepath.Join(dir, "no-certs"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), code
	}
	must := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := kubectl(args...)
		if code != 0 {
			t.Fatalf("kubectl nexstor %v: exit %d\n%s%s", args, code, stdout, stderr)
		}
		return stdout
	}

	if got := must("config", "-n", "storage"); !strings.Contains(got, "127.0.0.1:"+strconv.Itoa(base)) || !strings.Contains(got, "TLS:            none") {
		t.Fatalf("config:\n%s", got)
	}
	if got := must("get", "volumes", "-n", "storage", "-o", "json"); !strings.Contains(got, `"name": "demo"`) {
		t.Fatalf("get volumes does not list the dev system's volume:\n%s", got)
	}
	if got := must("-n", "storage", "get", "nodes"); !strings.Contains(got, "node-0") {
		t.Fatalf("get nodes:\n%s", got)
	}
	if got := must("-n", "storage", "get", "volume", "demo"); !strings.Contains(got, "demo") || !strings.Contains(got, "online") {
		t.Fatalf("get volume demo:\n%s", got)
	}
	// nexctl's failure is the plugin's.
	if _, stderr, code := kubectl("-n", "storage", "get", "volume", "nosuch"); code == 0 || !strings.Contains(stderr, "nosuch") {
		t.Fatalf("get volume nosuch: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := kubectl("get", "volumes", "-n", "default"); code != 1 ||
		!strings.Contains(stderr, "no Nexstor release in namespace default") || !strings.Contains(stderr, "-n") {
		t.Fatalf("a namespace without a release: exit %d\n%s", code, stderr)
	}

	// With TLS, the admin certificate comes from the Secret the ConfigMap
	// names. (One release at a time: the chart's cluster-wide objects, the
	// CSIDriver and StorageClass, are one per cluster.)
	helmRun(t, "uninstall", "nx", "--kubeconfig", kubeconfig, "-n", "storage")
	helmRun(t, "install", "sec", chartDir(t), "--kubeconfig", kubeconfig, "-n", "secure", "--create-namespace",
		"--set", "accessPoints={10.0.0.1}", "--set", "certificates.hosts={10.0.0.1}")
	if _, stderr, code := kubectl("config", "-n", "secure"); code != 1 || !strings.Contains(stderr, "Secret secure/sec-nexstor-certs-admin") {
		t.Fatalf("TLS without the admin Secret: exit %d\n%s", code, stderr)
	}
	_, err = cs.CoreV1().Secrets("secure").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "sec-nexstor-certs-admin"},
		Data:       map[string][]byte{"ca.crt": []byte("ca"), "admin.crt": []byte("crt"), "admin.key": []byte("key")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := must("config", "-n", "secure"); !strings.Contains(got, "10.0.0.1:10124") || !strings.Contains(got, "Secret sec-nexstor-certs-admin") {
		t.Fatalf("config with TLS:\n%s", got)
	}
}
