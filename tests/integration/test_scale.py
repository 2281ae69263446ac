"""
Scale: a thousand files in one mount, 256 readers parked on one stalled
stream, 64 streams filling at once, open/read/close storms from several
processes, and readers killed while they wait.

The deadlines are hang checks, not benchmarks: a working daemon meets them
by orders of magnitude (bench/bench_scale.sh measures latencies).

Parked requests are counted on the kernel's side of the mount. The fuse
control file system (fusectl) has a directory per connection whose file
`waiting` counts the requests sent to the daemon and not answered yet. A
read the daemon parked is one of them; one it forgot after an interrupt
stays there for good (and keeps its SIGKILLed reader in D state). If the
daemon also shows its own count as the xattr user.streamfs.waiters, the
tests check that it agrees.
"""
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import (DEADLINE, Background, _unescape_mountinfo, call, gated_cmd, make_data,
                     pread_path, proc_state, q, read_all, register_pid, run, status_files, status_json,
                     storm_argv, unregister_pid, wait_blocked_in_read, wait_until)

PROMPT = 5.0  # "at once", for a hang check


# ------------------------------------------------------------------ helpers

def _fusectl_mounted():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "fusectl":
                return _unescape_mountinfo(fields[4])
    return None


@pytest.fixture(scope="module")
def fusectl(tmp_path_factory):
    """Where the fuse control file system is mounted; mounted privately
    (and unmounted at the end) if it is nowhere yet."""
    where = _fusectl_mounted()
    if where:
        yield Path(where)
        return
    if os.geteuid() != 0:
        pytest.skip("fusectl is not mounted and mounting it needs root")
    d = tmp_path_factory.mktemp("fusectl")
    r = run(["mount", "-t", "fusectl", "fusectl", d], timeout=DEADLINE)
    assert r.returncode == 0, f"cannot mount fusectl: {r.stderr}"
    try:
        yield d
    finally:
        run(["umount", d], timeout=DEADLINE)


def fuse_conn(mnt):
    """The fusectl name of @mnt's connection: its st_dev in the kernel's
    encoding, read from mountinfo (a stat of the mount point would ask the
    daemon)."""
    p = os.path.abspath(str(mnt))
    target = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape_mountinfo(fields[4]) == target:
                major, minor = (int(x) for x in fields[2].split(":"))
                return str((major << 20) | minor)
    raise AssertionError(f"{mnt} is not mounted")


class Parked:
    """Requests of one mount that the daemon has not answered yet."""

    def __init__(self, fusectl, m):
        self.m = m
        self.file = Path(fusectl) / fuse_conn(m.path) / "waiting"

    def count(self):
        return int(self.file.read_text())

    def wait(self, n, timeout=DEADLINE, what=""):
        wait_until(lambda: self.count() == n, timeout,
                   f"{n} unanswered FUSE requests {what}(now {self.count()})")

    def check_daemon_count(self, name, n):
        """The daemon's own count, where it shows one."""
        v = self.m.xattr(name, "waiters")
        if v is not None:
            wait_until(lambda: self.m.xattr(name, "waiters") == str(n), PROMPT,
                       f"user.streamfs.waiters of {name} to be {n} "
                       f"(is {self.m.xattr(name, 'waiters')})")


def spawn(argv):
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    register_pid(p.pid)
    return p


def reap(p, timeout=DEADLINE):
    """Wait for @p and return (rc, out, err). If it overran, SIGKILL it and
    fail; a reader whose FUSE request is never answered cannot even die
    (D state) until the daemon is stopped at teardown."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"{p.args} still running {timeout:g} s later "
                             f"(state {proc_state(p.pid)}: its request is not answered?)")
    unregister_pid(p.pid)
    return p.returncode, out, err


def stop_all(procs):
    """SIGKILL what is left of @procs; leave the stuck ones to teardown
    (stopping the daemon answers their requests)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                continue
        unregister_pid(p.pid)


# --------------------------------------------------------------- 1000 files

N_FILES = 1000


@pytest.mark.timeout(300)
def test_1000_files_in_one_mount(mount, tmp_path, streamfs_bin):
    data = make_data(tmp_path / "data", 65536)
    names = [f"f{k:04d}.bin" for k in range(N_FILES)]
    sizes = [(k * 7919) % 65537 for k in range(N_FILES)]  # 0 .. 65536, all different
    ini = tmp_path / "many.ini"
    ini.write_text("".join(f"[{n}]\nsource = cmd:head -c {s} {q(tmp_path / 'data')}\n\n"
                           for n, s in zip(names, sizes)))
    m = mount(opts=["-c", ini])

    # ls: every name, nothing started (lookup/readdir start no stream).
    assert sorted(call(os.listdir, m.path, timeout=PROMPT, what="listdir of 1000 files")) == names
    r = run(["ls", "-1", "--color=never", m.path], timeout=PROMPT)
    assert r.returncode == 0 and r.stdout.split() == names, r.stderr
    files = status_files(status_json(streamfs_bin, m.path))
    assert sorted(files) == names
    assert {f["state"] for f in files.values()} == {"idle"}

    # stat of a few (size=auto: at least the first bytes, at most the
    # whole), reads of a sample.
    for k in (0, 1, 500, 999):
        assert min(1, sizes[k]) <= call(os.stat, m / names[k]).st_size <= sizes[k]
    for k in random.Random(5).sample(range(N_FILES), 50):
        assert call(read_all, m / names[k]) == data[:sizes[k]], names[k]

    # Like 'ls -l' run by 16 processes at once: stat starts every stream.
    with ThreadPoolExecutor(16) as pool:
        got = Background(lambda: list(pool.map(lambda n: os.stat(m / n).st_size, names)),
                         name="stat of every file").result(120)
    assert all(min(1, s) <= g <= s for g, s in zip(got, sizes)), "st_size out of range"
    wait_until(lambda: {f["state"] for f in status_files(status_json(streamfs_bin, m.path))
                        .values()} == {"complete"}, 60, "all 1000 streams to complete")
    with ThreadPoolExecutor(16) as pool:
        got = Background(lambda: list(pool.map(lambda n: os.stat(m / n).st_size, names)),
                         name="stat of every file").result(60)
    assert got == sizes

    # Every file reads back exactly.
    def check(k):
        return read_all(m / names[k]) == data[:sizes[k]]
    with ThreadPoolExecutor(8) as pool:
        ok = Background(lambda: list(pool.map(check, range(N_FILES))),
                        name="read of every file").result(120)
    bad = [names[k] for k in range(N_FILES) if not ok[k]]
    assert not bad, f"wrong contents: {bad[:10]}"
    assert m.alive()


# ------------------------------------------------ 256 readers on one stream

@pytest.mark.timeout(240)
def test_256_readers_on_a_stalled_stream_do_not_starve_the_mount(mount, tmp_path, fifo,
                                                                  fusectl, streamfs_bin):
    gate = fifo("gate")
    head = 100_000
    data = make_data(tmp_path / "data", 4_000_000)
    done = make_data(tmp_path / "done", 8_000_000)
    m = mount(f"stalled.bin={gated_cmd(tmp_path / 'data', head, gate)}",
              f"done.bin=cmd:cat {q(tmp_path / 'done')}",
              "other.txt=cmd:echo other", "late.txt=cmd:echo late", "sub/x.txt=cmd:echo x")
    parked = Parked(fusectl, m)
    assert call(read_all, m / "done.bin", timeout=30) == done
    m.start("stalled.bin").result()
    m.wait_bytes("stalled.bin", head)
    parked.wait(0, what="before the readers ")

    offsets = [head + i * 15_000 for i in range(256)]
    readers = [Background(pread_path, m / "stalled.bin", 4096, off, name=f"reader@{off}")
               for off in offsets]
    wait_blocked_in_read(threads=readers, timeout=60)
    parked.wait(256, what="with 256 readers parked ")
    parked.check_daemon_count("stalled.bin", 256)

    # The rest of the mount answers at once.
    assert sorted(call(os.listdir, m.path, timeout=PROMPT)) == [
        "done.bin", "late.txt", "other.txt", "stalled.bin", "sub"]
    assert call(os.stat, m / "other.txt", timeout=PROMPT).st_size == 6
    assert call(os.stat, m / "sub/x.txt", timeout=PROMPT).st_size == 2
    assert call(os.stat, m / "stalled.bin", timeout=PROMPT).st_size == head
    assert call(read_all, m / "other.txt", timeout=PROMPT) == b"other\n"
    assert call(read_all, m / "done.bin", timeout=PROMPT) == done
    assert call(pread_path, m / "stalled.bin", head, 0, timeout=PROMPT) == data[:head]
    # A new stream starts, fills and ends meanwhile.
    assert call(read_all, m / "late.txt", timeout=PROMPT) == b"late\n"
    assert m.xattr("stalled.bin", "bytes") == str(head)
    r = run([streamfs_bin, "status", m.path], timeout=PROMPT)
    assert r.returncode == 0, r.stderr
    assert not [r_.name for r_ in readers if r_.done()], "a reader returned before its data"
    parked.wait(256, what="after the other requests ")

    gate.close()
    for r_, off in zip(readers, offsets):
        assert r_.result(60) == data[off:off + 4096], r_.name
    m.wait_state("stalled.bin", "complete", timeout=30)
    parked.wait(0, what="once every reader has its data ")
    parked.check_daemon_count("stalled.bin", 0)


# ------------------------------------------- interrupted readers, counted

@pytest.mark.timeout(120)
def test_killed_and_interrupted_readers_leave_no_parked_request(mount, tmp_path, fifo,
                                                                 fusectl):
    """Readers parked on one stream are ended by SIGKILL, SIGINT and
    timeout(1). Each leaves promptly, its request is answered (the kernel's
    count of unanswered requests drops by exactly those), and the stream
    goes on for the readers that stayed."""
    gate = fifo("gate")
    head = 10_000
    data = make_data(tmp_path / "data", 1_000_000)
    m = mount(f"s.bin={gated_cmd(tmp_path / 'data', head, gate)}")
    parked = Parked(fusectl, m)
    m.start("s.bin").result()
    m.wait_bytes("s.bin", head)

    def dd(block, prefix=()):
        return spawn([*prefix, "dd", f"if={m / 's.bin'}", "of=/dev/null", "bs=4096",
                      f"skip={block}", "count=1", "status=none"])

    procs = []
    try:
        killed = [dd(10 + i) for i in range(8)]
        intr = [dd(20 + i) for i in range(8)]
        procs = killed + intr
        for p in procs:
            wait_blocked_in_read(p.pid)
        timed = [dd(30 + i, prefix=("timeout", "-s", "TERM", "8")) for i in range(8)]
        procs += timed
        stay = [Background(pread_path, m / "s.bin", 4096, (40 + i) * 4096, name=f"stay{i}")
                for i in range(4)]
        wait_blocked_in_read(threads=stay)
        parked.wait(28, what="with 28 readers parked ")
        parked.check_daemon_count("s.bin", 28)

        for p in killed:
            p.send_signal(signal.SIGKILL)
        for p in intr:
            p.send_signal(signal.SIGINT)
        for p in killed + intr:
            rc, _, err = reap(p, PROMPT)
            assert rc != 0, f"{p.args} ended with 0 although interrupted: {err!r}"
        for p in timed:  # timeout(1) sends SIGTERM after 8 s
            rc, _, err = reap(p, 8 + PROMPT)
            assert rc == 124, f"{p.args}: rc {rc}, {err!r}"
        parked.wait(4, timeout=PROMPT, what="after 24 of 28 readers were interrupted ")
        parked.check_daemon_count("s.bin", 4)
        assert m.state("s.bin") == "running", "interrupts must not stop the stream"
        assert not [s.name for s in stay if s.done()]
    finally:
        stop_all(procs)

    gate.close()
    for i, s in enumerate(stay):
        off = (40 + i) * 4096
        assert s.result(30) == data[off:off + 4096]
    assert call(read_all, m / "s.bin", timeout=30) == data
    parked.wait(0, what="at the end ")
    parked.check_daemon_count("s.bin", 0)


# ------------------------------------------------ 64 streams filling at once

