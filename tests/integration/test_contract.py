"""
The stream contract (S1-S7 of docs/DESIGN.md) seen through the mounted
file system, for command, FIFO and stdin sources.

Streams fed from a Fifo let each test decide exactly how many bytes have
arrived: the test writes N bytes, waits until user.streamfs.bytes says N,
and only then checks what reads do.
"""
import errno
import os
import random
import stat
import subprocess

import pytest

from helpers import (DEADLINE, Background, assert_blocked, call, make_data, pread_path, q,
                     read_all, sha256, wait_blocked_in_read)


def open_fd(path):
    """os.open with a deadline (open waits for a stream's first bytes)."""
    return call(os.open, str(path), os.O_RDONLY, what=f"open {path}")


# ---------------------------------------------------------------- whole files

@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65537, 3 * 1024 * 1024 + 17])
def test_cmd_whole_file(mount, tmp_path, size):
    data = make_data(tmp_path / "data", size)
    m = mount(f"f.bin=cmd:cat {q(tmp_path / 'data')}")
    got = call(read_all, m / "f.bin", timeout=30)
    assert sha256(got) == sha256(data) and len(got) == size
    m.wait_state("f.bin", "complete")
    assert os.stat(m / "f.bin").st_size == size
    assert m.xattr("f.bin", "size") == str(size)
    assert m.xattr("f.bin", "bytes") == str(size)


def test_pipe_whole_file_fed_while_reading(mount, tmp_path, fifo):
    data = os.urandom(2 * 1024 * 1024 + 333)
    f = fifo()
    m = mount(f"p.bin=pipe:{f.path}")
    reader = Background(read_all, m / "p.bin")

    def feed():
        for i in range(0, len(data), 100_000):
            f.write(data[i:i + 100_000])
        f.close()

    call(feed, timeout=30)
    got = reader.result(30)
    assert sha256(got) == sha256(data)
    m.wait_state("p.bin", "complete")
    assert os.stat(m / "p.bin").st_size == len(data)
    assert m.xattr("p.bin", "kind") == "pipe"


def test_pipe_regular_file_source(mount, tmp_path):
    """pipe:PATH reads any file sequentially, not only FIFOs."""
    data = make_data(tmp_path / "plain", 300_000)
    m = mount(f"r.bin=pipe:{tmp_path / 'plain'}")
    assert sha256(call(read_all, m / "r.bin", timeout=30)) == sha256(data)


def test_stdin_whole_file(mount, tmp_path):
    data = make_data(tmp_path / "data", 1024 * 1024 + 5)
    with open(tmp_path / "data", "rb") as src:
        m = mount("in.bin=-", stdin=src)
    assert sha256(call(read_all, m / "in.bin", timeout=30)) == sha256(data)
    m.wait_state("in.bin", "complete")
    assert m.xattr("in.bin", "kind") == "stdin"
    assert m.xattr("in.bin", "source") == "-"


def test_stdin_from_a_producer_pipe(mount, tmp_path):
    """producer | streamfs -f MNT data.bin=-"""
    data = make_data(tmp_path / "data", 777_777)
    producer = subprocess.Popen(["sh", "-c", f"cat {q(tmp_path / 'data')}"],
                                stdout=subprocess.PIPE)
    try:
        m = mount("data.bin=-", stdin=producer.stdout)
        producer.stdout.close()
        assert sha256(call(read_all, m / "data.bin", timeout=30)) == sha256(data)
    finally:
        producer.wait(DEADLINE)


# ---------------------------------------------------------- offsets and seeks

def test_pread_at_offsets_of_a_complete_stream(mount, tmp_path):
    size = 2 * 1024 * 1024 + 1234
    data = make_data(tmp_path / "data", size)
    m = mount(f"f.bin=cmd:cat {q(tmp_path / 'data')}")
    fd = open_fd(m / "f.bin")
    try:
        rnd = random.Random(7)
        cases = [(0, 1), (1, 4096), (4095, 2), (4096, 4096), (65535, 70000), (131079, 1 << 20),
                 (size - 1, 1), (size - 10, 100), (size - 1, 1 << 20)]
        cases += [(rnd.randrange(size), rnd.randrange(1, 300_000)) for _ in range(40)]
        for off, n in cases:
            got = call(os.pread, fd, n, off, what=f"pread({n}, {off})")
            assert got == data[off:off + n], f"pread({n}, {off})"
    finally:
        os.close(fd)


