#!/usr/bin/env bash
# Soak of the uring:// backend: a `nexstor server` with one uring:// pool and
# three thin replicas,
#   r-nbd   shared over NBD,      driven by soakio (bench/soakio) through NBD,
#   r-nvmf  shared over NVMe/TCP, driven by soakio through the NVMe/TCP
#           initiator,
#   r-fio   shared over NBD,      driven by fio (libnbd) with
#           verify=crc32c and verify_backlog,
# mixed verified I/O on all three, and `kill -9` of the server at random
# moments. soakio keeps a log of every write the server acknowledged; after
# every kill the pool is imported and checked (pool.Check) before the server
# restarts, and after the restart every block of r-nbd and r-nvmf must hold
# its last acknowledged write (or the write in flight at the kill). fio
# verifies what it wrote since the last restart; a verify error from fio, a
# mismatch, an I/O error while the server was up, a failed pool check or a
# server that does not come back fails the soak.
#
# Usage: bench/soak.sh [-d DIR] [-t DURATION] [-s SEED]
#   -d DIR       scratch directory (default: new under ${TMPDIR:-/var/tmp});
#                removed afterwards unless KEEP=1 or the soak failed
#   -t DURATION  how long to soak, in seconds or with s/m/h (default
#                $SOAK_DURATION or 1h)
#   -s SEED      seed of the kill schedule and the data (default $SOAK_SEED
#                or random); printed, repeat a run with it
# Env: SOAK_UP_MIN/SOAK_UP_MAX: seconds the server runs between kills
# (default 2 and 40).
set -euo pipefail

DIR=""
DURATION=${SOAK_DURATION:-1h}
SEED=${SOAK_SEED:-}
while getopts "d:t:s:h" opt; do
	case $opt in
	d) DIR=$OPTARG ;;
	t) DURATION=$OPTARG ;;
	s) SEED=$OPTARG ;;
	*) sed -n '2,27p' "$0"; exit 2 ;;
	esac
done
UP_MIN=${SOAK_UP_MIN:-2}
UP_MAX=${SOAK_UP_MAX:-40}

to_seconds() {
	case $1 in
	*h) echo $((${1%h} * 3600)) ;;
	*m) echo $((${1%m} * 60)) ;;
	*s) echo "${1%s}" ;;
	*) echo "$1" ;;
	esac
}
SECONDS_TOTAL=$(to_seconds "$DURATION")
[ -n "$SEED" ] || SEED=$(( (RANDOM << 15 | RANDOM) + 1 ))
RANDOM=$SEED

for tool in fio go nbdinfo; do
	command -v "$tool" >/dev/null || { echo "soak.sh: $tool is missing (apt-get install fio libnbd-bin)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "soak.sh: this fio has no nbd engine" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GRPC_ADDR=${NEXSTOR_GRPC:-127.0.0.1:20134}
NBD_PORT=${NEXSTOR_NBD_PORT:-20819}
NVMF_PORT=${NEXSTOR_NVMF_PORT:-20420}
if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-soak.XXXXXX")
else
	mkdir -p "$DIR"
fi
SERVER_PID="" FIO_PID="" SOAK_NBD_PID="" SOAK_NVMF_PID=""
FAILED=1
cleanup() {
	for p in $SOAK_NBD_PID $SOAK_NVMF_PID $FIO_PID; do kill "$p" 2>/dev/null || true; done
	[ -z "$SERVER_PID" ] || kill -9 "$SERVER_PID" 2>/dev/null || true
	wait 2>/dev/null || true
	if [ "$FAILED" = 0 ] && [ -z "${KEEP:-}" ]; then
		rm -rf "$DIR"
	else
		echo "soak.sh: logs and state kept in $DIR" >&2
	fi
}
trap cleanup EXIT
log() { echo "soak.sh: $(date -u +%H:%M:%S) $*" >&2; }
fail() {
	log "FAIL (seed $SEED): $*"
	exit 1
}

log "seed $SEED, duration ${SECONDS_TOTAL}s, server up ${UP_MIN}-${UP_MAX}s between kills, directory $DIR"
log "building nexstor, nexctl, soakio"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl ./bench/soakio)
NEXCTL=("$DIR/bin/nexctl" --insecure --engine "$GRPC_ADDR")
SOAKIO=$DIR/bin/soakio
POOL_URI="uring://$DIR/pool.img?size=2GiB"
REPLICA_SIZE=256MiB
KILLED=$DIR/killed

