#!/usr/bin/env bash
# Nexstor side by side with Ceph RBD on one host, on the same disk (one
# scratch directory) and through the same fio.
#
# Ceph (Debian's 16.2 packages, installed with apt-get when missing): one
# mon, one mgr, three OSDs with BlueStore on sparse files in the scratch
# directory, started by this script as plain processes and stopped by PID
# (no systemd), no cephx, messenger v2 on loopback; RBD images in a size=3
# and a size=1 pool, driven by fio's rbd engine (librbd, its cache off: a
# write is acknowledged once it is durable on every replica).
#
# Nexstor: three `nexstor server --control` processes on loopback (node0
# the access point with embedded etcd, TLS from `nexstor certgen`), one
# pool file each in the same directory; a 3-replica volume (the nexus on
# node0: its local replica plus two remote ones over NVMe/TCP) and a
# 1-replica volume, both published over NBD on node0 and driven by fio's
# nbd engine (libnbd). Writes run twice on Nexstor: as they are, and with
# fio's --fsync=1 (an NBD flush after every write, which the nexus fans out
# to every replica as an fdatasync of its pool file): the latter is Ceph's
# durability.
#
# Every image is pre-filled (1 MiB sequential writes) before anything is
# measured. Workloads: 4 KiB randread and randwrite at QD32 and QD1, 1 MiB
# sequential writes at QD8; every workload runs on every target in turn,
# round after round, so that the shared machine's load hits all alike.
# Reports the median IOPS and mean / p99 completion latency of the rounds,
# the ratios Nexstor/Ceph, the servers' CPU per I/O (user+system ticks of
# the Ceph daemons or of the Nexstor servers over the run, from /proc,
# divided by the I/Os fio completed), fio's own CPU per I/O (the client:
# librbd or libnbd), and the resident memory of each side.
#
# Usage: bench/ceph.sh [-d DIR] [-s MIB] [-t SECONDS] [-r ROUNDS] [-m MIB] [-c CLASS]
#   -d DIR      scratch directory on the disk to measure (default: a new one
#               under ${TMPDIR:-/var/tmp}; not tmpfs: both sides use
#               O_DIRECT); removed afterwards unless KEEP=1
#   -s MIB      size of every image and volume (default 1024)
#   -t SECONDS  runtime of each measured fio run (default 10; plus 2 s ramp)
#   -r ROUNDS   rounds; medians are reported (default 3)
#   -m MIB      osd_memory_target of each OSD (default 1024)
#   -c CLASS    BlueStore's settings: hdd, ssd, or default (chosen from the
#               disk's rotational flag; bluestore_debug_enforce_settings)
#               (default: default)
# Ports: BENCH_PORT_BASE (default 21000): Nexstor node i's gRPC base+124+i,
# NVMe/TCP base+420+i, NBD base+809+i, etcd base+379+2i and base+380+2i;
# the Ceph mon base+300, the other daemons base+900 to base+999.
# Runs as root (apt-get, and the daemons' files). Prints Markdown on stdout;
# progress on stderr. About 20 minutes with the defaults (26 fio runs a
# round), about 12 with -t 5.
set -euo pipefail
export LC_ALL=C

SIZE_MIB=1024
RUNTIME=10
RAMP=2
ROUNDS=3
MEM_MIB=1024
CLASS=default
DIR=""
while getopts "d:s:t:r:m:c:h" opt; do
	case $opt in
	d) DIR=$OPTARG ;;
	s) SIZE_MIB=$OPTARG ;;
	t) RUNTIME=$OPTARG ;;
	r) ROUNDS=$OPTARG ;;
	m) MEM_MIB=$OPTARG ;;
	c) CLASS=$OPTARG ;;
	*) sed -n '2,48p' "$0"; exit 2 ;;
	esac
done

log() { echo "ceph.sh: $(date +%T) $*" >&2; }

