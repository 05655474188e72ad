// Package kubeplugin is `kubectl nexstor`: nexctl under another name, which
// finds the Nexstor system of a Kubernetes namespace through the kubeconfig
// instead of flags. The Helm chart leaves a ConfigMap labelled
// app.kubernetes.io/component=client in the release's namespace with the
// access points, whether the system uses TLS and the Secret holding the
// admin certificate; the plugin reads them, writes the certificate to a
// private temporary directory (removed when it exits), and runs nexctl with
// NEXSTOR_ACCESS_POINTS and NEXSTOR_CERT_DIR (or NEXSTOR_INSECURE) set.
package kubeplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// ClientLabel selects the chart's client ConfigMap (with
// app.kubernetes.io/name=nexstor).
const ClientLabel = "app.kubernetes.io/name=nexstor,app.kubernetes.io/component=client"

// Usage is the plugin's help.
const Usage = `kubectl nexstor: nexctl for the Nexstor system installed in a Kubernetes namespace.

Usage:
  kubectl nexstor get volumes|pools|nodes|snapshots|events [-o table|json|yaml]
  kubectl nexstor get volume|pool|node|snapshot NAME
  kubectl nexstor config                 # what was found: access points, TLS, certificate Secret
  kubectl nexstor NEXCTL-COMMAND ...     # any nexctl command, e.g. volume set-replicas v1 3

Plugin flags (anywhere on the line):
  -n, --namespace NS    the release's namespace (default: the kubeconfig context's, else "default")
      --kubeconfig FILE the kubeconfig (default: $KUBECONFIG, else ~/.kube/config)
      --context NAME    the kubeconfig context
      --release NAME    the Helm release, when the namespace holds several

The system is found through the ConfigMap the Helm chart creates (labels
` + ClientLabel + `): its access points, and with TLS the
admin certificate from the Secret it names (reading it needs RBAC to get that
Secret). nexctl must be next to kubectl-nexstor or on PATH.
`

// Options are the plugin's own flags.
type Options struct {
	Kubeconfig, Context, Namespace, Release string
}

// SplitArgs takes the plugin's flags out of args (kubectl passes every
// argument after "nexstor") and returns them with the rest, for nexctl.
func SplitArgs(args []string) (Options, []string, error) {
	var o Options
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		var dst *string
		name, val, hasVal := strings.Cut(a, "=")
		switch name {
		case "-n", "--namespace":
			dst = &o.Namespace
		case "--kubeconfig":
			dst = &o.Kubeconfig
		case "--context":
			dst = &o.Context
		case "--release":
			dst = &o.Release
		default:
			if strings.HasPrefix(a, "-n") && len(a) > 2 && !strings.HasPrefix(a, "--") {
				o.Namespace = a[2:] // -nNS
				continue
			}
			rest = append(rest, a)
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return o, nil, fmt.Errorf("%s needs a value", name)
			}
			i++
			val = args[i]
		}
		*dst = val
	}
	return o, rest, nil
}

// kinds maps what `get` accepts to nexctl's nouns.
var kinds = map[string]string{
	"volumes": "volume", "volume": "volume", "vol": "volume",
	"pools": "pool", "pool": "pool",
	"nodes": "node", "node": "node",
	"snapshots": "snapshot", "snapshot": "snapshot", "snap": "snapshot",
	"events": "event", "event": "event",
}

// Translate turns kubectl-style arguments into nexctl's: `get volumes` is
// `volume list`, `get volume v1` is `volume get v1`; anything else is a
// nexctl command already.
func Translate(args []string) ([]string, error) {
	if len(args) == 0 || args[0] != "get" {
		return args, nil
	}
	var pos, flags []string
	rest := args[1:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		if takesValue(a) && i+1 < len(rest) {
			i++
			flags = append(flags, rest[i])
		}
	}
	if len(pos) == 0 {
		return nil, errors.New("get what? volumes, pools, nodes, snapshots or events")
	}
	noun, ok := kinds[pos[0]]
	if !ok {
		known := slices.Sorted(func(yield func(string) bool) {
			for k := range kinds {
				if strings.HasSuffix(k, "s") && !yield(k) {
					return
				}
			}
		})
		return nil, fmt.Errorf("get %s: unknown kind; one of %s", pos[0], strings.Join(known, ", "))
	}
	verb := "list"
	if len(pos) > 1 {
		verb = "get"
		if noun == "event" {
			return nil, errors.New("get events takes no name; nexctl event list --help says how to filter")
		}
	}
	return append(append([]string{noun, verb}, pos[1:]...), flags...), nil
}

// takesValue reports whether a nexctl flag given without "=" is followed
// by its value.
func takesValue(flag string) bool {
	switch flag {
	case "-o", "--output", "--timeout", "--node", "--pool", "--volume":
		return true
	}
	return false
}

