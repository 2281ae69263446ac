"""
Helpers for the streamfs integration tests: deadlines (wait_until,
Background, call), FIFOs that feed streams and gates, process and mount
inspection, the Mount object behind the `mount` fixture, and the rescue
from a test stuck past its timeout. conftest.py holds the fixtures and
the timeout hooks; its comment lists the rules these helpers exist to keep.
"""
import errno
import faulthandler
import hashlib
import itertools
import json
import os
import platform
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 10.0  # default deadline for anything expected to happen "promptly"
XATTR_DEADLINE = 5.0
SANITIZER_PATTERNS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
    "ERROR: LeakSanitizer",
)
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP}
STATES = {"idle", "running", "complete", "failed", "cancelled"}

# Daemons (and helper processes) and mount points made by the running test
# and not yet cleaned up. After each test the `leftovers` fixture (see
# conftest.py) kills and unmounts what is still here; the rescue thread
# SIGKILLs the daemons when a test is stuck in the kernel past its timeout.
# A PID is kept with its start time, so that a PID reused by another
# process after ours was reaped is never killed.
_live_pids = {}  # pid -> start time (field 22 of /proc/PID/stat)
_live_mounts = set()
_live_lock = threading.Lock()


def _start_time(pid):
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()[19]


def register_pid(pid):
    with _live_lock:
        _live_pids[pid] = _start_time(pid)


def unregister_pid(pid):
    with _live_lock:
        _live_pids.pop(pid, None)


def _same_process(pid, start):
    return start is not None and _start_time(pid) == start


def register_mount(path):
    with _live_lock:
        _live_mounts.add(str(path))


def unregister_mount(path):
    with _live_lock:
        _live_mounts.discard(str(path))


def clean_up_leftovers():
    """SIGKILL the registered processes still alive and lazily unmount the
    registered mount points still mounted; forget both. Returns what it
    had to do, one line each (empty after a clean test)."""
    with _live_lock:
        pids, mounts = sorted(_live_pids.items()), sorted(_live_mounts)
        _live_pids.clear()
        _live_mounts.clear()
    done = []
    for pid, start in pids:
        if pid_alive(pid) and _same_process(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
                done.append(f"SIGKILLed process {pid}")
            except OSError:
                pass
    for path in mounts:
        if mounted(path):
            run(["fusermount3", "-uz", path], timeout=DEADLINE)
            done.append(f"unmounted {path}" + (" (still mounted!)" if mounted(path) else ""))
    return done


# --------------------------------------------------------------------------
# Timeouts: pytest-timeout (python3-pytest-timeout) gives every test a
# timeout (pytest.ini; @pytest.mark.timeout(N) per test) and, with
# timeout_method = signal, fails the test with SIGALRM wherever it is, so
# the fixtures' cleanup runs. A signal is only handled when the main thread
# returns to Python: a test stuck in the kernel on a FUSE request that
# nobody answers never sees it. The rescue thread covers that case.

class Rescue:
    """Started with a test's timeout: GRACE s after it, dumps all stacks and
    SIGKILLs the daemons this run started, which aborts their FUSE
    connections so a call stuck in the kernel returns (and the pending
    SIGALRM then fails the test); LAST s after it, exits the run."""

    GRACE = 15.0
    LAST = 45.0

    def __init__(self, what, timeout):
        self.what = what
        self.timeout = timeout
        self.start = time.monotonic()
        self.fired = False
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="rescue").start()

    def stop(self):
        self.stopped.set()

    def overran(self):
        """True once the test has run past its timeout."""
        return time.monotonic() - self.start > self.timeout

    def _watch(self):
        if self.stopped.wait(self.timeout + self.GRACE):
            return
        self.fired = True
        with _live_lock:
            pids = [p for p, start in sorted(_live_pids.items()) if _same_process(p, start)]
        sys.__stderr__.write(f"\nrescue: {self.what} stuck {self.GRACE:g} s past its "
                             f"{self.timeout:g} s timeout; stacks follow; SIGKILLing "
                             f"daemons {pids}\n")
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.stopped.wait(self.LAST - self.GRACE):
            return
        sys.__stderr__.write(f"\nrescue: {self.what} still stuck; exiting the test run\n")
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        sys.__stderr__.flush()
        os._exit(3)