CEPH_PKGS=(ceph-mon ceph-mgr ceph-osd ceph-common)
missing=()
for p in "${CEPH_PKGS[@]}" fio jq; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
for tool in go jq awk fio ceph ceph-mon ceph-mgr ceph-osd rbd monmaptool ceph-authtool uuidgen; do
	command -v "$tool" >/dev/null || { echo "ceph.sh: $tool is missing" >&2; exit 1; }
done
fio --enghelp=rbd >/dev/null 2>&1 || { echo "ceph.sh: this fio has no rbd engine" >&2; exit 1; }
fio --enghelp=nbd >/dev/null 2>&1 || { echo "ceph.sh: this fio has no nbd engine" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-ceph-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
BASE=${BENCH_PORT_BASE:-21000}
TCK=$(getconf CLK_TCK)

declare -a NPID # Nexstor servers, by rank
declare -A CPID # Ceph daemons, by name (mon.a, mgr.x, osd.0, ...)
stop_all() {
	local i n
	for i in 2 1 0; do
		[ -n "${NPID[$i]:-}" ] || continue
		kill "${NPID[$i]}" 2>/dev/null || true
		wait "${NPID[$i]}" 2>/dev/null || true
		NPID[$i]=""
	done
	for n in "${!CPID[@]}"; do kill "${CPID[$n]}" 2>/dev/null || true; done
	for n in "${!CPID[@]}"; do wait "${CPID[$n]}" 2>/dev/null || true; done
	CPID=()
}
cleanup() {
	stop_all
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---------------------------------------------------------------- Ceph
CEPH=$DIR/ceph
mkdir -p "$CEPH/run" "$CEPH/log"
export CEPH_CONF=$CEPH/ceph.conf
FSID=$(uuidgen)
MON_ADDR=127.0.0.1:$((BASE + 300))
OSD_BLOCK_GIB=$(((SIZE_MIB * 2 + 1023) / 1024 + 8))
cat >"$CEPH_CONF" <<EOF
[global]
fsid = $FSID
mon host = v2:$MON_ADDR
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind port min = $((BASE + 900))
ms bind port max = $((BASE + 999))
auth cluster required = none
auth service required = none
auth client required = none
run dir = $CEPH/run
admin socket = $CEPH/run/\$name.asok
log file = $CEPH/log/\$name.log
pid file = $CEPH/run/\$name.pid
keyring = $CEPH/keyring
osd pool default size = 3
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
debug ms = 0/0
debug osd = 0/0
debug bluestore = 0/0
debug bluefs = 0/0
debug bdev = 0/0
debug rocksdb = 0/0
debug mon = 0/0
debug paxos = 0/0
debug mgr = 0/0
debug rbd = 0/0
debug objecter = 0/0
debug rados = 0/0
[mon]
mon data = $CEPH/mon.\$id
[mgr]
mgr data = $CEPH/mgr.\$id
[osd]
osd data = $CEPH/osd.\$id
osd objectstore = bluestore
bluestore block path = $CEPH/osd.\$id.block
bluestore block create = true
bluestore block size = $((OSD_BLOCK_GIB << 30))
osd memory target = $((MEM_MIB << 20))
bluestore debug enforce settings = $CLASS
[client]
rbd cache = false
EOF

# cdaemon NAME CMD... starts a Ceph daemon in the foreground, in the
# background of this script (CPID[NAME]).
cdaemon() {
	local name=$1
	shift
	"$@" -f >>"$CEPH/log/$name.out" 2>&1 &
	CPID[$name]=$!
}

ceph_up() {
	local i uuid id
	log "ceph: mon, mgr, 3 OSDs (BlueStore on ${OSD_BLOCK_GIB} GiB sparse files, osd_memory_target ${MEM_MIB} MiB)"
	ceph-authtool --create-keyring "$CEPH/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool "$CEPH/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
	monmaptool --create --fsid "$FSID" --addv a "[v2:$MON_ADDR]" "$CEPH/monmap" >/dev/null
	ceph-mon --mkfs -i a --monmap "$CEPH/monmap" --keyring "$CEPH/keyring" >>"$CEPH/log/mkfs.out" 2>&1
	cdaemon mon.a ceph-mon -i a
	timeout 60 ceph -s >/dev/null
	mkdir -p "$CEPH/mgr.x"
	cdaemon mgr.x ceph-mgr -i x
	for i in 0 1 2; do
		uuid=$(uuidgen)
		id=$(ceph osd new "$uuid")
		[ "$id" = "$i" ] || { log "ceph osd new gave id $id, want $i"; exit 1; }
		mkdir -p "$CEPH/osd.$i"
		ceph-osd -i "$i" --mkfs --osd-uuid "$uuid" >>"$CEPH/log/mkfs.out" 2>&1 ||
			{ log "ceph-osd --mkfs failed:"; tail -n 20 "$CEPH/log/mkfs.out" >&2; exit 1; }
		cdaemon "osd.$i" ceph-osd -i "$i"
	done
	for _ in $(seq 300); do
		[ "$(ceph osd stat -f json 2>/dev/null | jq '.num_up_osds')" = 3 ] && break
		sleep 1
	done
	[ "$(ceph osd stat -f json | jq '.num_up_osds')" = 3 ] || { log "the OSDs did not come up:"; ceph -s >&2; exit 1; }
	ceph osd pool create rbd3 32 32 replicated >/dev/null 2>&1
	ceph osd pool create rbd1 32 32 replicated >/dev/null 2>&1
	ceph osd pool set rbd3 size 3 >/dev/null 2>&1
	ceph osd pool set rbd1 size 1 --yes-i-really-mean-it >/dev/null 2>&1
	for p in rbd3 rbd1; do
		ceph osd pool application enable "$p" rbd >/dev/null 2>&1
		rbd pool init "$p"
		rbd create --size "${SIZE_MIB}M" "$p/img"
	done
	for _ in $(seq 300); do
		ceph pg stat -f json 2>/dev/null | jq -e '.pg_summary | ([.num_pg_by_state[] | select(.name == "active+clean") | .num] | add) == .num_pgs' >/dev/null 2>&1 && break
		sleep 1
	done
	ceph pg stat -f json | jq -e '.pg_summary | ([.num_pg_by_state[] | select(.name == "active+clean") | .num] | add) == .num_pgs' >/dev/null ||
		{ log "the PGs are not active+clean after 300 s:"; ceph -s >&2; exit 1; }
	OSD_ROT=$(ceph osd metadata 0 -f json | jq -r '.rotational // "unknown"')
}

# ------------------------------------------------------------- Nexstor
log "building into $DIR/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl)
BIN=$DIR/bin
"$BIN/nexstor" certgen --dir "$DIR/certs" >/dev/null
SEC=(--cert-dir "$DIR/certs" --identity admin --timeout 30s)
grpc() { echo "127.0.0.1:$((BASE + 124 + $1))"; }
AP=$(grpc 0)
NEXCTL=("$BIN/nexctl" "${SEC[@]}" -a "$AP")
# Each node holds a replica of the 3-replica volume and maybe the 1-replica
# one; the pool files are sparse.
POOL_MIB=$((2 * SIZE_MIB + 512))

nexstor_up() {
	local i d hosts joined
	log "nexstor: 3 servers (pools of $POOL_MIB MiB, sparse files)"
	for i in 0 1 2; do
		d=$DIR/node$i
		mkdir -p "$d"
		cat >"$d/server.yaml" <<EOC
name: cephbench
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
pools:
  - name: p0
    disk: "file://$d/d0.img?size=${POOL_MIB}MiB"
EOC
		"$BIN/nexstor" server --control -o "$d/server.yaml" >>"$d/log" 2>&1 &
		NPID[$i]=$!
	done
	for i in 0 1 2; do
		for _ in $(seq 300); do
			grep -q "waiting in maintenance mode" "$DIR/node$i/log" 2>/dev/null && break
			kill -0 "${NPID[$i]}" 2>/dev/null || { log "node$i exited:"; tail -n 20 "$DIR/node$i/log" >&2; exit 1; }
			sleep 0.1
		done
	done
	hosts=$(for i in 0 1 2; do grpc "$i"; done | paste -sd,)
	"$BIN/nexctl" "${SEC[@]}" storage format -l "$hosts" >/dev/null
	for _ in $(seq 600); do
		joined=$("${NEXCTL[@]}" system query -o json 2>/dev/null | jq '[.members[]? | select(.state == "joined")] | length' 2>/dev/null || echo 0)
		[ "$joined" = 3 ] && return 0
		sleep 0.2
	done
	log "the nodes did not join in 120 s; the end of node0's log:"
	tail -n 20 "$DIR/node0/log" >&2
	exit 1
}

# nexstor_volume NAME REPLICAS creates a thin volume, publishes it over NBD
# on node0 (or, with one replica, on its replica's node) and prints its URI.
nexstor_volume() {
	local node=node0 v
	"${NEXCTL[@]}" volume create "$1" --size "${SIZE_MIB}MiB" --replicas "$2" --thin >/dev/null
	if [ "$2" = 1 ]; then
		node=$("${NEXCTL[@]}" volume get "$1" -o json | jq -r '.status.replicas[0].node')
	fi
	"${NEXCTL[@]}" volume publish "$1" --node "$node" --protocol nbd -o json | jq -r .status.target.uri
	for _ in $(seq 600); do
		v=$("${NEXCTL[@]}" volume get "$1" -o json)
		[ "$(jq '.status.healthy == .spec.replicas' <<<"$v")" = true ] && return 0
		sleep 0.2
	done
	log "volume $1 is not healthy after 120 s: $(jq -c .status <<<"$v")"
	exit 1
}

ceph_up
nexstor_up
URI3=$(nexstor_volume vol3 3)
URI1=$(nexstor_volume vol1 1)
VOL1_NODE=$("${NEXCTL[@]}" volume get vol1 -o json | jq -r '.status.replicas[0].node')
log "nexstor: vol3 at $URI3, vol1 (replica on $VOL1_NODE) at $URI1"

# ------------------------------------------------------------ measuring
# Targets: the engine options of fio for each, and whose servers they load.
declare -A ENGINE SIDE EXTRA
ENGINE[ceph3]="--ioengine=rbd --clientname=admin --pool=rbd3 --rbdname=img"
ENGINE[ceph1]="--ioengine=rbd --clientname=admin --pool=rbd1 --rbdname=img"
ENGINE[nex3]="--ioengine=nbd --uri=$URI3"
ENGINE[nex1]="--ioengine=nbd --uri=$URI1"
ENGINE[nex3s]=${ENGINE[nex3]}
ENGINE[nex1s]=${ENGINE[nex1]}
EXTRA[nex3s]="--fsync=1"
EXTRA[nex1s]="--fsync=1"
for t in ceph3 ceph1; do SIDE[$t]=ceph; done
for t in nex3 nex1 nex3s nex1s; do SIDE[$t]=nexstor; done
declare -A TNAME=([ceph3]="Ceph size=3" [ceph1]="Ceph size=1" [nex3]="Nexstor 3 replicas" [nex1]="Nexstor 1 replica"
	[nex3s]="Nexstor 3 replicas, fsync=1" [nex1s]="Nexstor 1 replica, fsync=1")

# Workloads: name|fio options|direction.
WORKLOADS=(
	"4k randread QD32|--rw=randread --bs=4k --iodepth=32|read"
	"4k randwrite QD32|--rw=randwrite --bs=4k --iodepth=32|write"
	"4k randread QD1|--rw=randread --bs=4k --iodepth=1|read"
	"4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1|write"
	"1M write QD8|--rw=write --bs=1m --iodepth=8|write"
)
COMMON="--numjobs=1 --size=${SIZE_MIB}m --time_based --runtime=$RUNTIME --ramp_time=$RAMP --randrepeat=0 --norandommap --output-format=json"

# side_ticks SIDE prints the user+system ticks of that side's server
# processes so far (Ceph: all its daemons; "osd": the OSDs alone).
side_ticks() {
	local n s=0
	case $1 in
	ceph) for n in "${!CPID[@]}"; do s=$((s + $(cpu_ticks "${CPID[$n]}"))); done ;;
	osd) for n in osd.0 osd.1 osd.2; do s=$((s + $(cpu_ticks "${CPID[$n]}"))); done ;;
	nexstor) for n in 0 1 2; do s=$((s + $(cpu_ticks "${NPID[$n]}"))); done ;;
	esac
	echo "$s"
}