// System is what the plugin found of the Nexstor system in a namespace.
type System struct {
	Namespace    string
	ConfigMap    string
	AccessPoints string
	TLS          bool
	// Secret is the Secret with the admin certificate (TLS only), Certs
	// its files (ca.crt, admin.crt, admin.key).
	Secret string
	Certs  map[string][]byte
}

// Discover finds the system of o's namespace through the Kubernetes API.
func Discover(ctx context.Context, o Options) (*System, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.Kubeconfig != "" {
		rules.ExplicitPath = o.Kubeconfig
	}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.Context}
	if o.Namespace != "" {
		overrides.Context.Namespace = o.Namespace
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w (give --kubeconfig, or set KUBECONFIG)", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	sel := ClientLabel
	if o.Release != "" {
		sel += ",app.kubernetes.io/instance=" + o.Release
	}
	cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("listing the Nexstor client ConfigMaps of namespace %s: %w", ns, err)
	}
	switch len(cms.Items) {
	case 0:
		what := "no Nexstor release"
		if o.Release != "" {
			what = "no Nexstor release " + o.Release
		}
		return nil, fmt.Errorf("%s in namespace %s (no ConfigMap labelled %s); give the release's namespace with -n", what, ns, sel)
	case 1:
	default:
		var rels []string
		for _, cm := range cms.Items {
			rels = append(rels, cm.Labels["app.kubernetes.io/instance"])
		}
		sort.Strings(rels)
		return nil, fmt.Errorf("namespace %s holds several Nexstor releases (%s): pick one with --release", ns, strings.Join(rels, ", "))
	}
	cm := cms.Items[0]
	s := &System{Namespace: ns, ConfigMap: cm.Name, AccessPoints: cm.Data["accessPoints"], TLS: cm.Data["tls"] != "false",
		Secret: cm.Data["adminSecret"]}
	if s.AccessPoints == "" {
		return nil, fmt.Errorf("ConfigMap %s/%s has no accessPoints; reinstall the chart with accessPoints set", ns, cm.Name)
	}
	if !s.TLS {
		return s, nil
	}
	sec, err := cs.CoreV1().Secrets(ns).Get(ctx, s.Secret, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the admin certificate (Secret %s/%s): %w; it is made by the chart's certgen Job, and reading it needs RBAC to get Secrets in %s",
			ns, s.Secret, err, ns)
	}
	s.Certs, err = certFiles(sec)
	if err != nil {
		return nil, fmt.Errorf("Secret %s/%s: %w", ns, s.Secret, err)
	}
	return s, nil
}

// certFiles are the files of nexctl's certificate directory in sec.
func certFiles(sec *corev1.Secret) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, k := range []string{"ca.crt", "admin.crt", "admin.key"} {
		v := sec.Data[k]
		if len(v) == 0 {
			return nil, fmt.Errorf("no %s in it", k)
		}
		out[k] = v
	}
	return out, nil
}

// Describe writes what Discover found, for `kubectl nexstor config`.
func (s *System) Describe(w io.Writer) {
	fmt.Fprintf(w, "Namespace:      %s\nConfigMap:      %s\nAccess points:  %s\n", s.Namespace, s.ConfigMap, s.AccessPoints)
	if s.TLS {
		fmt.Fprintf(w, "TLS:            mutual, as admin (Secret %s: ca.crt, admin.crt, admin.key)\n", s.Secret)
	} else {
		fmt.Fprintf(w, "TLS:            none (the system runs with --insecure)\n")
	}
}

// Run runs nexctl (the file at nexctl) with args against s: the access
// points and certificates go in its environment. It returns nexctl's exit
// status.
func (s *System) Run(nexctl string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	env := append(os.Environ(), "NEXSTOR_ACCESS_POINTS="+s.AccessPoints)
	if s.TLS {
		dir, err := os.MkdirTemp("", "kubectl-nexstor-")
		if err != nil {
			return 1, err
		}
		defer os.RemoveAll(dir)
		for name, b := range s.Certs {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				return 1, err
			}
		}
		env = append(env, "NEXSTOR_CERT_DIR="+dir, "NEXSTOR_INSECURE=0")
	} else {
		env = append(env, "NEXSTOR_INSECURE=1")
	}
	cmd := exec.Command(nexctl, args...)
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = env, stdin, stdout, stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, fmt.Errorf("running nexctl: %w", err)
	}
	return 0, nil
}

// FindNexctl returns nexctl next to the running executable, else on PATH.
func FindNexctl() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "nexctl")
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("nexctl")
	if err != nil {
		return "", errors.New("nexctl not found next to kubectl-nexstor or on PATH; install it (make install puts both in $(go env GOPATH)/bin)")
	}
	return p, nil
}
