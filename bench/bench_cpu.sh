#!/bin/bash
# bench_cpu.sh - where the CPU goes in a first read: CPU seconds per GiB of
# every party, for curl to /dev/null and for a first read through a fresh
# streamfs mount, from the same nginx on 127.0.0.1, interleaved.
#
#   [REPS=5] [SIZE_MIB=1024] [STREAMFS=build/streamfs] \
#   [STREAMFS_OPTS=--cache-dir=memory] bench/bench_cpu.sh
#
# Per repetition, one line for curl (`curl -s -o /dev/null URL`) and one
# for streamfs (`dd bs=128K` of the file on a fresh mount, after a stat
# that starts the stream): MiB/s, then the CPU seconds (user + system) per
# GiB of nginx's worker, of the client (curl, or dd), and for streamfs of
# each of the daemon's threads by name (streamfs-io receives and stores,
# streamfs-reply answers the reads waiting at the download's frontier,
# "streamfs" is the FUSE workers and the main thread), and the total.
# On two CPUs the total bounds the rate: a pipeline that needs T CPU
# seconds per GiB cannot pass 2/T GiB/s, whatever runs in parallel.
# Memory is warmed before each run (bench/memstate.sh, BENCH_MEM).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STREAMFS=${STREAMFS:-$REPO/build/streamfs}
STREAMFS_OPTS=${STREAMFS_OPTS:-}
SIZE_MIB=${SIZE_MIB:-1024}
REPS=${REPS:-5}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
# shellcheck source=bench/nginx.sh
. "$HERE/nginx.sh"
# shellcheck source=bench/mount.sh
. "$HERE/mount.sh"
# shellcheck source=bench/memstate.sh
. "$HERE/memstate.sh"
bench_need bench_cpu "$STREAMFS" "$NGINX" curl

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/bench_cpu.XXXXXX")
MNT=$TMP/mnt
mkdir -p "$MNT" "$TMP/www"
NGINX_PID=
SFS_PID=

# shellcheck disable=SC2317 # reached through the trap
cleanup() {
	set +e
	stop_streamfs
	nginx_stop
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

head -c $((SIZE_MIB << 20)) /dev/urandom >"$TMP/www/f"
nginx_start
HZ=$(getconf CLK_TCK)
GIB=$(awk -v s="$SIZE_MIB" 'BEGIN { print s / 1024 }')

# CPU ticks of every thread of a process, summed per thread name.
ticks_by_name() {
	local t
	for t in /proc/"$1"/task/*; do
		# fields 14 and 15 of stat (utime, stime), after the ")" of the name
		echo "$(cat "$t/comm" 2>/dev/null) $(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{ print $12 + $13 }')"
	done | awk 'NF == 2 { a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}
ticks() { ticks_by_name "$1" | awk '{ s += $2 } END { print s + 0 }'; }
now() { date +%s.%N; }
# client CPU: /usr/bin/time's "user system" of the command
timed_cpu() { /usr/bin/time -f "%U %S" "$@" 2>&1 >/dev/null | tail -1; }

for _ in $(seq "$REPS"); do
	mem_state "$TMP" "$SIZE_MIB"
	n0=$(ticks "$NGINX_PID"); t0=$(now)
	c=$(timed_cpu curl -s -o /dev/null "$URL")
	t1=$(now); n1=$(ticks "$NGINX_PID")
	awk -v s="$SIZE_MIB" -v g="$GIB" -v t0="$t0" -v t1="$t1" -v c="$c" -v n=$((n1 - n0)) -v hz="$HZ" 'BEGIN {
		split(c, a, " "); cl = (a[1] + a[2]) / g; ng = n / hz / g
		printf "curl      %6.0f MiB/s  nginx %.2f  curl %.2f  total %.2f CPU-s/GiB\n", s / (t1 - t0), ng, cl, ng + cl }'

	mem_state "$TMP" "$SIZE_MIB"
	# shellcheck disable=SC2086
	"$STREAMFS" $STREAMFS_OPTS -f "$MNT" "f=$URL" 2>"$TMP/err" &
	SFS_PID=$!
	for _ in $(seq 200); do mountpoint -q "$MNT" && break; sleep 0.05; done
	mountpoint -q "$MNT" || { echo "bench_cpu: the mount failed:" >&2; cat "$TMP/err" >&2; exit 1; }
	stat "$MNT/f" >/dev/null
	ticks_by_name "$SFS_PID" >"$TMP/b0"
	n0=$(ticks "$NGINX_PID"); t0=$(now)
	c=$(timed_cpu dd if="$MNT/f" of=/dev/null bs=128K)
	t1=$(now); n1=$(ticks "$NGINX_PID")
	ticks_by_name "$SFS_PID" >"$TMP/b1"
	# threads started during the read count from 0
	threads=$(join -a 2 -e 0 -o 0,1.2,2.2 "$TMP/b0" "$TMP/b1" |
		awk -v hz="$HZ" -v g="$GIB" '{ printf "%s %.2f  ", $1, ($3 - $2) / hz / g; s += ($3 - $2) / hz / g } END { printf "| daemon %.2f", s }')
	awk -v s="$SIZE_MIB" -v g="$GIB" -v t0="$t0" -v t1="$t1" -v c="$c" -v n=$((n1 - n0)) -v hz="$HZ" -v th="$threads" 'BEGIN {
		split(c, a, " "); cl = (a[1] + a[2]) / g; ng = n / hz / g; split(th, d, "daemon ")
		printf "streamfs  %6.0f MiB/s  nginx %.2f  dd %.2f  %s  total %.2f CPU-s/GiB\n", s / (t1 - t0), ng, cl, th, ng + cl + d[2] }'
	stop_streamfs
done
