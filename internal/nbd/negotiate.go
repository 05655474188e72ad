package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// errAborted reports a client that ended the negotiation with NBD_OPT_ABORT.
var errAborted = errors.New("nbd: client aborted the negotiation")

// exportInfo is what the negotiation tells a client about an export.
type exportInfo struct {
	name        string
	description string
	size        uint64
	blockSize   uint32
	readOnly    bool
	maxPayload  uint32 // advertised as the maximum block size
	// ref is the server's export (nil in tests that use a fake catalog).
	ref *export
}

// transmissionFlags returns the flags advertised for an export.
func (e exportInfo) transmissionFlags() uint16 {
	f := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagCanMultiConn)
	if e.readOnly {
		f |= flagReadOnly
	}
	return f
}

// preferredBlockSize is the I/O size the server suggests: at least 4 KiB, so
// that clients do not split work into tiny requests.
func (e exportInfo) preferredBlockSize() uint32 {
	return max(e.blockSize, 4096)
}

// catalog is the negotiation's view of the server's exports.
type catalog interface {
	// find returns the export a client asked for by name, or ok=false.
	find(name string) (exportInfo, bool)
	// list returns every export, sorted by name.
	list() []exportInfo
}

// negotiated is the outcome of a successful negotiation.
type negotiated struct {
	export     exportInfo
	structured bool
}

// negotiate runs the server side of the fixed newstyle handshake and option
// haggling on one connection: it sends the greeting, answers options until
// the client picks an export with NBD_OPT_EXPORT_NAME or NBD_OPT_GO, and
// returns that choice. Any error means the connection must be closed: the
// stream is malformed, the client aborted, or it named an unknown export
// with NBD_OPT_EXPORT_NAME (which cannot carry an error reply).
//
// It only reads r and writes w, so it can be fuzzed over a byte slice.
func negotiate(r io.Reader, w *bufio.Writer, cat catalog) (negotiated, error) {
	var hdr [optionHeaderSize]byte
	binary.BigEndian.PutUint64(hdr[0:8], nbdMagic)
	binary.BigEndian.PutUint64(hdr[8:16], optMagic)
	w.Write(hdr[:16])
	w.Write([]byte{0, flagFixedNewstyle | flagNoZeroes})
	if err := w.Flush(); err != nil {
		return negotiated{}, fmt.Errorf("nbd: send greeting: %w", err)
	}
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return negotiated{}, fmt.Errorf("nbd: read client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(hdr[:4])
	if cflags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return negotiated{}, fmt.Errorf("nbd: client flags %#x: unknown bits set", cflags)
	}
	noZeroes := cflags&flagCNoZeroes != 0

	var st negotiated
	data := make([]byte, 0, 256)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return negotiated{}, fmt.Errorf("nbd: read option header: %w", err)
		}
		opt, length, err := parseOptionHeader(hdr[:])
		if err != nil {
			return negotiated{}, err
		}
		if length > maxOptionLen {
			return negotiated{}, fmt.Errorf("nbd: option %d carries %d bytes, more than the %d-byte limit", opt, length, maxOptionLen)
		}
		if cap(data) < int(length) {
			data = make([]byte, length)
		}
		data = data[:length]
		if _, err := io.ReadFull(r, data); err != nil {
			return negotiated{}, fmt.Errorf("nbd: read option %d data: %w", opt, err)
		}

		switch opt {
		case optExportName:
			e, ok := cat.find(string(data))
			if !ok {
				return negotiated{}, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME: no export named %q", data)
			}
			var b [10 + 124]byte
			binary.BigEndian.PutUint64(b[0:8], e.size)
			binary.BigEndian.PutUint16(b[8:10], e.transmissionFlags())
			n := len(b)
			if noZeroes {
				n = 10
			}
			w.Write(b[:n])
			if err := w.Flush(); err != nil {
				return negotiated{}, fmt.Errorf("nbd: send export %q: %w", e.name, err)
			}
			st.export = e
			return st, nil

		case optAbort:
			// The client may already have gone; the reply is best effort.
			writeOptReply(w, opt, repAck, nil)
			w.Flush()
			return negotiated{}, errAborted

		case optList:
			if length != 0 {
				writeOptError(w, opt, repErrInvalid, "NBD_OPT_LIST takes no data")
				break
			}
			for _, e := range cat.list() {
				b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(e.name)), uint32(len(e.name)))
				writeOptReply(w, opt, repServer, append(b, e.name...))
			}
			writeOptReply(w, opt, repAck, nil)

		case optStructuredReply:
			if length != 0 {
				writeOptError(w, opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
				break
			}
			st.structured = true
			writeOptReply(w, opt, repAck, nil)

		case optInfo, optGo:
			name, infos, err := parseInfoRequest(data)
			if err != nil {
				writeOptError(w, opt, repErrInvalid, err.Error())
				break
			}
			e, ok := cat.find(name)
			if !ok {
				writeOptError(w, opt, repErrUnknown, fmt.Sprintf("no export named %q", name))
				break
			}
			writeExportInfo(w, opt, e, infos)
			writeOptReply(w, opt, repAck, nil)
			if opt == optGo {
				if err := w.Flush(); err != nil {
					return negotiated{}, fmt.Errorf("nbd: NBD_OPT_GO %q: %w", name, err)
				}
				st.export = e
				return st, nil
			}

		case optStartTLS:
			writeOptError(w, opt, repErrUnsup, "TLS is not supported by this server")

		default:
			// Includes the metadata-context options and extended headers:
			// clients fall back when these are unsupported.
			writeOptError(w, opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
		}
		if err := w.Flush(); err != nil {
			return negotiated{}, fmt.Errorf("nbd: reply to option %d: %w", opt, err)
		}
	}
}

