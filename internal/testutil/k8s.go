package testutil

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The versions of the Kubernetes peers that scripts/build-k8s-test-tools.sh
// builds by default (its K8S_VERSION, HELM_VERSION and PROVISIONER_VERSION);
// a test checks that they agree.
const (
	K8sVersion         = "v1.37.2"
	HelmVersion        = "v4.3.2"
	ProvisionerVersion = "v6.4.0"
)

// K8sToolsDir is where scripts/build-k8s-test-tools.sh keeps what it
// builds: $NEXSTOR_TEST_K8S_DIR, else <user cache dir>/nexstor-test/k8s.
func K8sToolsDir() string {
	if d := os.Getenv("NEXSTOR_TEST_K8S_DIR"); d != "" {
		return d
	}
	c, err := os.UserCacheDir()
	if err != nil {
		c = filepath.Join(os.TempDir(), "cache")
	}
	return filepath.Join(c, "nexstor-test", "k8s")
}

// KubeAPIServer returns the path of the kube-apiserver the tests run (built
// from the module proxy by scripts/build-k8s-test-tools.sh, which `make
// test-deps` runs). When it is missing the test skips, or fails under CI.
func KubeAPIServer(t testing.TB) string {
	t.Helper()
	return k8sTool(t, "kube-apiserver-"+K8sVersion)
}

// KubeControllerManager returns the path of the kube-controller-manager
// the tests run (of K8sVersion, like KubeAPIServer): it skips, or fails
// under CI, when it is missing.
func KubeControllerManager(t testing.TB) string {
	t.Helper()
	return k8sTool(t, "kube-controller-manager-"+K8sVersion)
}

// CSIProvisioner returns the path of the CSI external-provisioner sidecar
// (github.com/kubernetes-csi/external-provisioner, ProvisionerVersion) the
// tests run, like KubeAPIServer.
func CSIProvisioner(t testing.TB) string {
	t.Helper()
	return k8sTool(t, "csi-provisioner-"+ProvisionerVersion)
}

// Helm returns the path of the helm the tests run, like KubeAPIServer.
func Helm(t testing.TB) string {
	t.Helper()
	return k8sTool(t, "helm-"+HelmVersion)
}

// k8sBuildWait bounds how long a test waits for a build of the Kubernetes
// peers under way (make test starts it in the background; cold, it takes
// 23-32 minutes on 2 cores beside the other tests, measured).
const k8sBuildWait = 50 * time.Minute

func k8sTool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(K8sToolsDir(), name)
	if !executable(p) {
		waitK8sBuild(t)
	}
	if !executable(p) {
		Missing(t, p+" (run scripts/build-k8s-test-tools.sh, or `make test-deps`; a build's log is "+
			filepath.Join(K8sToolsDir(), "build.log")+")")
	}
	return p
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode()&0o111 != 0
}

// k8sBuildMu makes the tests of one process wait for the build together.
var k8sBuildMu sync.Mutex

// waitK8sBuild waits, at most k8sBuildWait, while scripts/build-k8s-test-
// tools.sh holds the cache's lock: a build is under way. It returns at once
// when none is.
func waitK8sBuild(t testing.TB) {
	t.Helper()
	k8sBuildMu.Lock()
	defer k8sBuildMu.Unlock()
	f, err := os.Open(filepath.Join(K8sToolsDir(), ".build.lock"))
	if err != nil {
		return // never built here
	}
	defer f.Close()
	deadline := time.Now().Add(k8sBuildWait)
	logged := false
	for {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			return
		}
		if time.Now().After(deadline) {
			t.Logf("the build of the Kubernetes peers is still running after %v", k8sBuildWait)
			return
		}
		if !logged {
			t.Logf("waiting for the build of the Kubernetes peers (log: %s)", filepath.Join(K8sToolsDir(), "build.log"))
			logged = true
		}
		time.Sleep(2 * time.Second)
	}
}

// EnvtestAssets returns a directory laid out as controller-runtime's envtest
// wants KUBEBUILDER_ASSETS (BinaryAssetsDirectory): kube-apiserver and etcd
// (Debian's etcd-server). Skips, or fails under CI, when either is missing.
func EnvtestAssets(t testing.TB) string {
	t.Helper()
	kapi := KubeAPIServer(t)
	etcd := RequireTool(t, "etcd")
	dir := t.TempDir()
	for name, target := range map[string]string{"kube-apiserver": kapi, "etcd": etcd} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
