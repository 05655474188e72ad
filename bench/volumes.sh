#!/usr/bin/env bash
# Volume control-plane benchmark: on a `nexstor dev` system (3 nodes, one
# process, the management service on node 0, no TLS), create COUNT volumes
# (SIZE, 3 replicas, thin) one after another, publish and unpublish a sample
# of them over NVMe/TCP and over NBD, then delete them all, timing every
# nexctl call (wall clock, nexctl's process start included). The baseline
# is a no-op nexctl call: `system query`, timed before every measured call
# (interleaved, so that the machine's load hits both alike), and `volume
# list` on the empty system before anything is created. Prints a markdown
# table: median and p99 of each operation over all the rounds, raw and
# minus the median of the baseline, the median of each round, and the dev
# process's CPU time per call; then the medians of the creates and deletes
# by tenth of each round, to show whether a call slows as volumes
# accumulate.
#
# Usage: bench/volumes.sh [-n COUNT] [-p SAMPLE] [-s SIZE] [-r ROUNDS] [-d DIR] [-P]
#   -n COUNT   volumes created and deleted in each round (default 100)
#   -p SAMPLE  volumes of those published and unpublished, evenly spread,
#              once per protocol (default 20)
#   -s SIZE    size of each volume (default 16MiB)
#   -r ROUNDS  rounds of create, publish/unpublish, delete on the same
#              system (default 3)
#   -d DIR     scratch directory for the binaries and the dev system
#              (default: a new one under ${TMPDIR:-/var/tmp}); removed
#              afterwards unless KEEP=1
#   -P         run the system under bench/devpprof (the same system, plus a
#              pprof listener) and, after the measured calls, take CPU
#              profiles of an extra, unmeasured round of creates and of
#              deletes; prints their tops
# Ports: see BENCH_PORT_BASE in bench/lib.sh.
set -euo pipefail
export LC_ALL=C

COUNT=100
SAMPLE=20
SIZE=16MiB
ROUNDS=3
DIR=""
PROFILE=0
while getopts "n:p:s:r:d:Ph" opt; do
	case $opt in
	n) COUNT=$OPTARG ;;
	p) SAMPLE=$OPTARG ;;
	s) SIZE=$OPTARG ;;
	r) ROUNDS=$OPTARG ;;
	d) DIR=$OPTARG ;;
	P) PROFILE=1 ;;
	*) sed -n '2,31p' "$0"; exit 2 ;;
	esac
done
[ "$SAMPLE" -le "$COUNT" ] || { echo "volumes.sh: -p must not exceed -n" >&2; exit 2; }
[ "$COUNT" -ge 10 ] || { echo "volumes.sh: -n must be at least 10 (calls are also reported by tenths)" >&2; exit 2; }

