#!/bin/bash
# bench_cache.sh - a URL much larger than the store budget, read through it.
#
#   bench/bench_cache.sh [SIZE_MIB [BUDGET_MIB]]     (default 8192 and 256)
#
# Starts its own nginx on 127.0.0.1 (random free port, config and logs in a
# tmp dir it creates and removes) serving one file of SIZE_MIB (a random
# 64 MiB block repeated), and mounts a tmpfs of SIZE_MIB + 512 MiB for the
# store, so the store is measured from outside (statvfs, sampled every
# 50 ms). Then, on a fresh mount each:
#   - no budget:     dd bs=1M of the file, piped into sha256sum;
#   - --cache-size:  the same read, then the same read again (every byte
#                    evicted by then: fetched again with Range requests).
# Prints side by side: throughput, peak store use (sampled and the daemon's
# own cache_used), evictions, the daemon's peak RSS (VmHWM), and whether
# the bytes matched. Environment: STREAMFS (binary, default
# build/streamfs), BENCH_TMP (parent of the tmp dir, default /var/tmp).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STREAMFS=${STREAMFS:-$REPO/build/streamfs}
SIZE_MIB=${1:-8192}
BUDGET_MIB=${2:-256}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

for t in "$STREAMFS" "$NGINX"; do
	[ -x "$t" ] || { echo "bench_cache: $t not found (build first: tools/build)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "bench_cache: needs root (it mounts a tmpfs)" >&2; exit 2; }

TMP=$(mktemp -d "${BENCH_TMP:-/var/tmp}/bench_cache.XXXXXX")
MNT=$TMP/mnt
STORE=$TMP/store
NGINX_PID=
SFS_PID=
SAMPLER_PID=

cleanup() {
	set +e
	[ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
	stop_streamfs
	mountpoint -q "$STORE" && umount "$STORE"
	nginx_stop
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# shellcheck source=bench/nginx.sh
. "$(dirname "$0")/nginx.sh"
# shellcheck source=bench/mount.sh
. "$(dirname "$0")/mount.sh"

# ---- the file, nginx, the store's tmpfs
mkdir -p "$TMP/www" "$TMP/nginx" "$MNT" "$STORE"
echo "bench_cache: making a ${SIZE_MIB} MiB file in $TMP ..." >&2
head -c 64M /dev/urandom >"$TMP/block"
for _ in $(seq $((SIZE_MIB / 64))); do cat "$TMP/block"; done >"$TMP/www/f"
rm -f "$TMP/block"
BYTES=$(stat -c %s "$TMP/www/f")
SUM=$(sha256sum <"$TMP/www/f" | cut -d' ' -f1)
mount -t tmpfs -o "size=$((SIZE_MIB + 512))m,mode=0700" tmpfs "$STORE"

nginx_start || exit 1

# ---- one run: mount with "$@", read the file READS times
used_store() { df -B1 --output=used "$STORE" | tail -1 | tr -d ' '; }

run() {
	local label=$1 reads=$2
	shift 2
	"$STREAMFS" -f --cache-dir="$STORE" "$@" "$MNT" "f=$URL" </dev/null >"$TMP/streamfs.log" 2>&1 &
	SFS_PID=$!
	for _ in $(seq 200); do mountpoint -q "$MNT" && break; sleep 0.025; done
	mountpoint -q "$MNT" || { cat "$TMP/streamfs.log" >&2; exit 1; }
	local base
	base=$(used_store)
	( peak=0; while :; do u=$(used_store); [ "$u" -gt "$peak" ] && peak=$u && echo $((peak - base)) >"$TMP/peak"; sleep 0.05; done ) &
	SAMPLER_PID=$!
	echo 0 >"$TMP/peak"
	local rates="" ok=yes t0 t1 s
	for _ in $(seq "$reads"); do
		t0=$(now)
		s=$(dd if="$MNT/f" bs=1M status=none | sha256sum | cut -d' ' -f1)
		t1=$(now)
		[ "$s" = "$SUM" ] || ok=no
		rates="$rates $(awk -v b="$BYTES" -v a="$t0" -v z="$t1" 'BEGIN {printf "%.0f", b/1048576/(z-a)}')"
	done
	kill "$SAMPLER_PID"; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=
	local used evictions hwm
	used=$(getfattr --only-values -n user.streamfs.cache_used "$MNT" 2>/dev/null || echo -)
	evictions=$(getfattr --only-values -n user.streamfs.cache_evictions "$MNT" 2>/dev/null || echo -)
	hwm=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$SFS_PID/status")
	stop_streamfs
	printf '%s|%s|%s|%s|%s|%s\n' "$label" "$rates" "$(($(cat "$TMP/peak") / 1048576)) MiB" \
		"$((used / 1048576)) MiB" "$evictions" "$hwm|$ok" >>"$TMP/results"
}

: >"$TMP/results"
echo "bench_cache: no budget ..." >&2
run "no budget" 1
echo "bench_cache: --cache-size=${BUDGET_MIB}M ..." >&2
run "--cache-size=${BUDGET_MIB}M" 2 --cache-size="${BUDGET_MIB}M"

echo
echo "URL of ${SIZE_MIB} MiB from nginx on 127.0.0.1, read with dd bs=1M | sha256sum; store on its own tmpfs"
printf '%-22s %-16s %-14s %-13s %-10s %-14s %s\n' "run" "MiB/s per read" "peak store" "cache_used" "evictions" "daemon RSS" "bytes ok"
while IFS='|' read -r label rates peak used ev hwm ok; do
	printf '%-22s %-16s %-14s %-13s %-10s %-14s %s\n' "$label" "${rates# }" "$peak" "$used" "$ev" "$hwm" "$ok"
done <"$TMP/results"
echo "(peak store: tmpfs used blocks, sampled every 50 ms, above the empty mount's; cache_used: the daemon's account at the end)"
