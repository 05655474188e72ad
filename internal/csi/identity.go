package csi

import (
	"context"
	"log/slog"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/version"
)

// Identity is the CSI identity service of one plugin process. It
// advertises the controller service only when the process serves it.
// Safe for concurrent use.
type Identity struct {
	csi.UnimplementedIdentityServer
	controller bool
	// ready, when set, is what Probe checks (the controller: that the
	// management service answers).
	ready func(ctx context.Context) error
	log   *slog.Logger
}

// NewIdentity returns the identity service. controller says whether the
// process serves the controller service; ready, when not nil, is called by
// Probe, which reports the plugin not ready while it fails.
func NewIdentity(controller bool, ready func(ctx context.Context) error, log *slog.Logger) *Identity {
	if log == nil {
		log = slog.Default()
	}
	return &Identity{controller: controller, ready: ready, log: log}
}

// GetPluginInfo implements csi.IdentityServer.
func (i *Identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: version.Get().Version}, nil
}

// GetPluginCapabilities implements csi.IdentityServer: the controller
// service (when served), topology (the node a volume's replicas are on),
// and online expansion.
func (i *Identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	out := &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}
	if i.controller {
		out.Capabilities = append(out.Capabilities, svc(csi.PluginCapability_Service_CONTROLLER_SERVICE))
	}
	return out, nil
}

// Probe implements csi.IdentityServer: ready unless the readiness check
// fails, which is logged and answered as not ready (never as an error, so
// that a liveness probe does not restart a plugin for what a restart
// cannot fix).
func (i *Identity) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if i.ready != nil {
		if err := i.ready(ctx); err != nil {
			i.log.Warn("probe: not ready", "err", fault.Message(err))
			return &csi.ProbeResponse{Ready: wrapperspb.Bool(false)}, nil
		}
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}
