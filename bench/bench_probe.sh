#!/bin/bash
# bench_probe.sh - one tool on one file: through a fresh streamfs mount of
# the file served by nginx on 127.0.0.1, next to the same tool on the local
# file (in the page cache), interleaved, REPS times; medians and min-max.
#
#   [REPS=15] [STREAMFS=build/streamfs] [STREAMFS_B=other/streamfs] \
#   [STREAMFS_OPTS="--fill=ondemand"] bench/bench_probe.sh FILE TOOL [ARGS...]
#
# e.g. bench/bench_probe.sh a.zip unzip -l
#      bench/bench_probe.sh movie.mp4 ffprobe -v error -show_entries format=duration
#
# The tool's whole run is timed (exec included, as a user sees it), its
# output thrown away; its exit status must be 0 on every system. Each
# streamfs run mounts FILE as the only file of a new mount, so the stream
# starts with the tool's first look at it (the default fill=all downloads
# the whole file meanwhile), and unmounts after. With STREAMFS_B a second
# binary runs in the same rounds (an A/B of two builds).
set -eu
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/bench_probe.sh FILE TOOL [ARGS...]" >&2; exit 2; }
src=$(realpath "$1")
shift
[ -f "$src" ] || { echo "bench_probe: $src: not a file" >&2; exit 2; }
name=$(basename "$src")
reps=${REPS:-15}
bin=${STREAMFS:-$PWD/build/streamfs}
bin_b=${STREAMFS_B:-}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
TMP=$(mktemp -d /var/tmp/streamfs-probe.XXXXXX)
mnt=$TMP/mnt
mkdir -p "$mnt" "$TMP/www/f"
ln -s "$src" "$TMP/www/f/$name"
pid=
# shellcheck disable=SC2317 # reached through the trap
cleanup() {
	set +e
	fusermount3 -u "$mnt" 2>/dev/null
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	fi
	nginx_stop
	rm -rf "$TMP"
}
# shellcheck source=bench/nginx.sh
. ./bench/nginx.sh
trap cleanup EXIT
trap 'exit 130' INT TERM
nginx_start
cat "$src" >/dev/null # the local file and nginx read from the page cache

now() { date +%s%N; }
run_tool() { # PATH: prints the tool's wall time in ms
	local t0 t1
	t0=$(now)
	if ! "$@" >/dev/null 2>"$TMP/tool.err"; then
		echo "bench_probe: '$*' failed:" >&2
		cat "$TMP/tool.err" >&2
		exit 1
	fi
	t1=$(now)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", (b - a) / 1e6 }'
}
on_mount() { # BINARY TOOL...: the tool on a fresh mount
	local b=$1
	shift
	# shellcheck disable=SC2086 # STREAMFS_OPTS is a list of options
	"$b" -f ${STREAMFS_OPTS:-} "$mnt" "$name=$URL/$name" 2>>"$TMP/streamfs.err" &
	pid=$!
	for _ in $(seq 200); do # polled with a deadline (10 s): no readiness signal
		mountpoint -q "$mnt" && break
		kill -0 "$pid" 2>/dev/null || { cat "$TMP/streamfs.err" >&2; exit 1; }
		sleep 0.05
	done
	run_tool "$@" "$mnt/$name"
	fusermount3 -u "$mnt"
	wait "$pid"
	pid=
}
stats() { # values...: median (min-max)
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
		printf "%s (%s-%s)", v[int((NR + 1) / 2)], v[1], v[NR] }'
}

local_t=() a_t=() b_t=()
for _ in $(seq "$reps"); do
	local_t+=("$(run_tool "$@" "$src")")
	a_t+=("$(on_mount "$bin" "$@")")
	[ -n "$bin_b" ] && b_t+=("$(on_mount "$bin_b" "$@")")
done
echo "$* on $name ($(stat -c %s "$src") bytes), ms, median (min-max) of $reps:"
echo "  local file      $(stats "${local_t[@]}")"
echo "  streamfs        $(stats "${a_t[@]}")   ($bin)"
[ -n "$bin_b" ] && echo "  streamfs (B)    $(stats "${b_t[@]}")   ($bin_b)"
exit 0
