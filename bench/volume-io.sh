#!/usr/bin/env bash
# Volume I/O benchmark: what a volume's nexus costs over NBD. On a `nexstor
# dev` system (3 nodes, one process), fio's nbd engine (libnbd) against
#   volume: a 1-replica thin volume, published over NBD on the node of its
#           replica (`nexctl volume publish --node`), so that the nexus's
#           only child is local;
#   raw:    a thin replica of the same size in the same pool of the same
#           node, created and shared over NBD directly through that node's
#           engine (`nexctl --engine ... replica create|share`);
# 4 KiB randread and randwrite at QD 32, the two targets in turn (the order
# alternating from round to round), ROUNDS rounds, median IOPS of the
# rounds and the ratio volume/raw, against the goal of 0.9x (judged on the
# ratio of the medians, one verdict line per workload; the median of the
# rounds' own ratios is shown too). Both targets are pre-filled (1 MiB
# sequential writes, end to end) so that randread reads allocated clusters.
# "dev CPU µs/IO" is the dev process's user+system CPU time over the run
# divided by the I/Os fio completed (every node is in that process; the idle
# ones cost next to nothing).
#
# Usage: bench/volume-io.sh [-s SIZE_MIB] [-t SECONDS] [-r ROUNDS] [-d DIR] [-P]
#   -s SIZE_MIB  size of the volume and of the raw replica (default 512)
#   -t SECONDS   runtime of each measured fio job (default 10; plus 2 s ramp)
#   -r ROUNDS    rounds; the median is reported (default 3)
#   -d DIR       scratch directory for the binaries and the dev system's pool
#                files (default: a new one under ${TMPDIR:-/var/tmp}; not
#                tmpfs: the pools use O_DIRECT); removed afterwards unless
#                KEEP=1
#   -P           run the system under bench/devpprof (the same system, plus
#                a pprof listener) and, after the measured rounds, run each
#                workload once more on each target under a CPU profile of
#                the process; prints their tops
# Ports: see BENCH_PORT_BASE in bench/lib.sh.
set -euo pipefail
export LC_ALL=C

SIZE_MIB=512
RUNTIME=10
RAMP=2
ROUNDS=3
DIR=""
PROFILE=0
while getopts "s:t:r:d:Ph" opt; do
	case $opt in
	s) SIZE_MIB=$OPTARG ;;
	t) RUNTIME=$OPTARG ;;
	r) ROUNDS=$OPTARG ;;
	d) DIR=$OPTARG ;;
	P) PROFILE=1 ;;
	*) sed -n '2,32p' "$0"; exit 2 ;;
	esac
done

