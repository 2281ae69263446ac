"""
streamfs under mount(8) and mount.fuse3: the form an /etc/fstab line of
type fuse.streamfs runs, `streamfs MANIFEST MOUNTPOINT -o OPTIONS`.

mount(8) runs /sbin/mount.fuse (mount.fuse3) without PATH or HOME, and
mount.fuse3 runs `/bin/sh -c 'streamfs MANIFEST MNT -o OPTS'`: dash then
searches its built-in path (/usr/local/sbin:/usr/local/bin:/usr/sbin:
/usr/bin:/sbin:/bin), so only an installed streamfs is found. These tests
put the binary under test there without touching the system: in a private
mount namespace (unshare -m), a directory holding a `streamfs` symlink is
bind-mounted over /usr/local/bin, and mount(8) runs inside it. Everything
mounted there dies with the namespace; the daemon's PID is written out so
that a test that fails half-way still kills it.

The tests with mount.fuse3 alone (no mount(8)) give it PATH, which it
passes on.
"""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import (DEADLINE, fusermount_u, mounted, pid_alive, read_all, register_mount,
                     register_pid, run, unregister_mount, unregister_pid, wait_until, xattr)

MOUNT_FUSE = "/sbin/mount.fuse3"
DATA = "".join(f"{i}\n" for i in range(1, 20001)).encode()

# The script run in the namespace: put the binary where an installed one
# is, then run the commands given as arguments, each with its output,
# error and exit status in OUT/N.{out,err,rc}. A failing step does not
# stop the next (umount must run whatever happened before).
NS_SCRIPT = r"""
set -u
out=$1; shift
mount --bind "$out/bin" /usr/local/bin || exit 90
n=0
for step in "$@"; do
    n=$((n + 1))
    sh -c "$step" >"$out/$n.out" 2>"$out/$n.err"
    echo $? >"$out/$n.rc"
done
"""


def sanitizer_env(out):
    """The daemon detaches from our stderr: sanitizer reports go to files."""
    env = dict(os.environ)
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        env[var] = ":".join(filter(None, [env.get(var), f"log_path={out}/{var[:5].lower()}"]))
    return env


def sanitizer_logs(out):
    return [p.name for p in Path(out).iterdir() if p.name.startswith(("asan.", "ubsan."))]


@pytest.fixture
def setup(tmp_path, streamfs_bin):
    """A manifest, a bin directory holding `streamfs` (a symlink to the
    binary under test), and mount points."""
    out = tmp_path / "out"
    (out / "bin").mkdir(parents=True)
    (out / "bin" / "streamfs").symlink_to(streamfs_bin)
    (tmp_path / "data").write_bytes(DATA)
    manifest = tmp_path / "media.ini"
    manifest.write_text(f"[numbers.txt]\nsource = cmd:cat {tmp_path / 'data'}\n\n"
                        f"[dir/hello.txt]\nsource = cmd:echo hello\n")
    mnts = [tmp_path / f"mnt{i}" for i in range(3)]
    for m in mnts:
        m.mkdir()
    return out, manifest, mnts


def kill_daemon(pid_file):
    """SIGKILL the daemon whose PID the namespace wrote, if it is still alive."""
    try:
        pid = int(Path(pid_file).read_text())
    except (OSError, ValueError):
        return
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def in_namespace(out, steps, timeout=60):
    """Run @steps (shell commands) in a private mount namespace with the
    binary as /usr/local/bin/streamfs. Returns [(rc, stdout, stderr)]."""
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          NS_SCRIPT, "ns", str(out), *steps],
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=sanitizer_env(out))
    register_pid(p.pid)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=DEADLINE)
        raise AssertionError(f"the namespace's steps ran past {timeout} s")
    finally:
        unregister_pid(p.pid)
    assert p.returncode == 0, f"namespace set-up failed ({p.returncode}): {err}"
    res = []
    for i in range(1, len(steps) + 1):
        res.append((int((out / f"{i}.rc").read_text()), (out / f"{i}.out").read_text(),
                    (out / f"{i}.err").read_text()))
    return res


def q(p):
    return "'" + str(p).replace("'", "'\\''") + "'"


def mount_steps(out, mnt, mount_cmd, manifest):
    """Mount with @mount_cmd, look at the mount from inside the namespace,
    unmount with umount(8), wait for the daemon to exit."""
    m = q(mnt)
    return [
        mount_cmd,
        f"getfattr --only-values -n user.streamfs.pid {m} > {q(out / 'pid')}; cat {q(out / 'pid')}",
        f"cat {m}/numbers.txt",
        f"cat {m}/dir/hello.txt",
        f"grep ' {mnt} ' /proc/self/mountinfo",
        f"findmnt -n -o SOURCE {m}",
        f"touch {m}/new.txt",
        f"streamfs status --json {m}",
        f"umount {m}",
        # The daemon exits once unmounted: poll it with a deadline.
        f"pid=$(cat {q(out / 'pid')}); i=0; while kill -0 $pid 2>/dev/null; do "
        f"i=$((i + 1)); [ $i -gt 200 ] && exit 1; sleep 0.05; done",
        f"grep -c ' {mnt} ' /proc/self/mountinfo",
    ]


