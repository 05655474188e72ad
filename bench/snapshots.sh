#!/usr/bin/env bash
# Snapshot costs in the pool (internal/pool benchmarks, on a file-backed
# pool in DIR):
#
#   - BenchmarkSnapshotPause: CreateSnapshot of a thin replica with 64 MiB
#     and 1 GiB allocated, 4 MiB and 64 KiB clusters: the time I/O to the
#     replica is paused (one metadata log write and flush, and copying the
#     cluster map), plus microseconds of checks. BenchmarkSnapshotPauseMem
#     is the same on a RAM device (1 GiB allocated): the CPU part alone.
#   - BenchmarkFirstWrite: one 4 KiB write at queue depth 1, by cluster size
#     (64 KiB .. 4 MiB), to a cluster the replica holds alone ("plain"), to
#     an unallocated one ("fresh": zeroing, the write, a metadata commit),
#     and to one shared with a snapshot ("cow": copying the rest of the
#     cluster, the write, a metadata commit).
#
# Each benchmark runs COUNT times with ITERS iterations; the script prints
# the median time per operation of each as a Markdown table. (No goal: the
# costs are reported, not judged.)
#
# Usage: bench/snapshots.sh [-k COUNT] [-i ITERS] [-d DIR]
#   -k COUNT  runs of each benchmark (default 5)
#   -i ITERS  iterations per run (default 200)
#   -d DIR    directory for the pool files (default: TMPDIR or /tmp);
#             put it on the file system to measure
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

count=5 iters=200 dir=${TMPDIR:-/tmp}
while getopts "k:i:d:h" o; do
	case $o in
	k) count=$OPTARG ;;
	i) iters=$OPTARG ;;
	d) dir=$OPTARG ;;
	*) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	esac
done

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# A plain line, not a heading, and no path of this machine: bench/all.sh
# puts the report into a results file that is committed.
echo "$(date -u +%FT%TZ), $(git rev-parse --short HEAD), $(go version | cut -d' ' -f3), $(nproc) CPUs, pool files on $(df -T "$dir" | awk 'NR == 2 { print $2 }')"
TMPDIR=$dir go test -run '^$' -bench 'BenchmarkSnapshotPause|BenchmarkFirstWrite' -benchtime "${iters}x" -count "$count" \
	./internal/pool/ 2>/dev/null | grep '^Benchmark' >"$out"

echo
echo "| benchmark | median per operation (µs) | runs |"
echo "|---|---:|---:|"
for name in $(awk '{ sub(/-[0-9]+$/, "", $1); print $1 }' "$out" | awk '!seen[$0]++'); do
	vals=$(awk -v n="$name" '{ b = $1; sub(/-[0-9]+$/, "", b) } b == n { print $3 / 1000 }' "$out")
	printf '| %s | %.0f | %d |\n' "${name#Benchmark}" "$(echo "$vals" | median)" "$(echo "$vals" | wc -l)"
done