def test_pread_backwards_and_random_while_running(mount, fifo):
    """Present data is served in any order while the stream still runs."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(500_000)
    m.start("s.bin")
    f.write(data[:400_000])
    m.wait_bytes("s.bin", 400_000)
    fd = open_fd(m / "s.bin")
    try:
        for off in (399_000, 300_000, 0, 123_457, 250_000, 1):
            assert call(os.pread, fd, 1000, off) == data[off:off + 1000]
        assert m.state("s.bin") == "running"
    finally:
        os.close(fd)
    f.write(data[400_000:])
    f.close()
    assert call(read_all, m / "s.bin", timeout=30) == data


def test_seek_end_waits_for_the_end(mount, fifo):
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(300_001)
    m.start("s.bin")
    f.write(data[:1000])
    fd = open_fd(m / "s.bin")
    try:
        seek = Background(os.lseek, fd, 0, os.SEEK_END)
        assert_blocked(seek, what="lseek(SEEK_END) on a running stream")
        f.write(data[1000:])
        assert_blocked(seek, what="lseek(SEEK_END) before the end")
        f.close()
        assert seek.result() == len(data)
        # and the file is an ordinary one now
        assert os.lseek(fd, -10, os.SEEK_END) == len(data) - 10
        assert call(os.read, fd, 100) == data[-10:]
    finally:
        os.close(fd)


# ----------------------------------------------------------- waits (S2, S3)

def test_present_data_served_while_producer_stalls(mount, fifo):
    """S2: a read whose range is present returns at once, whatever the
    producer does (it is stalled here)."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(100_000)
    m.start("s.bin")
    f.write(data)
    m.wait_bytes("s.bin", len(data))
    fd = open_fd(m / "s.bin")
    try:
        for off, n in [(0, 100_000), (0, 1), (99_999, 1), (50_000, 50_000), (4096, 8192)]:
            assert call(os.pread, fd, n, off, timeout=5, what=f"present pread({n},{off})") \
                == data[off:off + n]
        assert m.state("s.bin") == "running"
    finally:
        os.close(fd)
    f.close()


def test_read_spanning_the_frontier_waits_for_all_of_it(mount, fifo):
    """S3: a read that is partly present waits, then returns the full count."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(40_000)
    m.start("s.bin")
    f.write(data[:10_000])
    m.wait_bytes("s.bin", 10_000)
    fd = open_fd(m / "s.bin")
    try:
        span = Background(os.pread, fd, 5000, 8000)        # needs up to 13000
        beyond = Background(os.pread, fd, 100, 30_000)     # wholly ahead
        assert_blocked(span, what="pread spanning the frontier")
        assert_blocked(beyond, what="pread ahead of the frontier")
        f.write(data[10_000:12_000])                       # not enough yet
        m.wait_bytes("s.bin", 12_000)
        assert_blocked(span, what="pread spanning the frontier with part of the rest present")
        f.write(data[12_000:13_000])
        assert span.result() == data[8000:13_000]
        assert_blocked(beyond, what="pread ahead of the frontier")
        f.write(data[13_000:])
        assert beyond.result() == data[30_000:30_100]
    finally:
        f.close()
        os.close(fd)


def test_zero_at_and_after_the_end(mount, tmp_path):
    data = make_data(tmp_path / "data", 10_000)
    m = mount(f"f.bin=cmd:cat {q(tmp_path / 'data')}")
    assert call(read_all, m / "f.bin") == data
    fd = open_fd(m / "f.bin")
    try:
        assert call(os.pread, fd, 100, 10_000) == b""
        assert call(os.pread, fd, 100, 10_001) == b""
        assert call(os.pread, fd, 100, 1 << 40) == b""
        assert call(os.pread, fd, 100, 9_950) == data[9_950:]
    finally:
        os.close(fd)


def test_waiting_reads_at_the_end_get_short_count_then_zero(mount, fifo):
    """Readers parked past the frontier learn the end exactly: a read
    spanning the end gets the rest, a read past it gets 0 (not an error)."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(5000)
    m.start("s.bin")
    f.write(data[:1000])
    fd = open_fd(m / "s.bin")
    try:
        spanning = Background(os.pread, fd, 10_000, 4000)
        past = Background(os.pread, fd, 100, 20_000)
        at = Background(os.pread, fd, 100, 5000)
        wait_blocked_in_read(threads=[spanning, past, at])
        f.write(data[1000:])
        f.close()
        assert spanning.result() == data[4000:]
        assert past.result() == b""
        assert at.result() == b""
        m.wait_state("s.bin", "complete")
    finally:
        os.close(fd)


# ---------------------------------------------------------------- sizes