start_server() {
	"$DIR/bin/nexstor" server --insecure --data-dir "$DIR/data" --grpc "$GRPC_ADDR" \
		--nbd "127.0.0.1:$NBD_PORT" --nvmf "127.0.0.1:$NVMF_PORT" --discovery "" \
		--metrics "" --log-level warn >>"$DIR/server.log" 2>&1 &
	SERVER_PID=$!
	local _
	for _ in $(seq 300); do
		"${NEXCTL[@]}" version >/dev/null 2>&1 && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited at start (see $DIR/server.log)"
		sleep 0.1
	done
	fail "the server did not answer within 30 s"
}

# First start: the pool, the replicas, the shares (remembered by the server).
start_server
# 1 MiB clusters: soakio zeroes whole ones now and then, which frees them,
# so that writes allocate clusters (and the pool logs it) all along.
"${NEXCTL[@]}" pool create p-soak "$POOL_URI" --cluster-size 1MiB >/dev/null
declare -A URI
for r in r-nbd r-nvmf r-fio; do
	"${NEXCTL[@]}" replica create "$r" --pool p-soak --size "$REPLICA_SIZE" --thin >/dev/null
done
URI[r-nbd]=$("${NEXCTL[@]}" replica share r-nbd --protocol nbd | tail -n1)
URI[r-nvmf]=$("${NEXCTL[@]}" replica share r-nvmf --protocol nvmf | tail -n1)
URI[r-fio]=$("${NEXCTL[@]}" replica share r-fio --protocol nbd | tail -n1)
log "shares: ${URI[r-nbd]} ${URI[r-nvmf]} ${URI[r-fio]}"

