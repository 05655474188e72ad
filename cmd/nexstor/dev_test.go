package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
)

// TestReadHostNQN: the host NQN file's content without its newline; ""
// when there is no file.
func TestReadHostNQN(t *testing.T) {
	dir := t.TempDir()
	if got := readHostNQN(filepath.Join(dir, "missing")); got != "" {
		t.Fatalf("no file: %q", got)
	}
	p := filepath.Join(dir, "hostnqn")
	const nqn = "nqn.2014-08.org.nvmexpress:uuid:0e7d1c2b-3a49-4f5e-8d6c-7b8a9f0e1d2c"
	if err := os.WriteFile(p, []byte(nqn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readHostNQN(p); got != nqn {
		t.Fatalf("read %q, want %q", got, nqn)
	}
}

func devSystem(t *testing.T, target *mgmtv1.VolumeTarget) ctlserver.DevSystem {
	t.Helper()
	cfgs, err := ctlserver.DevConfigs(ctlserver.DevOptions{Nodes: 2, DataDir: t.TempDir(), GRPCPort: 20124, NBDPort: 20809,
		NVMfPort: 24420, DiscoveryPort: 28009, MetricsPort: 29502})
	if err != nil {
		t.Fatal(err)
	}
	return ctlserver.DevSystem{Configs: cfgs, MetricsURLs: []string{"http://127.0.0.1:29502/metrics", "http://127.0.0.1:29503/metrics"},
		Demo: &mgmtv1.Volume{Spec: &mgmtv1.VolumeSpec{Name: "demo", Size: 512 << 20, Replicas: 2, Thin: true},
			Status: &mgmtv1.VolumeStatus{Phase: "degraded", Reason: "1 of 2 replicas in sync", Healthy: 1, Target: target,
				Replicas: []*mgmtv1.VolumeReplica{{Node: "node-0"}, {Node: "node-1"}}}}}
}

// TestPrintDevNVMf: a volume published to one host NQN prints the connect
// and bench lines with that NQN, the switch to NBD on the same node and
// the NBD URI of that node, and its phase as it is, with the reason.
func TestPrintDevNVMf(t *testing.T) {
	const admitted = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555"
	uri := "nvmf://127.0.0.1:24420/nqn.2024-11.io.nexstor:nexus:6b0c"
	sys := devSystem(t, &mgmtv1.VolumeTarget{Node: "node-0", Protocol: "nvmf", Uri: uri,
		Nqn: "nqn.2024-11.io.nexstor:nexus:6b0c", HostNqns: []string{admitted}})
	var b strings.Builder
	printDev(&b, sys, "nqn.2014-08.org.nvmexpress:uuid:99999999-2222-4333-8444-555555555555")
	out := b.String()
	for _, want := range []string{
		"  volume demo: 512MiB thin, 2 replicas (node-0, node-1): degraded, 1/2 healthy (1 of 2 replicas in sync)\n",
		"    published on node-0 over nvmf: " + uri + "\n",
		"  nexctl -a 127.0.0.1:20124 volume get demo\n",
		"  nexctl -a 127.0.0.1:20124 volume list\n",
		"  nexctl bench " + uri + " --time 5s --hostnqn " + admitted + " ",
		"  nvme connect -t tcp -a 127.0.0.1 -s 24420 -n nqn.2024-11.io.nexstor:nexus:6b0c --hostnqn " + admitted + " ",
		"  nvme discover -t tcp -a 127.0.0.1 -s 28009\n",
		"  nexctl -a 127.0.0.1:20124 volume unpublish demo && nexctl -a 127.0.0.1:20124 volume publish demo --node node-0 --protocol nbd\n",
		"  nbdinfo nbd://127.0.0.1:20809/nexus/demo\n",
		"    node-0  http://127.0.0.1:29502/metrics",
		"    node-1  http://127.0.0.1:29503/metrics\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the banner lacks %q:\n%s", want, out)
		}
	}
}

// TestPrintDevNBD: a volume the user switched to NBD prints its NBD URI and
// the switch back to NVMe/TCP, admitting this machine's host NQN.
func TestPrintDevNBD(t *testing.T) {
	uri := "nbd://127.0.0.1:20810/nexus/demo"
	sys := devSystem(t, &mgmtv1.VolumeTarget{Node: "node-1", Protocol: "nbd", Uri: uri})
	const local = "nqn.2014-08.org.nvmexpress:uuid:99999999-2222-4333-8444-555555555555"
	var b strings.Builder
	printDev(&b, sys, local)
	out := b.String()
	for _, want := range []string{
		"  nbdinfo " + uri + "\n",
		"  nbdcopy " + uri + " ./copy.img",
		"volume publish demo --node node-1 --protocol nvmf --host-nqn " + local + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the banner lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "nvme connect") {
		t.Errorf("an NBD volume's banner prints nvme connect:\n%s", out)
	}
}
