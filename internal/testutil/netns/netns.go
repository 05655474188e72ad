// Package netns gives tests their own small network: named Linux network
// namespaces, each joined by a veth pair to a bridge in the root namespace,
// on a private /24 that no other test process on the machine uses at the
// same time. The bridge carries an address, so the host (and a QEMU guest
// with user networking, whose connections leave from the host) reaches
// every namespace. A namespace can be partitioned (its link taken down, both
// ends) and healed.
//
// Everything is named after the subnet's third octet (bridge nxbr<N>,
// namespaces nxt-<N>-<name>, veth ends nx<N>h<i> and nx<N>n<i>), and the
// bridge's alias records the owning process, so a run that crashed leaves
// nothing that a later one cannot find and remove.
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nexstor/nexstor/internal/testutil"
)

// Octets of the private subnets: 10.231.<N>.0/24 with N in [firstNet,
// lastNet]. The bridge is .1 and the namespaces .2 upwards.
const (
	firstNet = 10
	lastNet  = 249
	maxNS    = 99
)

const (
	bridgePrefix = "nxbr"
	nsPrefix     = "nxt-"
	aliasPrefix  = "nexstor-test pid="
)

// Net is one test's network: a bridge in the root namespace and the
// namespaces joined to it. Its methods are safe for concurrent use.
type Net struct {
	t      testing.TB
	ip     string
	octet  int
	bridge string

	mu  sync.Mutex
	nss []*NS
}

// NS is a network namespace of a Net.
type NS struct {
	// Name is the namespace's name (as `ip netns` lists it).
	Name string
	// Addr is its IPv4 address on the Net's subnet.
	Addr string

	net      *Net
	hostVeth string
	nsVeth   string
}

// Require checks that namespaces can be made here (root and the ip
// program) and returns the path of ip; otherwise the test is skipped, or
// fails when CI is set.
func Require(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Missing(t, "root (network namespaces)")
	}
	return testutil.RequireTool(t, "ip")
}

// New makes a Net: it removes what crashed earlier runs left, claims a free
// subnet, and creates the bridge with the subnet's .1. Everything is
// removed in t.Cleanup.
func New(t testing.TB) *Net {
	t.Helper()
	n := &Net{t: t, ip: Require(t)}
	sweep(n.ip)
	start := firstNet + os.Getpid()%(lastNet-firstNet+1)
	for i := 0; i <= lastNet-firstNet; i++ {
		o := firstNet + (start-firstNet+i)%(lastNet-firstNet+1)
		name := fmt.Sprintf("%s%d", bridgePrefix, o)
		// Creating the bridge is the claim: it fails when the name exists.
		if _, err := n.run("link", "add", name, "type", "bridge"); err != nil {
			continue
		}
		n.octet, n.bridge = o, name
		break
	}
	if n.bridge == "" {
		t.Fatalf("netns: no free subnet 10.231.%d-%d.0/24", firstNet, lastNet)
	}
	t.Cleanup(n.destroy)
	n.must("link", "set", n.bridge, "alias", aliasPrefix+strconv.Itoa(os.Getpid()))
	n.must("addr", "add", n.HostAddr()+"/24", "dev", n.bridge)
	n.must("link", "set", n.bridge, "up")
	return n
}

// HostAddr is the bridge's address: the root namespace's address on the
// subnet, which every namespace reaches.
func (n *Net) HostAddr() string { return fmt.Sprintf("10.231.%d.1", n.octet) }

// Subnet is the Net's subnet in CIDR notation.
func (n *Net) Subnet() string { return fmt.Sprintf("10.231.%d.0/24", n.octet) }

