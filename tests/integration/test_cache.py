"""The store budget: --cache-size, --cache-min-free, eviction of
URL bytes and their refetch, pausing of sources that cannot be refetched,
keep= for endless streams, ENOSPC, status.

The store is measured from outside: the cache directory is a tmpfs of its
own (mounted by the `cache_fs` fixture, unmounted even on failure) and a
thread samples its used blocks while data flows. The budget must hold at
every sample; the check does not depend on the store's layout.
"""
import errno
import hashlib
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from httpserver import TestHTTPServer  # noqa: E402

from helpers import (Background, call, pread_path, q, read_all, run, sha256,  # noqa: E402
                     status_files, status_json, wait_until)

MiB = 1 << 20
PY = "/usr/bin/python3"


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def cache_fs(tmp_path):
    """Factory: cache_fs(size_mib) -> a fresh tmpfs directory of that size."""
    made = []

    def factory(size_mib):
        d = tmp_path / f"cachefs{len(made)}"
        d.mkdir()
        r = run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", d])
        assert r.returncode == 0, r.stderr
        made.append(d)
        return d

    yield factory
    for d in reversed(made):
        # The daemon (torn down before us: fixtures unwind in reverse)
        # held the store files; lazy as a last resort.
        if run(["umount", d]).returncode != 0:
            run(["umount", "-l", d])


class Sampler:
    """Samples the used bytes of a file system in a thread; .max is the
    highest value seen. Use as a context manager around the data flow."""

    def __init__(self, path):
        self.path = str(path)
        self.max = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def used(self):
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _run(self):
        while not self._stop.is_set():
            u = self.used()
            self.max = max(self.max, u)
            self.samples += 1
            self._stop.wait(0.002)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)
        self.max = max(self.max, self.used())
        return False


