"""
Interrupts, many waiting readers, and stopping the daemon (S8, S9 of
docs/DESIGN.md, and "FUSE worker threads never sleep on data").

The time limits here are hang checks, not benchmarks: generous deadlines
that a working daemon meets by orders of magnitude.
"""
import errno
import os
import signal
import subprocess
import sys

import pytest

from helpers import (DEADLINE, Background, Reader, call, kill_if_alive, make_data, mounted,
                     pid_alive, in_fuse_wait, pread_path, proc_state, q, read_all, register_pid,
                     run, sha256, unregister_pid, wait_blocked_in_read, wait_until)

PROMPT = 5.0  # "promptly"


def wait_blocked_in_syscall(bg):
    """Wait until a Background thread sleeps on a FUSE request."""
    def blocked():
        if bg.done():
            raise AssertionError(f"{bg.name} returned instead of waiting: {bg.value()!r}")
        return in_fuse_wait(f"{os.getpid()}/task/{bg.native_id}")
    wait_until(blocked, what=f"{bg.name} to wait on a FUSE request")


def start_reader(argv):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    register_pid(p.pid)
    return p


def stop_reader(p):
    if p.poll() is None:
        p.kill()
    p.wait(DEADLINE)
    unregister_pid(p.pid)


def test_sigint_to_a_waiting_cat(mount, fifo):
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(200_000)
    reader = start_reader(["cat", str(m / "s.bin")])
    try:
        f.write(data[:1000])
        # cat's first read asks for more than 1000 bytes: it waits (S3).
        wait_blocked_in_read(reader.pid)
        reader.send_signal(signal.SIGINT)
        try:
            rc = reader.wait(PROMPT)
        except subprocess.TimeoutExpired:
            raise AssertionError("cat waiting on a stalled stream ignored SIGINT")
        assert rc != 0
        assert m.state("s.bin") == "running", "the interrupt must not stop the stream"
    finally:
        stop_reader(reader)
    # The stream goes on for another reader.
    f.write(data[1000:])
    f.close()
    assert sha256(call(read_all, m / "s.bin", timeout=30)) == sha256(data)
    m.wait_state("s.bin", "complete")


def test_sigint_to_a_waiting_reader_returns_eintr(mount, fifo):
    """The waiting pread returns to user space (EINTR, so the handler runs)."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    rd = Reader(m / "s.bin", [("pread", 0, 100), ("pread", 50_000, 100)], exit_on_sigint=7)
    try:
        f.write(b"a" * 1000)
        rd.wait_open()
        assert rd.next()["n"] == 100
        m.wait_waiters("s.bin", 1)  # the second pread is parked on the stream
        rd.proc.send_signal(signal.SIGINT)
        try:
            rc = rd.proc.wait(PROMPT)
        except subprocess.TimeoutExpired:
            raise AssertionError("pread waiting on a stalled stream ignored SIGINT")
        assert rc == 7 and rd.next() == {"interrupted": True}
        assert m.state("s.bin") == "running"
    finally:
        rd.stop()
    f.write(b"b" * 60_000)
    f.close()
    assert call(read_all, m / "s.bin") == b"a" * 1000 + b"b" * 60_000


@pytest.mark.timeout(120)
def test_64_waiting_readers_do_not_starve_the_mount(mount, fifo, tmp_path, streamfs_bin):
    f = fifo()
    done_data = make_data(tmp_path / "done", 2_000_000)
    m = mount(f"stalled.bin=cmd:{f.cat}", f"done.bin=cmd:cat {q(tmp_path / 'done')}",
              "other.txt=cmd:echo other", "dir/x.txt=cmd:echo x")
    assert call(read_all, m / "done.bin", timeout=30) == done_data
    data = os.urandom(2_000_000)
    m.start("stalled.bin")
    f.write(data[:1000])
    m.wait_bytes("stalled.bin", 1000)
    offsets = [1000 + i * 20_000 for i in range(64)]
    readers = [Background(pread_path, m / "stalled.bin", 4096, off, name=f"reader@{off}")
               for off in offsets]
    wait_blocked_in_read(threads=readers, timeout=30)

    # With 64 readers parked, the rest of the mount answers at once.
    assert sorted(call(os.listdir, m.path, timeout=PROMPT)) == ["dir", "done.bin", "other.txt",
                                                               "stalled.bin"]
    assert call(os.stat, m / "other.txt", timeout=PROMPT).st_size == 6
    assert call(read_all, m / "other.txt", timeout=PROMPT) == b"other\n"
    assert call(read_all, m / "done.bin", timeout=PROMPT) == done_data
    assert call(os.stat, m / "dir/x.txt", timeout=PROMPT).st_size == 2
    assert call(pread_path, m / "stalled.bin", 1000, 0, timeout=PROMPT) == data[:1000]
    assert call(lambda: os.getxattr(m / "stalled.bin", "user.streamfs.bytes"),
                timeout=PROMPT) == b"1000"
    r = run([streamfs_bin, "status", m.path], timeout=PROMPT)
    assert r.returncode == 0, r.stderr
    assert all(not r_.done() for r_ in readers), "a reader returned before its data arrived"

    for i in range(1000, len(data), 100_000):
        f.write(data[i:i + 100_000], timeout=30)
    f.close()
    for r_, off in zip(readers, offsets):
        assert r_.result(30) == data[off:off + 4096]
    m.wait_state("stalled.bin", "complete")


def spawn_group_cmd(tmp_path, f):
    """A command that leaves a grandchild in its process group and records
    the PIDs of both."""
    sleep_pid = tmp_path / "sleep.pid"
    sh_pid = tmp_path / "sh.pid"
    cmd = (f"cmd:sleep 1000 >/dev/null 2>&1 & echo $! > {q(sleep_pid)}; "
           f"echo $$ > {q(sh_pid)}; {f.cat}")
    return cmd, sleep_pid, sh_pid


def read_pid(path):
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), what=f"{path}"))


def test_sigterm_wakes_readers_and_kills_the_process_group(mount, fifo, tmp_path):
    f = fifo()
    cmd, sleep_pidf, sh_pidf = spawn_group_cmd(tmp_path, f)
    m = mount(f"s.bin={cmd}", "idle.txt=cmd:echo idle")
    m.start("s.bin")
    f.write(b"q" * 1000)
    m.wait_bytes("s.bin", 1000)
    sleep_pid, sh_pid = read_pid(sleep_pidf), read_pid(sh_pidf)
    try:
        readers = [Background(pread_path, m / "s.bin", 100, 5000 + i, name=f"r{i}")
                   for i in range(8)]
        wait_blocked_in_read(threads=readers)
        m.signal(signal.SIGTERM)
        for r_ in readers:
            err = r_.error(DEADLINE, what="reader after SIGTERM")
            assert isinstance(err, OSError), f"{r_.name}: expected an error, got {r_.value()!r}"
            assert err.errno in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED, errno.EINTR,
                                 errno.ECANCELED), err
        m.wait_exit(DEADLINE)
        wait_until(lambda: not pid_alive(sh_pid), what="the command's shell to be killed")
        wait_until(lambda: not pid_alive(sleep_pid),
                   what="the command's grandchild (same process group) to be killed")
        wait_until(lambda: not mounted(m.path), what="SIGTERM to unmount")
    finally:
        kill_if_alive(sleep_pid, "sleep")
        kill_if_alive(sh_pid, "sh")


def test_sigint_stops_a_foreground_daemon(mount, fifo, tmp_path):
    f = fifo()
    cmd, sleep_pidf, sh_pidf = spawn_group_cmd(tmp_path, f)
    m = mount(f"s.bin={cmd}", opts=["--start=mount"])
    sleep_pid, sh_pid = read_pid(sleep_pidf), read_pid(sh_pidf)
    try:
        m.signal(signal.SIGINT)
        m.wait_exit(DEADLINE)
        wait_until(lambda: not pid_alive(sh_pid) and not pid_alive(sleep_pid),
                   what="the command's process group to be killed")
        wait_until(lambda: not mounted(m.path), what="SIGINT to unmount")
    finally:
        kill_if_alive(sleep_pid, "sleep")
        kill_if_alive(sh_pid, "sh")


def test_unmount_with_a_running_command_kills_its_group(mount, fifo, tmp_path):
    f = fifo()
    cmd, sleep_pidf, sh_pidf = spawn_group_cmd(tmp_path, f)
    m = mount(f"s.bin={cmd}", opts=["--start=mount"])
    sleep_pid, sh_pid = read_pid(sleep_pidf), read_pid(sh_pidf)
    try:
        r = run(["fusermount3", "-u", m.path], timeout=DEADLINE)
        assert r.returncode == 0, r.stderr
        m.wait_exit(DEADLINE)
        assert m.proc.returncode == 0
        wait_until(lambda: not pid_alive(sh_pid) and not pid_alive(sleep_pid),
                   what="the command's process group to be killed")
    finally:
        kill_if_alive(sleep_pid, "sleep")
        kill_if_alive(sh_pid, "sh")


def test_sigkill_of_the_daemon_leaves_no_command_child(mount, fifo, tmp_path):
    f = fifo()
    pidf = tmp_path / "child.pid"
    m = mount(f"s.bin=cmd:echo $$ > {q(pidf)}; exec {f.cat}", opts=["--start=mount"])
    child = read_pid(pidf)
    try:
        f.write(b"k" * 100)
        m.wait_bytes("s.bin", 100)
        waiter = Background(pread_path, m / "s.bin", 10, 1000)
        wait_blocked_in_read(threads=[waiter])
        m.signal(signal.SIGKILL)
        m.wait_exit(DEADLINE)
        err = waiter.error(DEADLINE, what="reader after SIGKILL of the daemon")
        assert isinstance(err, OSError), f"expected an error, got {waiter.value()!r}"
        wait_until(lambda: not pid_alive(child), what="the command child to die with the daemon")
        wait_until(lambda: not mounted(m.path), what="auto_unmount after SIGKILL")
    finally:
        kill_if_alive(child, "cat")


def test_sigkill_of_a_waiting_reader(mount, fifo):
    """A SIGKILLed reader parked in the daemon does not stay in D state."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    reader = start_reader(["cat", str(m / "s.bin")])
    try:
        f.write(b"x" * 1000)
        wait_blocked_in_read(reader.pid)
        reader.kill()
        try:
            reader.wait(PROMPT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGKILLed reader still alive (state {proc_state(reader.pid)})")
        assert m.state("s.bin") == "running"
    finally:
        stop_reader(reader)
    f.write(b"y" * 1000)
    f.close()
    assert call(read_all, m / "s.bin") == b"x" * 1000 + b"y" * 1000


WAITER = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, lambda *a: (print('interrupted', flush=True), os._exit(7)))\n"
    "print('ready', flush=True)\n"
    "if sys.argv[1] == 'stat':\n"
    "    os.stat(sys.argv[2])\n"
    "else:\n"
    "    os.open(sys.argv[2], os.O_RDONLY)\n"
    "print('returned', flush=True)\n"
)


