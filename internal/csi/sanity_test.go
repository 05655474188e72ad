package csi

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/testutil"
)

// sanityIDs generates the IDs csi-sanity uses: valid volume IDs have the
// driver's form (a UUID) without naming a volume; valid node IDs name no
// member.
type sanityIDs struct{}

func (sanityIDs) GenerateUniqueValidVolumeID() string { return uuid.NewString() }
func (sanityIDs) GenerateInvalidVolumeID() string     { return "not-a-volume-id" }
func (sanityIDs) GenerateUniqueValidNodeID() string   { return "node-" + uuid.NewString()[:8] }
func (sanityIDs) GenerateInvalidNodeID() string       { return "no such node" }

// expectedSkips are the csi-sanity specs the driver is entitled to skip:
// each names a capability it does not advertise (volume modification,
// read-only controller publish, node storage health, group snapshots,
// snapshot accessibility constraints) or a test configuration left off.
// Any other skip fails the test: nothing the driver advertises goes
// untested (snapshots, listing and getting them, and clones included).
var expectedSkips = []string{
	"snapshot_accessibility_constraints not supported", "modify volume not supported",
	"controllermodifyvolume not supported", "groupcontrollerservice not supported",
	"controllerpublishvolume.readonly field not supported", "testnodevolumeattachlimit not enabled",
	"nodegetstoragehealth not supported",
}

// TestSanity runs csi-sanity (kubernetes-csi/csi-test pkg/sanity) against
// the controller, on a whole system in this process, and the node, on the
// loop-device transport (this machine's kernel has no NVMe/TCP initiator;
// the real transport is tested in a QEMU guest by TestNodeKernel): once
// with mount volumes, once with block volumes.
func TestSanity(t *testing.T) {
	requireLoop(t)
	sys := startDev(t)
	dir := t.TempDir()
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	loopDir := filepath.Join(dir, "loop")
	node, err := NewNode(NodeOptions{NodeName: "node-0", Transport: NewLoop(LoopOptions{Dir: loopDir, Log: log}),
		StateDir: filepath.Join(dir, "state"), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Services{Identity: NewIdentity(true, nil, log), Controller: NewController(sys.client, log), Node: node}, log)
	sock := filepath.Join(dir, "csi.sock")
	ln, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Stop()
		cleanupMounts(t, dir)
		cleanupLoops(t, loopDir)
	})
	before, snapsBefore := len(sys.volumes(t)), len(sys.snapshots(t))

	configs := map[string]*sanity.TestConfig{}
	for _, kind := range []string{"mount", "block"} {
		if err := os.MkdirAll(filepath.Join(dir, kind), 0o755); err != nil {
			t.Fatal(err)
		}
		c := sanity.NewTestConfig()
		c.Address = "unix://" + sock
		c.TargetPath = filepath.Join(dir, kind, "target")
		c.StagingPath = filepath.Join(dir, kind, "staging")
		c.TestVolumeAccessType = kind
		c.TestVolumeSize = 16 << 20
		c.TestVolumeExpandSize = 32 << 20
		c.TestVolumeParameters = map[string]string{ParamReplicas: "2", ParamThin: "true"}
		c.IDGen = sanityIDs{}
		configs[kind] = &c
	}
	var mu sync.Mutex
	var skips [][2]string // spec, reason
	ReportAfterEach(func(r SpecReport) {
		if r.State == types.SpecStateSkipped {
			mu.Lock()
			skips = append(skips, [2]string{r.FullText(), r.Failure.Message})
			mu.Unlock()
		}
	})
	Describe("mount", func() { sanity.GinkgoTest(configs["mount"]) })
	Describe("block", func() { sanity.GinkgoTest(configs["block"]) })
	RegisterFailHandler(Fail)
	suite, reporter := GinkgoConfiguration()
	reporter.Verbose, reporter.NoColor = testing.Verbose(), true
	ok := RunSpecs(t, "Nexstor CSI sanity", suite, reporter)
	if !ok || t.Failed() || os.Getenv("CSI_SANITY_LOG") != "" {
		t.Logf("driver log:\n%s", logs.String())
		return
	}
	reasons := map[string]int{}
	for _, s := range skips {
		if !slices.Contains(expectedSkips, strings.ToLower(strings.TrimSpace(s[1]))) {
			t.Errorf("skipped, though the driver advertises it: %s: %s", s[0], s[1])
		}
		reasons[s[1]]++
	}
	t.Logf("%d specs skipped for capabilities the driver does not advertise: %v", len(skips), reasons)
	// Every volume and snapshot sanity made (and every transient snapshot
	// of a clone) was deleted, and nothing stayed attached.
	if after := len(sys.volumes(t)); after != before {
		t.Errorf("%d volumes before the sanity run, %d after", before, after)
	}
	if after := len(sys.snapshots(t)); after != snapsBefore {
		t.Errorf("%d snapshots before the sanity run, %d after", snapsBefore, after)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "state")); len(ents) != 0 {
		t.Errorf("node state left behind: %v", ents)
	}
	if loops := attachedLoops(loopDir); len(loops) != 0 {
		t.Errorf("loop devices left attached: %v", loops)
	}
}

// attachedLoops lists the loop devices backed by files under dir.
func attachedLoops(dir string) []string {
	l := NewLoop(LoopOptions{Dir: dir})
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if d := l.find(filepath.Join(dir, e.Name())); d != "" {
			out = append(out, d)
		}
	}
	return out
}

// cleanupMounts unmounts whatever a failed test left mounted under dir.
func cleanupMounts(t *testing.T, dir string) {
	es, err := (mounter{mountInfo: "/proc/self/mountinfo"}).entries()
	if err != nil {
		return
	}
	for i := len(es) - 1; i >= 0; i-- {
		if strings.HasPrefix(es[i].MountPoint, cleanPath(dir)+"/") {
			t.Logf("cleanup: unmounting %s", es[i].MountPoint)
			unix.Unmount(es[i].MountPoint, unix.MNT_DETACH)
		}
	}
}

// cleanupLoops detaches the loop devices a failed test left attached.
func cleanupLoops(t *testing.T, dir string) {
	for _, d := range attachedLoops(dir) {
		t.Logf("cleanup: detaching %s", d)
		if f, err := os.OpenFile("/dev/"+d, os.O_RDWR, 0); err == nil {
			unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
			f.Close()
		}
	}
}
