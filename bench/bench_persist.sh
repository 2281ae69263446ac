#!/bin/bash
# bench_persist.sh - what --persist and a shared slice cache save.
#
#   bench/bench_persist.sh [SIZE_MIB]        (default 1024)
#
# Serves one file of SIZE_MIB random bytes with tests/httpserver.py (its
# request log counts the body bytes the origin sends) and measures:
#   1. --persist: a first mount reads the file (cold), is unmounted, and a
#      second mount of the same cache directory reads it again: time to the
#      first byte (head -c 1 right after the mount returns), time to read it
#      all, and the bytes the origin sent, for each mount. A mount without
#      --persist is the reference for the time to the first byte.
#   2. two hosts: two mounts with stores of their own read the file at the
#      same time, directly and then through an nginx configured from
#      contrib/nginx-slice-cache.conf: the bytes the origin sent each time.
# Environment: STREAMFS (binary, default build/streamfs), NGINX,
# BENCH_TMP (parent of the scratch directory, default /var/tmp: the
# persistent cache should be on a disk, not a tmpfs).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STREAMFS=${STREAMFS:-$REPO/build/streamfs}
SIZE_MIB=${1:-${SIZE_MIB:-1024}}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
PY=/usr/bin/python3

for t in "$STREAMFS" "$NGINX" "$PY"; do
	[ -x "$t" ] || { echo "bench_persist: $t not found (build first: tools/build)" >&2; exit 2; }
done

TMP=$(mktemp -d "${BENCH_TMP:-/var/tmp}/bench_persist.XXXXXX")
SRV_PID=
NGX_PID=
MOUNTS=()

unmount_all() {
	for m in "${MOUNTS[@]}"; do
		mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
	done
	MOUNTS=()
	# the daemons exit once unmounted (a --persist one after its last map)
	for _ in $(seq 100); do
		pgrep -f "^$STREAMFS .*$TMP" >/dev/null || return 0
		sleep 0.1
	done
	echo "bench_persist: a streamfs daemon did not exit" >&2
}

cleanup() {
	set +e
	unmount_all
	[ -n "$NGX_PID" ] && kill -QUIT "$NGX_PID" && wait "$NGX_PID"
	[ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" && wait "$SRV_PID"
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# The origin's body bytes so far, once its log has settled (a response is
# logged when it ends; a closed connection ends it a moment later).
origin_bytes() {
	local last=-1 cur
	for _ in $(seq 50); do
		cur=$($PY -c 'import json,sys; print(sum(json.loads(l)["sent"] for l in open(sys.argv[1])))' "$TMP/origin.jsonl")
		[ "$cur" = "$last" ] && { echo "$cur"; return; }
		last=$cur
		sleep 0.2
	done
	echo "$cur"
}

mnt() { # mnt NAME OPTS... : mount $TMP/NAME (background daemon), print nothing
	local m=$TMP/$1
	shift
	mkdir -p "$m"
	"$STREAMFS" "$@" "$m" "f=$URL" </dev/null
	MOUNTS+=("$m")
}

mkdir -p "$TMP/www" "$TMP/pcache" "$TMP/s1" "$TMP/s2" "$TMP/ngx/cache"
echo "bench_persist: making a ${SIZE_MIB} MiB file in $TMP ..." >&2
dd if=/dev/urandom of="$TMP/www/f" bs=1M count="$SIZE_MIB" status=none
BYTES=$(stat -c %s "$TMP/www/f")
: >"$TMP/origin.jsonl"
$PY "$REPO/tests/httpserver.py" --root "$TMP/www" --port 0 --port-file "$TMP/port" \
	--log "$TMP/origin.jsonl" >/dev/null 2>"$TMP/httpserver.log" &
SRV_PID=$!
for _ in $(seq 100); do [ -s "$TMP/port" ] && break; sleep 0.05; done
URL="http://127.0.0.1:$(cat "$TMP/port")/f"
cat "$TMP/www/f" >/dev/null # the origin's page cache warm: measure streamfs

# ---- 1. --persist
row() { printf '%-34s %10s %10s %14s\n' "$@"; }
echo
row "mount" "first byte" "all (s)" "origin bytes"

b0=$(origin_bytes)
mnt ref --cache-dir="$TMP/s1"
t=$(now); head -c 1 "$TMP/ref/f" >/dev/null; ttfb=$(since "$t")
unmount_all
b1=$(origin_bytes)
row "no --persist (first byte only)" "$ttfb" "-" "$((b1 - b0))"

mnt p1 --persist --cache-dir="$TMP/pcache"
t=$(now); head -c 1 "$TMP/p1/f" >/dev/null; ttfb=$(since "$t")
cat "$TMP/p1/f" >/dev/null; all=$(since "$t")
unmount_all
b2=$(origin_bytes)
row "--persist, first mount (cold)" "$ttfb" "$all" "$((b2 - b1))"

sync
mnt p2 --persist --cache-dir="$TMP/pcache"
t=$(now); head -c 1 "$TMP/p2/f" >/dev/null; ttfb=$(since "$t")
cat "$TMP/p2/f" >/dev/null; all=$(since "$t")
cmp -s "$TMP/p2/f" "$TMP/www/f" || echo "bench_persist: WRONG BYTES after the remount" >&2
unmount_all
b3=$(origin_bytes)
row "--persist, remount" "$ttfb" "$all" "$((b3 - b2))"

# ---- 2. two hosts, with and without the slice cache
PROXY_PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s#/var/cache/nginx/streamfs#$TMP/ngx/cache#" -e "s#listen 3128;#listen 127.0.0.1:$PROXY_PORT;#" \
	-e "s#resolver 127.0.0.53 ipv6=off;##" "$REPO/contrib/nginx-slice-cache.conf" >"$TMP/ngx/slice.conf"
cat >"$TMP/ngx/nginx.conf" <<CONF
daemon off;
master_process off;
pid $TMP/ngx/nginx.pid;
error_log $TMP/ngx/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    proxy_temp_path $TMP/ngx/proxy;
    client_body_temp_path $TMP/ngx/body;
    include $TMP/ngx/slice.conf;
}
CONF
"$NGINX" -p "$TMP/ngx" -e "$TMP/ngx/error.log" -c "$TMP/ngx/nginx.conf" </dev/null >/dev/null 2>&1 &
NGX_PID=$!
# ready when it answers (a 404 of another path: nothing of f is cached)
for _ in $(seq 100); do curl -s -o /dev/null -x "127.0.0.1:$PROXY_PORT" "$URL.none" && break; sleep 0.05; done

two_hosts() { # two_hosts LABEL OPTS...
	local label=$1 before after t
	shift
	rm -rf "$TMP/s1" "$TMP/s2"
	mkdir -p "$TMP/s1" "$TMP/s2"
	before=$(origin_bytes)
	mnt h1 --cache-dir="$TMP/s1" "$@"
	mnt h2 --cache-dir="$TMP/s2" "$@"
	t=$(now)
	cat "$TMP/h1/f" >/dev/null &
	local other=$!
	cat "$TMP/h2/f" >/dev/null
	wait "$other"
	all=$(since "$t")
	unmount_all
	after=$(origin_bytes)
	row "$label" "-" "$all" "$((after - before))"
}
echo
row "two hosts, same file, same time" "" "both (s)" "origin bytes"
two_hosts "direct"
two_hosts "through nginx slice cache" --proxy="http://127.0.0.1:$PROXY_PORT"
echo
echo "file: $BYTES bytes"
