#!/usr/bin/env bash
# Nexus benchmark: 4 KiB random writes and reads at QD 32 and 1 MiB
# sequential writes at QD 8 on a bare pool replica and on nexuses with 1, 2
# and 3 local children (each a pre-filled thin replica in its own pool
# file), interleaved, median of the runs; then an idle full rebuild into a
# fresh replica against a plain O_DIRECT dd copy of the same bytes; then the
# same workloads on RAM devices with no added latency (the nexus's own cost:
# every write is CPU, 1/3 of a replica is the ceiling of a 3-way mirror);
# then those again with every child over NVMe/TCP on loopback (nexusbench
# -remote: what the hops to remote children cost, and 3-way writes against
# one remote child, goal >= 0.5x).
#
# Usage: bench/nexus.sh [-t SECONDS] [-r REPEAT] [-s MIB] [-d DIR] [-o OUTDIR] [-l] [-- nexusbench flags]
#   -t SECONDS  runtime of each measured run (default 5)
#   -r REPEAT   runs of each workload, target, rebuild and copy (default 3)
#   -s MIB      size of each replica, and of the rebuild and copy (default 512)
#   -d DIR      directory for the pool files (default: a new one under
#               ${TMPDIR:-/var/tmp}; it must not be tmpfs, for O_DIRECT)
#   -o OUTDIR   keep the reports, the samples (JSON) and the CPU profiles here
#               (default: a new directory under ${TMPDIR:-/var/tmp})
#   -l          also run the workloads with the pools on RAM devices that add
#               100 µs to every operation (independent devices, no shared
#               disk: the nexus's own cost)
# Flags after -- go to the program (go run ./bench/nexusbench -h lists them).
#
# Prints the markdown report (tables, ratios, goal verdicts) and the top of
# the CPU profiles of the first 4 KiB random write run on the replica and on
# the 3-child nexus.
set -euo pipefail

RUNTIME=5
REPEAT=3
SIZE=512
DIR=""
OUT=""
LAT=0
while getopts "t:r:s:d:o:lh" opt; do
	case $opt in
	t) RUNTIME=$OPTARG ;;
	r) REPEAT=$OPTARG ;;
	s) SIZE=$OPTARG ;;
	d) DIR=$OPTARG ;;
	o) OUT=$OPTARG ;;
	l) LAT=1 ;;
	*) sed -n '2,28p' "$0"; exit 2 ;;
	esac
done
shift $((OPTIND - 1))

for tool in go dd; do
	command -v "$tool" >/dev/null || { echo "nexus.sh: $tool is missing" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-nexus-bench-out.XXXXXX")
mkdir -p "$OUT/profiles"
echo "nexus.sh: building; output in $OUT" >&2
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$OUT/nexusbench" ./bench/nexusbench)

args=(-t "$RUNTIME" -r "$REPEAT" -size "$SIZE")
[ -z "$DIR" ] || args+=(-dir "$DIR")
echo "### Pool files"
echo
"$OUT/nexusbench" "${args[@]}" -profile "$OUT/profiles" -json "$OUT/samples.json" "$@" | tee "$OUT/report.md"
echo
echo "### RAM devices (no added latency: the nexus's own cost)"
echo
"$OUT/nexusbench" "${args[@]}" -backing lat -lat 0s -size 256 -json "$OUT/samples-ram.json" "$@" | tee "$OUT/report-ram.md"
echo
echo "### RAM devices, every child over NVMe/TCP (the hops' cost; 3-way against one remote child)"
echo
"$OUT/nexusbench" "${args[@]}" -backing lat -lat 0s -size 256 -remote -json "$OUT/samples-remote.json" "$@" | tee "$OUT/report-remote.md"
if [ "$LAT" = 1 ]; then
	echo
	echo "### RAM devices with 100 µs latency"
	echo
	"$OUT/nexusbench" "${args[@]}" -backing lat -size 256 -json "$OUT/samples-lat.json" "$@" | tee "$OUT/report-lat.md"
fi

echo
print_profiles "$OUT/profiles" 4,33 | tee "$OUT/profiles.md"
echo "Reproduce: bench/nexus.sh -t $RUNTIME -r $REPEAT -s $SIZE$([ "$LAT" = 1 ] && echo " -l")${*:+ -- $*}"
