#!/bin/bash
# bench_random.sh - tools that read the end of a file first, through a URL
# mount fed by a throttled server, next to the same tools on the local file.
#
#   bench/bench_random.sh
#
# Makes, in a tmp dir it creates and removes, a moov-at-end MP4 (ffmpeg's
# default layout, no +faststart) and a zip of incompressible members, serves
# them with tests/httpserver.py throttled to 2 MiB/s and 20 MiB/s (its
# `rate=` query parameter), and for each (tool, rate) mounts a fresh streamfs
# (foreground -f) with that one file, runs the tool once and unmounts:
#   ffprobe -v error -show_entries format=duration:stream=codec_name  (MP4)
#   unzip -l                                                          (zip)
# Reports wall time through the mount, wall time on the local file, and the
# bytes the server sent (from its request log) against the file size. With a
# sequential-only URL source the tool waits for the whole download; with
# random access (a later issue) it should fetch little more than the head
# and the tail. The tool's output is compared with its output on the local
# file (column "same").
#
# Environment: STREAMFS (default build/streamfs), STREAMFS_OPTS (extra
# options), MP4_MIB and ZIP_MIB (approximate file sizes, default 32),
# RATES (bytes/s list, default "2097152 20971520"), RUN_TIMEOUT (seconds per
# tool run, default 600), BENCH_TMP (parent of the tmp dir, default /tmp).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STREAMFS=${STREAMFS:-$REPO/build/streamfs}
STREAMFS_OPTS=${STREAMFS_OPTS:-}
PY=/usr/bin/python3
SERVER=$REPO/tests/httpserver.py
MP4_MIB=${MP4_MIB:-32}
ZIP_MIB=${ZIP_MIB:-32}
RATES=${RATES:-"2097152 20971520"}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}

[ -x "$STREAMFS" ] || { echo "bench_random: $STREAMFS not found (build first)" >&2; exit 2; }
for t in ffmpeg ffprobe zip unzip; do
	command -v "$t" >/dev/null || { echo "bench_random: $t not found" >&2; exit 2; }
done

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/bench_random.XXXXXX")
MNT=$TMP/mnt
SRV_PID=
SFS_PID=

stop_streamfs() {
	if [ -n "$SFS_PID" ]; then
		if mountpoint -q "$MNT" 2>/dev/null; then
			fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
		fi
		for _ in $(seq 50); do kill -0 "$SFS_PID" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$SFS_PID" 2>/dev/null; then
			kill -TERM "$SFS_PID" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$SFS_PID" 2>/dev/null || break; sleep 0.1; done
			kill -KILL "$SFS_PID" 2>/dev/null || true
		fi
		wait "$SFS_PID" 2>/dev/null || true
		SFS_PID=
	fi
}

cleanup() {
	set +e
	stop_streamfs
	if [ -n "$SRV_PID" ]; then
		kill -TERM "$SRV_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SRV_PID" 2>/dev/null
		wait "$SRV_PID" 2>/dev/null
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }

mkdir -p "$TMP/www" "$MNT"

# ---- the files
echo "bench_random: making a ~${MP4_MIB} MiB moov-at-end MP4 and a ~${ZIP_MIB} MiB zip ..." >&2
# noise makes the video incompressible enough that the size follows the bitrate
SECS=8
ffmpeg -v error -nostdin -f lavfi -i "testsrc2=size=640x360:rate=25,noise=alls=60:allf=t" \
	-f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$SECS" \
	-c:v libx264 -preset ultrafast -b:v "$((MP4_MIB * 8 / SECS))M" \
	-minrate "$((MP4_MIB * 8 / SECS))M" -maxrate "$((MP4_MIB * 8 / SECS))M" \
	-bufsize "$((MP4_MIB * 2 / SECS + 1))M" -x264-params nal-hrd=cbr \
	-c:a aac -b:a 128k "$TMP/www/v.mp4"
