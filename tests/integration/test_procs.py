"""
What the daemon hands to the processes and files it opens:

- background jobs that ignore SIGTERM die with their stream's process group:
  SIGKILL after the grace period once the stream is over, and at `rm`,
  unmount and SIGTERM to the daemon;
- a pipe: whose open blocks does not wedge the I/O thread, and pipe paths
  inside the mount are refused;
- --cache-dir=memory takes names of any length;
- idle files hold no descriptor, so a manifest larger than the fd limit
  mounts;
- commands start with the limits and signal state streamfs was started
  with, not the daemon's raised fd limit or ignored signals.

Every wait has a deadline; the grace period (2 s) is well inside them.
"""
import errno
import os
import resource
import signal

import pytest

from helpers import (DEADLINE, Background, assert_blocked, call, kill_if_alive, mounted,
                     pid_alive, q, read_all, run, thread_names, wait_until)

TRAPPED = "(trap '' TERM; exec sleep 777) >/dev/null 2>&1 & echo $! > {job}"


def read_pid(path):
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), what=f"{path}"))


def wait_gone(pid, what):
    wait_until(lambda: not pid_alive(pid), DEADLINE, what)


# ------------------------------------------- process groups (item 3)

def test_job_ignoring_sigterm_dies_after_the_stream_completes(mount, tmp_path):
    """The stream is over: the group gets SIGTERM, then SIGKILL after the
    grace period, while the mount stays up."""
    job = tmp_path / "job"
    m = mount(f"a.txt=cmd:{TRAPPED.format(job=q(job))}; echo hi")
    try:
        assert call(read_all, m / "a.txt") == b"hi\n"
        m.wait_state("a.txt", "complete")
        pid = read_pid(job)
        wait_gone(pid, f"the job {pid} that ignores SIGTERM to be killed after the grace period")
        assert mounted(m.path)
        assert m.xattr("a.txt", "exit_status") == "0"
    finally:
        if job.exists():
            kill_if_alive(read_pid(job), "sleep")


def test_job_ignoring_sigterm_dies_at_rm(mount, streamfs_bin, tmp_path):
    """rm of a running command: its shell dies of SIGTERM (the keeper with
    it), the job that ignores SIGTERM is killed all the same."""
    job = tmp_path / "job"
    m = mount(f"a.txt=cmd:{TRAPPED.format(job=q(job))}; echo hi; exec sleep 1000")
    try:
        m.start("a.txt")
        m.wait_bytes("a.txt", 3)
        pid = read_pid(job)
        r = run([streamfs_bin, "rm", m.path, "a.txt"], timeout=DEADLINE)
        assert r.returncode == 0, r.stderr
        wait_gone(pid, f"the job {pid} that ignores SIGTERM to be killed after rm")
    finally:
        if job.exists():
            kill_if_alive(read_pid(job), "sleep")


@pytest.mark.parametrize("how", ["unmount", "sigterm"])
def test_job_ignoring_sigterm_dies_with_the_mount(mount, tmp_path, how):
    """The stream completed (its keeper is gone) and the mount goes away
    before the grace period is over: the daemon kills the group on its way
    out, since nothing would after it."""
    job = tmp_path / "job"
    m = mount(f"a.txt=cmd:{TRAPPED.format(job=q(job))}; echo hi")
    try:
        assert call(read_all, m / "a.txt") == b"hi\n"
        m.wait_state("a.txt", "complete")
        pid = read_pid(job)
        if how == "unmount":
            r = run(["fusermount3", "-u", m.path], timeout=DEADLINE)
            assert r.returncode == 0, r.stderr
        else:
            m.signal(signal.SIGTERM)
        assert m.wait_exit(DEADLINE) == 0
        wait_gone(pid, f"the job {pid} that ignores SIGTERM to die with the daemon ({how})")
    finally:
        if job.exists():
            kill_if_alive(read_pid(job), "sleep")


# ------------------------------------------------- pipe: opens (item 11)

