package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestK8sVersionsMatchScript: the versions the tests look for are the ones
// scripts/build-k8s-test-tools.sh builds by default.
func TestK8sVersionsMatchScript(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(RepoRoot(t), "scripts", "build-k8s-test-tools.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`K8S_VERSION="${NEXSTOR_TEST_K8S_VERSION:-` + K8sVersion + `}"`,
		`HELM_VERSION="${NEXSTOR_TEST_HELM_VERSION:-` + HelmVersion + `}"`,
		`PROVISIONER_VERSION="${NEXSTOR_TEST_PROVISIONER_VERSION:-` + ProvisionerVersion + `}"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("build-k8s-test-tools.sh lacks %s", want)
		}
	}
}
