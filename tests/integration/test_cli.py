"""
The command line and the daemon's life cycle: bad input fails before
mounting with one clear line; background mode returns only once the mount
is usable; stdin survives daemonizing; the manifest.
"""
import json
import os
import subprocess

import pytest

from helpers import (DEADLINE, Background, call, make_data, mount_count, mounted, pid_alive, q,
                     read_all, run, sha256, wait_until)


def one_error_line(r):
    lines = r.stderr.splitlines()
    assert r.returncode != 0, f"exit 0 for a bad command line; stderr: {r.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("streamfs:"), \
        f"expected exactly one line starting 'streamfs:' on stderr, got: {r.stderr!r}"
    assert len(lines[0]) > len("streamfs: "), "the line must say what is wrong"
    return lines[0]


def write_manifest(tmp_path, text, name="streamfs.ini"):
    p = tmp_path / name
    p.write_text(text)
    return p


def plain_file(tmp_path):
    p = tmp_path / "plain"
    p.write_text("x")
    return p


# case: (arguments given a fresh mount point and tmp_path, a word the one
# error line must contain to name what is wrong)
BAD = {
    "unknown-source-kind": (lambda mnt, t: [mnt, "a=foo:bar"], "foo:bar"),
    "missing-equals": (lambda mnt, t: [mnt, "abc"], "abc"),
    "name-dotdot": (lambda mnt, t: [mnt, "../x=cmd:true"], "../x"),
    "name-inner-dotdot": (lambda mnt, t: [mnt, "a/../b=cmd:true"], "a/../b"),
    "name-empty-part": (lambda mnt, t: [mnt, "a//b=cmd:true"], "a//b"),
    "name-absolute": (lambda mnt, t: [mnt, "/abs=cmd:true"], "/abs"),
    "name-trailing-slash": (lambda mnt, t: [mnt, "dir/=cmd:true"], "dir/"),
    "name-empty": (lambda mnt, t: [mnt, "=cmd:true"], "name"),
    "name-component-too-long": (lambda mnt, t: [mnt, "d/" + "x" * 256 + "=cmd:true"], "x" * 20),
    "bad-url-scheme": (lambda mnt, t: [mnt, "a=gopher://example.com/x"], "gopher"),
    "url-without-host": (lambda mnt, t: [mnt, "a=http://"], "http://"),
    "empty-command": (lambda mnt, t: [mnt, "a=cmd:"], "a"),
    "empty-pipe-path": (lambda mnt, t: [mnt, "a=pipe:"], "a"),
    "duplicate-name": (lambda mnt, t: [mnt, "a=cmd:true", "a=cmd:false"], "a"),
    "file-and-directory": (lambda mnt, t: [mnt, "a=cmd:true", "a/b=cmd:true"], "a"),
    "directory-and-file": (lambda mnt, t: [mnt, "a/b=cmd:true", "a=cmd:true"], "a"),
    "missing-mountpoint": (lambda mnt, t: [t / "no-such-dir", "a=cmd:true"], "no-such-dir"),
    "mountpoint-is-a-file": (lambda mnt, t: [plain_file(t), "a=cmd:true"], "plain"),
    "unreadable-manifest": (lambda mnt, t: ["-c", "/nonexistent/streamfs.ini", mnt],
                            "/nonexistent/streamfs.ini"),
    "manifest-unknown-key": (lambda mnt, t: [
        "-c", write_manifest(t, "[a]\nsource = cmd:true\nsise = 5\n"), mnt], "sise"),
    "manifest-without-source": (lambda mnt, t: [
        "-c", write_manifest(t, "[a]\nsize = wait\n"), mnt], "source"),
    "manifest-duplicates-command-line": (lambda mnt, t: [
        "-c", write_manifest(t, "[a]\nsource = cmd:true\n"), mnt, "a=cmd:false"], "a"),
    "two-stdin-sources": (lambda mnt, t: [mnt, "a=-", "b=-"], "b"),
    "bad-size": (lambda mnt, t: ["--size=abc", mnt, "a=cmd:true"], "abc"),
    "bad-start": (lambda mnt, t: ["--start=never", mnt, "a=cmd:true"], "never"),
    "bad-read": (lambda mnt, t: ["--read=some", mnt, "a=cmd:true"], "some"),
    "unknown-option": (lambda mnt, t: ["--no-such-option", mnt, "a=cmd:true"],
                       "--no-such-option"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_command_line(mount_fail, tmp_path, case):
    mnt = mount_fail.new_mountpoint()
    args, word = BAD[case]
    r = mount_fail(*args(mnt, tmp_path), check_mountpoint=mnt)
    line = one_error_line(r)
    assert word in line, f"the error should name {word!r}: {line!r}"
    assert not mounted(mnt)


def test_bad_command_line_in_background_mode(mount_fail, tmp_path):
    mnt = mount_fail.new_mountpoint()
    r = mount_fail(mnt, "a=foo:bar", foreground=False, check_mountpoint=mnt)
    one_error_line(r)


def test_no_mountpoint_at_all(mount_fail):
    one_error_line(mount_fail())


def test_busy_mountpoint(mount, mount_fail):
    m = mount("a.txt=cmd:echo first")
    r = mount_fail(m.path, "b.txt=cmd:echo second")
    one_error_line(r)
    assert mount_count(m.path) == 1
    assert call(read_all, m / "a.txt") == b"first\n"


def test_busy_mountpoint_with_blanks_in_its_path(mount, mount_fail, tmp_path):
    """The mount table writes ' ' as \\040 and a tab as \\011: a mount point
    with blanks in its name is still recognised as already mounted."""
    m = mount("a.txt=cmd:echo first", mountpoint=tmp_path / "my mnt\tdir")
    r = mount_fail(m.path, "b.txt=cmd:echo second")
    assert "already mounted" in one_error_line(r)
    assert mount_count(m.path) == 1
    assert call(read_all, m / "a.txt") == b"first\n"


def test_version_and_help(streamfs_cli):
    r = streamfs_cli("--version")
    assert r.returncode == 0 and r.stdout.strip(), r
    r = streamfs_cli("--help")
    assert r.returncode == 0 and "MOUNTPOINT" in r.stdout, r


def test_background_mount_is_usable_when_streamfs_returns(mount, tmp_path):
    data = make_data(tmp_path / "data", 100_000)
    m = mount(f"a.bin=cmd:cat {q(tmp_path / 'data')}", "d/b.txt=cmd:echo b", foreground=False)
    assert m.proc.returncode == 0
    # No waiting: the mount must already answer.
    assert call(os.stat, m / "a.bin").st_size > 0
    assert call(read_all, m / "a.bin") == data
    pid = m.pid
    assert pid != m.proc.pid and pid_alive(pid)
    r = run(["fusermount3", "-u", m.path], timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not pid_alive(pid), what=f"daemon {pid} to exit after fusermount3 -u")
    assert not mounted(m.path)


def test_stdin_kept_across_daemonizing(mount, fifo):
    """producer | streamfs MNT data.bin=-   (background mode)"""
    f = fifo()
    producer = subprocess.Popen(["sh", "-c", f.cat], stdout=subprocess.PIPE)
    try:
        m = mount("data.bin=-", stdin=producer.stdout, foreground=False)
        producer.stdout.close()
        data = os.urandom(500_000)
        reader = Background(read_all, m / "data.bin")
        f.write(data)  # produced only after streamfs returned
        f.close()
        assert sha256(reader.result(30)) == sha256(data)
        m.wait_state("data.bin", "complete")
    finally:
        f.abandon()
        producer.wait(DEADLINE)


def test_stdin_source_foreground_fed_by_the_test(mount):
    m = mount("in.bin=-", stdin=subprocess.PIPE)
    data = os.urandom(300_000)
    m.proc.stdin.write(data[:100_000])
    m.proc.stdin.flush()
    assert call(os.stat, m / "in.bin").st_size > 0
    m.wait_bytes("in.bin", 100_000)
    assert m.state("in.bin") == "running"
    m.proc.stdin.write(data[100_000:])
    m.proc.stdin.close()
    m.wait_state("in.bin", "complete")
    assert call(read_all, m / "in.bin") == data


def test_manifest(mount, tmp_path, fifo):
    marker = tmp_path / "started"
    fb, fd_ = fifo("b"), fifo("d")
    ini = write_manifest(tmp_path, f"""\
# streamfs manifest
[a.txt]
source = cmd:printf hello

[dir/b.bin]
source = pipe:{fb.path}
size = 5000

[c.txt]
source = cmd:touch {q(marker)}; echo c
start = mount

[d.bin]
source = cmd:{fd_.cat}
read = partial
""")
    m = mount("e.txt=cmd:echo e", opts=["-c", ini])
    assert sorted(os.listdir(m.path)) == ["a.txt", "c.txt", "d.bin", "dir", "e.txt"]
    assert os.listdir(m / "dir") == ["b.bin"]
    # start = mount
    wait_until(marker.exists, what="[c.txt] start = mount")
    assert m.state("a.txt") == "idle"
    assert call(read_all, m / "a.txt") == b"hello"
    assert call(read_all, m / "e.txt") == b"e\n"
    assert m.xattr("a.txt", "source") == "cmd:printf hello"
    # size = 5000 (declared)
    b_data = os.urandom(5000)
    m.start("dir/b.bin")
    fb.write(b_data[:100])
    assert call(os.stat, m / "dir/b.bin").st_size == 5000
    fb.write(b_data[100:])
    fb.close()
    assert call(read_all, m / "dir/b.bin") == b_data
    # read = partial
    m.start("d.bin")
    fd_.write(b"0123456789")
    m.wait_bytes("d.bin", 10)
    fd = call(os.open, str(m / "d.bin"), os.O_RDONLY)
    try:
        assert call(os.pread, fd, 1000, 0, timeout=5) == b"0123456789"
    finally:
        os.close(fd)
    fd_.close()


@pytest.mark.parametrize("opts", [["-v"], ["-q"], ["-o", "allow_other"], ["-oallow_other,noatime"]])
def test_log_and_fuse_options(mount, opts):
    m = mount("a.txt=cmd:echo a", opts=opts)
    assert call(read_all, m / "a.txt") == b"a\n"
    if "allow_other" in "".join(opts):
        line = [ln for ln in open("/proc/self/mountinfo") if f" {m.path} " in ln]
        assert line and "allow_other" in line[0], line


def test_mount_with_no_files(mount, streamfs_cli):
    m = mount()
    assert os.listdir(m.path) == []
    r = streamfs_cli("status", "--json", m.path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == []
