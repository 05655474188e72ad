package pool

import (
	"errors"
	"fmt"
	"log/slog"
)

type commitReq struct {
	rec  *record
	done chan error
}

// commit makes rec durable and applies it to the in-memory state, then
// returns. Concurrent callers share log writes and flushes: whoever finds no
// write in progress becomes the leader and writes everything queued
// (group commit).
func (p *Pool) commit(rec *record) error {
	req := &commitReq{rec: rec, done: make(chan error, 1)}
	p.cmu.Lock()
	p.queue = append(p.queue, req)
	if p.leading {
		p.cmu.Unlock()
		return <-req.done
	}
	p.leading = true
	for len(p.queue) > 0 {
		batch := p.queue
		p.queue = nil
		p.cmu.Unlock()
		p.writeBatch(batch)
		p.cmu.Lock()
	}
	p.leading = false
	p.cmu.Unlock()
	return <-req.done
}

// writeBatch appends the records of batch to the log, starting a new
// checkpoint when the log is full, flushes, applies them and answers every
// request. A failed write or flush is sticky: the records may or may not be
// durable, so no further metadata change is allowed until the pool is
// imported again, which settles the question.
func (p *Pool) writeBatch(batch []*commitReq) {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	fail := func(reqs []*commitReq, err error) {
		for _, r := range reqs {
			r.done <- err
		}
	}
	if p.closed.Load() {
		fail(batch, p.errf("the pool is closed: %w", ErrClosed))
		return
	}
	if err := p.metaFailed(); err != nil {
		fail(batch, p.errf("metadata writes failed earlier (%v); close and import the pool again: %w", err, ErrClosed))
		return
	}
	logSize := p.sb.logSize()
	buf := p.logBuf[:0]
	var group []*commitReq
	for i, req := range batch {
		req.rec.Seq = p.seq + uint64(len(group)) + 1
		req.rec.Idx = uint32(len(group))
		n := len(buf)
		buf = p.padForHeader(buf, p.logPos)
		m := len(buf)
		buf = appendRecord(buf, p.sb.UUID, p.epoch, req.rec)
		size := len(buf) - m
		if size-recHeaderLen > maxRecordPayload || int64(size) > logSize {
			buf = buf[:n]
			req.done <- p.errf("metadata record of %d bytes exceeds the log's limit (the free space is too fragmented for this operation): %w", size, ErrNoSpace)
			continue
		}
		if p.logPos+int64(len(buf)) <= logSize {
			group = append(group, req)
			continue
		}
		// The log is full: make what fits durable, write a checkpoint of the
		// resulting state into the other slot and restart the log.
		buf = buf[:n]
		if err := p.flushGroup(buf, group); err != nil {
			fail(batch[i:], err)
			return
		}
		group, buf = group[:0], buf[:0]
		if err := p.checkpointLocked(); err != nil {
			p.failMeta(err)
			fail(batch[i:], p.errf("writing a checkpoint: %w", err))
			return
		}
		req.rec.Seq, req.rec.Idx = p.seq+1, 0
		buf = appendRecord(p.padForHeader(buf, p.logPos), p.sb.UUID, p.epoch, req.rec)
		group = append(group, req)
	}
	if err := p.flushGroup(buf, group); err != nil {
		return
	}
	p.logBuf = buf[:0]
}

// padForHeader pads buf, which will be written at log offset base, with
// zeroes to the next block boundary when fewer than recHeaderLen bytes are
// left in the current block: a record header never straddles blocks, so
// replay can tell padding from a header by looking at one block.
func (p *Pool) padForHeader(buf []byte, base int64) []byte {
	pos := base + int64(len(buf))
	if rem := p.bs - pos%p.bs; rem < recHeaderLen {
		buf = append(buf, make([]byte, rem)...)
	}
	return buf
}

