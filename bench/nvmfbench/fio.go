package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/nexstor/nexstor/internal/loadgen"
)

// fioRamp is fio's unmeasured warm-up before each run.
const fioRamp = time.Second

type fioStats struct {
	IOPS     float64 `json:"iops"`
	BWBytes  float64 `json:"bw_bytes"`
	TotalIOs int64   `json:"total_ios"`
	LatNS    struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"lat_ns"`
}

type fioOutput struct {
	Jobs []struct {
		Error int      `json:"error"`
		Read  fioStats `json:"read"`
		Write fioStats `json:"write"`
	} `json:"jobs"`
}

// runFio runs w with fio against target, with the fio options of
// bench/nbd.sh, and reports its IOPS and total latency (submission to
// completion, --lat_percentiles) percentiles. busy is how long fio kept the
// server busy (ramp included), for the CPU-per-I/O division.
// target is an nbd:// URI (fio's nbd engine) or the path of a file, which
// fio opens itself with ioengine=io_uring and direct=1: the raw baseline.
func runFio(cfg config, w workload, backing, target string) (m measured, busy time.Duration, err error) {
	rw := map[[2]int]string{
		{int(loadgen.Random), int(loadgen.Read)}:      "randread",
		{int(loadgen.Random), int(loadgen.Write)}:     "randwrite",
		{int(loadgen.Sequential), int(loadgen.Read)}:  "read",
		{int(loadgen.Sequential), int(loadgen.Write)}: "write",
	}[[2]int{int(w.pattern), int(w.mix)}]
	args := []string{
		"--name=" + w.name,
		"--rw=" + rw, "--bs=" + strconv.Itoa(w.bs), "--iodepth=" + strconv.Itoa(w.qd),
		"--numjobs=1", "--size=" + strconv.FormatInt(cfg.sizeMiB[backing], 10) + "m",
		"--time_based", "--runtime=" + strconv.FormatFloat(cfg.runtime.Seconds(), 'f', -1, 64) + "s",
		"--ramp_time=" + strconv.FormatFloat(fioRamp.Seconds(), 'f', -1, 64) + "s",
		"--randrepeat=0", "--norandommap", "--group_reporting",
		"--lat_percentiles=1", "--output-format=json",
	}
	if strings.HasPrefix(target, "nbd://") {
		args = append(args, "--ioengine=nbd", "--uri="+target)
	} else {
		args = append(args, "--ioengine=io_uring", "--direct=1", "--filename="+target)
	}
	cmd := exec.Command("fio", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return m, 0, fmt.Errorf("fio %v: %w: %s", args, err, stderr.Bytes())
	}
	// fio may print notes before the JSON document.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var o fioOutput
	if err := json.Unmarshal(out, &o); err != nil {
		return m, 0, fmt.Errorf("fio output: %w", err)
	}
	if len(o.Jobs) != 1 || o.Jobs[0].Error != 0 {
		return m, 0, fmt.Errorf("fio reported an error: %s", out)
	}
	s := o.Jobs[0].Read
	if w.mix == loadgen.Write {
		s = o.Jobs[0].Write
	}
	m = measured{
		IOPS:      s.IOPS,
		Bandwidth: s.BWBytes,
		P50:       s.LatNS.Percentile["50.000000"] / 1e3,
		P99:       s.LatNS.Percentile["99.000000"] / 1e3,
		Ops:       s.TotalIOs,
	}
	return m, cfg.runtime + fioRamp, nil
}
