package qemuvm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// moduleIndex knows the modules of one kernel release: where each lives and
// what it depends on, from modules.dep, and which are built in.
type moduleIndex struct {
	dir     string              // lib/modules/<release>
	path    map[string]string   // normalized name -> path relative to dir
	deps    map[string][]string // normalized name -> normalized names
	builtin map[string]bool
}

// modName normalizes a module name or path the way the kernel does: no
// directory, no .ko[.xz|.zst|.gz], and '-' equal to '_'.
func modName(s string) string {
	s = filepath.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

func loadModuleIndex(dir string) (*moduleIndex, error) {
	idx := &moduleIndex{dir: dir, path: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("module index: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := modName(mod)
		idx.path[n] = mod
		for _, d := range strings.Fields(deps) {
			idx.deps[n] = append(idx.deps[n], modName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("module index: %s: %w", f.Name(), err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			idx.builtin[modName(l)] = true
		}
	}
	return idx, nil
}

// order returns the modules to load for names, dependencies first, each once.
// Built-in modules are left out. A name that is neither a module nor built in
// is an error unless it is in optional.
func (idx *moduleIndex) order(names []string, optional map[string]bool) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var visit func(n string, chain []string) error
	visit = func(n string, chain []string) error {
		if seen[n] {
			return nil
		}
		for _, c := range chain {
			if c == n {
				return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), n)
			}
		}
		if _, ok := idx.path[n]; !ok {
			if idx.builtin[n] || optional[n] {
				seen[n] = true
				return nil
			}
			return fmt.Errorf("module %s: not in %s/modules.dep and not built in", n, idx.dir)
		}
		// modules.dep lists the full closure; visiting each dependency
		// recursively still yields a correct order without relying on the
		// order of that list.
		for _, d := range idx.deps[n] {
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		seen[n] = true
		out = append(out, n)
		return nil
	}
	for _, n := range names {
		if err := visit(modName(n), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// read returns the uncompressed object of module n.
func (idx *moduleIndex) read(n string) ([]byte, error) {
	p := filepath.Join(idx.dir, idx.path[n])
	var tool string
	switch {
	case strings.HasSuffix(p, ".ko"):
		return os.ReadFile(p)
	case strings.HasSuffix(p, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(p, ".ko.zst"):
		tool = "zstd"
	case strings.HasSuffix(p, ".ko.gz"):
		tool = "gzip"
	default:
		return nil, fmt.Errorf("module %s: unknown file type %s", n, p)
	}
	// insmod of busybox loads only plain objects, so decompress here.
	var out, stderr bytes.Buffer
	cmd := exec.Command(tool, "-dc", p)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("module %s: %s -dc %s: %v: %s (install %s)", n, tool, p, err, stderr.String(), tool)
	}
	return out.Bytes(), nil
}