@pytest.mark.parametrize("op,opts", [("stat", ["--size=wait"]), ("stat", []), ("open", [])])
def test_sigint_to_a_waiting_stat_or_open(mount, fifo, op, opts):
    """open and stat wait for the first bytes (stat with --size=wait for the
    end); these waits are interruptible like reads.

    The waiter asleep in a FUSE call is not yet proof that the daemon has
    its request: the kernel may still wait for the LOOKUP before the open
    (which starts nothing), or the open may sit unread in the queue of a
    daemon that a loaded machine has not scheduled yet; until then the
    stream is rightly idle. The daemon's own count of parked requests is
    the proof; from then on the stream runs (open and stat start it before
    they park)."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}", opts=opts)
    if opts:
        m.start("s.bin")
        f.write(b"a" * 100)   # some bytes, but not the end
        m.wait_bytes("s.bin", 100)
    waiter = start_reader([sys.executable, "-c", WAITER, op, str(m / "s.bin")])
    try:
        assert call(waiter.stdout.readline) == b"ready\n"
        m.wait_waiters("s.bin", 1)
        assert m.state("s.bin") == "running"
        waiter.send_signal(signal.SIGINT)
        try:
            rc = waiter.wait(PROMPT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{op} waiting on a stream ignored SIGINT")
        assert rc == 7 and waiter.stdout.read() == b"interrupted\n"
        m.wait_waiters("s.bin", 0)
        assert m.state("s.bin") == "running"
    finally:
        stop_reader(waiter)
    f.close()
    m.wait_state("s.bin", "complete")


@pytest.mark.timeout(120)
def test_interrupts_racing_with_data(mount, fifo, tmp_path):
    """Interrupts that arrive together with the data a read waits for: each
    request gets exactly one reply (the daemon survives, teardown checks it
    did not crash), readers end one way or the other, the stream is intact."""
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}")
    data = os.urandom(40 * 4096)
    m.start("s.bin")
    f.write(data[:4096])
    m.wait_bytes("s.bin", 4096)
    for rnd in range(1, 40, 4):
        readers = [start_reader(["dd", f"if={m / 's.bin'}", "bs=4096", f"skip={rnd + k}",
                                 "count=1", "status=none"]) for k in range(4)]
        try:
            for r_ in readers:
                wait_blocked_in_read(r_.pid)
            for r_ in readers[::2]:
                r_.send_signal(signal.SIGINT)
            f.write(data[rnd * 4096:(rnd + 4) * 4096])
            for r_ in readers[1::2]:
                r_.send_signal(signal.SIGINT)
            for r_ in readers:
                try:
                    r_.wait(PROMPT)
                except subprocess.TimeoutExpired:
                    raise AssertionError("a reader hung after an interrupt racing with data")
        finally:
            for r_ in readers:
                stop_reader(r_)
        assert m.alive()
    f.close()
    m.wait_state("s.bin", "complete")
    assert call(read_all, m / "s.bin") == data


@pytest.mark.parametrize("op", ["open", "stat-wait"])
def test_sigterm_wakes_waiting_opens_and_stats(mount, fifo, op):
    f = fifo()
    opts = ["--size=wait"] if op == "stat-wait" else []
    m = mount(f"s.bin=cmd:{f.cat}", opts=opts)
    if op == "open":
        waiter = Background(os.open, str(m / "s.bin"), os.O_RDONLY)
        f.connect()
    else:
        m.start("s.bin")
        f.write(b"x" * 100)
        m.wait_bytes("s.bin", 100)
        waiter = Background(os.stat, m / "s.bin")
    wait_blocked_in_syscall(waiter)
    m.signal(signal.SIGTERM)
    err = waiter.error(DEADLINE, what=f"{op} after SIGTERM")
    assert isinstance(err, OSError), f"{op}: expected an error, got {waiter.value()!r}"
    m.wait_exit(DEADLINE)
