package fault

import (
	"errors"
	"fmt"
	"testing"
)

// TestMessage checks that Message says every part of a chain once, without
// the resolutions that Error keeps for logs.
func TestMessage(t *testing.T) {
	tooSmall := New(InvalidArgument, "pool.too_small", "device too small", "")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{New(NotFound, "pool.not_found", `pool "p0" not found`, "list the pools"), `pool "p0" not found`},
		// The pool layer names the pool; the engine's context names it again.
		{Wrap(fmt.Errorf(`pool "p2": device of 1MiB cannot hold one 4MiB cluster: %w`, tooSmall), InvalidArgument,
			"pool.disk_too_small", `pool "p2"`, "use a larger disk"),
			`pool "p2": device of 1MiB cannot hold one 4MiB cluster: device too small`},
		{Wrap(errors.New("nexus n0: nexus: no healthy child left: no child could be opened"), Unavailable,
			"nexus.no_healthy_child", `nexus "n0"`, "check the children"),
			`nexus "n0": no healthy child left: no child could be opened`},
		// A resolution inside the chain is left out of the message.
		{fmt.Errorf("import: %w", Wrap(New(FailedPrecondition, "pool.corrupt", "metadata corrupt", "restore it"),
			FailedPrecondition, "pool.corrupt", `pool "p0"`, "reformat")),
			`import: pool "p0": metadata corrupt`},
		{errors.Join(errors.New("a: x"), New(NotFound, "pool.not_found", "b", "r")), "a: x\nb"},
		{errors.New("open /x: no such file or directory"), "open /x: no such file or directory"},
		{Wrap(errors.New("disk gone"), NotFound, "pool.not_found", "", "r"), "disk gone"},
		{nil, ""},
	} {
		if got := Message(tc.err); got != tc.want {
			t.Errorf("Message(%v)\n = %q\nwant %q", tc.err, got, tc.want)
		}
	}
}

func TestDedupe(t *testing.T) {
	for in, want := range map[string]string{
		`replica "r0": replica "r0": no space`:              `replica "r0": no space`,
		`open: open /x: denied`:                             `open /x: denied`,
		`pool: pools: p0`:                                   `pool: pools: p0`,
		`a: b: a`:                                           `a: b: a`,
		`replica r0: replica r0 is shared`:                  `replica r0 is shared`,
		`dial tcp 127.0.0.1:1: connect: connection refused`: `dial tcp 127.0.0.1:1: connect: connection refused`,
	} {
		if got := dedupe(in); got != want {
			t.Errorf("dedupe(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestResolutionOf(t *testing.T) {
	// The first resolution given in the chain.
	inner := New(NotFound, "pool.not_found", "x", "inner fix")
	if got := ResolutionOf(Wrap(inner, NotFound, "replica.not_found", "y", "")); got != "inner fix" {
		t.Errorf("ResolutionOf = %q, want the inner one", got)
	}
	// None given: the registered default of the first code.
	if got, want := ResolutionOf(fmt.Errorf("ctx: %w", New(NotFound, "pool.not_found", "x", ""))), byCode["pool.not_found"].Resolution; got != want {
		t.Errorf("ResolutionOf = %q, want the default %q", got, want)
	}
	if ResolutionOf(errors.New("plain")) != "" || CodeOf(errors.New("plain")) != "" {
		t.Error("a plain error has a resolution or a code")
	}
}

func TestErrorText(t *testing.T) {
	f := Wrap(errors.New("cause"), NotFound, "pool.not_found", "desc", "fix")
	if f.Error() != "desc: cause (fix)" {
		t.Errorf("Error() = %q", f.Error())
	}
	if g := Wrap(emptyErr{}, NotFound, "pool.not_found", "desc", ""); g.Error() != "desc" {
		t.Errorf("an empty cause adds %q", g.Error())
	}
	if !errors.Is(fmt.Errorf("x: %w", f), New(NotFound, "pool.not_found", "", "")) {
		t.Error("errors.Is by code failed")
	}
	if KindOf(fmt.Errorf("x: %w", f)) != NotFound || KindOf(errors.New("x")) != Internal {
		t.Error("KindOf")
	}
	for k := Internal; k <= LastKind; k++ {
		if k.String() == "" || k.String()[0] == 'K' {
			t.Errorf("kind %d has no name", k)
		}
	}
}

type emptyErr struct{}

func (emptyErr) Error() string { return "" }
