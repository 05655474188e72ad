package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexstor/nexstor/internal/security/certgen"
)

// certgenCmd is `nexstor certgen`: a system CA and one certificate per role.
func certgenCmd() *cobra.Command {
	var dir string
	var hosts []string
	var validity time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "certgen",
		Short: "Create the system CA and the admin, server and csi certificates",
		Long: `Certgen writes a new certificate authority (ca.crt, ca.key) and one
certificate per role into --dir: admin (nexctl, may do everything), server
(storage nodes: join, heartbeat, and serve), csi (the CSI driver: the volume
service only, never an engine or membership). Keys are written with mode 0600.

Copy ca.crt with server.crt/server.key to every node (transport_config or
--cert-dir) and ca.crt with admin.crt/admin.key to the operators (nexctl
--cert-dir). An existing CA is never replaced without --force.`,
		Example: `  nexstor certgen --dir /etc/nexstor/certs --host node-1 --host 10.0.0.1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return fmt.Errorf("--dir is required: the directory to write the certificates to")
			}
			if err := certgen.GenerateAll(dir, certgen.Options{Hosts: hosts, Validity: validity, Force: force}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote ca, admin, server and csi certificates to %s\n", dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the certificates (created 0700)")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "DNS name or IP address for the server certificate (repeatable; localhost, 127.0.0.1 and ::1 are always included)")
	cmd.Flags().DurationVar(&validity, "validity", certgen.DefaultValidity, "validity of the role certificates")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing CA and certificates")
	return cmd
}
