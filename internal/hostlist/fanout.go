package hostlist

import (
	"context"
	"sync"
)

// Result is the outcome of a call to one host.
type Result[T any] struct {
	Host  string
	Value T
	Err   error
}

// FanOut calls fn for every host, at most parallel at a time (all at once
// when parallel <= 0), and returns the results in the order of hosts. ctx is
// passed to every call; hosts not yet started when ctx ends get ctx's error.
func FanOut[T any](ctx context.Context, hosts []string, parallel int, fn func(ctx context.Context, host string) (T, error)) []Result[T] {
	out := make([]Result[T], len(hosts))
	if parallel <= 0 || parallel > len(hosts) {
		parallel = len(hosts)
	}
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i, h := range hosts {
		out[i].Host = h
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			out[i].Err = ctx.Err()
			continue
		}
		wg.Add(1)
		go func(i int, h string) {
			defer wg.Done()
			defer func() { <-sem }()
			out[i].Value, out[i].Err = fn(ctx, h)
		}(i, h)
	}
	wg.Wait()
	return out
}

// Group collects the results into HostGroups keyed by key(result), for a
// table with one row per distinct outcome.
func Group[T any](results []Result[T], key func(Result[T]) string) HostGroups {
	g := HostGroups{}
	for _, r := range results {
		g.Add(key(r), r.Host)
	}
	return g
}
