// Package output prints command results the way every nexstor CLI does: as
// an aligned table for people, or as JSON or YAML with stable field names for
// scripts, and errors as what went wrong followed by what to do.
package output

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"gopkg.in/yaml.v3"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/units"
)

// Format is an output format.
type Format string

// Formats.
const (
	Table Format = "table"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// ParseFormat validates a -o value.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case Table, JSON, YAML:
		return f, nil
	}
	return "", fmt.Errorf("output format %q is unknown: use table, json or yaml", s)
}

// Print writes v as JSON or YAML, or calls table for the table format. v
// should be a struct or slice of structs with json and yaml tags, so that
// field names are stable.
func Print(w io.Writer, f Format, v any, table func(w io.Writer) error) error {
	switch f {
	case JSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case YAML:
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return err
		}
		return enc.Close()
	}
	return table(w)
}

// TableWriter writes rows of cells aligned in columns. Call Flush at the end.
type TableWriter struct {
	tw *tabwriter.Writer
}

// NewTable starts a table with the given column headers.
func NewTable(w io.Writer, headers ...string) *TableWriter {
	t := &TableWriter{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(headers) > 0 {
		t.Row(headers...)
	}
	return t
}

// Row adds a row; empty cells print as "-".
func (t *TableWriter) Row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// Flush writes the aligned table.
func (t *TableWriter) Flush() error { return t.tw.Flush() }

// KeyValues writes "key: value" lines aligned on the colon, for one object.
func KeyValues(w io.Writer, kv ...string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", kv[i], v)
	}
	return tw.Flush()
}

// Size formats a byte count for people: 1GiB, 512MiB, 4KiB, 1000B.
func Size(n uint64) string { return units.FormatSize(int64(n)) }

// Percent formats part/whole as a percentage with one decimal.
func Percent(part, whole uint64) string {
	if whole == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(whole))
}

// Error writes err for people, each part once: "Error: " and what went
// wrong (fault.Message: every context of the chain, no resolution),
// "Code: " and the fault code when err has one, "Resolution: " and what to
// do when known (fault.ResolutionOf).
func Error(w io.Writer, err error) {
	fmt.Fprintf(w, "Error: %s\n", fault.Message(err))
	if c := fault.CodeOf(err); c != "" {
		fmt.Fprintf(w, "Code: %s\n", c)
	}
	if r := fault.ResolutionOf(err); r != "" {
		fmt.Fprintf(w, "Resolution: %s\n", r)
	}
}
