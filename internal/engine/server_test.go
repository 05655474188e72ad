package engine

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
)

// TestServerSharesOverNVMf shares a replica over NVMe/TCP with a host
// allow-list, reads and writes it with the Go initiator, checks that another
// host is refused, and that the share comes back after a restart.
func TestServerSharesOverNVMf(t *testing.T) {
	dir := t.TempDir()
	opts := ServerOptions{DataDir: filepath.Join(dir, "data"), GRPCListen: "127.0.0.1:0",
		NBDListen: "127.0.0.1:0", NVMfListen: "127.0.0.1:0", Logger: quietLogger()}
	s, err := StartServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	e := s.Engine
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "d0.img"), 24<<20), ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 8 << 20, Thin: true}); err != nil {
		t.Fatal(err)
	}
	const host = "nqn.2014-08.org.nvmexpress:uuid:6a0e3b7c-1d2f-4e5a-9b8c-7d6e5f4a3b2c"
	_, err = e.ShareReplica(context.Background(), "r0", "nvmf", []string{"not-an-nqn"})
	wantFault(t, err, fault.InvalidArgument, "not-an-nqn")
	ri, err := e.ShareReplica(context.Background(), "r0", "nvmf", []string{host})
	if err != nil {
		t.Fatal(err)
	}
	nqn := "nqn.2024-11.io.nexstor:replica:" + ri.UUID
	if want := "nvmf://" + s.NVMfAddr() + "/" + nqn; ri.Share.URI != want {
		t.Fatalf("uri %s, want %s", ri.Share.URI, want)
	}
	// A second protocol adds a share next to the first.
	both, err := e.ShareReplica(context.Background(), "r0", "nbd", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(both.Shares) != 2 || both.Shares[0].Protocol != "nbd" || both.Shares[1].URI != ri.Share.URI ||
		!strings.HasPrefix(both.Shares[0].URI, "nbd://") {
		t.Fatalf("shares %+v", both.Shares)
	}
	_, err = e.ShareReplica(context.Background(), "r0", "nvmf", nil)
	wantFault(t, err, fault.FailedPrecondition, "r0", host)
	if again, err := e.ShareReplica(context.Background(), "r0", "nvmf", []string{host, host}); err != nil || len(again.Shares) != 2 || again.Shares[1].URI != ri.Share.URI {
		t.Fatalf("share again: %+v %v", again, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	io := func(addr string, write bool, data []byte) []byte {
		t.Helper()
		c, err := initiator.Connect(ctx, addr, nqn, initiator.Options{HostNQN: host, IOQueues: 1, KeepAlive: -1, MaxReconnect: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ns, err := c.Namespace(1)
		if err != nil {
			t.Fatal(err)
		}
		if ns.Size() != 8<<20 {
			t.Fatalf("namespace size %d", ns.Size())
		}
		if write {
			if _, err := ns.WriteAt(data, 1<<20); err != nil {
				t.Fatal(err)
			}
			if err := ns.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		got := make([]byte, len(data))
		if _, err := ns.ReadAt(got, 1<<20); err != nil {
			t.Fatal(err)
		}
		return got
	}
	data := bytes.Repeat([]byte("nvmf-ok!"), 8192)
	if got := io(s.NVMfAddr(), true, data); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	if _, err := initiator.Connect(ctx, s.NVMfAddr(), nqn, initiator.Options{
		HostNQN: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001", IOQueues: 1, KeepAlive: -1, MaxReconnect: 1}); err == nil {
		t.Fatal("a host that is not allowed connected")
	}
	if err := s.Shutdown(time.Second); err != nil {
		t.Fatal(err)
	}

	s, err = StartServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	ri2, err := s.Engine.Replica("r0")
	if err != nil {
		t.Fatal(err)
	}
	if len(ri2.Shares) != 2 || ri2.Shares[0].Protocol != "nbd" || !strings.HasSuffix(ri2.Shares[1].URI, "/"+nqn) ||
		len(ri2.Shares[1].AllowedHosts) != 1 || ri2.State != ReplicaOnline {
		t.Fatalf("shares after restart %+v", ri2)
	}
	if got := io(s.NVMfAddr(), false, data); !bytes.Equal(got, data) {
		t.Fatal("data lost across restart")
	}
}