for tool in go jq awk; do
	command -v "$tool" >/dev/null || { echo "volumes.sh: $tool is missing" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-volumes-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
cleanup() {
	dev_stop
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
log() { echo "volumes.sh: $*" >&2; }

log "building into $DIR/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl ./bench/devpprof)
NEXCTL=("$DIR/bin/nexctl" --insecure -a "$DEV_ACCESS")

NODES=3
# Thin volumes take no space until written; the pool only has to admit
# them: over-commit is bounded (250 % of the pool), and -P creates up to
# 4 x COUNT more.
POOL_SIZE=$((COUNT * $(numfmt --from=iec-i "${SIZE%B}") * 2 / 1073741824 + 2))GiB
log "starting the dev system ($NODES nodes, pools of $POOL_SIZE)"
dev_start "$DIR/bin" "$DIR/dev" "$NODES" "$POOL_SIZE" "$([ "$PROFILE" = 1 ] && echo pprof)"

declare -A LAT CPU CALLS # keyed by operation: µs samples; clock ticks; calls
declare -A LATR          # keyed by operation,round: µs samples in call order
ROUND=0
ERR="$DIR/nexctl.err"

# timed OP ARGS... runs nexctl ARGS and records its wall-clock time under OP;
# the dev process's CPU ticks are read outside the timed span.
timed() {
	local op=$1 t0 t1 c0 c1
	shift
	c0=$(cpu_ticks "$DEV_PID")
	t0=$EPOCHREALTIME
	if ! "${NEXCTL[@]}" "$@" >/dev/null 2>"$ERR"; then
		log "nexctl $* failed:"
		cat "$ERR" >&2
		exit 1
	fi
	t1=$EPOCHREALTIME
	c1=$(cpu_ticks "$DEV_PID")
	LAT[$op]+="$((${t1/./} - ${t0/./})) "
	LATR[$op,$ROUND]+="$((${t1/./} - ${t0/./})) "
	CPU[$op]=$((${CPU[$op]:-0} + c1 - c0))
	CALLS[$op]=$((${CALLS[$op]:-0} + 1))
}

# measured OP ARGS... times a baseline call, then the measured one.
measured() {
	timed "system query (baseline)" system query
	timed "$@"
}

name() { printf 'bench-%03d' "$1"; }

# The sample: every (COUNT/SAMPLE)-th volume.
SAMPLED=()
for i in $(seq "$SAMPLE"); do
	SAMPLED+=($((i * COUNT / SAMPLE)))
done

log "baseline: volume list on the empty system"
for _ in $(seq 20); do
	timed "volume list (empty system)" volume list
done
for ROUND in $(seq "$ROUNDS"); do
	log "round $ROUND of $ROUNDS: creating $COUNT volumes"
	for i in $(seq "$COUNT"); do
		measured "volume create" volume create "$(name "$i")" --size "$SIZE" --replicas 3 --thin
	done
	# Every node holds one replica of every volume (3 replicas on 3 nodes).
	for r in $(seq 0 $((NODES - 1))); do
		n=$("$DIR/bin/nexctl" --insecure --engine "$(dev_grpc "$r")" replica list -o json | jq '[.. | objects | select(has("owner") and .owner != "")] | length')
		[ "$n" = "$COUNT" ] || { log "node $r holds $n volume replicas, not $COUNT"; exit 1; }
	done
	log "publishing and unpublishing ${#SAMPLED[@]} of them, over nvmf and over nbd"
	for i in "${SAMPLED[@]}"; do
		for proto in nvmf nbd; do
			measured "volume publish ($proto)" volume publish "$(name "$i")" --protocol "$proto"
			measured "volume unpublish ($proto)" volume unpublish "$(name "$i")"
		done
	done
	log "deleting $COUNT volumes"
	for i in $(seq "$COUNT"); do
		measured "volume delete" volume delete "$(name "$i")"
	done
	n=$("${NEXCTL[@]}" volume list -o json | jq '[.. | objects | select(has("spec"))] | length')
	[ "$n" = 0 ] || { log "$n volumes are left after the deletes"; exit 1; }
	for r in $(seq 0 $((NODES - 1))); do
		n=$("$DIR/bin/nexctl" --insecure --engine "$(dev_grpc "$r")" replica list -o json | jq '[.. | objects | select(has("owner") and .owner != "")] | length')
		[ "$n" = 0 ] || { log "node $r still holds $n volume replicas after the deletes"; exit 1; }
	done
done

TCK=$(getconf CLK_TCK)
BASE=$(median <<<"${LAT[system query (baseline)]}")
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }
# per_round OP prints the median of each round, in ms.
per_round() {
	local r out=""
	for r in $(seq "$ROUNDS"); do
		out+="${out:+, }$(ms "$(median <<<"${LATR[$1,$r]:-}")")"
	done
	echo "$out"
}
row() {
	local op=$1 med p99 cpu rounds=""
	med=$(median <<<"${LAT[$op]}")
	p99=$(percentile 99 <<<"${LAT[$op]}")
	cpu=$(awk -v t="${CPU[$op]}" -v hz="$TCK" -v n="${CALLS[$op]}" 'BEGIN { printf "%.1f", t / hz * 1000 / n }')
	[[ $op == *empty* ]] || rounds=$(per_round "$op")
	if [[ $op == *baseline* || $op == *empty* ]]; then
		echo "| $op | ${CALLS[$op]} | $(ms "$med") | $(ms "$p99") | | | $rounds | $cpu |"
	else
		echo "| $op | ${CALLS[$op]} | $(ms "$med") | $(ms "$p99") | $(ms $((${med%.*} - ${BASE%.*}))) | $(ms $((${p99%.*} - ${BASE%.*}))) | $rounds | $cpu |"
	fi
}
# tenths OP prints a table row: the median of the calls in each tenth of
# every round (calls 1-10, 11-20, ... with 100 volumes), the rounds pooled,
# in ms.
# tenths OP LABEL SKIP does the same for the calls of OP after the first
# SKIP of each round, under LABEL.
tenths() {
	local k r row="| ${2:-$1} |" part skip=${3:-0}
	for k in $(seq 0 9); do
		part=""
		for r in $(seq "$ROUNDS"); do
			part+=" $(tr ' ' '\n' <<<"${LATR[$1,$r]}" | awk -v lo=$((skip + k * COUNT / 10)) -v hi=$((skip + (k + 1) * COUNT / 10)) 'NF { n++; if (n > lo && n <= hi) printf "%s ", $1 }')"
		done
		row+=" $(ms "$(median <<<"$part")") |"
	done
	echo "$row"
}

echo "$(machine_line); $NODES-node dev system$([ "$PROFILE" = 1 ] && echo " under bench/devpprof"), $ROUNDS rounds of $COUNT volumes of $SIZE, 3 replicas, thin; publish/unpublish of ${#SAMPLED[@]} of them per protocol and round."
echo
echo "| operation | calls | median ms | p99 ms | median − baseline ms | p99 − baseline ms | median per round ms | dev process CPU ms/call |"
echo "|---|---:|---:|---:|---:|---:|---|---:|"
for op in "system query (baseline)" "volume list (empty system)" "volume create" "volume publish (nvmf)" "volume unpublish (nvmf)" "volume publish (nbd)" "volume unpublish (nbd)" "volume delete"; do
	row "$op"
done
echo
echo "Baseline: the median of the interleaved \`system query\` calls ($(ms "${BASE%.*}") ms). p99 is nearest-rank over all the rounds' calls ($((ROUNDS * ${#SAMPLED[@]})) for publish and unpublish)."
echo
echo "Median ms by tenth of each round (the volumes that exist when a create runs grow from 0 to $((COUNT - 1)); a delete, from $COUNT down to 1):"
echo
hdr="| operation |"
sep="|---|"
for k in $(seq 0 9); do
	hdr+=" calls $((k * COUNT / 10 + 1))-$(((k + 1) * COUNT / 10)) |"
	sep+="---:|"
done
echo "$hdr"
echo "$sep"
tenths "volume create"
tenths "system query (baseline)" "baseline, before each create"
tenths "volume delete"
tenths "system query (baseline)" "baseline, before each delete" $((COUNT + 4 * ${#SAMPLED[@]}))
echo

if [ "$PROFILE" = 1 ]; then
	# An extra round, not measured: creates for PSEC seconds under a CPU
	# profile, then the deletes of those volumes under another.
	PSEC=5
	mkdir -p "$DIR/profiles"
	log "profiling creates for $PSEC s"
	curl -sf -o "$DIR/profiles/create.pprof" "http://$DEV_PPROF/debug/pprof/profile?seconds=$PSEC" &
	prof=$!
	made=0
	# Capped so that the pools admit them (see POOL_SIZE).
	while kill -0 "$prof" 2>/dev/null && [ "$made" -lt $((4 * COUNT)) ]; do
		made=$((made + 1))
		"${NEXCTL[@]}" volume create "prof-$made" --size "$SIZE" --replicas 3 --thin >/dev/null
	done
	wait "$prof"
	log "profiling the deletes of $made volumes"
	curl -sf -o "$DIR/profiles/delete.pprof" "http://$DEV_PPROF/debug/pprof/profile?seconds=$PSEC" &
	prof=$!
	for i in $(seq "$made"); do
		"${NEXCTL[@]}" volume delete "prof-$i" >/dev/null
	done
	wait "$prof"
	echo
	echo "Profiles: $made creates in $PSEC s, then their deletes (the profile spans $PSEC s: idle once they are done)."
	echo
	# Sorted by cumulative time: a control-plane call is a chain of
	# handlers, and the flat top is mostly the runtime.
	for f in create delete; do
		echo "#### $f: top of the CPU profile, by cumulative time"
		echo
		echo '```'
		go tool pprof -top -cum -nodecount=40 "$DIR/profiles/$f.pprof" 2>/dev/null | sed -n '4,46p'
		echo '```'
		echo
	done
fi
echo "Reproduce: bench/volumes.sh -n $COUNT -p $SAMPLE -s $SIZE -r $ROUNDS$([ "$PROFILE" = 1 ] && echo " -P")"