@pytest.fixture
def srv(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    s = TestHTTPServer(www).start()
    s.www = www
    yield s
    s.stop()


def put(root, name, size):
    blob = os.urandom(size)
    (root / name).write_bytes(blob)
    return blob


def drop_page_cache(path):
    """Drop what the kernel caches of @path (its clean pages)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_sha(path, chunk=MiB):
    """sha256 of the whole file read start to end in @chunk reads."""
    h = hashlib.sha256()
    fd = os.open(str(path), os.O_RDONLY)
    try:
        while True:
            b = os.read(fd, chunk)
            if not b:
                return h.hexdigest()
            h.update(b)
    finally:
        os.close(fd)


def cmd_pid(marker):
    """PIDs of processes whose command line contains @marker."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cl = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cl and "streamfs" not in cl.split(" ")[0]:
            out.append(int(p.name))
    return out


def blocked_writing(pid):
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state == "S" and "pipe" in wchan


# ---------------------------------------------------------------- URLs: eviction

@pytest.mark.timeout(120)
def test_url_several_times_the_budget_read_twice(mount, cache_fs, srv):
    blob = put(srv.www, "big.bin", 48 * MiB)
    cdir = cache_fs(64)
    m = mount(f"big.bin={srv.url('big.bin')}",
              opts=[f"--cache-dir={cdir}", "--cache-size=12M"])
    with Sampler(cdir) as smp:
        assert call(read_sha, m / "big.bin", timeout=60) == sha256(blob)
        first = srv.bytes_sent("/big.bin")
        # The first read left the file in the kernel's page cache (the
        # next read would not reach the daemon): drop it, so the second
        # read needs the evicted bytes again.
        drop_page_cache(m / "big.bin")
        assert call(read_sha, m / "big.bin", timeout=60) == sha256(blob)
        # Random reads of bytes long evicted, and some present.
        for off in (0, 40 * MiB, 5 * MiB + 12345, 47 * MiB):
            assert call(pread_path, m / "big.bin", 100_000, off) == blob[off:off + 100_000]
    assert smp.max <= 12 * MiB, f"store used {smp.max} bytes, budget 12 MiB"
    assert smp.samples > 10
    wait_until(lambda: srv.bytes_sent("/big.bin") >= first + 30 * MiB, 10,
               "the second read to be fetched again")
    assert int(m.xattr("big.bin", "evicted")) > 30 * MiB
    assert m.state("big.bin") == "complete"
    assert int(m.xattr("big.bin", "bytes")) == len(blob)
    assert int(m.xattr("big.bin", "held")) <= 12 * MiB
    root = {k: os.getxattr(m.path, "user.streamfs." + k).decode()
            for k in ("cache_size", "cache_used", "cache_evictions")}
    assert int(root["cache_size"]) == 12 * MiB
    assert int(root["cache_used"]) <= 12 * MiB
    assert int(root["cache_evictions"]) > 30


def test_url_changed_on_the_server_fails_instead_of_mixing(mount, cache_fs, srv):
    """Every GET of etag=change serves another version: a refetch of
    evicted bytes gets a 200 with another validator; the stream fails, no
    byte of the new version is served."""
    put(srv.www, "v.bin", 16 * MiB)
    cdir = cache_fs(32)
    m = mount(f"v.bin={srv.url('v.bin', etag='change')}",
              opts=[f"--cache-dir={cdir}", "--cache-size=4M"])
    first = call(read_all, m / "v.bin", timeout=30)
    assert len(first) == 16 * MiB
    m.wait_state("v.bin", "complete")
    drop_page_cache(m / "v.bin")  # else the kernel answers from the first read
    with pytest.raises(OSError) as ei:
        call(pread_path, m / "v.bin", 4096, 0, timeout=20)
    assert ei.value.errno == errno.EIO
    assert m.state("v.bin") == "failed"
    assert "changed" in m.xattr("v.bin", "error")
    # What is still present reads as the first version.
    tail = call(pread_path, m / "v.bin", 4096, 16 * MiB - 4096)
    assert tail == first[-4096:]


@pytest.mark.timeout(120)
def test_eviction_while_many_readers_wait(mount, cache_fs, srv):
    blob = put(srv.www, "r.bin", 32 * MiB)
    cdir = cache_fs(64)
    m = mount(f"r.bin={srv.url('r.bin', rate=20_000_000)}",
              opts=[f"--cache-dir={cdir}", "--cache-size=8M", "--fill=ondemand"])
    offs = [(i * 7 * MiB // 3 + i * 4099) % (31 * MiB) for i in range(16)]

    def reader(off):
        fd = os.open(str(m / "r.bin"), os.O_RDONLY)
        try:
            return all(os.pread(fd, 256 * 1024, o) == blob[o:o + 256 * 1024]
                       for o in (off, (off + 9 * MiB) % (31 * MiB), off))
        finally:
            os.close(fd)

    with Sampler(cdir) as smp:
        bgs = [Background(reader, o, name=f"reader {o}") for o in offs]
        assert all(b.result(60) for b in bgs)
    assert smp.max <= 8 * MiB


@pytest.mark.timeout(150)
def test_smallest_budget_many_random_readers(mount, cache_fs, srv):
    """--cache-size=2M (two blocks, the least accepted) and a dozen readers
    at random offsets, up to 3 MiB at a time, while the fill runs: every
    read is answered with the right bytes. Each of these stalled for good
    before: a reader marked as holding its room whose first block the
    reservation of its second had evicted; a range fetch paused in front
    of the only reader that had room; the fill counted on to bring a
    reader's bytes while the budget paused it."""
    blob = put(srv.www, "r.bin", 24 * MiB)
    cdir = cache_fs(32)
    m = mount(f"r.bin={srv.url('r.bin')}", opts=[f"--cache-dir={cdir}", "--cache-size=2M"])

    def reader(seed):
        rng = random.Random(seed)
        fd = os.open(str(m / "r.bin"), os.O_RDONLY)
        try:
            for _ in range(40):
                off = rng.randrange(len(blob))
                n = rng.choice([1, 4096, 131072, MiB, rng.randrange(1, 3 * MiB)])
                if os.pread(fd, n, off) != blob[off:off + n]:
                    return f"wrong bytes at {off} (+{n})"
            return "ok"
        finally:
            os.close(fd)

    with Sampler(cdir) as smp:
        bgs = [Background(reader, i, name=f"reader {i}") for i in range(12)]
        assert [b.result(120) for b in bgs] == ["ok"] * 12
    assert smp.max <= 2 * MiB


@pytest.mark.timeout(150)
def test_smallest_budget_rereaders_of_a_complete_stream(mount, cache_fs, srv):
    """A complete stream read again through the page cache by four readers
    at once under --cache-size=2M: the kernel's read-ahead sends requests
    for evicted blocks that straddle two blocks each, more of them than
    the budget has room for; all four finish with the right bytes."""
    blob = put(srv.www, "s.bin", 24 * MiB)
    cdir = cache_fs(32)
    m = mount(f"s.bin={srv.url('s.bin')}", opts=[f"--cache-dir={cdir}", "--cache-size=2M"])
    with Sampler(cdir) as smp:
        assert call(read_sha, m / "s.bin", timeout=60) == sha256(blob)
        m.wait_state("s.bin", "complete")
        drop_page_cache(m / "s.bin")
        bgs = [Background(read_sha, m / "s.bin", 128 * 1024, name=f"re-reader {i}")
               for i in range(4)]
        assert [b.result(120) for b in bgs] == [sha256(blob)] * 4
    assert smp.max <= 2 * MiB


# ---------------------------------------------------------------- commands: back-pressure

def test_command_over_budget_pauses_and_resumes_after_rm(mount, cache_fs, tmp_path,
                                                         streamfs_bin):
    a = tmp_path / "a.dat"
    b = tmp_path / "b-unique-marker.dat"
    da = os.urandom(6 * MiB)
    db = os.urandom(7 * MiB + 1234)
    a.write_bytes(da)
    b.write_bytes(db)
    cdir = cache_fs(32)
    m = mount(f"a=cmd:cat {q(a)}", f"b=cmd:cat {q(b)}",
              opts=[f"--cache-dir={cdir}", "--cache-size=8M"])
    with Sampler(cdir) as smp:
        assert call(read_all, m / "a") == da
        reader = Background(read_all, str(m / "b"), name="reader of b")
        wait_until(lambda: m.xattr("b", "paused") == "cache full", 10, "b to pause")
        assert m.state("b") == "running"
        # The producer is blocked on its full pipe, not finished.
        wait_until(lambda: any(blocked_writing(p) for p in cmd_pid(str(b))), 10,
                   "cat to block writing its pipe")
        assert not reader.done()
        # Present bytes still read at once.
        assert call(pread_path, m / "b", 4096, 0) == db[:4096]
        doc = status_json(streamfs_bin, m.path)
        f = status_files(doc)["b"]
        assert f["paused"] == "cache full" and f["held"] <= 2 * MiB
        table = run([streamfs_bin, "status", m.path]).stdout
        assert "paused" in table.splitlines()[2] or "paused" in table
        r = run([streamfs_bin, "rm", m.path, "a"])
        assert r.returncode == 0, r.stderr
        assert reader.result(20) == db
    assert smp.max <= 8 * MiB
    m.wait_state("b", "complete")
    assert m.xattr("b", "paused") is None


def test_paused_read_is_interruptible(mount, cache_fs, tmp_path):
    cdir = cache_fs(16)
    m = mount("a=cmd:head -c 3M /dev/zero", "b=cmd:head -c 5M /dev/zero",
              opts=[f"--cache-dir={cdir}", "--cache-size=4M"])
    assert len(call(read_all, m / "a")) == 3 * MiB
    p = subprocess.Popen(["cat", str(m / "b")], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: m.xattr("b", "paused") == "cache full", 10, "b to pause")
        p.terminate()
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    assert m.state("b") == "running"


# ---------------------------------------------------------------- keep=

# As fast as it can up to 500 MB, then 2 MiB/s: the test reads near the
# live edge once 500 MB went through, and at full speed (500 MB/s here)
# the 8 MiB kept would move past those reads in a few milliseconds (a
# short read when the kernel's second request of a 1 MiB read found its
# bytes dropped).
GEN = r"""
import sys, time
pad = b"." * 4079 + b"\n"
out = sys.stdout.buffer
i = 0
while True:
    out.write(b"".join(b"%015d\n" % j + pad for j in range(i, i + 256)))
    i += 256
    if i * 4096 >= 500 * 10**6:
        out.flush()
        time.sleep(0.5)
"""


def check_records(data, off):
    """Records are 4096 bytes; record n starts with n in 15 digits."""
    assert off % 4096 == 0 and len(data) % 4096 == 0
    for k in range(0, len(data), 4096):
        assert int(data[k:k + 15]) == (off + k) // 4096, f"wrong bytes at {off + k}"


@pytest.mark.timeout(180)
def test_keep_endless_command_over_500mb(mount, cache_fs, tmp_path):
    gen = tmp_path / "gen.py"
    gen.write_text(GEN)
    cdir = cache_fs(64)
    m = mount(f"live.log=cmd:{PY} {q(gen)}",
              opts=[f"--cache-dir={cdir}", "--cache-size=24M", "--keep=8M", "--start=mount"])
    with Sampler(cdir) as smp:
        wait_until(lambda: (m.nbytes("live.log") or 0) >= 500 * 10**6, 150,
                   "500 MB to flow through the stream")
    assert smp.max <= 24 * MiB
    # 8 MiB kept, rounded to whole blocks, plus the block being filled
    assert smp.max <= 8 * MiB + 3 * MiB, smp.max
    assert m.state("live.log") == "running"
    assert int(m.xattr("live.log", "dropped")) >= 480 * 10**6
    assert int(m.xattr("live.log", "held")) <= 10 * MiB
    # Dropped bytes: an error, never data, never a fake end of file.
    for off in (0, 4096, 100 * MiB):
        with pytest.raises(OSError) as ei:
            call(pread_path, m / "live.log", 4096, off)
        assert ei.value.errno == errno.ENODATA
    # The live edge: the kept bytes read right, and a reader following the
    # edge only waits for new data.
    n = m.nbytes("live.log")
    edge = (n - 4 * MiB) // 4096 * 4096
    fd = os.open(str(m / "live.log"), os.O_RDONLY)
    try:
        for k in range(8):
            data = call(os.pread, fd, MiB, edge + k * MiB, timeout=20)
            assert len(data) == MiB
            check_records(data, edge + k * MiB)
    finally:
        os.close(fd)
    st = os.stat(m / "live.log")
    assert st.st_size >= n


def test_keep_pipe_and_status(mount, cache_fs, fifo):
    f = fifo("feed")
    cdir = cache_fs(16)
    m = mount(f"cam.ts=pipe:{f.path}", opts=[f"--cache-dir={cdir}", "--keep=1M"])
    m.start("cam.ts")
    blob = os.urandom(5 * MiB)
    f.write(blob)
    m.wait_bytes("cam.ts", len(blob))
    assert m.xattr("cam.ts", "keep") == str(MiB)
    with pytest.raises(OSError) as ei:
        call(pread_path, m / "cam.ts", 10, 0)
    assert ei.value.errno == errno.ENODATA
    assert call(pread_path, m / "cam.ts", MiB, 4 * MiB) == blob[4 * MiB:]
    f.close()
    m.wait_state("cam.ts", "complete")
    assert os.stat(m / "cam.ts").st_size == len(blob)
    assert call(pread_path, m / "cam.ts", 10, len(blob)) == b""


def test_keep_http_body_without_length(mount, cache_fs, srv):
    blob = put(srv.www, "radio.mp3", 12 * MiB)
    cdir = cache_fs(16)
    m = mount(f"radio.mp3={srv.url('radio.mp3', nolength=1)}",
              opts=[f"--cache-dir={cdir}", "--keep=2M"])
    with Sampler(cdir) as smp:
        m.start("radio.mp3")
        m.wait_state("radio.mp3", "complete", timeout=30)
    assert smp.max <= 4 * MiB
    assert call(pread_path, m / "radio.mp3", MiB, 11 * MiB) == blob[11 * MiB:]
    with pytest.raises(OSError) as ei:
        call(pread_path, m / "radio.mp3", 10, MiB)
    assert ei.value.errno == errno.ENODATA


# ---------------------------------------------------------------- a full disk

def test_enospc_pauses_and_resumes_when_space_appears(mount, cache_fs, tmp_path):
    cdir = cache_fs(16)
    filler = cdir / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * 9 * MiB)
    src = tmp_path / "src.dat"
    data = os.urandom(12 * MiB)
    src.write_bytes(data)
    m = mount("small=cmd:echo still here", f"big=cmd:cat {q(src)}",
              opts=[f"--cache-dir={cdir}", "--cache-min-free=0"])
    assert call(read_all, m / "small") == b"still here\n"
    reader = Background(read_all, str(m / "big"), name="reader of big")
    wait_until(lambda: m.xattr("big", "paused") == "no space left in the cache directory",
               10, "big to pause on ENOSPC")
    assert m.state("big") == "running", m.xattr("big", "error")
    assert call(read_all, m / "small") == b"still here\n", "other streams undisturbed"
    assert not reader.done()
    filler.unlink()
    assert reader.result(20) == data
    m.wait_state("big", "complete")


def test_min_free_keeps_room_on_the_cache_fs(mount, cache_fs, tmp_path):
    cdir = cache_fs(32)
    src = tmp_path / "src.dat"
    data = os.urandom(20 * MiB)
    src.write_bytes(data)
    m = mount(f"big=cmd:cat {q(src)}", opts=[f"--cache-dir={cdir}", "--cache-min-free=16M"])
    with Sampler(cdir) as smp:
        reader = Background(read_all, str(m / "big"), name="reader")
        wait_until(lambda: m.xattr("big", "paused") == "cache file system low on space",
                   10, "big to pause at min-free")
        assert os.statvfs(cdir).f_bavail * os.statvfs(cdir).f_frsize >= 16 * MiB
        assert not reader.done()
    assert smp.max <= 16 * MiB


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize("args,msg", [
    (["--cache-size=100K"], "at least 2M"),
    (["--cache-size=1M"], "at least 2M"),
    (["--cache-size=lots"], "bad --cache-size value"),
    (["--cache-min-free=101%"], "over 100%"),
    (["--cache-min-free=5x"], "bad --cache-min-free value"),
    (["--keep=0"], "bad --keep value"),
    (["--keep=-5"], "bad --keep value"),
])
def test_bad_cache_values_exit_2(mount_fail, args, msg):
    d = mount_fail.new_mountpoint()
    r = mount_fail(*args, d, "a=cmd:true", check_mountpoint=d)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamfs: ") and msg in lines[0], r.stderr


def test_bad_keep_in_manifest_and_add(mount, mount_fail, tmp_path, streamfs_bin):
    ini = tmp_path / "m.ini"
    ini.write_text("[a]\nsource = cmd:true\nkeep = 0\n")
    d = mount_fail.new_mountpoint()
    r = mount_fail("-c", ini, d, check_mountpoint=d)
    assert r.returncode == 2 and "keep" in r.stderr, r
    m = mount("a=cmd:true")
    r = run([streamfs_bin, "add", m.path, "b=cmd:true", "keep=0"])
    assert r.returncode == 2
    assert r.stderr.startswith("streamfs: ") and "keep" in r.stderr, r.stderr
    assert sorted(os.listdir(m.path)) == ["a"]
    r = run([streamfs_bin, "add", m.path, "b=cmd:yes", "keep=1M"])
    assert r.returncode == 0, r.stderr
    assert m.xattr("b", "keep") == str(MiB)


def test_status_shows_the_budget(mount, cache_fs, streamfs_bin):
    cdir = cache_fs(16)
    m = mount("a=cmd:head -c 3M /dev/zero", opts=[f"--cache-dir={cdir}", "--cache-size=10M"])
    assert len(call(read_all, m / "a")) == 3 * MiB
    doc = status_json(streamfs_bin, m.path)
    assert doc["cache"]["size"] == 10 * MiB
    assert doc["cache"]["used"] == 3 * MiB
    f = status_files(doc)["a"]
    assert f["held"] == 3 * MiB and f["paused"] is None
    out = run([streamfs_bin, "status", m.path]).stdout
    assert "HELD" in out.splitlines()[0]
    assert "cache: 3145728 of 10485760 bytes used" in out