declare -A IOPS LAT P99 FLUSH SCPU OCPU CCPU # keyed by target|workload: samples
# run TARGET WORKLOAD_INDEX runs one measured fio job and records it.
run() {
	local t=$1 name opts dir out c0 o0 c1 o1 t0 t1 cl
	IFS='|' read -r name opts dir <<<"${WORKLOADS[$2]}"
	out=$DIR/fio.json
	c0=$(side_ticks "${SIDE[$t]}")
	o0=$(side_ticks osd)
	t0=$EPOCHREALTIME
	# The subshell reads its children's CPU (fio and its job process) once
	# fio has exited.
	# shellcheck disable=SC2086
	cl=$(
		fio --name=bench ${ENGINE[$t]} $opts ${EXTRA[$t]:-} $COMMON --output="$out" >"$DIR/fio.err" 2>&1 || exit 1
		read -r -a st <"/proc/$BASHPID/stat"
		echo $((st[15] + st[16]))
	) || { log "$t: $name: fio failed:"; cat "$DIR/fio.err" "$out" >&2; exit 1; }
	t1=$EPOCHREALTIME
	c1=$(side_ticks "${SIDE[$t]}")
	o1=$(side_ticks osd)
	jq -e '.jobs[0].error == 0' "$out" >/dev/null || { log "$t: $name: fio reported an error"; cat "$out" >&2; exit 1; }
	local k="$t|$name" us=$((${t1/./} - ${t0/./})) iops
	iops=$(jq -r --arg d "$dir" '.jobs[0][$d].iops' "$out")
	IOPS[$k]+="$iops "
	LAT[$k]+="$(jq -r --arg d "$dir" '.jobs[0][$d].lat_ns.mean / 1000' "$out") "
	P99[$k]+="$(jq -r --arg d "$dir" '.jobs[0][$d].clat_ns.percentile["99.000000"] / 1000' "$out") "
	FLUSH[$k]+="$(jq -r '(.jobs[0].sync.lat_ns.mean // 0) / 1000' "$out") "
	# CPU µs per I/O: CPU seconds per wall second over the run, over IOPS.
	perio() { awk -v c="$1" -v hz="$TCK" -v us="$us" -v iops="$iops" 'BEGIN { if (iops > 0) printf "%.2f", (c / hz) / (us / 1e6) / iops * 1e6; else print "-" }'; }
	SCPU[$k]+="$(perio $((c1 - c0))) "
	[ "${SIDE[$t]}" = ceph ] && OCPU[$k]+="$(perio $((o1 - o0))) "
	CCPU[$k]+="$(perio "$cl") "
	log "$t: $name: $(printf '%.0f' "$iops") IOPS"
}

