package qemuvm

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"strings"
)

// cpioWriter writes a "newc" (SVR4, no CRC) cpio archive, the format the
// kernel unpacks as an initramfs. Directories are created implicitly, parents
// first, because the kernel does not create missing parents.
type cpioWriter struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChr  = 0o020000
)

func newCPIOWriter(w io.Writer) *cpioWriter {
	// Regular files get nlink 1, so the kernel never takes two entries for
	// hard links, even across archives concatenated into one initrd.
	return &cpioWriter{w: w, dirs: map[string]bool{"": true, ".": true, "/": true}}
}

// Dir adds a directory (and its missing parents).
func (c *cpioWriter) Dir(name string, perm uint32) {
	name = clean(name)
	if c.dirs[name] {
		return
	}
	c.Dir(path.Dir(name), 0o755)
	c.dirs[name] = true
	c.entry(name, modeDir|perm, 2, 0, 0, nil)
}

// File adds a regular file.
func (c *cpioWriter) File(name string, perm uint32, data []byte) {
	name = clean(name)
	c.Dir(path.Dir(name), 0o755)
	c.entry(name, modeFile|perm, 1, 0, 0, data)
}

// Symlink adds a symbolic link name -> target.
func (c *cpioWriter) Symlink(name, target string) {
	name = clean(name)
	c.Dir(path.Dir(name), 0o755)
	c.entry(name, modeLink|0o777, 1, 0, 0, []byte(target))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm uint32, major, minor uint32) {
	name = clean(name)
	c.Dir(path.Dir(name), 0o755)
	c.entry(name, modeChr|perm, 1, major, minor, nil)
}

// Close writes the trailer and returns the first error met.
func (c *cpioWriter) Close() error {
	c.entry("TRAILER!!!", 0, 1, 0, 0, nil)
	return c.err
}

func clean(name string) string { return strings.TrimPrefix(path.Clean("/"+name), "/") }

func (c *cpioWriter) entry(name string, mode, nlink, rmajor, rminor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	var b bytes.Buffer
	fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	b.WriteString(name)
	b.WriteByte(0)
	pad4(&b)
	if _, err := c.w.Write(b.Bytes()); err != nil {
		c.err = err
		return
	}
	if len(data) > 0 {
		if _, err := c.w.Write(data); err != nil {
			c.err = err
			return
		}
		if p := (4 - len(data)%4) % 4; p > 0 {
			if _, err := c.w.Write(make([]byte, p)); err != nil {
				c.err = err
			}
		}
	}
}

func pad4(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}
