package main

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// fakeSnapshots adds the snapshot calls to fakeVolumes.
type fakeSnapshots struct {
	*fakeVolumes
	snap *mgmtv1.VolumeSnapshot
}

func (f *fakeSnapshots) CreateSnapshot(ctx context.Context, r *mgmtv1.CreateSnapshotRequest) (*mgmtv1.VolumeSnapshot, error) {
	return f.snap, f.record(ctx, r)
}

func (f *fakeSnapshots) ListSnapshots(ctx context.Context, r *mgmtv1.ListSnapshotsRequest) (*mgmtv1.ListSnapshotsResponse, error) {
	return &mgmtv1.ListSnapshotsResponse{Snapshots: []*mgmtv1.VolumeSnapshot{f.snap}}, f.record(ctx, r)
}

func (f *fakeSnapshots) GetSnapshot(ctx context.Context, r *mgmtv1.GetSnapshotRequest) (*mgmtv1.VolumeSnapshot, error) {
	return f.snap, f.record(ctx, r)
}

func (f *fakeSnapshots) DeleteSnapshot(ctx context.Context, r *mgmtv1.DeleteSnapshotRequest) (*mgmtv1.DeleteSnapshotResponse, error) {
	return &mgmtv1.DeleteSnapshotResponse{Pending: []string{"node-2 (replica r2)"}}, f.record(ctx, r)
}

// TestVolumeSnapshotCommands checks that the snapshot commands without
// --engine go to the management service with the right requests, print
// the copies and the pause, and that volume create --from-snapshot needs
// no size.
func TestVolumeSnapshotCommands(t *testing.T) {
	f := &fakeSnapshots{fakeVolumes: &fakeVolumes{volume: degradedVolume()}, snap: &mgmtv1.VolumeSnapshot{
		Uuid: "5e1f0000-0000-4000-8000-000000000001", Name: "daily-1", Volume: "v1", VolumeUuid: "0b6d4c1e-8f2a-4e3b-9c7d-1a2b3c4d5e6f",
		Size: 1 << 30, Status: &mgmtv1.SnapshotStatus{Phase: "ready", ReadyToUse: true, ReadyCopies: 2, PausedUs: 2500,
			Failed: []string{"r2"}, Copies: []*mgmtv1.SnapshotCopy{
				{Replica: "r0", Node: "node-0", Pool: "p0", State: "present"}, {Replica: "r1", Node: "node-1", Pool: "p0", State: "present"}}}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	mgmtv1.RegisterVolumeServiceServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	addr := ln.Addr().String()
	for _, tc := range []struct {
		args  []string
		req   proto.Message
		print []string
	}{
		{[]string{"snapshot", "create", "v1", "daily-1"}, &mgmtv1.CreateSnapshotRequest{Volume: "v1", Name: "daily-1"},
			[]string{"daily-1", "2 of 2 answer", "2.5ms", "r2 (faulted", "r0 on node-0 pool p0: present"}},
		{[]string{"snapshot", "list", "v1"}, &mgmtv1.ListSnapshotsRequest{Volume: "v1"}, []string{"v1", "daily-1", "ready", "2/2"}},
		{[]string{"snapshot", "list"}, &mgmtv1.ListSnapshotsRequest{}, []string{"daily-1"}},
		{[]string{"snapshot", "get", "v1/daily-1"}, &mgmtv1.GetSnapshotRequest{Snapshot: "v1/daily-1"}, []string{"Writes held"}},
		{[]string{"snapshot", "delete", "v1/daily-1"}, &mgmtv1.DeleteSnapshotRequest{Snapshot: "v1/daily-1"},
			[]string{"deleted", "pending on node-2 (replica r2)"}},
		{[]string{"volume", "create", "v2", "--from-snapshot", "v1/daily-1", "--replicas", "2"},
			&mgmtv1.CreateVolumeRequest{Spec: &mgmtv1.VolumeSpec{Name: "v2", Replicas: 2, Thin: true, FromSnapshot: "v1/daily-1"}}, nil},
	} {
		r := volumeRun(t, addr, tc.args...)
		if r.status != 0 {
			t.Fatalf("%v: %+v", tc.args, r)
		}
		if got := f.last(t); !proto.Equal(got, tc.req) {
			t.Errorf("%v: request\n%v\nwant\n%v", tc.args, got, tc.req)
		}
		for _, s := range tc.print {
			if !strings.Contains(r.stdout, s) {
				t.Errorf("%v does not print %q:\n%s", tc.args, s, r.stdout)
			}
		}
	}
	r := volumeRun(t, addr, "snapshot", "create", "v1")
	wantError(t, r, exitUsage, "cli.usage", "VOLUME NAME")
	r = volumeRun(t, addr, "snapshot", "create", "v1", "Daily")
	wantError(t, r, exitUsage, "cli.usage", `"Daily"`)
	for _, cmd := range []string{"get", "delete"} {
		r = volumeRun(t, addr, "snapshot", cmd)
		wantError(t, r, exitUsage, "cli.usage", "VOLUME/NAME")
	}
	if reqs := f.requests(); len(reqs) != 0 {
		t.Errorf("refused command lines made calls: %v", reqs)
	}
}
