"""
Faults and shutdown: the store's disk fills up, a command is SIGKILLed
from outside, the daemon itself is SIGKILLed, and the two clean stops
(fusermount3 -u with idle files, SIGTERM with readers of every kind
waiting).

Already covered elsewhere, so not repeated here: a FIFO writer closing
early (test_errors), a command exiting non-zero or killed by its own
signal (test_errors), SIGINT/SIGTERM with a few waiting readers and the
SIGKILLed daemon's direct child (test_signals).

The deadlines are hang checks: a working daemon meets them by far.
"""
import errno
import os
import signal

import pytest

from helpers import (DEADLINE, Background, assert_blocked, call, kill_if_alive, make_data,
                     mounted, pid_alive, pread_path, q, read_all, run, wait_blocked_in_read,
                     wait_until)
from test_scale import Parked, fusectl  # noqa: F401 (fusectl is a fixture)

PROMPT = 5.0


def open_fd(path):
    return call(os.open, str(path), os.O_RDONLY, what=f"open {path}")


def read_pid(path):
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), what=f"{path}"))


def check_cut(m, name, data, cut):
    """Bytes before @cut read back exactly, a read spanning it is short, a
    read at or past it fails with EIO (S4)."""
    fd = open_fd(m / name)
    try:
        got = bytearray()
        while len(got) < cut:
            got += call(os.pread, fd, min(1 << 20, cut - len(got)), len(got))
        assert got == data[:cut], "bytes before the failure point differ"
        assert call(os.pread, fd, 100, cut - 10) == data[cut - 10:cut]
        for off in (cut, cut + 4096):
            with pytest.raises(OSError) as e:
                call(os.pread, fd, 10, off)
            assert e.value.errno == errno.EIO
    finally:
        os.close(fd)


# ------------------------------------------------------------ disk full

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs for --cache-dir. Requested before `mount` by the tests,
    so it is unmounted after the daemons are gone; if it is still busy, it
    is detached (umount -l) and freed when their last descriptor closes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "small"
    d.mkdir()
    r = run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", d], timeout=DEADLINE)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr}"
    try:
        yield d
    finally:
        if mounted(d):
            r = run(["umount", d], timeout=DEADLINE)
            if r.returncode != 0:
                run(["umount", "-l", d], timeout=DEADLINE)


@pytest.mark.timeout(120)
def test_store_full_pauses_the_stream_instead_of_failing(small_tmpfs, mount, tmp_path,
                                                          streamfs_bin):
    """A full store is not a failure: the stream that needs room
    pauses where it is, with every byte it has readable and right; reads
    past it wait; a stream started meanwhile waits too; room freed (here
    by removing the big file) lets them go on. Nothing is lost, nothing
    fails, the mount goes on."""
    small = make_data(tmp_path / "small.dat", 200_000)
    big = make_data(tmp_path / "big.dat", 8 << 20)  # twice the store's room
    m = mount(f"small.bin=cmd:cat {q(tmp_path / 'small.dat')}",
              f"big.bin=cmd:cat {q(tmp_path / 'big.dat')}",
              "late.txt=cmd:echo late", opts=["--cache-dir", small_tmpfs])
    assert call(read_all, m / "small.bin") == small
    m.wait_state("small.bin", "complete")

    fd = open_fd(m / "big.bin")
    try:
        past = Background(os.pread, fd, 4096, 6 << 20, name="reader past the room")
        wait_until(lambda: m.xattr("big.bin", "paused"), PROMPT, "big.bin to pause")
        assert m.xattr("big.bin", "paused") in ("no space left in the cache directory",
                                                "cache file system low on space")
        assert m.state("big.bin") == "running"
        have = m.nbytes("big.bin")
        assert 0 < have < len(big)
        assert call(os.pread, fd, have, 0) == big[:have], "bytes before the pause differ"
        assert_blocked(past, what="a read past the pause")
        # A stream started now finds no room either: it waits, it does not fail.
        late = Background(read_all, str(m / "late.txt"), name="reader of late.txt")
        wait_until(lambda: m.xattr("late.txt", "paused"), PROMPT, "late.txt to pause")
        assert m.state("late.txt") == "running"
        assert not late.done()
        # Removed, its bytes go once the last handle is closed.
        r = run([streamfs_bin, "rm", m.path, "big.bin"], timeout=PROMPT)
        assert r.returncode == 0, r.stderr
        e = past.error(PROMPT, what="the reader of the removed file")
        assert isinstance(e, OSError) and e.errno == errno.EIO, f"got {e!r}"
        assert call(os.pread, fd, 4096, 0) == big[:4096], "an open handle still reads"
        assert not late.done()
    finally:
        os.close(fd)
    assert late.result(PROMPT) == b"late\n"
    # The stream that fit stays whole and readable; the mount goes on.
    assert call(read_all, m / "small.bin", timeout=PROMPT) == small
    assert m.state("late.txt") == "complete"
    assert m.alive()


