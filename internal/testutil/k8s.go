package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// The versions of the Kubernetes peers that scripts/build-k8s-test-tools.sh
// builds by default (its K8S_VERSION and HELM_VERSION); a test checks that
// the two agree.
const (
	K8sVersion  = "v1.37.2"
	HelmVersion = "v4.3.2"
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

// Helm returns the path of the helm the tests run, like KubeAPIServer.
func Helm(t testing.TB) string {
	t.Helper()
	return k8sTool(t, "helm-"+HelmVersion)
}

func k8sTool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(K8sToolsDir(), name)
	if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
		Missing(t, p+" (run scripts/build-k8s-test-tools.sh, or `make test-deps`)")
	}
	return p
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
