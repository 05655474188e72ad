#!/usr/bin/env bash
# Time-to-heal benchmark. A system of 4 `nexstor server --control`
# processes on loopback (node0 the only access point, with embedded etcd;
# TLS from `nexstor certgen`; heartbeats every 200ms, a member unresponsive
# after 1500ms without one, as test/system uses), pools of one sparse file
# each, JSON logs.
#
# Replacement (rebuild.partial_wait: 0s, gc.grace: 0s): for each size and
# round, a thin 3-replica volume is created, published over NBD on a node
# that holds one of its replicas, filled end to end with random bytes
# (nbdcopy --flush), and one other replica's node (never node0, never the
# nexus's) is SIGKILLed. The volume is left idle for IDLE seconds (-w): a
# volume that heals by itself is measured from the kill. One that has not
# started a repair by then gets one 4 KiB write through its nexus (fio, a
# known pattern, also applied to the expected content), which makes the
# nexus find the dead child; it is then measured from that write. Either
# way the clock stops when `nexctl volume get -o json` reports healthy ==
# 3, no repairs and no replica on the killed node. The phases come from the
# logs: detection (to node0's "member unresponsive" when idle, to the
# nexus's "child offline" after the write), placement (to the nexus's
# "rebuild started" of the new replica: placed, created, shared, added),
# rebuild (to "rebuild completed"), and reporting (to the poll that sees it
# healthy). The rebuild's rate is the engine's (`nexctl nexus rebuild
# status`); the baseline is `dd iflag=direct oflag=direct bs=1M` copying a
# file of the volume's size between two files of the pools' file system,
# right after each heal. The replicas are then compared (`nexctl volume
# verify`) and the volume is read back against what was written. The
# killed node is restarted and rejoins before the next round.
#
# Resync (rebuild.partial_wait: 60s; the same nodes restarted with it): a
# volume of -v MiB, filled; a replica's node is SIGKILLed; -n MiB are
# written through the nexus sequentially (in a second case, -N MiB of
# random 4 KiB writes); once the volume reports the replica waiting and
# node0 the member unresponsive, the node is restarted; the clock runs from
# the restart until healthy == 3 and no repairs, with the same replica. The
# resync's bytes (the engine's partial rebuild) are compared with what was
# written.
#
# Usage: bench/heal.sh [-s SIZES] [-r ROUNDS] [-w IDLE] [-n MIB] [-N MIB] [-v MIB] [-R] [-d DIR]
#   -s SIZES  volume sizes in MiB, comma-separated (default 64,1024)
#   -r ROUNDS rounds of each case (default 3)
#   -w IDLE   seconds an idle volume is given to start its repair before it
#             is written to (default 30)
#   -n MIB    written sequentially while the node is away in the resync case
#             (default 32)
#   -N MIB    written as random 4 KiB writes while the node is away in the
#             resync case (default 1: 256 writes)
#   -v MIB    size of the resync case's volume (default 256)
#   -R        skip the resync case
#   -d DIR    scratch directory for the binaries, certificates, pools and
#             logs (default: a new one under ${TMPDIR:-/var/tmp}; not tmpfs:
#             the pools use O_DIRECT); removed afterwards unless KEEP=1
# Ports: BENCH_PORT_BASE (default 21000): node i's gRPC base+124+i, NVMe/TCP
# base+420+i, NBD base+809+i, etcd base+379+2i and base+380+2i.
# Prints Markdown on stdout; progress on stderr.
set -euo pipefail
export LC_ALL=C

SIZES=64,1024
ROUNDS=3
RESYNC_WRITE_MIB=32
RANDOM_WRITE_MIB=1
RESYNC_MIB=256
RESYNC=1
IDLE=30
DIR=""
while getopts "s:r:w:n:N:v:Rd:h" opt; do
	case $opt in
	s) SIZES=$OPTARG ;;
	r) ROUNDS=$OPTARG ;;
	w) IDLE=$OPTARG ;;
	n) RESYNC_WRITE_MIB=$OPTARG ;;
	N) RANDOM_WRITE_MIB=$OPTARG ;;
	v) RESYNC_MIB=$OPTARG ;;
	R) RESYNC=0 ;;
	d) DIR=$OPTARG ;;
	*) sed -n '2,55p' "$0"; exit 2 ;;
	esac
done
[ "$RESYNC_WRITE_MIB" -lt "$RESYNC_MIB" ] && [ "$RANDOM_WRITE_MIB" -lt "$RESYNC_MIB" ] || { echo "heal.sh: -n and -N must be less than -v" >&2; exit 2; }

