#!/usr/bin/env bash
# PVC-to-staged benchmark: how long a Kubernetes pod waits for a new
# volume, from the claim to the file system mounted at the staging path
# of its node: CreateVolume + ControllerPublishVolume + NodeStageVolume.
#
# It runs TestPVCStaged (test/system/pvc_bench_test.go): 3 `nexstor
# server --control` processes on loopback, `nexstor csi --mode controller`
# called over its unix socket, and the CSI node plugin's code in a QEMU
# guest (the guest agent's csi-stage step, the Linux kernel as the NVMe/TCP
# host). Each round: a thin 3-replica volume of 1 GiB is created and
# published (timed on the host), staged with ext4 (so with mkfs; timed in
# the guest), unstaged, staged again now that it holds a file system (no
# mkfs), unstaged, unpublished and deleted. Then the baseline without CSI:
# another such volume, attached by the guest kernel directly (connect,
# mke2fs with the plugin's options, mount). Prints per-step medians, min
# and max, the load average, and NodeStage over the baseline as a ratio.
#
# Usage: bench/pvc.sh [-r ROUNDS]
#   -r ROUNDS  rounds (default 10)
# Needs what the kernel tests need (qemu-system-x86_64, the cached Debian
# kernel, e2fsprogs: scripts/install-test-deps.sh). Prints Markdown on
# stdout; the go test log goes to stderr.
set -euo pipefail
export LC_ALL=C

ROUNDS=10
while getopts "r:h" opt; do
	case $opt in
	r) ROUNDS=$OPTARG ;;
	*) sed -n '2,22p' "$0"; exit 2 ;;
	esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp "${TMPDIR:-/tmp}/nexstor-pvc.XXXXXX")
trap 'rm -f "$OUT"' EXIT
cd "$ROOT"
NEXSTOR_BENCH_PVC=$ROUNDS NEXSTOR_BENCH_OUT=$OUT \
	go test -count=1 -run '^TestPVCStaged$' -v -timeout $((ROUNDS * 2 + 15))m ./test/system >&2
# A test that skips (no QEMU, no cached kernel) passes without results:
# that is no measurement, and must not pass for one.
[ -s "$OUT" ] || { echo "pvc.sh: TestPVCStaged wrote no results (skipped? see its log above)" >&2; exit 1; }
echo "## PVC to staged ($(date -u +%Y-%m-%d), $(nproc) CPUs, $(go version | awk '{print $3}'))"
echo
cat "$OUT"
