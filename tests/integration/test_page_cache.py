"""
The second read of a complete stream comes from the kernel's page cache
(README "Performance").

A file is opened direct_io while its stream runs, which leaves nothing in
the page cache by itself; streamfs notes what such a reader is sent and,
once the stream is complete and the file closed, stores those pages in the
page cache from a thread of its own; every open keeps the cache. So once a
stream has been read through and is complete, the next open is served by
the kernel alone. Checked from outside with mincore(2) on a mapping of the
file, which reports the file's pages that are in the page cache (without
faulting them in): after one read, all of them are; and what is read back
is the source's bytes, also where a read began or ended inside a page.
The pages are stored in the background, so the checks wait (with a
deadline) for them.

Where the kernel reads complete streams straight from the store (FUSE
passthrough: root on Linux 6.9 and later; test_passthrough.py), the push is
not needed and not done; these tests turn passthrough off
(STREAMFS_PASSTHROUGH=off), as it is for other users, older kernels, and
under a --cache-size budget.

A page that was cached does not always stay cached: on the machines this
runs on, the host's proactive reclaim takes cached pages of FUSE files
(those the kernel read ahead itself too) in groups of 2 to 8 pages, a
second or so after they were stored, with no request from streamfs. So
"every page cached" is checked as "every page seen cached at some check":
a page that was never stored is never seen, and that is what the checks
are for.
"""
import ctypes
import ctypes.util
import errno
import mmap
import os
import subprocess

import pytest

from helpers import gated_cmd, put, wait_until

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


@pytest.fixture
def mount(mount):
    """The push is what these tests check: passthrough off (see above)."""
    def without_passthrough(*specs, env=None, **kw):
        return mount(*specs, env={"STREAMFS_PASSTHROUGH": "off", **(env or {})}, **kw)
    return without_passthrough


def resident_pages(path):
    """Which pages of @path are in the page cache: a list of booleans."""
    size = os.stat(path).st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            n = (size + PAGE - 1) // PAGE
            vec = ctypes.create_string_buffer(n)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return [bool(b & 1) for b in vec.raw[:n]]
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


SYS_cachestat = 451  # the same number on every architecture (Linux 6.5)