// flushGroup writes buf (the encoded records of group) at the log position,
// padded with zeroes to the block size, flushes, applies the records and
// answers their requests. Must hold p.logMu.
func (p *Pool) flushGroup(buf []byte, group []*commitReq) error {
	if len(group) == 0 {
		return nil
	}
	for len(buf)%int(p.bs) != 0 {
		buf = append(buf, 0)
	}
	err := func() error {
		if _, err := p.dev.WriteAt(buf, p.sb.logOff()+p.logPos); err != nil {
			return fmt.Errorf("writing %d bytes of metadata log at offset %d: %w", len(buf), p.sb.logOff()+p.logPos, err)
		}
		if err := p.flushDev(); err != nil {
			return fmt.Errorf("flushing the metadata log: %w", err)
		}
		return nil
	}()
	if err != nil {
		p.failMeta(err)
		slog.Error("pool metadata write failed; metadata changes refused until the pool is imported again", "pool", p.sb.Name, "err", err)
		err = p.errf("%w (%w)", err, ErrClosed)
		for _, r := range group {
			r.done <- err
		}
		return err
	}
	p.logPos += int64(len(buf))
	p.seq += uint64(len(group))
	p.mu.Lock()
	errs := make([]error, len(group))
	for i, r := range group {
		errs[i] = p.apply(r.rec, true)
	}
	p.mu.Unlock()
	for i, r := range group {
		if errs[i] != nil {
			// A record that does not apply is a bug; the state in memory no
			// longer matches the disk, so stop changing metadata.
			p.failMeta(errs[i])
			slog.Error("pool metadata record does not apply", "pool", p.sb.Name, "err", errs[i])
			errs[i] = p.errf("internal error applying metadata: %v: %w", errs[i], ErrClosed)
		}
		r.done <- errs[i]
	}
	return nil
}

// checkpointLocked writes a snapshot of the state into the slot of the next
// epoch, flushes, and restarts the log in that epoch. Must hold p.logMu; the
// state holds only durable records because only the log holder applies.
func (p *Pool) checkpointLocked() error {
	cp := checkpoint{Epoch: p.epoch + 1, LastSeq: p.seq}
	p.mu.Lock()
	cp.Replicas = make([]entry, 0, len(p.byName))
	for _, r := range p.byName {
		cp.Replicas = append(cp.Replicas, r.checkpointEntry())
	}
	p.mu.Unlock()
	buf := encodeCheckpoint(p.cpBuf, p.sb.UUID, &cp)
	if uint64(len(buf)) > p.sb.CPSize {
		return fmt.Errorf("checkpoint of %d bytes exceeds the %d-byte slot", len(buf), p.sb.CPSize)
	}
	for len(buf)%int(p.bs) != 0 {
		buf = append(buf, 0)
	}
	p.cpBuf = buf[:0]
	off := int64(p.sb.MDOff) + int64(cp.Epoch%2)*int64(p.sb.CPSize)
	if _, err := p.dev.WriteAt(buf, off); err != nil {
		p.failMeta(err)
		return fmt.Errorf("writing checkpoint %d at offset %d: %w", cp.Epoch, off, err)
	}
	if err := p.flushDev(); err != nil {
		p.failMeta(err)
		return fmt.Errorf("flushing checkpoint %d: %w", cp.Epoch, err)
	}
	p.epoch = cp.Epoch
	p.logPos = 0
	return nil
}

// readCheckpoint reads and decodes the checkpoint slot s.
func (p *Pool) readCheckpoint(s int) (checkpoint, error) {
	off := int64(p.sb.MDOff) + int64(s)*int64(p.sb.CPSize)
	head := make([]byte, p.bs)
	if _, err := p.dev.ReadAt(head, off); err != nil {
		return checkpoint{}, ioErrorf("reading checkpoint slot %d at offset %d: %w", s, off, err)
	}
	n, err := checkpointPayloadLen(head, p.sb.UUID, p.sb.CPSize-cpHeaderLen)
	if err != nil {
		return checkpoint{}, err
	}
	total := int64(roundUp(cpHeaderLen+n, uint64(p.bs)))
	buf := make([]byte, total)
	if _, err := p.dev.ReadAt(buf, off); err != nil {
		return checkpoint{}, ioErrorf("reading checkpoint slot %d at offset %d: %w", s, off, err)
	}
	return decodeCheckpoint(buf[:cpHeaderLen+n], p.sb.UUID, p.sb.MaxReplicas)
}