# --------------------------------------------------------------------------
# Waiting with deadlines.

def wait_until(pred, timeout=DEADLINE, what="condition"):
    """Poll pred() until it returns a truthy value (returned) or the deadline
    passes (AssertionError naming @what and the last value seen)."""
    end = time.monotonic() + timeout
    delay = 0.002
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {last!r})")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class Background:
    """Run fn(*args) in a daemon thread. result() waits with a deadline and
    re-raises the call's exception. A thread stuck in a FUSE call is freed
    when the mount's daemon is stopped at teardown."""

    def __init__(self, fn, *args, name=None):
        self._fn = fn
        self._args = args
        self._done = threading.Event()
        self._value = None
        self._exc = None
        self.native_id = None
        self._started = threading.Event()
        self.name = name or getattr(fn, "__name__", "call")
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
        self._thread.start()
        self._started.wait(DEADLINE)

    def _run(self):
        self.native_id = threading.get_native_id()
        self._started.set()
        try:
            self._value = self._fn(*self._args)
        except BaseException as e:  # handed to the caller of result()
            self._exc = e
        finally:
            self._done.set()

    def done(self):
        return self._done.is_set()

    def wait(self, timeout):
        """True if the call finished within @timeout (no exception raised)."""
        return self._done.wait(timeout)

    def result(self, timeout=DEADLINE, what=None):
        if not self._done.wait(timeout):
            raise AssertionError(f"{what or self.name}: still blocked after {timeout:g} s")
        if self._exc is not None:
            raise self._exc
        return self._value

    def error(self, timeout=DEADLINE, what=None):
        """Wait for the call and return the exception it raised (None if it
        returned normally)."""
        if not self._done.wait(timeout):
            raise AssertionError(f"{what or self.name}: still blocked after {timeout:g} s")
        return self._exc

    def value(self):
        return self._value


def call(fn, *args, timeout=DEADLINE, what=None):
    """fn(*args) with a deadline: the result, or the exception it raised, or
    AssertionError if it is still blocked after @timeout."""
    return Background(fn, *args).result(timeout, what or getattr(fn, "__name__", "call"))


def assert_blocked(bg, for_seconds=0.3, what=None):
    """Check that a background call is (still) waiting. A negative check can
    only be made over a window; a correct daemon never fails it."""
    if bg.wait(for_seconds):
        raise AssertionError(
            f"{what or bg.name} should still be waiting, but returned "
            f"{_short(bg.value())!r} / raised {bg._exc!r}")


def assert_unchanged(fn, for_seconds, what="value"):
    """A negative check: fn() keeps its first value for @for_seconds (polled;
    fails as soon as it changes). Like assert_blocked, it can only be made
    over a window; a correct daemon never fails it."""
    first = fn()
    end = time.monotonic() + for_seconds
    while time.monotonic() < end:
        now = fn()
        if now != first:
            raise AssertionError(f"{what} changed from {first!r} to {now!r}")
        time.sleep(0.05)
    return first


def _short(v):
    if isinstance(v, (bytes, bytearray)) and len(v) > 40:
        return f"<{len(v)} bytes>"
    return v


# --------------------------------------------------------------------------
# File-system helpers. All of them may block on stream data, so tests call
# them through call()/Background unless the data is known to be present.

def xattr(path, key):
    """The xattr value as str, or None if absent (ENODATA). Other errors raise."""
    if not key.startswith("user."):
        key = "user.streamfs." + key
    try:
        # Reading xattrs must never block; a daemon that does fails here
        # instead of stalling the polling loop that called us.
        return call(os.getxattr, str(path), key, timeout=XATTR_DEADLINE,
                    what=f"getxattr {key} of {path} (xattrs must never block)").decode()
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def state(path):
    return xattr(path, "state")


def nbytes(path):
    v = xattr(path, "bytes")
    return int(v) if v is not None else None


