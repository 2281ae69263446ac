#!/bin/bash
# bench_random.sh - tools that read the end of a file first, through a URL
# mount fed by a throttled server, next to the same tools on the local file
# and, where installed, other HTTP file systems in the same run.
#
#   bench/bench_random.sh
#
# Makes, in a tmp dir it creates and removes, a moov-at-end MP4 (ffmpeg's
# default layout; 60 s of 720p by default), the same MP4 with +faststart
# (moov at the head), and a zip of incompressible stored members (central
# directory at the end). Serves them with tests/httpserver.py throttled to
# 2 MiB/s and 20 MiB/s (its `rate=` parameter; a small wrapper in this
# script maps path-style URLs /r/RATE/TAG/NAME onto it and lists
# directories, for the file systems that need a listing), and for each
# (tool, rate, system) mounts a fresh file system with that file, runs the
# tool once and unmounts:
#   ffprobe -v error -show_entries format=duration:stream=codec_name  (MP4s)
#   unzip -l                                                          (zip)
# Systems: streamfs --fill=all (the default), streamfs --fill=ondemand,
# each also with a warm-up `tail -c 262144 FILE >/dev/null` right after the
# mount (what fetching the tail at open would do: the
# "warm s" column is that warm-up's time, "tool s" the tool's after it),
# and, when installed: httpdirfs --single-file-mode (no cache), httpfs2,
# and rclone mount (http backend, --vfs-cache-mode off).
#
# Reports the tool's wall time through the mount, on the local file, and the
# bytes the server sent (from its request log, counted once the file system
# is unmounted, so a background fill is counted up to the unmount) against
# the file size. The tool's output is compared with its output on the local
# file (column "same").
#
# With REPS=N each cell is the median of N runs (fresh mount each), and the
# local time the median of N+2. With DELAY=S every request waits S seconds
# before its response headers (the server's delay=S&delay_always=1): a
# simulated round trip, under which fetching the tail early saves most.
#
# Environment: STREAMFS (default build/streamfs), STREAMFS_OPTS (extra
# options), REPS (default 1), DELAY (seconds, default 0), MP4_MIB and
# ZIP_MIB (approximate file sizes, default 32),
# MP4_SECS (default 60), MP4_SIZE (default 1280x720), RATES (bytes/s list,
# default "2097152 20971520"), SYSTEMS (default: all of "all all+tail
# ondemand ondemand+tail httpdirfs httpfs2 rclone" that are installed),
# RUN_TIMEOUT (seconds per tool run, default 600), BENCH_TMP (parent of the
# tmp dir, default /tmp).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STREAMFS=${STREAMFS:-$REPO/build/streamfs}
STREAMFS_OPTS=${STREAMFS_OPTS:-}
PY=/usr/bin/python3
MP4_MIB=${MP4_MIB:-32}
MP4_SECS=${MP4_SECS:-60}
MP4_SIZE=${MP4_SIZE:-1280x720}
ZIP_MIB=${ZIP_MIB:-32}
RATES=${RATES:-"2097152 20971520"}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
TAIL_WARM=262144
REPS=${REPS:-1}
DELAY=${DELAY:-0}

[ -x "$STREAMFS" ] || { echo "bench_random: $STREAMFS not found (build first)" >&2; exit 2; }
for t in ffmpeg ffprobe zip unzip; do
	command -v "$t" >/dev/null || { echo "bench_random: $t not found" >&2; exit 2; }
done
if [ -z "${SYSTEMS:-}" ]; then
	SYSTEMS="all all+tail ondemand ondemand+tail"
	for t in httpdirfs httpfs2 rclone; do
		command -v "$t" >/dev/null && SYSTEMS="$SYSTEMS $t"
	done
fi

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/bench_random.XXXXXX")
MNT=$TMP/mnt
SRV_PID=
FS_PID=