// load rebuilds the state from the newest valid checkpoint and the log,
// reading only.
func (p *Pool) load() error {
	var cps [2]checkpoint
	var errs [2]error
	best := -1
	for s := range 2 {
		cps[s], errs[s] = p.readCheckpoint(s)
		if errs[s] != nil {
			if isIOErr(errs[s]) {
				return errs[s] // the device failed; that is not damage
			}
			continue
		}
		if cps[s].Epoch%2 != uint64(s) {
			errs[s] = fmt.Errorf("checkpoint epoch %d in slot %d", cps[s].Epoch, s)
			continue
		}
		if best < 0 || cps[s].Epoch > cps[best].Epoch {
			best = s
		}
	}
	if best < 0 {
		return corruptf("both checkpoint slots are bad (slot 0 at offset %d: %v; slot 1 at offset %d: %v)",
			p.sb.MDOff, errs[0], p.sb.MDOff+p.sb.CPSize, errs[1])
	}
	cp := &cps[best]
	if other := 1 - best; errs[other] != nil || cps[other].Epoch+1 != cp.Epoch {
		// The other slot is where checkpoint cp.Epoch+1 would be. A write
		// torn by a crash leaves it bad with nothing written after it, and
		// then cp and its log hold every acknowledged change. But records of
		// epoch cp.Epoch+1 in the log prove that checkpoint was made durable
		// (records follow their checkpoint's flush) and later damaged:
		// falling back to cp would lose every change since.
		at, later, err := p.findLaterBatch(&logReader{p: p}, 0, cp.Epoch+1, cp.LastSeq)
		if err != nil {
			return err
		}
		if at >= 0 {
			why := errs[other]
			if why == nil {
				why = fmt.Errorf("it holds checkpoint %d", cps[other].Epoch)
			}
			return corruptf("checkpoint %d in slot %d at offset %d is damaged (%v), but the log holds record %d of its epoch at offset %d: "+
				"importing from the older checkpoint %d would lose acknowledged metadata changes",
				cp.Epoch+1, other, p.sb.MDOff+uint64(other)*p.sb.CPSize, why, later.Seq, p.sb.logOff()+at, cp.Epoch)
		}
	}
	for i := range cp.Replicas {
		e := &cp.Replicas[i]
		if err := p.applyCheckpointEntry(e); err != nil {
			return corruptf("checkpoint %d (slot %d): replica %d: %v", cp.Epoch, best, i, err)
		}
	}
	p.epoch, p.seq = cp.Epoch, cp.LastSeq
	n, err := p.replay()
	if err != nil {
		return err
	}
	slog.Info("pool imported", "pool", p.sb.Name, "uuid", p.uuidStr, "checkpoint", cp.Epoch, "replayed", n,
		"replicas", len(p.byName))
	return nil
}

