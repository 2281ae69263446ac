#!/usr/bin/python3
"""bench/suite.py - streamfs next to the local file, curl and its peers: one table.

    bench/suite [--quick] [--reps N] [--write] [OPTIONS]   (bench/suite --help)

Installs what it needs from Debian (only the packages that are missing),
makes its data in a scratch directory, starts nginx on 127.0.0.1 (a free
port, through bench/nginx.sh) and measures, for every system, the same
things in the same run:

  systems  the local file and curl (the limits: no file system in the way),
           "curl -o file" (download to a file, then run the tool on it:
           what people do without streamfs),
           streamfs with its disk store and with --cache-dir=memory,
           httpdirfs --single-file-mode without and with --cache,
           rclone mount :http: with --vfs-cache-mode off and full, httpfs2.
  rows     first and second read of the big file (MiB/s, one mount);
           the first 4 KiB and 4 KiB at 3/4 of it, each on a fresh mount (ms);
           ffprobe on a moov-at-end and a faststart MP4 at full speed and
           through nginx's limit_rate at 20 and 2 MiB/s; unzip -l of a zip;
           tar tf of a 10 MB tar; file -b of the MP4 (ms, fresh mount each);
           the bytes nginx sent (its access log, per system); the daemon's
           peak RSS (VmHWM) and CPU (utime+stime) over the two big reads;
           correctness, sha256 of what each system returns, from a server
           without Range (nginx max_ranges 0) and from stock nginx.

Every cell is the median over --reps repetitions with the min-max beside it;
each repetition runs every system in turn (interleaved), so a machine that
gets busier slows every column alike. Every tool's output must be the one
it gives on the local file. A system that is not installed or fails shows
"n/a", "error", "timeout", "wrong output" or "WRONG DATA" with the reason in
a note: nothing aborts the suite. Every mount is unmounted and every
process started is ended, by PID, however the suite stops (SIGINT, SIGTERM
and SIGHUP included).

URLs carry a tag per system, measure and repetition (/MODE/TAG/FILE), which
is how the access log tells whose bytes they were; MODE picks the nginx
location: f (full speed), r20 and r2 (limit_rate), s (stock), nr
(max_ranges 0). All but s and nr add Accept-Ranges to range replies (see
Server).
"""

import argparse
import datetime
import hashlib
import os
import re
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1 << 20
PKGS = ["nginx-light", "curl", "ffmpeg", "file", "zip", "unzip", "tar", "fuse3",
        "coreutils", "httpfs2", "httpdirfs", "rclone"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_REPORTING = Path("/sys/module/page_reporting")  # see "the state of free memory"


def log(msg):
    print("suite: " + msg, file=sys.stderr, flush=True)


def die(msg, code=1):
    print("suite: " + msg, file=sys.stderr, flush=True)
    sys.exit(code)


class Failure(Exception):
    """A measurement that gave no figure: kind is "n/a" (cannot run here),
    "error" (ran and failed), "timeout" (gave up), "WRONG DATA" (bytes
    differ from the file's), "wrong output" (a tool's output differs from
    its output on the local file) or "–" (nothing to measure: no cell
    note)."""

    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


# ---------------------------------------------------------------- packages

def missing_packages(pkgs):
    out = []
    for p in pkgs:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p],
                           capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            out.append(p)
    return out


def install_packages(pkgs):
    """apt-get install what of pkgs is missing; a failure is reported, not
    fatal: the peers it concerns then show as n/a."""
    if not shutil.which("dpkg-query"):
        log("no dpkg-query: not a Debian system, installing nothing")
        return
    missing = missing_packages(pkgs)
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log("installing: " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env,
                       stdout=sys.stderr)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
                       + missing, check=True, env=env, stdout=sys.stderr)
    except (OSError, subprocess.CalledProcessError) as e:
        log("package install failed (%s): going on with what is installed" % e)


# ---------------------------------------------------------------- processes and mounts

# What is running and mounted right now, for cleanup() however the suite
# ends: Popen objects we started, mount points with a daemon on them.
LIVE_PROCS = []
LIVE_MOUNTS = []


def mounted(path):
    """Read /proc/self/mountinfo, never stat the mount point: a hung daemon
    would hang the stat."""
    p = str(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].replace("\\040", " ") == p:
                return True
    return False


def end_process(proc, grace=10.0):
    """Wait for proc to exit for grace seconds, then SIGTERM, then SIGKILL."""
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in LIVE_PROCS:
        LIVE_PROCS.remove(proc)


def unmount(mnt, proc):
    """fusermount3 -u, lazily if busy; then the daemon gets 10 s to exit."""
    if mounted(mnt):
        r = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        if r.returncode != 0 and mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    if proc is not None:
        end_process(proc)
    if mnt in LIVE_MOUNTS:
        LIVE_MOUNTS.remove(mnt)


def cleanup():
    for mnt in list(LIVE_MOUNTS):
        try:
            unmount(mnt, None)
        except OSError:
            pass
    for proc in list(LIVE_PROCS):
        if proc.poll() is None:
            proc.terminate()
        try:
            end_process(proc, grace=5)
        except OSError:
            pass