# ------------------------------------------------------- a command killed

def test_cmd_sigkilled_from_outside_mid_stream(mount, tmp_path, fifo):
    f = fifo()
    pidf = tmp_path / "pid"
    m = mount(f"k.bin=cmd:echo $$ > {q(pidf)}; exec {f.cat}")
    data = os.urandom(70_000)
    m.start("k.bin")
    f.write(data)
    m.wait_bytes("k.bin", len(data))
    pid = read_pid(pidf)
    fd = open_fd(m / "k.bin")
    try:
        past = Background(os.pread, fd, 100, 100_000, name="parked past the cut")
        spanning = Background(os.pread, fd, 10_000, 65_000, name="parked across the cut")
        wait_blocked_in_read(threads=[past, spanning])
        os.kill(pid, signal.SIGKILL)
        m.wait_state("k.bin", "failed")
        assert "killed by signal 9" in (m.xattr("k.bin", "error") or ""), m.xattr("k.bin", "error")
        assert m.xattr("k.bin", "exit_status") == str(128 + signal.SIGKILL)
        assert m.xattr("k.bin", "error_offset") == str(len(data))
        e = past.error(PROMPT)
        assert isinstance(e, OSError) and e.errno == errno.EIO, f"got {e!r}"
        assert spanning.result(PROMPT) == data[65_000:]
    finally:
        os.close(fd)
    check_cut(m, "k.bin", data, len(data))


# ---------------------------------------------------- the daemon SIGKILLed

def test_sigkill_of_the_daemon_kills_every_command_process_group(mount, tmp_path, fifo):
    """Every command's shell and the jobs it started in its process group
    die with the daemon (S9: no child outlives it); the mount does not stay
    behind dead (auto_unmount, else fusermount3 -u cleans it)."""
    fa, fb = fifo("a"), fifo("b")
    pids = {k: (tmp_path / f"{k}.sh", tmp_path / f"{k}.job") for k in ("a", "b")}
    specs = [f"{k}.bin=cmd:sleep 1000 >/dev/null 2>&1 & echo $! > {q(job)}; "
             f"echo $$ > {q(sh)}; {f.cat}"
             for (k, (sh, job)), f in zip(pids.items(), (fa, fb))]
    m = mount(*specs, opts=["--start=mount"])
    sh_pids = [read_pid(sh) for sh, _ in pids.values()]
    job_pids = [read_pid(job) for _, job in pids.values()]
    try:
        fa.write(b"a" * 1000)
        m.wait_bytes("a.bin", 1000)
        waiter = Background(pread_path, m / "a.bin", 10, 5000, name="parked reader")
        wait_blocked_in_read(threads=[waiter])
        m.signal(signal.SIGKILL)
        m.wait_exit(DEADLINE)
        e = waiter.error(PROMPT, what="a parked reader after SIGKILL of the daemon")
        assert isinstance(e, OSError), f"expected an error, got {waiter.value()!r}"
        for p in sh_pids:
            wait_until(lambda: not pid_alive(p), PROMPT, f"the command shell {p} to die")
        left = []
        try:
            wait_until(lambda: not any(pid_alive(p) for p in job_pids), PROMPT,
                       "the commands' background jobs to die")
        except AssertionError:
            left = [p for p in job_pids if pid_alive(p)]
        assert not left, (f"background jobs {left} of the commands (same process group) "
                          f"outlived the SIGKILLed daemon")
        if mounted(m.path):
            try:
                wait_until(lambda: not mounted(m.path), PROMPT, "auto_unmount")
            except AssertionError:
                r = run(["fusermount3", "-u", m.path], timeout=DEADLINE)
                assert r.returncode == 0, f"fusermount3 -u of the dead mount: {r.stderr}"
        assert not mounted(m.path)
    finally:
        for p in job_pids:
            kill_if_alive(p, "sleep")
        for p in sh_pids:
            kill_if_alive(p, "sh")


# ------------------------------------------------------------ clean stops

def test_fusermount_u_with_only_idle_files(mount, tmp_path):
    """Nothing open: never-started, complete and failed streams. The
    unmount succeeds at once and the daemon exits 0, quietly."""
    data = make_data(tmp_path / "data", 300_000)
    m = mount(f"done.bin=cmd:cat {q(tmp_path / 'data')}", "failed.bin=cmd:exit 4",
              "idle.bin=cmd:echo never", "sub/idle2.bin=cmd:echo never")
    assert call(read_all, m / "done.bin") == data
    with pytest.raises(OSError):
        call(os.open, str(m / "failed.bin"), os.O_RDONLY)
    m.wait_state("failed.bin", "failed")
    r = run(["fusermount3", "-u", m.path], timeout=DEADLINE)
    assert r.returncode == 0, f"fusermount3 -u failed: {r.stderr}"
    assert m.wait_exit(DEADLINE) == 0
    assert not mounted(m.path)
    text = m.stderr_text()
    assert "did not stop" not in text and "warn" not in text.lower(), text


