// Package sysmon keeps the Go runtime's system monitor from waking for
// every I/O of a lightly loaded server.
//
// The runtime's monitor thread sleeps deeply while every P is idle, and the
// first system call made after that wakes it (runtime.entersyscall); once
// woken, it polls every 20 µs for a millisecond or more before it can sleep
// deeply again. A storage server at queue depth 1 is idle between almost
// every pair of requests, so each request's first system call (the read of
// its header) woke the monitor: on a 2-vCPU guest that was 2 of the
// server's 4.5 context switches per I/O and about a fifth of its CPU.
//
// The runtime skips the deep sleep while a scheduler trace is configured.
// Quiet sets the longest trace period the runtime accepts (2^31-1 ms, about
// 24.8 days) so that the monitor keeps its ordinary schedule (sleeps that
// grow to 10 ms when there is nothing to do), and no trace is ever due,
// except that a host up for longer than that period prints one SCHED line
// to standard error at start and one per period after. The costs: the
// monitor's 100 wake-ups a second on an idle server, far fewer than the
// several thousand a second it saves under light load but not nothing (an
// idle server without it costs no measurable CPU); and a crash prints the
// scheduler's state (a line per thread and goroutine) before its panic
// message and stack, which stay last. So it is an option (--steady-monitor):
// `nexstor server` calls Quiet unless told not to, `nexstor dev` only when
// told to.
package sysmon

import (
	"os"
	"strings"
	"syscall"
)

// Setting is the GODEBUG entry Quiet adds.
const Setting = "schedtrace=2147483647"

// Quiet re-executes the running program (same PID, arguments and open
// files) with Setting added to GODEBUG, unless GODEBUG already sets
// schedtrace: GODEBUG=schedtrace=0 keeps the runtime's default. Call it
// first thing in a long-running command, before it opens anything. It
// returns only when nothing is to be done or the exec failed (the error
// says why; the program runs on unchanged).
func Quiet() error {
	env, ok := withSetting(os.Environ())
	if !ok {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return syscall.Exec(exe, os.Args, env)
}

// withSetting returns environ with Setting added to GODEBUG, and whether it
// added it: false when GODEBUG already names schedtrace.
func withSetting(environ []string) ([]string, bool) {
	out := make([]string, 0, len(environ)+1)
	found := false
	for _, kv := range environ {
		v, isGodebug := strings.CutPrefix(kv, "GODEBUG=")
		if !isGodebug {
			out = append(out, kv)
			continue
		}
		for _, e := range strings.Split(v, ",") {
			if strings.HasPrefix(strings.TrimSpace(e), "schedtrace=") {
				return environ, false
			}
		}
		if found {
			continue // a duplicate: the runtime reads the first
		}
		found = true
		if v == "" {
			out = append(out, "GODEBUG="+Setting)
		} else {
			out = append(out, "GODEBUG="+v+","+Setting)
		}
	}
	if !found {
		out = append(out, "GODEBUG="+Setting)
	}
	return out, true
}