def test_stat_waits_for_first_bytes_then_grows_never_decreasing(mount, fifo):
    """size=auto: stat waits for the first bytes, then shows the bytes so far
    (never 0 for a stream with bytes, never decreasing), then the exact end."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    st = Background(os.stat, m / "s.bin")
    assert_blocked(st, what="stat of a stream with no bytes yet")
    f.write(b"x")
    assert st.result().st_size == 1
    total, last = 1, 1
    for chunk in (10, 4096, 100_000, 1, 65536):
        f.write(b"y" * chunk)
        total += chunk
        m.wait_bytes("s.bin", total)
        size = call(os.stat, m / "s.bin").st_size
        assert size >= last, "st_size decreased"
        assert size == total, "size=auto shows the bytes so far"
        last = size
    f.close()
    m.wait_state("s.bin", "complete")
    assert call(os.stat, m / "s.bin").st_size == total
    assert m.xattr("s.bin", "size") == str(total)


def test_size_unknown_while_running(mount, fifo):
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    m.start("s.bin")
    f.write(b"a" * 100)
    m.wait_bytes("s.bin", 100)
    assert m.xattr("s.bin", "size") is None  # ENODATA while unknown
    f.close()
    m.wait_state("s.bin", "complete")
    assert m.xattr("s.bin", "size") == "100"


def test_size_wait_makes_stat_wait_for_the_end(mount, fifo):
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}", opts=["--size=wait"])
    data = os.urandom(200_000)
    m.start("s.bin")
    f.write(data[:50_000])
    m.wait_bytes("s.bin", 50_000)
    st = Background(os.stat, m / "s.bin")
    fd = open_fd(m / "s.bin")  # open itself does not wait for the end
    try:
        fst = Background(os.fstat, fd)
        assert_blocked(st, what="stat with --size=wait before the end")
        assert_blocked(fst, what="fstat with --size=wait before the end")
        # present data is still readable meanwhile
        assert call(os.pread, fd, 1000, 0) == data[:1000]
        f.write(data[50_000:])
        f.close()
        assert st.result().st_size == len(data)
        assert fst.result().st_size == len(data)
    finally:
        os.close(fd)


def test_declared_size_shown_at_once(mount, fifo):
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}", opts=["--size=100000"])
    data = os.urandom(100_000)
    m.start("s.bin")
    f.write(data[:1000])
    m.wait_bytes("s.bin", 1000)
    assert call(os.stat, m / "s.bin", timeout=5).st_size == 100_000
    assert m.xattr("s.bin", "size") == "100000"
    assert m.state("s.bin") == "running"
    f.write(data[1000:])
    f.close()
    assert call(read_all, m / "s.bin") == data
    m.wait_state("s.bin", "complete")


def test_declared_size_with_suffix(mount, tmp_path):
    data = make_data(tmp_path / "data", 2048)
    m = mount(f"s.bin=cmd:cat {q(tmp_path / 'data')}", opts=["--size=2K"])
    assert call(os.stat, m / "s.bin").st_size == 2048
    assert call(read_all, m / "s.bin") == data
    m.wait_state("s.bin", "complete")


def test_declared_size_shorter_stream_fails_at_the_cut(mount, tmp_path):
    """S5: a stream shorter than its declared size fails where it stopped."""
    data = make_data(tmp_path / "data", 6000)
    m = mount(f"s.bin=cmd:cat {q(tmp_path / 'data')}", opts=["--size=10000"])
    call(os.stat, m / "s.bin")  # starts it
    m.wait_state("s.bin", "failed")
    assert m.xattr("s.bin", "error_offset") == "6000"
    assert m.xattr("s.bin", "error")
    fd = open_fd(m / "s.bin")
    try:
        assert call(os.pread, fd, 6000, 0) == data
        assert call(os.pread, fd, 100, 5990) == data[5990:]
        with pytest.raises(OSError) as e:
            call(os.pread, fd, 100, 6000)
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            call(os.pread, fd, 1, 9999)
        assert e.value.errno == errno.EIO
    finally:
        os.close(fd)


def test_read_partial_returns_what_is_there(mount, fifo):
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}", opts=["--read=partial"])
    data = os.urandom(3000)
    m.start("s.bin")
    f.write(data[:1000])
    m.wait_bytes("s.bin", 1000)
    fd = open_fd(m / "s.bin")
    try:
        assert call(os.pread, fd, 5000, 0, timeout=5) == data[:1000]
        assert call(os.pread, fd, 5000, 500, timeout=5) == data[500:1000]
        nxt = Background(os.pread, fd, 5000, 1000)
        assert_blocked(nxt, what="partial read with no byte present")
        f.write(data[1000:1010])
        got = nxt.result()
        assert 1 <= len(got) <= 10 and got == data[1000:1000 + len(got)]
        f.write(data[1010:])
        f.close()
        m.wait_state("s.bin", "complete")
        assert call(os.pread, fd, 5000, 0) == data
    finally:
        os.close(fd)


# ------------------------------------------------------- many readers (S7)

def test_many_handles_one_fill(mount, tmp_path, fifo):
    """S7: concurrent readers at different offsets share one run of the
    command."""
    f = fifo()
    counter = tmp_path / "runs"
    m = mount(f"s.bin=cmd:echo run >> {q(counter)}; {f.cat}")
    data = os.urandom(1_000_000)
    readers = [Background(pread_path, m / "s.bin", 50_000, off)
               for off in (0, 100_000, 333_333, 900_000, 950_000)]
    whole = [Background(read_all, m / "s.bin") for _ in range(3)]
    for i in range(0, len(data), 65536):
        f.write(data[i:i + 65536])
    f.close()
    for r, off in zip(readers, (0, 100_000, 333_333, 900_000, 950_000)):
        assert r.result(30) == data[off:off + 50_000]
    for w in whole:
        assert sha256(w.result(30)) == sha256(data)
    assert call(read_all, m / "s.bin") == data
    assert counter.read_text() == "run\n", "the command ran more than once"


def test_file_attributes(mount, tmp_path):
    data = make_data(tmp_path / "data", 5000)
    m = mount(f"f.bin=cmd:cat {q(tmp_path / 'data')}")
    assert call(read_all, m / "f.bin") == data
    st = call(os.stat, m / "f.bin")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_blocks == -(-st.st_size // 512)
    root = os.stat(m.path)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o555


def test_one_big_read_while_the_stream_arrives(mount, fifo):
    """A single 5 MiB pread (split by the kernel into several requests)
    returns all 5 MiB, in order, though it arrives in pieces."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(6 * 1024 * 1024)
    m.start("s.bin")
    f.write(data[:100_000])
    fd = open_fd(m / "s.bin")
    try:
        big = Background(os.pread, fd, 5 * 1024 * 1024, 12345)
        for i in range(100_000, len(data), 256 * 1024):
            f.write(data[i:i + 256 * 1024], timeout=30)
        f.close()
        got = big.result(30)
        assert len(got) == 5 * 1024 * 1024 and got == data[12345:12345 + 5 * 1024 * 1024]
    finally:
        os.close(fd)


