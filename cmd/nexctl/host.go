package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/version"
)

func (a *app) hostCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Facts about the engine's host",
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "devices",
		Short:   "List the host's block devices",
		Example: `  nexctl host devices`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				resp, err := c.ListBlockDevices(ctx, nil)
				if err != nil {
					return err
				}
				type devView struct {
					Name       string `json:"name" yaml:"name"`
					Path       string `json:"path" yaml:"path"`
					Size       uint64 `json:"size" yaml:"size"`
					Model      string `json:"model" yaml:"model"`
					Rotational bool   `json:"rotational" yaml:"rotational"`
				}
				views := []devView{}
				for _, d := range resp.GetDevices() {
					views = append(views, devView{d.GetName(), d.GetPath(), d.GetSize(), d.GetModel(), d.GetRotational()})
				}
				return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error {
					t := output.NewTable(w, "NAME", "PATH", "SIZE", "ROTATIONAL", "MODEL")
					for _, d := range views {
						t.Row(d.Name, d.Path, output.Size(d.Size), fmt.Sprint(d.Rotational), d.Model)
					}
					return t.Flush()
				})
			})
		},
	})
	return cmd
}

func (a *app) versionCmd() *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of nexctl and of the engine",
		Long: `Version prints nexctl's module version and the VCS revision it was built
from, then asks the engine for its own. When the engine cannot be reached,
nexctl's part is printed and the command fails; --client skips the engine.`,
		Example: `  nexctl version
  nexctl version --client -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			type ver struct {
				Client         string `json:"client" yaml:"client"`
				ClientRevision string `json:"client_revision,omitempty" yaml:"client_revision,omitempty"`
				ClientModified bool   `json:"client_modified,omitempty" yaml:"client_modified,omitempty"`
				ClientGo       string `json:"client_go" yaml:"client_go"`
				Engine         string `json:"engine,omitempty" yaml:"engine,omitempty"`
				EngineCommit   string `json:"engine_commit,omitempty" yaml:"engine_commit,omitempty"`
				API            string `json:"api,omitempty" yaml:"api,omitempty"`
				Host           string `json:"host,omitempty" yaml:"host,omitempty"`
			}
			bi := version.Get()
			v := ver{Client: bi.Version, ClientRevision: bi.Revision, ClientModified: bi.Modified, ClientGo: bi.Go}
			var err error
			if !clientOnly {
				err = a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
					resp, err := c.GetVersion(ctx, nil)
					if err != nil {
						return err
					}
					v.Engine, v.EngineCommit, v.API, v.Host = resp.GetVersion(), resp.GetCommit(), resp.GetApi(), resp.GetHostname()
					return nil
				})
			}
			perr := output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
				kv := []string{"nexctl", bi.String()}
				if v.Engine != "" {
					e := v.Engine
					if v.EngineCommit != "" {
						e += " (revision " + v.EngineCommit + ")"
					}
					kv = append(kv, "engine", e, "api", v.API, "host", v.Host)
				}
				return output.KeyValues(w, kv...)
			})
			if err != nil {
				return err
			}
			return perr
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print nexctl's version only; do not ask the engine")
	return cmd
}
