package mgmt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/security/certgen"
	"github.com/nexstor/nexstor/internal/testutil"
)

// TestEmbeddedThreeMembers forms a three-member cluster of embedded members,
// as three access points do, and checks that a write through one member is
// read through another and that the cluster survives losing a member.
func TestEmbeddedThreeMembers(t *testing.T) {
	dir := t.TempDir()
	cluster := map[string]string{}
	clientURLs := map[string]string{}
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("ap%d", i)
		cluster[name] = fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
		clientURLs[name] = fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	members := make([]*Embedded, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(i int) { // each waits for a quorum, so they start together
			defer wg.Done()
			name := fmt.Sprintf("ap%d", i)
			members[i], errs[i] = StartEmbedded(ctx, EmbeddedConfig{Name: name, Dir: filepath.Join(dir, name),
				ClientURL: clientURLs[name], PeerURL: cluster[name], InitialCluster: cluster, Token: "t3", LogLevel: "fatal"})
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
		t.Cleanup(members[i].Close)
		// Members of several keep etcd's raft timing.
		if c := members[i].etcd.Server.Cfg; c.TickMs != 100 || c.ElectionTicks != 10 || c.BackendBatchInterval != embeddedBatchInterval {
			t.Errorf("member %d: tick %d ms, election %d ticks, backend batch %v; want 100 ms, 10 ticks, %v",
				i, c.TickMs, c.ElectionTicks, c.BackendBatchInterval, embeddedBatchInterval)
		}
	}
	c0, err := NewEtcdClient([]string{members[0].ClientURL()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	c2, err := NewEtcdClient([]string{members[2].ClientURL()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c0.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := c2.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("read through another member: %+v, %v", resp, err)
	}
	ml, err := c0.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list: %+v, %v", ml, err)
	}
	members[1].Close()
	if _, err := c2.Put(ctx, "/k", "w"); err != nil {
		t.Fatalf("write with one member down: %v", err)
	}
}

// TestEmbeddedTLS runs an embedded member secured with the system's
// certificates: a client with a server certificate gets in, a client
// without certificates does not.
func TestEmbeddedTLS(t *testing.T) {
	certs := filepath.Join(t.TempDir(), "certs")
	if err := certgen.GenerateAll(certs, certgen.Options{}); err != nil {
		t.Fatal(err)
	}
	files := &security.Files{CACert: filepath.Join(certs, "ca.crt"), Cert: filepath.Join(certs, "server.crt"),
		Key: filepath.Join(certs, "server.key")}
	peer := fmt.Sprintf("https://127.0.0.1:%d", testutil.FreePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := StartEmbedded(ctx, EmbeddedConfig{Name: "m0", Dir: filepath.Join(t.TempDir(), "etcd"),
		ClientURL: fmt.Sprintf("https://127.0.0.1:%d", testutil.FreePort(t)), PeerURL: peer,
		InitialCluster: map[string]string{"m0": peer}, Token: "tls", TLS: files, LogLevel: "fatal"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := NewEtcdClient([]string{e.ClientURL()}, files)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put with certificates: %v", err)
	}
	// Only the CA, no client certificate: refused.
	anon, err := NewEtcdClient([]string{e.ClientURL()}, &security.Files{CACert: files.CACert})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	actx, acancel := context.WithTimeout(ctx, time.Second)
	defer acancel()
	if _, err := anon.Put(actx, "/k", "x"); err == nil {
		t.Fatal("a client without a certificate wrote to the secured etcd")
	}
}

// TestEmbeddedSingleMember runs a member alone in its cluster, as the only
// access point does, through the in-process client: its slower raft tick
// must not raise etcd's smallest lease TTL over the management service's
// session TTL (a leader's key would then outlive it by seconds), and the
// client must see its own writes and watch them.
func TestEmbeddedSingleMember(t *testing.T) {
	m := startSingleMember(t)
	if c := m.etcd.Server.Cfg; c.TickMs != singleMemberTickMs || c.ElectionTicks != 5 || c.BackendBatchInterval != embeddedBatchInterval {
		t.Errorf("single member: tick %d ms, election %d ticks, backend batch %v; want %d ms, 5 ticks, %v",
			c.TickMs, c.ElectionTicks, c.BackendBatchInterval, singleMemberTickMs, embeddedBatchInterval)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := m.Client()
	defer cli.Close()
	lease, err := cli.Grant(ctx, DefaultSessionTTL)
	if err != nil {
		t.Fatal(err)
	}
	if lease.TTL != DefaultSessionTTL {
		t.Errorf("a lease asked for %d s was granted %d s: the single member's election timeout raises etcd's smallest lease TTL over the session TTL", DefaultSessionTTL, lease.TTL)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := cli.Watch(wctx, "/k")
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("read back: %+v, %v", resp, err)
	}
	select {
	case wr := <-wch:
		if err := wr.Err(); err != nil || len(wr.Events) != 1 || string(wr.Events[0].Kv.Value) != "v" {
			t.Fatalf("watch: %+v, %v", wr, err)
		}
	case <-ctx.Done():
		t.Fatal("the watch saw no event")
	}
}

// TestEmbeddedClientAfterClose calls the member through its in-process
// client after the member has closed, as a late request of a stopping
// management service does: every call fails as a stopped member's do, and
// none reaches the closed storage backend (a serializable read there
// crashed the process).
func TestEmbeddedClientAfterClose(t *testing.T) {
	m := startSingleMember(t)
	cli := m.Client()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	m.Close()
	stopped := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, rpctypes.ErrStopped) {
			t.Errorf("%s after Close: %v, want %v", what, err, rpctypes.ErrStopped)
		}
	}
	_, err := cli.Get(ctx, "/k", clientv3.WithSerializable())
	stopped("a serializable read", err)
	_, err = cli.Get(ctx, "/k")
	stopped("a linearizable read", err)
	_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/k"), ">", 0)).Then(clientv3.OpPut("/k", "w")).Commit()
	stopped("a transaction", err)
	_, err = cli.Grant(ctx, DefaultSessionTTL)
	stopped("a lease grant", err)
	_, err = cli.Status(ctx, "")
	stopped("a status request", err)
	if _, ok := <-cli.Watch(ctx, "/k"); ok {
		t.Error("a watch after Close delivered a response")
	}
	if _, err := cli.Snapshot(ctx); !errors.Is(err, errNotInProcess) {
		t.Errorf("a snapshot through the in-process client: %v, want %v", err, errNotInProcess)
	}
}

// TestEmbeddedCloseDrainsCalls closes the member while goroutines keep
// reading and writing through its in-process client: every call either
// succeeds or fails as a stopped member's do, and none crashes the process
// by reaching the storage backend after it closed.
func TestEmbeddedCloseDrainsCalls(t *testing.T) {
	m := startSingleMember(t)
	cli := m.Client()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var ok atomic.Int64
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("/k%d", i)
			for ctx.Err() == nil {
				var err error
				if i%2 == 0 {
					_, err = cli.Get(ctx, key, clientv3.WithSerializable())
				} else {
					_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), ">", -1)).Then(clientv3.OpPut(key, "v")).Commit()
				}
				if errors.Is(err, rpctypes.ErrStopped) {
					return
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d: %w", i, err)
					return
				}
				ok.Add(1)
			}
		}()
	}
	for ok.Load() < 100 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	m.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ctx.Err() != nil {
		t.Fatal("the calls did not all end once the member closed")
	}
}

// startSingleMember starts a member alone in its cluster, closed when the
// test ends.
func startSingleMember(t *testing.T) *Embedded {
	t.Helper()
	peer := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := StartEmbedded(ctx, EmbeddedConfig{Name: "ap0", Dir: filepath.Join(t.TempDir(), "ap0"),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t)), PeerURL: peer,
		InitialCluster: map[string]string{"ap0": peer}, Token: "t1", LogLevel: "fatal"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}
