#!/usr/bin/env bash
# Every benchmark comparison in one run (`make bench`): the suites below, one
# after another, each its bench script with its default arguments. Each
# script runs its own comparisons interleaved, in rounds, against its
# baseline, and prints Markdown (medians, spread, ratios, goal verdicts). The
# driver echoes that report and writes it into the suite's section of its
# results file: the text between
#   <!-- begin make bench: SUITE -->  and  <!-- end make bench: SUITE -->
# (appended to the file when the markers are missing), headed by a line with
# the date (UTC), the commit (git describe --always, "-dirty" when files
# other than the results differ from it), the CPUs, the
# load average before and after the suite, its wall time and the exact
# command. Text outside the markers is left as it is. A suite that fails
# (exits non-zero or prints nothing) leaves its section untouched; the others
# still run, and the driver exits 1 at the end. Last, it prints a summary of
# every suite's section (date, commit, load, wall time, the report's goal
# verdicts, this run's outcome) and writes it into RESULTS.md's section
# "summary".
#
# Usage: bench/all.sh [-s SUITES] [-q] [-d DIR]
#   -s SUITES  the suites to run, separated by commas or blanks (default:
#              $SUITES, else all the default suites below, in that order);
#              a name not listed runs DIR/NAME.sh into DIR/RESULTS-NAME.md;
#              an empty list (-s '') runs nothing and rewrites the summary
#   -q         quick: each script with its shortest settings, to check the
#              driver; the sections say it is a quick run, not to be quoted
#   -d DIR     where the scripts and results files are (default: $BENCH_DIR,
#              else this script's directory)
# Default suites (script, results file, time with the default arguments):
#   nbd        nbd.sh        RESULTS.md            about 33 minutes
#   qd1        qd1.sh        RESULTS-qd1.md        about 7 minutes
#   nvmf       nvmf.sh       RESULTS-nvmf.md       about 11 minutes
#   nvmf-ab    nvmf-ab.sh    RESULTS-nvmf.md       about 14 minutes
#   nexus      nexus.sh      RESULTS-nexus.md      about 6 minutes
#   volumes    volumes.sh    RESULTS-volumes.md    under a minute
#   volume-io  volume-io.sh  RESULTS-volumes.md    about 3 minutes
#   heal       heal.sh       RESULTS-heal.md       about 6 minutes
#   idle       idle.sh       RESULTS-idle.md       about 4 minutes
#   footprint  footprint.sh  RESULTS-footprint.md  about 5 minutes
#   snapshots  snapshots.sh  RESULTS-snapshots.md  a few minutes
#   failover   failover.sh   RESULTS-failover.md   about 2 minutes (QEMU)
#   pvc        pvc.sh        RESULTS-pvc.md        about 2 minutes (QEMU)
# About 1 h 20 min in all. Not run unless named with -s: ceph (ceph.sh,
# RESULTS-ceph.md, about 20 minutes; it runs as root and installs Ceph with
# apt-get). Never run: the soaks, bench/soak.sh and TestChaos (`make soak`,
# `make chaos`), which look for failures rather than measure.
# The scripts' progress goes to stderr; the reports and the summary to
# stdout.
set -euo pipefail
export LC_ALL=C

# name|results file|quick arguments
SUITE_TABLE=(
	"nbd|RESULTS.md|-s 64 -t 1 -r 1 -c direct"
	"qd1|RESULTS-qd1.md|-s 64 -t 1 -r 1"
	"nvmf|RESULTS-nvmf.md|-t 1 -r 1 -- -file-size 64"
	"nvmf-ab|RESULTS-nvmf.md|-n 1 -t 1 -- -backings uring -file-size 64 -paths nvmf,nbd,fio-raw -workloads randread-4k-qd1,randwrite-4k-qd1"
	"nexus|RESULTS-nexus.md|-t 1 -r 1 -s 64"
	"volumes|RESULTS-volumes.md|-n 10 -p 2 -r 1"
	"volume-io|RESULTS-volumes.md|-s 64 -t 1 -r 1"
	"heal|RESULTS-heal.md|-s 64 -r 1 -w 5 -n 4 -v 64"
	"idle|RESULTS-idle.md|-w 5 -k 1 -s 5"
	"footprint|RESULTS-footprint.md|-r 20 -w 5 -k 1 -s 2"
	"snapshots|RESULTS-snapshots.md|-k 1 -i 10"
	"failover|RESULTS-failover.md|-r 1"
	"pvc|RESULTS-pvc.md|-r 1"
	"ceph|RESULTS-ceph.md|-s 256 -t 2 -r 1"
)
DEFAULT_SUITES="nbd qd1 nvmf nvmf-ab nexus volumes volume-io heal idle footprint snapshots failover pvc"

