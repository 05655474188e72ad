package healthstore

import (
	"context"
	"errors"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/nexus"
)

// fakeVolumes is the health store part of the volume service, in memory,
// with the service's compare on generations and fault codes.
type fakeVolumes struct {
	mgmtv1.UnimplementedVolumeServiceServer

	mu   sync.Mutex
	recs map[string]stored
	// notFoundAsStatus answers a missing record with NotFound instead of
	// found=false (both are allowed).
	notFoundAsStatus bool
	// loseSaveReplies applies that many saves but answers Unavailable, as
	// when the leader fails between its commit and its answer.
	loseSaveReplies int
	// failSaves answers saves with this error, applying nothing.
	failSaves error
	// hold, when set, blocks saves until their context ends, after
	// signalling on it.
	hold  chan struct{}
	saves int
}

type stored struct {
	gen uint64
	rec []byte
}

func (f *fakeVolumes) LoadNexusHealth(_ context.Context, req *mgmtv1.LoadNexusHealthRequest) (*mgmtv1.NexusHealth, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.recs[req.NexusUuid]
	if !ok {
		if f.notFoundAsStatus {
			return nil, status.Errorf(codes.NotFound, "no health record of nexus %s", req.NexusUuid)
		}
		return &mgmtv1.NexusHealth{}, nil
	}
	return &mgmtv1.NexusHealth{Found: true, Record: append([]byte(nil), s.rec...)}, nil
}

func (f *fakeVolumes) SaveNexusHealth(ctx context.Context, req *mgmtv1.SaveNexusHealthRequest) (*mgmtv1.SaveNexusHealthResponse, error) {
	f.mu.Lock()
	hold := f.hold
	f.saves++
	f.mu.Unlock()
	if hold != nil {
		hold <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failSaves != nil {
		return nil, f.failSaves
	}
	if s, ok := f.recs[req.NexusUuid]; ok && s.gen != req.Generation-1 {
		return nil, fault.New(fault.FailedPrecondition, CodeStaleGeneration, "stored generation differs", "stop this nexus")
	}
	f.recs[req.NexusUuid] = stored{req.Generation, append([]byte(nil), req.Record...)}
	if f.loseSaveReplies > 0 {
		f.loseSaveReplies--
		return nil, status.Error(codes.Unavailable, "the answer was lost")
	}
	return &mgmtv1.SaveNexusHealthResponse{}, nil
}

func (f *fakeVolumes) DeleteNexusHealth(_ context.Context, req *mgmtv1.DeleteNexusHealthRequest) (*mgmtv1.DeleteNexusHealthResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.recs[req.NexusUuid]; !ok && f.notFoundAsStatus {
		return nil, status.Errorf(codes.NotFound, "no health record of nexus %s", req.NexusUuid)
	}
	delete(f.recs, req.NexusUuid)
	return &mgmtv1.DeleteNexusHealthResponse{}, nil
}

func (f *fakeVolumes) set(fn func(f *fakeVolumes)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func start(t *testing.T) (*fakeVolumes, *Store) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeVolumes{recs: map[string]stored{}}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	mgmtv1.RegisterVolumeServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c, err := mgmtclient.New([]string{lis.Addr().String()}, mgmtclient.Options{Credentials: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, New(c)
}

const id = "2f1d7c1a-8a53-4e3f-9d36-1f0b7a2c4e55"

func record(gen uint64, epoch uint64) nexus.HealthRecord {
	return nexus.HealthRecord{NexusUUID: id, Generation: gen, SegmentSize: 1 << 20, Epoch: epoch, Children: []nexus.ChildHealth{
		{URI: "bdev:///r0", State: nexus.StateOnline, Identity: "nguid:01"},
		{URI: "nvmf://10.0.0.2:4420/nqn.2019-05.io.nexstor:r1", State: nexus.StateOffline, Bitmap: []byte{0x05, 0x80}},
	}}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestLoadSaveDelete: a missing record (found=false or NotFound) is
// nexus.ErrNoRecord; a saved record loads back equal; a deleted one is
// missing again, and deleting it twice is no error.
func TestLoadSaveDelete(t *testing.T) {
	for _, asStatus := range []bool{false, true} {
		f, s := start(t)
		f.set(func(f *fakeVolumes) { f.notFoundAsStatus = asStatus })
		if _, err := s.Load(ctx(t), id); !errors.Is(err, nexus.ErrNoRecord) {
			t.Fatalf("load of a missing record (NotFound status %v): %v, want ErrNoRecord", asStatus, err)
		}
		for gen := uint64(1); gen <= 3; gen++ {
			rec := record(gen, 7)
			if err := s.Save(ctx(t), rec); err != nil {
				t.Fatalf("save generation %d: %v", gen, err)
			}
			got, err := s.Load(ctx(t), id)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, rec) {
				t.Fatalf("loaded %+v, saved %+v", got, rec)
			}
		}
		for i := 0; i < 2; i++ {
			if err := s.Delete(ctx(t), id); err != nil {
				t.Fatalf("delete %d (NotFound status %v): %v", i, asStatus, err)
			}
		}
		if _, err := s.Load(ctx(t), id); !errors.Is(err, nexus.ErrNoRecord) {
			t.Fatalf("load after delete: %v, want ErrNoRecord", err)
		}
	}
}

// TestSaveStale: a save whose generation does not follow the stored one
// (another nexus of the volume saved meanwhile) fails with ErrStale, says
// so, and keeps the service's fault code and status; the stored record is
// the other nexus's.
func TestSaveStale(t *testing.T) {
	f, s := start(t)
	if err := s.Save(ctx(t), record(1, 1)); err != nil {
		t.Fatal(err)
	}
	newer := record(2, 2) // the new instance of the nexus, at a higher epoch
	if err := s.Save(ctx(t), newer); err != nil {
		t.Fatal(err)
	}
	for _, gen := range []uint64{2, 5} { // the old instance: same generation, or one it skipped to
		old := record(gen, 1)
		old.Children[0].State = nexus.StateFaulted
		err := s.Save(ctx(t), old)
		if !errors.Is(err, ErrStale) || !errors.Is(err, bdev.ErrSuperseded) {
			t.Fatalf("stale save of generation %d: %v, want ErrStale (and bdev.ErrSuperseded)", gen, err)
		}
		if !strings.Contains(err.Error(), "another nexus of the same volume saved a newer") || !strings.Contains(err.Error(), id) {
			t.Errorf("stale save: %q does not say why or name the nexus", err)
		}
		if fault.CodeOf(err) != CodeStaleGeneration || status.Code(err) != codes.FailedPrecondition {
			t.Errorf("stale save: code %q, status %v", fault.CodeOf(err), status.Code(err))
		}
	}
	got, err := s.Load(ctx(t), id)
	if err != nil || !reflect.DeepEqual(got, newer) {
		t.Fatalf("stored %+v (%v), want the newer record", got, err)
	}
	// Other failures are errors, not ErrStale.
	f.set(func(f *fakeVolumes) { f.failSaves = status.Error(codes.Internal, "etcd is gone") })
	if err := s.Save(ctx(t), record(3, 2)); err == nil || errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "etcd is gone") {
		t.Fatalf("failed save: %v", err)
	}
}

// TestSaveRetriedAfterLostAnswer: a save the service applied but whose
// answer was lost is retried by the client; the retry finds its own record
// stored and Save succeeds instead of reporting the nexus stale.
func TestSaveRetriedAfterLostAnswer(t *testing.T) {
	f, s := start(t)
	if err := s.Save(ctx(t), record(1, 3)); err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeVolumes) { f.loseSaveReplies = 1 })
	rec := record(2, 3)
	if err := s.Save(ctx(t), rec); err != nil {
		t.Fatalf("save whose first answer was lost: %v", err)
	}
	f.mu.Lock()
	saves, lost := f.saves, f.loseSaveReplies
	f.mu.Unlock()
	if saves != 3 || lost != 0 {
		t.Fatalf("%d save calls, %d lost answers left: the lost answer was not retried", saves, lost)
	}
	if got, err := s.Load(ctx(t), id); err != nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("stored %+v (%v)", got, err)
	}
}

