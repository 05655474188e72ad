package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/nexstor/nexstor/internal/operator"
	"github.com/nexstor/nexstor/internal/security/certgen"
)

// certgenCmd is `nexstor certgen`: a system CA and one certificate per role.
func certgenCmd() *cobra.Command {
	var dir string
	var hosts []string
	var validity time.Duration
	var force bool
	var secretPrefix, namespace string
	cmd := &cobra.Command{
		Use:   "certgen",
		Short: "Create the system CA and the admin, server and csi certificates",
		Long: `Certgen writes a new certificate authority (ca.crt, ca.key) and one
certificate per role into --dir: admin (nexctl, may do everything), server
(storage nodes: join, heartbeat, and serve), csi (the CSI driver: the volume
service only, never an engine or membership). Keys are written with mode 0600.

Copy ca.crt with server.crt/server.key to every node (transport_config or
--cert-dir) and ca.crt with admin.crt/admin.key to the operators (nexctl
--cert-dir). An existing CA is never replaced without --force.

--secrets PREFIX also stores them as Kubernetes Secrets in --namespace (the
in-cluster configuration, or $KUBECONFIG): PREFIX-ca (ca.crt, ca.key) and
PREFIX-admin, PREFIX-server, PREFIX-csi (ca.crt and the role's .crt/.key),
as the Helm chart mounts them. When PREFIX-ca exists nothing is written
(without --force), so the chart's Job can run again safely.`,
		Example: `  nexstor certgen --dir /etc/nexstor/certs --host node-1 --host 10.0.0.1
  nexstor certgen --dir /tmp/certs --host 10.0.0.1 --secrets nexstor-certs --namespace nexstor`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return fmt.Errorf("--dir is required: the directory to write the certificates to")
			}
			if err := certgen.GenerateAll(dir, certgen.Options{Hosts: hosts, Validity: validity, Force: force}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote ca, admin, server and csi certificates to %s\n", dir)
			if secretPrefix == "" {
				return nil
			}
			if namespace == "" {
				return fmt.Errorf("--namespace (or POD_NAMESPACE) is required with --secrets")
			}
			cfg, err := ctrl.GetConfig()
			if err != nil {
				return fmt.Errorf("kubernetes configuration: %w", err)
			}
			exists, err := operator.WriteCertSecrets(context.Background(), cfg, namespace, secretPrefix, dir, force)
			if err != nil {
				return err
			}
			names := strings.Join(operator.CertSecretNames(secretPrefix), ", ")
			if exists {
				fmt.Fprintf(cmd.OutOrStdout(), "secret %s/%s-ca exists: left %s as they are (--force replaces them)\n", namespace, secretPrefix, names)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote secrets %s in namespace %s\n", names, namespace)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the certificates (created 0700)")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "DNS name or IP address for the server certificate (repeatable; localhost, 127.0.0.1 and ::1 are always included)")
	cmd.Flags().DurationVar(&validity, "validity", certgen.DefaultValidity, "validity of the role certificates")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing CA and certificates")
	cmd.Flags().StringVar(&secretPrefix, "secrets", "", "also store them as Kubernetes Secrets PREFIX-ca, PREFIX-admin, PREFIX-server, PREFIX-csi")
	cmd.Flags().StringVar(&namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the Secrets (env POD_NAMESPACE)")
	return cmd
}
