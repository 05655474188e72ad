package operator

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
)

// System is what the reconciler needs of a Nexstor system: its members, its
// volumes, and the pool calls of a member's engine. SystemClient is the
// real one.
type System interface {
	// Member returns the member named node; nil (and no error) when the
	// system has no such member.
	Member(ctx context.Context, node string) (*mgmtv1.Member, error)
	// Volumes lists every volume of the system with its replicas.
	Volumes(ctx context.Context) ([]*mgmtv1.Volume, error)
	// Pools returns the pool calls of the engine at addr (a member's
	// address).
	Pools(addr string) (PoolEngine, error)
}

// PoolEngine is the pool service of one engine (engineclient.Client).
type PoolEngine interface {
	GetPool(ctx context.Context, r *enginev1.GetPoolRequest) (*enginev1.Pool, error)
	CreatePool(ctx context.Context, r *enginev1.CreatePoolRequest) (*enginev1.Pool, error)
	ImportPool(ctx context.Context, r *enginev1.ImportPoolRequest) (*enginev1.Pool, error)
	DestroyPool(ctx context.Context, r *enginev1.DestroyPoolRequest) (*enginev1.DestroyPoolResponse, error)
	SetPoolLabels(ctx context.Context, r *enginev1.SetPoolLabelsRequest) (*enginev1.Pool, error)
}

// SystemClient reaches a system through its management service and its
// members' engines, with one set of credentials. Creating and destroying
// pools is for the admin role only, so those are the admin certificate's.
// Safe for concurrent use; Close releases the connections.
type SystemClient struct {
	mgmt *mgmtclient.Client
	opts engineclient.Options

	mu      sync.Mutex
	engines map[string]*engineclient.Client
}

// NewSystemClient returns a client of the system whose access points are
// addrs (host:port), calling engines with opts (TLS files, or Insecure).
func NewSystemClient(addrs []string, opts engineclient.Options) (*SystemClient, error) {
	m, err := mgmtclient.New(addrs, mgmtclient.Options{TLS: opts.TLS, Insecure: opts.Insecure,
		Credentials: opts.Credentials, DialTimeout: opts.DialTimeout})
	if err != nil {
		return nil, fmt.Errorf("management service %v: %w", addrs, err)
	}
	return &SystemClient{mgmt: m, opts: opts, engines: map[string]*engineclient.Client{}}, nil
}

// Member implements System.
func (s *SystemClient) Member(ctx context.Context, node string) (*mgmtv1.Member, error) {
	var m *mgmtv1.Member
	err := s.mgmt.DoVolume(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		resp, err := cl.ListNodes(ctx, &mgmtv1.ListNodesRequest{})
		if err != nil {
			return err
		}
		for _, n := range resp.GetNodes() {
			if n.GetMember().GetName() == node {
				m = n.GetMember()
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the system's nodes: %w", err)
	}
	return m, nil
}

// Volumes implements System.
func (s *SystemClient) Volumes(ctx context.Context) ([]*mgmtv1.Volume, error) {
	var vs []*mgmtv1.Volume
	err := s.mgmt.DoVolume(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		resp, err := cl.ListVolumes(ctx, &mgmtv1.ListVolumesRequest{})
		vs = resp.GetVolumes()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing the system's volumes: %w", err)
	}
	return vs, nil
}

// Pools implements System: one engine client per address, kept.
func (s *SystemClient) Pools(addr string) (PoolEngine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.engines[addr]; ok {
		return c, nil
	}
	c, err := engineclient.New(addr, s.opts)
	if err != nil {
		return nil, err
	}
	s.engines[addr] = c
	return c, nil
}

// Close closes every connection.
func (s *SystemClient) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for a, c := range s.engines {
		c.Close()
		delete(s.engines, a)
	}
	return s.mgmt.Close()
}

func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }
