package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants of the NBD protocol (fixed newstyle negotiation and the
// transmission phase). All integers on the wire are big-endian.
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic = 0x3e889045565a9

	requestMagic         = 0x25609513
	simpleReplyMagic     = 0x67446698
	structuredReplyMagic = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1

	// Transmission flags.
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagCanMultiConn    = 1 << 8

	// Options.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
	optExtendedHeaders = 11

	// Option replies.
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrUnknown  = 1<<31 + 6
	repErrShutdown = 1<<31 + 7
	repErrTooBig   = 1<<31 + 9

	// Information types of NBD_REP_INFO.
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6

	// Command flags.
	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
	cmdFlagDF     = 1 << 2

	// Structured reply flags and types.
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeError       = 1<<15 + 1
	replyTypeErrorOffset = 1<<15 + 2

	// Errors carried in replies (the protocol's own numbering, which
	// happens to match Linux errno values).
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// Sizes of fixed-length wire structures, in bytes.
const (
	requestSize         = 28
	simpleReplySize     = 16
	structuredReplySize = 20
	optionHeaderSize    = 16
	optionReplySize     = 20
)

// Limits the server enforces.
const (
	// MaxPayload is the largest READ or WRITE the server accepts, in bytes,
	// advertised as the maximum block size. Larger requests get EINVAL (a
	// write's payload is read and discarded first, so the connection stays
	// usable). TRIM and WRITE_ZEROES carry no payload and are not limited.
	MaxPayload = 32 << 20
	// maxOptionLen bounds the data of one negotiation option; a longer option
	// closes the connection (no legitimate option comes close).
	maxOptionLen = 64 << 10
	// maxNameLen is the protocol's limit on strings (export names).
	maxNameLen = 4096
	// maxInfoRequests bounds the information types one NBD_OPT_GO may list.
	maxInfoRequests = 64
)

// request is one decoded transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// errBadMagic reports a request or option that does not start with the
// protocol's magic number: the stream is out of sync and the connection must
// be closed.
var errBadMagic = errors.New("nbd: bad magic number")

// parseRequest decodes a request header. Only the magic is checked here; the
// semantic checks (command, flags, range) are in checkRequest so that a bad
// request gets an error reply instead of a disconnect.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestSize {
		return request{}, fmt.Errorf("nbd: request header is %d bytes, want %d", len(b), requestSize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != requestMagic {
		return request{}, fmt.Errorf("%w: request magic %#08x, want %#08x", errBadMagic, m, requestMagic)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// appendRequest encodes a request header (used by tests and fuzz seeds).
func appendRequest(b []byte, r request) []byte {
	b = binary.BigEndian.AppendUint32(b, requestMagic)
	b = binary.BigEndian.AppendUint16(b, r.flags)
	b = binary.BigEndian.AppendUint16(b, r.typ)
	b = binary.BigEndian.AppendUint64(b, r.handle)
	b = binary.BigEndian.AppendUint64(b, r.offset)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// geometry is what checkRequest needs to know about an export.
type geometry struct {
	size       uint64
	blockSize  uint32
	readOnly   bool
	maxPayload uint32 // largest READ or WRITE accepted
}

// verdict is the outcome of checkRequest.
type verdict struct {
	// errno is 0 when the request may be executed, else the error to reply.
	errno uint32
	// payload is the number of bytes that follow the header on the wire
	// and must be consumed whatever errno is: the length of a WRITE.
	payload uint32
	// disconnect is set for NBD_CMD_DISC.
	disconnect bool
	// msg explains a non-zero errno to a human (sent in structured errors).
	msg string
}

// checkRequest validates a request against an export. It is pure so that it
// can be fuzzed: every request header maps to a verdict, and no input panics.
func checkRequest(r request, g geometry) verdict {
	v := verdict{}
	if r.typ == cmdWrite {
		v.payload = r.length
	}
	fail := func(errno uint32, format string, args ...any) verdict {
		v.errno = errno
		v.msg = fmt.Sprintf(format, args...)
		return v
	}
	var allowed uint16
	switch r.typ {
	case cmdRead:
		allowed = cmdFlagFUA | cmdFlagDF
	case cmdWrite, cmdTrim:
		allowed = cmdFlagFUA
	case cmdWriteZeroes:
		allowed = cmdFlagFUA | cmdFlagNoHole
	case cmdFlush:
		allowed = cmdFlagFUA
	case cmdDisc:
		v.disconnect = true
		return v
	default:
		return fail(errInval, "unsupported command %d", r.typ)
	}
	if r.flags&^allowed != 0 {
		return fail(errInval, "unsupported flags %#x for command %d", r.flags&^allowed, r.typ)
	}
	if r.typ == cmdFlush {
		// Offset and length are reserved for flush; like other servers we
		// ignore them rather than fail a client that sets them.
		return v
	}
	write := r.typ != cmdRead
	if write && g.readOnly {
		return fail(errPerm, "export is read-only")
	}
	if r.length == 0 {
		return fail(errInval, "zero-length request at offset %d", r.offset)
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > g.maxPayload {
		return fail(errInval, "request length %d exceeds the %d-byte maximum block size", r.length, g.maxPayload)
	}
	bs := uint64(g.blockSize)
	if bs > 1 && (r.offset%bs != 0 || uint64(r.length)%bs != 0) {
		return fail(errInval, "offset %d length %d not aligned to the %d-byte block size", r.offset, r.length, bs)
	}
	if r.offset > g.size || uint64(r.length) > g.size-r.offset {
		if write {
			return fail(errNoSpc, "offset %d length %d beyond the end of the %d-byte export", r.offset, r.length, g.size)
		}
		return fail(errInval, "offset %d length %d beyond the end of the %d-byte export", r.offset, r.length, g.size)
	}
	return v
}

// putSimpleReply encodes a simple reply header into b[:simpleReplySize].
func putSimpleReply(b []byte, errno uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], simpleReplyMagic)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// putChunkHeader encodes a structured reply chunk header into
// b[:structuredReplySize].
func putChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:4], structuredReplyMagic)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], handle)
	binary.BigEndian.PutUint32(b[16:20], length)
}
