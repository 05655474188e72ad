// Package netproxy is a TCP proxy on loopback for fault tests: it forwards
// every connection to a target address and can drop the network (reset
// every connection and refuse new ones) or partition it silently (keep
// connections open but deliver nothing), then heal.
//
// A silent partition loses no bytes: what is sent meanwhile is held and
// delivered after Restore, as TCP retransmission would after a real
// partition heals. Each connection is two goroutines; a Proxy is safe for
// concurrent use.
package netproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

type mode int

const (
	forward mode = iota
	blackhole
	dropped
)

// dialTimeout bounds the connection to the target; a target that does not
// answer is a test bug, not a fault to model.
const dialTimeout = 5 * time.Second

// Proxy forwards connections accepted on a loopback port to a target.
type Proxy struct {
	ln     net.Listener
	target string
	ctx    context.Context // canceled by Close: ends dials in progress
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	mode    mode
	pass    chan struct{} // closed while forwarding, open while blackholed
	passing bool          // pass is closed
	conns   map[*pair]struct{}
	closed  bool
}

// pair is one proxied connection: the accepted client side and the dialed
// target side.
type pair struct {
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
}

// abort closes both sides at once, with a reset where the platform allows,
// as a crashed host or a cut link would.
func (c *pair) abort() {
	c.once.Do(func() {
		close(c.done)
		reset(c.client)
		if c.server != nil {
			reset(c.server)
		}
	})
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST instead of FIN
	}
	c.Close()
}

// Listen starts a proxy on 127.0.0.1 (an ephemeral port) forwarding to
// target ("host:port"). The target is dialed once per accepted connection,
// so it need not be up yet. Close the proxy when done.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("netproxy: listen on loopback: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{ln: ln, target: target, ctx: ctx, cancel: cancel,
		pass: make(chan struct{}), passing: true, conns: map[*pair]struct{}{}}
	close(p.pass)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's "127.0.0.1:port": connect there instead of to the
// target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Drop cuts the network: every proxied connection is reset, and new
// connections are accepted and reset at once (connection refused, in
// effect) until Restore.
func (p *Proxy) Drop() {
	p.mu.Lock()
	p.mode = dropped
	conns := p.takeConnsLocked()
	p.mu.Unlock()
	for _, c := range conns {
		c.abort()
	}
}

// Blackhole partitions the network silently: connections stay open, new
// ones are accepted, but no byte is forwarded in either direction until
// Restore, so peers notice only through their own timeouts. A chunk already
// past the gate when Blackhole is called may still be delivered.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = blackhole
	if p.passing {
		p.pass, p.passing = make(chan struct{}), false
	}
}

// Restore heals the network: bytes held by a Blackhole are delivered and
// new connections are forwarded again. Connections reset by Drop stay gone.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = forward
	if !p.passing {
		close(p.pass)
		p.passing = true
	}
}

// Close stops listening, resets every connection and waits for the
// proxy's goroutines to end. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := p.takeConnsLocked()
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	for _, c := range conns {
		c.abort()
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) takeConnsLocked() []*pair {
	out := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		out = append(out, c)
	}
	clear(p.conns)
	return out
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (EMFILE and the like): keep serving.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		refuse := p.mode == dropped || p.closed
		if !refuse {
			p.wg.Add(1)
		}
		p.mu.Unlock()
		if refuse {
			reset(conn)
			continue
		}
		go p.serve(conn)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	server, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		reset(client)
		return
	}
	c := &pair{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.mode == dropped || p.closed {
		p.mu.Unlock()
		c.abort()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(c, server, client) }()
	go func() { defer wg.Done(); p.pipe(c, client, server) }()
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// pipe copies src to dst through the gate until either side fails; then
// the whole pair is closed (a half-closed proxied connection would only
// hide faults).
func (p *Proxy) pipe(c *pair, dst, src net.Conn) {
	defer c.abort()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if !p.wait(c) {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if rerr != nil {
			return
		}
	}
}

// wait blocks while the network is blackholed; false when c was closed
// meanwhile.
func (p *Proxy) wait(c *pair) bool {
	p.mu.Lock()
	pass := p.pass
	p.mu.Unlock()
	select {
	case <-pass:
		return true
	case <-c.done:
		return false
	}
}
