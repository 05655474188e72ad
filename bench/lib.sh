# Shared by the bench/*.sh scripts (sourced, not run).

# print_profiles DIR LINES prints the top of every CPU profile in DIR as
# Markdown: LINES is the sed range of `go tool pprof -top` output to keep.
print_profiles() {
	local dir=$1 lines=$2 f
	for f in "$dir"/*.pprof; do
		[ -s "$f" ] || continue
		echo "#### $(basename "$f" .pprof): top of the CPU profile"
		echo
		echo '```'
		go tool pprof -top -nodecount=25 "$f" 2>/dev/null | sed -n "${lines}p"
		echo '```'
		echo
	done
}

# median reads numbers separated by blanks or newlines on stdin and prints
# their median (0 when there are none).
median() {
	tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# percentile P reads numbers as median does and prints the nearest-rank
# P-th percentile: the smallest sample that at least P % of the samples do
# not exceed (with 20 samples, p99 is the largest; with 100, the 99th).
percentile() {
	tr ' ' '\n' | awk 'NF' | sort -g | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print 0; exit } r = int(p / 100 * NR); if (r < p / 100 * NR) r++; if (r < 1) r = 1; print v[r] }'
}

# The dev system the volume benchmarks drive (bench/volumes.sh,
# bench/volume-io.sh): `nexstor dev` with its ports moved off the
# well-known ones, so that it does not collide with a dev system someone
# runs by hand. BENCH_PORT_BASE (default 21000) moves them all: gRPC
# base+124 (node i: +i), NVMe/TCP base+420, NBD base+809, discovery base+8,
# etcd base+379 and base+380, pprof base+60. Metrics are off unless
# DEV_METRICS_PORT is set (node 0's port; node i: +i).
DEV_PORT_BASE=${BENCH_PORT_BASE:-21000}
DEV_GRPC_PORT=$((DEV_PORT_BASE + 124))
DEV_NBD_PORT=$((DEV_PORT_BASE + 809))
DEV_PPROF=127.0.0.1:$((DEV_PORT_BASE + 60))
DEV_ACCESS=127.0.0.1:$DEV_GRPC_PORT
DEV_PID=""

# dev_grpc RANK prints node RANK's gRPC address.
dev_grpc() { echo "127.0.0.1:$((DEV_GRPC_PORT + $1))"; }

# dev_start BINDIR DATADIR NODES POOLSIZE [pprof] starts the dev system in
# the background (DEV_PID) with its log in DATADIR.log and waits until all
# NODES nodes have joined. The system has no demo volume: the benchmarks
# count the volumes and replicas they make, and time calls on an empty
# system. BINDIR holds nexstor and nexctl, and devpprof
# when the fifth argument is "pprof": then the same system runs under
# bench/devpprof, which serves CPU profiles on DEV_PPROF.
dev_start() {
	local bin=$1 data=$2 nodes=$3 size=$4 how=${5:-} joined
	local args=(--nodes "$nodes" --data-dir "$data" --grpc-port "$DEV_GRPC_PORT"
		--nbd-port "$DEV_NBD_PORT" --nvmf-port $((DEV_PORT_BASE + 420))
		--discovery-port $((DEV_PORT_BASE + 8)) --etcd-port $((DEV_PORT_BASE + 379))
		--metrics-port "${DEV_METRICS_PORT:--1}" --pool-size "$size" --demo "")
	if [ "$how" = pprof ]; then
		"$bin/devpprof" --pprof "$DEV_PPROF" "${args[@]}" >"$data.out" 2>"$data.log" &
	else
		"$bin/nexstor" dev "${args[@]}" >"$data.out" 2>"$data.log" &
	fi
	DEV_PID=$!
	for _ in $(seq 600); do
		if ! kill -0 "$DEV_PID" 2>/dev/null; then
			echo "the dev system exited; the end of its log ($data.log):" >&2
			tail -n 20 "$data.log" >&2
			DEV_PID=""
			return 1
		fi
		joined=$("$bin/nexctl" --insecure -a "$DEV_ACCESS" system query -o json 2>/dev/null |
			jq '[.members[]? | select(.state == "joined")] | length' 2>/dev/null || echo 0)
		[ "$joined" = "$nodes" ] && return 0
		sleep 0.1
	done
	echo "the dev system did not come up in 60 s; the end of its log ($data.log):" >&2
	tail -n 20 "$data.log" >&2
	return 1
}

# dev_stop stops the dev system started by dev_start and waits for it.
dev_stop() {
	[ -n "$DEV_PID" ] || return 0
	kill "$DEV_PID" 2>/dev/null || true
	wait "$DEV_PID" 2>/dev/null || true
	DEV_PID=""
}

# cpu_ticks PID prints the user+system clock ticks of a process and its
# threads so far, without starting a process.
cpu_ticks() {
	local st
	read -r -a st <"/proc/$1/stat"
	echo $((st[13] + st[14]))
}

# machine_line prints the conditions of a run: time, CPUs, load, kernel, go.
machine_line() {
	echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg), Linux $(uname -r), $(go env GOVERSION)"
}
