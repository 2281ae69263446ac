#!/bin/sh
# Throughput of a command stream through streamfs, next to the same bytes
# read directly, in the same run.
#   1. first read: 'cat FILE' piped through streamfs (cmd:cat FILE), read
#      with dd bs=1M while it fills, vs. 'cat FILE > /dev/null' from the
#      page cache (the source's own speed).
#   2. re-read of the completed stream (straight from the store's pages
#      where FUSE passthrough is available, else from the page cache after
#      one read that fills it) vs. a re-read of FILE.
# The store is the default one (--cache-dir /var/tmp) unless STREAMFS_OPTS
# says otherwise, e.g. STREAMFS_OPTS=--cache-dir=memory. BENCH_MEM (warm,
# the default, or asis) sets the state of free memory before each first
# read, which writes a new page of the store per 4 KiB (bench/memstate.sh).
# Usage: [REPS=N] bench/bench_cmd.sh [SIZE_MIB]   (default 1024, REPS 3)
set -eu
cd "$(dirname "$0")/.."
size=${1:-1024}
bin=${STREAMFS_BIN:-$PWD/build/streamfs}
tmp=$(mktemp -d /var/tmp/streamfs-bench.XXXXXX)
mnt=$tmp/mnt
mkdir "$mnt"
pid=
cleanup() {
	fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

f=$tmp/data.bin
head -c "$((size * 1048576))" /dev/urandom > "$f"
sync # no writeback of the test file competes with the measurement
cat "$f" > /dev/null # warm the page cache: measure streamfs, not the disk

. ./bench/memstate.sh
floor=$(mem_floor "$tmp" "$size") # before any run frees memory
now() { date +%s.%N; }
rate() { awk -v s="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.0f", s / (b - a) }'; }
mib_s() { # command...
	t0=$(now); "$@" > /dev/null 2>&1; t1=$(now); rate "$size" "$t0" "$t1"
}

wait_mounted() {
	i=0
	until grep -q " $mnt fuse" /proc/mounts; do
		i=$((i + 1)); [ $i -lt 500 ] || { echo "mount did not appear" >&2; exit 1; }
		sleep 0.01
	done
}

start() {
	"$bin" -f ${STREAMFS_OPTS:-} "$mnt" "data.bin=cmd:cat $f" 2>"$tmp/daemon.log" &
	pid=$!
	wait_mounted
}
stop() {
	fusermount3 -u "$mnt"
	wait "$pid" || true
	pid=
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
pipe_rate() { t0=$(now); cat "$f" | cat > /dev/null; t1=$(now); rate "$size" "$t0" "$t1"; }

# The first read on a fresh mount per repetition, each next to the two
# baselines, interleaved; the re-reads once, on the last mount.
: > "$tmp/first"; : > "$tmp/direct"; : > "$tmp/piped"
r=0
while [ $r -lt "${REPS:-3}" ]; do
	r=$((r + 1))
	echo "$(mib_s cat "$f")" >> "$tmp/direct"
	echo "$(pipe_rate)" >> "$tmp/piped"
	[ -z "$pid" ] || stop
	start
	mem_state "$tmp" "$size"
	echo "$(mib_s dd if="$mnt/data.bin" of=/dev/null bs=1M)" >> "$tmp/first"
done
first=$(median < "$tmp/first"); cat_first=$(median < "$tmp/direct"); piped=$(median < "$tmp/piped")
reread_local=$(mib_s cat "$f")
cat "$mnt/data.bin" > /dev/null # the first page-cache read fills the cache
reread=$(mib_s cat "$mnt/data.bin")
reread_dd=$(mib_s dd if="$mnt/data.bin" of=/dev/null bs=1M)
local_dd=$(mib_s dd if="$f" of=/dev/null bs=1M)
sum_ok=no
[ "$(sha256sum < "$mnt/data.bin")" = "$(sha256sum < "$f")" ] && sum_ok=yes

echo "first read: median of ${REPS:-3} (fresh mount each: $(tr '\n' ' ' < "$tmp/first")MiB/s)"
printf '%-44s %10s %10s %7s\n' "test ($size MiB)" "streamfs" "baseline" "ratio"
row() { printf '%-44s %10s %10s %7s\n' "$1" "$2" "$3" "$(awk -v a="$2" -v b="$3" 'BEGIN{printf "%.2f", a/b}')"; }
row "first read, dd bs=1M vs cat FILE (MiB/s)" "$first" "$cat_first"
row "first read vs cat FILE | cat (MiB/s)" "$first" "$piped"
row "re-read, cat vs cat FILE (MiB/s)" "$reread" "$reread_local"
row "re-read, dd bs=1M vs dd FILE (MiB/s)" "$reread_dd" "$local_dd"
echo "content identical: $sum_ok"
echo "$floor"