def resident_pages_open(path):
    """resident_pages() for a file whose stream still runs: a mapping of a
    direct_io open would drop its cached pages (the kernel invalidates them
    at mmap), so this asks cachestat(2) page by page through a plain open."""
    size = os.stat(path).st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        out = []
        st = _Cachestat()
        for i in range((size + PAGE - 1) // PAGE):
            rng = _CachestatRange(i * PAGE, PAGE)
            if _libc.syscall(SYS_cachestat, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
                e = ctypes.get_errno()
                if e == errno.ENOSYS:
                    pytest.skip("this kernel has no cachestat(2) (Linux >= 6.5)")
                raise OSError(e, "cachestat")
            out.append(st.nr_cache > 0)
        return out
    finally:
        os.close(fd)


def wait_seen_cached(path, pages, what, resident=resident_pages):
    """Wait until each of the pages numbered in @pages has been seen in the
    page cache at some check (the module docstring says why not all at
    once); the AssertionError names those never seen."""
    seen = set()
    left = set(pages)

    def done():
        r = resident(path)
        seen.update(i for i in left if i < len(r) and r[i])
        left.difference_update(seen)
        return not left
    try:
        wait_until(done, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; never seen cached: {sorted(left)[:20]} "
                             f"({len(left)} pages)") from None


def read_file(path, bufsize=MiB):
    out = bytearray()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(bufsize)
            if not b:
                return bytes(out)
            out += b


def test_url_read_once_is_then_in_the_page_cache(srv, www, mount):
    blob = put(www, "f", 8 * MiB + 123)  # the last page is a partial one
    m = mount("a.bin=" + srv.url("f"))
    p = m / "a.bin"
    assert read_file(p) == blob  # opened while running: direct_io
    m.wait_state("a.bin", {"complete"})

    wait_seen_cached(p, range(len(resident_pages(p))), "every page to be cached")
    assert read_file(p) == blob
    assert len(srv.requests("/f", method="GET")) == 1


def test_known_length_is_cached_while_it_arrives(srv, www, mount):
    """A stream of announced length is pushed as it goes: what a reader was
    sent is in the page cache while the rest has not come yet (the server
    stalls), so a second read right after the first finds it there."""
    blob = put(www, "f", 6 * MiB)
    m = mount("a.bin=" + srv.url("f", stall_after=3 * MiB, stall_secs=3600),
              opts=["--stall-timeout=300"])
    p = m / "a.bin"
    with open(p, "rb", buffering=0) as f:
        assert f.read(3 * MiB) == blob[:3 * MiB]  # direct_io: nothing cached by the read
    wait_seen_cached(p, range(3 * MiB // PAGE), "the pages read to be cached",
                     resident=resident_pages_open)
    assert m.state("a.bin") == "running"  # the server still stalls


def test_nothing_read_nothing_cached(srv, www, mount):
    """The check above can fail: pages are cached because they were read."""
    put(www, "f", 4 * MiB)
    m = mount("a.bin=" + srv.url("f"))
    p = m / "a.bin"
    with open(p, "rb", buffering=0) as f:
        assert len(f.read(5000)) == 5000  # starts the stream; two pages read
    m.wait_state("a.bin", {"complete"})
    wait_seen_cached(p, [0, 1], "the pages read to be cached")
    pages = resident_pages(p)
    assert sum(pages) < len(pages) // 2


def test_command_of_unknown_length(tmp_path, mount, fifo):
    """A command's bytes, read while it runs and again once it ended: the
    whole pages before the end come from the cache, and every byte is
    right, including the last, partial page."""
    blob = os.urandom(3 * MiB + 777)
    src = tmp_path / "src"
    src.write_bytes(blob)
    gate = fifo("gate")
    m = mount("c=" + gated_cmd(src, MiB, gate))  # the first MiB, the gate, the rest
    p = m / "c"
    with open(p, "rb", buffering=0) as f:
        first = f.read(MiB)
        assert first == blob[:MiB]
        gate.close()  # let the command go on
        rest = bytearray()
        while True:
            b = f.read(MiB)
            if not b:
                break
            rest += b
    assert first + rest == blob
    m.wait_state("c", {"complete"})
    whole = len(blob) // PAGE
    wait_seen_cached(p, range(whole), "the whole pages to be cached")
    assert read_file(p) == blob
    # A tool reading through the cache (sendfile) copies every byte too.
    out = tmp_path / "copy"
    subprocess.run(["cp", str(p), str(out)], check=True, timeout=60)
    assert out.read_bytes() == blob


def test_partial_reads_and_a_late_open(srv, www, mount):
    """Pages pushed for scattered direct_io reads are right, and a complete
    file reopened reads the same bytes whether cached or not."""
    blob = put(www, "f", 5 * MiB + 1)
    m = mount("a.bin=" + srv.url("f"))
    p = m / "a.bin"
    fd = os.open(p, os.O_RDONLY)
    try:
        for off, n in [(3, 5000), (MiB + 17, 70000), (4 * MiB, MiB + 1), (2 * MiB, 4096)]:
            assert os.pread(fd, n, off) == blob[off:off + n]
    finally:
        os.close(fd)
    wait_until(lambda: m.state("a.bin") == "complete", what="the stream to complete")
    assert read_file(p, bufsize=12345) == blob
    assert read_file(p) == blob


def test_read_ahead_raised(mount):
    """Page-cache reads reach the daemon as the mount's read-ahead asks:
    streamfs raises it from the kernel's 128 KiB to 4 MiB (four 1 MiB
    requests in flight) once INIT is done (root only: the bdi's sysfs
    file)."""
    if os.geteuid() != 0:
        pytest.skip("only root can write /sys/class/bdi/*/read_ahead_kb")
    m = mount("a=cmd:echo hi")
    os.listdir(m.path)  # a request after INIT
    dev = os.stat(m.path).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    with open(path) as f:
        assert f.read().strip() == "4096"


def test_read_ahead_under_a_budget(mount):
    """Under --cache-size too (four requests in flight per reader once
    stalled a small budget: test_cache.py's smallest-budget tests)."""
    if os.geteuid() != 0:
        pytest.skip("only root can write /sys/class/bdi/*/read_ahead_kb")
    m = mount("a=cmd:echo hi", opts=["--cache-size=64M"])
    os.listdir(m.path)  # a request after INIT
    dev = os.stat(m.path).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    with open(path) as f:
        assert f.read().strip() == "4096"