// Add creates a namespace called name (unique within the Net) with its
// loopback up and a veth pair to the bridge; its address is the next free
// one of the subnet.
func (n *Net) Add(name string) *NS {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	i := len(n.nss) + 1
	if i > maxNS {
		n.t.Fatalf("netns: more than %d namespaces", maxNS)
	}
	ns := &NS{
		Name:     fmt.Sprintf("%s%d-%s", nsPrefix, n.octet, name),
		Addr:     fmt.Sprintf("10.231.%d.%d", n.octet, i+1),
		net:      n,
		hostVeth: fmt.Sprintf("nx%dh%d", n.octet, i),
		nsVeth:   fmt.Sprintf("nx%dn%d", n.octet, i),
	}
	n.must("netns", "add", ns.Name)
	n.nss = append(n.nss, ns)
	// A veth of this name can only be stale: the octet is ours (we hold
	// its bridge), and an earlier Net of it whose namespace outlived it (a
	// process still inside) may have left the pair behind.
	_, _ = n.run("link", "del", ns.hostVeth)
	n.must("link", "add", ns.hostVeth, "type", "veth", "peer", "name", ns.nsVeth)
	n.must("link", "set", ns.nsVeth, "netns", ns.Name)
	n.must("link", "set", ns.hostVeth, "master", n.bridge)
	n.must("link", "set", ns.hostVeth, "up")
	n.must("-n", ns.Name, "link", "set", "lo", "up")
	n.must("-n", ns.Name, "addr", "add", ns.Addr+"/24", "dev", ns.nsVeth)
	n.must("-n", ns.Name, "link", "set", ns.nsVeth, "up")
	n.must("-n", ns.Name, "route", "add", "default", "via", n.HostAddr())
	return ns
}

// Partition cuts ns off: both ends of its veth pair go down, so packets
// are lost (connections are not reset) until Heal.
func (n *Net) Partition(ns *NS) {
	n.t.Helper()
	n.must("link", "set", ns.hostVeth, "down")
	n.must("-n", ns.Name, "link", "set", ns.nsVeth, "down")
}

// Heal undoes Partition: both ends come up, with the namespace's address
// and default route as they were.
func (n *Net) Heal(ns *NS) {
	n.t.Helper()
	n.must("-n", ns.Name, "link", "set", ns.nsVeth, "up")
	n.must("link", "set", ns.hostVeth, "up")
	// The default route went with the link; put it back (it may be there).
	n.run("-n", ns.Name, "route", "replace", "default", "via", n.HostAddr())
}

// Command returns a command that runs name with args inside ns (through
// `ip netns exec`, which execs the program: the process is the program).
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command(ns.net.ip, append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

func (n *Net) run(args ...string) (string, error) {
	out, err := exec.Command(n.ip, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (n *Net) must(args ...string) {
	n.t.Helper()
	if _, err := n.run(args...); err != nil {
		n.t.Fatalf("netns: %v", err)
	}
}

// destroy removes the namespaces (their veth ends go with them, and the
// host ends with their peers) and then the bridge. Processes still inside
// a namespace keep it alive but unreachable; callers stop theirs first.
func (n *Net) destroy() {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	for _, ns := range n.nss {
		// The pair first: deleting the namespace's name does not delete
		// the namespace while a process is still inside, and its veth
		// pair would outlive the Net (and collide with the next one).
		_, _ = n.run("link", "del", ns.hostVeth)
		if _, err := n.run("netns", "del", ns.Name); err != nil {
			errs = append(errs, err)
		}
	}
	n.nss = nil
	if _, err := n.run("link", "del", n.bridge); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		n.t.Errorf("netns cleanup: %v", err)
	}
}

// sweep removes the bridges (and their namespaces) whose owning process is
// gone, and namespaces of ours that have no bridge at all.
func sweep(ip string) {
	run := func(args ...string) string {
		out, _ := exec.Command(ip, args...).Output()
		return string(out)
	}
	live := map[string]bool{}
	for _, line := range strings.Split(run("-o", "link", "show", "type", "bridge"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		name, _, _ = strings.Cut(name, "@")
		if !strings.HasPrefix(name, bridgePrefix) {
			continue
		}
		octet := strings.TrimPrefix(name, bridgePrefix)
		pid := 0
		if _, a, ok := strings.Cut(line, "alias "+aliasPrefix); ok {
			pid, _ = strconv.Atoi(strings.Fields(a)[0])
		}
		if pid > 0 && alive(pid) {
			live[octet] = true
			continue
		}
		if pid == 0 {
			// Being set up right now, or crashed before its alias was set:
			// leave it (a crash there leaves only an empty bridge).
			live[octet] = true
			continue
		}
		delNS(run, octet)
		run("link", "del", name)
	}
	for _, line := range strings.Split(run("netns", "list"), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		octet, _, _ := strings.Cut(strings.TrimPrefix(f[0], nsPrefix), "-")
		if !live[octet] {
			run("netns", "del", f[0])
		}
	}
}

func delNS(run func(...string) string, octet string) {
	for _, line := range strings.Split(run("netns", "list"), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], nsPrefix+octet+"-") {
			run("netns", "del", f[0])
		}
	}
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
