package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
)

func TestProgressLine(t *testing.T) {
	line := progressLine(rebuildView{State: "running", TotalBytes: 8 << 20, DoneBytes: 2 << 20, Percent: 25,
		BytesPerSecond: 1 << 20, ETASeconds: 6})
	for _, want := range []string{"[#######-", " 25.0%", "2MiB / 8MiB", "1MiB/s", "ETA 6s"} {
		if !strings.Contains(line, want) {
			t.Errorf("progress line %q lacks %q", line, want)
		}
	}
	if l := progressLine(rebuildView{State: "paused", Percent: 150}); !strings.Contains(l, strings.Repeat("#", 30)+"]") || !strings.Contains(l, "(paused)") {
		t.Errorf("clamped paused line %q", l)
	}
}

// The JSON field names of nexuses are an interface for scripts.
func TestNexusJSON(t *testing.T) {
	v := newNexusView(&enginev1.Nexus{Name: "n0", Uuid: "u", Size: 1 << 20, BlockSize: 512,
		State: enginev1.NexusState_NEXUS_STATE_DEGRADED, Epoch: 7,
		LeftOut: []*enginev1.LeftOutChild{{Uri: "bdev:///c", State: "faulted", Reason: "admin"}},
		Children: []*enginev1.Child{
			{Uri: "bdev:///a", State: enginev1.ChildState_CHILD_STATE_ONLINE, Local: true, Identity: "i"},
			{Uri: "nvmf://h:1/q", State: enginev1.ChildState_CHILD_STATE_REBUILDING,
				Rebuild: &enginev1.Rebuild{Child: "nvmf://h:1/q", State: "running", TotalBytes: 100, DoneBytes: 50, Percent: 50}},
		}})
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"n0","uuid":"u","size":1048576,"block_size":512,"state":"degraded","children":[{"uri":"bdev:///a","state":"online","local":true,"identity":"i"},{"uri":"nvmf://h:1/q","state":"rebuilding","local":false,"rebuild":{"child":"nvmf://h:1/q","state":"running","partial":false,"total_bytes":100,"done_bytes":50,"percent":50,"bytes_per_second":0,"eta_seconds":0}}],"left_out":[{"uri":"bdev:///c","state":"faulted","reason":"admin"}],"epoch":7}`
	if string(b) != want {
		t.Fatalf("nexus JSON\n%s\nwant\n%s", b, want)
	}
	var buf bytes.Buffer
	if err := nexusTable(&buf, []nexusView{v}); err != nil || !strings.Contains(buf.String(), "1/3 online") { // a left-out child counts
		t.Fatalf("table %q %v", buf.String(), err)
	}
}
