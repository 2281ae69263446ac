"""
Delayed errors (S4, S5 of docs/DESIGN.md): a source that fails after E bytes keeps
bytes before E readable, gives EIO exactly at E, and shows the failure in
status at once, before any reader reaches it.
"""
import errno
import os
import re
import signal

import pytest

from helpers import (DEADLINE, Background, assert_blocked, call, make_data, q, read_all,
                     wait_blocked_in_read, wait_until)


def open_fd(path):
    return call(os.open, str(path), os.O_RDONLY, what=f"open {path}")


def assert_eio(fn, *args):
    with pytest.raises(OSError) as e:
        call(fn, *args)
    assert e.value.errno == errno.EIO, f"expected EIO, got {e.value!r}"


def check_cut(m, name, data, n):
    """Bytes before @n read back, a read spanning @n is short, at/after @n EIO."""
    fd = open_fd(m / name)
    try:
        assert call(os.pread, fd, n, 0) == data[:n]
        assert call(os.pread, fd, 100, n - 10) == data[n - 10:n]
        assert_eio(os.pread, fd, 1, n)
        assert_eio(os.pread, fd, 100, n + 5000)
        assert call(os.pread, fd, 10, 0) == data[:10], "data before the cut stays readable"
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        call(read_all, m / name)
    assert e.value.errno == errno.EIO


def test_cmd_exits_3_after_n_bytes(mount, tmp_path, streamfs_cli):
    n = 50_000
    data = make_data(tmp_path / "data", 80_000)
    m = mount(f"e.bin=cmd:head -c {n} {q(tmp_path / 'data')}; exit 3")
    call(os.stat, m / "e.bin")  # starts the stream
    # The failure is visible at once, before any reader reached the cut.
    m.wait_state("e.bin", "failed")
    assert "exit 3" in (m.xattr("e.bin", "error") or "")
    assert m.xattr("e.bin", "exit_status") == "3"
    assert m.xattr("e.bin", "error_offset") == str(n)
    assert m.xattr("e.bin", "bytes") == str(n)
    r = streamfs_cli("status", m.path)
    assert r.returncode == 0, r.stderr
    row = [line for line in r.stdout.splitlines() if line.split() and line.split()[0] == "e.bin"]
    assert len(row) == 1 and "failed" in row[0] and "exit 3" in row[0], r.stdout
    check_cut(m, "e.bin", data, n)


def test_failure_visible_while_a_reader_is_behind_and_wakes_waiters(mount, fifo):
    f = fifo()
    m = mount(f"e.bin=cmd:{f.cat}; exit 3")
    data = os.urandom(20_000)
    m.start("e.bin")
    f.write(data[:10_000])
    m.wait_bytes("e.bin", 10_000)
    fd = open_fd(m / "e.bin")
    try:
        assert call(os.pread, fd, 100, 0) == data[:100]      # a reader well behind
        ahead = Background(os.pread, fd, 100, 15_000)       # parked past the cut
        spanning = Background(os.pread, fd, 1000, 9_500)    # parked across the cut
        wait_blocked_in_read(threads=[ahead, spanning])
        f.close()                                           # cat ends, sh exits 3
        m.wait_state("e.bin", "failed")
        assert m.xattr("e.bin", "error_offset") == "10000"
        assert m.xattr("e.bin", "exit_status") == "3"
        err = ahead.error()
        assert isinstance(err, OSError) and err.errno == errno.EIO, f"parked read got {err!r}"
        assert spanning.result() == data[9_500:10_000]
        assert call(os.pread, fd, 100, 100) == data[100:200]  # the slow reader goes on
    finally:
        os.close(fd)
    check_cut(m, "e.bin", data, 10_000)


def test_cmd_killed_by_signal_mid_stream(mount, tmp_path):
    n = 30_000
    data = make_data(tmp_path / "data", 60_000)
    m = mount(f"k.bin=cmd:head -c {n} {q(tmp_path / 'data')}; kill -KILL $$")
    call(os.stat, m / "k.bin")
    m.wait_state("k.bin", "failed")
    assert m.xattr("k.bin", "exit_status") == str(128 + signal.SIGKILL)
    assert m.xattr("k.bin", "error_offset") == str(n)
    assert re.search(r"signal|kill", m.xattr("k.bin", "error") or "", re.I), \
        m.xattr("k.bin", "error")
    check_cut(m, "k.bin", data, n)


def test_cmd_killed_from_outside(mount, tmp_path, fifo):
    f = fifo()
    pidfile = tmp_path / "pid"
    m = mount(f"k.bin=cmd:echo $$ > {q(pidfile)}; exec {f.cat}")
    data = os.urandom(5000)
    m.start("k.bin")
    f.write(data)
    m.wait_bytes("k.bin", 5000)
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="pidfile"))
    os.kill(pid, signal.SIGTERM)
    m.wait_state("k.bin", "failed")
    assert m.xattr("k.bin", "exit_status") == str(128 + signal.SIGTERM)
    assert m.xattr("k.bin", "error_offset") == "5000"
    check_cut(m, "k.bin", data, 5000)


def test_cmd_not_found(mount):
    m = mount("nf.bin=cmd:streamfs-no-such-command-4711 --flag")
    st = call(os.stat, m / "nf.bin")  # stat of a failed stream still succeeds
    assert st.st_size == 0
    with pytest.raises(OSError) as e:
        call(os.open, str(m / "nf.bin"), os.O_RDONLY)
    assert e.value.errno == errno.EIO
    assert m.state("nf.bin") == "failed"
    assert "not found" in (m.xattr("nf.bin", "error") or "")
    assert m.xattr("nf.bin", "exit_status") == "127"
    assert m.xattr("nf.bin", "bytes") == "0"
    assert m.xattr("nf.bin", "error_offset") == "0"


def test_cmd_not_found_fails_the_first_open(mount):
    """Open is what starts this stream; it waits for the failure itself."""
    m = mount("nf.bin=cmd:streamfs-no-such-command-4711")
    with pytest.raises(OSError) as e:
        call(os.open, str(m / "nf.bin"), os.O_RDONLY)
    assert e.value.errno == errno.EIO
    assert m.state("nf.bin") == "failed"


def test_cmd_not_found_does_not_kill_the_mount(mount, tmp_path):
    data = make_data(tmp_path / "data", 1000)
    m = mount("nf.bin=cmd:streamfs-no-such-command-4711", f"ok.bin=cmd:cat {q(tmp_path / 'data')}")
    with pytest.raises(OSError):
        call(os.open, str(m / "nf.bin"), os.O_RDONLY)
    assert call(read_all, m / "ok.bin") == data
    assert m.alive()


def test_fifo_writer_closing_early_is_the_end(mount, fifo):
    f = fifo()
    m = mount(f"p.bin=pipe:{f.path}", opts=["--start=mount"])
    data = os.urandom(1234)
    f.write(data)
    f.close()
    m.wait_state("p.bin", "complete")
    assert m.xattr("p.bin", "error") is None
    assert m.xattr("p.bin", "size") == "1234"
    assert call(os.stat, m / "p.bin").st_size == 1234
    assert call(read_all, m / "p.bin") == data


def test_cmd_exit_0_is_complete_with_exit_status(mount, tmp_path):
    data = make_data(tmp_path / "data", 4000)
    m = mount(f"ok.bin=cmd:cat {q(tmp_path / 'data')}")
    assert call(read_all, m / "ok.bin") == data
    m.wait_state("ok.bin", "complete")
    wait_until(lambda: m.xattr("ok.bin", "exit_status") == "0", what="exit_status 0")
    assert m.xattr("ok.bin", "error") is None
    assert m.xattr("ok.bin", "error_offset") is None