mkdir "$TMP/zipsrc"
for i in $(seq "$ZIP_MIB"); do head -c 1048576 /dev/urandom >"$TMP/zipsrc/member$i.bin"; done
(cd "$TMP/zipsrc" && zip -q -0 "$TMP/www/a.zip" ./*.bin)
rm -rf "$TMP/zipsrc"
# check: the MP4's moov box is after its mdat
"$PY" - "$TMP/www/v.mp4" <<'EOF'
import struct, sys
f = open(sys.argv[1], "rb"); order = []
while True:
    h = f.read(8)
    if len(h) < 8: break
    n, t = struct.unpack(">I4s", h)
    if n == 1: n = struct.unpack(">Q", f.read(8))[0]; f.seek(n - 16, 1)
    else: f.seek(n - 8, 1)
    order.append(t.decode())
assert order.index("moov") > order.index("mdat"), order
EOF

# ---- the server
"$PY" "$SERVER" --root "$TMP/www" --port-file "$TMP/port" --log "$TMP/requests.jsonl" \
	</dev/null >/dev/null 2>"$TMP/server.err" &
SRV_PID=$!
for _ in $(seq 200); do [ -s "$TMP/port" ] && break; sleep 0.025; done
PORT=$(cat "$TMP/port")

start_streamfs() { # NAME URL
	# shellcheck disable=SC2086
	"$STREAMFS" -f $STREAMFS_OPTS "$MNT" "$1=$2" </dev/null >"$TMP/streamfs.log" 2>&1 &
	SFS_PID=$!
	for _ in $(seq 200); do
		mountpoint -q "$MNT" && return 0
		kill -0 "$SFS_PID" 2>/dev/null || break
		sleep 0.025
	done
	echo "bench_random: streamfs did not mount:" >&2
	cat "$TMP/streamfs.log" >&2
	exit 1
}

tool_cmd() { # TOOL FILE -> runs it, output on stdout
	case $1 in
	ffprobe) ffprobe -v error -show_entries format=duration:stream=codec_name -of compact "$2" ;;
	unzip) unzip -l "$2" | awk '{print $1, $NF}' ;; # sizes and names, not dates of the listing
	esac
}

sent_bytes() { # QUERY-TAG -> bytes the server sent for requests with that tag
	"$PY" - "$TMP/requests.jsonl" "$1" <<'EOF'
import json, sys
tot = n = 0
for line in open(sys.argv[1]):
    e = json.loads(line)
    if ("tag=" + sys.argv[2]) in e["query"].split("&"):
        tot += e["sent"]; n += 1
print(tot, n)
EOF
}

RESULTS=$TMP/results
: >"$RESULTS"
run=0
for spec in "ffprobe v.mp4" "unzip a.zip"; do
	read -r tool file <<<"$spec"

	size=$(stat -c %s "$TMP/www/$file")
	t0=$(now); tool_cmd "$tool" "$TMP/www/$file" >"$TMP/out.local"; t1=$(now)
	tlocal=$(awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.2f", z-a}')
	for rate in $RATES; do
		run=$((run + 1))
		echo "bench_random: $tool through the mount at $((rate / 1048576)) MiB/s ..." >&2
		start_streamfs "$file" "http://127.0.0.1:$PORT/$file?rate=$rate&tag=$run"
		t0=$(now)
		rc=0
		timeout "$RUN_TIMEOUT" bash -c "set -o pipefail; $(declare -f tool_cmd); tool_cmd $tool '$MNT/$file'" >"$TMP/out.mnt" 2>"$TMP/err.mnt" || rc=$?
		t1=$(now)
		stop_streamfs
		sleep 0.5 # let the server log the aborted response
		tmnt=$(awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.2f", z-a}')
		read -r sent nreq < <(sent_bytes "$run")
		if [ "$rc" = 124 ]; then same="TIMEOUT"
		elif [ "$rc" != 0 ]; then same="rc=$rc"
		elif cmp -s "$TMP/out.local" "$TMP/out.mnt"; then same="yes"
		else same="DIFF"; fi
		printf '%-8s %8s %10s %10s %12s %10s %6s %8s\n' "$tool" "$((rate / 1048576))" "$tmnt" "$tlocal" \
			"$(awk -v s="$sent" 'BEGIN {printf "%.2f", s/1048576}')" \
			"$(awk -v s="$size" 'BEGIN {printf "%.2f", s/1048576}')" "$nreq" "$same" >>"$RESULTS"
	done
done

echo
echo "Random-access tools through a throttled URL mount (one run each, fresh mount)"
printf '%-8s %8s %10s %10s %12s %10s %6s %8s\n' "tool" "MiB/s" "mount s" "local s" "sent MiB" "file MiB" "reqs" "same"
cat "$RESULTS"
if [ -s "$TMP/server.err" ]; then echo "server stderr:"; cat "$TMP/server.err"; fi
