package nbd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// testLogger logs at debug level when NBD_TEST_DEBUG is set.
func testLogger() *slog.Logger {
	if os.Getenv("NBD_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testMaxPayload is the request size limit of test servers: small, so that
// oversize requests are cheap to send, and it checks that real clients obey
// the advertised maximum block size.
const testMaxPayload = 1 << 20

// startServer serves the devices on a loopback TCP port and returns its
// address. The server is closed when the test ends.
func startServer(t testing.TB, devs map[string]bdev.Device) string {
	t.Helper()
	s, addr := startServerS(t, devs)
	_ = s
	return addr
}

func startServerS(t testing.TB, devs map[string]bdev.Device) (*Server, string) {
	t.Helper()
	s := NewServer(testLogger())
	s.maxPayload = testMaxPayload
	for name, dev := range devs {
		if err := s.AddExport(name, dev, ExportOptions{Description: "test export " + name}); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		s.Close()
	})
	return s, l.Addr().String()
}
