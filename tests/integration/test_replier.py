"""
A read parked at the frontier is answered by the daemon's reply thread
(streamfs-reply), not by the thread that received its bytes, so that the
I/O thread goes back to receiving (src/fuse/replier.c). Not under a
--cache-size budget or for keep= streams, whose bytes may be gone again by
the time a queued reply is copied: there the waking thread answers, as
before. These tests check which thread exists, that every woken reader gets
exactly its bytes, and that an unmount with replies on their way ends
cleanly (the mount fixture fails a test whose daemon does not).
"""
import errno
import os
import signal
import threading

import pytest

from helpers import gated_cmd, mounted, read_all, source_file, thread_names, wait_until

MiB = 1 << 20


def read_parked(m, name, gate, blob):
    """Read all of @name while its command waits at @gate: the read past the
    gate parks, the gate opens, the read is woken by the I/O thread."""
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("data", read_all(m / name)))
    t.start()
    try:
        m.wait_waiters(name, 1)
    finally:
        gate.close()
        t.join(60)
    assert not t.is_alive(), "the reader did not finish"
    assert got.get("data") == blob


def test_woken_reads_are_answered_by_the_reply_thread(tmp_path, mount, fifo):
    blob, src = source_file(tmp_path, 3 * MiB + 5)
    gate = fifo("gate")
    m = mount("f=" + gated_cmd(src, MiB, gate))
    assert "streamfs-reply" not in thread_names(m.pid)  # started by the first read
    read_parked(m, "f", gate, blob)
    assert "streamfs-reply" in thread_names(m.pid)


def test_the_thread_starts_while_the_first_read_waits(tmp_path, mount, fifo):
    """The first parked read starts the thread, so that its start overlaps
    the wait instead of delaying the first reply."""
    blob, src = source_file(tmp_path, 3 * MiB + 5)
    gate = fifo("gate")
    m = mount("f=" + gated_cmd(src, MiB, gate))
    # Everything before the gate is there first: the reader's first wait
    # is at the gate, and nothing has been woken before it.
    m.start("f")
    wait_until(lambda: m.nbytes("f") == MiB, 10, "the bytes before the gate")
    assert "streamfs-reply" not in thread_names(m.pid)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("data", read_all(m / "f")))
    t.start()
    try:
        m.wait_waiters("f", 1)
        wait_until(lambda: "streamfs-reply" in thread_names(m.pid), 10,
                   "the reply thread to start while the read waits")
        assert t.is_alive()  # still parked: the gate is shut
    finally:
        gate.close()
        t.join(60)
    assert not t.is_alive(), "the reader did not finish"
    assert got.get("data") == blob


@pytest.mark.parametrize("opt", ["--cache-size=64M", "--keep=64M"])
def test_not_under_a_budget_or_for_keep_streams(tmp_path, mount, fifo, opt):
    blob, src = source_file(tmp_path, 3 * MiB + 5)
    gate = fifo("gate")
    m = mount("f=" + gated_cmd(src, MiB, gate), opts=[opt])
    read_parked(m, "f", gate, blob)
    assert "streamfs-reply" not in thread_names(m.pid)


def test_many_woken_readers_get_their_own_bytes(tmp_path, mount, fifo):
    """Sixteen readers parked at different offsets past the gate, all woken
    by the bytes after it: each gets exactly its range."""
    blob, src = source_file(tmp_path, 20 * MiB)
    gate = fifo("gate")
    m = mount("f=" + gated_cmd(src, MiB, gate))
    results = {}

    def reader(i):
        fd = os.open(m / "f", os.O_RDONLY)
        try:
            off = MiB + i * MiB + i * 4097  # not aligned, inside the gated part
            results[i] = (off, os.pread(fd, 300000, off))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        m.wait_waiters("f", 16)
    finally:
        gate.close()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a reader did not finish"
    for i in range(16):
        off, data = results[i]
        assert data == blob[off:off + 300000], i


def test_sigterm_with_replies_on_their_way(tmp_path, mount, fifo):
    """Readers woken in a burst while the daemon is told to stop (SIGTERM:
    it answers what is parked with EIO, waits for the replies on their way,
    including those queued for the reply thread, and unmounts): each gets
    its bytes or an error, none hangs, the mount goes and the daemon exits
    cleanly (no sanitizer report: the fixture)."""
    blob, src = source_file(tmp_path, 40 * MiB)
    gate = fifo("gate")
    m = mount("f=" + gated_cmd(src, MiB, gate))
    outcomes = []
    lock = threading.Lock()

    def reader(i):
        try:
            fd = os.open(m / "f", os.O_RDONLY)
        except OSError as e:
            with lock:
                outcomes.append(("open", e.errno))
            return
        try:
            off = MiB + i * 2 * MiB
            data = os.pread(fd, MiB, off)
            with lock:
                # A 1 MiB buffer not aligned to a page is two FUSE reads: the
                # first may be answered and the second refused (a short read).
                want = blob[off:off + MiB]
                ok = data == want or (0 < len(data) < MiB and want.startswith(data))
                outcomes.append(("ok" if ok else "WRONG", i, len(data)))
        except OSError as e:
            with lock:
                outcomes.append(("err", e.errno))
        finally:
            try:
                os.close(fd)
            except OSError:
                pass  # ENOTCONN: the file system is gone

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        m.wait_waiters("f", 16)
    finally:
        gate.close()
        m.signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert len(outcomes) == 16
    # EIO: parked, answered by the shutdown; ECONNABORTED, ENOTCONN: a read
    # the daemon had not taken from the device yet, ended by the kernel when
    # the mount went (as before the reply thread).
    cut = (errno.EIO, errno.ECONNABORTED, errno.ENOTCONN)
    for kind, v, *_ in outcomes:
        assert kind == "ok" or (kind == "err" and v in cut), repr(outcomes)
    wait_until(lambda: not mounted(m.path), what="SIGTERM to unmount")
    m.wait_exit()
