package mgmt

import (
	"sync"

	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// reportCache holds the last pool report of each node, by node UUID. It is
// live state: never persisted, and rebuilt by a new leader from the reports
// the nodes resend when asked (HeartbeatResponse.resend_pools). Safe for
// concurrent use.
type reportCache struct {
	mu sync.Mutex
	m  map[string]poolReport
}

type poolReport struct {
	set *mgmtv1.PoolReportSet
	ms  int64 // when this leader took it
}

// put records set for node; a nil set (no report in the message) changes
// nothing.
func (c *reportCache) put(node string, set *mgmtv1.PoolReportSet, ms int64) {
	if set == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]poolReport{}
	}
	c.m[node] = poolReport{set: proto.Clone(set).(*mgmtv1.PoolReportSet), ms: ms}
}

func (c *reportCache) has(node string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[node]
	return ok
}

// get returns the node's report (nil when none) and when it was taken.
func (c *reportCache) get(node string) ([]*mgmtv1.PoolReport, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[node]
	if !ok {
		return nil, 0
	}
	return r.set.GetPools(), r.ms
}

// reset forgets every report (leadership changed hands: reports taken by an
// earlier term may be stale).
func (c *reportCache) reset() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}
