package mgmt

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/fault"
)

// engineCallTimeout bounds one engine call the leader makes for a volume
// operation, so that a hung node cannot hold an operation forever.
const engineCallTimeout = 30 * time.Second

// probeTimeout bounds the calls that read live state (volume status, pool
// refresh): a node that does not answer in time is reported unknown.
const probeTimeout = 3 * time.Second

// engineAPI is what the leader asks of a member's engine for volumes:
// the subset of engineclient.Client it uses, so that the simulation tests
// can put engines with injected faults behind it.
type engineAPI interface {
	ListPools(context.Context, *enginev1.ListPoolsRequest) (*enginev1.ListPoolsResponse, error)
	GetPool(context.Context, *enginev1.GetPoolRequest) (*enginev1.Pool, error)
	CreateReplica(context.Context, *enginev1.CreateReplicaRequest) (*enginev1.Replica, error)
	GetReplica(context.Context, *enginev1.GetReplicaRequest) (*enginev1.Replica, error)
	ListReplicas(context.Context, *enginev1.ListReplicasRequest) (*enginev1.ListReplicasResponse, error)
	DestroyReplica(context.Context, *enginev1.DestroyReplicaRequest) (*enginev1.DestroyReplicaResponse, error)
	ResizeReplica(context.Context, *enginev1.ResizeReplicaRequest) (*enginev1.Replica, error)
	ShareReplica(context.Context, *enginev1.ShareReplicaRequest) (*enginev1.Replica, error)
	UnshareReplica(context.Context, *enginev1.UnshareReplicaRequest) (*enginev1.Replica, error)
	GetNexus(context.Context, *enginev1.GetNexusRequest) (*enginev1.Nexus, error)
	ListNexuses(context.Context, *enginev1.ListNexusesRequest) (*enginev1.ListNexusesResponse, error)
	CreateNexus(context.Context, *enginev1.CreateNexusRequest) (*enginev1.Nexus, error)
	DestroyNexus(context.Context, *enginev1.DestroyNexusRequest) (*enginev1.DestroyNexusResponse, error)
	PublishNexus(context.Context, *enginev1.PublishNexusRequest) (*enginev1.Nexus, error)
	SetNexusAnaState(context.Context, *enginev1.SetNexusAnaStateRequest) (*enginev1.Nexus, error)
	ResizeNexus(context.Context, *enginev1.ResizeNexusRequest) (*enginev1.Nexus, error)
	Verify(context.Context, *enginev1.VerifyRequest) (*enginev1.VerifyResponse, error)
	AddChild(context.Context, *enginev1.ChildRequest) (*enginev1.Nexus, error)
	RemoveChild(context.Context, *enginev1.ChildRequest) (*enginev1.Nexus, error)
	OnlineChild(context.Context, *enginev1.ChildRequest) (*enginev1.Nexus, error)
}

// engines caches one engine client per member address. Safe for
// concurrent use.
type engines struct {
	creds credentials.TransportCredentials // nil: plain text
	// dial, when set, replaces engineclient (tests).
	dial func(addr string) (engineAPI, error)

	mu      sync.Mutex
	clients map[string]*engineclient.Client
}

func (e *engines) get(addr string) (engineAPI, error) {
	if e.dial != nil {
		return e.dial(addr)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.clients[addr]; ok {
		return c, nil
	}
	o := engineclient.Options{Credentials: e.creds, Insecure: e.creds == nil, DialTimeout: probeTimeout}
	c, err := engineclient.New(addr, o)
	if err != nil {
		return nil, err
	}
	if e.clients == nil {
		e.clients = map[string]*engineclient.Client{}
	}
	e.clients[addr] = c
	return c, nil
}

func (e *engines) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for a, c := range e.clients {
		c.Close()
		delete(e.clients, a)
	}
}

// unreachable reports an error that says the engine could not be reached
// (or did not answer in time), as opposed to an answer.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch fault.CodeOf(err) {
	case "engine.unreachable", "rpc.unavailable", "rpc.deadline_exceeded":
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		// An engine answers Unavailable itself for a busy object or a
		// stopped engine: those have a fault code of their own.
		return fault.CodeOf(err) == ""
	}
	return false
}

// notFound reports an engine's NotFound answer.
func notFound(err error) bool {
	return status.Code(err) == codes.NotFound || fault.KindOf(err) == fault.NotFound
}
