package netns

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as the program run inside the namespaces:
// NETNS_TEST_SERVE=addr makes it an echo server on addr that prints
// "listening" once it listens; NETNS_TEST_DIAL=addr makes it dial addr,
// send a line and print the answer.
func TestMain(m *testing.M) {
	if addr := os.Getenv("NETNS_TEST_SERVE"); addr != "" {
		serve(addr)
		return
	}
	if addr := os.Getenv("NETNS_TEST_DIAL"); addr != "" {
		if err := dialOnce(addr); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

func serve(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "echo %s", line)
		}()
	}
}

func dialOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(c, "ping\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	fmt.Print(line)
	return nil
}

// inNS runs the test binary in ns with env set.
func inNS(ns *NS, env string) *exec.Cmd {
	cmd := ns.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env)
	return cmd
}

// dial reports whether a process in from reaches the echo server on addr.
func dial(t *testing.T, from *NS, addr string) (bool, string) {
	t.Helper()
	var cmd *exec.Cmd
	if from == nil {
		cmd = exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "NETNS_TEST_DIAL="+addr)
	} else {
		cmd = inNS(from, "NETNS_TEST_DIAL="+addr)
	}
	out, err := cmd.CombinedOutput()
	return err == nil && strings.Contains(string(out), "echo ping"), string(out)
}

// TestPartitionAndHeal: two namespaces talk to each other and to the host;
// a partition of one stops its traffic both ways while the other still
// reaches the host; heal restores it.
func TestPartitionAndHeal(t *testing.T) {
	n := New(t)
	a, b := n.Add("a"), n.Add("b")
	if a.Addr == b.Addr || !strings.HasPrefix(a.Addr, strings.TrimSuffix(n.Subnet(), "0/24")) {
		t.Fatalf("addresses %s %s on %s", a.Addr, b.Addr, n.Subnet())
	}
	srvA := a.Addr + ":7001"
	srv := inNS(a, "NETNS_TEST_SERVE="+srvA)
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "listening\n" {
		t.Fatalf("server in %s: %q %v", a.Name, line, err)
	}

	for _, from := range []*NS{b, a, nil} {
		if ok, out := dial(t, from, srvA); !ok {
			t.Fatalf("%v does not reach %s: %s", from, srvA, out)
		}
	}
	// The server listens on a's address only, so from the root namespace
	// the loopback does not reach it: the traffic goes over the bridge.
	if ok, _ := dial(t, nil, "127.0.0.1:7001"); ok {
		t.Fatal("the server in a namespace answers on the host's loopback")
	}

	n.Partition(a)
	for _, from := range []*NS{b, nil} {
		if ok, out := dial(t, from, srvA); ok {
			t.Fatalf("%v reaches %s across the partition: %s", from, srvA, out)
		}
	}
	n.Heal(a)
	for _, from := range []*NS{b, nil} {
		if ok, out := dial(t, from, srvA); !ok {
			t.Fatalf("%v does not reach %s after heal: %s", from, srvA, out)
		}
	}
}

// TestSweepRemovesLeftovers: a bridge and namespace left by a process
// that is gone are removed by the next New; a live owner's are kept.
func TestSweepRemovesLeftovers(t *testing.T) {
	ip := Require(t)
	// A process that has exited: its pid is free (until reused, which the
	// sweep then takes for alive, the safe side).
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	const octet = 250 // outside the range New claims
	bridge := fmt.Sprintf("%s%d", bridgePrefix, octet)
	ns := fmt.Sprintf("%s%d-left", nsPrefix, octet)
	mustIP := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	exec.Command(ip, "link", "del", bridge).Run()
	exec.Command(ip, "netns", "del", ns).Run()
	mustIP("link", "add", bridge, "type", "bridge")
	mustIP("link", "set", bridge, "alias", aliasPrefix+fmt.Sprint(dead.Process.Pid))
	mustIP("netns", "add", ns)
	t.Cleanup(func() {
		exec.Command(ip, "link", "del", bridge).Run()
		exec.Command(ip, "netns", "del", ns).Run()
	})

	n := New(t) // sweeps
	links, _ := exec.Command(ip, "-o", "link", "show", "type", "bridge").Output()
	nss, _ := exec.Command(ip, "netns", "list").Output()
	if strings.Contains(string(links), bridge+":") || strings.Contains(string(nss), ns) {
		t.Fatalf("leftovers of a dead run remain:\n%s\n%s", links, nss)
	}
	if !strings.Contains(string(links), n.bridge+":") {
		t.Fatalf("the live run's bridge %s is gone:\n%s", n.bridge, links)
	}
}
