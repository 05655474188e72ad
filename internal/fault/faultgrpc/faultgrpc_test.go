package faultgrpc

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
)

func TestCodesRoundTrip(t *testing.T) {
	for k := fault.Internal; k <= fault.Unauthenticated; k++ {
		if got := Kind(Code(k)); got != k {
			t.Errorf("Kind(Code(%v)) = %v", k, got)
		}
	}
	if Code(fault.Kind(99)) != codes.Internal {
		t.Error("unknown kind must map to Internal")
	}
}

func TestStatusRoundTrip(t *testing.T) {
	f := fault.Wrap(errors.New("disk gone"), fault.NotFound, "pool.not_found", `pool "p0" not found`, "list the pools")
	err := ToStatus(fmt.Errorf("import: %w", f))
	st, _ := status.FromError(err)
	if st.Code() != codes.NotFound {
		t.Fatalf("code %v, want NotFound", st.Code())
	}
	if st.Message() != "import: "+f.Error() {
		t.Errorf("message %q lost the wrapped context", st.Message())
	}
	back := FromStatus(err)
	if back.Code != "pool.not_found" || back.Kind != fault.NotFound || back.Resolution != "list the pools" ||
		back.Description != `pool "p0" not found: disk gone` {
		t.Errorf("FromStatus = %+v", back)
	}
	if s, _ := status.FromError(ToStatus(errors.New("boom"))); s.Code() != codes.Internal {
		t.Errorf("plain error: code %v, want Internal", s.Code())
	}
	if ToStatus(nil) != nil {
		t.Error("ToStatus(nil) != nil")
	}
	plain := FromStatus(status.Error(codes.Unavailable, "down"))
	if plain.Kind != fault.Unavailable || plain.Description != "down" || plain.Code != "" {
		t.Errorf("FromStatus(plain) = %+v", plain)
	}
}
