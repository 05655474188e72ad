// Package nbd serves block devices over the Network Block Device protocol:
// fixed newstyle negotiation (NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST,
// NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT, NBD_OPT_STRUCTURED_REPLY) and the
// transmission commands READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC, with
// FUA and multi-conn. Any bdev.Device can be exported; the server knows
// nothing of pools or nexuses.
//
// Each connection has one goroutine at a time reading requests; it hands
// them to a bounded set of workers, so many requests are in flight at once,
// except that a short READ or WRITE arriving with nothing else in flight runs
// on the goroutine that read it (which passes the reading on to a worker
// first), sparing queue depth 1 a hand-off. Replies go out in completion
// order, matched by the client through the request handle.
//
// Clients name the export they want; the empty name (the protocol's default
// export) selects the only export when there is exactly one. TLS and
// metadata contexts (NBD_CMD_BLOCK_STATUS) are not offered: clients are told
// NBD_REP_ERR_UNSUP and carry on without them.
package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// Errors returned by the export registry and Serve.
var (
	// ErrExists is returned by AddExport for a name already exported.
	ErrExists = errors.New("nbd: export already exists")
	// ErrNotFound is returned by RemoveExport for an unknown name.
	ErrNotFound = errors.New("nbd: export not found")
	// ErrServerClosed is returned by Serve after Close.
	ErrServerClosed = errors.New("nbd: server closed")
)

// ExportOptions describe an export beyond its device.
type ExportOptions struct {
	// Description is shown to clients that ask for it (NBD_INFO_DESCRIPTION).
	Description string
	// ReadOnly advertises NBD_FLAG_READ_ONLY; writes, trims and write-zeroes
	// fail with EPERM.
	ReadOnly bool
}

// handshakeTimeout bounds the negotiation phase, so that idle or stuck
// clients do not hold a connection forever before choosing an export.
const handshakeTimeout = 30 * time.Second

// drainTimeout bounds how long a connection that is being shut down waits
// for its client to read the replies of in-flight requests.
const drainTimeout = 10 * time.Second

// Server exports block devices over NBD. It is safe for concurrent use: one
// Server may Serve several listeners (TCP and unix) while exports are added
// and removed.
type Server struct {
	log *slog.Logger
	// maxPayload is MaxPayload; tests lower it to keep oversize requests
	// cheap. Set before the first connection.
	maxPayload uint32

	mu        sync.Mutex
	exports   map[string]*export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool
	handlers  sync.WaitGroup

	watch inlineWatch // passes the read role on for stuck inline requests
}

// export is one named device and the connections using it.
type export struct {
	name  string
	dev   bdev.Device
	opts  ExportOptions
	conns map[*conn]struct{} // guarded by Server.mu
	// removed is set, under Server.mu, when the export is withdrawn, so that
	// a connection that finished negotiating just then does not attach.
	removed bool
	done    sync.WaitGroup // one per attached connection
}

// NewServer returns a Server with no exports. A nil logger discards logs.
func NewServer(logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		log:        logger,
		maxPayload: MaxPayload,
		exports:    map[string]*export{},
		listeners:  map[net.Listener]struct{}{},
		conns:      map[*conn]struct{}{},
	}
}

// AddExport makes dev available under name. The Server does not take
// ownership: the caller closes dev, after RemoveExport. The device's block
// size is advertised as the minimum block size; requests not aligned to it
// get EINVAL. Names are at most 4096 bytes of UTF-8.
//
// The size a client is told, and that its requests are checked against, is
// dev.Size() when it connects (NBD has no way to tell a connected client
// of a change): a device that grows is seen at its new size by clients that
// connect afterwards, while those connected before keep the old size until
// they reconnect.
func (s *Server) AddExport(name string, dev bdev.Device, opts ExportOptions) error {
	if len(name) > maxNameLen {
		return fmt.Errorf("nbd: export name of %d bytes: use at most %d bytes", len(name), maxNameLen)
	}
	if dev == nil {
		return fmt.Errorf("nbd: export %q: nil device", name)
	}
	if bs := dev.BlockSize(); bs <= 0 || bs > 64<<10 || bs&(bs-1) != 0 {
		return fmt.Errorf("nbd: export %q: block size %d must be a power of two of at most 64 KiB", name, bs)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("nbd: export %q: %w", name, ErrServerClosed)
	}
	if _, ok := s.exports[name]; ok {
		return fmt.Errorf("nbd: export %q: %w", name, ErrExists)
	}
	s.exports[name] = &export{name: name, dev: dev, opts: opts, conns: map[*conn]struct{}{}}
	s.log.Debug("nbd export added", "export", name, "size", dev.Size(), "read_only", opts.ReadOnly)
	return nil
}