START_LINE=$(machine_line)
log "pre-filling every image and volume (1 MiB sequential writes)"
for t in ceph3 ceph1 nex3 nex1; do
	# shellcheck disable=SC2086
	fio --name=prefill ${ENGINE[$t]} --rw=write --bs=1m --iodepth=8 --size="${SIZE_MIB}m" --output-format=json --output="$DIR/prefill.json" >"$DIR/fio.err" 2>&1 ||
		{ log "$t: prefill failed:"; cat "$DIR/fio.err" >&2; exit 1; }
	log "$t: prefilled at $(jq -r '.jobs[0].write.bw / 1024 | floor' "$DIR/prefill.json") MiB/s"
done

LOADS=()
for r in $(seq "$ROUNDS"); do
	log "round $r of $ROUNDS"
	for w in "${!WORKLOADS[@]}"; do
		targets=(ceph3 nex3 ceph1 nex1)
		[[ ${WORKLOADS[$w]} == *"|write" ]] && targets=(ceph3 nex3 nex3s ceph1 nex1 nex1s)
		for t in "${targets[@]}"; do
			run "$t" "$w"
		done
	done
	LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
done

# ------------------------------------------------------------ reporting
rss_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
declare -A RSS HWM
for n in "${!CPID[@]}"; do
	RSS[ceph]=$((${RSS[ceph]:-0} + $(rss_kib "${CPID[$n]}" VmRSS)))
	HWM[ceph]=$((${HWM[ceph]:-0} + $(rss_kib "${CPID[$n]}" VmHWM)))
	RSS[$n]=$(rss_kib "${CPID[$n]}" VmRSS)
	HWM[$n]=$(rss_kib "${CPID[$n]}" VmHWM)
