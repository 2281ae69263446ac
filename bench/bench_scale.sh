#!/bin/sh
# Responsiveness under load: latency of metadata calls while
#   - nothing waits (baseline, same run),
#   - 256 readers (dd processes) wait on one stalled stream,
#   - 64 streams fill at once (each 16 MiB, produced in 256 KiB steps),
# and the time to list 1,000 files, next to a plain directory of 1,000
# files in the same run.
#
# Latencies are medians and 99th percentiles of N calls (default 200) in a
# python loop timed with time.perf_counter(), in microseconds:
#   stat done  - stat of a complete stream: the kernel caches its attributes
#                (what users see; the daemon is not asked),
#   stat live  - stat of a running stream: attributes are not cached, so
#                every call is a GETATTR answered by the daemon,
#   getxattr   - user.streamfs.state of the stalled stream: always the daemon.
# Usage: bench/bench_scale.sh [N]     (STREAMFS_BIN overrides the binary)
set -eu
cd "$(dirname "$0")/.."
n=${1:-200}
bin=${STREAMFS_BIN:-$PWD/build/streamfs}
py=${PYTHON:-python3}
tmp=$(mktemp -d /var/tmp/streamfs-bench-scale.XXXXXX)
mnt=$tmp/mnt
mkdir "$mnt"
pid=
readers=
cleanup() {
	for p in $readers; do kill "$p" 2>/dev/null || true; done
	fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench_scale: $*" >&2; exit 1; }
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

wait_mounted() {
	i=0
	until grep -q " $mnt fuse" /proc/mounts; do
		i=$((i + 1)); [ $i -lt 1000 ] || die "the mount did not appear"
		sleep 0.01
	done
}

unmount() {
	fusermount3 -u "$mnt" || die "fusermount3 -u failed"
	wait "$pid" || die "the daemon exited with $?"
	pid=
}

# measure LABEL: one row of the table.
measure() {
	"$py" - "$1" "$n" "$mnt/done.bin" "$mnt/live.bin" "$mnt/stalled.bin" <<'EOF'
import os, statistics, sys, time
label, n, done, live, stalled = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def lat(fn):
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); t.append((time.perf_counter() - t0) * 1e6)
    t.sort()
    return f"{statistics.median(t):8.1f} {t[min(len(t) - 1, int(len(t) * 0.99))]:8.1f}"
cols = [lat(lambda: os.stat(done)), lat(lambda: os.stat(live)),
        lat(lambda: os.getxattr(stalled, "user.streamfs.state"))]
print(f"{label:<28} " + "   ".join(cols))
EOF
}

# Wait until every PID given sleeps in read(2) (syscall 0 on x86_64, 63 on
# arm64): the readers are parked in the daemon.
wait_parked() {
	"$py" - "$@" <<'EOF'
import sys, time
pids = sys.argv[1:]
end = time.monotonic() + 60
def parked(p):
    try:
        return open(f"/proc/{p}/syscall").read().split()[0] in ("0", "63")
    except OSError:
        return False
while not all(parked(p) for p in pids):
    if time.monotonic() > end:
        sys.exit("readers did not park within 60 s")
    time.sleep(0.02)
EOF
}

state() { getfattr --absolute-names --only-values -n user.streamfs.state "$1" 2>/dev/null; }

# ---- data and manifest ----------------------------------------------------
head -c 1048576 /dev/urandom > "$tmp/done.dat"
head -c 4000000 /dev/urandom > "$tmp/stalled.dat"
mkfifo "$tmp/gate" "$tmp/livegate"
ini=$tmp/scale.ini
{
	printf '[done.bin]\nsource = cmd:cat %s\n\n' "$tmp/done.dat"
	printf '[live.bin]\nsource = cmd:echo live; cat %s >/dev/null\n\n' "$tmp/livegate"
	printf '[stalled.bin]\nsource = cmd:head -c 100000 %s; cat %s >/dev/null; tail -c +100001 %s\n\n' \
		"$tmp/stalled.dat" "$tmp/gate" "$tmp/stalled.dat"
	k=0
	while [ $k -lt 64 ]; do
		printf '[fill%02d.bin]\nsource = cmd:i=0; while [ $i -lt 64 ]; do head -c 262144 /dev/zero; sleep 0.05; i=$((i+1)); done\n\n' $k
		k=$((k + 1))
	done
} > "$ini"