stop_fs() {
	if [ -n "$FS_PID" ]; then
		if mountpoint -q "$MNT" 2>/dev/null; then
			fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
		fi
		for _ in $(seq 50); do kill -0 "$FS_PID" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$FS_PID" 2>/dev/null; then
			kill -TERM "$FS_PID" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$FS_PID" 2>/dev/null || break; sleep 0.1; done
			kill -KILL "$FS_PID" 2>/dev/null || true
		fi
		wait "$FS_PID" 2>/dev/null || true
		FS_PID=
	fi
	if mountpoint -q "$MNT" 2>/dev/null; then
		fusermount3 -uz "$MNT" 2>/dev/null || true
	fi
}

cleanup() {
	set +e
	stop_fs
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
secs() { awk -v a="$1" -v z="$2" 'BEGIN {printf "%.2f", z-a}'; }

mkdir -p "$TMP/www" "$MNT"

# ---- the files
echo "bench_random: making a ~${MP4_MIB} MiB ${MP4_SECS} s ${MP4_SIZE} moov-at-end MP4," \
	"its faststart twin and a ~${ZIP_MIB} MiB zip ..." >&2
# noise makes the video incompressible enough that the size follows the bitrate
KBPS=$((MP4_MIB * 8 * 1024 / MP4_SECS - 128))
ffmpeg -v error -nostdin -f lavfi -i "testsrc2=size=$MP4_SIZE:rate=25,noise=alls=30:allf=t" \
	-f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$MP4_SECS" \
	-c:v libx264 -preset ultrafast -b:v "${KBPS}k" -minrate "${KBPS}k" -maxrate "${KBPS}k" \
	-bufsize "$((KBPS / 2))k" -x264-params nal-hrd=cbr \
	-c:a aac -b:a 128k "$TMP/www/v.mp4"
ffmpeg -v error -nostdin -i "$TMP/www/v.mp4" -c copy -movflags +faststart "$TMP/www/vfs.mp4"
mkdir "$TMP/zipsrc"
for i in $(seq "$ZIP_MIB"); do head -c 1048576 /dev/urandom >"$TMP/zipsrc/member$i.bin"; done
(cd "$TMP/zipsrc" && zip -q -0 "$TMP/www/a.zip" ./*.bin)
rm -rf "$TMP/zipsrc"
# check the layouts: v.mp4 has its moov box after mdat, vfs.mp4 before
"$PY" - "$TMP/www/v.mp4" "$TMP/www/vfs.mp4" <<'EOF'
import struct, sys
def boxes(p):
    f = open(p, "rb"); order = []
    while True:
        h = f.read(8)
        if len(h) < 8: break
        n, t = struct.unpack(">I4s", h)
        at = f.tell() - 8
        if n == 1: n = struct.unpack(">Q", f.read(8))[0]
        f.seek(at + n)
        order.append((t.decode(), at, n))
    return order
a, b = boxes(sys.argv[1]), boxes(sys.argv[2])
names = lambda o: [t for t, _, _ in o]
assert names(a).index("moov") > names(a).index("mdat"), a
assert names(b).index("moov") < names(b).index("mdat"), b
moov = [x for x in a if x[0] == "moov"][0]
sys.stderr.write("bench_random: v.mp4 moov box: %d bytes at %d of %d\n" % (moov[2], moov[1], moov[1] + moov[2]))
EOF

# ---- the server: tests/httpserver.py, plus path-style URLs and listings
cat >"$TMP/server.py" <<'EOF'
import html, os, sys, threading, signal, urllib.parse
sys.path.insert(0, sys.argv[1])
import httpserver as H

class Handler(H._Handler):
    # /r/RATE/TAG/NAME -> /NAME?rate=RATE&tag=TAG ; /r/RATE/TAG/ -> a listing
    def _route(self, head):
        parts = urllib.parse.urlsplit(self.path).path.split("/")
        if len(parts) >= 5 and parts[1] == "r":
            rate, tag, name = parts[2], parts[3], "/".join(parts[4:])
            if name == "":
                body = "".join('<a href="%s">%s</a><br>\n' % (html.escape(n), html.escape(n))
                               for n in sorted(os.listdir(self.server.owner.root))).encode()
                body = b"<html><body>\n" + body + b"</body></html>\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                return
            self.path = "/%s?rate=%s&tag=%s" % (name, rate, tag)
            if float(sys.argv[5]) > 0:
                self.path += "&delay=%s&delay_always=1" % sys.argv[5]
        (super().do_HEAD if head else super().do_GET)()

    def do_GET(self):
        self._route(False)

    def do_HEAD(self):
        self._route(True)

srv = H.TestHTTPServer(sys.argv[2], log_path=sys.argv[3])
srv._httpd = H._Server((srv.host, 0), Handler)
srv._httpd.owner = srv
srv._logf = open(srv.log_path, "a", buffering=1)
srv._thread = threading.Thread(target=srv._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                               daemon=True)
srv._thread.start()
with open(sys.argv[4] + ".tmp", "w") as f:
    f.write("%d\n" % srv.port)
os.rename(sys.argv[4] + ".tmp", sys.argv[4])
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
signal.signal(signal.SIGINT, lambda *a: done.set())
while not done.wait(0.5):
    pass
srv.stop()
EOF
"$PY" "$TMP/server.py" "$REPO/tests" "$TMP/www" "$TMP/requests.jsonl" "$TMP/port" "$DELAY" \
	</dev/null >/dev/null 2>"$TMP/server.err" &
SRV_PID=$!
for _ in $(seq 200); do [ -s "$TMP/port" ] && break; sleep 0.025; done
PORT=$(cat "$TMP/port")
: >"$TMP/rclone.conf"

start_fs() { # SYSTEM FILE RATE TAG -> mounts; sets FS_PID
	local sys=$1 file=$2 rate=$3 tag=$4
	local url="http://127.0.0.1:$PORT/r/$rate/$tag/$file"
	case $sys in
	all | all+tail)
		# shellcheck disable=SC2086
		"$STREAMFS" -f $STREAMFS_OPTS "$MNT" "$file=$url" </dev/null >"$TMP/fs.log" 2>&1 & ;;
	ondemand | ondemand+tail)
		# shellcheck disable=SC2086
		"$STREAMFS" -f --fill=ondemand $STREAMFS_OPTS "$MNT" "$file=$url" </dev/null >"$TMP/fs.log" 2>&1 & ;;
	httpdirfs)
		httpdirfs -f --single-file-mode "$url" "$MNT" </dev/null >"$TMP/fs.log" 2>&1 & ;;
	httpfs2)
		httpfs2 -f -c /dev/null "$url" "$MNT" </dev/null >"$TMP/fs.log" 2>&1 & ;;
	rclone)
		rclone --config "$TMP/rclone.conf" mount ":http:" "$MNT" \
			--http-url "http://127.0.0.1:$PORT/r/$rate/$tag/" --read-only \
			--vfs-cache-mode off --dir-cache-time 1h </dev/null >"$TMP/fs.log" 2>&1 & ;;
	esac
	FS_PID=$!
	for _ in $(seq 400); do
		if mountpoint -q "$MNT" && [ -e "$MNT/$file" ]; then return 0; fi
		kill -0 "$FS_PID" 2>/dev/null || break
		sleep 0.025
	done
	echo "bench_random: $sys did not mount $file:" >&2
	cat "$TMP/fs.log" >&2
	stop_fs
	return 1
}

tool_cmd() { # TOOL FILE -> runs it, output on stdout
	case $1 in
	ffprobe) ffprobe -v error -show_entries format=duration:stream=codec_name -of compact "$2" ;;
	unzip) unzip -l "$2" | tail -n +2 | awk '{print $1, $NF}' ;; # sizes and names, not the archive path
	esac
}

sent_bytes() { # TAG -> bytes the server sent for requests with that tag, and their number
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

mib() { awk -v s="$1" 'BEGIN {printf "%.3f", s/1048576}'; }
FMT='%-8s %-7s %6s %-14s %7s %8s %8s %9s %8s %5s %7s\n'

median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

one_run() { # SYSTEM TOOL FILE RATE TAG -> "warm tool sent nreq same" on stdout
	local sys=$1 tool=$2 file=$3 rate=$4 tag=$5 warm=- rc=0 t0 t1 tmnt same sent nreq
	if ! start_fs "$sys" "$file" "$rate" "$tag"; then
		echo "- - 0 0 NOMOUNT"
		return
	fi
	if [[ $sys == *+tail ]]; then
		t0=$(now)
		timeout "$RUN_TIMEOUT" tail -c "$TAIL_WARM" "$MNT/$file" >/dev/null 2>"$TMP/err.warm" || rc=$?
		t1=$(now)
		warm=$(secs "$t0" "$t1")
	fi
	t0=$(now)
	timeout "$RUN_TIMEOUT" bash -c "set -o pipefail; $(declare -f tool_cmd); tool_cmd $tool '$MNT/$file'" \
		>"$TMP/out.mnt" 2>"$TMP/err.mnt" || rc=$?
	t1=$(now)
	stop_fs
	sleep 0.5 # let the server log the aborted responses
	tmnt=$(secs "$t0" "$t1")
	read -r sent nreq < <(sent_bytes "$tag")
	if [ "$rc" = 124 ]; then same="TIMEOUT"
	elif [ "$rc" != 0 ]; then same="rc=$rc"
	elif cmp -s "$TMP/out.local" "$TMP/out.mnt"; then same="yes"
	else same="DIFF"; fi
	echo "$warm $tmnt $sent $nreq $same"
}

RESULTS=$TMP/results
: >"$RESULTS"
run=0
for spec in "ffprobe v.mp4" "ffprobe vfs.mp4" "unzip a.zip"; do
	read -r tool file <<<"$spec"
	size=$(stat -c %s "$TMP/www/$file")
	tlocal=$(for _ in $(seq $((REPS + 2))); do
		t0=$(now); tool_cmd "$tool" "$TMP/www/$file" >"$TMP/out.local"; t1=$(now)
		secs "$t0" "$t1"; echo
	done | median)
	for rate in $RATES; do
		for sys in $SYSTEMS; do
			echo "bench_random: $tool $file at $((rate / 1048576)) MiB/s through $sys ($REPS) ..." >&2
			: >"$TMP/reps"
			for _ in $(seq "$REPS"); do
				run=$((run + 1))
				one_run "$sys" "$tool" "$file" "$rate" "$run" >>"$TMP/reps"
			done
			warm=$(awk '$1 != "-" {print $1}' "$TMP/reps" | median)
			tmnt=$(awk '$2 != "-" {print $2}' "$TMP/reps" | median)
			sent=$(awk '{print $3}' "$TMP/reps" | median)
			nreq=$(awk '{print $4}' "$TMP/reps" | median)
			same=$(awk '{print $5}' "$TMP/reps" | sort -u | paste -sd, -)
			printf "$FMT" "$tool" "$file" "$((rate / 1048576))" "$sys" "$warm" "$tmnt" "$tlocal" \
				"$(mib "$sent")" "$(mib "$size")" "$nreq" "$same" >>"$RESULTS"
		done
	done
done

echo
echo "Random-access tools through a throttled URL mount (median of $REPS run(s), fresh mount each;" \
	"simulated round trip ${DELAY} s)"
echo "(warm s: tail -c $TAIL_WARM right after the mount; tool s: the tool after it)"
printf "$FMT" "tool" "file" "MiB/s" "system" "warm s" "tool s" "local s" "sent MiB" "file MiB" "reqs" "same"
cat "$RESULTS"
if [ -s "$TMP/server.err" ]; then echo "server stderr:"; cat "$TMP/server.err"; fi
