package kernel

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
)

// NVMe/TCP PDU types and flags this file looks at (NVMe/TCP 1.0, 3.6.1).
const (
	pduICReq  = 0x00
	pduICResp = 0x01
	flagHDGST = 0x01
	flagDDGST = 0x02
	dgstBoth  = 0x03
)

// pduProxy forwards NVMe/TCP connections to a target PDU by PDU and records,
// per connection, the digests negotiated in ICReq/ICResp and how many of the
// later PDUs carry them: proof that digests are in use, not just requested.
type pduProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*pduStats
	wg     sync.WaitGroup
}

// pduStats counts one connection; index 0 is host to target, 1 the reverse.
type pduStats struct {
	icDgst    [2]byte // DGST of ICReq and of ICResp
	pdus      [2]int  // PDUs after initialization
	withHDGST [2]int
	withDDGST [2]int
}

func newPDUProxy(t *testing.T, target string) *pduProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pduProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *pduProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *pduProxy) accept() {
	defer p.wg.Done()
	for {
		host, err := p.ln.Accept()
		if err != nil {
			return
		}
		tgt, err := net.Dial("tcp", p.target)
		if err != nil {
			host.Close()
			continue
		}
		st := &pduStats{}
		p.mu.Lock()
		p.conns = append(p.conns, st)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(host, tgt, st, 0)
		go p.pipe(tgt, host, st, 1)
	}
}

// pipe copies whole PDUs from src to dst until either side closes, then
// closes both so that the other direction ends too.
func (p *pduProxy) pipe(src, dst net.Conn, st *pduStats, dir int) {
	defer p.wg.Done()
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 0, 64<<10)
	for {
		var ch [8]byte
		if _, err := io.ReadFull(src, ch[:]); err != nil {
			return
		}
		plen := binary.LittleEndian.Uint32(ch[4:])
		if plen < 8 || plen > 16<<20 {
			return
		}
		buf = append(buf[:0], ch[:]...)
		buf = append(buf, make([]byte, plen-8)...)
		if _, err := io.ReadFull(src, buf[8:]); err != nil {
			return
		}
		p.mu.Lock()
		switch typ, flags := ch[0], ch[1]; typ {
		case pduICReq, pduICResp:
			if len(buf) > 11 {
				st.icDgst[dir] = buf[11]
			}
		default:
			st.pdus[dir]++
			if flags&flagHDGST != 0 {
				st.withHDGST[dir]++
			}
			if flags&flagDDGST != 0 {
				st.withDDGST[dir]++
			}
		}
		p.mu.Unlock()
		if _, err := dst.Write(buf); err != nil {
			return
		}
	}
}

// stats returns a copy of the counts of every connection so far.
func (p *pduProxy) stats() []pduStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]pduStats, len(p.conns))
	for i, c := range p.conns {
		out[i] = *c
	}
	return out
}