// RemoveExport withdraws an export: new clients can no longer open it, and
// the connections using it are closed once their in-flight requests have
// been answered. It returns after those connections are gone, so the caller
// may then close the device. It does not close the device.
func (s *Server) RemoveExport(name string) error {
	s.mu.Lock()
	e, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("nbd: export %q: %w", name, ErrNotFound)
	}
	delete(s.exports, name)
	e.removed = true
	for c := range e.conns {
		c.shutdown()
	}
	s.mu.Unlock()
	e.done.Wait()
	s.log.Debug("nbd export removed", "export", name)
	return nil
}

// Exports returns the names of the current exports, sorted.
func (s *Server) Exports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Serve accepts connections on l until ctx is done (it then returns nil), the
// Server is closed (ErrServerClosed), or l fails (that error). It closes l
// when it returns. Serve may run on several listeners at once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	s.log.Info("nbd server listening", "addr", l.Addr().String())
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		s.startConn(nc)
	}
}

// Close stops every listener and connection (in-flight requests are answered
// first) and waits for the connection handlers to return. Exports stay
// registered but can no longer be reached; their devices are not closed.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.shutdown()
	}
	s.mu.Unlock()
	s.handlers.Wait()
	return nil
}

func (s *Server) startConn(nc net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nc.Close()
		return
	}
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		c.serve()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
}

// attach registers c as a user of the export it negotiated. It fails when the
// export was removed (or replaced) since the negotiation looked it up.
func (s *Server) attach(c *conn, e *export) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.removed || s.closed {
		return false
	}
	e.conns[c] = struct{}{}
	e.done.Add(1)
	return true
}

func (s *Server) detach(c *conn, e *export) {
	s.mu.Lock()
	delete(e.conns, c)
	s.mu.Unlock()
	e.done.Done()
}

// serverCatalog is the negotiation's view of a Server.
type serverCatalog struct{ s *Server }

func (e *export) info(maxPayload uint32) exportInfo {
	return exportInfo{
		maxPayload:  maxPayload,
		name:        e.name,
		description: e.opts.Description,
		size:        uint64(e.dev.Size()),
		blockSize:   uint32(e.dev.BlockSize()),
		readOnly:    e.opts.ReadOnly,
		ref:         e,
	}
}

// find resolves a name. The empty name is the protocol's "default export":
// it selects the only export when there is exactly one.
func (sc serverCatalog) find(name string) (exportInfo, bool) {
	sc.s.mu.Lock()
	defer sc.s.mu.Unlock()
	e, ok := sc.s.exports[name]
	if !ok && name == "" && len(sc.s.exports) == 1 {
		for _, only := range sc.s.exports {
			e, ok = only, true
		}
	}
	if !ok {
		return exportInfo{}, false
	}
	return e.info(sc.s.maxPayload), true
}

func (sc serverCatalog) list() []exportInfo {
	sc.s.mu.Lock()
	defer sc.s.mu.Unlock()
	out := make([]exportInfo, 0, len(sc.s.exports))
	for _, e := range sc.s.exports {
		out = append(out, e.info(sc.s.maxPayload))
	}
	slices.SortFunc(out, func(a, b exportInfo) int {
		if a.name < b.name {
			return -1
		}
		if a.name > b.name {
			return 1
		}
		return 0
	})
	return out
}
