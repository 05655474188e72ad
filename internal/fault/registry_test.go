package fault

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var codeRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)

// TestRegistry checks the registry itself: every code well formed and
// registered once, with a known kind and a resolution.
func TestRegistry(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range registry {
		if !codeRE.MatchString(s.Code) {
			t.Errorf("code %q is not lower-case dotted words", s.Code)
		}
		if seen[s.Code] {
			t.Errorf("code %q is registered twice", s.Code)
		}
		seen[s.Code] = true
		if s.Kind < 0 || s.Kind > LastKind {
			t.Errorf("code %q: kind %d is unknown", s.Code, s.Kind)
		}
		if strings.TrimSpace(s.Resolution) == "" {
			t.Errorf("code %q has no default resolution", s.Code)
		}
	}
	if got, ok := Lookup("pool.not_found"); !ok || got.Kind != NotFound {
		t.Errorf("Lookup(pool.not_found) = %+v, %v", got, ok)
	}
	if _, ok := Lookup("no.such_code"); ok {
		t.Error("Lookup of an unregistered code succeeded")
	}
}

// use is one place in the source that makes a fault with a code.
type use struct {
	pos  string
	code string
	kind string // "" when the kind is not a constant
}

// TestEveryCodeIsRegistered parses every non-test Go file of the
// repository, finds every fault.New, fault.Wrap and fault.Fault literal,
// and checks that its code is a constant, registered, and used with its
// registered kind; and that every registered code is used somewhere.
func TestEveryCodeIsRegistered(t *testing.T) {
	root := moduleRoot(t)
	uses, bad := scanRepo(t, root)
	for _, b := range bad {
		t.Error(b)
	}
	if len(uses) < 50 {
		t.Fatalf("found only %d fault constructions under %s: the scanner is broken", len(uses), root)
	}
	used := map[string]bool{}
	for _, u := range uses {
		used[u.code] = true
		s, ok := Lookup(u.code)
		if !ok {
			t.Errorf("%s: fault code %q is not registered in internal/fault/codes.go", u.pos, u.code)
			continue
		}
		if u.kind != "" && u.kind != s.Kind.String() {
			t.Errorf("%s: fault code %q is used with kind %s but registered as %s: one code, one kind",
				u.pos, u.code, u.kind, s.Kind)
		}
	}
	for _, s := range registry {
		if !used[s.Code] {
			t.Errorf("code %q is registered but no code makes it: remove it from codes.go", s.Code)
		}
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// pkg is one directory's parsed non-test files.
type pkg struct {
	dir    string
	name   string
	files  []*ast.File
	consts map[string]ast.Expr
}

type scanner struct {
	fset   *token.FileSet
	module string
	root   string
	pkgs   map[string]*pkg // by directory
	memo   map[string]string
	bad    []string
}

func scanRepo(t *testing.T, root string) ([]use, []string) {
	t.Helper()
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	s := &scanner{fset: token.NewFileSet(), root: root, pkgs: map[string]*pkg{}, memo: map[string]string{}}
	for _, l := range strings.Split(string(mod), "\n") {
		if m, ok := strings.CutPrefix(l, "module "); ok {
			s.module = strings.TrimSpace(m)
		}
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			n := d.Name()
			if path != root && (strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_") || n == "testdata" || n == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(s.fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		p := s.pkgs[dir]
		if p == nil {
			p = &pkg{dir: dir, name: f.Name.Name, consts: map[string]ast.Expr{}}
			s.pkgs[dir] = p
		}
		p.files = append(p.files, f)
		for _, decl := range f.Decls {
			if gd, ok := decl.(*ast.GenDecl); ok && gd.Tok == token.CONST {
				for _, spec := range gd.Specs {
					vs := spec.(*ast.ValueSpec)
					for i, n := range vs.Names {
						if i < len(vs.Values) {
							p.consts[n.Name] = vs.Values[i]
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	faultPath := s.module + "/internal/fault"
	var uses []use
	dirs := make([]string, 0, len(s.pkgs))
	for d := range s.pkgs {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs)
	for _, d := range dirs {
		p := s.pkgs[d]
		for _, f := range p.files {
			imports := s.imports(f)
			faultName := ""
			for name, path := range imports {
				if path == faultPath {
					faultName = name
				}
			}
			inFault := filepath.Join(s.root, "internal", "fault") == p.dir
			if faultName == "" && !inFault {
				continue
			}
			// isFault reports whether e names the exported identifier sel
			// of package fault.
			isFault := func(e ast.Expr, sel ...string) (string, bool) {
				switch x := e.(type) {
				case *ast.SelectorExpr:
					if id, ok := x.X.(*ast.Ident); ok && id.Name == faultName && faultName != "" && slices.Contains(sel, x.Sel.Name) {
						return x.Sel.Name, true
					}
				case *ast.Ident:
					if inFault && slices.Contains(sel, x.Name) {
						return x.Name, true
					}
				}
				return "", false
			}
			kindOf := func(e ast.Expr) string {
				if k, ok := isFault(e, kindNames[:]...); ok {
					return k
				}
				return ""
			}
			ast.Inspect(f, func(n ast.Node) bool {
				switch x := n.(type) {
				case *ast.CallExpr:
					fn, ok := isFault(x.Fun, "New", "Wrap")
					if !ok {
						return true
					}
					ki, ci := 0, 1
					if fn == "Wrap" {
						ki, ci = 1, 2
					}
					if len(x.Args) <= ci {
						return true
					}
					pos := s.fset.Position(x.Pos()).String()
					code, ok := s.eval(p, imports, x.Args[ci])
					if !ok {
						s.bad = append(s.bad, fmt.Sprintf("%s: the fault code is not a constant (a literal or a named constant), so it cannot be checked against the registry", pos))
						return true
					}
					uses = append(uses, use{pos: pos, code: code, kind: kindOf(x.Args[ki])})
				case *ast.CompositeLit:
					if _, ok := isFault(x.Type, "Fault"); !ok {
						return true
					}
					var u use
					for _, el := range x.Elts {
						kv, ok := el.(*ast.KeyValueExpr)
						if !ok {
							continue
						}
						switch k := kv.Key.(*ast.Ident); {
						case k == nil:
						case k.Name == "Code":
							// Codes from elsewhere (a status received from a
							// server) are checked where they were made.
							u.code, _ = s.eval(p, imports, kv.Value)
						case k.Name == "Kind":
							u.kind = kindOf(kv.Value)
						}
					}
					if u.code != "" {
						u.pos = s.fset.Position(x.Pos()).String()
						uses = append(uses, u)
					}
				}
				return true
			})
		}
	}
	return uses, s.bad
}

// imports maps the names a file refers to its module-internal imports by
// to their import paths.
func (s *scanner) imports(f *ast.File) map[string]string {
	m := map[string]string{}
	for _, is := range f.Imports {
		path, _ := strconv.Unquote(is.Path.Value)
		if !strings.HasPrefix(path, s.module+"/") {
			continue
		}
		name := ""
		if is.Name != nil {
			name = is.Name.Name
		} else if p := s.pkgs[s.dirOf(path)]; p != nil {
			name = p.name
		} else {
			name = path[strings.LastIndex(path, "/")+1:]
		}
		m[name] = path
	}
	return m
}

func (s *scanner) dirOf(importPath string) string {
	return filepath.Join(s.root, filepath.FromSlash(strings.TrimPrefix(importPath, s.module+"/")))
}

// eval evaluates a constant string expression of package p: literals,
// named constants of p or of a module-internal package, and their sums.
func (s *scanner) eval(p *pkg, imports map[string]string, e ast.Expr) (string, bool) {
	switch x := e.(type) {
	case *ast.BasicLit:
		if x.Kind != token.STRING {
			return "", false
		}
		v, err := strconv.Unquote(x.Value)
		return v, err == nil
	case *ast.ParenExpr:
		return s.eval(p, imports, x.X)
	case *ast.BinaryExpr:
		if x.Op != token.ADD {
			return "", false
		}
		a, ok1 := s.eval(p, imports, x.X)
		b, ok2 := s.eval(p, imports, x.Y)
		return a + b, ok1 && ok2
	case *ast.Ident:
		return s.constant(p, x.Name)
	case *ast.SelectorExpr:
		id, ok := x.X.(*ast.Ident)
		if !ok {
			return "", false
		}
		path, ok := imports[id.Name]
		if !ok {
			return "", false
		}
		q := s.pkgs[s.dirOf(path)]
		if q == nil {
			return "", false
		}
		return s.constant(q, x.Sel.Name)
	}
	return "", false
}

// constant evaluates the package-level constant name of p, in the context
// of the file that declares it.
func (s *scanner) constant(p *pkg, name string) (string, bool) {
	key := p.dir + "." + name
	if v, ok := s.memo[key]; ok {
		return v, v != "\x00"
	}
	e, ok := p.consts[name]
	if !ok {
		return "", false
	}
	s.memo[key] = "\x00" // a cycle evaluates to "not a constant"
	var file *ast.File
	for _, f := range p.files {
		if f.Pos() <= e.Pos() && e.End() <= f.End() {
			file = f
		}
	}
	v, ok := s.eval(p, s.imports(file), e)
	if ok {
		s.memo[key] = v
	}
	return v, ok
}