def check_mount_steps(res, mnt, cache_size, manifest):
    (mrc, _, merr), (prc, pid, _), (crc, numbers, cerr), (hrc, hello, _), (irc, info, _), \
        (frc, source, _), (trc, _, terr), (src, status, serr), (urc, _, uerr), (wrc, _, _), \
        (_, count, _) = res
    assert mrc == 0, f"mount failed ({mrc}): {merr}"
    assert prc == 0 and int(pid) > 0
    assert crc == 0 and numbers.encode() == DATA, cerr
    assert hrc == 0 and hello == "hello\n"
    # Mounted read-only as fuse.streamfs, whatever "defaults" made rw of.
    assert irc == 0 and " - fuse.streamfs " in info, info
    fields = info.split()
    assert "ro" in fields[5].split(","), info
    # The source is the manifest, as fstab names it: mount(8) sees the line
    # is mounted already.
    assert frc == 0 and source.strip() == str(manifest), source
    assert trc != 0 and "Read-only file system" in terr, terr
    assert src == 0, serr
    doc = json.loads(status)
    assert {f["name"] for f in doc["files"]} == {"numbers.txt", "dir/hello.txt"}
    if cache_size is not None:
        assert doc["cache"]["size"] == cache_size, doc.get("cache")
    assert urc == 0, f"umount failed ({urc}): {uerr}"
    assert wrc == 0, "the daemon did not exit within 10 s of umount"
    assert count.strip() == "0", f"{mnt} still mounted"


@pytest.mark.timeout(180)
def test_fstab_line_mount_and_umount(setup):
    """`mount MNT` with an fstab line (mount -T: an fstab of the test's
    own) and `umount MNT`: options mount(8) adds (rw from defaults, nofail,
    _netdev, x-systemd.*) are accepted and the mount stays read-only;
    cache_size= reaches the daemon."""
    out, manifest, mnts = setup
    fstab = out / "fstab"
    fstab.write_text(f"# streamfs test\n{manifest} {mnts[0]} fuse.streamfs "
                     "defaults,nofail,_netdev,x-systemd.automount,x-systemd.idle-timeout=60,"
                     "cache_size=64M,allow_other 0 0\n")
    try:
        # mount -a again leaves the mounted line alone (it does not fail).
        res = in_namespace(out, mount_steps(
            out, mnts[0], f"mount -T {q(fstab)} {q(mnts[0])} && mount -a -T {q(fstab)}", manifest))
        check_mount_steps(res, mnts[0], 64 << 20, manifest)
        assert "allow_other" in res[4][1]
    finally:
        kill_daemon(out / "pid")
    assert not sanitizer_logs(out), sanitizer_logs(out)


@pytest.mark.timeout(180)
def test_mount_t_fuse_streamfs(setup):
    """mount -t fuse.streamfs -o defaults,nofail MANIFEST MNT, then umount."""
    out, manifest, mnts = setup
    try:
        res = in_namespace(out, mount_steps(
            out, mnts[1], f"mount -t fuse.streamfs -o defaults,nofail {q(manifest)} {q(mnts[1])}",
            manifest))
        check_mount_steps(res, mnts[1], None, manifest)
    finally:
        kill_daemon(out / "pid")
    assert not sanitizer_logs(out), sanitizer_logs(out)


@pytest.mark.timeout(120)
def test_fstab_bad_option_fails_with_one_line(setup):
    """A typo in the fstab options fails the mount with streamfs's one
    line, and nothing is mounted."""
    out, manifest, mnts = setup
    fstab = out / "fstab"
    fstab.write_text(f"{manifest} {mnts[2]} fuse.streamfs defaults,cache_sise=1G 0 0\n"
                     f"{out / 'missing.ini'} {mnts[1]} fuse.streamfs defaults 0 0\n")
    res = in_namespace(out, [f"mount -T {q(fstab)} {q(mnts[2])}",
                             f"grep -c ' {mnts[2]} ' /proc/self/mountinfo",
                             f"mount -T {q(fstab)} {q(mnts[1])}"])
    (rc, _, err), (_, count, _), (rc2, _, err2) = res
    assert rc != 0
    assert "streamfs: unknown mount option 'cache_sise' in -o" in err, err
    assert count.strip() == "0"
    # (A long path is cut with "..." in the message: only its start is checked.)
    assert rc2 != 0 and f"streamfs: cannot read manifest '{str(out)[:40]}" in err2, err2
    assert err2.rstrip().endswith("No such file or directory"), err2


@pytest.mark.timeout(120)
def test_mount_fuse3_helper(setup):
    """mount.fuse3 itself (it keeps PATH): `mount.fuse3 MANIFEST MNT -t
    streamfs -o ...` mounts in the background and returns once the mount is
    usable; -o carries the mount-wide options; umount(8) ends the daemon."""
    out, manifest, mnts = setup
    env = sanitizer_env(out)
    env["PATH"] = f"{out / 'bin'}:{env['PATH']}"
    mnt = mnts[0]
    register_mount(mnt)
    pid = None
    try:
        r = run([MOUNT_FUSE, manifest, mnt, "-t", "streamfs", "-o",
                 "rw,nofail,cache_size=32M,cache_min_free=0,size_unknown=wait"], env=env,
                timeout=DEADLINE * 3)
        assert r.returncode == 0, r.stderr
        assert mounted(mnt), "mount.fuse3 returned 0 without a mount"
        pid = int(xattr(mnt, "pid"))
        register_pid(pid)
        assert read_all(mnt / "numbers.txt") == DATA
        doc = json.loads(run([out / "bin" / "streamfs", "status", "--json", mnt]).stdout)
        assert doc["cache"]["size"] == 32 << 20 and doc["cache"]["min_free"] == 0, doc["cache"]
        with pytest.raises(OSError) as e:
            open(mnt / "new.txt", "w")
        assert e.value.errno == 30  # EROFS
        r = run(["umount", mnt], timeout=DEADLINE)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: not pid_alive(pid), DEADLINE, "the daemon to exit after umount")
    finally:
        if mounted(mnt):
            fusermount_u(mnt)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if pid is not None:
            unregister_pid(pid)
        unregister_mount(mnt)
    assert not sanitizer_logs(out), sanitizer_logs(out)
