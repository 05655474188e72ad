#!/usr/bin/env bash
# NBD benchmark: fio's nbd engine against
#   (a) Nexstor: `nexstor server`, a file pool, a thin replica shared over NBD;
#   (b) nbdkit's file plugin serving a plain file on the same filesystem;
#   (c) fio directly on a plain file (libaio, direct=1), the backing store;
# with the same workloads, sizes and runtime everywhere. Prints a markdown
# table with IOPS, bandwidth and the ratios Nexstor/nbdkit and Nexstor/raw.
#
# Usage: bench/nbd.sh [-d DIR] [-s SIZE_MIB] [-t RUNTIME_S] [-c direct|buffered]
#   -d DIR       scratch directory on the filesystem to measure (default: a
#                new directory under ${TMPDIR:-/var/tmp}); removed afterwards
#   -s SIZE_MIB  size of the replica and of the plain files (default 1024)
#   -t SECONDS   runtime of each measured workload (default 15; 2 s ramp)
#   -c MODE      direct (default): the pool file is opened with O_DIRECT and
#                nbdkit uses cache=none; buffered: both use the page cache
# Every target is pre-filled (written once, 1 MiB sequential writes) before
# it is measured, so that randread on the thin replica reads allocated
# clusters rather than holes.
set -euo pipefail

SIZE_MIB=1024
RUNTIME=15
RAMP=2
CACHE=direct
DIR=""
while getopts "d:s:t:c:h" opt; do
	case $opt in
	d) DIR=$OPTARG ;;
	s) SIZE_MIB=$OPTARG ;;
	t) RUNTIME=$OPTARG ;;
	c) CACHE=$OPTARG ;;
	*) sed -n '2,20p' "$0"; exit 2 ;;
	esac
done
case $CACHE in direct | buffered) ;; *) echo "nbd.sh: -c must be direct or buffered" >&2; exit 2 ;; esac

for tool in fio nbdkit nbdinfo jq go; do
	command -v "$tool" >/dev/null || { echo "nbd.sh: $tool is missing (apt-get install fio nbdkit libnbd-bin jq)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "nbd.sh: this fio has no nbd engine" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GRPC_ADDR=${NEXSTOR_GRPC:-127.0.0.1:20124}
NBD_PORT=${NEXSTOR_NBD_PORT:-20809}
NBDKIT_PORT=${NBDKIT_PORT:-20810}

if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-nbd-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

log() { echo "nbd.sh: $*" >&2; }

log "building nexstor and nexctl"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl)
NEXCTL=("$DIR/bin/nexctl" --engine "$GRPC_ADDR")

# Workloads: name, fio options.
WORKLOADS=(
	"randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
	"randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
	"write-1m-qd8|--rw=write --bs=1m --iodepth=8"
)
COMMON="--numjobs=1 --size=${SIZE_MIB}m --time_based --runtime=$RUNTIME --ramp_time=$RAMP --randrepeat=0 --norandommap --group_reporting --output-format=json"

# run_fio TARGET-OPTIONS... : runs every workload, appends "target workload iops bw" lines.
declare -A IOPS BW
measure() {
	local target=$1; shift
	local w name opts out
	log "$target: pre-fill"
	fio --name=prefill "$@" --rw=write --bs=1m --iodepth=8 --size="${SIZE_MIB}m" --output-format=json >"$DIR/prefill-$target.json"
	for w in "${WORKLOADS[@]}"; do
		name=${w%%|*}
		opts=${w#*|}
		log "$target: $name"
		out="$DIR/$target-$name.json"
		# shellcheck disable=SC2086
		# fio may print notes before the JSON document.
		fio --name="$name" "$@" $opts $COMMON | sed -n '/^{/,$p' >"$out"
		local dir=write
		[[ $name == randread* ]] && dir=read
		IOPS[$target,$name]=$(jq ".jobs[0].$dir.iops" "$out")
		BW[$target,$name]=$(jq ".jobs[0].$dir.bw_bytes" "$out")
		if [ "$(jq '.jobs[0].error' "$out")" != 0 ]; then
			log "$target: $name: fio reported an error"; cat "$out" >&2; exit 1
		fi
	done
}

wait_for() { # wait_for DESCRIPTION COMMAND...
	local what=$1; shift
	for _ in $(seq 100); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	log "$what did not come up"; return 1
}

# (a) Nexstor
POOL_URI="file://$DIR/pool.img?size=$((SIZE_MIB + 512))MiB"
[ "$CACHE" = buffered ] && POOL_URI="$POOL_URI&direct=false"
"$DIR/bin/nexstor" server --data-dir "$DIR/nexstor" --grpc "$GRPC_ADDR" --nbd "127.0.0.1:$NBD_PORT" --log-level warn >"$DIR/nexstor.log" 2>&1 &
PIDS+=($!)
wait_for "nexstor server" "${NEXCTL[@]}" version
"${NEXCTL[@]}" pool create p0 "$POOL_URI" >/dev/null
"${NEXCTL[@]}" replica create r0 --pool p0 --size "${SIZE_MIB}MiB" --thin >/dev/null
NEXSTOR_URI=$("${NEXCTL[@]}" replica share r0 --protocol nbd | tail -n1)
log "nexstor export: $NEXSTOR_URI"
measure nexstor --ioengine=nbd --uri="$NEXSTOR_URI"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
rm -f "$DIR/pool.img"

# (b) nbdkit file plugin
truncate -s "${SIZE_MIB}M" "$DIR/plain.img"
NBDKIT_OPTS=()
[ "$CACHE" = direct ] && NBDKIT_OPTS=(cache=none)
nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$NBDKIT_PORT" file "$DIR/plain.img" "${NBDKIT_OPTS[@]}" &
PIDS+=($!)
wait_for nbdkit nbdinfo "nbd://127.0.0.1:$NBDKIT_PORT"
measure nbdkit --ioengine=nbd --uri="nbd://127.0.0.1:$NBDKIT_PORT"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
rm -f "$DIR/plain.img"

# (c) raw file, O_DIRECT
truncate -s "${SIZE_MIB}M" "$DIR/raw.img"
measure raw --ioengine=libaio --direct=1 --filename="$DIR/raw.img"

# Report.
fmt_iops() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt_mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
FS=$(df -T "$DIR" | awk 'NR==2 { print $2 }')
echo "NBD benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, ${SIZE_MIB} MiB on $FS, ${RUNTIME}s per workload, cache=$CACHE, $(fio --version), $(nbdkit --version | head -n1)"
echo
echo "| workload | Nexstor IOPS | Nexstor MiB/s | nbdkit IOPS | nbdkit MiB/s | raw IOPS | raw MiB/s | Nexstor/nbdkit | Nexstor/raw |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for w in "${WORKLOADS[@]}"; do
	n=${w%%|*}
	echo "| $n | $(fmt_iops "${IOPS[nexstor,$n]}") | $(fmt_mib "${BW[nexstor,$n]}") | $(fmt_iops "${IOPS[nbdkit,$n]}") | $(fmt_mib "${BW[nbdkit,$n]}") | $(fmt_iops "${IOPS[raw,$n]}") | $(fmt_mib "${BW[raw,$n]}") | $(ratio "${IOPS[nexstor,$n]}" "${IOPS[nbdkit,$n]}") | $(ratio "${IOPS[nexstor,$n]}" "${IOPS[raw,$n]}") |"
done
echo
echo "Reproduce: bench/nbd.sh -s $SIZE_MIB -t $RUNTIME -c $CACHE"
