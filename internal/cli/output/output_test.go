package output

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/fault"
)

type item struct {
	Name string `json:"name" yaml:"name"`
	Size uint64 `json:"size" yaml:"size"`
}

func TestPrintFormats(t *testing.T) {
	v := []item{{"a", 1 << 30}, {"bb", 512}}
	for f, want := range map[Format]string{
		JSON: "[\n  {\n    \"name\": \"a\",\n    \"size\": 1073741824\n  },\n  {\n    \"name\": \"bb\",\n    \"size\": 512\n  }\n]\n",
		YAML: "- name: a\n  size: 1073741824\n- name: bb\n  size: 512\n",
	} {
		var b bytes.Buffer
		if err := Print(&b, f, v, nil); err != nil {
			t.Fatal(err)
		}
		if b.String() != want {
			t.Errorf("%s:\n%s\nwant\n%s", f, b.String(), want)
		}
	}
	var b bytes.Buffer
	tw := NewTable(&b, "NAME", "SIZE", "NOTE")
	for _, it := range v {
		tw.Row(it.Name, Size(it.Size), "")
	}
	tw.Flush()
	want := "NAME  SIZE  NOTE\na     1GiB  -\nbb    512B  -\n"
	if b.String() != want {
		t.Errorf("table:\n%q\nwant\n%q", b.String(), want)
	}
}

func TestParseFormat(t *testing.T) {
	if f, err := ParseFormat("JSON"); err != nil || f != JSON {
		t.Fatal(f, err)
	}
	if _, err := ParseFormat("xml"); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Fatal(err)
	}
}

func TestError(t *testing.T) {
	var b bytes.Buffer
	Error(&b, fault.New(fault.NotFound, "pool.not_found", "pool \"p\" not found", "list pools"))
	if b.String() != "Error: pool \"p\" not found\nCode: pool.not_found\nResolution: list pools\n" {
		t.Fatalf("%q", b.String())
	}
	b.Reset()
	Error(&b, errors.New("plain"))
	if b.String() != "Error: plain\n" {
		t.Fatalf("%q", b.String())
	}
	// Context around a fault is kept once, the resolution printed once,
	// and a fault without one gets its code's default.
	b.Reset()
	inner := fault.Wrap(errors.New(`pool "p0": device too small`), fault.InvalidArgument, "pool.disk_too_small", `pool "p0"`, "use a larger disk")
	Error(&b, fmt.Errorf("create: %w", inner))
	if b.String() != "Error: create: pool \"p0\": device too small\nCode: pool.disk_too_small\nResolution: use a larger disk\n" {
		t.Fatalf("%q", b.String())
	}
	b.Reset()
	Error(&b, fault.New(fault.NotFound, "pool.not_found", "pool \"p\" not found", ""))
	if !strings.Contains(b.String(), "\nResolution: list the pools") {
		t.Fatalf("no default resolution: %q", b.String())
	}
}
