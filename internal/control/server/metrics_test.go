package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/testutil"
)

// maintenanceConfig is a node that is not formatted and not an access
// point: Run serves it in maintenance mode without an etcd member.
func maintenanceConfig(t *testing.T, metricsAddr string) *config.Server {
	dir := t.TempDir()
	return config.Default().WithName("m").WithDataDir(filepath.Join(dir, "data")).WithRuntimeDir(filepath.Join(dir, "run")).
		WithInsecure(true).WithGRPCListen(testutil.FreeAddr(t)).WithAccessPoints(testutil.FreeAddr(t)).
		WithNVMfListen(testutil.FreeAddr(t)).WithDiscoveryListen("").WithNBDListen("").WithMetricsListen(metricsAddr)
}

// TestRunServesMetrics: a node in maintenance mode already serves its
// metrics, saying that its engine does not run; the listener is gone once
// Run returns.
func TestRunServesMetrics(t *testing.T) {
	addr := testutil.FreeAddr(t)
	cfg := maintenanceConfig(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}) }()
	url := "http://" + addr + "/metrics"
	var body string
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				body = string(b)
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned %v before serving metrics", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics on %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(body, "\nnexstor_engine_up 0\n") || !strings.Contains(body, "nexstor_build_info{") ||
		!strings.Contains(body, "\ngo_goroutines ") {
		t.Fatalf("maintenance-mode scrape:\n%s", body)
	}
	if strings.Contains(body, "nexstor_pool_") {
		t.Fatalf("pool metrics without an engine:\n%s", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if resp, err := http.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("metrics still served after Run returned")
	}
}

// TestRunMetricsPortBusy: a metrics port in use is a startup error that
// names metrics.listen.
func TestRunMetricsPortBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := maintenanceConfig(t, ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = Run(ctx, cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "metrics.listen") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Run with the metrics port taken: %v, want an error naming metrics.listen and the address", err)
	}
}
