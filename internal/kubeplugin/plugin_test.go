package kubeplugin

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestSplitArgs(t *testing.T) {
	o, rest, err := SplitArgs([]string{"get", "volumes", "-n", "storage", "--kubeconfig=/k", "-o", "json", "--context", "c1", "--release", "r"})
	if err != nil {
		t.Fatal(err)
	}
	if o != (Options{Kubeconfig: "/k", Context: "c1", Namespace: "storage", Release: "r"}) || !slices.Equal(rest, []string{"get", "volumes", "-o", "json"}) {
		t.Fatalf("options %+v, rest %q", o, rest)
	}
	if o, _, _ := SplitArgs([]string{"-nfoo", "get", "pools"}); o.Namespace != "foo" {
		t.Fatalf("-nfoo: %+v", o)
	}
	if _, _, err := SplitArgs([]string{"get", "volumes", "-n"}); err == nil || !strings.Contains(err.Error(), "-n needs a value") {
		t.Fatalf("-n without a value: %v", err)
	}
}

func TestTranslate(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"get volumes", "volume list"},
		{"get pools -o json", "pool list -o json"},
		{"get -o yaml nodes", "node list -o yaml"},
		{"get volume v1 -o json", "volume get v1 -o json"},
		{"get snapshots v1", "snapshot get v1"},
		{"get events", "event list"},
		{"volume set-replicas v1 3", "volume set-replicas v1 3"},
	} {
		got, err := Translate(strings.Fields(c.in))
		if err != nil || strings.Join(got, " ") != c.want {
			t.Errorf("%q -> %q (%v), want %q", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"get", "get what?"},
		{"get replicas", "unknown kind; one of events, nodes, pools, snapshots, volumes"},
		{"get events e1", "takes no name"},
	} {
		if _, err := Translate(strings.Fields(c.in)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error saying %q", c.in, err, c.want)
		}
	}
}

func TestCertFiles(t *testing.T) {
	sec := &corev1.Secret{Data: map[string][]byte{"ca.crt": []byte("ca"), "admin.crt": []byte("c"), "admin.key": []byte("k")}}
	files, err := certFiles(sec)
	if err != nil || len(files) != 3 || string(files["admin.key"]) != "k" {
		t.Fatalf("%v %v", files, err)
	}
	delete(sec.Data, "admin.key")
	if _, err := certFiles(sec); err == nil || !strings.Contains(err.Error(), "no admin.key") {
		t.Fatalf("missing key: %v", err)
	}
}