// TestLoadRefusesForeignOrCorruptRecords: a record of another nexus, or
// one that does not decode, is an error (not ErrNoRecord: the nexus must
// not start as if it had no history).
func TestLoadRefusesForeignOrCorruptRecords(t *testing.T) {
	f, s := start(t)
	for name, body := range map[string]string{"corrupt": "{not json", "foreign": `{"nexus_uuid":"other","generation":1}`} {
		f.set(func(f *fakeVolumes) { f.recs[id] = stored{1, []byte(body)} })
		_, err := s.Load(ctx(t), id)
		if err == nil || errors.Is(err, nexus.ErrNoRecord) || !strings.Contains(err.Error(), id) {
			t.Errorf("%s record: %v", name, err)
		}
	}
}

// TestSaveHonoursContext: a save the service does not answer returns once
// its context is cancelled.
func TestSaveHonoursContext(t *testing.T) {
	f, s := start(t)
	hold := make(chan struct{}, 1)
	f.set(func(f *fakeVolumes) { f.hold = hold })
	c, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Save(c, record(1, 1)) }()
	select {
	case <-hold:
	case <-time.After(60 * time.Second):
		t.Fatal("the save never reached the service")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, ErrStale) {
			t.Fatalf("cancelled save: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Save did not return after its context was cancelled")
	}
}

// TestSaveWithoutNexus: a record without a nexus UUID is refused locally.
func TestSaveWithoutNexus(t *testing.T) {
	_, s := start(t)
	if err := s.Save(ctx(t), nexus.HealthRecord{Generation: 1}); err == nil || !strings.Contains(err.Error(), "NexusUUID") {
		t.Fatalf("save without a nexus: %v", err)
	}
}