for tool in fio go jq awk; do
	command -v "$tool" >/dev/null || { echo "volume-io.sh: $tool is missing (apt-get install fio jq)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "volume-io.sh: this fio has no nbd engine" >&2; exit 1; }
[ "$PROFILE" = 0 ] || command -v curl >/dev/null || { echo "volume-io.sh: -P needs curl" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-volume-io-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
cleanup() {
	dev_stop
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
log() { echo "volume-io.sh: $*" >&2; }

log "building into $DIR/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl ./bench/devpprof)
NEXCTL=("$DIR/bin/nexctl" --insecure -a "$DEV_ACCESS")

NODES=3
POOL_SIZE=$(((2 * SIZE_MIB + 1023) / 1024 + 1))GiB
log "starting the dev system ($NODES nodes, pools of $POOL_SIZE)"
dev_start "$DIR/bin" "$DIR/dev" "$NODES" "$POOL_SIZE" "$([ "$PROFILE" = 1 ] && echo pprof)"

# The volume, published on its replica's node.
vol=$("${NEXCTL[@]}" volume create bench-io --size "${SIZE_MIB}MiB" --replicas 1 --thin --protocol nbd -o json)
NODE=$(jq -r '.status.replicas[0].node' <<<"$vol")
RANK=$(jq -r '.status.replicas[0].rank // 0' <<<"$vol")
POOL=$(jq -r '.status.replicas[0].pool' <<<"$vol")
pub=$("${NEXCTL[@]}" volume publish bench-io --node "$NODE" --protocol nbd -o json)
VOL_URI=$(jq -r '.status.target.uri' <<<"$pub")
[ "$(jq -r '.status.target.node' <<<"$pub")" = "$NODE" ] || { log "the volume was published on $(jq -r '.status.target.node' <<<"$pub"), not on its replica's node $NODE"; exit 1; }
[ "$(jq -r '.status.replicas[0].local' <<<"$pub")" = true ] || { log "the nexus's child is not local: $(jq -c '.status.replicas[0]' <<<"$pub")"; exit 1; }

# The raw replica, beside the volume's in the same pool.
ENGINE=("$DIR/bin/nexctl" --insecure --engine "$(dev_grpc "$RANK")")
"${ENGINE[@]}" replica create bench-raw --pool "$POOL" --size "${SIZE_MIB}MiB" --thin >/dev/null
RAW_URI=$("${ENGINE[@]}" replica share bench-raw --protocol nbd | tail -n1)
log "volume: $VOL_URI (replica on $NODE, pool $POOL); raw: $RAW_URI"

declare -A URI=([volume]=$VOL_URI [raw]=$RAW_URI)
TARGETS=(volume raw)
# name|fio options
WORKLOADS=(
	"randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
	"randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
)
COMMON="--numjobs=1 --size=${SIZE_MIB}m --time_based --runtime=$RUNTIME --ramp_time=$RAMP --randrepeat=0 --norandommap --group_reporting --output-format=json"
TCK=$(getconf CLK_TCK)
declare -A IOPS P99 CPU # keyed by target,workload: space-separated samples

run_one() { # run_one TARGET WORKLOAD [KEY]: the samples go under KEY (TARGET)
	local t=$1 w=$2 key=${3:-$1} name opts out dir c0 c1 ios
	name=${w%%|*}
	opts=${w#*|}
	out="$DIR/$key-$name.json"
	dir=write
	[[ $name == randread* ]] && dir=read
	c0=$(cpu_ticks "$DEV_PID")
	# fio prints a note before the JSON document.
	# shellcheck disable=SC2086
	fio --name="$name" --ioengine=nbd --uri="${URI[$t]}" $opts $COMMON | sed -n '/^{/,$p' >"$out"
	c1=$(cpu_ticks "$DEV_PID")
	if [ "$(jq '.jobs[0].error' "$out")" != 0 ]; then
		log "$t: $name: fio reported an error"
		cat "$out" >&2
		exit 1
	fi
	IOPS[$key,$name]+="$(jq ".jobs[0].$dir.iops" "$out") "
	P99[$key,$name]+="$(jq ".jobs[0].$dir.clat_ns.percentile[\"99.000000\"] / 1000" "$out") "
	# I/Os over the whole run, ramp included, to divide the CPU time by.
	ios=$(jq ".jobs[0].$dir.total_ios" "$out")
	CPU[$key,$name]+="$(awk -v t=$((c1 - c0)) -v hz="$TCK" -v n="$ios" -v r="$RUNTIME" -v ramp="$RAMP" \
		'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / (n * (r + ramp) / r); else print 0 }') "
}

for t in "${TARGETS[@]}"; do
	log "$t: pre-fill"
	fio --name=prefill --ioengine=nbd --uri="${URI[$t]}" --rw=write --bs=1m --iodepth=8 --size="${SIZE_MIB}m" --output-format=json >/dev/null
done
START="$(machine_line)"
for i in $(seq "$ROUNDS"); do
	order=("${TARGETS[@]}")
	[ $((i % 2)) = 1 ] || order=(raw volume)
	for w in "${WORKLOADS[@]}"; do
		for t in "${order[@]}"; do
			log "round $i of $ROUNDS: ${w%%|*}: $t"
			run_one "$t" "$w"
		done
	done
done
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "$PROFILE" = 1 ]; then
	mkdir -p "$DIR/profiles"
	for w in "${WORKLOADS[@]}"; do
		for t in "${TARGETS[@]}"; do
			log "profile: ${w%%|*}: $t"
			# The profile spans the measured part of the run, not the ramp.
			(sleep "$RAMP" && curl -sf -o "$DIR/profiles/${w%%|*}-$t.pprof" "http://$DEV_PPROF/debug/pprof/profile?seconds=$RUNTIME") &
			prof=$!
			run_one "$t" "$w" "profiled-$t"
			wait "$prof"
		done
	done
fi

GOALS=() # one verdict line per workload, printed under the table
fmt0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
echo "$START (load average $END_LOAD at the end); $NODES-node dev system$([ "$PROFILE" = 1 ] && echo " under bench/devpprof"), pools of $POOL_SIZE on $(df -T "$DIR" | awk 'NR==2 { print $2 }'), volume and raw replica of ${SIZE_MIB} MiB (thin, pre-filled) in pool $POOL of $NODE, ${RUNTIME} s per run (+${RAMP} s ramp), median of $ROUNDS rounds, $(fio --version) ioengine=nbd."
echo
echo "| workload | volume IOPS | raw IOPS | volume/raw | median of the rounds' volume/raw | goal | volume p99 µs | raw p99 µs | dev CPU µs/IO volume | raw | volume IOPS per round | raw IOPS per round |"
echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|"
for w in "${WORKLOADS[@]}"; do
	n=${w%%|*}
	vi=$(median <<<"${IOPS[volume,$n]}")
	ri=$(median <<<"${IOPS[raw,$n]}")
	# Each round runs the two targets back to back: the ratio within a round
	# sees the same load on both, so its median is steadier than the ratio of
	# the medians.
	pr=$(paste -d' ' <(tr ' ' '\n' <<<"${IOPS[volume,$n]}" | awk 'NF') <(tr ' ' '\n' <<<"${IOPS[raw,$n]}" | awk 'NF') |
		awk '$2 > 0 { print $1 / $2 }' | median)
	verdict=$(awk -v a="$vi" -v b="$ri" 'BEGIN { if (b > 0 && a / b >= 0.9) print "≥ 0.9x: met"; else print "≥ 0.9x: **missed**" }')
	GOALS+=("- $n volume/raw IOPS $(ratio "$vi" "$ri") (goal >= 0.9x): ${verdict#*: }")
	rounds() { tr ' ' '\n' | awk 'NF { printf "%s%.0f", sep, $1; sep = ", " }'; }
	echo "| $n | $(fmt0 "$vi") | $(fmt0 "$ri") | $(ratio "$vi" "$ri") | $(awk -v v="$pr" 'BEGIN { printf "%.2fx", v }') | $verdict | $(fmt0 "$(median <<<"${P99[volume,$n]}")") | $(fmt0 "$(median <<<"${P99[raw,$n]}")") | $(median <<<"${CPU[volume,$n]}") | $(median <<<"${CPU[raw,$n]}") | $(rounds <<<"${IOPS[volume,$n]}") | $(rounds <<<"${IOPS[raw,$n]}") |"
done
echo
printf '%s\n' "${GOALS[@]}"
echo
if [ "$PROFILE" = 1 ]; then
	echo "The profiled runs (one more per workload and target, after the measured rounds; the profile covers the $RUNTIME s after the ramp):"
	echo
	echo "| workload | target | IOPS | dev CPU µs/IO |"
	echo "|---|---|---:|---:|"
	for w in "${WORKLOADS[@]}"; do
		for t in "${TARGETS[@]}"; do
			echo "| ${w%%|*} | $t | $(fmt0 "${IOPS[profiled-$t,${w%%|*}]}") | ${CPU[profiled-$t,${w%%|*}]% } |"
		done
	done
	echo
	print_profiles "$DIR/profiles" 4,35
fi
echo "Reproduce: bench/volume-io.sh -s $SIZE_MIB -t $RUNTIME -r $ROUNDS$([ "$PROFILE" = 1 ] && echo " -P")"