done
for n in 0 1 2; do
	RSS[nexstor]=$((${RSS[nexstor]:-0} + $(rss_kib "${NPID[$n]}" VmRSS)))
	HWM[nexstor]=$((${HWM[nexstor]:-0} + $(rss_kib "${NPID[$n]}" VmHWM)))
	RSS[node$n]=$(rss_kib "${NPID[$n]}" VmRSS)
	HWM[node$n]=$(rss_kib "${NPID[$n]}" VmHWM)
done

med() { median <<<"$1"; }
# spread SAMPLES prints the lowest and highest sample, rounded: "lo–hi".
spread() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'; }
f0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
# rt A B prints A/B of two medians as 0.00x.
rt() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

echo "$START_LINE; load average at the end of each round: ${LOADS[*]}. $(df -T "$DIR" | awk 'NR==2 { print $2 }') scratch file system (one virtual disk for both sides); $(fio --version); $(ceph --version | cut -d' ' -f1-3) (Debian); Nexstor $(git -C "$ROOT" describe --always 2>/dev/null || echo unknown)$([ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no -- "$ROOT" ":(exclude,glob)**/RESULTS*.md" 2>/dev/null)" ] || echo -dirty)."
echo
echo "Images and volumes of $SIZE_MIB MiB, pre-filled; $RUNTIME s per run (+$RAMP s ramp), $ROUNDS rounds, every workload on every target in turn; medians of the rounds. Latency: fio's mean total latency and p99 completion latency of the reads or writes, µs; with fsync=1, the mean latency of the flushes too (fio's sync latency). CPU: µs of user+system time per I/O, servers (Ceph: mon, mgr and OSDs; in brackets the OSDs alone) and fio itself (the client: librbd or libnbd)."
echo
echo "| workload | target | IOPS (lowest–highest round) | mean lat µs | p99 lat µs | mean flush µs | server CPU µs/IO | client CPU µs/IO |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for w in "${!WORKLOADS[@]}"; do
	IFS='|' read -r name _ dir <<<"${WORKLOADS[$w]}"
	for t in ceph3 nex3 nex3s ceph1 nex1 nex1s; do
		k="$t|$name"
		[ -n "${IOPS[$k]:-}" ] || continue
		s=$(f1 "$(med "${SCPU[$k]}")")
		[ "${SIDE[$t]}" = ceph ] && s="$s ($(f1 "$(med "${OCPU[$k]}")"))"
		fl=""
		[ -z "${EXTRA[$t]:-}" ] || fl=$(f0 "$(med "${FLUSH[$k]}")")
		echo "| $name | ${TNAME[$t]} | $(f0 "$(med "${IOPS[$k]}")") ($(spread "${IOPS[$k]}")) | $(f0 "$(med "${LAT[$k]}")") | $(f0 "$(med "${P99[$k]}")") | $fl | $s | $(f1 "$(med "${CCPU[$k]}")") |"
	done
