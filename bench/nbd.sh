#!/usr/bin/env bash
# NBD benchmark: fio's nbd engine against
#   (a) Nexstor aio: `nexstor server`, an aio:// pool (the pread/pwrite
#       engine; a file:// pool gets io_uring since it became the default), a
#       thin replica shared over NBD;
#   (b) Nexstor uring: the same server, a second pool on uring:// (the same
#       file backend with its I/O through io_uring), a thin replica on it;
#   (c) nbdkit's file plugin serving a plain file on the same filesystem;
#   (d) fio directly on a plain file (libaio, direct=1), the backing store;
#   (e) the same with fio's io_uring engine (direct=1): raw io_uring, the
#       raw baseline;
#   (f) the same with fio's buffers on 2 MiB huge pages (--mem=mmaphuge on
#       a hugetlbfs mount the script sets up and removes; root only,
#       skipped otherwise): raw io_uring from physically contiguous
#       buffers, as Nexstor's NBD server's large buffers are (package
#       iobuf). On a virtual disk that handles a request per 4 KiB
#       segment, this moves the 1 MiB writes more than anything the
#       server does, so the ratio to (e) alone would flatter Nexstor;
# with the same workloads, sizes, runtime and fio options everywhere. Prints
# a markdown table per cache mode: IOPS, bandwidth, the server's CPU time per
# I/O, and the ratios aio/nbdkit, uring/nbdkit, uring/aio, uring/raw and
# uring/raw-uring (and uring/raw-uring-huge), and the goal verdicts
# (uring:// at least nbdkit's IOPS on every workload; 1 MiB writes at least
# 1.2x nbdkit's and 0.9x raw io_uring's, from 4 KiB and from huge pages); then the spread of every target's samples (max/min) and
# what the machine did during each sample (load average, steal time, the
# server's context switches per I/O, the CPU other jobs took), one line
# per sample, written to $SAMPLES-MODE.tsv when SAMPLES is set.
#
# Usage: bench/nbd.sh [-d DIR] [-s SIZE_MIB] [-t SECONDS] [-r REPEAT] [-c MODE]
#   -d DIR       scratch directory on the filesystem to measure (default: a
#                new directory under ${TMPDIR:-/var/tmp}); removed afterwards
#                unless KEEP=1
#   -s SIZE_MIB  size of the replica and of the plain files (default 1024)
#   -t SECONDS   runtime of each measured workload (default 15; plus 2 s ramp)
#   -r REPEAT    runs of each workload per target; the median is reported
#                (default 3)
#   -c MODE      direct: the pool is opened with O_DIRECT (Nexstor's default)
#                and nbdkit uses cache=none; buffered: both use the page
#                cache; both (default): one table each
# The targets run side by side and each workload runs on all five in turn,
# each round starting with the next target, after a sync, so that a change
# in the machine's load hits them alike and no run pays for another's
# write-back. Every target is pre-filled (written once with 1 MiB
# sequential writes) before it is measured, so that randread on the thin
# replica reads allocated clusters.
set -euo pipefail

SIZE_MIB=1024
RUNTIME=15
RAMP=2
REPEAT=3
MODES=(direct buffered)
DIR=""
while getopts "d:s:t:r:c:h" opt; do
	case $opt in
	d) DIR=$OPTARG ;;
	s) SIZE_MIB=$OPTARG ;;
	t) RUNTIME=$OPTARG ;;
	r) REPEAT=$OPTARG ;;
	c) case $OPTARG in
		direct | buffered) MODES=("$OPTARG") ;;
		both) MODES=(direct buffered) ;;
		*) echo "nbd.sh: -c must be direct, buffered or both" >&2; exit 2 ;;
		esac ;;
	*) sed -n '2,45p' "$0"; exit 2 ;;
	esac
done