def test_mmap_of_a_complete_stream(mount, tmp_path):
    import mmap
    data = make_data(tmp_path / "data", 300_000)
    m = mount(f"f.bin=cmd:cat {q(tmp_path / 'data')}")
    assert call(read_all, m / "f.bin") == data
    m.wait_state("f.bin", "complete")
    fd = open_fd(m / "f.bin")
    try:
        for access in (mmap.ACCESS_READ, mmap.ACCESS_COPY):
            mm = call(lambda: mmap.mmap(fd, 0, access=access))
            try:
                assert len(mm) == len(data)
                assert mm[:4096] == data[:4096] and mm[-100:] == data[-100:]
            finally:
                mm.close()
    finally:
        os.close(fd)


def test_statfs_and_access(mount, tmp_path):
    data = make_data(tmp_path / "data", 1000)
    m = mount(f"f.bin=cmd:cat {q(tmp_path / 'data')}")
    assert call(read_all, m / "f.bin") == data
    call(os.statvfs, m.path)
    assert call(os.access, m / "f.bin", os.R_OK)
    assert not call(os.access, m / "f.bin", os.W_OK)
    assert call(os.access, m.path, os.R_OK | os.X_OK)
    assert not call(os.access, m.path, os.W_OK)


@pytest.mark.parametrize("store", ["default", "dir", "memory"])
def test_store_kinds(mount, tmp_path, fifo, store):
    """--cache-dir DIR keeps bytes in unlinked files there (nothing visible
    in DIR), --cache-dir=memory in RAM; the data is the same."""
    cache = tmp_path / "cache"
    cache.mkdir()
    opts = {"default": [], "dir": [f"--cache-dir={cache}"], "memory": ["--cache-dir=memory"]}
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}", opts=opts[store])
    data = os.urandom(3 * 1024 * 1024)
    m.start("s.bin")
    f.write(data[:1024 * 1024])
    m.wait_bytes("s.bin", 1024 * 1024)
    assert os.listdir(cache) == []
    f.write(data[1024 * 1024:], timeout=30)
    f.close()
    assert sha256(call(read_all, m / "s.bin", timeout=30)) == sha256(data)
    assert os.listdir(cache) == []
