package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRunStopsAtFirstUntoleratedFailure(t *testing.T) {
	var res bytes.Buffer
	a := &agent{res: &res, echo: &res, vars: map[string]string{"DEV": "/dev/nvme3n1"}}
	ok, failed := a.run([]string{
		"# a comment",
		"sleep 1ms",
		"",
		"-sleep forever",
		"sleep 1ms",
		"nosuchstep $DEV",
		"sleep 1ms",
	})
	if ok != 2 || failed != 2 {
		t.Fatalf("run = %d ok, %d failed; want 2, 2\n%s", ok, failed, res.String())
	}
	out := res.String()
	for _, want := range []string{
		"@@nexstor STEP 1 sleep 1ms\n",
		"@@nexstor OK 1\n",
		"@@nexstor STEP 2 -sleep forever\n",
		"@@nexstor FAIL 2 sleep \"forever\"",
		"@@nexstor OK 3\n",
		"@@nexstor FAIL 4 unknown step \"nosuchstep\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "STEP 5") {
		t.Errorf("a step ran after an untolerated failure:\n%s", out)
	}
}

func TestExpandKeepsUnknownVariables(t *testing.T) {
	a := &agent{vars: map[string]string{"DEV": "/dev/nvme0n1", "CTRL": "nvme0"}}
	if got := a.expand("mount $DEV /mnt/$X ${CTRL}"); got != "mount /dev/nvme0n1 /mnt/$X nvme0" {
		t.Fatalf("expand = %q", got)
	}
}

func TestParseDiscEntry(t *testing.T) {
	b := make([]byte, discEntrySize)
	b[0], b[1], b[2], b[3] = 3, 1, 2, 4
	binary.LittleEndian.PutUint16(b[4:], 7)
	binary.LittleEndian.PutUint16(b[6:], 0xffff)
	binary.LittleEndian.PutUint16(b[8:], 32)
	copy(b[32:], "4420")
	copy(b[256:], "nqn.2024-11.io.nexstor:replica:x")
	copy(b[512:], "10.0.2.2")
	e := parseDiscEntry(b)
	if e.trtype != 3 || e.adrfam != 1 || e.subtype != 2 || e.treq != 4 || e.portID != 7 || e.cntlID != 0xffff || e.asqsz != 32 ||
		e.trsvcid != "4420" || e.subnqn != "nqn.2024-11.io.nexstor:replica:x" || e.traddr != "10.0.2.2" {
		t.Fatalf("parsed %+v", e)
	}
}

func TestFabricsOptions(t *testing.T) {
	got := fabricsOptions("10.0.2.2", "4420", "nqn.a", "nqn.h", []string{"hdr_digest", "nr_io_queues=2"})
	want := "transport=tcp,traddr=10.0.2.2,trsvcid=4420,nqn=nqn.a,hostnqn=nqn.h,hdr_digest,nr_io_queues=2"
	if got != want {
		t.Fatalf("options = %q, want %q", got, want)
	}
}

func TestBackgroundProgram(t *testing.T) {
	script := filepath.Join(t.TempDir(), "prog")
	prog := "#!/bin/sh\ntrap 'echo got-int; exit 3' INT\necho \"$1\"\nwhile :; do sleep 0.01; done\n"
	if err := os.WriteFile(script, []byte(prog), 0o755); err != nil {
		t.Fatal(err)
	}
	var res bytes.Buffer
	a := &agent{res: &res, echo: &res, vars: map[string]string{}, bg: map[string]*bgProc{}}
	ok, failed := a.run([]string{
		"set GREETING hello",
		"start s " + script + " $GREETING",
		"-start s /bin/true",
		"running s",
		"-running nosuch",
	})
	// The trap is set before the greeting: wait for it (bounded).
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(a.bg["s"].out.String(), "hello"); {
		if time.Now().After(deadline) {
			t.Fatalf("the program did not start:\n%s", res.String())
		}
		time.Sleep(time.Millisecond)
	}
	ok2, failed2 := a.run([]string{"stop s"})
	ok, failed = ok+ok2, failed+failed2
	out := res.String()
	if ok != 4 || failed != 2 {
		t.Fatalf("run = %d ok, %d failed; want 4, 2\n%s", ok, failed, out)
	}
	for _, want := range []string{"GREETING=hello", "FAIL 3 start s: already started", "FAIL 5 no program was started",
		"OUT 6 hello", "OUT 6 got-int", "exit status 3", "early=false"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestBarrierVarsWaitWriteFile: a barrier's reply sets variables for later
// steps; "wait" reports a program that exits by itself and fails on a bad
// exit; "write-file" makes its directory.
func TestBarrierVarsWaitWriteFile(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := readLine(c)
			if line == "barrier moved" {
				fmt.Fprintf(c, "ok NEW=4421 OLD=4420\n")
			} else {
				fmt.Fprintf(c, "error: unknown\n")
			}
			c.Close()
		}
	}()
	dir := t.TempDir()
	var res bytes.Buffer
	a := &agent{res: &res, echo: &res, vars: map[string]string{}, bg: map[string]*bgProc{}, ctl: ln.Addr().String()}
	ok, failed := a.run([]string{
		"barrier moved",
		"write-file " + dir + "/etc/nvme/hostnqn port $NEW from $OLD",
		"start t /bin/sh -c true",
		"wait t",
		"start f /bin/sh -c false",
		"-wait f",
		"-barrier other",
	})
	out := res.String()
	if ok != 5 || failed != 2 {
		t.Fatalf("run = %d ok, %d failed; want 5, 2\n%s", ok, failed, out)
	}
	b, err := os.ReadFile(dir + "/etc/nvme/hostnqn")
	if err != nil || string(b) != "port 4421 from 4420\n" {
		t.Fatalf("written: %q %v", b, err)
	}
	for _, want := range []string{"OUT 1 NEW=4421", "OUT 4 exit=\"status 0\"", "FAIL 6 f: exit status 1", "FAIL 7 barrier other: host: error: unknown"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestTimedReportsElapsedAndTheStepsError(t *testing.T) {
	var res bytes.Buffer
	a := &agent{res: &res, echo: &res, vars: map[string]string{}}
	ok, failed := a.run([]string{"timed sleep 30ms", "-timed sleep forever", "-timed timed sleep 1ms"})
	out := res.String()
	if ok != 1 || failed != 2 {
		t.Fatalf("run = %d ok, %d failed; want 1, 2\n%s", ok, failed, out)
	}
	var ms float64
	if _, err := fmt.Sscanf(out[strings.Index(out, "@@nexstor OUT 1 "):], "@@nexstor OUT 1 elapsed_ms=%f started=", &ms); err != nil || ms < 30 {
		t.Errorf("elapsed of a 30ms sleep: %v (%v)\n%s", ms, err, out)
	}
	for _, want := range []string{"@@nexstor FAIL 2 sleep \"forever\"", "@@nexstor FAIL 3 timed: nothing to time"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
