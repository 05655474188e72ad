package hostlist

import (
	"context"
	"errors"
	"reflect"
	"sync/atomic"
	"testing"
)

func TestFanOut(t *testing.T) {
	hosts, _ := Expand("node-[1-6]", 0)
	var inflight, peak atomic.Int32
	res := FanOut(context.Background(), hosts, 2, func(ctx context.Context, h string) (string, error) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if h == "node-4" || h == "node-6" {
			return "", errors.New("disk missing")
		}
		return "ok", nil
	})
	if peak.Load() > 2 {
		t.Fatalf("%d calls in flight, limit 2", peak.Load())
	}
	for i, r := range res {
		if r.Host != hosts[i] {
			t.Fatalf("result %d is for %s", i, r.Host)
		}
	}
	rows := Group(res, func(r Result[string]) string {
		if r.Err != nil {
			return "error: " + r.Err.Error()
		}
		return r.Value
	}).Rows()
	want := []Row{{"node-[1-3,5]", "ok"}, {"node-[4,6]", "error: disk missing"}}
	if !reflect.DeepEqual(rows, want) {
		t.Fatalf("rows %v, want %v", rows, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res2 := FanOut(ctx, hosts, 1, func(ctx context.Context, h string) (int, error) { return 1, ctx.Err() })
	for _, r := range res2 {
		if !errors.Is(r.Err, context.Canceled) {
			t.Fatalf("%s: %v after cancel", r.Host, r.Err)
		}
	}
}
