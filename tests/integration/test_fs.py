"""
The file-system face: start policy (S1), directories, read-only (S10),
status xattrs and the `streamfs status` command.
"""
import errno
import os
import stat

import pytest

from helpers import (STATES, Background, assert_blocked, call, make_data, q, read_all, run,
                     status_files, status_json, wait_until, xattr)


# ------------------------------------------------------------ start policy

def test_ls_does_not_start_a_stream_stat_does(mount, tmp_path, streamfs_bin):
    marker = tmp_path / "started"
    m = mount(f"a.txt=cmd:touch {q(marker)}; echo hello")
    assert sorted(os.listdir(m.path)) == ["a.txt"]
    assert [e.name for e in os.scandir(m.path)] == ["a.txt"]
    r = run(["ls", "-1", "--color=never", m.path], timeout=10)
    assert r.returncode == 0 and r.stdout.split() == ["a.txt"]
    r = run([streamfs_bin, "status", m.path], timeout=10)
    assert r.returncode == 0, r.stderr
    status_json(streamfs_bin, m.path)
    # xattrs by path (getfattr would lstat the file, and stat starts it)
    for key in os.listxattr(m / "a.txt"):
        os.getxattr(m / "a.txt", key)
    # The state changes synchronously when a stream starts, so "idle" now
    # means nothing above started it.
    assert m.state("a.txt") == "idle"
    assert m.xattr("a.txt", "bytes") == "0"
    assert not marker.exists()
    st = call(os.stat, m / "a.txt")
    assert st.st_size > 0, "stat waits for the first bytes"
    assert marker.exists()
    assert m.state("a.txt") in ("running", "complete")
    assert call(read_all, m / "a.txt") == b"hello\n"


def test_open_starts_a_stream(mount, tmp_path):
    marker = tmp_path / "started"
    m = mount(f"a.txt=cmd:touch {q(marker)}; echo hello")
    assert m.state("a.txt") == "idle"
    fd = call(os.open, str(m / "a.txt"), os.O_RDONLY)
    try:
        assert marker.exists()
        assert m.state("a.txt") in ("running", "complete")
        assert call(os.read, fd, 100) == b"hello\n"
    finally:
        os.close(fd)


def test_start_mount_starts_at_mount(mount, tmp_path):
    marker = tmp_path / "started"
    m = mount(f"a.txt=cmd:touch {q(marker)}; echo hello", opts=["--start=mount"])
    wait_until(marker.exists, what="the command to run without any access")
    m.wait_state("a.txt", "complete")
    assert m.xattr("a.txt", "bytes") == "6"


def test_start_mount_fills_in_the_background(mount, tmp_path):
    """S1: the producer pulls bytes whether or not anyone reads."""
    data = make_data(tmp_path / "data", 3_000_000)
    m = mount(f"a.bin=cmd:cat {q(tmp_path / 'data')}", opts=["--start=mount"])
    m.wait_state("a.bin", "complete", timeout=30)
    assert m.xattr("a.bin", "bytes") == str(len(data))
    assert call(read_all, m / "a.bin") == data


# ------------------------------------------------------------ directories

def test_subdirectories(mount, tmp_path):
    m = mount("top.txt=cmd:echo top", "a/b/c.txt=cmd:echo c", "a/d.txt=cmd:echo d",
              "x/y/z/w.bin=cmd:echo w")
    assert sorted(os.listdir(m.path)) == ["a", "top.txt", "x"]
    assert sorted(os.listdir(m / "a")) == ["b", "d.txt"]
    assert os.listdir(m / "a/b") == ["c.txt"]
    assert os.listdir(m / "x/y/z") == ["w.bin"]
    for d in ("a", "a/b", "x", "x/y", "x/y/z"):
        st = os.stat(m / d)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555, d
    walked = sorted(os.path.relpath(os.path.join(root, f), m.path)
                    for root, _, files in os.walk(m.path) for f in files)
    assert walked == ["a/b/c.txt", "a/d.txt", "top.txt", "x/y/z/w.bin"]
    r = run(["ls", "-R", m.path], timeout=10)
    assert r.returncode == 0, r.stderr
    for name in ("top.txt", "c.txt", "d.txt", "w.bin", "a/b:", "x/y/z:"):
        assert name in r.stdout, r.stdout
    assert call(read_all, m / "a/b/c.txt") == b"c\n"
    assert call(read_all, m / "x/y/z/w.bin") == b"w\n"
    with pytest.raises(FileNotFoundError):
        os.stat(m / "a/nope")
    with pytest.raises(NotADirectoryError):
        os.listdir(m / "top.txt")
    # Listing and walking started nothing.
    assert m.state("a/d.txt") == "idle"


# ------------------------------------------------------------ read-only (S10)

RO_ERRNOS = (errno.EROFS, errno.EACCES)


def expect_ro(fn, *args):
    with pytest.raises(OSError) as e:
        call(fn, *args)
    assert e.value.errno in RO_ERRNOS, f"{fn.__name__}{args}: {e.value!r}"


def test_read_only(mount, tmp_path):
    data = make_data(tmp_path / "data", 5000)
    m = mount(f"f.bin=cmd:cat {q(tmp_path / 'data')}", "d/g.bin=cmd:echo g")
    assert call(read_all, m / "f.bin") == data
    p = str(m / "f.bin")
    expect_ro(os.open, p, os.O_WRONLY)
    expect_ro(os.open, p, os.O_RDWR)
    expect_ro(os.open, p, os.O_WRONLY | os.O_TRUNC)
    expect_ro(os.open, p, os.O_WRONLY | os.O_APPEND)
    expect_ro(os.open, str(m / "new.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
    expect_ro(os.open, str(m / "d/new.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
    expect_ro(os.truncate, p, 0)
    expect_ro(os.mkdir, str(m / "newdir"))
    expect_ro(os.rmdir, str(m / "d"))
    expect_ro(os.unlink, p)
    expect_ro(os.rename, p, str(m / "renamed.bin"))
    expect_ro(os.symlink, "f.bin", str(m / "link"))
    expect_ro(os.link, p, str(m / "hardlink"))
    expect_ro(os.chmod, p, 0o666)
    expect_ro(os.setxattr, p, "user.test", b"x")
    expect_ro(os.setxattr, p, "user.streamfs.state", b"complete")
    expect_ro(os.removexattr, p, "user.streamfs.state")
    r = run(["sh", "-c", f"echo hi > {q(p)}"], timeout=10)
    assert r.returncode != 0
    # nothing changed
    assert sorted(os.listdir(m.path)) == ["d", "f.bin"]
    assert call(read_all, m / "f.bin") == data
    assert m.state("f.bin") == "complete"


def mount_options(path):
    """The per-mount options of @path in /proc/self/mountinfo (field 6)."""
    want = os.path.realpath(str(path))
    for ln in open("/proc/self/mountinfo"):
        f = ln.split()
        if f[4] == want:
            return f[5].split(",")
    raise AssertionError(f"{path} is not in /proc/self/mountinfo")


@pytest.mark.parametrize("opts", [["-o", "rw"], ["-orw,noatime"], ["-o", "ro", "-o", "rw"]])
def test_rw_option_is_ignored(mount, opts):
    """-o rw (mount(8) passes it for fstab's "defaults") cannot make the
    mount writable: it stays ro, and writes get EROFS from the kernel."""
    m = mount("f.bin=cmd:echo f", opts=opts)
    assert "ro" in mount_options(m.path) and "rw" not in mount_options(m.path)
    for fn, args in [(os.open, (str(m / "new.bin"), os.O_WRONLY | os.O_CREAT, 0o644)),
                     (os.open, (str(m / "f.bin"), os.O_WRONLY)),
                     (os.mkdir, (str(m / "newdir"),))]:
        with pytest.raises(OSError) as e:
            call(fn, *args)
        assert e.value.errno == errno.EROFS, f"{fn.__name__}{args}: {e.value!r}"
    assert call(read_all, m / "f.bin") == b"f\n"


# ------------------------------------------------------------ xattrs

def test_xattrs_of_a_complete_cmd_file(mount, tmp_path):
    data = make_data(tmp_path / "data", 12_345)
    source = f"cmd:cat {q(tmp_path / 'data')}"
    m = mount(f"f.bin={source}")
    assert call(read_all, m / "f.bin") == data
    m.wait_state("f.bin", "complete")
    assert m.xattr("f.bin", "bytes") == "12345"
    assert m.xattr("f.bin", "size") == "12345"
    assert m.xattr("f.bin", "source") == source
    assert m.xattr("f.bin", "kind") == "cmd"
    assert m.xattr("f.bin", "error") is None
    names = os.listxattr(m / "f.bin")
    for key in ("state", "bytes", "size", "source", "kind"):
        assert f"user.streamfs.{key}" in names
    assert "user.streamfs.error" not in names
    r = run(["getfattr", "-d", m / "f.bin"], timeout=10)
    assert r.returncode == 0, r.stderr
    for line in ('user.streamfs.state="complete"', 'user.streamfs.bytes="12345"',
                 'user.streamfs.size="12345"'):
        assert line in r.stdout, r.stdout
    assert "user.streamfs.source=" in r.stdout


def test_xattrs_of_an_idle_file(mount, tmp_path):
    marker = tmp_path / "started"
    source = f"cmd:touch {q(marker)}; echo x"
    m = mount(f"i.txt={source}")
    assert m.state("i.txt") == "idle"
    assert m.xattr("i.txt", "bytes") == "0"
    assert m.xattr("i.txt", "size") is None
    assert m.xattr("i.txt", "error") is None
    assert m.xattr("i.txt", "exit_status") is None
    assert m.xattr("i.txt", "source") == source
    assert m.xattr("i.txt", "kind") == "cmd"
    names = os.listxattr(m / "i.txt")
    assert "user.streamfs.state" in names and "user.streamfs.size" not in names
    assert m.state("i.txt") == "idle" and not marker.exists(), "reading xattrs started the stream"
    # getfattr lstat()s the file first, and stat starts a stream (S1)
    r = run(["getfattr", "-d", m / "i.txt"], timeout=10)
    assert r.returncode == 0, r.stderr
    assert 'user.streamfs.state="' in r.stdout and 'user.streamfs.source="' in r.stdout


def test_xattrs_never_block_on_a_stalled_stream(mount, fifo):
    f = fifo()
    m = mount(f"s.bin=cmd:{f.cat}", opts=["--size=wait"])
    m.start("s.bin")
    f.write(b"z" * 1000)
    m.wait_bytes("s.bin", 1000)
    stat_waiter = Background(os.stat, m / "s.bin")   # parked until the end
    assert_blocked(stat_waiter)
    for key in ("state", "bytes", "size", "source", "kind", "error", "exit_status"):
        call(xattr, m / "s.bin", key, timeout=5, what=f"getxattr {key}")
    assert call(os.listxattr, str(m / "s.bin"), timeout=5)
    assert m.state("s.bin") == "running"
    assert m.xattr("s.bin", "bytes") == "1000"
    f.close()
    assert stat_waiter.result().st_size == 1000


def test_kind_xattr_per_source(mount, tmp_path, fifo):
    f = fifo()
    with open(os.devnull, "rb") as devnull:
        m = mount("c=cmd:true", f"p=pipe:{f.path}", "s=-", stdin=devnull)
    assert m.xattr("c", "kind") == "cmd"
    assert m.xattr("p", "kind") == "pipe"
    assert m.xattr("s", "kind") == "stdin"
    assert m.xattr("p", "source") == f"pipe:{f.path}"
    assert m.xattr("s", "source") == "-"


def test_root_xattrs(mount):
    m = mount("a=cmd:true")
    assert xattr_int(m.path, "user.streamfs.pid") == m.proc.pid
    version = os.getxattr(m.path, "user.streamfs.version").decode()
    assert version.strip()


def xattr_int(path, key):
    return int(os.getxattr(str(path), key).decode())


# ------------------------------------------------------------ status

def make_status_mount(mount, tmp_path, fifo):
    """One complete, one idle, one failed, one running-and-stalled file."""
    marker = tmp_path / "idle-started"
    f = fifo()
    data = make_data(tmp_path / "data", 7000)
    m = mount(f"done.bin=cmd:cat {q(tmp_path / 'data')}",
              f"idle.txt=cmd:touch {q(marker)}; echo x",
              "bad.bin=cmd:echo partial; exit 3",
              f"sub/run.bin=cmd:{f.cat}")
    assert call(read_all, m / "done.bin") == data
    call(os.stat, m / "bad.bin")
    m.wait_state("bad.bin", "failed")
    m.start("sub/run.bin")
    f.write(b"r" * 500)
    m.wait_bytes("sub/run.bin", 500)
    m.wait_state("done.bin", "complete")
    return m, marker, f


def test_status_table(mount, tmp_path, fifo, streamfs_bin):
    m, marker, f = make_status_mount(mount, tmp_path, fifo)
    r = run([streamfs_bin, "status", m.path], timeout=10)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    header = [i for i, ln in enumerate(lines) if ln.split()[:1] == ["NAME"]]
    assert header, f"no header line starting with NAME:\n{r.stdout}"
    cols = lines[header[0]].split()
    want = ["NAME", "STATE", "BYTES", "SIZE", "SOURCE", "ERROR"]
    assert [c for c in cols if c in want] == want, f"header: {lines[header[0]]!r}"
    st = cols.index("STATE")
    rows = lines[header[0] + 1:]
    assert len(rows) == 4, r.stdout
    byname = {row.split()[0]: row for row in rows}
    assert set(byname) == {"done.bin", "idle.txt", "bad.bin", "sub/run.bin"}, r.stdout
    assert byname["done.bin"].split()[st] == "complete" and "7000" in byname["done.bin"]
    assert byname["idle.txt"].split()[st] == "idle"
    assert byname["bad.bin"].split()[st] == "failed" and "exit 3" in byname["bad.bin"]
    assert byname["sub/run.bin"].split()[st] == "running" and "500" in byname["sub/run.bin"]
    assert "cmd:cat" in byname["done.bin"]
    assert m.state("idle.txt") == "idle" and not marker.exists(), "status started a stream"
    f.close()


def test_status_json(mount, tmp_path, fifo, streamfs_bin):
    m, marker, f = make_status_mount(mount, tmp_path, fifo)
    doc = status_json(streamfs_bin, m.path)
    assert os.path.realpath(doc["mountpoint"]) == os.path.realpath(m.path)
    files = status_files(doc)
    assert set(files) == {"done.bin", "idle.txt", "bad.bin", "sub/run.bin"}
    for f_ in doc["files"]:
        for key in ("name", "state", "bytes", "size", "source", "error"):
            assert key in f_, f"{key} missing in {f_}"
        assert f_["state"] in STATES
        assert isinstance(f_["bytes"], int)
    done, idle, bad, runn = (files[n] for n in ("done.bin", "idle.txt", "bad.bin", "sub/run.bin"))
    assert (done["state"], done["bytes"], done["size"]) == ("complete", 7000, 7000)
    assert done["source"] == f"cmd:cat {q(tmp_path / 'data')}"
    assert done["error"] in (None, "")
    assert (idle["state"], idle["bytes"], idle["size"]) == ("idle", 0, None)
    assert bad["state"] == "failed" and "exit 3" in bad["error"]
    assert (runn["state"], runn["bytes"], runn["size"]) == ("running", 500, None)
    assert m.state("idle.txt") == "idle" and not marker.exists(), "status started a stream"
    f.close()
    m.wait_state("sub/run.bin", "complete")
    runn = status_files(status_json(streamfs_bin, m.path))["sub/run.bin"]
    assert (runn["state"], runn["bytes"], runn["size"]) == ("complete", 500, 500)


def test_status_of_a_non_streamfs_directory_fails(tmp_path, streamfs_bin):
    r = run([streamfs_bin, "status", tmp_path], timeout=10)
    assert r.returncode != 0
    assert r.stderr.strip(), "no message on stderr"


def test_many_files_ls_l_shows_real_sizes(mount):
    """`ls -l` stats every file, which starts each stream and waits for its
    first bytes: real sizes, never a misleading 0."""
    n = 100
    m = mount(*[f"f{i:03d}.txt=cmd:printf '%0{i + 1}d' 0" for i in range(n)])
    assert len(os.listdir(m.path)) == n
    assert all(m.state(f"f{i:03d}.txt") == "idle" for i in (0, 50, 99))
    r = run(["ls", "-ln", m.path], timeout=30)
    assert r.returncode == 0, r.stderr
    sizes = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[-1].startswith("f"):
            sizes[parts[-1]] = int(parts[4])
    assert sizes == {f"f{i:03d}.txt": i + 1 for i in range(n)}, r.stdout


def test_names_with_spaces_and_unicode(mount, streamfs_bin):
    names = ["my file.txt", "ünïcødé.bin", "dir with space/x y.txt", "emoji-🎞.mp4"]
    m = mount(*[f"{n}=cmd:printf %s {q(n)}" for n in names])
    assert sorted(os.listdir(m.path)) == sorted(["my file.txt", "ünïcødé.bin", "dir with space",
                                                 "emoji-🎞.mp4"])
    for n in names:
        assert call(read_all, m / n) == n.encode()
    doc = status_json(streamfs_bin, m.path)
    assert sorted(f["name"] for f in doc["files"]) == sorted(names)


def test_large_directory_listing(mount):
    """2000 entries: readdir must page through them (offsets) exactly once."""
    n = 2000
    m = mount(*[f"entry-with-a-longish-name-{i:05d}.txt=cmd:echo {i}" for i in range(n)],
              "sub/a=cmd:true")
    names = call(os.listdir, m.path, timeout=30)
    assert len(names) == n + 1 and len(set(names)) == n + 1
    r = run(["find", m.path, "-type", "f"], timeout=30)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == n + 1
    assert m.state("entry-with-a-longish-name-01999.txt") == "idle"


def test_inode_numbers_unique_and_tar_of_the_mount(mount, tmp_path):
    """Distinct files have distinct, stable inode numbers (tar, cp -a and du
    take equal ones for hard links), and a tar of the whole mount
    round-trips."""
    files = {f"d{i}/f{j}.bin": os.urandom(1000 * (i + 1) + j) for i in range(3) for j in range(3)}
    for name, data in files.items():
        (tmp_path / name.replace("/", "_")).write_bytes(data)
    m = mount(*[f"{n}=cmd:cat {q(tmp_path / n.replace('/', '_'))}" for n in files])
    inos = {n: call(os.stat, m / n).st_ino for n in files}
    assert len(set(inos.values())) == len(files), inos
    assert {n: call(os.stat, m / n).st_ino for n in files} == inos
    dirs = {d: os.stat(m / d).st_ino for d in ("d0", "d1", "d2")}
    assert len(set(dirs.values()) | set(inos.values())) == len(files) + 3
    out = tmp_path / "out"
    out.mkdir()
    r = run(["sh", "-c", f"tar cf - -C {q(m.path)} . | tar xf - -C {q(out)}"], timeout=60)
    assert r.returncode == 0, r.stderr
    for name, data in files.items():
        assert (out / name).read_bytes() == data, name
