"""
streamfs add / streamfs rm on a live mount: files appear and disappear
without remounting, bad requests are refused with one line, and removing a
stream wakes its readers and stops its command.
"""
import errno
import os

import pytest

from helpers import (Background, call, make_data, pid_alive, q, read_all, run, sha256,
                     wait_until)


def add(bin_, mnt, *args):
    return run([bin_, "add", str(mnt), *args], timeout=20)


def rm(bin_, mnt, name):
    return run([bin_, "rm", str(mnt), name], timeout=20)


def test_add_then_read_and_list(mount, streamfs_bin, tmp_path):
    src = tmp_path / "data.bin"
    data = make_data(src, 300_000)
    m = mount("first.txt=cmd:echo first")
    # a listing is cached by the kernel; the add must invalidate it
    assert sorted(os.listdir(m.path)) == ["first.txt"]
    r = add(streamfs_bin, m.path, f"more/data.bin=cmd:cat {q(src)}", "size=wait")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert sorted(os.listdir(m.path)) == ["first.txt", "more"]
    assert os.listdir(m / "more") == ["data.bin"]
    assert m.state("more/data.bin") == "idle", "add starts nothing (start=access)"
    # size=wait: stat shows the final size
    assert call(os.stat, m / "more/data.bin").st_size == len(data)
    assert sha256(call(read_all, m / "more/data.bin")) == sha256(data)
    assert m.xattr("more/data.bin", "source") == f"cmd:cat {q(src)}"


def test_add_with_start_mount_starts_at_once(mount, streamfs_bin, tmp_path):
    marker = tmp_path / "started"
    m = mount("a=cmd:true")
    r = add(streamfs_bin, m.path, f"b=cmd:touch {q(marker)}; echo b", "--start=mount")
    assert r.returncode == 0, r.stderr
    wait_until(marker.exists, 10, "the added command to start")
    m.wait_state("b", "complete")


def test_add_refuses_bad_requests(mount, streamfs_bin):
    m = mount("a=cmd:echo a")
    cases = [
        ["a=cmd:echo again"],            # duplicate name
        ["../x=cmd:true"],               # bad name
        ["x=nosuch:thing"],              # unknown source kind
        ["x=cmd:true", "size=banana"],   # bad option value
        ["x=cmd:true", "colour=red"],    # unknown option
        ["x=-"],                         # stdin only at mount time
    ]
    for args in cases:
        r = add(streamfs_bin, m.path, *args)
        assert r.returncode != 0, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("streamfs: "), (args, r.stderr)
    assert sorted(os.listdir(m.path)) == ["a"], "nothing half-added"
    r = run([streamfs_bin, "add", str(m.path)], timeout=10)
    assert r.returncode == 2


def test_rm_wakes_readers_and_stops_the_command(mount, streamfs_bin, tmp_path):
    pidfile = tmp_path / "pid"
    m = mount(f"slow=cmd:echo $$ > {q(pidfile)}; echo begin; exec sleep 1000", "keep=cmd:echo k")
    reader = Background(read_all, str(m / "slow"), name="reader of slow")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the command")
    pid = int(pidfile.read_text())
    wait_until(lambda: m.xattr("slow", "waiters") not in (None, "0"), 10, "a parked reader")
    r = rm(streamfs_bin, m.path, "slow")
    assert r.returncode == 0, r.stderr
    e = reader.error(10, "the waiting reader to be woken")
    assert isinstance(e, OSError) and e.errno == errno.EIO, e
    assert "slow" not in os.listdir(m.path)
    with pytest.raises(FileNotFoundError):
        os.stat(m / "slow")
    wait_until(lambda: not pid_alive(pid), 10, "the removed stream's command to die")
    assert call(read_all, m / "keep") == b"k\n", "other files are untouched"


def test_rm_keeps_open_handles_readable(mount, streamfs_bin, tmp_path):
    src = tmp_path / "d"
    data = make_data(src, 100_000)
    m = mount(f"d=cmd:cat {q(src)}")
    fd = call(os.open, str(m / "d"), os.O_RDONLY)
    try:
        m.wait_state("d", "complete")
        r = rm(streamfs_bin, m.path, "d")
        assert r.returncode == 0, r.stderr
        assert "d" not in os.listdir(m.path)
        assert call(os.pread, fd, len(data), 0) == data
    finally:
        os.close(fd)


@pytest.mark.parametrize("passthrough", ["on", "off"])
def test_rm_keeps_files_opened_after_the_end_readable_to_their_end(mount, streamfs_bin,
                                                                  tmp_path, passthrough):
    """A file opened once the stream is complete (page-cache mode, or read
    straight from the store) and read past its end after rm: the kernel
    asks for the size again (GETATTR with the file's handle), which the
    handle answers although its node is gone."""
    src = tmp_path / "d"
    data = make_data(src, 300_000)
    m = mount(f"d=cmd:cat {q(src)}", env={"STREAMFS_PASSTHROUGH": passthrough})
    assert call(read_all, m / "d") == data
    m.wait_state("d", "complete")
    fd = call(os.open, str(m / "d"), os.O_RDONLY)
    try:
        r = rm(streamfs_bin, m.path, "d")
        assert r.returncode == 0, r.stderr
        assert call(os.pread, fd, len(data) + 1, 0) == data
        assert call(os.pread, fd, 10, len(data)) == b""
        assert call(os.fstat, fd).st_size == len(data)
    finally:
        os.close(fd)


def test_rm_prunes_empty_directories_and_refuses_unknown(mount, streamfs_bin):
    m = mount("dir/sub/a=cmd:echo a", "dir/b=cmd:echo b")
    assert rm(streamfs_bin, m.path, "dir/sub/a").returncode == 0
    assert os.listdir(m / "dir") == ["b"]
    assert rm(streamfs_bin, m.path, "dir/b").returncode == 0
    assert os.listdir(m.path) == []
    r = rm(streamfs_bin, m.path, "nope")
    assert r.returncode != 0 and "no file named 'nope'" in r.stderr
    r = rm(streamfs_bin, m.path, "dir")
    assert r.returncode != 0


def test_control_needs_a_streamfs_mount(streamfs_bin, tmp_path):
    r = run([streamfs_bin, "rm", str(tmp_path), "x"], timeout=10)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1
