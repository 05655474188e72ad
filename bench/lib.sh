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