// parseOptionHeader decodes the 16-byte header of a negotiation option.
func parseOptionHeader(b []byte) (opt, length uint32, err error) {
	if len(b) < optionHeaderSize {
		return 0, 0, fmt.Errorf("nbd: option header is %d bytes, want %d", len(b), optionHeaderSize)
	}
	if m := binary.BigEndian.Uint64(b[0:8]); m != optMagic {
		return 0, 0, fmt.Errorf("%w: option magic %#x, want %#x", errBadMagic, m, uint64(optMagic))
	}
	return binary.BigEndian.Uint32(b[8:12]), binary.BigEndian.Uint32(b[12:16]), nil
}

// parseInfoRequest decodes the data of NBD_OPT_INFO and NBD_OPT_GO: a 32-bit
// name length, the name, a 16-bit count and that many 16-bit information
// types. The data must be exactly that long.
func parseInfoRequest(data []byte) (name string, infos []uint16, err error) {
	if len(data) < 6 {
		return "", nil, fmt.Errorf("info request is %d bytes, need at least 6", len(data))
	}
	n := binary.BigEndian.Uint32(data[0:4])
	if n > maxNameLen {
		return "", nil, fmt.Errorf("export name of %d bytes exceeds the %d-byte limit", n, maxNameLen)
	}
	if uint64(n) > uint64(len(data)-6) {
		return "", nil, fmt.Errorf("export name length %d exceeds the %d-byte option", n, len(data))
	}
	name = string(data[4 : 4+n])
	rest := data[4+n:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, fmt.Errorf("info request lists %d types in %d bytes", count, len(rest))
	}
	if count > maxInfoRequests {
		return "", nil, fmt.Errorf("info request lists %d types, more than %d", count, maxInfoRequests)
	}
	infos = make([]uint16, count)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, infos, nil
}

// writeExportInfo sends the NBD_REP_INFO replies for one export: always
// NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE (the protocol lets a server send
// block sizes unasked, and clients must know the alignment), plus the name
// and description when asked for.
func writeExportInfo(w *bufio.Writer, opt uint32, e exportInfo, infos []uint16) {
	b := make([]byte, 0, 64)
	b = binary.BigEndian.AppendUint16(b, infoExport)
	b = binary.BigEndian.AppendUint64(b, e.size)
	b = binary.BigEndian.AppendUint16(b, e.transmissionFlags())
	writeOptReply(w, opt, repInfo, b)

	b = binary.BigEndian.AppendUint16(b[:0], infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, e.blockSize)
	b = binary.BigEndian.AppendUint32(b, e.preferredBlockSize())
	b = binary.BigEndian.AppendUint32(b, e.maxPayload)
	writeOptReply(w, opt, repInfo, b)

	var sentName, sentDesc bool
	for _, t := range infos {
		switch {
		case t == infoName && !sentName:
			sentName = true
			b = binary.BigEndian.AppendUint16(b[:0], infoName)
			writeOptReply(w, opt, repInfo, append(b, e.name...))
		case t == infoDescription && !sentDesc && e.description != "":
			sentDesc = true
			b = binary.BigEndian.AppendUint16(b[:0], infoDescription)
			writeOptReply(w, opt, repInfo, append(b, e.description...))
		}
	}
}

// writeOptReply buffers one option reply. Errors surface at the next Flush.
func writeOptReply(w *bufio.Writer, opt, typ uint32, data []byte) {
	var h [optionReplySize]byte
	binary.BigEndian.PutUint64(h[0:8], optReplyMagic)
	binary.BigEndian.PutUint32(h[8:12], opt)
	binary.BigEndian.PutUint32(h[12:16], typ)
	binary.BigEndian.PutUint32(h[16:20], uint32(len(data)))
	w.Write(h[:])
	w.Write(data)
}

// writeOptError buffers an error reply with a human-readable message.
func writeOptError(w *bufio.Writer, opt, typ uint32, msg string) {
	if len(msg) > maxNameLen {
		msg = msg[:maxNameLen]
	}
	writeOptReply(w, opt, typ, []byte(msg))
}