def read_all(path, bufsize=1 << 20):
    fd = os.open(str(path), os.O_RDONLY)
    try:
        out = bytearray()
        while True:
            b = os.read(fd, bufsize)
            if not b:
                return bytes(out)
            out += b
    finally:
        os.close(fd)


def pread_path(path, n, off):
    fd = os.open(str(path), os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Readers in a subprocess (reader.py): a read that hangs fails the test that
# waits for it with a deadline, and a read can be interrupted or killed.

READER = Path(__file__).resolve().with_name("reader.py")


def reader_argv(path, ops, exit_on_sigint=None):
    """The command line of a reader.py that opens @path and runs @ops (see
    reader.py), for a test that runs it itself (Popen)."""
    argv = [sys.executable, str(READER), "ops"]
    if exit_on_sigint is not None:
        argv += ["--exit-on-sigint", str(exit_on_sigint)]
    return argv + [str(path), json.dumps(ops)]


def reader_results(out):
    """reader.py's output (str or bytes) as (open_errno, results): results
    is a list of dicts, one per operation finished (a read's "data" made
    bytes), None if the open failed."""
    if isinstance(out, bytes):
        out = out.decode()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    if not lines or "open" not in lines[0]:
        raise AssertionError(f"reader.py printed no open result: {out[:500]!r}")
    if lines[0]["open"]:
        return lines[0]["open"], None
    res = []
    for r in lines[1:]:
        if "data" in r:
            r["data"] = bytes.fromhex(r["data"])
        res.append(r)
    return 0, res


def _run_reader(path, ops, timeout):
    p = subprocess.run(reader_argv(path, ops), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"reader.py {path} {ops}: exit {p.returncode}: {p.stderr}"
    return reader_results(p.stdout)


def open_errno(path, timeout=60):
    """Open @path in a subprocess: 0, or the errno the open failed with."""
    return _run_reader(path, [], timeout)[0]


def read_ops(path, ops, timeout=60):
    """Open @path in a subprocess and run @ops: ("pread", off, len), ("seq",
    off, total, chunk), ("fstat",), ("seek_end",). Returns a dict per op:
    n, sha, data (bytes; pread only) and t for a read, size or off, or
    errno if it failed. The open must succeed."""
    e, res = _run_reader(path, ops, timeout)
    assert e == 0, f"open {path}: {os.strerror(e)}"
    return res


def read_values(path, ops, timeout=60):
    """read_ops() with each result as one value: a pread's bytes, fstat's
    size, seek_end's offset, or the errno (int) of an op that failed (a
    seq stays a dict)."""
    out = []
    for r in read_ops(path, ops, timeout):
        if "errno" in r:
            out.append(r["errno"])
        elif "data" in r:
            out.append(r["data"])
        elif "size" in r or "off" in r:
            out.append(r.get("size", r.get("off")))
        else:  # seq: n and sha
            out.append(r)
    return out


def preads(path, ranges, timeout=60):
    """read_values() of preads [(off, len), ...]: bytes, or an errno."""
    return read_values(path, [("pread", off, n) for off, n in ranges], timeout)


class Reader:
    """reader.py running in the background, for a test that acts while it
    reads (interrupts it, kills it, removes its file). Registered like a
    daemon: stop() it in a finally; the `leftovers` fixture kills one that
    was forgotten."""

    def __init__(self, path, ops, exit_on_sigint=None):
        self.proc = subprocess.Popen(reader_argv(path, ops, exit_on_sigint),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        register_pid(self.pid)
        self.lines = []  # the JSON objects read so far by next()

    def next(self, timeout=DEADLINE):
        """The next object it prints (the open's result first, then one per
        operation), waiting at most @timeout for it."""
        line = call(self.proc.stdout.readline, timeout=timeout,
                    what=f"reader.py {self.pid}: its next result")
        if not line:
            raise AssertionError(f"reader.py {self.pid} ended: "
                                 f"{self.proc.stderr.read().decode(errors='replace')}")
        obj = json.loads(line)
        self.lines.append(obj)
        return obj

    def wait_open(self, timeout=DEADLINE):
        """Wait for the open to succeed: the reads are under way."""
        o = self.next(timeout)
        assert o.get("open") == 0, f"reader.py: open failed: {o}"

    def finish(self, timeout=DEADLINE):
        """Wait for it to exit 0; (open_errno, results) as reader_results()."""
        rest = call(self.proc.stdout.read, timeout=timeout, what=f"reader.py {self.pid} to end")
        rc = self.proc.wait(DEADLINE)
        unregister_pid(self.pid)
        err = self.proc.stderr.read().decode(errors="replace")
        assert rc == 0, f"reader.py exited {rc}: {err}"
        done = "".join(json.dumps(x) + "\n" for x in self.lines)
        return reader_results(done + rest.decode())

    def stop(self):
        """Kill it if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(DEADLINE)
        unregister_pid(self.pid)


def storm_argv(root, go, seed, iters, specs):
    """The command line of a reader.py storm (see reader.py)."""
    return [sys.executable, str(READER), "storm", str(root), str(go), str(seed), str(iters),
            *[str(x) for x in specs]]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def make_data(path, n):
    """Write @n random bytes to @path; return them."""
    data = os.urandom(n)
    Path(path).write_bytes(data)
    return data


def put(www, name, size):
    """A file of @size random bytes (no two offsets alike by chance) named
    @name in the served directory @www; returns the bytes."""
    return make_data(Path(www) / name, size)


def source_file(dirpath, size, name="src"):
    """@size random bytes in a new file @name under @dirpath (the body of a
    cmd: source, say); returns (the bytes, the file's path)."""
    path = Path(dirpath) / name
    return make_data(path, size), path


def thread_names(pid):
    """The names (comm) of the threads of process @pid."""
    names = set()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                names.add(f.read().strip())
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return names


def q(s):
    return shlex.quote(str(s))


def slow_cmd(path, chunks=4, delay=0.3):
    """A cmd: source that sends @path in @chunks pieces, @delay s apart, so
    tools run on data still arriving (the delay paces the producer; nothing
    waits on it)."""
    size = os.path.getsize(path)
    bs = max(1, -(-size // chunks))
    return (f"cmd:i=0; while [ $((i*{bs})) -lt {size} ]; do [ $i -gt 0 ] && sleep {delay}; "
            f"dd if={q(path)} bs={bs} skip=$i count=1 status=none; i=$((i+1)); done")


def gated_cmd(data, head, gate):
    """A cmd: source that sends the first @head bytes of the file @data,
    waits for the Fifo @gate to be closed, then sends the rest."""
    return (f"cmd:head -c {head} {q(data)}; {gate.gate}; "
            f"tail -c +{head + 1} {q(data)}")


class Fifo:
    """A named pipe the test writes to: the body of a 'pipe:' source, or of a
    command such as 'cat FIFO' (see .cat). The test decides exactly how many
    bytes have been produced; close() ends the stream. Used as a gate, a
    command 'A; cat FIFO >/dev/null; B' pauses between A and B until close().

    The write end is opened (non-blocking) only once a reader has opened the
    FIFO, which happens when the stream starts; write() and close() wait for
    that with a deadline."""

    def __init__(self, path):
        self.path = Path(path)
        os.mkfifo(self.path)
        self.fd = None
        self.closed = False
        self.written = 0

    @property
    def cat(self):
        return f"cat {q(self.path)}"

    @property
    def gate(self):
        return f"cat {q(self.path)} >/dev/null"

    def connect(self, timeout=DEADLINE):
        if self.fd is not None:
            return

        def try_open():
            try:
                return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no reader yet
                    return None
                raise

        self.fd = wait_until(try_open, timeout, f"a reader on FIFO {self.path}")

    def write(self, data, timeout=DEADLINE):
        self.connect(timeout)
        end = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"FIFO {self.path}: reader stopped consuming "
                                     f"({len(view)} bytes left)")
            _, w, _ = select.select([], [self.fd], [], left)
            if not w:
                continue
            try:
                n = os.write(self.fd, view[:65536])
            except BlockingIOError:
                continue
            view = view[n:]
            self.written += n

    def close(self, timeout=DEADLINE):
        """End of stream: connect if needed (so the reader sees EOF), close."""
        if self.closed:
            return
        self.connect(timeout)
        os.close(self.fd)
        self.fd = None
        self.closed = True

    release = close

    def abandon(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.closed = True


# --------------------------------------------------------------------------
# Processes.

_READ_SYSCALLS = {
    "x86_64": {0, 17, 19, 295},     # read, pread64, readv, preadv
    "aarch64": {63, 67, 65, 69},
}.get(platform.machine())


def proc_state(pid, tid=None):
    """The one-letter state of a process (or thread), None if gone."""
    p = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        s = Path(p).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return s[s.rindex(")") + 2]


def pid_alive(pid):
    """Running or sleeping; a zombie (not reaped because PID 1 here may not
    reap) counts as gone."""
    return proc_state(pid) not in (None, "Z", "X")


def in_read_syscall(pid, tid=None):
    """True if the process (thread) is sleeping inside a read-family call."""
    base = f"/proc/{pid}/task/{tid}" if tid else f"/proc/{pid}"
    try:
        sc = Path(base, "syscall").read_text().split()
    except OSError:
        return False
    if not sc or sc[0] == "running":
        return False
    if proc_state(pid, tid) not in ("S", "D"):
        return False
    if _READ_SYSCALLS is None:
        return True
    try:
        return int(sc[0]) in _READ_SYSCALLS
    except ValueError:
        return False


def wait_blocked_in_read(pid=None, threads=(), timeout=DEADLINE):
    """Wait until a process, or every Background in @threads, sleeps in read."""
    if pid is not None:
        wait_until(lambda: in_read_syscall(pid), timeout, f"pid {pid} to block in read")
    for t in threads:
        wait_until(lambda: t.done() or in_read_syscall(os.getpid(), t.native_id), timeout,
                   f"thread {t.name} to block in read")
        if t.done():
            raise AssertionError(f"{t.name} returned instead of waiting: "
                                 f"{_short(t.value())!r} / {t._exc!r}")


def in_fuse_wait(pid):
    """True if the process sleeps on a FUSE request (its wchan says so)."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return "request_wait_answer" in wchan or "fuse" in wchan


def wait_in_fuse(pid, timeout=DEADLINE):
    """Wait until @pid sleeps on a FUSE request. Not proof that the daemon
    has the request, let alone parked it: Mount.wait_waiters() is."""
    wait_until(lambda: in_fuse_wait(pid), timeout, f"pid {pid} to wait on a FUSE request")


def kill_if_alive(pid, expect_cmd=None):
    """SIGKILL a process this test caused to exist (e.g. a command's
    grandchild that leaked), after checking it is still what we think."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return
    if expect_cmd and expect_cmd not in cmdline:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def run(argv, timeout=30, **kw):
    """subprocess.run with a timeout, capturing text output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(a) for a in argv], timeout=timeout, **kw)


# --------------------------------------------------------------------------
# Mounts.

def _unescape_mountinfo(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mount_count(path):
    """How many mounts are stacked on @path (per /proc/self/mountinfo)."""
    # Resolve only the parent: stat of the mount point itself would ask the
    # daemon, which may be the thing that is stuck.
    p = os.path.abspath(str(path))
    target = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
    n = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
                n += 1
    return n


def mounted(path):
    """True if @path is a mount point."""
    return mount_count(path) > 0


def fusermount_u(path):
    """Unmount @path: 'fusermount3 -u', falling back to '-uz' (lazy) when
    busy. Returns the CompletedProcess of the last attempt."""
    r = run(["fusermount3", "-u", path], timeout=DEADLINE)
    if r.returncode != 0 and mounted(path):
        r = run(["fusermount3", "-uz", path], timeout=DEADLINE)
    return r


def sanitizer_reports(text):
    return [p for p in SANITIZER_PATTERNS if p in text]


class Mount:
    """A running streamfs mount. .path is the mount point, .proc the Popen
    of the foreground daemon (in background mode: of the parent that
    returned), .pid the daemon's PID."""

    def __init__(self, binary, path, argv, stderr_path, foreground):
        self.binary = binary
        self.path = Path(path)
        self.argv = argv
        self.stderr_path = Path(stderr_path)
        self.foreground = foreground
        self.proc = None
        self.pid = None
        self.stopped_by_test = False  # a test signalled the daemon itself
        self.torn_down = False

    def __truediv__(self, name):
        return self.path / name

    def stderr_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def xattr(self, name, key):
        return xattr(self.path / name, key)

    def state(self, name):
        return xattr(self.path / name, "state")

    def nbytes(self, name):
        return nbytes(self.path / name)

    def start(self, name):
        """Start a stream (an open(), in the background: open waits for the
        first bytes, which the test is usually about to provide)."""
        def open_close(path):
            os.close(os.open(path, os.O_RDONLY))
        return Background(open_close, str(self.path / name), name=f"start {name}")

    def wait_state(self, name, states, timeout=DEADLINE):
        if isinstance(states, str):
            states = {states}
        return wait_until(lambda: self.state(name) in states and self.state(name), timeout,
                          f"{name} to reach state {sorted(states)} (now {self.state(name)!r})")

    def wait_bytes(self, name, n, timeout=DEADLINE):
        wait_until(lambda: (self.nbytes(name) or 0) >= n, timeout,
                   f"{name} to hold {n} bytes (has {self.nbytes(name)})")

    def waiters(self, name):
        """Reads, opens and stats parked on the stream, as the daemon counts
        them (user.streamfs.waiters)."""
        v = self.xattr(name, "waiters")
        return int(v) if v is not None else None

    def wait_waiters(self, name, n, timeout=DEADLINE):
        """Wait until exactly @n requests are parked on @name's stream. The
        only proof that a request waits on the stream: a process asleep in
        a FUSE call (wait_in_fuse) may still be in the LOOKUP before its
        open, or its request may not have been read by the daemon yet."""
        wait_until(lambda: self.waiters(name) == n, timeout,
                   f"{n} requests parked on {name} (now {self.waiters(name)})")

    def alive(self):
        if self.proc is not None and self.foreground:
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def signal(self, sig):
        """Send @sig to the daemon (the test's own doing: no crash check)."""
        self.stopped_by_test = True
        os.kill(self.pid, sig)

    def wait_exit(self, timeout=DEADLINE):
        if self.foreground:
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"daemon {self.pid} still running {timeout:g} s later")
        wait_until(lambda: not pid_alive(self.pid), timeout, f"daemon {self.pid} to exit")
        return None

    def teardown(self):
        """Unmount, stop the daemon (SIGTERM, then SIGKILL), check its
        stderr. Returns a list of problems (empty when clean)."""
        if self.torn_down:
            return []
        self.torn_down = True
        problems = []
        if mounted(self.path):
            fusermount_u(self.path)
        if self.pid is not None and self.alive():
            exited = False
            try:
                # After an unmount the daemon exits by itself; give it a moment.
                wait_until(lambda: not self.alive(), 2.0, "daemon exit after unmount")
                exited = True
            except AssertionError:
                pass
            if not exited:
                try:
                    os.kill(self.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    wait_until(lambda: not self.alive(), DEADLINE, "daemon exit after SIGTERM")
                except AssertionError:
                    problems.append(f"daemon {self.pid} ignored unmount and SIGTERM for "
                                    f"{DEADLINE:g} s; SIGKILLed (unclean shutdown)")
                    try:
                        os.kill(self.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if self.foreground and self.proc is not None:
            try:
                self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                problems.append(f"daemon {self.pid} survived SIGKILL")
            rc = self.proc.returncode
            if rc is not None and rc < 0 and -rc in CRASH_SIGNALS:
                problems.append(f"daemon died of signal {signal.Signals(-rc).name}")
        if self.pid is not None:
            if not self.foreground or self.proc.returncode is not None:
                unregister_pid(self.pid)
        if mounted(self.path):
            run(["fusermount3", "-uz", self.path], timeout=DEADLINE)
            if mounted(self.path):
                problems.append(f"{self.path} still mounted after teardown")
        if not mounted(self.path):
            unregister_mount(self.path)
        text = self.stderr_text()
        found = sanitizer_reports(text)
        if found:
            problems.append(f"sanitizer report in daemon stderr ({', '.join(found)})")
        if text:
            tail = text[-4000:]
            print(f"--- streamfs stderr ({self.path}) ---\n{tail}")
        return problems


class MountFactory:
    def __init__(self, binary, tmp_path):
        self.binary = binary
        self.tmp_path = tmp_path
        self.mounts = []
        self.counter = itertools.count()

    def __call__(self, *specs, opts=(), stdin=None, env=None, foreground=True, mountpoint=None,
                 timeout=DEADLINE, preexec_fn=None):
        """Mount: 'streamfs [-f] OPTS MNT SPECS...'. Returns a Mount once the
        mount point is in /proc/self/mountinfo (foreground: polled with a
        deadline, failing with the daemon's stderr if it exits; background:
        the parent must return 0 with the mount already usable).
        @stdin: None (/dev/null), a file object/fd, or subprocess.PIPE.
        @preexec_fn: run in the child before exec (resource limits, ignored
        signals the daemon should start with)."""
        n = next(self.counter)
        mnt = Path(mountpoint) if mountpoint else self.tmp_path / f"mnt{n}"
        mnt.mkdir(parents=True, exist_ok=True)
        errf = self.tmp_path / f"streamfs{n}.stderr"
        argv = [str(self.binary)] + (["-f"] if foreground else []) + [str(o) for o in opts] \
            + [str(mnt)] + [str(s) for s in specs]
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        m = Mount(self.binary, mnt, argv, errf, foreground)
        self.mounts.append(m)
        register_mount(mnt)
        with open(errf, "wb") as err, open(self.tmp_path / f"streamfs{n}.stdout", "wb") as out:
            m.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                                      stdout=out, stderr=err, env=full_env,
                                      start_new_session=True, preexec_fn=preexec_fn)
        if foreground:
            m.pid = m.proc.pid
            register_pid(m.pid)
            try:
                wait_until(lambda: mounted(mnt) or m.proc.poll() is not None, timeout,
                           f"{mnt} to be mounted")
            except AssertionError:
                pytest.fail(f"streamfs did not mount {mnt} within {timeout:g} s: "
                            f"{argv}\nstderr:\n{m.stderr_text()}", pytrace=False)
            if m.proc.poll() is not None:
                pytest.fail(f"streamfs exited with {m.proc.returncode} instead of mounting: "
                            f"{argv}\nstderr:\n{m.stderr_text()}", pytrace=False)
        else:
            try:
                rc = m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"background streamfs did not return within {timeout:g} s: {argv}"
                            f"\nstderr:\n{m.stderr_text()}", pytrace=False)
            if rc != 0:
                pytest.fail(f"background streamfs exited {rc}: {argv}\nstderr:\n{m.stderr_text()}",
                            pytrace=False)
            if not mounted(mnt):
                pytest.fail(f"background streamfs returned 0 but {mnt} is not mounted",
                            pytrace=False)
            m.pid = int(xattr(mnt, "user.streamfs.pid"))
            register_pid(m.pid)
        return m

    def teardown(self):
        problems = []
        for m in reversed(self.mounts):
            try:
                problems += m.teardown()
            except Exception as e:  # keep tearing down the others
                problems.append(f"teardown of {m.path} raised {e!r}")
        return problems


def status_json(streamfs_bin, mnt):
    r = run([streamfs_bin, "status", "--json", mnt], timeout=DEADLINE)
    assert r.returncode == 0, f"streamfs status --json failed ({r.returncode}): {r.stderr}"
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        raise AssertionError(f"streamfs status --json printed invalid JSON ({e}):\n{r.stdout}")


def status_files(doc):
    return {f["name"]: f for f in doc["files"]}
