package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/engine"
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
			return call(a, enginev1.NewHostServiceClient, func(ctx context.Context, c enginev1.HostServiceClient) error {
				resp, err := c.ListBlockDevices(ctx, &enginev1.ListBlockDevicesRequest{})
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
	return &cobra.Command{
		Use:   "version",
		Short: "Print the versions of nexctl and of the engine",
		Example: `  nexctl version
  nexctl version -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			type ver struct {
				Client string `json:"client" yaml:"client"`
				Engine string `json:"engine,omitempty" yaml:"engine,omitempty"`
				API    string `json:"api,omitempty" yaml:"api,omitempty"`
				Host   string `json:"host,omitempty" yaml:"host,omitempty"`
			}
			v := ver{Client: engine.GetVersion().Version}
			return call(a, enginev1.NewHostServiceClient, func(ctx context.Context, c enginev1.HostServiceClient) error {
				resp, err := c.GetVersion(ctx, &enginev1.GetVersionRequest{})
				if err != nil {
					return err
				}
				v.Engine, v.API, v.Host = resp.GetVersion(), resp.GetApi(), resp.GetHostname()
				return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
					return output.KeyValues(w, "nexctl", v.Client, "engine", v.Engine, "api", v.API, "host", v.Host)
				})
			})
		},
	}
}
