"""
A complete stream whose bytes are all in the store is read by the kernel
straight from the store's file (FUSE passthrough, Linux 6.9 and later, and
only for root: README "Performance"). Such a read never reaches the daemon,
which these tests show by stopping the daemon (SIGSTOP) while a file opened
before reads: a read served by the daemon would wait until the deadline.

Where passthrough is not used, the page-cache push serves the second read
instead (test_page_cache.py, which turns passthrough off to test it).
"""
import hashlib
import mmap
import os
import signal
import subprocess
import threading

import pytest

from helpers import gated_cmd, put, q, read_all, source_file, wait_until

MiB = 1 << 20


def _kernel_has_passthrough():
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 9)


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not _kernel_has_passthrough(),
    reason="FUSE passthrough needs root and Linux >= 6.9")


def root_attr(m, key):
    return os.getxattr(m.path, "user.streamfs." + key).decode()


def file_attr(path, key):
    try:
        return os.getxattr(path, "user.streamfs." + key).decode()
    except OSError:
        return None


def sha_of_fd_with_daemon_stopped(m, fd, timeout=30):
    """sha256 of what a child reads from @fd (already open, read from the
    start) while the daemon is stopped: only reads that do not need the
    daemon can finish."""
    os.lseek(fd, 0, os.SEEK_SET)
    # The reader's fstat() is a GETATTR unless the kernel's attributes are
    # fresh: those of a complete stream stay so for an hour.
    os.fstat(fd)
    os.kill(m.pid, signal.SIGSTOP)
    try:
        r = subprocess.run(["sha256sum"], stdin=fd, capture_output=True, timeout=timeout)
    finally:
        os.kill(m.pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[0].decode()


def read_through_the_daemon(p, blob):
    """An open of @p that does not read from the store, and its bytes."""
    fd = os.open(p, os.O_RDONLY)
    try:
        assert file_attr(p, "passthrough") is None
        assert os.pread(fd, len(blob), 0) == blob
    finally:
        os.close(fd)


def complete_cmd_stream(tmp_path, mount, size, opts=(), env=None):
    blob, src = source_file(tmp_path, size)
    m = mount(f"f=cmd:cat {q(src)}", opts=list(opts), env=env)
    assert read_all(m / "f") == blob  # the first read: direct_io, through the daemon
    m.wait_state("f", {"complete"})
    return m, blob


def test_complete_stream_is_read_from_the_store(tmp_path, mount):
    m, blob = complete_cmd_stream(tmp_path, mount, 8 * MiB + 123)
    assert root_attr(m, "passthrough") == "on"
    p = m / "f"
    assert file_attr(p, "passthrough") is None  # nothing open
    fd = os.open(p, os.O_RDONLY)
    try:
        assert file_attr(p, "passthrough") == "1"
        assert sha_of_fd_with_daemon_stopped(m, fd) == hashlib.sha256(blob).hexdigest()
        # A mapping reads the store's file too, to the last partial page.
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mp:
            assert len(mp) == len(blob)
            assert mp[:] == blob
        assert os.pread(fd, 1000, len(blob) - 10) == blob[-10:]
        assert os.pread(fd, 10, len(blob)) == b""
    finally:
        os.close(fd)
    wait_until(lambda: file_attr(p, "passthrough") is None, what="the release to be counted")


def test_every_open_of_the_node_is_passthrough_while_one_is(tmp_path, mount):
    """The kernel refuses to mix passthrough and page-cache opens of one
    inode: a second open while the first is held is passthrough too, with
    the same backing file, and both read the right bytes."""
    m, blob = complete_cmd_stream(tmp_path, mount, 3 * MiB + 5)
    p = m / "f"
    a = os.open(p, os.O_RDONLY)
    try:
        b = os.open(p, os.O_RDONLY)
        try:
            assert file_attr(p, "passthrough") == "2"
            assert os.pread(b, 4096, MiB) == blob[MiB:MiB + 4096]
            assert os.pread(a, len(blob), 0) == blob
        finally:
            os.close(b)
        # close() returns before the daemon has the RELEASE: wait for it.
        wait_until(lambda: file_attr(p, "passthrough") == "1", 10,
                   "the second file's release to be counted")
        assert file_attr(p, "passthrough") == "1"
    finally:
        os.close(a)
    # Closed and opened again (the registration is kept for the node).
    assert read_all(p) == blob


def test_not_while_a_file_opened_during_the_run_is_open(tmp_path, mount, fifo):
    """The kernel refuses a direct_io open, and a mapping of a direct_io
    file, while a file of the inode is open for passthrough; an open
    decided while the stream ran can reach the kernel after one decided
    once it completed. So while a file opened during the run is open,
    later opens go through the page cache; once it is closed, they read
    from the store again."""
    blob, src = source_file(tmp_path, 2 * MiB + 3)
    gate = fifo("gate")
    m = mount("f=" + gated_cmd(src, MiB, gate))
    p = m / "f"
    early = os.open(p, os.O_RDONLY)  # direct_io: the stream runs
    try:
        assert os.pread(early, 10, 0) == blob[:10]
        gate.close()
        m.wait_state("f", {"complete"})
        late = os.open(p, os.O_RDONLY)
        try:
            assert file_attr(p, "passthrough") is None
            assert os.pread(late, len(blob), 0) == blob
            # The early file can still be mapped (privately: direct_io).
            with mmap.mmap(early, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mp:
                assert mp[:] == blob
        finally:
            os.close(late)
    finally:
        os.close(early)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert file_attr(p, "passthrough") == "1"
        assert os.pread(fd, len(blob), 0) == blob
    finally:
        os.close(fd)


def test_url_stream_and_memory_store(srv, www, mount):
    blob = put(www, "f", 5 * MiB + 77)
    m = mount("a.bin=" + srv.url("f"), opts=["--cache-dir=memory"])
    p = m / "a.bin"
    assert read_all(p) == blob
    m.wait_state("a.bin", {"complete"})
    fd = os.open(p, os.O_RDONLY)
    try:
        assert file_attr(p, "passthrough") == "1"
        assert sha_of_fd_with_daemon_stopped(m, fd) == hashlib.sha256(blob).hexdigest()
    finally:
        os.close(fd)
    assert len(srv.requests("/f", method="GET")) == 1


def test_removed_while_open_reads_on(tmp_path, mount, streamfs_bin):
    """rm while a passthrough file is open: it reads on; once it is closed
    the node goes, and its backing file is let go of at the next open of
    another file (which must work as before)."""
    m, blob = complete_cmd_stream(tmp_path, mount, 2 * MiB)
    p = m / "f"
    fd = os.open(p, os.O_RDONLY)
    try:
        subprocess.run([str(streamfs_bin), "rm", str(m.path), "f"], check=True, timeout=60)
        assert not p.exists()
        assert os.pread(fd, len(blob) + 1, 0) == blob
    finally:
        os.close(fd)
    subprocess.run([str(streamfs_bin), "add", str(m.path), "g=cmd:echo again"], check=True,
                   timeout=60)
    for _ in range(2):  # the second open is passthrough, after the first read
        assert read_all(m / "g") == b"again\n"
        m.wait_state("g", {"complete"})


def test_incomplete_and_failed_streams_are_not(mount, fifo):
    """Only complete streams: a running one is read through the daemon (a
    read past what arrived waits), and a failed one keeps its error at the
    exact byte, for a file opened before the failure and one after."""
    gate = fifo("gate")
    m = mount(f"r=cmd:head -c 100000 /dev/zero; {gate.gate}",
              "e=cmd:head -c 70000 /dev/zero; exit 3")
    r = m / "r"
    m.start("r")
    m.wait_bytes("r", 100000)
    fd = os.open(r, os.O_RDONLY)
    try:
        assert file_attr(r, "passthrough") is None
        assert len(os.pread(fd, 4096, 0)) == 4096
    finally:
        os.close(fd)
    gate.close()
    e = m / "e"
    before = os.open(e, os.O_RDONLY)
    try:
        m.wait_state("e", {"failed"})
        after = os.open(e, os.O_RDONLY)
        try:
            assert file_attr(e, "passthrough") is None
            for fd in (before, after):
                assert os.pread(fd, 70000, 0) == bytes(70000)
                with pytest.raises(OSError):
                    os.pread(fd, 1, 70000)
        finally:
            os.close(after)
    finally:
        os.close(before)


def test_not_under_a_size_budget(tmp_path, mount):
    """Under --cache-size a complete stream may lose blocks to eviction,
    and holding it whole would keep other streams from room: read through
    the daemon there, as before."""
    m, blob = complete_cmd_stream(tmp_path, mount, 3 * MiB, opts=["--cache-size=64M"])
    read_through_the_daemon(m / "f", blob)


def test_turned_off_by_the_environment(tmp_path, mount):
    m, blob = complete_cmd_stream(tmp_path, mount, MiB, env={"STREAMFS_PASSTHROUGH": "off"})
    assert root_attr(m, "passthrough") == "off"
    read_through_the_daemon(m / "f", blob)


def test_opens_across_the_end_of_the_stream(tmp_path, mount, fifo):
    """Threads open, read and close the file while the stream runs and
    after it ended (and map it once complete): opens before the end are
    direct_io, and one of them may reach the kernel after an open decided
    once the stream completed, which the kernel refuses if that one is
    passthrough (an EIO seen under stress-ng before the rule that a node
    with direct_io files open gets no passthrough opens). Every read is
    right and no open fails."""
    blob, src = source_file(tmp_path, 6 * MiB + 4097)
    gate = fifo("gate")
    m = mount("f=" + gated_cmd(src, 3 * MiB, gate))
    p = m / "f"
    m.start("f")
    m.wait_bytes("f", 3 * MiB)
    errors = []
    stop = threading.Event()
    counts = {"direct": 0, "passthrough": 0}

    def worker(seed):
        import random
        rnd = random.Random(seed)
        while not stop.is_set():
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    complete = m.state("f") == "complete"
                    limit = len(blob) if complete else 3 * MiB
                    off = rnd.randrange(limit)
                    n = rnd.randrange(1, 300_000)
                    got = os.pread(fd, n, off)
                    want = blob[off:off + n] if complete else blob[off:min(off + n, limit)]
                    if complete and got != want or not complete and got[:len(want)] != want:
                        errors.append(f"bytes at {off}+{n}")
                    counts["passthrough" if complete else "direct"] += 1
                finally:
                    os.close(fd)
            except OSError as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: counts["direct"] >= 30 or errors, what="reads while running")
        gate.close()
        m.wait_state("f", {"complete"})
        wait_until(lambda: counts["passthrough"] >= 60 or errors, what="reads once complete")
        fd = os.open(p, os.O_RDONLY)
        try:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mp:
                assert mp[:] == blob
        finally:
            os.close(fd)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:5]
    assert read_all(p) == blob