@pytest.mark.timeout(240)
def test_64_streams_filling_at_once(mount, tmp_path, fusectl):
    """64 streams reach a gate (a file that does not exist yet), 64 readers
    park on them, then all of them fill at once. Each is checked byte for
    byte; the daemon does not grow a thread per stream."""
    n, size, head = 64, 4 << 20, 256 << 10
    data = make_data(tmp_path / "data", size)
    go = tmp_path / "go"
    dq = q(tmp_path / "data")

    def src(k):
        off = k * 16384
        return (f"s{k:02d}.bin=cmd:tail -c +{off + 1} {dq} | head -c {head}; "
                f"while [ ! -e {q(go)} ]; do sleep 0.05; done; "
                f"tail -c +{off + head + 1} {dq}; head -c {off} {dq}")

    def expected(k):
        off = k * 16384
        return data[off:] + data[:off]

    names = [f"s{k:02d}.bin" for k in range(n)]
    m = mount(*[src(k) for k in range(n)], opts=["--start=mount"])
    parked = Parked(fusectl, m)
    wait_until(lambda: all((m.nbytes(nm) or 0) >= head for nm in names), 60,
               "every stream to reach its gate")
    readers = [Background(read_all, m / nm, name=f"read {nm}") for nm in names]
    wait_blocked_in_read(threads=readers, timeout=30)
    parked.wait(n, what=f"with {n} readers parked ")

    go.touch()
    threads_seen = 0
    end = time.monotonic() + 120
    while not all(r_.done() for r_ in readers) and time.monotonic() < end:
        st = Path(f"/proc/{m.pid}/status").read_text()
        threads_seen = max(threads_seen, int(st.split("Threads:")[1].split()[0]))
        time.sleep(0.02)  # sampling the thread count, not synchronising
    for k, r_ in enumerate(readers):
        got = r_.result(120)
        assert len(got) == size and got == expected(k), f"{names[k]}: wrong contents"
    for nm in names:
        assert m.state(nm) == "complete"
        assert m.xattr(nm, "size") == str(size)
    parked.wait(0)
    assert threads_seen < n, f"the daemon ran {threads_seen} threads for {n} streams"


# ------------------------------------------------------ open/read/close storms

@pytest.mark.timeout(240)
def test_open_read_close_storms_from_several_processes(mount, tmp_path, fifo):
    gate = fifo("gate")
    sizes = [0, 1, 4095, 4096, 65537, 300_000, 1_000_000, 3_000_001]
    specs, names = [], []
    for k, size in enumerate(sizes):
        make_data(tmp_path / f"d{k}", size)
        names.append(f"f{k}.bin")
        specs.append(f"f{k}.bin=cmd:echo x >> {q(tmp_path / f'log{k}')}; "
                     f"cat {q(tmp_path / f'd{k}')}")
    head = 50_000
    make_data(tmp_path / "stalled", 200_000)
    specs.append(f"stalled.bin={gated_cmd(tmp_path / 'stalled', head, gate)}")
    m = mount(*specs)
    m.start("stalled.bin").result()
    m.wait_bytes("stalled.bin", head)

    go = tmp_path / "go"
    args = [f"{nm}:{tmp_path / f'd{k}'}:-" for k, nm in enumerate(names)]
    args.append(f"stalled.bin:{tmp_path / 'stalled'}:{head}")
    procs = [spawn(storm_argv(m.path, go, seed, 150, args)) for seed in range(6)]
    try:
        go.touch()
        total = 0
        for p in procs:
            rc, out, err = reap(p, 180)
            assert rc == 0, f"storm process failed: {err.decode(errors='replace')}"
            total += int(out)
    finally:
        stop_all(procs)
    assert total >= 6 * 150
    # However many opened it at once, each stream ran its command once (S7).
    for k in range(len(sizes)):
        assert (tmp_path / f"log{k}").read_text() == "x\n", f"f{k}.bin started more than once"
    assert m.state("stalled.bin") == "running"
    gate.close()
    assert call(read_all, m / "stalled.bin", timeout=30) == (tmp_path / "stalled").read_bytes()