for tool in go jq awk nbdcopy fio dd cmp; do
	command -v "$tool" >/dev/null || { echo "heal.sh: $tool is missing (apt-get install jq fio libnbd-bin)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "heal.sh: this fio has no nbd engine" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-heal-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
log() { echo "heal.sh: $(date +%T) $*" >&2; }

NODES=4
BASE=${BENCH_PORT_BASE:-21000}
HB_INTERVAL=200ms
HB_TIMEOUT=1500ms
GC_GRACE=0s
declare -a PID
grpc() { echo "127.0.0.1:$((BASE + 124 + $1))"; }
AP=$(grpc 0)

# stop_all stops every running node, node0 (the access point) last: a
# node whose nexus cannot save its health record on the way down waits for
# the access point.
stop_all() {
	local i
	for i in $(seq $((NODES - 1)) -1 0); do
		[ -z "${PID[$i]:-}" ] || stop_node "$i" TERM
	done
}
cleanup() {
	stop_all
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

log "building into $DIR/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl)
BIN=$DIR/bin
"$BIN/nexstor" certgen --dir "$DIR/certs" >/dev/null
SEC=(--cert-dir "$DIR/certs" --identity admin --timeout 30s)
NEXCTL=("$BIN/nexctl" "${SEC[@]}" -a "$AP")
# engine RANK ARGS... runs nexctl against node RANK's engine.
engine() {
	local r=$1
	shift
	"$BIN/nexctl" "${SEC[@]}" --engine "$(grpc "$r")" "$@"
}

MAX_MIB=$(tr ',' '\n' <<<"$SIZES" | sort -n | tail -n1)
[ "$RESYNC" = 0 ] || [ "$RESYNC_MIB" -le "$MAX_MIB" ] || MAX_MIB=$RESYNC_MIB
# A node may hold a volume's replica and, until it is destroyed, a retired
# one of the round before; the pool files are sparse.
POOL_MIB=$((3 * MAX_MIB + 256))

# write_config RANK PARTIAL_WAIT writes node RANK's configuration.
write_config() {
	local i=$1 d=$DIR/node$1
	mkdir -p "$d"
	cat >"$d/server.yaml" <<EOF
name: healbench
node_name: node$i
grpc_listen: "$(grpc "$i")"
access_points: ["$AP"]
etcd:
  embedded: {client_port: $((BASE + 379 + 2 * i)), peer_port: $((BASE + 380 + 2 * i))}
data_dir: "$d/data"
runtime_dir: "$d/run"
transport_config: {ca_cert: "$DIR/certs/ca.crt", cert: "$DIR/certs/server.crt", key: "$DIR/certs/server.key"}
nvmf: {listen: "127.0.0.1:$((BASE + 420 + i))", discovery: ""}
nbd: {listen: "127.0.0.1:$((BASE + 809 + i))"}
metrics: {listen: ""}
log: {json: true}
rebuild: {partial_wait: $2}
gc: {grace: $GC_GRACE}
pools:
  - name: p0
    disk: "file://$d/d0.img?size=${POOL_MIB}MiB"
EOF
}

# start_node RANK starts node RANK's server; its log goes to nodeRANK/log.
start_node() {
	"$BIN/nexstor" server --control -o "$DIR/node$1/server.yaml" --heartbeat-interval "$HB_INTERVAL" \
		--heartbeat-timeout "$HB_TIMEOUT" >>"$DIR/node$1/log" 2>&1 &
	PID[$1]=$!
}

# stop_node RANK SIGNAL stops node RANK's server and waits for it.
stop_node() {
	kill -"$2" "${PID[$1]}" 2>/dev/null || true
	wait "${PID[$1]}" 2>/dev/null || true
	PID[$1]=""
}

# member_state RANK prints the state of node RANK's member ("" if unknown).
member_state() {
	"${NEXCTL[@]}" system query -o json 2>/dev/null |
		jq -r --arg a "$(grpc "$1")" '.members[]? | select(.address == $a) | .state' 2>/dev/null || true
}

# wait_joined RANK... waits (120 s at most) until the nodes are joined members.
wait_joined() {
	local r ok
	for _ in $(seq 600); do
		ok=1
		for r in "$@"; do
			if [ -z "${PID[$r]}" ] || ! kill -0 "${PID[$r]}" 2>/dev/null; then
				log "node$r exited; the end of its log:"
				tail -n 20 "$DIR/node$r/log" >&2
				exit 1
			fi
			[ "$(member_state "$r")" = joined ] || { ok=0; break; }
		done
		[ "$ok" = 0 ] || return 0
		sleep 0.2
	done
	log "nodes $* did not join in 120 s; the end of node0's log:"
	tail -n 20 "$DIR/node0/log" >&2
	exit 1
}

now_ms() { local t=$EPOCHREALTIME; echo $((${t/./} / 1000)); }
# iso_ms TIME prints an RFC 3339 time as Unix ms.
iso_ms() { date -d "$1" +%s%3N; }
secs() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }
# ms_or A B prints A - B, or nothing when either is unknown.
ms_or() { if [ -n "$1" ] && [ -n "$2" ]; then echo $(($1 - $2)); fi; }
# f MS prints MS in seconds, or n/a.
f() { if [ -n "$1" ]; then secs "$1"; else echo "n/a"; fi; }
# mbs BPS prints bytes per second in MiB/s, or n/a.
mbs() { awk -v v="$1" 'BEGIN { if (v > 0) printf "%.0f", v / 1048576; else print "n/a" }'; }

# vol_json NAME prints `volume get NAME -o json` (retried: the access point
# may be busy).
vol_json() {
	local out
	for _ in $(seq 20); do
		out=$("${NEXCTL[@]}" volume get "$1" -o json 2>/dev/null) && { echo "$out"; return 0; }
		sleep 0.2
	done
	log "volume get $1 failed:"
	"${NEXCTL[@]}" volume get "$1" -o json >&2 || true
	exit 1
}

# wait_healthy NAME waits (120 s at most) until NAME is fully healthy.
wait_healthy() {
	local v
	for _ in $(seq 600); do
		v=$(vol_json "$1")
		[ "$(jq '.status.healthy == .spec.replicas and (.status.repairs | length) == 0' <<<"$v")" = true ] && return 0
		sleep 0.2
	done
	log "volume $1 is not healthy after 120 s: $(jq -c .status <<<"$v")"
	exit 1
}

# place NAME: the nexus's node (NEXUS) and the victim (VICTIM), both ranks:
# two of the volume's replica nodes other than node0, the access point.
place() {
	local ranks
	ranks=$(jq -r '[.status.replicas[].node | ltrimstr("node") | tonumber | select(. != 0)] | .[0:2] | @tsv' <<<"$(vol_json "$1")")
	read -r NEXUS VICTIM <<<"$ranks"
	[ -n "$VICTIM" ] || { log "volume $1 has fewer than two replicas off node0: $ranks"; exit 1; }
}

# create_filled NAME MIB SRC creates volume NAME, chooses NEXUS and VICTIM
# (place), publishes it on NEXUS and fills it from SRC; its NBD URI is left
# in URI.
create_filled() {
	local name=$1 mib=$2 src=$3
	"${NEXCTL[@]}" volume create "$name" --size "${mib}MiB" --replicas 3 --thin >/dev/null
	place "$name"
	URI=$("${NEXCTL[@]}" volume publish "$name" --node "node$NEXUS" --protocol nbd -o json | jq -r .status.target.uri)
	wait_healthy "$name"
	nbdcopy --flush "$src" "$URI"
}

# check_data NAME URI SRC: the replicas are identical and the volume reads
# back what was written.
check_data() {
	local out
	if ! out=$("${NEXCTL[@]}" volume verify "$1" -o json 2>&1); then
		log "volume verify $1 failed: $out"
		exit 1
	fi
	[ "$(jq '.identical and (.children | length) == 3' <<<"$out")" = true ] || { log "volume verify $1: $out"; exit 1; }
	nbdcopy "$2" "$DIR/readback.img"
	cmp -s "$3" "$DIR/readback.img" || { log "volume $1 does not read back what was written to it"; exit 1; }
	rm -f "$DIR/readback.img"
}

# remove NAME unpublishes and deletes a volume.
remove() {
	"${NEXCTL[@]}" volume unpublish "$1" >/dev/null
	"${NEXCTL[@]}" volume delete "$1" >/dev/null
}

# event_ms NAME KIND SINCE prints the time (Unix ms) of NAME's first KIND
# event at or after SINCE, or nothing.
event_ms() {
	"${NEXCTL[@]}" event list --volume "$1" --limit 1000 -o json |
		jq -r --arg k "$2" '.[] | select(.kind == $k) | .time' |
		while read -r x; do iso_ms "$x"; done | awk -v s="$3" '$1 >= s' | head -n1
}

# event_count NAME KIND SINCE prints how many KIND events NAME has had at or
# after SINCE.
event_count() {
	"${NEXCTL[@]}" event list --volume "$1" --limit 1000 -o json |
		jq -r --arg k "$2" '.[] | select(.kind == $k) | .time' |
		while read -r x; do iso_ms "$x"; done | awk -v s="$3" '$1 >= s { n++ } END { print n + 0 }'
}

# log_ms RANK MSG MATCH SINCE prints when node RANK first logged MSG, with
# MATCH in its child or address attribute, at or after SINCE (Unix ms), or
# nothing.
log_ms() {
	jq -R -r --arg m "$2" --arg x "$3" 'fromjson? | select(.msg == $m and (((.child // "") + " " + (.address // "")) | contains($x))) | .time' \
		"$DIR/node$1/log" | while read -r t; do iso_ms "$t"; done | awk -v s="$4" '$1 >= s' | head -n1
}

# rebuild_json NAME UUID PARTIAL: the last rebuild (partial or full) of the
# child that is replica UUID, from the nexus's engine (NEXUS), as `nexus
# rebuild status` shows it; {} when there is none.
rebuild_json() {
	engine "$NEXUS" nexus rebuild status "$1" -o json |
		jq -c --arg u "$2" --argjson p "$3" '[.[] | select((.child | endswith($u)) and .partial == $p)] | last // {}'
}

# poke NAME URI SRC writes 4 KiB of 0xa5 at offset 0 of the volume, through
# its nexus, and the same to SRC, the volume's expected content.
poke() {
	fio --name=poke --ioengine=nbd --uri="$2" --rw=write --bs=4k --size=4k --offset=0 --buffer_pattern=0xa5 \
		--end_fsync=1 --output-format=terse >"$DIR/poke.out" 2>&1 || { log "$1: the 4 KiB write failed:"; cat "$DIR/poke.out" >&2; exit 1; }
	head -c 4096 /dev/zero | tr '\0' '\245' | dd of="$3" bs=4096 count=1 conv=notrunc status=none
}

# dd_bps MIB copies a file of MIB MiB between two files of the pools' file
# system with direct I/O; prints bytes per second.
dd_bps() {
	local t0 t1
	t0=$EPOCHREALTIME
	dd if="$DIR/src-$1.img" of="$DIR/dd-copy.img" bs=1M iflag=direct oflag=direct status=none
	t1=$EPOCHREALTIME
	rm -f "$DIR/dd-copy.img"
	awk -v b=$(($1 << 20)) -v us=$((${t1/./} - ${t0/./})) 'BEGIN { printf "%.0f", b / (us / 1e6) }'
}

LOADS=()
load_sample() { LOADS+=("$(cut -d' ' -f1 /proc/loadavg)"); }
# spread SAMPLES prints "median (min–max)" of ms samples, in seconds.
spread() {
	local s=${1// /$'\n'}
	s=$(awk 'NF' <<<"$s")
	[ -n "$s" ] || { echo "n/a"; return; }
	echo "$(secs "$(median <<<"$s")") ($(secs "$(sort -g <<<"$s" | head -n1)")–$(secs "$(sort -g <<<"$s" | tail -n1)"))"
}
# mspread SAMPLES does the same for bytes/s samples, in MiB/s.
mspread() {
	local s=${1// /$'\n'}
	s=$(awk 'NF && $1 > 0' <<<"$s")
	[ -n "$s" ] || { echo "n/a"; return; }
	awk -v m="$(median <<<"$s")" -v lo="$(sort -g <<<"$s" | head -n1)" -v hi="$(sort -g <<<"$s" | tail -n1)" \
		'BEGIN { printf "%.0f (%.0f–%.0f)", m / 1048576, lo / 1048576, hi / 1048576 }'
}
# ratios A B prints the median (min–max) of the per-round ratios A/B (the
# samples paired by position; rounds where either is unknown are left out).
ratios() {
	local r
	r=$(paste -d' ' <(tr ' ' '\n' <<<"$1" | awk 'NF') <(tr ' ' '\n' <<<"$2" | awk 'NF') | awk '$1 != "-" && $2 != "-" && $2 > 0 { print $1 / $2 }')
	[ -n "$r" ] || { echo "n/a"; return; }
	awk -v m="$(median <<<"$r")" -v lo="$(sort -g <<<"$r" | head -n1)" -v hi="$(sort -g <<<"$r" | tail -n1)" \
		'BEGIN { printf "%.2fx (%.2f–%.2f)", m, lo, hi }'
}
# nosamp SAMPLES drops the "-" (unknown) samples.
nosamp() { tr ' ' '\n' <<<"$1" | awk 'NF && $1 != "-"' | paste -sd' '; }
# ratio A B prints A/B as 0.00x, or n/a.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }

log "starting $NODES nodes (pools of $POOL_MIB MiB, sparse files)"
for i in $(seq 0 $((NODES - 1))); do
	write_config "$i" 0s
	start_node "$i"
done
for i in $(seq 0 $((NODES - 1))); do
	for _ in $(seq 300); do
		grep -q "waiting in maintenance mode" "$DIR/node$i/log" 2>/dev/null && break
		kill -0 "${PID[$i]}" 2>/dev/null || { log "node$i exited:"; tail -n 20 "$DIR/node$i/log" >&2; exit 1; }
		sleep 0.1
	done
done
HOSTS=$(for i in $(seq 0 $((NODES - 1))); do grpc "$i"; done | paste -sd,)
"$BIN/nexctl" "${SEC[@]}" storage format -l "$HOSTS" >/dev/null
# shellcheck disable=SC2046
wait_joined $(seq 0 $((NODES - 1)))

for mib in $(tr ',' ' ' <<<"$SIZES") $([ "$RESYNC" = 1 ] && echo "$RESYNC_MIB"); do
	[ -f "$DIR/src-$mib.img" ] || head -c $((mib << 20)) /dev/urandom >"$DIR/src-$mib.img"
done

START_LINE=$(machine_line)
ROWS=()
# Keyed by size: space-separated samples, "-" where a round has none (so
# that the rounds stay paired for the ratios).
declare -A T_TOTAL T_KILL T_DETECT T_PLACE T_REBUILD T_REPORT RATE_RB RATE_DD PATHS FAILED
for mib in $(tr ',' ' ' <<<"$SIZES"); do
	for round in $(seq "$ROUNDS"); do
		name=heal-$mib-$round
		log "$name: create, publish, fill $mib MiB"
		load_sample
		create_filled "$name" "$mib" "$DIR/src-$mib.img"
		uri=$URI
		v=$(vol_json "$name")
		old=$(jq -r --arg n "node$VICTIM" '.status.replicas[] | select(.node == $n) | .uuid' <<<"$v")
		before=$(jq -c '[.status.replicas[].uuid]' <<<"$v")
		log "$name: nexus on node$NEXUS; SIGKILL node$VICTIM (replica $old)"
		t_kill=$(now_ms)
		stop_node "$VICTIM" KILL
		t_degraded="" t_seen="" t_poke=""
		while :; do
			v=$(vol_json "$name")
			t=$(now_ms)
			read -r healthy repairs on_victim count <<<"$(jq -r --arg n "node$VICTIM" \
				'[.status.healthy, (.status.repairs | length), ([.status.replicas[] | select(.node == $n)] | length), (.status.replicas | length)] | @tsv' <<<"$v")"
			[ -n "$t_degraded" ] || [ "$healthy" -ge 3 ] || t_degraded=$t
			if [ "$healthy" = 3 ] && [ "$repairs" = 0 ] && [ "$on_victim" = 0 ]; then
				t_seen=$t
				break
			fi
			if [ -z "$t_poke" ] && [ $((t - t_kill)) -ge $((IDLE * 1000)) ] && [ "$count" = 3 ] && [ "$on_victim" = 1 ]; then
				log "$name: no repair $IDLE s after the kill (status: $(jq -c '{phase: .status.phase, healthy: .status.healthy, repairs: .status.repairs}' <<<"$v")); writing 4 KiB through the nexus"
				t_poke=$(now_ms)
				poke "$name" "$uri" "$DIR/src-$mib.img"
			fi
			if [ $((t - ${t_poke:-$t_kill})) -gt 600000 ]; then
				log "$name: not healed 600 s after the $([ -n "$t_poke" ] && echo write || echo kill): $(jq -c .status <<<"$v")"
				exit 1
			fi
			sleep 0.1
		done
		load_sample
		# The replacement: the replica that was not there before the kill.
		new=$(jq -r --argjson b "$before" '[.status.replicas[].uuid | select(. as $u | $b | index($u) | not)] | .[0] // ""' <<<"$v")
		rnode=$(jq -r --arg u "$new" '.status.replicas[] | select(.uuid == $u) | .node' <<<"$v")
		t_unresp=$(log_ms 0 "member unresponsive" "$(grpc "$VICTIM")" "$t_kill")
		t_offline=$(log_ms "$NEXUS" "child offline" "$old" "$t_kill")
		t_rb0=$(log_ms "$NEXUS" "rebuild started" "$new" "$t_kill")
		t_rb1=$(log_ms "$NEXUS" "rebuild completed; child online" "$new" "$t_kill")
		# The healed event comes from the reconciler's next pass.
		t_healed=""
		for _ in $(seq 50); do
			t_healed=$(event_ms "$name" volume.healed "$t_kill")
			[ -z "$t_healed" ] || break
			sleep 0.2
		done
		failed=$(event_count "$name" repair.failed "$t_kill")
		if [ -n "$t_poke" ]; then
			path=written trig=$t_poke t_det=$t_offline
		else
			path=idle trig=$t_kill t_det=$t_unresp
		fi
		rb=$(rebuild_json "$name" "$new" false)
		rb_bytes=$(jq -r '.total_bytes // 0' <<<"$rb")
		rb_bps=$(jq -r '.bytes_per_second // 0' <<<"$rb")
		dd=$(dd_bps "$mib")
		log "$name: healthy $(secs $((t_seen - trig))) s after the $([ "$path" = idle ] && echo kill || echo write); checking the data"
		check_data "$name" "$uri" "$DIR/src-$mib.img"
		log "$name: restarting node$VICTIM"
		start_node "$VICTIM"
		wait_joined "$VICTIM"
		remove "$name"
		d_total=$((t_seen - trig))
		d_detect=$(ms_or "$t_det" "$trig")
		d_place=$(ms_or "$t_rb0" "$t_det")
		d_rebuild=$(ms_or "$t_rb1" "$t_rb0")
		d_report=$(ms_or "$t_seen" "$t_rb1")
		T_TOTAL[$mib]+="$d_total "
		T_KILL[$mib]+="$((t_seen - t_kill)) "
		T_DETECT[$mib]+="${d_detect:--} "
		T_PLACE[$mib]+="${d_place:--} "
		T_REBUILD[$mib]+="${d_rebuild:--} "
		T_REPORT[$mib]+="${d_report:--} "
		RATE_RB[$mib]+="$rb_bps "
		RATE_DD[$mib]+="$dd "
		PATHS[$mib]+="$path "
		FAILED[$mib]=$((${FAILED[$mib]:-0} + failed))
		ROWS+=("| $mib MiB | $round | $path | $(f "$(ms_or "$t_degraded" "$t_kill")") | $(f "$(ms_or "$t_unresp" "$t_kill")") | $(f "$(ms_or "$t_poke" "$t_kill")") | $(f "$d_total") | $(f "$d_detect") | $(f "$d_place") | $(f "$d_rebuild") | $(f "$d_report") | $(f "$(ms_or "$t_healed" "$t_rb1")") | $failed | $rnode | $(mbs "$rb_bytes") | $(mbs "$rb_bps") | $(mbs "$dd") | $(ratio "$rb_bps" "$dd") |")
	done
done

RESYNC_ROWS=()
declare -A R_TOTAL R_JOIN R_START R_COPY R_REPORT R_BYTES R_RATE
if [ "$RESYNC" = 1 ]; then
	log "restarting every node with rebuild.partial_wait: 60s"
	stop_all
	for i in $(seq 0 $((NODES - 1))); do
		write_config "$i" 60s
	done
	for i in $(seq 0 $((NODES - 1))); do
		start_node "$i"
	done
	# shellcheck disable=SC2046
	wait_joined $(seq 0 $((NODES - 1)))
	# name|MiB|fio options: what is written while the node is away.
	PATTERNS=(
		"sequential|$RESYNC_WRITE_MIB|--rw=write --bs=1m --offset=$(((RESYNC_MIB - RESYNC_WRITE_MIB) / 2))m --size=${RESYNC_WRITE_MIB}m"
		"random 4 KiB|$RANDOM_WRITE_MIB|--rw=randwrite --bs=4k --size=${RESYNC_MIB}m --io_size=${RANDOM_WRITE_MIB}m --randrepeat=0 --norandommap"
	)
	for p in "${PATTERNS[@]}"; do
		pat=${p%%|*}
		wmib=${p#*|}
		wmib=${wmib%%|*}
		for round in $(seq "$ROUNDS"); do
			name=resync-${pat%% *}-$round
			log "$name: create, publish, fill $RESYNC_MIB MiB"
			load_sample
			create_filled "$name" "$RESYNC_MIB" "$DIR/src-$RESYNC_MIB.img"
			uri=$URI
			old=$(jq -r --arg n "node$VICTIM" '.status.replicas[] | select(.node == $n) | .uuid' <<<"$(vol_json "$name")")
			log "$name: nexus on node$NEXUS; SIGKILL node$VICTIM (replica $old); write $wmib MiB ($pat)"
			t_kill=$(now_ms)
			stop_node "$VICTIM" KILL
			# shellcheck disable=SC2086
			fio --name=away --ioengine=nbd --uri="$uri" ${p##*|} --iodepth=16 --end_fsync=1 --output-format=json >"$DIR/fio.json" 2>&1 ||
				{ log "$name: fio failed:"; cat "$DIR/fio.json" >&2; exit 1; }
			# Until the volume says it waits for the replica and the
			# membership has its node away.
			w=0
			for _ in $(seq 300); do
				w=$(jq -r --arg u "$old" '[.status.repairs[] | select(.kind == "waiting" and .replica == $u)] | length' <<<"$(vol_json "$name")")
				[ "$w" = 0 ] || [ "$(member_state "$VICTIM")" != unresponsive ] || break
				w=0
				sleep 0.2
			done
			[ "$w" != 0 ] || { log "$name: the volume never reported replica $old waiting with its node unresponsive: $(jq -c .status <<<"$(vol_json "$name")")"; exit 1; }
			log "$name: restarting node$VICTIM $(secs $(($(now_ms) - t_kill))) s after the kill"
			t_start=$(now_ms)
			start_node "$VICTIM"
			while :; do
				v=$(vol_json "$name")
				t=$(now_ms)
				if [ "$(jq --arg u "$old" '.status.healthy == 3 and (.status.repairs | length) == 0 and any(.status.replicas[]; .uuid == $u)' <<<"$v")" = true ]; then
					t_seen=$t
					break
				fi
				[ $((t - t_start)) -lt 300000 ] || { log "$name: not healthy 300 s after the restart: $(jq -c .status <<<"$v")"; exit 1; }
				sleep 0.1
			done
			load_sample
			t_joined=$(log_ms 0 "member rejoined" "$(grpc "$VICTIM")" "$t_start")
			t_rb0=$(log_ms "$NEXUS" "rebuild started" "$old" "$t_start")
			t_rb1=$(log_ms "$NEXUS" "rebuild completed; child online" "$old" "$t_start")
			rb=$(rebuild_json "$name" "$old" true)
			copied=$(jq -r '.total_bytes // 0' <<<"$rb")
			failed=$(event_count "$name" repair.failed "$t_start")
			# The content is fio's now: the replicas must agree.
			out=$("${NEXCTL[@]}" volume verify "$name" -o json 2>&1) || { log "volume verify $name: $out"; exit 1; }
			[ "$(jq '.identical and (.children | length) == 3' <<<"$out")" = true ] || { log "volume verify $name: $out"; exit 1; }
			remove "$name"
			d_join=$(ms_or "$t_joined" "$t_start")
			d_start=$(ms_or "$t_rb0" "$t_joined")
			d_copy=$(ms_or "$t_rb1" "$t_rb0")
			d_report=$(ms_or "$t_seen" "$t_rb1")
			R_TOTAL[$pat]+="$((t_seen - t_start)) "
			R_JOIN[$pat]+="${d_join:--} "
			R_START[$pat]+="${d_start:--} "
			R_COPY[$pat]+="${d_copy:--} "
			R_REPORT[$pat]+="${d_report:--} "
			R_BYTES[$pat]+="$(awk -v b="$copied" -v n="$wmib" 'BEGIN { print b / 1048576 / n }') "
			R_RATE[$pat]+="$(jq -r '.bytes_per_second // 0' <<<"$rb") "
			RESYNC_ROWS+=("| $pat | $round | $(secs $((t_start - t_kill))) | $(secs $((t_seen - t_start))) | $(f "$d_join") | $(f "$d_start") | $(f "$d_copy") | $(f "$d_report") | $wmib | $(awk -v b="$copied" 'BEGIN { printf "%.1f", b / 1048576 }') | $(awk -v b="$copied" -v n="$wmib" 'BEGIN { printf "%.2fx", b / 1048576 / n }') | $(jq -r '.state // "none"' <<<"$rb") | $failed |")
		done
	done
fi
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

lo_hi() { tr ' ' '\n' | awk 'NF' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }
echo "$START_LINE (load average $END_LOAD at the end; 1-minute load sampled before and after each round: $(lo_hi <<<"${LOADS[*]}"))."
echo
echo "$NODES \`nexstor server --control\` processes on loopback, node0 the only access point (embedded etcd), TLS; heartbeat interval $HB_INTERVAL, timeout $HB_TIMEOUT; pools of one sparse file each on $(df -T "$DIR" | awk 'NR==2 { print $2 }'); volumes thin, 3 replicas, published over NBD on a replica's node, filled end to end with random bytes (nbdcopy --flush) before the kill. \`volume get\` polled every ~0.1 s plus the call's own time."
echo
echo "### Replacement: rebuild.partial_wait 0s, a replica's node SIGKILLed"
echo
echo "Path: idle = the volume started its repair within $IDLE s of the kill, with no I/O, and is timed from the kill; written = it had not, and was timed from one 4 KiB write through its nexus at kill + $IDLE s."
echo
echo "| size | round | path | kill → reported degraded (s) | kill → member unresponsive (s) | kill → write (s) | → healthy (s) | detection (s) | placement (s) | rebuild (s) | reporting (s) | rebuild completed → volume.healed event (s) | repair.failed events | new replica on | rebuilt MiB | engine rebuild MiB/s | dd direct MiB/s | rebuild / dd |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Medians (min–max) of the $ROUNDS rounds, timed from the kill (idle) or the write (written):"
echo
echo "| size | paths | → healthy (s) | kill → healthy (s) | detection (s) | placement (s) | rebuild (s) | reporting (s) | engine rebuild MiB/s | dd direct MiB/s | rebuild / dd (per round) | repair.failed events |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for mib in $(tr ',' ' ' <<<"$SIZES"); do
	echo "| $mib MiB | $(tr ' ' '\n' <<<"${PATHS[$mib]}" | awk 'NF' | sort | uniq -c | awk '{ printf "%s%s %s", s, $1, $2; s = ", " }') | $(spread "${T_TOTAL[$mib]}") | $(spread "${T_KILL[$mib]}") | $(spread "$(nosamp "${T_DETECT[$mib]}")") | $(spread "$(nosamp "${T_PLACE[$mib]}")") | $(spread "$(nosamp "${T_REBUILD[$mib]}")") | $(spread "$(nosamp "${T_REPORT[$mib]}")") | $(mspread "${RATE_RB[$mib]}") | $(mspread "${RATE_DD[$mib]}") | $(ratios "${RATE_RB[$mib]}" "${RATE_DD[$mib]}") | ${FAILED[$mib]} |"
done
echo
echo "Detection: to node0's \"member unresponsive\" (idle) or the nexus's \"child offline\" (written). Placement: to the nexus's \"rebuild started\" of the new replica (placed, created, shared, added to the nexus). Rebuild: to its \"rebuild completed; child online\". Reporting: to the first \`volume get\` that shows healthy 3, no repairs and nothing on the killed node. Engine rate: \`nexctl nexus rebuild status\` bytes_per_second of the completed full rebuild (over its running time). dd: \`dd bs=1M iflag=direct oflag=direct\` of a file of the volume's size to a new file, on the pools' file system, right after each heal."
if [ "$RESYNC" = 1 ]; then
	echo
	echo "### Resync: rebuild.partial_wait 60s, the node back within it"
	echo
	echo "Volume of $RESYNC_MIB MiB, filled; node SIGKILLed; $RESYNC_WRITE_MIB MiB written sequentially (1 MiB writes), or $RANDOM_WRITE_MIB MiB as random 4 KiB writes, through the nexus (fio nbd, iodepth 16, end_fsync); the node restarted once the volume reports its replica waiting and node0 has the member unresponsive. Joined: node0's \"member rejoined\". Resync started/done: the nexus's \"rebuild started\" (partial) and \"rebuild completed\" of that replica. Copied: the engine's partial rebuild total_bytes."
	echo
	echo "| writes while away | round | kill → restart (s) | restart → healthy (s) | restart → joined (s) | joined → resync started (s) | resync (s) | resync done → reported (s) | written MiB | resync copied MiB | copied / written | engine rebuild state | repair.failed events |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
	printf '%s\n' "${RESYNC_ROWS[@]}"
	echo
	echo "| writes while away | restart → healthy (s) | restart → joined (s) | joined → resync started (s) | resync (s) | resync done → reported (s) | resync engine MiB/s | copied / written |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	for p in "${PATTERNS[@]}"; do
		pat=${p%%|*}
		cw=$(median <<<"${R_BYTES[$pat]}")
		echo "| $pat | $(spread "${R_TOTAL[$pat]}") | $(spread "$(nosamp "${R_JOIN[$pat]}")") | $(spread "$(nosamp "${R_START[$pat]}")") | $(spread "$(nosamp "${R_COPY[$pat]}")") | $(spread "$(nosamp "${R_REPORT[$pat]}")") | $(mspread "${R_RATE[$pat]}") | $(awk -v v="$cw" 'BEGIN { printf "%.2fx", v }') |"
	done
fi
echo
echo "Reproduce: bench/heal.sh -s $SIZES -r $ROUNDS -w $IDLE -n $RESYNC_WRITE_MIB -N $RANDOM_WRITE_MIB -v $RESYNC_MIB$([ "$RESYNC" = 1 ] || echo " -R")"