done
echo
echo "Ratios Nexstor/Ceph of the medians (IOPS: higher is better; latency and CPU per I/O: lower is better). Writes: \"as is\" is Nexstor's acknowledgement (on every replica's disk, O_DIRECT, not flushed); \"fsync=1\" adds a flush after every write, Ceph's durability, and its mean latency is the write's plus the flush's."
echo
echo "| workload | pair | IOPS | mean lat | p99 lat | server CPU/IO | server CPU/IO vs OSDs alone | client CPU/IO |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for w in "${!WORKLOADS[@]}"; do
	IFS='|' read -r name _ dir <<<"${WORKLOADS[$w]}"
	for pair in nex3:ceph3 nex3s:ceph3 nex1:ceph1 nex1s:ceph1; do
		a=${pair%%:*} b=${pair##*:}
		[ -n "${IOPS[$a|$name]:-}" ] || continue
		label="${TNAME[$a]#Nexstor } / ${TNAME[$b]#Ceph }"
		[ "$dir" = read ] && label="${label%, fsync=1*}"
		# fsync=1: a write is durable once its flush is done.
		lat=$(awk -v l="$(med "${LAT[$a|$name]}")" -v f="$([ -n "${EXTRA[$a]:-}" ] && med "${FLUSH[$a|$name]}" || echo 0)" 'BEGIN { print l + f }')
		echo "| $name | $label | $(rt "$(med "${IOPS[$a|$name]}")" "$(med "${IOPS[$b|$name]}")") | $(rt "$lat" "$(med "${LAT[$b|$name]}")") | $(rt "$(med "${P99[$a|$name]}")" "$(med "${P99[$b|$name]}")") | $(rt "$(med "${SCPU[$a|$name]}")" "$(med "${SCPU[$b|$name]}")") | $(rt "$(med "${SCPU[$a|$name]}")" "$(med "${OCPU[$b|$name]}")") | $(rt "$(med "${CCPU[$a|$name]}")" "$(med "${CCPU[$b|$name]}")") |"
	done
done
echo
echo "Resident memory after the runs (VmRSS; in brackets the peak, VmHWM), MiB:"
echo
echo "| side | total | per process |"
echo "|---|---:|---|"
per=""
for n in mon.a mgr.x osd.0 osd.1 osd.2; do per+="${per:+, }$n $(mib "${RSS[$n]}") ($(mib "${HWM[$n]}"))"; done
echo "| Ceph | $(mib "${RSS[ceph]}") ($(mib "${HWM[ceph]}")) | $per |"
per=""
for n in 0 1 2; do per+="${per:+, }node$n $(mib "${RSS[node$n]}") ($(mib "${HWM[node$n]}"))"; done
echo "| Nexstor | $(mib "${RSS[nexstor]}") ($(mib "${HWM[nexstor]}")) | $per |"
echo
k="4k randwrite QD32"
ri=$(awk -v a="$(med "${IOPS[nex3s|$k]}")" -v b="$(med "${IOPS[ceph3|$k]}")" 'BEGIN { printf "%.2f", a / b }')
rc=$(awk -v a="$(med "${SCPU[nex3s|$k]}")" -v b="$(med "${SCPU[ceph3|$k]}")" 'BEGIN { printf "%.2f", a / b }')
echo "Goal (at equal durability, 3 replicas, 4k randwrite QD32: IOPS >= 3x Ceph size=3 at <= 0.2x its server CPU per I/O): IOPS ${ri}x ($(awk -v r="$ri" 'BEGIN { print (r >= 3 ? "met" : "not met") }')), CPU per I/O ${rc}x ($(awk -v r="$rc" 'BEGIN { print (r <= 0.2 ? "met" : "not met") }'))."
echo
echo "Ceph settings: no cephx (auth none), messenger v2 on 127.0.0.1, osd_memory_target $MEM_MIB MiB, BlueStore on ${OSD_BLOCK_GIB} GiB sparse files (data, DB and WAL in one; BlueStore settings: $CLASS, the OSDs' rotational flag: $OSD_ROT), debug logging 0/0, osd_crush_chooseleaf_type 0 (replicas across the three OSDs of the one host), 32 PGs per pool, pg autoscaler off, client rbd_cache false. Nexstor: defaults (file:// pools, O_DIRECT), TLS on gRPC, JSON logs; vol3's nexus on node0, vol1's replica on $VOL1_NODE."
echo
echo "Reproduce: bench/ceph.sh -s $SIZE_MIB -t $RUNTIME -r $ROUNDS -m $MEM_MIB -c $CLASS"
