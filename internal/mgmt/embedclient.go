package mgmt

import (
	"context"
	"errors"
	"io"
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

// gated runs call inside g; once g has closed it fails as a call to a
// stopped member does.
func gated[T any](g *callGate, call func() (*T, error)) (*T, error) {
	if !g.enter() {
		return nil, rpctypes.ErrStopped
	}
	defer g.exit()
	return call()
}

// errNotInProcess refuses the calls the in-process client does not serve.
var errNotInProcess = errors.New("etcd: not served by the embedded member's in-process client; use its client URL")

// gatedKV passes KV calls through a callGate; refused calls fail as calls
// to a stopped member do.
type gatedKV struct {
	clientv3.KV
	g *callGate
}

func (k gatedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return gated(k.g, func() (*clientv3.PutResponse, error) { return k.KV.Put(ctx, key, val, opts...) })
}

func (k gatedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return gated(k.g, func() (*clientv3.GetResponse, error) { return k.KV.Get(ctx, key, opts...) })
}

func (k gatedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return gated(k.g, func() (*clientv3.DeleteResponse, error) { return k.KV.Delete(ctx, key, opts...) })
}

func (k gatedKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return gated(k.g, func() (*clientv3.CompactResponse, error) { return k.KV.Compact(ctx, rev, opts...) })
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
	return gated(t.g, func() (*clientv3.TxnResponse, error) { return t.Txn.Commit() })
}

// gatedLease gates the lease calls that return. Keep-alive streams are not
// gated: they end when the client closes, before the member does, and
// renewing a lease does not read the storage backend.
type gatedLease struct {
	clientv3.Lease
	g *callGate
}

func (l gatedLease) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	return gated(l.g, func() (*clientv3.LeaseGrantResponse, error) { return l.Lease.Grant(ctx, ttl) })
}

func (l gatedLease) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	return gated(l.g, func() (*clientv3.LeaseRevokeResponse, error) { return l.Lease.Revoke(ctx, id) })
}

func (l gatedLease) TimeToLive(ctx context.Context, id clientv3.LeaseID, opts ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	return gated(l.g, func() (*clientv3.LeaseTimeToLiveResponse, error) { return l.Lease.TimeToLive(ctx, id, opts...) })
}

func (l gatedLease) Leases(ctx context.Context) (*clientv3.LeaseLeasesResponse, error) {
	return gated(l.g, func() (*clientv3.LeaseLeasesResponse, error) { return l.Lease.Leases(ctx) })
}

func (l gatedLease) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	return gated(l.g, func() (*clientv3.LeaseKeepAliveResponse, error) { return l.Lease.KeepAliveOnce(ctx, id) })
}

// gatedWatcher gates the creation of a watch; once the gate has closed, a
// new watch gets a closed channel, as a closed client's does. Watches
// already running end when the client closes. None of this package's
// watches asks for previous values (clientv3.WithPrevKV), the one thing a
// running watch reads from the storage backend.
type gatedWatcher struct {
	clientv3.Watcher
	g *callGate
}

func (w gatedWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	if !w.g.enter() {
		ch := make(chan clientv3.WatchResponse)
		close(ch)
		return ch
	}
	defer w.g.exit()
	return w.Watcher.Watch(ctx, key, opts...)
}

// gatedMaintenance gates the maintenance calls; snapshots, which stream
// from the backend after the call returns, are refused.
type gatedMaintenance struct {
	clientv3.Maintenance
	g *callGate
}

func (m gatedMaintenance) AlarmList(ctx context.Context) (*clientv3.AlarmResponse, error) {
	return gated(m.g, func() (*clientv3.AlarmResponse, error) { return m.Maintenance.AlarmList(ctx) })
}

func (m gatedMaintenance) AlarmDisarm(ctx context.Context, am *clientv3.AlarmMember) (*clientv3.AlarmResponse, error) {
	return gated(m.g, func() (*clientv3.AlarmResponse, error) { return m.Maintenance.AlarmDisarm(ctx, am) })
}

func (m gatedMaintenance) Defragment(ctx context.Context, endpoint string) (*clientv3.DefragmentResponse, error) {
	return gated(m.g, func() (*clientv3.DefragmentResponse, error) { return m.Maintenance.Defragment(ctx, endpoint) })
}

func (m gatedMaintenance) Status(ctx context.Context, endpoint string) (*clientv3.StatusResponse, error) {
	return gated(m.g, func() (*clientv3.StatusResponse, error) { return m.Maintenance.Status(ctx, endpoint) })
}

func (m gatedMaintenance) HashKV(ctx context.Context, endpoint string, rev int64) (*clientv3.HashKVResponse, error) {
	return gated(m.g, func() (*clientv3.HashKVResponse, error) { return m.Maintenance.HashKV(ctx, endpoint, rev) })
}

func (m gatedMaintenance) MoveLeader(ctx context.Context, transfereeID uint64) (*clientv3.MoveLeaderResponse, error) {
	return gated(m.g, func() (*clientv3.MoveLeaderResponse, error) { return m.Maintenance.MoveLeader(ctx, transfereeID) })
}

func (m gatedMaintenance) Downgrade(ctx context.Context, action clientv3.DowngradeAction, version string) (*clientv3.DowngradeResponse, error) {
	return gated(m.g, func() (*clientv3.DowngradeResponse, error) { return m.Maintenance.Downgrade(ctx, action, version) })
}

func (m gatedMaintenance) SnapshotWithVersion(context.Context) (*clientv3.SnapshotResponse, error) {
	return nil, errNotInProcess
}

func (m gatedMaintenance) Snapshot(context.Context) (io.ReadCloser, error) {
	return nil, errNotInProcess
}

// refusedAuth refuses every auth call: the management service does not use
// etcd's authentication, and its calls would read the storage backend
// outside the gate.
type refusedAuth struct{}

func (refusedAuth) Authenticate(context.Context, string, string) (*clientv3.AuthenticateResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) AuthEnable(context.Context) (*clientv3.AuthEnableResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) AuthDisable(context.Context) (*clientv3.AuthDisableResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) AuthStatus(context.Context) (*clientv3.AuthStatusResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserAdd(context.Context, string, string) (*clientv3.AuthUserAddResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserAddWithOptions(context.Context, string, string, *clientv3.UserAddOptions) (*clientv3.AuthUserAddResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserDelete(context.Context, string) (*clientv3.AuthUserDeleteResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserChangePassword(context.Context, string, string) (*clientv3.AuthUserChangePasswordResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserGrantRole(context.Context, string, string) (*clientv3.AuthUserGrantRoleResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserGet(context.Context, string) (*clientv3.AuthUserGetResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserList(context.Context) (*clientv3.AuthUserListResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) UserRevokeRole(context.Context, string, string) (*clientv3.AuthUserRevokeRoleResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) RoleAdd(context.Context, string) (*clientv3.AuthRoleAddResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) RoleGrantPermission(context.Context, string, string, string, clientv3.PermissionType) (*clientv3.AuthRoleGrantPermissionResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) RoleGet(context.Context, string) (*clientv3.AuthRoleGetResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) RoleList(context.Context) (*clientv3.AuthRoleListResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) RoleRevokePermission(context.Context, string, string, string) (*clientv3.AuthRoleRevokePermissionResponse, error) {
	return nil, errNotInProcess
}

func (refusedAuth) RoleDelete(context.Context, string) (*clientv3.AuthRoleDeleteResponse, error) {
	return nil, errNotInProcess
}