DIR=${BENCH_DIR:-$(cd "$(dirname "$0")" && pwd)}
LIST=${SUITES:-$DEFAULT_SUITES}
QUICK=""
while getopts "s:qd:h" opt; do
	case $opt in
	s) LIST=$OPTARG ;;
	q) QUICK=1 ;;
	d) DIR=$OPTARG ;;
	*) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	esac
done
LIST=${LIST//,/ }
[ -d "$DIR" ] || { echo "all.sh: no directory $DIR" >&2; exit 2; }
DIR=$(cd "$DIR" && pwd)

log() { echo "all.sh: $*" >&2; }

# suite_field NAME N prints field N (1: results file, 2: quick arguments) of
# NAME's row of SUITE_TABLE: for a name not in it, RESULTS-NAME.md and none.
suite_field() {
	local row
	for row in "${SUITE_TABLE[@]}"; do
		if [ "${row%%|*}" = "$1" ]; then
			cut -d'|' -f$(($2 + 1)) <<<"$row"
			return
		fi
	done
	[ "$2" = 1 ] && echo "RESULTS-$1.md"
	return 0
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# wall SECONDS prints a duration as "1 h 2 min 3 s", "2 min 3 s" or "3 s".
wall() {
	local s=$1
	if [ "$s" -ge 3600 ]; then
		echo "$((s / 3600)) h $((s % 3600 / 60)) min $((s % 60)) s"
	elif [ "$s" -ge 60 ]; then
		echo "$((s / 60)) min $((s % 60)) s"
	else
		echo "$s s"
	fi
}

# replace_section FILE SUITE CONTENT puts the file CONTENT between SUITE's
# markers in FILE, or appends the markers and CONTENT when FILE has none
# (creating FILE when missing). The rest of FILE is kept byte for byte.
replace_section() {
	local file=$1 suite=$2 content=$3 begin end tmp
	begin="<!-- begin make bench: $suite -->"
	end="<!-- end make bench: $suite -->"
	touch "$file"
	tmp=$(mktemp "$file.XXXXXX")
	if grep -qxF "$begin" "$file" && grep -qxF "$end" "$file"; then
		awk -v b="$begin" -v e="$end" -v c="$content" '
			$0 == b { print; while ((getline l < c) > 0) print l; skip = 1; next }
			$0 == e { skip = 0 }
			!skip' "$file" >"$tmp"
	else
		{
			cat "$file"
			[ ! -s "$file" ] || echo
			echo "$begin"
			cat "$content"
			echo "$end"
		} >"$tmp"
	fi
	chmod 644 "$tmp"
	mv "$tmp" "$file"
}

# section FILE SUITE prints the text between SUITE's markers in FILE.
section() {
	[ -f "$1" ] || return 0
	awk -v b="<!-- begin make bench: $2 -->" -v e="<!-- end make bench: $2 -->" '
		$0 == e { on = 0 } on { print } $0 == b { on = 1 }' "$1"
}

# The generated line that heads every section; the summary reads back its
# fields, which are separated by "; " and contain none. (Sections written
# before this script existed carry the same fields in a line that says so.)
stamp() { # stamp DATE COMMIT CPUS LOAD0 LOAD1 WALL COMMAND
	echo "Generated by \`make bench\` (bench/all.sh): run of $1; commit $2; $3 CPUs; load average $4 before, $5 after; wall time $6; command \`$7\`."
}

# stamp_field NAME LINE prints the field NAME of a stamp line.
stamp_field() { sed -n "s/.*$1 \([^;]*\);.*/\1/p" <<<"$2"; }

# The commit, "-dirty" when anything but the results files (which a run of
# this script rewrites) differs from it.
COMMIT=$(git -C "$DIR" describe --always 2>/dev/null || echo unknown)
if [ "$COMMIT" != unknown ] && [ -n "$(git -C "$DIR" status --porcelain --untracked-files=no -- "$(git -C "$DIR" rev-parse --show-toplevel)" ":(exclude,glob)**/RESULTS*.md" 2>/dev/null)" ]; then
	COMMIT+=-dirty
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nexstor-bench-all.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

declare -A OUTCOME
FAILED=()
RAN=()
for suite in $LIST; do
	script=$DIR/$suite.sh
	results=$DIR/$(suite_field "$suite" 1)
	args=()
	if [ -n "$QUICK" ]; then
		read -r -a args <<<"$(suite_field "$suite" 2)"
	fi
	RAN+=("$suite")
	if [ ! -f "$script" ]; then
		log "$suite: no script $script"
		OUTCOME[$suite]="failed: no $suite.sh"
		FAILED+=("$suite")
		continue
	fi
	cmd="bench/$suite.sh${args[*]:+ ${args[*]}}"
	echo "## $suite: $cmd"
	echo
	log "$suite: $cmd (load average $(loadavg))"
	date=$(date -u +%Y-%m-%dT%H:%MZ)
	load0=$(loadavg)
	start=$SECONDS
	set +e
	bash "$script" "${args[@]}" | tee "$WORK/$suite.md"
	rc=${PIPESTATUS[0]}
	set -e
	took=$((SECONDS - start))
	load1=$(loadavg)
	echo
	if [ "$rc" -ne 0 ] || ! grep -q '[^[:space:]]' "$WORK/$suite.md"; then
		[ "$rc" -ne 0 ] || rc="0 with an empty report"
		log "$suite: FAILED (exit status $rc after $(wall "$took")); $(basename "$results") left as it was"
		OUTCOME[$suite]="failed on $date (exit status $rc); the section is older"
		FAILED+=("$suite")
		continue
	fi
	{
		stamp "$date" "$COMMIT" "$(nproc)" "$load0" "$load1" "$(wall "$took")" "$cmd"
		if [ -n "$QUICK" ]; then
			echo
			echo "**Quick run (\`bench/all.sh -q\`, the shortest settings): it checks the driver; do not quote these numbers.**"
		fi
		echo
		# A report ending in blank lines would grow the file at every run.
		sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$WORK/$suite.md"
	} >"$WORK/$suite.section"
	replace_section "$results" "$suite" "$WORK/$suite.section"
	OUTCOME[$suite]="ok"
	[ -z "$QUICK" ] || OUTCOME[$suite]="ok (quick run)"
	log "$suite: done in $(wall "$took"); wrote $(basename "$results")"
done

# The summary covers every suite of the table that has a section (and every
# suite of this run), from what the results files now hold.
summary_suites=()
for row in "${SUITE_TABLE[@]}"; do
	summary_suites+=("${row%%|*}")
done
for suite in "${RAN[@]}"; do
	[[ " ${summary_suites[*]} " == *" $suite "* ]] || summary_suites+=("$suite")
done
{
	echo "Summary of the generated sections, written by \`bench/all.sh\` at $(date -u +%Y-%m-%dT%H:%MZ) (commit $COMMIT): each suite's last successful run and the goal verdicts its report printed. \"This run\" says what became of the suite in the run that wrote this table."
	echo
	echo "| suite | results | run of | commit | load before, after | wall time | goal verdicts | this run |"
	echo "|---|---|---|---|---|---|---|---|"
	for suite in "${summary_suites[@]}"; do
		file=$(suite_field "$suite" 1)
		body=$(section "$DIR/$file" "$suite")
		if [ -z "$body" ] && [ -z "${OUTCOME[$suite]:-}" ]; then
			continue
		fi
		line=$(grep -m1 'run of [^;]*; commit [^;]*; .*; wall time ' <<<"$body" || true)
		when=$(stamp_field "run of" "$line")
		commit=$(stamp_field commit "$line")
		# The 1-minute load averages: the others are in the section.
		load=$(sed -n 's/.*load average \([^ ;]*\)[^;]* before, \([^ ;]*\)[^;]* after[^;]*;.*/\1, \2/p' <<<"$line")
		took=$(stamp_field "wall time" "$line")
		grep -q '^\*\*Quick run' <<<"$body" && when="$when (quick run)"
		[[ $line != "Output of "* ]] || when="$when, copied by hand"
		verdicts=$(awk '{ l = tolower($0) } l ~ /goal/ && l ~ /(^|[^a-z])(met|missed)([^a-z]|$)/ {
			sub(/^[-*] /, ""); gsub(/\|/, "\\|"); printf "%s%s", (n++ ? "<br>" : ""), $0 }' <<<"$body")
		echo "| $suite | $file | ${when:--} | ${commit:--} | ${load:--} | ${took:--} | ${verdicts:-none printed} | ${OUTCOME[$suite]:-not run} |"
	done
	if [ ${#FAILED[@]} -gt 0 ]; then
		echo
		echo "Failed in this run: ${FAILED[*]}."
	fi
} >"$WORK/summary.section"

echo "## Summary"
echo
cat "$WORK/summary.section"
replace_section "$DIR/RESULTS.md" summary "$WORK/summary.section"

if [ ${#FAILED[@]} -gt 0 ]; then
	log "failed: ${FAILED[*]} (their sections were left as they were)"
	exit 1
fi
