package engine

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// TestGRPCCodes runs the services over a real gRPC connection and checks
// that errors arrive with their exact codes and with the description and
// resolution apart.
func TestGRPCCodes(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	defer e.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	Register(srv, e)
	go srv.Serve(ln)
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pools := enginev1.NewPoolServiceClient(conn)
	reps := enginev1.NewReplicaServiceClient(conn)
	ctx := context.Background()

	p, err := pools.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: "p0", Disk: "/d0"})
	if err != nil {
		t.Fatal(err)
	}
	if p.GetState() != enginev1.PoolState_POOL_STATE_ONLINE || p.GetClusterSize() != memCluster || p.GetTotalClusters() != 64 {
		t.Fatalf("pool %v", p)
	}
	rep, err := reps.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "r0", Pool: "p0", Size: 4 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = reps.ShareReplica(ctx, &enginev1.ShareReplicaRequest{Name: rep.GetName()})
	if err != nil || rep.GetShare().GetUri() != "nbd://127.0.0.1:10809/r0" {
		t.Fatalf("share: %v %v", rep, err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"dup pool", func() error {
			_, err := pools.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: "p0", Disk: "/d1"})
			return err
		}, codes.AlreadyExists},
		{"missing pool", func() error {
			_, err := pools.GetPool(ctx, &enginev1.GetPoolRequest{Name: "zz"})
			return err
		}, codes.NotFound},
		{"bad name", func() error {
			_, err := reps.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "-x", Pool: "p0", Size: 1 << 20})
			return err
		}, codes.InvalidArgument},
		{"shared", func() error {
			_, err := reps.DestroyReplica(ctx, &enginev1.DestroyReplicaRequest{Name: "r0"})
			return err
		}, codes.FailedPrecondition},
		{"missing nexus", func() error {
			_, err := enginev1.NewNexusServiceClient(conn).GetNexus(ctx, &enginev1.GetNexusRequest{Name: "n9"})
			return err
		}, codes.NotFound},
		{"nexus without children", func() error {
			_, err := enginev1.NewNexusServiceClient(conn).CreateNexus(ctx, &enginev1.CreateNexusRequest{Name: "n9"})
			return err
		}, codes.InvalidArgument},
		{"no space", func() error {
			_, err := reps.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "big", Pool: "p0", Size: 1 << 30})
			return err
		}, codes.ResourceExhausted},
	} {
		err := tc.call()
		if status.Code(err) != tc.code {
			t.Errorf("%s: code %v, want %v (%v)", tc.name, status.Code(err), tc.code, err)
			continue
		}
		f := FromStatus(err)
		if f.Code == "" || f.Description == "" || f.Resolution == "" || f.Kind != faultgrpc.Kind(tc.code) {
			t.Errorf("%s: fault from status %+v", tc.name, f)
		}
	}
	list, err := reps.ListReplicas(ctx, &enginev1.ListReplicasRequest{Pool: "p0"})
	if err != nil || len(list.GetReplicas()) != 1 {
		t.Fatalf("list %v %v", list, err)
	}
	v, err := enginev1.NewHostServiceClient(conn).GetVersion(ctx, &enginev1.GetVersionRequest{})
	if err != nil || v.GetApi() != "v1" || v.GetVersion() == "" {
		t.Fatalf("version %v %v", v, err)
	}
}

// TestConcurrentCreates races creates of the same names: exactly one of
// each wins, the others get AlreadyExists or Unavailable (busy).
func TestConcurrentCreates(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	defer e.Close()
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d0", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	const workers = 8
	var wg sync.WaitGroup
	wins := make([]int, 4)
	var mu sync.Mutex
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range wins {
				_, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: fmt.Sprintf("r%d", i), Pool: "p0", Size: memCluster, Thin: true})
				switch {
				case err == nil:
					mu.Lock()
					wins[i]++
					mu.Unlock()
				case fault.KindOf(err) != fault.AlreadyExists && fault.KindOf(err) != fault.Unavailable:
					t.Errorf("r%d: %v", i, err)
				}
				e.ShareReplica(context.Background(), fmt.Sprintf("r%d", i), "nbd", nil)
				e.Pools()
			}
		}()
	}
	wg.Wait()
	for i, n := range wins {
		if n != 1 {
			t.Errorf("r%d created %d times", i, n)
		}
	}
	list, _ := e.Replicas("")
	if len(list) != len(wins) {
		t.Fatalf("%d replicas", len(list))
	}
}
