package csi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/nvmehost"

	"github.com/nexstor/nexstor/internal/fault"
)

// fakeKernel is a sysfs and /dev tree shaped as the kernel's NVMe host
// driver makes it, for the NVMe transport to read and write.
type fakeKernel struct {
	t         *testing.T
	sys, dev  string
	connects  atomic.Int32
	lastOpts  atomic.Value
	nsUUID    string // the namespace UUID the next controller reports
	connectOK bool
}

func newFakeKernel(t *testing.T) *fakeKernel {
	root := t.TempDir()
	k := &fakeKernel{t: t, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"), connectOK: true}
	for _, d := range []string{filepath.Join(k.sys, "class", "nvme"), filepath.Join(k.sys, "class", "block"), k.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

func (k *fakeKernel) write(p, s string) {
	k.t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s+"\n"), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

// addCtrl makes controller ctrl of subsystem nqn, connected as host, with
// the multipath head disk (subsys n1) of the namespace.
func (k *fakeKernel) addCtrl(ctrl, nqn, host, traddr, subsys, nsUUID string) {
	d := filepath.Join(k.sys, "class", "nvme", ctrl)
	k.write(filepath.Join(d, "subsysnqn"), nqn)
	k.write(filepath.Join(d, "transport"), "tcp")
	k.write(filepath.Join(d, "state"), "live")
	k.write(filepath.Join(d, "hostnqn"), host)
	k.write(filepath.Join(d, "address"), "traddr="+traddr+",trsvcid=4420,src_addr=10.0.2.15")
	if err := os.MkdirAll(filepath.Join(d, "nvme"+subsys+"c"+strings.TrimPrefix(ctrl, "nvme")+"n1"), 0o755); err != nil {
		k.t.Fatal(err)
	}
	disk := "nvme" + subsys + "n1"
	k.write(filepath.Join(k.sys, "class", "block", disk, "uuid"), nsUUID)
	k.write(filepath.Join(k.sys, "class", "block", disk, "size"), "16384")
	k.write(filepath.Join(k.dev, disk), "")
}

// connect answers a connect string as the kernel does, creating the
// controller a moment later (the device appears after the answer).
func (k *fakeKernel) connect(opts string) (string, error) {
	k.connects.Add(1)
	k.lastOpts.Store(opts)
	if !k.connectOK {
		return "", errors.New("write /dev/nvme-fabrics: input/output error")
	}
	var nqn, host string
	for _, kv := range strings.Split(opts, ",") {
		key, v, _ := strings.Cut(kv, "=")
		switch key {
		case "nqn":
			nqn = v
		case "hostnqn":
			host = v
		}
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		k.addCtrl("nvme3", nqn, host, "10.0.2.2", "1", k.nsUUID)
	}()
	return nvmehost.ParseConnectAnswer("instance=3,cntlid=1\n")
}

const (
	testVol  = "3f1c0a52-8b1e-4c61-9f5e-0e6d2a7b9c11"
	testNQN  = "nqn.2024-11.io.nexstor:nexus:" + testVol
	testHost = "nqn.2014-08.org.nvmexpress:uuid:5b0e8a3c-1d2f-4e6a-9b7c-0a1b2c3d4e5f"
)

func (k *fakeKernel) transport() *NVMe {
	x := NewNVMe(NVMeOptions{HostNQN: "nqn.own", HostID: "own-id", SysfsRoot: k.sys, DevRoot: k.dev, DeviceTimeout: 5 * time.Second})
	x.connectFn = k.connect
	return x
}

// TestNVMeAttachDetach drives the NVMe transport against a fake kernel:
// the connect string, waiting for the device, reuse of a connection,
// identity checks, path states, grow and disconnect.
func TestNVMeAttachDetach(t *testing.T) {
	k := newFakeKernel(t)
	k.nsUUID = testVol
	x := k.transport()
	ctx := context.Background()
	tg := Target{VolumeID: testVol, URI: "nvmf://10.0.2.2:4420/" + testNQN, NQN: testNQN, HostNQN: testHost}
	// Another host's controller of the same subsystem is not ours.
	k.addCtrl("nvme0", testNQN, "nqn.someone-else", "10.0.2.2", "0", testVol)

	dev, err := x.Attach(ctx, tg)
	if err != nil {
		t.Fatal(err)
	}
	if dev != filepath.Join(k.dev, "nvme1n1") {
		t.Fatalf("device %s", dev)
	}
	opts := k.lastOpts.Load().(string)
	for _, want := range []string{"transport=tcp", "traddr=10.0.2.2", "trsvcid=4420", "nqn=" + testNQN, "hostnqn=" + testHost,
		"hostid=5b0e8a3c-1d2f-4e6a-9b7c-0a1b2c3d4e5f", "ctrl_loss_tmo=1800", "reconnect_delay=2"} {
		if !strings.Contains(","+opts+",", ","+want+",") {
			t.Errorf("connect string %q lacks %s", opts, want)
		}
	}
	if _, err := x.Attach(ctx, tg); err != nil || k.connects.Load() != 1 {
		t.Fatalf("attach again: %v, %d connects (want the connection reused)", err, k.connects.Load())
	}
	if d, err := x.Device(ctx, tg); err != nil || d != dev {
		t.Fatalf("Device: %q %v", d, err)
	}

	ps, _ := x.Paths(ctx, tg)
	if len(ps) != 1 || ps[0].Name != "nvme3" || !ps[0].Live {
		t.Fatalf("paths %+v", ps)
	}
	k.write(filepath.Join(k.sys, "class", "nvme", "nvme3", "state"), "connecting")
	if ps, _ = x.Paths(ctx, tg); ps[0].Live {
		t.Fatalf("a connecting path is live: %+v", ps)
	}

	// Grow: a rescan is asked for, and the call returns once the device
	// has the size.
	go func() {
		for {
			if b, _ := os.ReadFile(filepath.Join(k.sys, "class", "nvme", "nvme3", "rescan_controller")); len(b) > 0 {
				k.write(filepath.Join(k.sys, "class", "block", "nvme1n1", "size"), "32768")
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if err := x.Grow(ctx, tg, 32768*512); err != nil {
		t.Fatal(err)
	}

	// Detach deletes our controller only, and waits until it is gone.
	go func() {
		p := filepath.Join(k.sys, "class", "nvme", "nvme3")
		for {
			if b, _ := os.ReadFile(filepath.Join(p, "delete_controller")); len(b) > 0 {
				time.Sleep(30 * time.Millisecond)
				os.RemoveAll(p)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if err := x.Detach(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(k.sys, "class", "nvme", "nvme3")); !os.IsNotExist(err) {
		t.Fatal("our controller is still there")
	}
	if b, _ := os.ReadFile(filepath.Join(k.sys, "class", "nvme", "nvme0", "delete_controller")); len(b) > 0 {
		t.Fatal("another host's controller was deleted")
	}
	if err := x.Detach(ctx, tg); err != nil {
		t.Fatalf("detach again: %v", err)
	}
	if d, err := x.Device(ctx, tg); err != nil || d != "" {
		t.Fatalf("Device after detach: %q %v", d, err)
	}
}

// TestNVMeRefusesAnotherNamespace: a device whose namespace UUID is not
// the volume's is never returned.
func TestNVMeRefusesAnotherNamespace(t *testing.T) {
	k := newFakeKernel(t)
	k.nsUUID = "00000000-1111-2222-3333-444444444444"
	x := k.transport()
	tg := Target{VolumeID: testVol, URI: "nvmf://10.0.2.2:4420/" + testNQN, NQN: testNQN}
	_, err := x.Attach(context.Background(), tg)
	if fault.CodeOf(err) != CodeIdentity {
		t.Fatalf("attach of another namespace: %v", err)
	}
	// The node's own host NQN and host ID were used.
	if opts := k.lastOpts.Load().(string); !strings.Contains(opts, "hostnqn=nqn.own,hostid=own-id,") {
		t.Fatalf("connect string %q", opts)
	}
}

// TestNVMeConnectFailure: a refused connect is Unavailable, naming what
// to check.
func TestNVMeConnectFailure(t *testing.T) {
	k := newFakeKernel(t)
	k.connectOK = false
	x := k.transport()
	_, err := x.Attach(context.Background(), Target{VolumeID: testVol, URI: "nvmf://10.0.2.2:4420/" + testNQN, NQN: testNQN})
	if fault.CodeOf(err) != CodeAttach || !strings.Contains(err.Error(), "10.0.2.2:4420") {
		t.Fatalf("%v", err)
	}
}
