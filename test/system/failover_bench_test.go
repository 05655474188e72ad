package system

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// TestFailoverStall is the failover benchmark, not a test: it runs only
// with NEXSTOR_BENCH_FAILOVER=ROUNDS (bench/failover.sh). On the HA test's
// system, the Linux kernel in the guest writes to the volume's block device
// with fio (4 KiB random writes, one at a time, O_DIRECT) while, each
// round, the volume is moved by `nexctl volume move` to a node other than
// the access point, and then that node is SIGKILLed (and started again once
// the volume failed over; the next round waits until it healed). The
// longest time one write took during each event (fio's maximum write
// latency over a run of a few seconds around it) is the stall the
// application saw; a first run without any event shows the longest write
// of a quiet volume. NEXSTOR_BENCH_NO_REPORT=1 runs the agent without its
// failed-path reports (a kill is then noticed by the heartbeats alone). It
// writes Markdown to NEXSTOR_BENCH_OUT (or the log).
func TestFailoverStall(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("NEXSTOR_BENCH_FAILOVER"))
	if rounds <= 0 {
		t.Skip("a benchmark: bench/failover.sh runs it (NEXSTOR_BENCH_FAILOVER=ROUNDS)")
	}
	env := qemuvm.Require(t)
	testutil.RequireTool(t, "fio")
	h := newHASystem(t, "")
	c := h.c

	type sample struct {
		kind    string
		from    string
		to      string
		hostSec float64 // fault or move start -> the volume's new target recorded, as the host polls
	}
	var (
		mu       sync.Mutex
		samples  = map[string]*sample{}
		restores = map[string]func(){}
	)
	barrier := func(name string) (map[string]string, error) {
		kind, round, _ := strings.Cut(name, "-")
		cur := c.getVolume("data")
		if cur == nil || cur.Status.Target == nil {
			return nil, fmt.Errorf("volume not published: %+v", cur)
		}
		switch kind {
		case "move":
			to := ""
			for _, n := range c.nodes {
				if n != h.ap && n.name != cur.Status.Target.Node {
					to = n.name
				}
			}
			start := time.Now()
			if out, errOut, err := c.nexctl("volume", "move", "data", "--node", to, "-a", h.aps, "--timeout", "2m"); err != nil {
				return nil, fmt.Errorf("volume move: %v: %s%s", err, out, errOut)
			}
			nv := c.getVolume("data")
			mu.Lock()
			samples[name] = &sample{kind: "planned", from: cur.Status.Target.Node, to: to, hostSec: time.Since(start).Seconds()}
			mu.Unlock()
			return map[string]string{"OLD": targetPort(cur), "NEW": targetPort(nv)}, nil
		case "kill":
			victim := c.nodeNamed(cur.Status.Target.Node)
			if victim == nil || victim == h.ap {
				return nil, fmt.Errorf("the nexus is on %q", cur.Status.Target.Node)
			}
			start := time.Now()
			restore := killNode.cut(t, victim)
			nv, err := c.waitVolume("data", "failed over", 2*time.Minute, func(v *haVolume) bool {
				return v.Status.Target != nil && v.Status.Target.Node != victim.name && v.Status.Operation == ""
			})
			if err != nil {
				return nil, err
			}
			mu.Lock()
			samples[name] = &sample{kind: "kill", from: victim.name, to: nv.Status.Target.Node, hostSec: time.Since(start).Seconds()}
			restores[round] = restore
			mu.Unlock()
			return map[string]string{"OLD": targetPort(cur), "NEW": targetPort(nv)}, nil
		case "restore":
			mu.Lock()
			restore := restores[round]
			mu.Unlock()
			restore()
			c.waitMembers("all joined again", 90*time.Second, c.allState("joined"))
			_, err := c.waitVolume("data", "healed", 3*time.Minute, func(v *haVolume) bool {
				return v.Status.Phase == "online" && v.Status.Healthy == 3 && v.Status.Operation == ""
			})
			return nil, err
		}
		return nil, fmt.Errorf("unknown barrier %q", name)
	}
	fio := "fio --name=stall --filename=$DEV --size=32m --direct=1 --ioengine=libaio --iodepth=1 --rw=randwrite --bs=4k" +
		" --time_based --runtime=600 --output-format=json"
	var agentFlags []string
	reports := "on"
	if os.Getenv("NEXSTOR_BENCH_NO_REPORT") != "" {
		agentFlags, reports = []string{"--report-every=-1s"}, "off"
	}
	script := append(h.guestPrelude(agentFlags...), "start quiet "+fio, "sleep 6s", "stop quiet")
	for i := 1; i <= rounds; i++ {
		for _, kind := range []string{"move", "kill"} {
			name := fmt.Sprintf("%s-%d", kind, i)
			script = append(script,
				"start "+name+" "+fio,
				"sleep 2s",
				"barrier "+name,
				"wait-path 10.0.2.2 $NEW live",
				"wait-path 10.0.2.2 $OLD gone",
				"sleep 2s",
				"stop "+name,
			)
		}
		script = append(script, fmt.Sprintf("barrier restore-%d", i))
	}
	res, err := env.Boot(t, qemuvm.Config{
		Programs:    []string{"fio", testutil.BuildBinary(t, "nexstor")},
		BarrierVars: barrier,
		Timeout:     time.Duration(rounds)*3*time.Minute + 5*time.Minute,
		Script:      script,
	}).Wait(t.Context())
	if err != nil {
		t.Logf("guest (%s):\n%s", env.Accel, res)
		t.Fatalf("guest: %v", err)
	}

	// The longest write of each run, and whether any failed.
	stalls := map[string][]float64{}
	var rows []string
	for _, st := range res.Steps {
		name, ok := strings.CutPrefix(st.Line, "stop ")
		if !ok {
			continue
		}
		out := strings.Join(st.Output, "\n")
		i := strings.Index(out, "{")
		if i < 0 {
			t.Fatalf("%s: no fio JSON:\n%s", name, out)
		}
		var r struct {
			Jobs []struct {
				Error int `json:"error"`
				Write struct {
					IOs   int64 `json:"total_ios"`
					LatNs struct {
						Max float64 `json:"max"`
					} `json:"lat_ns"`
				} `json:"write"`
			} `json:"jobs"`
		}
		if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&r); err != nil || len(r.Jobs) != 1 {
			t.Fatalf("%s: fio JSON: %v\n%s", name, err, out)
		}
		j := r.Jobs[0]
		if j.Error != 0 {
			t.Errorf("%s: fio error %d", name, j.Error)
		}
		s := samples[name]
		if s == nil {
			s = &sample{kind: "none", from: "-", to: "-"}
		}
		stall := j.Write.LatNs.Max / 1e9
		stalls[s.kind] = append(stalls[s.kind], stall)
		rows = append(rows, fmt.Sprintf("| %s | %s | %s → %s | %.2f | %.2f | %d |", name, s.kind, s.from, s.to, stall, s.hostSec, j.Write.IOs))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Guest: %s. Rounds: %d. Agent's failed-path reports: %s.\n\n", env.Accel, rounds, reports)
	b.WriteString("| run | event | nexus | longest write (s) | move, as the host polls (s) | writes |\n|---|---|---|---|---|---|\n")
	b.WriteString(strings.Join(rows, "\n") + "\n\n")
	b.WriteString("| event | median longest write (s) | min | max |\n|---|---|---|---|\n")
	for _, k := range []string{"none", "planned", "kill"} {
		x := slices.Sorted(slices.Values(stalls[k]))
		if len(x) == 0 {
			continue
		}
		med := x[len(x)/2]
		if len(x)%2 == 0 {
			med = (x[len(x)/2-1] + x[len(x)/2]) / 2
		}
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2f |\n", k, med, x[0], x[len(x)-1])
	}
	t.Logf("\n%s", b.String())
	if p := os.Getenv("NEXSTOR_BENCH_OUT"); p != "" {
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
