package nexus

import (
	"context"
	"fmt"
	"hash/crc32"
)

// Verify compares the online children segment by segment, each segment
// under its range lock (so in-flight writes do not show up as false
// differences), by CRC32C of its content. It reports the differing ranges
// (adjacent segments merged) and changes nothing: which copy is right is
// for an operator to decide. A child that fails a read is retired as for
// any read, and the comparison goes on without it.
func (n *Nexus) Verify(ctx context.Context) (VerifyReport, error) {
	if err := n.enter(); err != nil {
		return VerifyReport{}, err
	}
	defer n.exit()
	var rep VerifyReport
	var bufs [][]byte
	for s := int64(0); s < n.nseg.Load(); s++ {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("nexus %s: verify: %w", n.name, err)
		}
		if n.ctx.Err() != nil { // closing: Close waits for this call
			return rep, fmt.Errorf("nexus %s: verify: %w", n.name, errClosed)
		}
		off, l := s*n.seg, n.segLen(s)
		mismatch, names, err := n.verifySegment(off, l, &bufs)
		if err != nil {
			return rep, err
		}
		if s == 0 {
			rep.Children = names
		}
		rep.Segments++
		if mismatch {
			if k := len(rep.Mismatches); k > 0 && rep.Mismatches[k-1].Off+rep.Mismatches[k-1].Len == off {
				rep.Mismatches[k-1].Len += l
			} else {
				rep.Mismatches = append(rep.Mismatches, Range{Off: off, Len: l})
			}
		}
	}
	return rep, nil
}

func (n *Nexus) verifySegment(off, l int64, bufs *[][]byte) (bool, []string, error) {
	e := n.locks.lock(off, l)
	defer n.locks.unlock(e)
	for {
		v := n.view.Load()
		if len(v.online) == 0 {
			return false, nil, fmt.Errorf("nexus %s: verify: %w", n.name, ErrNoHealthyChild)
		}
		for len(*bufs) < len(v.online) {
			*bufs = append(*bufs, make([]byte, n.seg))
		}
		var first uint32
		mismatch, retry := false, false
		names := make([]string, 0, len(v.online))
		for i, c := range v.online {
			b := (*bufs)[i][:l]
			if _, err := c.dev.ReadAt(b, off); err != nil {
				if rerr := n.retireForRead(c, err); rerr != nil {
					return false, nil, rerr
				}
				retry = true
				break
			}
			sum := crc32.Checksum(b, castagnoli)
			if i == 0 {
				first = sum
			} else if sum != first {
				mismatch = true
			}
			names = append(names, c.uri)
		}
		if !retry {
			return mismatch, names, nil
		}
	}
}