// applyCheckpointEntry adds the replica, clone or snapshot of a checkpoint
// entry: its runs are its whole map, and in a pool with the snapshots
// feature they may name clusters other entries hold too.
func (p *Pool) applyCheckpointEntry(e *entry) error {
	if !p.snapshotsOn() && (e.Snapshot || e.HasOrigin) {
		return fmt.Errorf("snapshot or origin flags in a pool without the snapshots feature")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addObject(e, mapReplay, nil)
}

// isIOErr reports errors from the device rather than from decoding.
func isIOErr(err error) bool {
	var io *ioErr
	return errors.As(err, &io)
}

type ioErr struct{ err error }

func ioErrorf(format string, args ...any) error { return &ioErr{fmt.Errorf(format, args...)} }

func (e *ioErr) Error() string { return e.err.Error() }
func (e *ioErr) Unwrap() error { return e.err }

// logReader reads the log through a window so replay issues few large reads.
type logReader struct {
	p        *Pool
	win      []byte
	winStart int64
}

const logWindow = 1 << 20

// at returns the log bytes [pos, pos+n); n <= maxRecordPayload+recHeaderLen
// and pos+n <= the log size.
func (lr *logReader) at(pos int64, n int) ([]byte, error) {
	if pos >= lr.winStart && pos+int64(n) <= lr.winStart+int64(len(lr.win)) {
		return lr.win[pos-lr.winStart : pos-lr.winStart+int64(n)], nil
	}
	bs := lr.p.bs
	start := pos / bs * bs
	end := min(start+max(logWindow, int64(roundUp(uint64(pos-start)+uint64(n), uint64(bs)))), lr.p.sb.logSize())
	if cap(lr.win) < int(end-start) {
		lr.win = make([]byte, end-start)
	}
	lr.win = lr.win[:end-start]
	if _, err := lr.p.dev.ReadAt(lr.win, lr.p.sb.logOff()+start); err != nil {
		lr.win = lr.win[:0]
		return nil, &ioErr{fmt.Errorf("reading the metadata log at offset %d: %w", lr.p.sb.logOff()+start, err)}
	}
	lr.winStart = start
	return lr.win[pos-start : pos-start+int64(n)], nil
}

// replay applies the log records of the current epoch in sequence and stops
// at the first one that is torn or bad: a wrong checksum (which includes a
// record of another epoch or pool), a wrong sequence number, or a zero
// length at a block start. A zero length inside a block is the padding that
// ends a group commit; replay continues at the next block. It returns the
// number of records applied.
//
// Where replay stops early, only the last batch may legitimately be torn:
// batches are written one after the other, each flushed before the next
// one is written. So when a later batch of this epoch is found intact
// beyond the stop, the damaged record was acknowledged and replay refuses
// with a CorruptError instead of silently dropping it and what follows.
func (p *Pool) replay() (int, error) {
	lr := &logReader{p: p}
	logSize := p.sb.logSize()
	var pos int64
	applied := 0
	var why error // why replay stopped before the end of the log
	for {
		if rem := p.bs - pos%p.bs; rem < recHeaderLen {
			pos += rem
		}
		if pos+recHeaderLen > logSize {
			break
		}
		h, err := lr.at(pos, recHeaderLen)
		if err != nil {
			return applied, err
		}
		plen := int64(le.Uint32(h))
		if plen == 0 {
			if pos%p.bs == 0 {
				why = errors.New("end of log")
				break
			}
			pos += p.bs - pos%p.bs
			continue
		}
		if plen > maxRecordPayload || pos+recHeaderLen+plen > logSize {
			why = fmt.Errorf("record length %d out of bounds", plen)
			break
		}
		b, err := lr.at(pos, int(recHeaderLen+plen))
		if err != nil {
			return applied, err
		}
		rec, err := decodeRecord(b, p.sb.UUID, p.epoch)
		if err != nil || rec.Seq != p.seq+1 {
			if err == nil {
				err = fmt.Errorf("sequence %d, want %d", rec.Seq, p.seq+1)
			}
			why = err
			break
		}
		p.mu.Lock()
		err = p.apply(&rec, false)
		p.mu.Unlock()
		if err != nil {
			return applied, corruptf("log record %d at offset %d: %v", rec.Seq, p.sb.logOff()+pos, err)
		}
		p.seq = rec.Seq
		applied++
		pos += recHeaderLen + plen
	}
	if why == nil {
		return applied, nil
	}
	slog.Debug("pool log replay stops", "pool", p.sb.Name, "offset", p.sb.logOff()+pos, "reason", why)
	at, later, err := p.findLaterBatch(lr, pos/p.bs*p.bs, p.epoch, p.seq+1)
	if err != nil {
		return applied, err
	}
	if at >= 0 {
		return applied, corruptf("log record %d at offset %d is damaged (%v), but a later batch of the log is intact (record %d at offset %d): "+
			"the damaged record was acknowledged, and importing without it would lose metadata changes",
			p.seq+1, p.sb.logOff()+pos, why, later.Seq, p.sb.logOff()+at)
	}
	return applied, nil
}

// findLaterBatch looks at every block boundary of the log from start on for
// a record that validates under epoch and belongs to a batch whose first
// record comes after sequence number after (Seq-Idx > after). It returns
// the record's log offset and the record, or -1 when there is none. Stale
// records of earlier epochs carry smaller sequence numbers and are passed
// over without checksumming, and a sequence number further ahead than the
// log could hold records marks garbage, so the scan costs about one read of
// the log.
func (p *Pool) findLaterBatch(lr *logReader, start int64, epoch, after uint64) (int64, record, error) {
	logSize := p.sb.logSize()
	// Two epochs of records at most (the next epoch's checkpoint sums the
	// current one's), each fewer than the log holds headers.
	horizon := 2*uint64(logSize/recHeaderLen) + 1
	for pos := start; pos+recHeaderLen <= logSize; pos += p.bs {
		h, err := lr.at(pos, recHeaderLen)
		if err != nil {
			return -1, record{}, err
		}
		plen := int64(le.Uint32(h))
		seq, idx := le.Uint64(h[8:]), uint64(le.Uint32(h[20:]))
		if plen == 0 || plen > maxRecordPayload || pos+recHeaderLen+plen > logSize ||
			idx >= seq || seq-idx <= after || seq-after > horizon {
			continue
		}
		b, err := lr.at(pos, int(recHeaderLen+plen))
		if err != nil {
			return -1, record{}, err
		}
		if rec, err := decodeRecord(b, p.sb.UUID, epoch); err == nil {
			return pos, rec, nil
		}
	}
	return -1, record{}, nil
}
