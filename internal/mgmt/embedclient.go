package mgmt

import (
	"context"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// callGate counts the calls of in-process clients that are inside the
// member, so that the member closes only once none is: the member serves
// them without its gRPC server, whose graceful stop would otherwise drain
// them, and a read that reached its storage backend after the backend
// closed would crash the process.
type callGate struct {
	mu     sync.Mutex
	closed bool
	calls  sync.WaitGroup
}

// enter admits one call, or reports false once the gate has closed.
func (g *callGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.calls.Add(1)
	return true
}

func (g *callGate) exit() { g.calls.Done() }

// close refuses new calls and waits, at most timeout, for those inside to
// return; it reports whether they all did.
func (g *callGate) close(timeout time.Duration) bool {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.calls.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// gatedKV passes KV calls through a callGate; refused calls fail as calls
// to a stopped member do.
type gatedKV struct {
	clientv3.KV
	g *callGate
}

func (k gatedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if !k.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer k.g.exit()
	return k.KV.Put(ctx, key, val, opts...)
}

func (k gatedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if !k.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer k.g.exit()
	return k.KV.Get(ctx, key, opts...)
}

func (k gatedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if !k.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer k.g.exit()
	return k.KV.Delete(ctx, key, opts...)
}

func (k gatedKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	if !k.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer k.g.exit()
	return k.KV.Compact(ctx, rev, opts...)
}

func (k gatedKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if !k.g.enter() {
		return clientv3.OpResponse{}, rpctypes.ErrStopped
	}
	defer k.g.exit()
	return k.KV.Do(ctx, op)
}

func (k gatedKV) Txn(ctx context.Context) clientv3.Txn {
	return gatedTxn{Txn: k.KV.Txn(ctx), g: k.g}
}

// gatedTxn gates a transaction's Commit, the one call that reaches the
// member.
type gatedTxn struct {
	clientv3.Txn
	g *callGate
}

func (t gatedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	return gatedTxn{Txn: t.Txn.If(cs...), g: t.g}
}

func (t gatedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	return gatedTxn{Txn: t.Txn.Then(ops...), g: t.g}
}

func (t gatedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	return gatedTxn{Txn: t.Txn.Else(ops...), g: t.g}
}

func (t gatedTxn) Commit() (*clientv3.TxnResponse, error) {
	if !t.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer t.g.exit()
	return t.Txn.Commit()
}

// gatedLease gates the lease calls that return; keep-alive streams end when
// the client closes, before the member does.
type gatedLease struct {
	clientv3.Lease
	g *callGate
}

func (l gatedLease) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	if !l.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer l.g.exit()
	return l.Lease.Grant(ctx, ttl)
}

func (l gatedLease) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	if !l.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer l.g.exit()
	return l.Lease.Revoke(ctx, id)
}

func (l gatedLease) TimeToLive(ctx context.Context, id clientv3.LeaseID, opts ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	if !l.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer l.g.exit()
	return l.Lease.TimeToLive(ctx, id, opts...)
}

func (l gatedLease) Leases(ctx context.Context) (*clientv3.LeaseLeasesResponse, error) {
	if !l.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer l.g.exit()
	return l.Lease.Leases(ctx)
}

func (l gatedLease) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	if !l.g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer l.g.exit()
	return l.Lease.KeepAliveOnce(ctx, id)
}