"$bin" -f -c "$ini" "$mnt" 2>"$tmp/daemon.log" &
pid=$!
wait_mounted
cmp "$mnt/done.bin" "$tmp/done.dat" || { cat "$tmp/daemon.log" >&2; die "done.bin reads back wrong"; }
stat "$mnt/live.bin" > /dev/null       # starts it; returns at its first bytes
head -c 1 "$mnt/stalled.bin" > /dev/null
i=0
until [ "$(getfattr --absolute-names --only-values -n user.streamfs.bytes "$mnt/stalled.bin" 2>/dev/null)" = 100000 ]; do
	i=$((i + 1)); [ $i -lt 1000 ] || die "stalled.bin did not reach its gate"
	sleep 0.01
done

echo "metadata latency, $n calls each, microseconds (median, p99)"
printf '%-28s %17s   %17s   %17s\n' "" "stat done" "stat live" "getxattr"
measure "0 waiters (baseline)"

# ---- 256 readers waiting on one stalled stream -----------------------------
k=0
while [ $k -lt 256 ]; do
	dd if="$mnt/stalled.bin" of=/dev/null bs=4096 skip=$((25 + k * 3)) count=1 status=none &
	readers="$readers $!"
	k=$((k + 1))
done
# shellcheck disable=SC2086
wait_parked $readers || die "the 256 readers did not park"
measure "256 readers waiting"
[ "$(state "$mnt/stalled.bin")" = running ] || die "stalled.bin is not running"
: > "$tmp/gate" # releases the stream
for p in $readers; do wait "$p" || die "a reader failed"; done
readers=

# ---- 64 streams filling at once --------------------------------------------
k=0
while [ $k -lt 64 ]; do
	cat "$mnt/$(printf 'fill%02d.bin' $k)" > /dev/null &
	readers="$readers $!"
	k=$((k + 1))
done
measure "64 streams filling"
running=0
k=0
while [ $k -lt 64 ]; do
	[ "$(state "$mnt/$(printf 'fill%02d.bin' $k)")" = running ] && running=$((running + 1))
	k=$((k + 1))
done
for p in $readers; do wait "$p" || die "a fill reader failed"; done
readers=
echo "(streams still filling when that sample ended: $running of 64)"
: > "$tmp/livegate"
unmount

# ---- ls of 1,000 files -------------------------------------------------------
plain=$tmp/plain
mkdir "$plain"
k=0
{
	while [ $k -lt 1000 ]; do
		printf '[f%04d]\nsource = cmd:echo %d\n\n' $k $k
		: > "$plain/$(printf 'f%04d' $k)"
		k=$((k + 1))
	done
} > "$ini"
"$bin" -f -c "$ini" "$mnt" 2>"$tmp/daemon.log" &
pid=$!
wait_mounted
t0=$(now); c=$(ls "$mnt" | wc -l); t1=$(now)
[ "$c" -eq 1000 ] || die "ls listed $c files"
t2=$(now); ls "$mnt" > /dev/null; t3=$(now)
t4=$(now); ls "$plain" > /dev/null; t5=$(now)
t6=$(now); ls -l "$mnt" > /dev/null; t7=$(now)
t8=$(now); ls -l "$mnt" > /dev/null; t9=$(now)
ta=$(now); ls -l "$plain" > /dev/null; tb=$(now)
unmount
echo
echo "listing 1,000 files, ms"
printf '%-44s %10s %10s\n' "" "streamfs" "plain dir"
printf '%-44s %10s %10s\n' "ls, first" "$(ms "$t0" "$t1")" "$(ms "$t4" "$t5")"
printf '%-44s %10s %10s\n' "ls, again" "$(ms "$t2" "$t3")" "$(ms "$t4" "$t5")"
printf '%-44s %10s %10s\n' "ls -l, first (starts all 1,000 commands)" "$(ms "$t6" "$t7")" "$(ms "$ta" "$tb")"
printf '%-44s %10s %10s\n' "ls -l, again (all complete)" "$(ms "$t8" "$t9")" "$(ms "$ta" "$tb")"