def proc_usage(pid):
    """(peak RSS in MiB, CPU seconds) of a live process, from /proc."""
    rss = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    if rss is None:  # a zombie has no memory left to report
        raise Failure("error", "the daemon exited before the unmount")
    st = Path("/proc/%d/stat" % pid).read_text()
    fields = st[st.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return rss, cpu


# ---- the state of free memory
#
# This machine type's kernel hands free memory back to its host (free page
# reporting), and the first touch of a page handed back costs the host's
# work: writing 1 GiB into a new file takes 2.5-3.5 s on such ("cold")
# memory here, 0.25 s on memory freed just before ("warm"). Every first read
# of the big file writes a new page per 4 KiB (a store, a download, a cache)
# except curl's and httpfs2's, and whether those pages are warm depends on
# what ran before (another's unmount or a download's removal leaves warm
# pages; how long they stay warm varies). So, by default (--memory warm),
# each first read starts right after writing and removing as much; the table
# head gives the cold and warm rates measured at the start. See
# bench/memstate.sh.

def mem_write(where, mib):
    """MiB/s of writing mib MiB of zeros into a new file in where; removes it."""
    fd, name = tempfile.mkstemp(prefix="memstate.", dir=str(where))
    os.close(fd)
    try:
        t0 = time.monotonic()
        subprocess.run(["dd", "if=/dev/zero", "of=" + name, "bs=1M", "count=%d" % mib,
                        "status=none"], check=True)
        return mib / (time.monotonic() - t0)
    finally:
        os.unlink(name)


def run_rusage(argv, timeout):
    """Run argv, stderr captured; return (seconds, exit code, stderr, its
    rusage). The child is reaped with wait4() by a thread, so that its own
    resource usage comes back and the timeout still holds."""
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)
        got = []
        th = threading.Thread(target=lambda: got.append(os.wait4(p.pid, 0)))
        th.start()
        th.join(timeout)
        secs = time.monotonic() - t0
        if th.is_alive():
            p.kill()
            th.join()
        p.returncode = os.waitstatus_to_exitcode(got[0][1])  # reaped here, not by Popen
        err.seek(0)
        text = err.read().decode(errors="replace")
    if secs >= timeout:
        raise Failure("timeout", "gave up after %d s" % timeout)
    return secs, p.returncode, text, got[0][2]


def timed(argv, timeout, **kw):
    """Run argv; return (seconds, CompletedProcess). A timeout is a Failure."""
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Failure("timeout", "gave up after %d s" % timeout)
    return time.monotonic() - t0, r


