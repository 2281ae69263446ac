#!/bin/bash
# bench_url.sh - URL source throughput and latency against curl, same run.
#
#   bench/bench_url.sh [SIZE_MIB]        (default 1024)
#
# Starts its own nginx on 127.0.0.1 (random free port, config, logs and pid
# in a tmp dir it creates and removes) serving one file of SIZE_MIB random
# bytes, then, REPS times each (default 3), interleaved:
#   - sequential read: `curl -s -o /dev/null URL`  vs  `cat MNT/f > /dev/null`
#     on a fresh streamfs mount (foreground -f), MiB/s each and the ratio;
#   - download to a file: `curl -s -o FILE URL`, FILE in BENCH_DL_DIR
#     (default /var/tmp, where streamfs keeps its store by default): what
#     people do without streamfs, next to the same sequential read;
#   - second read: `cat MNT/f` again on the same mount, at once (the
#     stream is complete) vs `cat FILE` of the local file, page-cached;
#   - first 4 KiB: `curl -s -r 0-4095 -o /dev/null URL`  vs
#     `head -c 4096 MNT/f` on a fresh mount (mount time not counted).
# Prints the median of each. Environment: STREAMFS (binary, default
# build/streamfs), STREAMFS_OPTS (extra options, e.g. --cache-dir=memory),
# REPS, BENCH_TMP (parent of the tmp dir, default /tmp), BENCH_DL_DIR,
# BENCH_MEM (warm, the default, or asis: the state of free memory before the
# download and the first read, both of which write a new page per 4 KiB; see
# bench/memstate.sh; the last line says what writing SIZE_MIB costs here).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STREAMFS=${STREAMFS:-$REPO/build/streamfs}
STREAMFS_OPTS=${STREAMFS_OPTS:-}
SIZE_MIB=${1:-${SIZE_MIB:-1024}}
REPS=${REPS:-3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

# shellcheck source=bench/nginx.sh
. "$(dirname "$0")/nginx.sh"
# shellcheck source=bench/mount.sh
. "$(dirname "$0")/mount.sh"
bench_need bench_url "$STREAMFS" "$NGINX" curl

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/bench_url.XXXXXX")
DL=${BENCH_DL_DIR:-/var/tmp}/bench_url.download.$$
MNT=$TMP/mnt
NGINX_PID=
SFS_PID=

cleanup() {
	set +e
	stop_streamfs
	nginx_stop
	rm -rf "$TMP" "$DL"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# shellcheck source=bench/memstate.sh
. "$(dirname "$0")/memstate.sh"
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ---- the file and nginx
mkdir -p "$TMP/www" "$TMP/nginx" "$MNT"
echo "bench_url: making a ${SIZE_MIB} MiB file in $TMP ..." >&2
dd if=/dev/urandom of="$TMP/www/f" bs=1M count="$SIZE_MIB" status=none
BYTES=$(stat -c %s "$TMP/www/f")

nginx_start || exit 1
cat "$TMP/www/f" >/dev/null # page cache warm: measure streamfs and curl, not the disk
DL_DIR=$(dirname "$DL")
FLOOR=$(mem_floor "$DL_DIR" "$SIZE_MIB")

start_streamfs() {
	# shellcheck disable=SC2086
	"$STREAMFS" -f $STREAMFS_OPTS "$MNT" "f=$URL" </dev/null >"$TMP/streamfs.log" 2>&1 &
	SFS_PID=$!
	for _ in $(seq 200); do
		mountpoint -q "$MNT" && return 0
		kill -0 "$SFS_PID" 2>/dev/null || break
		sleep 0.025
	done
	echo "bench_url: streamfs did not mount:" >&2
	cat "$TMP/streamfs.log" >&2
	exit 1
}

: >"$TMP/seq_curl"; : >"$TMP/seq_sfs"; : >"$TMP/ttfb_curl"; : >"$TMP/ttfb_sfs"
: >"$TMP/re_local"; : >"$TMP/re_sfs"; : >"$TMP/seq_dl"
mibps() { awk -v b="$BYTES" -v a="$1" -v z="$2" 'BEGIN {printf "%.1f\n", b/1048576/(z-a)}'; }
for r in $(seq "$REPS"); do
	echo "bench_url: round $r/$REPS" >&2
	# sequential, curl
	t0=$(now); curl -s -o /dev/null "$URL"; t1=$(now)
	mibps "$t0" "$t1" >>"$TMP/seq_curl"
	# download to a file
	mem_state "$DL_DIR" "$SIZE_MIB"
	t0=$(now); curl -s -o "$DL" "$URL"; t1=$(now)
	rm -f "$DL"
	mibps "$t0" "$t1" >>"$TMP/seq_dl"
	# sequential, streamfs (fresh mount: the bytes come over HTTP)
	start_streamfs
	mem_state "$DL_DIR" "$SIZE_MIB"
	t0=$(now); cat "$MNT/f" >/dev/null; t1=$(now)
	got=$(stat -c %s "$MNT/f")
	# second read, same mount, at once
	t2=$(now); cat "$MNT/f" >/dev/null; t3=$(now)
	stop_streamfs
	[ "$got" = "$BYTES" ] || { echo "bench_url: size through the mount $got != $BYTES" >&2; exit 1; }
	mibps "$t0" "$t1" >>"$TMP/seq_sfs"
	mibps "$t2" "$t3" >>"$TMP/re_sfs"
	# the local file from the page cache
	t0=$(now); cat "$TMP/www/f" >/dev/null; t1=$(now)
	mibps "$t0" "$t1" >>"$TMP/re_local"
	# first 4 KiB, curl
	t0=$(now); curl -s -r 0-4095 -o /dev/null "$URL"; t1=$(now)
	awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.2f\n", (z-a)*1000}' >>"$TMP/ttfb_curl"
	# first 4 KiB, streamfs on a fresh mount
	start_streamfs
	t0=$(now); n=$(head -c 4096 "$MNT/f" | wc -c); t1=$(now)
	stop_streamfs
	[ "$n" = 4096 ] || { echo "bench_url: head -c 4096 gave $n bytes" >&2; exit 1; }
	awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.2f\n", (z-a)*1000}' >>"$TMP/ttfb_sfs"
done

SC=$(median <"$TMP/seq_curl"); SS=$(median <"$TMP/seq_sfs")
TC=$(median <"$TMP/ttfb_curl"); TS=$(median <"$TMP/ttfb_sfs")
RL=$(median <"$TMP/re_local"); RS=$(median <"$TMP/re_sfs")
SD=$(median <"$TMP/seq_dl")
echo
echo "URL source vs curl: ${SIZE_MIB} MiB from nginx on 127.0.0.1, median of $REPS, BENCH_MEM=$BENCH_MEM"
printf '%-28s %12s %12s %14s\n' "measure" "streamfs" "baseline" "ratio"
printf '%-28s %12s %12s %14s\n' "sequential read (MiB/s)" "$SS" "$SC" "$(awk -v a="$SS" -v b="$SC" 'BEGIN {printf "%.2f", a/b}')"
printf '%-28s %12s %12s %14s\n' "vs download to a file" "$SS" "$SD" "$(awk -v a="$SS" -v b="$SD" 'BEGIN {printf "%.2f", a/b}')"
printf '%-28s %12s %12s %14s\n' "second read (MiB/s)" "$RS" "$RL" "$(awk -v a="$RS" -v b="$RL" 'BEGIN {printf "%.2f", a/b}')"
printf '%-28s %12s %12s %14s\n' "first 4 KiB, fresh (ms)" "$TS" "$TC" "$(awk -v a="$TS" -v b="$TC" 'BEGIN {printf "%.2f", a/b}')"
echo "(baselines: sequential, curl -s -o /dev/null vs cat MNT/f >/dev/null; download to a file,"
echo " curl -s -o FILE in ${BENCH_DL_DIR:-/var/tmp} vs the same cat MNT/f; second read, cat of the"
echo " local page-cached file vs cat MNT/f again at once; first 4 KiB, curl -r 0-4095 vs head -c 4096)"
echo "$FLOOR"
