#!/usr/bin/env bash
# NVMe/TCP before/after: the target and initiator (internal/nvmf) of a base
# revision against those of the working tree, measured in alternating
# rounds in the same minutes, both against fio with ioengine=io_uring and
# direct=1 on the same file (bench/nvmfbench, backing "uring": a pre-filled
# file exported as it is, O_DIRECT through io_uring).
#
# Both builds use this tree's bench/nvmfbench (and the rest of this tree);
# only internal/nvmf (or the packages -p names) is taken from the base
# revision. Each round runs every
# workload once per build (nvmfbench -r 1), the order of the builds
# alternating from round to round; the rounds of a build are then pooled
# (medians). Then, for each build, the server process is traced with
# `strace -c -f` during 4 KiB QD 1 reads and writes, for all its system
# calls per I/O (nvmfbench itself counts only read and write calls); an I/O
# is one response, so the socket writes (write, writev) count the I/Os.
#
# Usage: bench/nvmf-ab.sh [-b REV] [-p DIRS] [-n ROUNDS] [-t SECONDS] [-o OUTDIR] [-- nvmfbench flags]
#   -b REV      base revision (default HEAD: the tree against its last commit)
#   -p DIRS     comma-separated package directories taken from REV (default
#               internal/nvmf), e.g. internal/nvmf,internal/iobuf
#   -n ROUNDS   rounds per build (default 3)
#   -t SECONDS  runtime of each measured run (default 3)
#   -o OUTDIR   keep the reports, samples and traces here (default: a new
#               directory under ${TMPDIR:-/var/tmp})
# Flags after -- go to both builds' nvmfbench (default: -backings uring
# -file-size 1024 -paths nvmf,nbd,nbd-go,fio-raw and the workloads below).
set -euo pipefail

BASE=HEAD
ROUNDS=3
RUNTIME=3
OUT=""
PKGS=internal/nvmf
while getopts "b:p:n:t:o:h" opt; do
	case $opt in
	b) BASE=$OPTARG ;;
	p) PKGS=$OPTARG ;;
	n) ROUNDS=$OPTARG ;;
	t) RUNTIME=$OPTARG ;;
	o) OUT=$OPTARG ;;
	*) sed -n '2,28p' "$0"; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
for tool in fio go git strace; do
	command -v "$tool" >/dev/null || { echo "nvmf-ab.sh: $tool is missing" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IFS=, read -r -a DIRS <<<"$PKGS"
for d in "${DIRS[@]}"; do
	case $d in
	internal/?* | bench/?*) [[ $d != *..* ]] || d=bad ;;
	*) d=bad ;;
	esac
	if [ "$d" = bad ] || ! (cd "$ROOT" && git cat-file -e "$BASE:${d%/}" 2>/dev/null); then
		echo "nvmf-ab.sh: -p $PKGS: each entry must be a package directory under internal/ or bench/ that exists at $BASE, relative to the repository root" >&2
		exit 2
	fi
done
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-nvmf-ab.XXXXXX")
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-nvmf-ab-work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "nvmf-ab.sh: building base ($BASE, $PKGS) and new (working tree); output in $OUT" >&2
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$OUT/new-nvmfbench" ./bench/nvmfbench)
mkdir -p "$WORK/src"
(cd "$ROOT" && tar -c --exclude=.git . | tar -x -C "$WORK/src")
for d in "${DIRS[@]}"; do
	rm -rf "${WORK:?}/src/$d"
done
(cd "$ROOT" && git archive "$BASE" "${DIRS[@]}" | tar -x -C "$WORK/src")
(cd "$WORK/src" && CGO_ENABLED=0 go build -o "$OUT/base-nvmfbench" ./bench/nvmfbench)

ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
	ARGS=(-backings uring -file-size 1024 -paths nvmf,nbd,nbd-go,fio-raw
		-workloads randread-4k-qd1,randwrite-4k-qd1,randread-4k-qd32,randwrite-4k-qd32,write-1m-qd8)
fi
mkdir -p "$WORK/data"

for i in $(seq "$ROUNDS"); do
	if [ $((i % 2)) -eq 1 ]; then order="base new"; else order="new base"; fi
	for b in $order; do
		echo "nvmf-ab.sh: round $i: $b; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
		"$OUT/$b-nvmfbench" -dir "$WORK/data" -t "$RUNTIME" -r 1 -json "$OUT/$b-$i.json" "${ARGS[@]}" >"$OUT/$b-$i.md"
	done
done

# strace_run BUILD WORKLOAD: all system calls of the server per I/O.
strace_run() {
	local b=$1 w=$2 log="$OUT/strace-$1-$2.log" pid="" n
	mkdir -p "$WORK/strace"
	"$OUT/$b-nvmfbench" -dir "$WORK/strace" -backings uring -file-size 256 -paths nvmf -workloads "$w" -t 8 -r 1 >/dev/null 2>"$log" &
	local drv=$!
	for n in $(seq 120); do
		sleep 0.5
		grep -q "run 1 of 1" "$log" && break
		kill -0 "$drv" 2>/dev/null || { echo "| $b | $w | failed: $(tail -1 "$log") |"; return; }
	done
	sleep 2
	pid=$(pgrep -f "^$OUT/$b-nvmfbench -serve" | head -1)
	timeout -s INT 3 strace -c -f -p "$pid" -o "$OUT/strace-$b-$w.txt" 2>/dev/null || true
	wait "$drv"
	awk -v b="$b" -v w="$w" '
		$NF == "total" { total = $4 }
		$NF == "write" || $NF == "writev" { ios += $4 }
		$NF ~ /^(futex|epoll_pwait|io_uring_enter|nanosleep|read|write|writev)$/ { c[$NF] = $4 }
		END {
			if (ios == 0) { print "| " b " | " w " | no I/O seen |"; exit }
			printf "| %s | %s | %.2f |", b, w, total / ios
			n = split("read write writev epoll_pwait futex io_uring_enter nanosleep", k, " ")
			for (j = 1; j <= n; j++) printf " %.2f |", c[k[j]] / ios
			printf "\n"
		}' "$OUT/strace-$b-$w.txt"
}

{
	for b in base new; do
		files=$(ls "$OUT"/$b-[0-9]*.json | paste -sd, -)
		echo "### $b"
		echo
		"$OUT/$b-nvmfbench" -from "$files" -t "$RUNTIME" "${ARGS[@]}"
	done
	echo "### System calls of the server per I/O (strace -c -f, 3 s of an 8 s run)"
	echo
	echo "| build | workload | all | read | write | writev | epoll_pwait | futex | io_uring_enter | nanosleep |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
	for w in randread-4k-qd1 randwrite-4k-qd1; do
		for b in base new; do
			strace_run "$b" "$w"
		done
	done
	echo
	echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/report.md"
echo "Reproduce: bench/nvmf-ab.sh -b $BASE$([ "$PKGS" = internal/nvmf ] || echo " -p $PKGS") -n $ROUNDS -t $RUNTIME${*:+ -- $*}"
