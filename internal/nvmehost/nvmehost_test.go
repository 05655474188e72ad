package nvmehost

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSysfs writes the sysfs files a subsystem with controllers shows.
func fakeSysfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	w := func(p, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sub := "class/nvme-subsystem/nvme-subsys0/"
	w(sub+"subsysnqn", "nqn.2024-11.io.nexstor:nexus:v1")
	w(sub+"nvme0/state", "live")
	w(sub+"nvme0/transport", "tcp")
	w(sub+"nvme0/address", "traddr=10.0.0.1,trsvcid=4420,src_addr=10.0.0.9")
	w(sub+"nvme0/cntlid", "3")
	w(sub+"nvme0/nvme0c0n1/ana_state", "optimized")
	w(sub+"nvme2/state", "connecting")
	w(sub+"nvme2/nvme0c2n1/ana_state", "inaccessible")
	w(sub+"nvme2/nvme0c2n2/ana_state", "optimized")
	w(sub+"nvme2/address", "traddr=10.0.0.2,trsvcid=4421")
	w(sub+"nvme0n1/size", "8") // a namespace, not a controller
	w("class/nvme-subsystem/nvme-subsys1/subsysnqn", "nqn.other")
	w("class/nvme/nvme2/delete_controller", "")
	return root
}

func TestSubsystems(t *testing.T) {
	h := &Host{Sysfs: fakeSysfs(t)}
	subs, err := h.Subsystems()
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 2 || subs[0].NQN != "nqn.2024-11.io.nexstor:nexus:v1" || len(subs[0].Controllers) != 2 || subs[1].NQN != "nqn.other" {
		t.Fatalf("subsystems: %+v", subs)
	}
	c0, c2 := subs[0].Controllers[0], subs[0].Controllers[1]
	if c0 != (Controller{Name: "nvme0", State: "live", Transport: "tcp", Addr: "10.0.0.1", Port: "4420", CntlID: 3, ANAState: "optimized"}) || !c0.Serving() {
		t.Fatalf("nvme0: %+v", c0)
	}
	if c2.Name != "nvme2" || c2.Live() || c2.Addr != "10.0.0.2" || c2.Port != "4421" || c2.ANAState != "inaccessible" {
		t.Fatalf("nvme2: %+v", c2)
	}
	if none, err := (&Host{Sysfs: t.TempDir()}).Subsystems(); err != nil || none != nil {
		t.Fatalf("a host without NVMe: %v %v", none, err)
	}
}

// TestServing: a live path serves unless its ANA state refuses I/O.
func TestServing(t *testing.T) {
	for _, c := range []struct {
		state, ana string
		want       bool
	}{
		{"live", "", true}, {"live", "optimized", true}, {"live", "non-optimized", true},
		{"live", "inaccessible", false}, {"live", "persistent-loss", false}, {"live", "change", false},
		{"connecting", "optimized", false},
	} {
		if got := (Controller{State: c.state, ANAState: c.ana}).Serving(); got != c.want {
			t.Errorf("%s %s: serving %v", c.state, c.ana, got)
		}
	}
	for name, want := range map[string]bool{"nvme0c1n1": true, "nvme12c3n45": true, "nvme0n1": false, "nvme0c1": false, "nvme0cxn1": false} {
		if isPathDisk(name) != want {
			t.Errorf("isPathDisk(%s) != %v", name, want)
		}
	}
}

func TestDelete(t *testing.T) {
	root := fakeSysfs(t)
	h := &Host{Sysfs: root}
	if err := h.Delete("nvme2"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "class/nvme/nvme2/delete_controller")); string(b) != "1" {
		t.Fatalf("delete_controller holds %q", b)
	}
	if err := h.Delete("nvme7"); err != nil {
		t.Fatalf("deleting a controller that is gone: %v", err)
	}
	if err := h.Delete("../x"); err == nil {
		t.Fatal("a bad controller name was accepted")
	}
}

func TestConnectOptionsAndRefusals(t *testing.T) {
	o := ConnectOptions{NQN: "nqn.x", Addr: "10.0.0.1", Port: "4420", HostNQN: "nqn.h", CtrlLossTmo: -1, ReconnectDelay: 1, IOQueues: 2}
	want := "transport=tcp,traddr=10.0.0.1,trsvcid=4420,nqn=nqn.x,hostnqn=nqn.h,ctrl_loss_tmo=-1,reconnect_delay=1,nr_io_queues=2"
	if o.String() != want {
		t.Fatalf("options %q", o.String())
	}
	h := &Host{Fabrics: filepath.Join(t.TempDir(), "nvme-fabrics")}
	if _, err := h.Connect(ConnectOptions{NQN: "nqn.x"}); err == nil || !strings.Contains(err.Error(), "address and port") {
		t.Fatalf("connect without an address: %v", err)
	}
	if _, err := h.Connect(o); err == nil || !strings.Contains(err.Error(), "nvme-fabrics module") {
		t.Fatalf("connect without the fabrics device: %v", err)
	}
}

func TestParseConnectAnswer(t *testing.T) {
	if c, err := ParseConnectAnswer("instance=12,cntlid=3\n"); err != nil || c != "nvme12" {
		t.Fatalf("%q %v", c, err)
	}
	if _, err := ParseConnectAnswer("cntlid=3"); err == nil {
		t.Fatal("an answer without instance was taken")
	}
}

// TestHostIdentity: generated once and read back; an existing one kept;
// the host ID a function of the NQN.
func TestHostIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nvme")
	nqn, id, err := HostIdentity(dir)
	if err != nil || !strings.HasPrefix(nqn, uuidNQNPrefix) || id != strings.TrimPrefix(nqn, uuidNQNPrefix) {
		t.Fatalf("generated: %q %q %v", nqn, id, err)
	}
	if n2, id2, err := HostIdentity(dir); err != nil || n2 != nqn || id2 != id {
		t.Fatalf("read again: %q %q %v", n2, id2, err)
	}
	// An existing identity is kept as it is.
	other := filepath.Join(t.TempDir(), "nvme")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "hostnqn"), []byte("nqn.2014-08.org.example:host-a\n"), 0o644)
	n3, id3, err := HostIdentity(other)
	if err != nil || n3 != "nqn.2014-08.org.example:host-a" || id3 != HostIDFor(n3) || id3 == "" {
		t.Fatalf("existing: %q %q %v", n3, id3, err)
	}
	if HostIDFor(n3) != HostIDFor(n3) || HostIDFor(n3) == HostIDFor(n3+"x") {
		t.Fatal("hostIDFor is not a function of the NQN")
	}
}
