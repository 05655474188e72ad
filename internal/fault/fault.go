// Package fault gives errors a stable code, a kind that maps to an exact gRPC
// status, and a resolution: what the operator should do next. The CLI prints
// both the description and the resolution.
package fault

import (
	"errors"
	"fmt"
)

// Kind classifies a fault the way callers branch on it; each kind maps to
// exactly one gRPC status code.
type Kind int

// Kinds, named after the gRPC codes they map to.
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
)

var kindNames = [...]string{"Internal", "InvalidArgument", "NotFound", "AlreadyExists",
	"FailedPrecondition", "ResourceExhausted", "Unavailable", "PermissionDenied", "Unauthenticated"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Fault is an error with a code (dotted, stable, e.g. "pool.exists"), a kind,
// a human description and a resolution. It may wrap a cause.
type Fault struct {
	Kind        Kind
	Code        string
	Description string
	Resolution  string
	Err         error
}

// New returns a Fault.
func New(kind Kind, code, description, resolution string) *Fault {
	return &Fault{Kind: kind, Code: code, Description: description, Resolution: resolution}
}

// Wrap returns a Fault that wraps err.
func Wrap(err error, kind Kind, code, description, resolution string) *Fault {
	return &Fault{Kind: kind, Code: code, Description: description, Resolution: resolution, Err: err}
}

func (f *Fault) Error() string {
	msg := f.Description
	if f.Err != nil {
		msg += ": " + f.Err.Error()
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

// ResolutionOf returns the resolution of the first Fault in err's chain.
func ResolutionOf(err error) string {
	var f *Fault
	if errors.As(err, &f) {
		return f.Resolution
	}
	return ""
}
