// Package version describes the running binary from what the Go toolchain
// recorded in it (runtime/debug.ReadBuildInfo): the module version (a tag,
// or a pseudo-version made from the commit when built from a checkout) and
// the VCS revision, so that `nexctl version` and `nexstor --version` name
// exactly what runs.
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Info describes a binary. Fields the build did not record are empty.
type Info struct {
	// Module is the main module's path.
	Module string `json:"module" yaml:"module"`
	// Version is the main module's version: a release tag such as v0.3.0,
	// a pseudo-version such as v0.0.0-20260101120000-abcdef123456 (with
	// +dirty when built from a modified checkout), or "(devel)".
	Version string `json:"version" yaml:"version"`
	// Revision is the VCS commit the binary was built from.
	Revision string `json:"revision,omitempty" yaml:"revision,omitempty"`
	// Time is the commit time, RFC 3339.
	Time string `json:"time,omitempty" yaml:"time,omitempty"`
	// Modified says the checkout had uncommitted changes.
	Modified bool `json:"modified,omitempty" yaml:"modified,omitempty"`
	// Go is the toolchain's version.
	Go string `json:"go" yaml:"go"`
}

// Get returns the Info of the running binary.
func Get() Info {
	i := Info{Version: "(devel)", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return i
	}
	i.Module = bi.Main.Path
	if bi.Main.Version != "" {
		i.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// String is the one-line form: "v0.3.0 (revision 1a2b3c..., modified,
// go1.26.8)".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version)
	b.WriteString(" (")
	if i.Revision != "" {
		b.WriteString("revision " + i.Revision + ", ")
		if i.Modified {
			b.WriteString("modified, ")
		}
	}
	b.WriteString(i.Go + ")")
	return b.String()
}
