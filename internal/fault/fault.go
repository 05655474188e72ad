// Package fault gives errors a stable code, a kind that maps to an exact gRPC
// status, and a resolution: what the operator should do next. The CLI prints
// the message, the code and the resolution, each once.
//
// Every code is registered, with its kind and a default resolution, in
// codes.go; a test walks the repository's source and fails on a code that
// is used but not registered, or used with another kind.
package fault

import (
	"errors"
	"fmt"
	"strings"
)

// Kind classifies a fault the way callers branch on it; each kind maps to
// exactly one gRPC status code (package faultgrpc), and every gRPC code but
// OK has a kind, so that a status converted to a fault keeps its exact code.
type Kind int

// Kinds, named after the gRPC codes they map to. The values are stable: new
// kinds are added at the end.
const (
	Internal Kind = iota
	InvalidArgument
	NotFound
	AlreadyExists
	FailedPrecondition
	ResourceExhausted
	Unavailable
	PermissionDenied
	Unauthenticated
	DeadlineExceeded
	Canceled
	Unimplemented
	Aborted
	OutOfRange
	DataLoss
	Unknown
)

// LastKind is the highest Kind, for loops over every kind.
const LastKind = Unknown

var kindNames = [...]string{"Internal", "InvalidArgument", "NotFound", "AlreadyExists",
	"FailedPrecondition", "ResourceExhausted", "Unavailable", "PermissionDenied", "Unauthenticated",
	"DeadlineExceeded", "Canceled", "Unimplemented", "Aborted", "OutOfRange", "DataLoss", "Unknown"}

func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Fault is an error with a code (dotted, stable, registered in codes.go,
// e.g. "pool.exists"), a kind, a human description and a resolution. It may
// wrap a cause. An empty Resolution means the code's default one (see
// ResolutionOf).
type Fault struct {
	Kind        Kind
	Code        string
	Description string
	Resolution  string
	Err         error
}

// New returns a Fault. code must be registered (codes.go).
func New(kind Kind, code, description, resolution string) *Fault {
	return &Fault{Kind: kind, Code: code, Description: description, Resolution: resolution}
}

// Wrap returns a Fault that wraps err. code must be registered (codes.go).
func Wrap(err error, kind Kind, code, description, resolution string) *Fault {
	return &Fault{Kind: kind, Code: code, Description: description, Resolution: resolution, Err: err}
}

// Error returns the description, the cause and the resolution in
// parentheses: the whole story, for logs. A cause whose text is empty adds
// nothing. Message returns the text without resolutions, for people who are
// shown the resolution apart.
func (f *Fault) Error() string {
	msg := f.Description
	if f.Err != nil {
		msg = joinContext(msg, f.Err.Error())
	}
	if f.Resolution != "" {
		msg += " (" + f.Resolution + ")"
	}
	return msg
}

// Unwrap returns the cause.
func (f *Fault) Unwrap() error { return f.Err }

// Is matches another Fault with the same code, so sentinel Faults work with
// errors.Is.
func (f *Fault) Is(target error) bool {
	t, ok := target.(*Fault)
	return ok && t.Code != "" && t.Code == f.Code
}

// KindOf returns the kind of the first Fault in err's chain, or Internal.
func KindOf(err error) Kind {
	var f *Fault
	if errors.As(err, &f) {
		return f.Kind
	}
	return Internal
}

// CodeOf returns the code of the first Fault in err's chain that has one,
// or "".
func CodeOf(err error) string {
	for f := range faults(err) {
		if f.Code != "" {
			return f.Code
		}
	}
	return ""
}

// ResolutionOf returns what to do about err: the first resolution given by
// a Fault in its chain, else the registered default of the first code in
// it, else "".
func ResolutionOf(err error) string {
	for f := range faults(err) {
		if f.Resolution != "" {
			return f.Resolution
		}
	}
	if s, ok := Lookup(CodeOf(err)); ok {
		return s.Resolution
	}
	return ""
}

// faults yields the Faults of err's chain in the order errors.As visits
// them (depth first).
func faults(err error) func(yield func(*Fault) bool) {
	return func(yield func(*Fault) bool) {
		var walk func(error) bool
		walk = func(e error) bool {
			for e != nil {
				if f, ok := e.(*Fault); ok && !yield(f) {
					return false
				}
				switch u := e.(type) {
				case interface{ Unwrap() error }:
					e = u.Unwrap()
				case interface{ Unwrap() []error }:
					for _, in := range u.Unwrap() {
						if !walk(in) {
							return false
						}
					}
					return true
				default:
					return true
				}
			}
			return true
		}
		walk(err)
	}
}

// Message returns err's text for a person who is shown the resolution
// apart: the text of every error in the chain, with the resolutions of the
// Faults in it left out and a context that only repeats the one after it
// (`pool "p0": pool p0: ...`) said once. Errors that wrap another without
// embedding its text keep their own text.
func Message(err error) string {
	if err == nil {
		return ""
	}
	return dedupe(message(err))
}

func message(err error) string {
	switch e := err.(type) {
	case *Fault:
		if e.Err == nil {
			return e.Description
		}
		return joinContext(e.Description, message(e.Err))
	case interface{ Unwrap() error }:
		text := err.Error()
		if in := e.Unwrap(); in != nil {
			return substitute(text, in)
		}
		return text
	case interface{ Unwrap() []error }:
		text := err.Error()
		for _, in := range e.Unwrap() {
			if in != nil {
				text = substitute(text, in)
			}
		}
		return text
	}
	return err.Error()
}

// substitute replaces, in text, the text of the wrapped error in with its
// Message: fmt.Errorf("ctx: %w", in) embeds in.Error() verbatim.
func substitute(text string, in error) string {
	inText := in.Error()
	if inText == "" {
		return text
	}
	i := strings.LastIndex(text, inText)
	if i < 0 {
		return text
	}
	return text[:i] + message(in) + text[i+len(inText):]
}

// joinContext joins a context and the message of its cause with ": ",
// either of them possibly empty.
func joinContext(ctx, cause string) string {
	switch {
	case cause == "":
		return ctx
	case ctx == "":
		return cause
	}
	return ctx + ": " + cause
}

// dedupe drops the ": "-separated parts of msg that only repeat the part
// before them: the same words (quotes aside), or their first words
// (`nexus "n0": nexus n0: nexus: no healthy child` says `nexus "n0": no
// healthy child`). When a part is the start of the one after it, the more
// specific one is kept in its place.
func dedupe(msg string) string {
	parts := strings.Split(msg, ": ")
	if len(parts) < 2 {
		return msg
	}
	kept := parts[:1]
	for _, p := range parts[1:] {
		last := norm(kept[len(kept)-1])
		cur := norm(p)
		switch {
		case cur == "":
			kept = append(kept, p)
		case wordPrefix(cur, last):
			// p says again what the part before said: drop it.
		case wordPrefix(last, cur) && last != "":
			kept[len(kept)-1] = p
		default:
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ": ")
}

// norm is a part of a message as compared by dedupe: without quotes and
// surrounding space.
func norm(s string) string {
	return strings.TrimSpace(strings.NewReplacer(`"`, "", "'", "", "`", "").Replace(s))
}

// wordPrefix reports whether p is s or its first words.
func wordPrefix(p, s string) bool {
	return p == s || strings.HasPrefix(s, p+" ")
}