for tool in fio nbdkit nbdinfo jq go awk; do
	command -v "$tool" >/dev/null || { echo "nbd.sh: $tool is missing (apt-get install fio nbdkit libnbd-bin jq)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "nbd.sh: this fio has no nbd engine" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GRPC_ADDR=${NEXSTOR_GRPC:-127.0.0.1:20124}
NBD_PORT=${NEXSTOR_NBD_PORT:-20809}
NBDKIT_PORT=${NBDKIT_PORT:-20810}
TCK=$(getconf CLK_TCK)

if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-nbd-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
NEXSTOR_PID=""
NBDKIT_PID=""
stop_servers() {
	for p in $NEXSTOR_PID $NBDKIT_PID; do kill "$p" 2>/dev/null || true; done
	for p in $NEXSTOR_PID $NBDKIT_PID; do wait "$p" 2>/dev/null || true; done
	NEXSTOR_PID="" NBDKIT_PID=""
}
HUGE_MNT="" HUGE_PAGES_BEFORE=""
cleanup() {
	stop_servers
	if [ -n "$HUGE_MNT" ]; then
		umount "$HUGE_MNT" 2>/dev/null || true
		rmdir "$HUGE_MNT" 2>/dev/null || true
	fi
	[ -z "$HUGE_PAGES_BEFORE" ] || echo "$HUGE_PAGES_BEFORE" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

log() { echo "nbd.sh: $*" >&2; }

wait_for() { # wait_for DESCRIPTION COMMAND...
	local what=$1
	shift
	for _ in $(seq 100); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	log "$what did not come up"
	return 1
}

log "building nexstor and nexctl"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl)
NEXCTL=("$DIR/bin/nexctl" --insecure --engine "$GRPC_ADDR")

# name|fio options
WORKLOADS=(
	"randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
	"randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
	"write-1m-qd8|--rw=write --bs=1m --iodepth=8"
)
COMMON="--numjobs=1 --size=${SIZE_MIB}m --time_based --runtime=$RUNTIME --ramp_time=$RAMP --randrepeat=0 --norandommap --group_reporting --output-format=json"

# nexstor: the aio:// pool; uring: the uring:// pool of the same server.
TARGETS=(nexstor uring nbdkit raw rawuring)

# (f) raw io_uring from huge-page buffers: 16 pages of 2 MiB (fio needs
# iodepth x bs, 8 MiB, for the largest workload), on a private hugetlbfs
# mount; both are undone at exit.
if [ "$(id -u)" = 0 ] && [ "$(cat /sys/kernel/mm/transparent_hugepage/hpage_pmd_size 2>/dev/null)" = 2097152 ]; then
	HUGE_PAGES_BEFORE=$(cat /proc/sys/vm/nr_hugepages)
	# (A read-only /proc, as in a container, leaves the pool as it was.)
	echo $((HUGE_PAGES_BEFORE + 16)) 2>/dev/null >/proc/sys/vm/nr_hugepages || true
	mnt=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-nbd-huge.XXXXXX")
	if [ "$(awk '/HugePages_Free/ { print $2 }' /proc/meminfo)" -ge 16 ] && mount -t hugetlbfs -o pagesize=2M none "$mnt"; then
		HUGE_MNT=$mnt
		TARGETS+=(rawhuge)
	else
		rmdir "$mnt"
		log "no 2 MiB huge pages to be had: the raw-uring-huge column is left out"
	fi
else
	log "not root, or huge pages are not 2 MiB here: the raw-uring-huge column is left out"
fi
has_huge() { [ -n "$HUGE_MNT" ]; }
declare -A TARGET_OPTS PID_OF
declare -A IOPS BW CPU # keyed by target,workload: space-separated samples
SAMPLES_TSV=""         # per-sample log, set per mode

cpu_stat() { # total, steal and idle (idle + iowait) clock ticks of the machine
	awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9, $5 + $6 }' /proc/stat
}

ctxsw() { # voluntary + involuntary context switches of a process's threads
	[ -n "$1" ] && cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }' || echo 0
}

cpu_ticks() { # user+system clock ticks of a process and its threads
	[ -n "$1" ] && awk '{ print $14 + $15 }' "/proc/$1/stat" || echo 0
}

