package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nexstor/nexstor/internal/fault"
)

// Path is where Server serves the metrics.
const Path = "/metrics"

// Timeouts of the metrics HTTP server. A scrape reads memory only, so
// generous bounds cost nothing and stop a slow or idle client from holding
// a connection forever.
const (
	readHeaderTimeout = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
)

// Server serves a registry's metrics over plain HTTP on Path, on its own
// listener (metrics.listen), apart from the gRPC and data-plane ports.
type Server struct {
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// Listen binds addr (host:port, e.g. ":9502" or "127.0.0.1:0") and serves
// g on Path until Close. A bind failure is returned as a fault that names
// metrics.listen and how to fix it; nothing is left running then.
func Listen(addr string, g prometheus.Gatherer, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fault.Wrap(err, fault.FailedPrecondition, "metrics.listen",
			fmt.Sprintf("metrics.listen %s: cannot serve Prometheus metrics there", addr),
			`free the port, or choose another address with metrics.listen in the configuration (or --metrics); "" disables metrics`)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      slogAdapter{log},
		ErrorHandling: promhttp.ContinueOnError, // a partial scrape beats none
		Timeout:       writeTimeout - time.Second,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "nexstor metrics: %s\n", Path)
	})
	s := &Server{ln: ln, log: log, srv: &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout}}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "addr", s.Addr(), "err", err)
		}
	}()
	log.Info("metrics serving", "addr", s.Addr(), "url", s.URL())
	return s, nil
}

// Addr is the address the server listens on (with the port chosen when
// addr asked for port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the URL of the metrics, with a wildcard host spelled as loopback
// so that it can be pasted into a browser or curl on the node.
func (s *Server) URL() string {
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		return "http://" + s.Addr() + Path
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + Path
}

// Close stops the server: scrapes in flight get up to a few seconds to
// finish, then connections are closed. Safe to call more than once.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	return err
}

// slogAdapter is promhttp's error log: it logs encoding and gathering
// errors through slog.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) { a.log.Error("metrics: " + fmt.Sprint(v...)) }