def test_pipe_whose_open_blocks_does_not_stop_other_streams(mount, streamfs_bin, tmp_path):
    """The open of a file in another streamfs mount waits for that file's
    first byte, here forever. Meanwhile the other streams of this mount
    start and are served, and rm ends the blocked one."""
    other = mount("never.bin=cmd:exec sleep 1000")
    m = mount(f"p.bin=pipe:{other / 'never.bin'}", "c.txt=cmd:echo served")
    opener = Background(os.open, str(m / "p.bin"), os.O_RDONLY, name="open p.bin")
    wait_until(lambda: other.state("never.bin") == "running", DEADLINE,
               "the pipe's open to reach the other mount")
    assert_blocked(opener, what="open of a pipe: whose open blocks")
    assert call(read_all, m / "c.txt") == b"served\n"
    assert m.state("p.bin") == "running"
    r = run([streamfs_bin, "rm", m.path, "p.bin"], timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    e = opener.error(DEADLINE, what="the parked open after rm")
    assert isinstance(e, OSError) and e.errno == errno.EIO, f"got {e!r} / {opener.value()!r}"


def test_pipe_without_a_writer_waits_for_it(mount, fifo):
    """A FIFO opened without blocking has no writer yet: the stream waits
    for one instead of ending at once."""
    f = fifo()
    m = mount(f"p.bin=pipe:{f.path}", opts=["--start=mount"])
    reader = Background(read_all, m / "p.bin")
    assert_blocked(reader, what="a read of a FIFO without a writer")
    assert m.state("p.bin") == "running"
    f.write(b"late writer\n")
    f.close()
    assert reader.result(DEADLINE) == b"late writer\n"
    m.wait_state("p.bin", "complete")


def test_pipe_inside_the_mount_is_refused_at_mount_time(mount_fail, tmp_path):
    mnt = mount_fail.new_mountpoint()
    link = tmp_path / "link"
    link.symlink_to(mnt)
    for path in (mnt / "b", f"{mnt}/../{mnt.name}/sub/b", mnt, link / "b"):
        r = mount_fail(mnt, f"a=pipe:{path}", "b=cmd:true", check_mountpoint=mnt)
        assert r.returncode == 2, (path, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("streamfs: "), r.stderr
        assert "inside the mount point" in lines[0], r.stderr


def test_pipe_inside_the_mount_is_refused_by_add(mount, streamfs_bin):
    m = mount("b.txt=cmd:echo b")
    for path in (m / "b.txt", f"{m.path}/../{m.path.name}/x", m.path):
        r = run([streamfs_bin, "add", m.path, f"p=pipe:{path}"], timeout=DEADLINE)
        assert r.returncode == 1, (path, r.stderr)
        assert "inside the mount point" in r.stderr, r.stderr
    assert sorted(os.listdir(m.path)) == ["b.txt"]


def test_pipe_reaching_the_mount_through_a_late_symlink_fails_that_stream(mount, tmp_path):
    """A symlink made after mounting escapes the checks by name; the stream
    fails with a clear error instead of opening its own mount."""
    link = tmp_path / "late"
    m = mount(f"p.bin=pipe:{link}", "c.txt=cmd:echo c")
    link.symlink_to(m / "c.txt")
    with pytest.raises(OSError) as e:
        call(os.open, str(m / "p.bin"), os.O_RDONLY)
    assert e.value.errno == errno.EIO
    assert "inside the mount point" in (m.xattr("p.bin", "error") or ""), m.xattr("p.bin", "error")
    assert call(read_all, m / "c.txt") == b"c\n"


# ----------------------------------------- memfd names (item 12)

def test_memory_store_takes_a_255_byte_name(mount):
    name = "n" * 251 + ".txt"
    assert len(name.encode()) == 255
    m = mount(f"{name}=cmd:echo long", opts=["--cache-dir=memory"])
    assert call(read_all, m / name) == b"long\n"
    m.wait_state(name, "complete")


# ------------------------------------- descriptors and limits (16, 17)

def limit_fds(soft, hard):
    def preexec():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


def daemon_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def daemon_nofile(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return tuple(int(v) for v in line.split()[3:5])
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


@pytest.mark.timeout(120)
def test_2000_files_mount_under_a_1024_fd_limit(mount, tmp_path):
    """ulimit -n 1024 (soft and hard): idle files hold no descriptor."""
    ini = tmp_path / "many.ini"
    ini.write_text("".join(f"[f{i:04d}]\nsource = cmd:echo file {i}\n\n" for i in range(2000)))
    m = mount(opts=["-c", ini], preexec_fn=limit_fds(1024, 1024), timeout=30)
    assert daemon_fds(m.pid) < 100, "idle files hold descriptors"
    assert len(call(os.listdir, m.path)) == 2000
    for i in (0, 1, 777, 1500, 1999):
        assert call(read_all, m / f"f{i:04d}") == f"file {i}\n".encode()
    assert m.state("f0002") == "idle"


def test_a_store_that_cannot_be_created_fails_only_its_stream(mount, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    m = mount("a.txt=cmd:echo a", "b.txt=cmd:echo b", opts=[f"--cache-dir={cache}"])
    cache.rmdir()
    with pytest.raises(OSError) as e:
        call(os.open, str(m / "a.txt"), os.O_RDONLY)
    assert e.value.errno == errno.EIO
    err = m.xattr("a.txt", "error") or ""
    assert "store" in err and str(cache) in err and "No such file" in err, err
    cache.mkdir()
    assert call(read_all, m / "b.txt") == b"b\n"


def test_a_store_directory_that_does_not_work_is_refused_at_mount_time(mount_fail, tmp_path):
    """Stores are created lazily, but a bad --cache-dir is still one line
    before mounting, not a failure per file."""
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("--cache-dir", tmp_path / "nope", mnt, "a=cmd:true", check_mountpoint=mnt)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "cannot create a store in" in lines[0], r.stderr


def test_the_daemon_raises_its_soft_fd_limit(mount):
    m = mount("a.txt=cmd:echo a", preexec_fn=limit_fds(1000, 4096))
    assert daemon_nofile(m.pid) == (4096, 4096)


def test_commands_start_with_the_limits_and_signals_streamfs_had(mount):
    """The daemon raises its own fd limit and runs with SIGQUIT ignored
    and SIGUSR2 blocked (as its parent left them); its commands get the
    original limit, default dispositions and an empty mask."""
    def preexec():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 4096))
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})

    m = mount("env.txt=cmd:ulimit -Sn; ulimit -Hn; grep -E '^Sig(Ign|Blk):' /proc/self/status",
              preexec_fn=preexec)
    out = call(read_all, m / "env.txt").decode().split("\n")
    assert out[:2] == ["1000", "4096"], out
    fields = dict(line.split(":\t") for line in out[2:] if line)
    assert int(fields["SigIgn"], 16) == 0, f"ignored signals reach the command: {fields}"
    assert int(fields["SigBlk"], 16) == 0, f"blocked signals reach the command: {fields}"


def test_a_daemon_started_with_sigchld_ignored_still_sees_commands_end(mount):
    """An ignored SIGCHLD would have the kernel reap the commands before the
    daemon could wait for them."""
    def preexec():
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    m = mount("a.txt=cmd:echo a", "b.txt=cmd:echo b; exit 3", preexec_fn=preexec)
    assert call(read_all, m / "a.txt") == b"a\n"
    m.wait_state("a.txt", "complete")
    call(os.stat, m / "b.txt")
    m.wait_state("b.txt", "failed")
    assert m.xattr("b.txt", "exit_status") == "3"


# ------------------------------------------- thread names

def test_daemon_threads_are_named(mount):
    """top -H and perf show what each thread of the daemon is: the I/O
    thread, and the page-cache push once a file was read while its stream
    ran (opened direct_io, so what it was sent is pushed at close; not
    where the kernel reads complete streams from the store itself, hence
    passthrough off)."""
    m = mount("a.txt=cmd:echo hi; sleep 0.3", env={"STREAMFS_PASSTHROUGH": "off"})
    assert call(read_all, m / "a.txt") == b"hi\n"
    wait_until(lambda: {"streamfs-io", "streamfs-push"} <= thread_names(m.pid),
               what="threads named streamfs-io and streamfs-push")