@pytest.mark.timeout(120)
def test_sigterm_with_20_waiters_of_every_kind(mount, tmp_path, fifo, fusectl):
    """20 requests parked on three streams (counted by the kernel): reads
    past the frontier, lseek(SEEK_END) (waits for the end), opens of a
    stream with no byte yet, and stats of a size=wait stream. SIGTERM: each returns promptly (reads,
    seeks and opens with an error; a stat may answer with the size so far),
    the daemon exits 0, and no command process is left."""
    fa, fb, fc = fifo("a"), fifo("b"), fifo("c")
    sh = {k: tmp_path / f"{k}.pid" for k in "abc"}
    ini = tmp_path / "m.ini"
    ini.write_text(f"[a.bin]\nsource = cmd:echo $$ > {q(sh['a'])}; exec {fa.cat}\n\n"
                   f"[b.bin]\nsource = cmd:echo $$ > {q(sh['b'])}; exec {fb.cat}\n\n"
                   f"[c.bin]\nsource = cmd:echo $$ > {q(sh['c'])}; exec {fc.cat}\n"
                   f"size = wait\n")
    m = mount(opts=["-c", ini])
    m.start("a.bin")
    fa.write(b"a" * 1000)
    m.wait_bytes("a.bin", 1000)
    m.start("c.bin")
    fc.write(b"c" * 1000)
    m.wait_bytes("c.bin", 1000)
    # One seek per file: the kernel serialises SEEK_END on an inode.
    fds = [open_fd(m / "a.bin"), open_fd(m / "c.bin")]

    def seek_end(fd):
        return os.lseek(fd, 0, os.SEEK_END)

    def open_close(path):
        os.close(os.open(path, os.O_RDONLY))

    reads = [Background(pread_path, m / "a.bin", 100, 2000 + 100 * i, name=f"read{i}")
             for i in range(8)]
    seeks = [Background(seek_end, fd, name=f"seek{i}") for i, fd in enumerate(fds)]
    opens = [Background(open_close, str(m / "b.bin"), name=f"open{i}") for i in range(5)]
    stats = [Background(os.stat, m / "c.bin", name=f"stat{i}") for i in range(5)]
    waiters = reads + seeks + opens + stats
    try:
        assert len(waiters) == 20
        wait_blocked_in_read(threads=reads)
        sh_pids = [read_pid(p) for p in sh.values()]
        Parked(fusectl, m).wait(20, what="with 20 waiters ")
        assert not [w.name for w in waiters if w.done()], "a waiter returned too early"

        m.signal(signal.SIGTERM)
        for w in reads + seeks + opens:
            e = w.error(PROMPT, what=f"{w.name} after SIGTERM")
            assert isinstance(e, OSError), f"{w.name}: expected an error, got {w.value()!r}"
        for w in stats:
            e = w.error(PROMPT, what=f"{w.name} after SIGTERM")
            assert e is None or isinstance(e, OSError), f"{w.name}: {e!r}"
        assert m.wait_exit(DEADLINE) == 0, "the daemon must exit 0 on SIGTERM"
        for p in sh_pids:
            wait_until(lambda: not pid_alive(p), PROMPT, f"command {p} to be gone")
        wait_until(lambda: not mounted(m.path), PROMPT, "SIGTERM to unmount")
    finally:
        for fd in fds:
            os.close(fd)


def test_allocation_failures_on_request_paths_are_errors(mount, tmp_path):
    """Every 3rd allocation a request makes fails (STREAMFS_TEST_FAIL_ALLOC):
    each operation either works, with correct data, or fails with ENOMEM;
    nothing crashes or hangs, and the daemon shuts down cleanly (the
    teardown checks its exit and sanitizer reports)."""
    src = tmp_path / "d.bin"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    env = dict(os.environ, STREAMFS_TEST_FAIL_ALLOC="3")
    m = mount(f"d.bin=cmd:cat {src}", "dir/e.txt=cmd:echo e", env=env)
    ok = enomem = 0
    for i in range(60):
        try:
            if i % 3 == 0:
                os.listdir(m.path)
                os.listdir(m / "dir")
            elif i % 3 == 1:
                os.stat(m / "d.bin")
            else:
                fd = os.open(m / "d.bin", os.O_RDONLY)
                try:
                    off = (i * 65537) % len(data)
                    got = os.pread(fd, 256 << 10, off)
                    # A read whose later pages failed returns what came
                    # before the failure (the kernel's partial read).
                    assert len(got) > 0 and got == data[off:off + len(got)]
                finally:
                    os.close(fd)
            ok += 1
        except OSError as e:
            assert e.errno == errno.ENOMEM, e
            enomem += 1
    assert ok > 0 and enomem > 0, (ok, enomem)
