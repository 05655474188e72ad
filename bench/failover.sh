#!/usr/bin/env bash
# Failover benchmark: the longest I/O stall an application sees while a
# volume's nexus moves, with the Linux kernel as the NVMe/TCP host.
#
# It runs TestFailoverStall (test/system/failover_bench_test.go): 4
# `nexstor server --control` processes on loopback (node0 the only access
# point; heartbeats every 200ms, a member unresponsive after 1500ms without
# one; move.grace at its default, 2s), a thin 3-replica volume published to
# a QEMU guest (Debian's kernel, native NVMe multipath, `nexstor agent`
# with --interval 500ms following the volume). In the guest, fio writes
# 4 KiB blocks at random, one at a time (iodepth=1, O_DIRECT), to the
# volume's block device. Each round: a planned move (`nexctl volume move`
# to a node other than the access point), then a SIGKILL of that node (the
# volume fails over; the node is started again and the volume heals before
# the next round). fio runs from 2 s before each event until 2 s after the
# guest has a live path to the new place and none to the old one; its
# maximum write latency is the stall of that event. Also shown: how long
# the move took as the benchmark's host side saw it (from the kill, or
# from the start of nexctl volume move, to the new target recorded).
#
# A first run without any event gives the longest write of a quiet volume.
#
# Usage: bench/failover.sh [-r ROUNDS] [-R]
#   -r ROUNDS  rounds (default 5)
#   -R         the agent does not report failed paths (--report-every=-1s):
#              a killed node is noticed by the heartbeat timeout alone
# Needs what the kernel tests need (qemu-system-x86_64, the cached Debian
# kernel: scripts/install-test-deps.sh) and fio. Prints Markdown on stdout;
# the go test log goes to stderr.
set -euo pipefail
export LC_ALL=C

ROUNDS=5
NO_REPORT=
while getopts "r:Rh" opt; do
	case $opt in
	r) ROUNDS=$OPTARG ;;
	R) NO_REPORT=1 ;;
	*) sed -n '2,29p' "$0"; exit 2 ;;
	esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp "${TMPDIR:-/tmp}/nexstor-failover.XXXXXX")
trap 'rm -f "$OUT"' EXIT
cd "$ROOT"
NEXSTOR_BENCH_FAILOVER=$ROUNDS NEXSTOR_BENCH_OUT=$OUT NEXSTOR_BENCH_NO_REPORT=$NO_REPORT \
	go test -count=1 -run '^TestFailoverStall$' -v -timeout $((ROUNDS * 4 + 15))m ./test/system >&2
# A test that skips (no QEMU, no cached kernel) passes without results:
# that is no measurement, and must not pass for one.
[ -s "$OUT" ] || { echo "failover.sh: TestFailoverStall wrote no results (skipped? see its log above)" >&2; exit 1; }
echo "## Failover: the longest write stall ($(date -u +%Y-%m-%d), $(nproc) CPUs, $(go version | awk '{print $3}'))"
echo
cat "$OUT"
