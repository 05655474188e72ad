#!/usr/bin/env bash
# NVMe-oF benchmark: the same pool replicas (a thin replica on a malloc
# device, one on an O_DIRECT file, both pre-filled) through
#   nvmf:   internal/loadgen over our Go NVMe/TCP initiator -> our target;
#   nbd:    fio ioengine=nbd (libnbd) -> our NBD server;
#   nbd-go: internal/loadgen over a minimal Go NBD client -> our NBD server
#           (the same load generator as nvmf, for a like-for-like ratio);
#   raw:    internal/loadgen directly on the replica's Device (the backing
#           store: no network, no protocol);
# 4 KiB randread/randwrite at QD 1 and 32 and 128 KiB sequential read/write
# at QD 8, each workload on every path and backing in turn, median of the
# runs. The replicas and both servers live in one server process (the Go
# program re-executed with -serve) on loopback; the initiator, the Go NBD
# client and fio run outside it. The raw path runs inside the server process
# (that is where the replica is), while the servers are idle.
#
# Usage: bench/nvmf.sh [-t SECONDS] [-r REPEAT] [-d DIR] [-o OUTDIR] [-- nvmfbench flags]
#   -t SECONDS  runtime of each measured run (default 4; fio adds a 1 s ramp)
#   -r REPEAT   runs per workload, path and backing; medians reported (default 3)
#   -d DIR      directory for the file-backed pool (default: a new one under
#               ${TMPDIR:-/var/tmp}; it must not be tmpfs, for O_DIRECT)
#   -o OUTDIR   keep the report, the samples (JSON) and the CPU profiles here
#               (default: a new directory under ${TMPDIR:-/var/tmp})
# Flags after -- go to the program (go run ./bench/nvmfbench -h lists them:
# -workloads, -paths, -backings, -malloc-size, -file-size, -verify).
#
# Prints the markdown report (tables, ratios, goal verdicts) and the top of
# the server's and the initiator's CPU profiles taken during the first
# randread-4k-qd32 run of each network path.
set -euo pipefail

RUNTIME=4
REPEAT=3
DIR=""
OUT=""
while getopts "t:r:d:o:h" opt; do
	case $opt in
	t) RUNTIME=$OPTARG ;;
	r) REPEAT=$OPTARG ;;
	d) DIR=$OPTARG ;;
	o) OUT=$OPTARG ;;
	*) sed -n '2,27p' "$0"; exit 2 ;;
	esac
done
shift $((OPTIND - 1))

for tool in fio go; do
	command -v "$tool" >/dev/null || { echo "nvmf.sh: $tool is missing (apt-get install fio)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "nvmf.sh: this fio has no nbd engine" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-nvmf-bench-out.XXXXXX")
mkdir -p "$OUT/profiles"
echo "nvmf.sh: building; output in $OUT" >&2
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$OUT/nvmfbench" ./bench/nvmfbench)

args=(-t "$RUNTIME" -r "$REPEAT" -profile "$OUT/profiles" -json "$OUT/samples.json")
[ -z "$DIR" ] || args+=(-dir "$DIR")
"$OUT/nvmfbench" "${args[@]}" "$@" | tee "$OUT/report.md"

echo
print_profiles "$OUT/profiles" 4,35 | tee "$OUT/profiles.md"
echo "Reproduce: bench/nvmf.sh -t $RUNTIME -r $REPEAT${*:+ -- $*}"