END=$((SECONDS + SECONDS_TOTAL))
EPOCH=0
KILLS=0 VERIFIED_RUNS=0
while [ "$SECONDS" -lt "$END" ]; do
	EPOCH=$((EPOCH + 1))
	rm -f "$KILLED"
	[ -n "$SERVER_PID" ] || start_server
	# Every restart must bring the pool and the shares back as they were.
	"${NEXCTL[@]}" pool get p-soak >/dev/null || fail "epoch $EPOCH: the pool did not come back"
	for r in r-nbd r-nvmf r-fio; do
		proto=nbd
		[ "$r" = r-nvmf ] && proto=nvmf
		u=$("${NEXCTL[@]}" replica share "$r" --protocol "$proto" | tail -n1) || fail "epoch $EPOCH: $r cannot be shared"
		[ "$u" = "${URI[$r]}" ] || fail "epoch $EPOCH: $r is shared as $u, was ${URI[$r]}"
	done

	"$SOAKIO" run -target "${URI[r-nbd]}" -state "$DIR/state-nbd" -seed "$SEED" -epoch "$EPOCH" -killed "$KILLED" \
		-cluster 1048576 >>"$DIR/soakio-nbd.log" 2>&1 &
	SOAK_NBD_PID=$!
	"$SOAKIO" run -target "${URI[r-nvmf]}" -state "$DIR/state-nvmf" -seed "$SEED" -epoch "$EPOCH" -killed "$KILLED" \
		-cluster 1048576 >>"$DIR/soakio-nvmf.log" 2>&1 &
	SOAK_NVMF_PID=$!
	fio --name=soak --ioengine=nbd --uri="${URI[r-fio]}" --rw=randwrite --bs=4k --iodepth=8 --size=256m \
		--verify=crc32c --verify_backlog=512 --verify_fatal=1 --randseed="$((SEED + EPOCH))" \
		--time_based --runtime=100000 >"$DIR/fio-$EPOCH.log" 2>&1 &
	FIO_PID=$!

	up=$((UP_MIN + RANDOM % (UP_MAX - UP_MIN + 1)))
	# A fraction of a second as well, so that kills fall anywhere.
	sleep "$up.$((RANDOM % 10))"
	for p in $SOAK_NBD_PID $SOAK_NVMF_PID $FIO_PID; do
		kill -0 "$p" 2>/dev/null || {
			cat "$DIR/soakio-nbd.log" "$DIR/soakio-nvmf.log" "$DIR/fio-$EPOCH.log" | tail -n 30 >&2
			fail "epoch $EPOCH: a load stopped before the kill"
		}
	done
	touch "$KILLED"
	kill -9 "$SERVER_PID"
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=""
	KILLS=$((KILLS + 1))
	kill "$SOAK_NBD_PID" "$SOAK_NVMF_PID" 2>/dev/null || true
	for v in SOAK_NBD_PID SOAK_NVMF_PID; do
		rc=0
		wait "${!v}" || rc=$?
		case $rc in
		0) ;;
		2) log "epoch $EPOCH: $v: killed before it connected" ;;
		*) tail -n 5 "$DIR/soakio-nbd.log" "$DIR/soakio-nvmf.log" >&2; fail "epoch $EPOCH: soakio exited with $rc" ;;
		esac
	done
	SOAK_NBD_PID="" SOAK_NVMF_PID=""
	wait "$FIO_PID" 2>/dev/null || true
	FIO_PID=""
	# fio reports a verify failure as "verify: bad ..." or a crc mismatch,
	# and ends with err=84 (EILSEQ); a lost connection is another errno.
	if grep -Eiq 'verify.*(fail|bad)|bad magic|crc32c.*fail|err=84|multibyte' "$DIR/fio-$EPOCH.log"; then
		cat "$DIR/fio-$EPOCH.log" >&2
		fail "epoch $EPOCH: fio found data it did not write"
	fi
	grep -q '^soakio: .*verified [1-9]' <(tail -n 4 "$DIR/soakio-nbd.log") && VERIFIED_RUNS=$((VERIFIED_RUNS + 1))
	rm -f "$DIR/fio-$EPOCH.log"
	"$SOAKIO" check -pool "$POOL_URI" >>"$DIR/check.log" 2>&1 || { tail -n 3 "$DIR/check.log" >&2; fail "epoch $EPOCH: pool check after the kill"; }
	log "epoch $EPOCH: killed after ${up}s; pool checked ($(tail -n 4 "$DIR/check.log" | grep -o 'replayed=[0-9]*' | tail -n1)); NBD: $(tail -n 2 "$DIR/soakio-nbd.log" | grep -o 'verified [0-9]* blocks.*flushes' | head -n1)"
done

# A last restart and verification, without a kill.
start_server
rm -f "$KILLED"
for r in r-nbd r-nvmf; do
	"$SOAKIO" run -target "${URI[$r]}" -state "$DIR/state-${r#r-}" -seed "$SEED" -epoch 0 -killed "$KILLED" >>"$DIR/soakio-${r#r-}.log" 2>&1 &
	pid=$!
	sleep 3
	kill "$pid"
	wait "$pid" || fail "final verification of $r"
done
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
"$SOAKIO" check -pool "$POOL_URI" >>"$DIR/check.log" 2>&1 || fail "final pool check"
[ "$VERIFIED_RUNS" -gt 0 ] || fail "no epoch verified anything"
FAILED=0
# Totals of the soakio logs: acknowledged writes, and blocks read back and
# compared with the log right after a restart.
totals() {
	awk '/ verified [0-9]+ blocks in / {
		for (i = 1; i <= NF; i++) {
			if ($i == "verified" && $(i + 2) == "blocks" && $(i + 3) == "in") v += $(i + 1)
			if ($i == "writes,") w += $(i - 1)
		}
	} END { printf "%d acknowledged writes, %d blocks verified after restarts", w, v }' "$1"
}
log "PASS (seed $SEED): $KILLS kills in ${SECONDS_TOTAL}s, $VERIFIED_RUNS epochs verified every block of r-nbd after a kill, pool checked after every kill"
log "NBD: $(totals "$DIR/soakio-nbd.log"); NVMe/TCP: $(totals "$DIR/soakio-nvmf.log")"
