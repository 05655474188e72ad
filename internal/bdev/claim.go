package bdev

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/uuid"
)

// Identity, ownership and fencing.
//
// A replica has an identity fixed when it is created, at most one owner (the
// UUID of the nexus that uses it), and the highest fencing epoch it has
// accepted. A nexus claims each child with its own UUID and its epoch and
// does its I/O through the Claimed handle it gets back. A later claim (a
// newer nexus, or the same nexus reopening the child) supersedes every
// earlier handle: from then on their reads, writes, flushes, unmaps and
// write-zeroes fail with ErrFenced, so a replaced or partitioned nexus can
// never land a late write. A claim with a lower epoch than the device has
// accepted is refused with ErrFenced; a claim by another owner is refused
// with an *OwnedError.
//
// Devices that implement Claimer: pool replicas (by call, for bdev:///
// children) and remote namespaces of the NVMe/TCP initiator (in-band, see
// internal/nvmf). The claim state is durable on the replica's pool: it
// survives restarts of the node that holds it.

// Identity names one incarnation of a replica. A replica destroyed and
// created again under the same UUID has another NGUID, so a nexus that
// recorded the first can tell that the second holds none of its data.
type Identity struct {
	// UUID is the replica's UUID, as users and the control plane name it.
	UUID uuid.UUID
	// NGUID is drawn at random when the replica is created and never
	// changes. It is the NVMe namespace NGUID of the replica's shares.
	NGUID [16]byte
}

// IsZero reports whether the identity is unset (a device that has none).
func (id Identity) IsZero() bool { return id == Identity{} }

// String is the canonical text form, "<uuid>/<nguid in hex>", as health
// records store it.
func (id Identity) String() string {
	if id.IsZero() {
		return ""
	}
	return id.UUID.String() + "/" + hex.EncodeToString(id.NGUID[:])
}

// ParseIdentity parses the text form written by Identity.String; "" is the
// zero identity.
func ParseIdentity(s string) (Identity, error) {
	if s == "" {
		return Identity{}, nil
	}
	var id Identity
	if len(s) != 36+1+32 || s[36] != '/' {
		return Identity{}, fmt.Errorf("bdev: identity %q: want <uuid>/<32 hex digits>", s)
	}
	u, err := uuid.Parse(s[:36])
	if err != nil {
		return Identity{}, fmt.Errorf("bdev: identity %q: %w", s, err)
	}
	id.UUID = u
	if _, err := hex.Decode(id.NGUID[:], []byte(s[37:])); err != nil {
		return Identity{}, fmt.Errorf("bdev: identity %q: %w", s, err)
	}
	return id, nil
}

// Claim is a request to own a device at a fencing epoch.
type Claim struct {
	// Owner is the UUID of the claiming nexus; never zero.
	Owner uuid.UUID
	// Epoch is the claimer's fencing epoch. It must not be lower than the
	// highest epoch the device has accepted.
	Epoch uint64
}

// ClaimState is what a claimable device reports about itself.
type ClaimState struct {
	Identity Identity
	// Owner is the UUID of the owning nexus; zero when unowned.
	Owner uuid.UUID
	// Epoch is the highest epoch the device ever accepted. Release keeps
	// it, so epochs never go back.
	Epoch uint64
	// Blank reports that the device holds no data at all: every block
	// reads as zeroes (a thin replica with nothing allocated). Two blank
	// devices are in sync without a copy.
	Blank bool
}

// Claimer is implemented by devices that have an identity and accept claims.
// Methods are safe for concurrent use.
type Claimer interface {
	// ClaimState reports the device's identity and current claim.
	ClaimState(ctx context.Context) (ClaimState, error)
	// Claim makes c the device's claim, durably, and returns the handle to
	// do I/O through under it. It supersedes every earlier Claimed handle
	// of the device (they fail with ErrFenced from then on). It fails with
	// an *OwnedError when another owner holds the device, and with an
	// error matching ErrFenced when c.Epoch is lower than ClaimState's
	// Epoch. Closing the handle keeps the claim; Release gives it up.
	Claim(ctx context.Context, c Claim) (Claimed, error)
}

// Claimed is a device handle bound to a claim.
type Claimed interface {
	Device
	// Raise moves this handle's claim to a higher epoch, durably, without
	// superseding the handle. A lower or equal epoch is a no-op.
	Raise(ctx context.Context, epoch uint64) error
	// Release gives up the ownership, durably; the epoch is kept. The
	// handle is fenced afterwards. Releasing a handle that a later claim
	// superseded fails with ErrFenced and changes nothing.
	Release(ctx context.Context) error
}

// ErrFenced is returned by I/O on a Claimed handle that a later claim
// superseded, and by a claim whose epoch is lower than the device's.
var ErrFenced = errors.New("bdev: fenced: a newer claim holds the device")

// ErrSuperseded is wrapped, besides ErrFenced, by the I/O errors of a
// device that a newer instance of itself replaced elsewhere (a nexus whose
// children a newer nexus of the same volume claimed): the I/O was not done
// here and must be retried where the newer instance serves. A frontend
// answers it as a path that no longer serves (NVMe: ANA inaccessible,
// without DNR), so that a multipath host retries on its other paths,
// never as a reservation conflict, which fails the I/O at the host.
var ErrSuperseded = errors.New("bdev: superseded: a newer instance of this device serves it elsewhere")

// ErrOwned matches every *OwnedError.
var ErrOwned = errors.New("bdev: owned by another nexus")

// OwnedError refuses a claim, or a write through an unclaimed handle, on a
// device that another owner holds.
type OwnedError struct {
	// Owner is the UUID of the nexus that holds the device.
	Owner uuid.UUID
}

func (e *OwnedError) Error() string {
	return fmt.Sprintf("bdev: owned by nexus %s", e.Owner.String())
}

// Is makes errors.Is(err, ErrOwned) true.
func (e *OwnedError) Is(target error) bool { return target == ErrOwned }

// StaleEpochError refuses a claim whose epoch is lower than the device's.
type StaleEpochError struct {
	Epoch, Current uint64
}

func (e *StaleEpochError) Error() string {
	return fmt.Sprintf("bdev: fenced: claim at epoch %d, but the device has accepted epoch %d", e.Epoch, e.Current)
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *StaleEpochError) Is(target error) bool { return target == ErrFenced }

// ErrNoSpace is returned by writes to a thin device whose backing store has
// no free space left (a thin replica whose pool is full). Implementations
// wrap it so that callers can tell a full pool from a failing disk.
var ErrNoSpace = errors.New("bdev: no space left for thin allocation")