run_one() { # run_one TARGET WORKLOAD
	local target=$1 w=$2 name opts out dir c0 c1
	name=${w%%|*}
	opts=${w#*|}
	out="$DIR/$target-$name.json"
	dir=write
	[[ $name == randread* ]] && dir=read
	c0=$(cpu_ticks "${PID_OF[$target]}")
	local s0 x0
	s0=$(cpu_stat)
	x0=$(ctxsw "${PID_OF[$target]}")
	# fio may print notes before the JSON document.
	# shellcheck disable=SC2086
	fio --name="$name" ${TARGET_OPTS[$target]} $opts $COMMON | sed -n '/^{/,$p' >"$out"
	c1=$(cpu_ticks "${PID_OF[$target]}")
	local s1 x1
	s1=$(cpu_stat)
	x1=$(ctxsw "${PID_OF[$target]}")
	if [ "$(jq '.jobs[0].error' "$out")" != 0 ]; then
		log "$target: $name: fio reported an error"
		cat "$out" >&2
		exit 1
	fi
	local iops bw ios
	iops=$(jq ".jobs[0].$dir.iops" "$out")
	bw=$(jq ".jobs[0].$dir.bw_bytes" "$out")
	# I/Os over the whole run (ramp included), to divide the CPU time by.
	ios=$(jq ".jobs[0].$dir.total_ios" "$out")
	IOPS[$target,$name]+="$iops "
	# mode workload round target IOPS load-average steal% server-ctxsw/IO
	# others-CPU%: the machine's busy time not spent by the server or fio,
	# in % of all CPUs (what other jobs took from the run)
	local fio_cpu
	fio_cpu=$(jq '(.jobs[0].usr_cpu + .jobs[0].sys_cpu) / 100' "$out")
	printf '%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\n' "$MODE" "$name" "$ROUND" "$target" "$iops" "$(cut -d' ' -f1 /proc/loadavg)" \
		"$(awk -v a="$s0" -v b="$s1" 'BEGIN { split(a, x, " "); split(b, y, " "); if (y[1] > x[1]) printf "%.1f", 100 * (y[2] - x[2]) / (y[1] - x[1]); else print 0 }')" \
		"$(awk -v d=$((x1 - x0)) -v n="$ios" 'BEGIN { if (n > 0) printf "%.2f", d / n; else print 0 }')" \
		"$(awk -v a="$s0" -v b="$s1" -v srv=$((c1 - c0)) -v f="$fio_cpu" -v r=$((RUNTIME + RAMP)) -v hz="$TCK" -v ncpu="$(nproc)" 'BEGIN {
			split(a, x, " "); split(b, y, " "); t = y[1] - x[1]
			if (t <= 0) { print 0; exit }
			busy = t - (y[3] - x[3]) - (y[2] - x[2])
			o = busy - srv - f * r * hz
			printf "%.1f", (o < 0 ? 0 : o) * 100 / t }')" >>"$SAMPLES_TSV"
	BW[$target,$name]+="$bw "
	CPU[$target,$name]+="$(awk -v t=$((c1 - c0)) -v hz="$TCK" -v n="$ios" -v r="$RUNTIME" -v ramp="$RAMP" \
		'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / (n * (r + ramp) / r); else print 0 }') "
}

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fmt0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt_mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
verdict() { awk -v a="$1" -v b="$2" -v g="$3" 'BEGIN { print (b > 0 && a >= g * b ? "met" : "**missed**") }'; } # verdict A B GOAL: A >= GOAL x B