def test_error_message_carries_the_commands_stderr(mount):
    m = mount("e.txt=cmd:echo data; echo 'oops: disk on fire' >&2; exit 4")
    call(os.stat, m / "e.txt")
    m.wait_state("e.txt", "failed")
    err = m.xattr("e.txt", "error") or ""
    assert "exit 4" in err and "oops: disk on fire" in err, err
    assert m.xattr("e.txt", "error_offset") == "5"


def test_pipe_source_that_does_not_exist(mount, tmp_path):
    missing = tmp_path / "no-such-fifo"
    m = mount(f"p.bin=pipe:{missing}")
    with pytest.raises(OSError) as e:
        call(os.open, str(m / "p.bin"), os.O_RDONLY)
    assert e.value.errno == errno.EIO
    assert m.state("p.bin") == "failed"
    err = m.xattr("p.bin", "error") or ""
    assert "No such file" in err or str(missing) in err, err


def test_commands_do_not_read_the_daemons_stdin(mount, tmp_path):
    """A cmd: source that reads stdin must not steal the '-' stream."""
    data = make_data(tmp_path / "data", 200_000)
    with open(tmp_path / "data", "rb") as src:
        m = mount("in.bin=-", "c.txt=cmd:cat; echo done", opts=["--start=mount"], stdin=src)
    m.wait_state("c.txt", {"complete", "failed"})
    assert call(read_all, m / "c.txt") == b"done\n"
    assert call(read_all, m / "in.bin") == data


def test_exit_status_absent_while_the_command_runs(mount, fifo):
    f = fifo()
    m = mount(f"r.bin=cmd:{f.cat}")
    m.start("r.bin")
    f.write(b"abc")
    m.wait_bytes("r.bin", 3)
    assert m.state("r.bin") == "running"
    assert m.xattr("r.bin", "exit_status") is None
    assert m.xattr("r.bin", "error") is None
    assert m.xattr("r.bin", "error_offset") is None
    f.close()
    m.wait_state("r.bin", "complete")
    wait_until(lambda: m.xattr("r.bin", "exit_status") == "0", what="exit_status 0")


def test_open_waiting_for_first_bytes_gets_eio_when_the_stream_fails_empty(mount, fifo):
    f = fifo()
    m = mount(f"e.bin=cmd:{f.cat}; exit 3")
    opener = Background(os.open, str(m / "e.bin"), os.O_RDONLY)
    f.connect()          # cat is running: the stream has started
    assert_blocked(opener, what="open before the first byte")
    f.close()            # no byte at all, then exit 3
    err = opener.error()
    assert isinstance(err, OSError) and err.errno == errno.EIO, \
        f"open of a stream that failed empty: {err!r} / {opener.value()!r}"
    assert m.state("e.bin") == "failed"


def test_open_waiting_for_first_bytes_of_an_empty_stream(mount, fifo):
    f = fifo()
    m = mount(f"z.bin=cmd:{f.cat}")
    opener = Background(os.open, str(m / "z.bin"), os.O_RDONLY)
    f.connect()
    assert_blocked(opener, what="open before the first byte")
    f.close()
    fd = opener.result()
    try:
        assert call(os.read, fd, 100) == b""
        assert call(os.fstat, fd).st_size == 0
    finally:
        os.close(fd)
    assert m.state("z.bin") == "complete"


def test_stat_waiting_for_the_end_returns_when_the_stream_fails(mount, fifo):
    f = fifo()
    m = mount(f"e.bin=cmd:{f.cat}; exit 3", opts=["--size=wait"])
    m.start("e.bin")
    f.write(b"x" * 1000)
    m.wait_bytes("e.bin", 1000)
    st = Background(os.stat, m / "e.bin")
    assert_blocked(st, what="stat with --size=wait before the end")
    f.close()
    st.wait(DEADLINE)
    assert st.done(), "stat waiting for the end hung after the stream failed"
    assert m.state("e.bin") == "failed"