def what_failed(text):
    """The line of a tool's or daemon's output that says what went wrong:
    the last that reads like an error, else the last."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return "no message"
    bad = [ln for ln in lines if re.search(r"error|fail|must|not |cannot|unable|refus", ln, re.I)]
    return " / ".join((bad or lines)[-2:])[:200]


# ---------------------------------------------------------------- data

def make_data(www, size_mib, mp4_mib):
    """The files every system reads. Returns nothing; raises on failure."""
    www.mkdir(parents=True, exist_ok=True)
    big = www / "big.bin"
    if not big.exists() or big.stat().st_size != size_mib * MiB:
        log("making a %d MiB random file ..." % size_mib)
        with open(big, "wb") as out:
            subprocess.run(["head", "-c", "%dM" % size_mib, "/dev/urandom"], stdout=out,
                           check=True)
    moov, fast = www / "moov.mp4", www / "fast.mp4"
    made_for = www / ".mp4-mib"  # the size asked for when they were made (--data)
    if not moov.exists() or not fast.exists() or not made_for.exists() \
            or made_for.read_text().strip() != str(mp4_mib):
        log("making a ~%d MiB moov-at-end MP4 and its faststart twin with ffmpeg ..." % mp4_mib)
        # a minute of 720p, or less of a smaller picture for a small file
        secs, frame = (60, "1280x720") if mp4_mib >= 32 else (max(8, mp4_mib * 2), "640x360")
        # noise keeps the video incompressible, so the size follows the bitrate
        kbps = mp4_mib * 8 * 1024 // secs - 128
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y",
             "-f", "lavfi", "-i", "testsrc=size=%s:rate=25,noise=alls=30:allf=t" % frame,
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(secs),
             "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "%dk" % kbps,
             "-minrate", "%dk" % kbps, "-maxrate", "%dk" % kbps, "-bufsize", "%dk" % (kbps // 2),
             "-x264-params", "nal-hrd=cbr", "-c:a", "aac", "-b:a", "128k",
             str(www / "moov.tmp.mp4")], check=True)
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(www / "moov.tmp.mp4"),
                        "-c", "copy", "-movflags", "+faststart", str(www / "fast.tmp.mp4")],
                       check=True)
        os.rename(www / "moov.tmp.mp4", moov)
        os.rename(www / "fast.tmp.mp4", fast)
        made_for.write_text("%d\n" % mp4_mib)
    order_m, order_f = mp4_boxes(moov), mp4_boxes(fast)
    if not order_m.index("moov") > order_m.index("mdat") > -1:
        die("moov.mp4 does not have its moov box at the end: %s" % order_m)
    if not order_f.index("moov") < order_f.index("mdat"):
        die("fast.mp4 does not have its moov box first: %s" % order_f)
    archive(www / "a.zip", ["zip", "-q", "-0"], "member%02d.bin", 32, MiB,
            "a zip of 32 stored 1 MiB members")
    archive(www / "t.tar", ["tar", "cf"], "f%03d.bin", 160, 62500, "a 10 MB tar of 160 files")
    cf = www / "c.bin"
    if not cf.exists():
        cf.write_bytes(os.urandom(16 * MiB))


def archive(dest, cmd, pattern, count, size, what):
    """Make @dest (unless it exists) with `CMD DEST MEMBERS...` from @count
    random members of @size bytes named by @pattern."""
    if dest.exists():
        return
    log("making %s ..." % what)
    src = dest.parent.parent / (dest.name + ".src")
    src.mkdir(exist_ok=True)
    for i in range(count):
        (src / (pattern % i)).write_bytes(os.urandom(size))
    tmp = dest.with_name("tmp." + dest.name)
    subprocess.run(cmd + [str(tmp)] + sorted(p.name for p in src.iterdir()), cwd=src, check=True)
    shutil.rmtree(src)
    os.rename(tmp, dest)


def mp4_boxes(path):
    """The top-level box types of an MP4, in file order."""
    order = []
    with open(path, "rb") as f:
        while True:
            h = f.read(8)
            if len(h) < 8:
                break
            n, t = struct.unpack(">I4s", h)
            at = f.tell() - 8
            if n == 1:
                n = struct.unpack(">Q", f.read(8))[0]
            if n < 8:
                break
            order.append(t.decode("latin-1"))
            f.seek(at + n)
    return order


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


# ---------------------------------------------------------------- nginx

NGINX_HELPER = r'''
set -u
. "$1"
trap nginx_stop EXIT
trap 'exit 0' TERM INT
nginx_start || exit 1
echo "$PORT"
wait "$NGINX_PID"
'''


class Server:
    """nginx from bench/nginx.sh, kept by a bash helper that sourced it and
    stops it (nginx_stop) when it gets SIGTERM."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.log = tmp / "access.log"
        www = tmp / "www"
        # nginx answers a Range request with 206 and no Accept-Ranges, and
        # httpfs2 and httpdirfs refuse that (the "stock nginx" row shows
        # it); every other location adds the header to range replies, so
        # that the peers can be measured at all.
        loc = ""
        for mode, extra in (("f", "add_header Accept-Ranges $suite_ranges;"),
                            ("r20", "add_header Accept-Ranges $suite_ranges; limit_rate 20m;"),
                            ("r2", "add_header Accept-Ranges $suite_ranges; limit_rate 2m;"),
                            ("s", ""), ("nr", "max_ranges 0;")):
            loc += ("location ~ ^/%s/[^/]+/(?<name>.*)$ { alias %s/$name; autoindex on; %s }\n"
                    % (mode, www, extra))
        env = dict(os.environ, TMP=str(tmp),
                   NGINX=shutil.which("nginx") or "/usr/sbin/nginx",
                   NGINX_HTTP="map $http_range $suite_ranges { '' ''; default bytes; }\n"
                   "log_format suite '$request_uri $status $bytes_sent';",
                   NGINX_ACCESS_LOG="%s suite" % self.log,
                   NGINX_SERVER=loc)
        self.proc = subprocess.Popen(["bash", "-c", NGINX_HELPER, "suite-nginx",
                                      str(HERE / "nginx.sh")], env=env,
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        LIVE_PROCS.append(self.proc)
        line = self.proc.stdout.readline()  # nginx_start gives up after 5 s
        if not line.strip().isdigit():
            self.stop()
            die("nginx did not start (see the lines above)")
        self.port = int(line)

    def url(self, mode, tag, name=""):
        return "http://127.0.0.1:%d/%s/%s/%s" % (self.port, mode, tag, name)

    def sent(self):
        """Bytes sent per tag, from the access log (complete once the
        daemons that made the requests are gone)."""
        out = {}
        if not self.log.exists():
            return out
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            m = re.match(r"^/[^/]+/([^/]+)/", parts[0])
            if m and parts[2].isdigit():
                out[m.group(1)] = out.get(m.group(1), 0) + int(parts[2])
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        end_process(self.proc, grace=15)


# ---------------------------------------------------------------- systems

class System:
    """One column: key (for --systems), title (the header), binary (None
    for the local file); why_not says why it cannot run here."""

    def __init__(self, key, title, binary=None):
        self.key = key
        self.title = title
        self.binary = binary
        self.why_not = None
        if binary and not shutil.which(binary) and not os.access(binary, os.X_OK):
            self.why_not = "%s is not installed" % binary


class Suite:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.www = tmp / "www"
        self.size = args.size_mib * MiB
        self.at = (self.size * 3 // 4) // 4096 * 4096
        self.results = {}  # (row, system key) -> [value or Failure]
        self.tags = {}  # (row group, system key) -> [tags per rep]
        self.rclone_conf = tmp / "rclone.conf"
        self.rclone_conf.write_text("")
        self.mnt = tmp / "mnt"
        self.mnt.mkdir()
        sb = args.streamfs
        self.systems = [
            System("local", "local file"),
            System("curl", "curl", "curl"),
            System("download", "curl -o file", "curl"),
            System("streamfs", "streamfs", sb),
            System("streamfs-mem", "streamfs memory", sb),
            System("httpdirfs", "httpdirfs", "httpdirfs"),
            System("httpdirfs-cache", "httpdirfs --cache", "httpdirfs"),
            System("rclone-off", "rclone off", "rclone"),
            System("rclone-full", "rclone full", "rclone"),
            System("httpfs2", "httpfs2", "httpfs2"),
        ]
        if args.systems:
            want = args.systems.split(",")
            self.systems = [s for s in self.systems if s.key in want]
        self.expected = {}
        self.unmounted = set()  # tags whose mount failed: no bytes to count

    # ---- mounting

    def mount(self, sysm, mode, tag, name):
        """Mount `name` for sysm from location `mode`; returns the daemon's
        Popen. Ready once the mount is listed and shows the file (a listing
        starts no stream in streamfs, and every peer lists at mount)."""
        mnt = self.mnt
        fslog = self.tmp / ("fs-%s.log" % sysm.key)
        url = self.args.server.url(mode, tag, name)
        cache = self.tmp / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        k = sysm.key
        if k == "streamfs":
            argv = [sysm.binary, "-f", str(mnt), "%s=%s" % (name, url)]
        elif k == "streamfs-mem":
            argv = [sysm.binary, "-f", "--cache-dir=memory", str(mnt), "%s=%s" % (name, url)]
        elif k == "httpdirfs":
            argv = ["httpdirfs", "-f", "--single-file-mode", url, str(mnt)]
        elif k == "httpdirfs-cache":
            argv = ["httpdirfs", "-f", "--single-file-mode", "--cache", "--cache-location",
                    str(cache), url, str(mnt)]
        elif k in ("rclone-off", "rclone-full"):
            argv = ["rclone", "--config", str(self.rclone_conf), "mount", ":http:", str(mnt),
                    "--http-url", self.args.server.url(mode, tag), "--read-only",
                    "--vfs-cache-mode", "off" if k == "rclone-off" else "full",
                    "--cache-dir", str(cache), "--dir-cache-time", "1h"]
        elif k == "httpfs2":
            argv = ["httpfs2", "-f", "-c", "/dev/null", url, str(mnt)]
        else:
            raise AssertionError(k)
        with open(fslog, "w") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True)
        LIVE_PROCS.append(proc)
        LIVE_MOUNTS.append(mnt)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if mounted(mnt):
                try:
                    ls = subprocess.run(["ls", "-1", str(mnt)], capture_output=True, text=True,
                                        timeout=10)
                    if name in ls.stdout.split("\n"):
                        return proc
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(0.02)  # polled: a FUSE daemon has no readiness signal to wait on
        unmount(mnt, proc)
        self.unmounted.add(tag)
        if proc.returncode is not None and proc.returncode != 0:
            raise Failure("error", "mount failed (exit %d): %s"
                          % (proc.returncode, what_failed(fslog.read_text(errors="replace"))))
        raise Failure("error", "did not mount within 30 s: %s"
                      % what_failed(fslog.read_text(errors="replace")))

    # ---- recording

    def record(self, row, sysm, fn, proc=None):
        """Run fn for row; its figure or its Failure goes in the results. A
        failure while the daemon (proc) is gone says what the daemon said.
        A first read of the big file starts from the --memory state."""
        if row == "read1" and self.args.memory == "warm":
            mem_write(self.tmp, self.args.size_mib)
        try:
            v = fn()
        except Failure as e:
            v = e
            if proc is not None:
                try:  # a reader that failed because the daemon died may see it first
                    proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            if proc is not None and proc.poll() is not None:
                fslog = self.tmp / ("fs-%s.log" % sysm.key)
                v = Failure(e.kind, "the daemon exited (%s): %s" % (
                    proc.returncode, what_failed(fslog.read_text(errors="replace"))))
        self.put(row, sysm, v)
        return v

    def put(self, row, sysm, v):
        self.results.setdefault((row, sysm.key), []).append(v)

    def tag(self, group, sysm, rep):
        t = "%s.%s.%d" % (sysm.key, group, rep)
        self.tags.setdefault((group, sysm.key), {})[rep] = t
        return t

    # ---- the measures

    def read_rate(self, path, timeout):
        secs, r = timed(["dd", "if=%s" % path, "of=/dev/null", "bs=128K"], timeout,
                        capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure("error", "read failed: %s" % what_failed(r.stderr))
        m = re.search(r"^(\d+) bytes", r.stderr, re.M)
        if not m or int(m.group(1)) != self.size:
            raise Failure("WRONG DATA", "read %s bytes of %d" % (m and m.group(1), self.size))
        return self.size / MiB / secs

    def big_reads(self, sysm, rep):
        """First and second read of big.bin on one mount; daemon RSS and CPU."""
        timeout = self.args.size_mib / 10 + 30  # slower than 10 MiB/s on loopback: give up
        rows = ("read1", "read2", "rss", "cpu")
        if sysm.key == "local":
            path = self.www / "big.bin"
            if os.geteuid() == 0:
                subprocess.run(["sync"])
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            self.record("read1", sysm, lambda: self.read_rate(path, timeout))
            self.warm()
            self.record("read2", sysm, lambda: self.read_rate(path, timeout))
            for row in ("rss", "cpu"):
                self.record(row, sysm, lambda: blank())
            return
        tag = self.tag("read", sysm, rep)
        if sysm.key == "curl":
            url = self.args.server.url("f", tag, "big.bin")
            use = []

            def one():
                secs, rc, err, ru = run_rusage(["curl", "-sSf", "-o", "/dev/null", url], timeout)
                if rc != 0:
                    raise Failure("error", "curl: %s" % what_failed(err))
                use.append(ru)
                return self.size / MiB / secs

            self.record("read1", sysm, one)
            self.record("read2", sysm, one)
            self.record("rss", sysm, lambda: curl_usage(use, "rss"))
            self.record("cpu", sysm, lambda: curl_usage(use, "cpu"))
            return
        if sysm.key == "download":
            self.download_reads(sysm, tag, timeout)
            return
        try:
            proc = self.mount(sysm, "f", tag, "big.bin")
        except Failure as e:
            for row in rows:
                self.put(row, sysm, e)
            return
        try:
            path = self.mnt / "big.bin"
            first = self.record("read1", sysm, lambda: self.read_rate(path, timeout), proc)
            if isinstance(first, Failure):
                self.put("read2", sysm, Failure("error", "no second read: the first failed"))
            else:
                self.record("read2", sysm, lambda: self.read_rate(path, timeout), proc)
            if proc.poll() is None:
                try:
                    use = proc_usage(proc.pid)
                except Failure as e:
                    use = (e, e)
                self.put("rss", sysm, use[0])
                self.put("cpu", sysm, use[1])
            else:
                for row in ("rss", "cpu"):
                    self.put(row, sysm, Failure("error", "the daemon exited (%d)"
                                                % proc.returncode))
        finally:
            unmount(self.mnt, proc)

    # ---- "curl -o file": what users do without streamfs

    def download(self, url, timeout):
        """curl URL into a scratch file beside the stores (the same file
        system as streamfs's default cache directory); returns (its path,
        seconds, curl's rusage). The caller removes the file."""
        dest = self.tmp / "download.bin"
        secs, rc, err, ru = run_rusage(["curl", "-sSf", "-o", str(dest), url], timeout)
        if rc != 0:
            dest.unlink(missing_ok=True)
            raise Failure("error", "curl: %s" % what_failed(err))
        return dest, secs, ru

    def download_reads(self, sysm, tag, timeout):
        """First read: the download to a file; second: that file, cached."""
        url = self.args.server.url("f", tag, "big.bin")
        got = []

        def first():
            path, secs, ru = self.download(url, timeout)
            got.append((path, ru))
            if path.stat().st_size != self.size:
                raise Failure("WRONG DATA", "downloaded %d bytes of %d"
                              % (path.stat().st_size, self.size))
            return self.size / MiB / secs

        try:
            if isinstance(self.record("read1", sysm, first), Failure):
                self.put("read2", sysm, Failure("error", "no second read: the first failed"))
            else:
                self.record("read2", sysm, lambda: self.read_rate(got[0][0], timeout))
            use = [ru for _, ru in got]
            self.record("rss", sysm, lambda: curl_usage(use, "rss"))
            self.record("cpu", sysm, lambda: curl_usage(use, "cpu"))
        finally:
            (self.tmp / "download.bin").unlink(missing_ok=True)

    def download_then(self, sysm, row, url, tool, want, binary=False):
        """Record the time to download url to a file and run tool on it."""
        def run():
            t0 = time.monotonic()
            path, _, _ = self.download(url, 600)
            try:
                self.run_probe(tool(path), want, binary=binary)
            finally:
                path.unlink(missing_ok=True)
            return (time.monotonic() - t0) * 1000

        self.record(row, sysm, run)

    def small_read(self, sysm, rep, row, offset):
        """4 KiB at offset, on a fresh mount, checked against the file."""
        want = self.expected["big.bin@%d" % offset]
        tag = self.tag(row, sysm, rep)
        dd = ["dd", "bs=4096", "count=1", "skip=%d" % (offset // 4096), "status=none"]
        if sysm.key == "local":
            self.record(row, sysm, lambda: self.run_probe(
                dd + ["if=%s" % (self.www / "big.bin")], want, binary=True))
            return
        if sysm.key == "curl":
            url = self.args.server.url("f", tag, "big.bin")
            self.record(row, sysm, lambda: self.run_probe(
                ["curl", "-sSf", "-r", "%d-%d" % (offset, offset + 4095), url], want, binary=True))
            return
        if sysm.key == "download":
            self.download_then(sysm, row, self.args.server.url("f", tag, "big.bin"),
                               lambda p: dd + ["if=%s" % p], want, binary=True)
            return
        self.on_mount(sysm, row, "f", tag, "big.bin",
                      lambda p: self.run_probe(dd + ["if=%s" % p], want, binary=True))

    def on_mount(self, sysm, row, mode, tag, name, fn):
        """Mount name fresh, record fn(path) for row, unmount."""
        try:
            proc = self.mount(sysm, mode, tag, name)
        except Failure as e:
            self.put(row, sysm, e)
            return
        try:
            self.record(row, sysm, lambda: fn(self.mnt / name), proc)
        finally:
            unmount(self.mnt, proc)

    def run_probe(self, argv, want, binary=False, shell=False, timeout=120):
        """Time argv (ms); its output must be want (the local file's)."""
        secs, r = timed(argv, timeout, capture_output=True, shell=shell, text=not binary)
        if r.returncode != 0:
            raise Failure("error", "%s: %s" % (Path(argv[0]).name if not shell else "tool",
                                               what_failed(r.stderr if not binary else
                                                          r.stderr.decode(errors="replace"))))
        if r.stdout != want:
            raise Failure("WRONG DATA" if binary else "wrong output",
                          "output differs from the local file's")
        return secs * 1000

    def probe(self, sysm, rep, row, tool, name, mode):
        want = self.expected[row]
        tag = self.tag(row, sysm, rep)
        if sysm.key == "local":
            self.record(row, sysm, lambda: self.run_probe(tool(self.www / name), want))
            return
        if sysm.key == "curl":
            url = self.args.server.url(mode, tag, name)
            if row.startswith("ffprobe"):
                # ffprobe has its own HTTP client with Range: the tool's own limit
                self.record(row, sysm, lambda: self.run_probe(tool(url), want))
            elif row == "unzip":
                self.record(row, sysm, lambda: none("unzip needs a seekable file"))
            else:
                # a pipe: tar and file read a stream from its start
                cmd = "curl -s '%s' | %s" % (url, " ".join(tool("-")))
                self.record(row, sysm, lambda: self.run_probe(cmd, want, shell=True))
            return
        if sysm.key == "download":
            self.download_then(sysm, row, self.args.server.url(mode, tag, name), tool, want)
            return
        self.on_mount(sysm, row, mode, tag, name, lambda p: self.run_probe(tool(p), want))

    def correct(self, sysm, rep, row, mode):
        """sha256 of what the system returns for c.bin against the original."""
        want = self.expected["c.bin"]
        tag = self.tag(row, sysm, rep)

        def check(argv):
            _, r = timed(argv, 120, capture_output=True, text=True)
            if r.returncode != 0:
                raise Failure("error", what_failed(r.stderr))
            if r.stdout.split()[0] != want:
                raise Failure("WRONG DATA", "sha256 differs from the original's")
            return "ok"

        if sysm.key == "local":
            self.record(row, sysm, lambda: blank())
        elif sysm.key == "curl":
            url = self.args.server.url(mode, tag, "c.bin")
            self.record(row, sysm, lambda: check(
                ["bash", "-c", "set -o pipefail; curl -sSf \"$1\" | sha256sum", "curl", url]))
        elif sysm.key == "download":
            url = self.args.server.url(mode, tag, "c.bin")

            def download_check():
                path, _, _ = self.download(url, 120)
                try:
                    return check(["sha256sum", str(path)])
                finally:
                    path.unlink(missing_ok=True)

            self.record(row, sysm, download_check)
        else:
            self.on_mount(sysm, row, mode, tag, "c.bin", lambda p: check(["sha256sum", str(p)]))

    def warm(self):
        """Read every served file once, so nginx serves from the page cache."""
        for p in sorted(self.www.iterdir()):
            subprocess.run(["dd", "if=%s" % p, "of=/dev/null", "bs=1M", "status=none"])

    # ---- the run

    def expect(self):
        """The local tools' output: what every system must give."""
        big = self.www / "big.bin"
        with open(big, "rb") as f:
            for off in (0, self.at):
                f.seek(off)
                self.expected["big.bin@%d" % off] = f.read(4096)
        self.expected["c.bin"] = sha256_file(self.www / "c.bin")
        for row, tool, name, _ in self.probes():
            r = subprocess.run(tool(self.www / name), capture_output=True, text=True, check=True)
            self.expected[row] = r.stdout

    def probes(self):
        ffprobe = lambda p: ["ffprobe", "-v", "error", "-show_entries",  # noqa: E731
                             "format=duration:stream=codec_name", "-of", "compact", str(p)]
        out = []
        for name, label in (("moov.mp4", "moov"), ("fast.mp4", "fast")):
            for mode in ("f", "r20", "r2"):
                out.append(("ffprobe-%s-%s" % (label, mode), ffprobe, name, mode))
        # the archive's own path is the first line of unzip -l: leave it out
        out.append(("unzip", lambda p: ["sh", "-c", 'unzip -l "$1" | tail -n +2', "unzip",
                                        str(p)], "a.zip", "f"))
        out.append(("tar", lambda p: ["tar", "tf", str(p)], "t.tar", "f"))
        out.append(("file", lambda p: ["file", "-b", str(p)], "moov.mp4", "f"))
        return out

    def run(self):
        self.warm()
        self.expect()
        for rep in range(1, self.args.reps + 1):
            def each(what, fn):
                for s in self.systems:
                    log("rep %d/%d: %s: %s" % (rep, self.args.reps, what, s.title))
                    if s.why_not:
                        continue
                    fn(s)
            each("first and second read", lambda s: self.big_reads(s, rep))
            each("first 4 KiB", lambda s: self.small_read(s, rep, "head4k", 0))
            each("4 KiB at %d MiB" % (self.at // MiB),
                 lambda s: self.small_read(s, rep, "at", self.at))
            for row, tool, name, mode in self.probes():
                each(row, lambda s: self.probe(s, rep, row, tool, name, mode))
            each("correctness, no Range", lambda s: self.correct(s, rep, "nr", "nr"))
            each("correctness, stock nginx", lambda s: self.correct(s, rep, "stock", "s"))

    # ---- the table

    def rows(self):
        at = "%d MiB" % (self.at // MiB)
        big = "%d MiB" % self.args.size_mib if self.args.size_mib % 1024 else \
            "%d GiB" % (self.args.size_mib // 1024)
        rows = [
            ("read1", "first read of %s, MiB/s" % big, "rate"),
            ("read2", "second read, same mount, MiB/s", "rate"),
            ("head4k", "first 4 KiB, fresh mount, ms", "ms"),
            ("at", "4 KiB at %s, fresh mount, ms" % at, "ms"),
        ]
        speed = {"f": "full speed", "r20": "20 MiB/s", "r2": "2 MiB/s"}
        for row, _, name, mode in self.probes():
            if row.startswith("ffprobe"):
                what = "moov at end" if "moov" in row else "faststart"
                rows.append((row, "ffprobe, %s, %s, ms" % (what, speed[mode]), "ms"))
        rows += [
            ("unzip", "`unzip -l` (32 MiB zip), ms", "ms"),
            ("tar", "`tar tf` (10 MB tar), ms", "ms"),
            ("file", "`file -b` (the MP4), ms", "ms"),
            ("sent-read", "server sent for the two reads, MiB", "mib"),
            ("sent-probe", "server sent for the 4 KiB reads and the probes, MiB", "mib"),
            ("rss", "daemon peak RSS, MiB", "mib"),
            ("cpu", "daemon CPU for the two reads, s", "s"),
            ("nr", "server without Range: sha256", "check"),
            ("stock", "stock nginx: sha256", "check"),
        ]
        return rows

    def add_sent(self):
        """Bytes per system and repetition from the access log."""
        sent = self.args.server.sent()
        probe_groups = ["head4k", "at"] + [p[0] for p in self.probes()]
        for s in self.systems:
            if s.why_not:
                continue
            for rep in range(1, self.args.reps + 1):
                if s.key == "local":
                    for row in ("sent-read", "sent-probe"):
                        self.results.setdefault((row, s.key), []).append(Failure("–", ""))
                    continue
                t = self.tags.get(("read", s.key), {}).get(rep)
                self.results.setdefault(("sent-read", s.key), []).append(
                    Failure("error", "did not mount") if t in self.unmounted
                    else sent.get(t, 0) / MiB)
                tags = [self.tags.get((g, s.key), {}).get(rep) for g in probe_groups]
                bad = sum(1 for t in tags if t in self.unmounted)
                self.results.setdefault(("sent-probe", s.key), []).append(
                    Failure("error", "%d of %d mounts failed" % (bad, len(tags))) if bad
                    else sum(sent.get(t, 0) for t in tags) / MiB)

    def table(self):
        notes = []

        def note(text):
            if text not in notes:
                notes.append(text)
            return notes.index(text) + 1

        header = ["measure"] + [s.title for s in self.systems]
        lines = []
        for row, label, kind in self.rows():
            cells = [label]
            for s in self.systems:
                if s.why_not:
                    cells.append("n/a [%d]" % note("%s: %s" % (s.title, s.why_not)))
                    continue
                cells.append(cell(self.results.get((row, s.key), []), kind,
                                  lambda f: note("%s: %s" % (s.title, f.reason.replace(
                                      str(self.mnt), "MNT")))))
            lines.append(cells)
        widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]

        def fmt(r):
            return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

        out = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [fmt(r) for r in lines]
        return out, notes


def blank():
    """Nothing to measure (the local file has no daemon and no server)."""
    raise Failure("–", "")


def none(reason):
    raise Failure("n/a", reason)


def curl_usage(use, what):
    if not use or any(u is None for u in use):
        raise Failure("n/a", "curl's usage not available")
    if what == "rss":
        return max(u.ru_maxrss for u in use) / 1024
    return sum(u.ru_utime + u.ru_stime for u in use)


def num(v, kind):
    if kind == "rate":
        return "%.0f" % v
    if kind == "s":
        return "%.2f" % v
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def cell(samples, kind, note):
    """Median (min-max) of the numbers; failures as their kind and a note."""
    if not samples:
        return "-"
    if all(isinstance(s, Failure) and s.kind == "–" for s in samples):
        return "–"
    fails = [s for s in samples if isinstance(s, Failure)]
    good = [s for s in samples if not isinstance(s, Failure)]
    if kind == "check":
        if not fails:
            return "ok"
        kinds = sorted({f.kind for f in fails})
        text = "/".join(kinds)
        if good:
            text += " %d/%d" % (len(fails), len(samples))
        return text + " [%s]" % ",".join(str(note(f)) for f in unique_reasons(fails))
    if not good:
        kinds = sorted({f.kind for f in fails})
        return "%s [%s]" % ("/".join(kinds), ",".join(str(note(f)) for f in unique_reasons(fails)))
    med = statistics.median(good)
    text = num(med, kind)
    if len(good) > 1:
        text += " (%s–%s)" % (num(min(good), kind), num(max(good), kind))
    if fails:
        text += " %d/%d failed [%s]" % (len(fails), len(samples),
                                        ",".join(str(note(f)) for f in unique_reasons(fails)))
    return text


def unique_reasons(fails):
    seen, out = set(), []
    for f in fails:
        if f.reason not in seen:
            seen.add(f.reason)
            out.append(f)
    return out


# ---------------------------------------------------------------- report

def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = "%.0f GiB RAM" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    return "%d CPUs (%s), %s, kernel %s" % (os.cpu_count(), cpu, mem, os.uname().release)


def versions():
    out = []
    for argv, pat in ((["nginx", "-v"], r"nginx/(\S+)"),
                      (["curl", "--version"], r"curl (\S+)"),
                      (["httpdirfs", "--version"], r"HTTPDirFS version (\S+)"),
                      (["rclone", "version"], r"rclone v(\S+)"),
                      (["dpkg-query", "-W", "-f=${Version}", "httpfs2"], r"(\S+)")):
        name = argv[0] if argv[0] != "dpkg-query" else "httpfs2"
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            m = re.search(pat, r.stdout + r.stderr)
            if m and r.returncode == 0:
                out.append("%s %s" % (name, m.group(1)))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ", ".join(out)


def commit():
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    c = r.stdout.strip() or "unknown"
    d = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True)
    return c + (" (with uncommitted changes)" if d.stdout.strip() else "")


LEGEND = """\
Columns: the local file (read straight from the disk and page cache) and
curl (the same URL, no file system) are the limits; "curl -o file" is
what people do without streamfs: download to a file (in the scratch
directory, on the file system of streamfs's default store), then run the
tool on it; its first read is the download, its second a read of that
file, and every other row counts the whole download; streamfs with its
default disk store and with --cache-dir=memory; httpdirfs --single-file-
mode without and with --cache; rclone mount :http: with --vfs-cache-mode
off and full; httpfs2. Each mount serves one file from nginx 1.22 on
127.0.0.1; reads are `dd bs=128K` (cat's buffer size), the first read of
the local file after dropping the page cache (root only), every other
served file kept in the page cache. curl's column runs ffprobe on the
URL itself (its own HTTP client, with Range), `tar tf` and `file -b` on
curl's output through a pipe; its RSS and CPU are curl's own over the
two downloads (over the one download for "curl -o file"). "server sent"
is nginx's $bytes_sent for the system's requests, counted until the
unmount (a background fill counts up to then). The memory store lives in
a memfd, outside the daemon's RSS. Correctness: sha256sum of a 16 MiB
file through the system against the original's: from nginx with
`max_ranges 0` (no Range, no Accept-Ranges) and from stock nginx."""


def main():
    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, exit 2
            print("suite: %s (see bench/suite --help)" % message, file=sys.stderr)
            sys.exit(2)

    ap = Parser(prog="bench/suite", description="streamfs next to the local file, curl and "
                "its peers (httpdirfs, rclone, httpfs2): one table.")
    ap.add_argument("--quick", action="store_true",
                    help="one repetition of a 256 MiB file (unless --reps or --size-mib say)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3)")
    ap.add_argument("--size-mib", type=int, help="size of the big file (default 1024)")
    ap.add_argument("--mp4-mib", type=int, default=64, help="MP4 size (default 64)")
    ap.add_argument("--write", action="store_true",
                    help="also write the table to bench/RESULTS.md")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"),
                    help="the file --write writes (default bench/RESULTS.md)")
    ap.add_argument("--note", default="", help="a line to put in RESULTS.md")
    ap.add_argument("--systems", help="comma-separated subset of: local, curl, download, "
                    "streamfs, streamfs-mem, httpdirfs, httpdirfs-cache, rclone-off, rclone-full, httpfs2")
    ap.add_argument("--memory", choices=("warm", "asis"), default="warm",
                    help="free memory before each first read of the big file: warm (freed "
                    "just before, the default) or as it is; see bench/memstate.sh")
    ap.add_argument("--no-install", action="store_true", help="install no packages")
    ap.add_argument("--data", help="keep the generated data in DATA and reuse it next time")
    ap.add_argument("--tmp", default=os.environ.get("BENCH_TMP", "/var/tmp"),
                    help="parent of the scratch directory (default /var/tmp)")
    ap.add_argument("--streamfs", default=os.environ.get("STREAMFS",
                                                        str(REPO / "build" / "streamfs")),
                    help="the binary (default build/streamfs)")
    args = ap.parse_args()
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.size_mib is None:
        args.size_mib = 256 if args.quick else 1024
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.size_mib < 1 or args.mp4_mib < 4:
        ap.error("--size-mib must be at least 1 and --mp4-mib at least 4")
    keys = ("local curl download streamfs streamfs-mem httpdirfs httpdirfs-cache rclone-off "
            "rclone-full httpfs2").split()
    if args.systems:
        bad = [k for k in args.systems.split(",") if k not in keys]
        if bad:
            ap.error("unknown system %s" % ",".join(bad))
    if not os.access(args.streamfs, os.X_OK):
        die("%s not found (build first: tools/build)" % args.streamfs, 2)
    args.streamfs = str(Path(args.streamfs).resolve())

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    if not args.no_install:
        install_packages(PKGS)
    for t in ("nginx", "ffmpeg", "ffprobe", "curl", "zip", "unzip", "file", "fusermount3"):
        if not shutil.which(t) and not os.path.exists("/usr/sbin/" + t):
            die("%s is not installed (run without --no-install, or apt-get install it)" % t)

    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()[0]
    at_commit = commit()  # what was measured, whatever changes while it runs
    tmp = Path(tempfile.mkdtemp(prefix="suite.", dir=args.tmp))
    server = None
    try:
        if args.data:
            data = Path(args.data).resolve()
            make_data(data, args.size_mib, args.mp4_mib)
            (tmp / "www").symlink_to(data)
        else:
            make_data(tmp / "www", args.size_mib, args.mp4_mib)
        server = args.server = Server(tmp)
        floor = (mem_write(tmp, args.size_mib), mem_write(tmp, args.size_mib))
        suite = Suite(args, tmp)
        suite.run()
        cleanup()
        server.stop()  # every client gone and nginx stopped: its log is complete
        suite.add_sent()
        if os.environ.get("SUITE_DEBUG"):
            for k, v in sorted(suite.results.items()):
                log("%s: %r" % (k, v))
        table, notes = suite.table()
    finally:
        cleanup()
        if server:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    reps = "median (min–max) of %d repetitions" % args.reps if args.reps > 1 else \
        "one repetition"
    head = [
        "Run %s UTC at commit %s, %s; load average %.2f at the start." % (
            started.strftime("%Y-%m-%d %H:%M"), at_commit, machine(), load),
        "Versions: %s. Each cell: %s, systems interleaved." % (versions(), reps),
        "Writing %d MiB into a new file here: %.0f MiB/s at the start, %.0f at once again "
        "(free page reporting %s); each first read of the big file started on %s memory "
        "(--memory %s)." % (args.size_mib, floor[0], floor[1],
                            "on" if PAGE_REPORTING.exists() else "off",
                            "warm" if args.memory == "warm" else "unprepared", args.memory),
    ]
    if os.geteuid() != 0:
        head.append("Not root: the local file's first read is from the page cache.")
    print()
    print("\n".join(head))
    print()
    print("\n".join(table))
    print()
    for i, n in enumerate(notes, 1):
        print("[%d] %s" % (i, n))
    print()
    print(LEGEND)
    if args.write:
        argv, skip = [], False
        for a in sys.argv[1:]:  # the note is printed above the table already
            if skip or a == "--note" or a.startswith("--note="):
                skip = a == "--note"
                continue
            argv.append(a)
        cmd = shlex.join(["bench/suite"] + argv)
        md = ["# Benchmark results", ""]
        if args.note:
            md += ["**%s**" % args.note, ""]
        md += head + ["", "```console", "$ " + cmd.strip(), "```", ""] + table + [""]
        md += ["%d. %s" % (i, n) for i, n in enumerate(notes, 1)]
        md += ["", LEGEND, ""]
        Path(args.results).write_text("\n".join(md))
        log("wrote %s" % args.results)


if __name__ == "__main__":
    main()