bench_mode() {
	local mode=$1
	MODE=$mode
	SAMPLES_TSV=$DIR/samples-$mode.tsv
	: >"$SAMPLES_TSV"
	rm -rf "$DIR/nexstor" "$DIR"/*.img
	IOPS=() BW=() CPU=()

	# (a) Nexstor, aio://; (b) Nexstor, uring://: same server, two pools.
	local q="?size=$((SIZE_MIB + 512))MiB"
	[ "$mode" = buffered ] && q="$q&direct=false"
	"$DIR/bin/nexstor" server --insecure --data-dir "$DIR/nexstor" --grpc "$GRPC_ADDR" --nbd "127.0.0.1:$NBD_PORT" --metrics "" --log-level warn >>"$DIR/nexstor.log" 2>&1 &
	NEXSTOR_PID=$!
	wait_for "nexstor server" "${NEXCTL[@]}" version
	local uri t scheme
	for t in nexstor uring; do
		scheme=aio
		[ "$t" = uring ] && scheme=uring
		"${NEXCTL[@]}" pool create "p-$t" "$scheme://$DIR/pool-$t.img$q" >/dev/null
		"${NEXCTL[@]}" replica create "r-$t" --pool "p-$t" --size "${SIZE_MIB}MiB" --thin >/dev/null
		uri=$("${NEXCTL[@]}" replica share "r-$t" --protocol nbd | tail -n1)
		TARGET_OPTS[$t]="--ioengine=nbd --uri=$uri"
		PID_OF[$t]=$NEXSTOR_PID
	done

	# (c) nbdkit
	truncate -s "${SIZE_MIB}M" "$DIR/plain.img"
	local kopts=()
	[ "$mode" = direct ] && kopts=(cache=none)
	nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$NBDKIT_PORT" file "$DIR/plain.img" "${kopts[@]}" &
	NBDKIT_PID=$!
	wait_for nbdkit nbdinfo "nbd://127.0.0.1:$NBDKIT_PORT"
	TARGET_OPTS[nbdkit]="--ioengine=nbd --uri=nbd://127.0.0.1:$NBDKIT_PORT"
	PID_OF[nbdkit]=$NBDKIT_PID

	# (d) raw
	truncate -s "${SIZE_MIB}M" "$DIR/raw.img"
	TARGET_OPTS[raw]="--ioengine=libaio --direct=1 --filename=$DIR/raw.img"
	PID_OF[raw]=""
	# (e) raw io_uring: the same file through fio's io_uring engine
	TARGET_OPTS[rawuring]="--ioengine=io_uring --direct=1 --filename=$DIR/raw.img"
	PID_OF[rawuring]=""
	# (f) raw io_uring, buffers on huge pages
	TARGET_OPTS[rawhuge]="--ioengine=io_uring --direct=1 --filename=$DIR/raw.img --mem=mmaphuge:$HUGE_MNT/fio"
	PID_OF[rawhuge]=""

	local w i
	for t in "${TARGETS[@]}"; do
		log "$mode: $t: pre-fill"
		# shellcheck disable=SC2086
		fio --name=prefill ${TARGET_OPTS[$t]} --rw=write --bs=1m --iodepth=8 --size="${SIZE_MIB}m" --output-format=json >/dev/null
	done
	for w in "${WORKLOADS[@]}"; do
		for i in $(seq "$REPEAT"); do
			ROUND=$i
			# Each round starts with another target, so that none always
			# follows the same one; and each run starts with nothing left to
			# write back: nbdkit's cache=none and the buffered mode leave
			# dirty pages that would otherwise be written during, and slow,
			# whichever run comes next.
			local k
			for k in "${!TARGETS[@]}"; do
				t=${TARGETS[$(((k + i - 1) % ${#TARGETS[@]}))]}
				log "$mode: ${w%%|*}: $t (run $i of $REPEAT)"
				sync
				run_one "$t" "$w"
			done
		done
	done
	stop_servers

	echo "### cache mode: $mode"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), ${SIZE_MIB} MiB on $(df -T "$DIR" | awk 'NR==2 { print $2 }'), ${RUNTIME} s per run, median of $REPEAT runs, $(fio --version), $(nbdkit --version | head -n1)."
	echo
	local hh="" hs=""
	has_huge && hh=" raw-uring-huge IOPS | uring/raw-uring-huge |" hs="---:|---:|"
	echo "| workload | aio IOPS | aio MiB/s | uring IOPS | uring MiB/s | nbdkit IOPS | nbdkit MiB/s | raw IOPS | raw MiB/s | raw-uring IOPS | aio/nbdkit | uring/nbdkit | uring/aio | uring/raw | uring/raw-uring |$hh server CPU µs/IO aio | uring | nbdkit |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|$hs---:|---:|---:|"
	local n fl flb ui ub ki kb ri rb qi hi hc flc uc kc goals=()
	for w in "${WORKLOADS[@]}"; do
		n=${w%%|*}
		fl=$(median <<<"${IOPS[nexstor,$n]}")
		flb=$(median <<<"${BW[nexstor,$n]}")
		ui=$(median <<<"${IOPS[uring,$n]}")
		ub=$(median <<<"${BW[uring,$n]}")
		ki=$(median <<<"${IOPS[nbdkit,$n]}")
		kb=$(median <<<"${BW[nbdkit,$n]}")
		ri=$(median <<<"${IOPS[raw,$n]}")
		rb=$(median <<<"${BW[raw,$n]}")
		qi=$(median <<<"${IOPS[rawuring,$n]}")
		flc=$(median <<<"${CPU[nexstor,$n]}")
		uc=$(median <<<"${CPU[uring,$n]}")
		kc=$(median <<<"${CPU[nbdkit,$n]}")
		hc=""
		if has_huge; then
			hi=$(median <<<"${IOPS[rawhuge,$n]}")
			hc=" $(fmt0 "$hi") | $(ratio "$ui" "$hi") |"
		fi
		goals+=("- $mode $n uring/nbdkit IOPS $(ratio "$ui" "$ki") (goal >= 1.00x): $(verdict "$ui" "$ki" 1)")
		if [[ $n == write-1m* ]]; then
			goals+=("- $mode $n uring/nbdkit IOPS $(ratio "$ui" "$ki") (goal >= 1.20x): $(verdict "$ui" "$ki" 1.2)")
			goals+=("- $mode $n uring/raw-uring IOPS $(ratio "$ui" "$qi") (goal >= 0.90x): $(verdict "$ui" "$qi" 0.9)")
			! has_huge || goals+=("- $mode $n uring/raw-uring-huge IOPS $(ratio "$ui" "$hi") (goal >= 0.90x): $(verdict "$ui" "$hi" 0.9)")
		fi
		echo "| $n | $(fmt0 "$fl") | $(fmt_mib "$flb") | $(fmt0 "$ui") | $(fmt_mib "$ub") | $(fmt0 "$ki") | $(fmt_mib "$kb") | $(fmt0 "$ri") | $(fmt_mib "$rb") | $(fmt0 "$qi") | $(ratio "$fl" "$ki") | $(ratio "$ui" "$ki") | $(ratio "$ui" "$fl") | $(ratio "$ui" "$ri") | $(ratio "$ui" "$qi") |$hc $flc | $uc | $kc |"
	done
	echo
	printf '%s\n' "${goals[@]}"
	echo
	[ -z "${SAMPLES:-}" ] || cp "$SAMPLES_TSV" "$SAMPLES-$mode.tsv"
	echo "Spread of the $REPEAT samples (IOPS, min-max, and max/min):"
	echo
	echo "| workload | aio | uring | nbdkit | raw | raw-uring |$(has_huge && echo " raw-uring-huge |")"
	echo "|---|---:|---:|---:|---:|---:|$(has_huge && echo "---:|")"
	for w in "${WORKLOADS[@]}"; do
		n=${w%%|*}
		printf '| %s' "$n"
		for t in "${TARGETS[@]}"; do
			tr ' ' '\n' <<<"${IOPS[$t,$n]}" | awk 'NF { v = $1 + 0; if (min == "" || v < min) min = v; if (v > max) max = v }
				END { printf " | %.0f-%.0f %.2fx", min, max, (min > 0 ? max / min : 0) }'
		done
		echo " |"
	done
	echo
}

for m in "${MODES[@]}"; do
	bench_mode "$m"
done
echo "Reproduce: bench/nbd.sh -s $SIZE_MIB -t $RUNTIME -r $REPEAT -c $([ ${#MODES[@]} -eq 2 ] && echo both || echo "${MODES[0]}")"
