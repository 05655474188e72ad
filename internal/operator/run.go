package operator

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/nexstor/nexstor/api/k8s/v1alpha1"
)

// Options configure Run.
type Options struct {
	// Config reaches the Kubernetes API server.
	Config *rest.Config
	// System is the Nexstor system the DiskPools' pools live in.
	System System
	// Resync is the period of the level-triggered pass (DefaultResync
	// when zero).
	Resync time.Duration
	// LeaderElection makes only one of several operator replicas act, with
	// a Lease named "nexstor-operator" in LeaderElectionNamespace.
	LeaderElection          bool
	LeaderElectionNamespace string
	// MetricsAddr serves controller-runtime's Prometheus metrics ("0"
	// disables them); HealthAddr serves /healthz and /readyz ("" or "0"
	// disables them).
	MetricsAddr, HealthAddr string
	Log                     *slog.Logger
}

// Scheme returns a scheme with the Kubernetes types and DiskPool.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// Run runs the operator until ctx ends.
func Run(ctx context.Context, o Options) error {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	scheme, err := Scheme()
	if err != nil {
		return err
	}
	metricsAddr := o.MetricsAddr
	if metricsAddr == "" {
		metricsAddr = "0"
	}
	healthAddr := o.HealthAddr
	if healthAddr == "" {
		healthAddr = "0"
	}
	mgr, err := ctrl.NewManager(o.Config, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  healthAddr,
		LeaderElection:          o.LeaderElection,
		LeaderElectionID:        "nexstor-operator",
		LeaderElectionNamespace: o.LeaderElectionNamespace,
	})
	if err != nil {
		return fmt.Errorf("operator: %w", err)
	}
	if healthAddr != "0" {
		if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
			return err
		}
	}
	r := &Reconciler{Client: mgr.GetClient(), System: o.System, Resync: o.Resync, Log: log}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("operator: %w", err)
	}
	log.Info("operator starting", "leader_election", o.LeaderElection, "resync", r.resync())
	return mgr.Start(ctx)
}
