package testutil

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// This file drives real NBD clients (libnbd's nbdinfo and nbdcopy, fio's nbd
// engine, qemu-img) against an export given by its NBD URI, such as
// nbd://127.0.0.1:10809/name or nbd+unix:///name?socket=/path/to.sock. The
// server under test may run in-process or as a separate program.

// NBDInfoSize returns the size in bytes that `nbdinfo --json` reports for the
// export at uri. It fails the test when nbdinfo fails.
func NBDInfoSize(t testing.TB, uri string) int64 {
	t.Helper()
	nbdinfo := RequireTool(t, "nbdinfo")
	out, err := exec.Command(nbdinfo, "--json", uri).Output()
	if err != nil {
		t.Fatalf("nbdinfo --json %s: %v\n%s", uri, err, stderrOf(err))
	}
	var info struct {
		Exports []struct {
			Name string `json:"export-name"`
			Size int64  `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo --json %s: decode: %v\n%s", uri, err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json %s: %d exports in the output, want 1\n%s", uri, len(info.Exports), out)
	}
	return info.Exports[0].Size
}

// NBDCopyRoundTrip writes size bytes of random data to the export at uri
// with nbdcopy, copies the export back into a new file with nbdcopy, and
// fails the test unless both are bit-identical. size must not exceed the
// export's size. It returns the path of the random source file (in a
// temporary directory of the test).
func NBDCopyRoundTrip(t testing.TB, uri string, size int64) string {
	t.Helper()
	nbdcopy := RequireTool(t, "nbdcopy")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	dst := filepath.Join(dir, "dst.img")
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nbdcopy, "--flush", src, uri)
	// The export may be larger than the file: download all of it and compare
	// the first size bytes.
	run(t, nbdcopy, uri, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) < size {
		t.Fatalf("nbdcopy %s -> %s: got %d bytes, want at least %d", uri, dst, len(got), size)
	}
	got = got[:size]
	if !bytes.Equal(got, data) {
		i := 0
		for i < len(got) && got[i] == data[i] {
			i++
		}
		t.Fatalf("nbdcopy round trip through %s: data differs first at byte %d", uri, i)
	}
	return src
}

// FioVerify runs fio's nbd engine against uri: random 4 KiB reads and writes
// at queue depth 16 over the first size bytes, then reads back everything it
// wrote and checks crc32c checksums. It fails the test if fio reports an
// error or a verification failure. Keep size small (a few MiB): the run is
// bounded by size, not by time.
func FioVerify(t testing.TB, uri string, size int64) {
	t.Helper()
	fio := RequireTool(t, "fio")
	// fio writes its verification state into the working directory.
	out := runIn(t, t.TempDir(), fio,
		"--name=nbd-verify", "--ioengine=nbd", "--uri="+uri,
		"--rw=randrw", "--bs=4k", "--iodepth=16", "--size="+strconv.FormatInt(size, 10),
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
		"--randrepeat=0", "--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:] // fio may print notes before the JSON
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("fio: decode JSON output: %v\n%s", err, out)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
		t.Fatalf("fio reported an error:\n%s", out)
	}
	if res.Jobs[0].Write.IOBytes == 0 || res.Jobs[0].Read.IOBytes == 0 {
		t.Fatalf("fio moved no data (read %d, written %d bytes)", res.Jobs[0].Read.IOBytes, res.Jobs[0].Write.IOBytes)
	}
}

// ErrImagesDiffer is returned by QemuImgCompare when both images can be read
// and their contents differ.
var ErrImagesDiffer = errors.New("images differ")

// QemuImgCompare compares the export at uri with a raw file using
// `qemu-img compare` (qemu's own NBD client). It returns nil when the
// contents are identical, an error wrapping ErrImagesDiffer (with qemu-img's
// report of the first difference) when they are not, and fails the test when
// qemu-img cannot compare at all.
func QemuImgCompare(t testing.TB, uri, file string) error {
	t.Helper()
	qemuImg := RequireTool(t, "qemu-img")
	cmd := exec.Command(qemuImg, "compare", "-f", "raw", "-F", "raw", file, uri)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return fmt.Errorf("qemu-img compare %s %s: %w: %s", file, uri, ErrImagesDiffer, bytes.TrimSpace(out))
	}
	t.Fatalf("qemu-img compare %s %s: %v\n%s", file, uri, err, out)
	return nil
}

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	return runIn(t, "", name, args...)
}

// runIn runs a program in dir (the current directory when empty) and returns
// its standard output; it fails the test when the program fails.
func runIn(t testing.TB, dir, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), args, err, out, stderr.Bytes())
	}
	return out
}

func stderrOf(err error) []byte {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Stderr
	}
	return nil
}
