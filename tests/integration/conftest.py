"""
Integration harness for streamfs: mounts the real daemon, drives it with real
processes and tools, and tears everything down even when a test fails.

Rules this file keeps, and every test keeps by using it:
  - No sleep as synchronisation. wait_until() polls a predicate against a
    deadline; Background/call() run a call that may block on stream data in
    a thread and fail the test when it has not returned in time.
  - Every subprocess gets a timeout.
  - Every mount is unmounted and its daemon reaped at teardown (unmount,
    SIGTERM, SIGKILL as the last resort, which fails the test); the daemon's
    stderr is scanned for sanitizer reports.
  - A watchdog (pytest-timeout is not installed; Debian has it as
    python3-pytest-timeout) gives every phase a deadline: a test function
    that overruns fails with DeadlineExceeded (SIGALRM). If a phase is
    stuck inside the kernel (a FUSE request nobody answers), the watchdog
    dumps all stacks and SIGKILLs the daemons this run started, which
    aborts their FUSE connections so the call returns; as a last resort it
    exits the run. See helpers._Watchdog.

Environment: STREAMFS_BIN (default <repo>/build/streamfs),
STREAMFS_TEST_TIMEOUT (seconds per test phase, default 90).
"""
import itertools
import os
import subprocess
from pathlib import Path

import pytest

from helpers import (DEADLINE, Fifo, MountFactory, REPO, _Watchdog, _phase_timeout,
                     fusermount_u, mounted, register_pid, run, unregister_pid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _Watchdog(f"{item.nodeid} (setup)", _phase_timeout(item)):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    # The alarm is armed in a frame of ours directly around the test
    # function, so that an alarm that fires while a failing call unwinds is
    # handled here and not inside pluggy (which would swallow it).
    wd = _Watchdog(item.nodeid, _phase_timeout(item))
    testfunction = item.obj

    def armed(*args, **kwargs):
        return wd.arm(lambda: testfunction(*args, **kwargs))

    item.obj = armed
    try:
        with wd:
            yield
    finally:
        item.obj = testfunction


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    with _Watchdog(f"{item.nodeid} (teardown)", _phase_timeout(item)):
        yield


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): per-phase watchdog deadline for this test")
    _Watchdog.install()


@pytest.fixture
def fifo(tmp_path):
    """Factory: fifo('name') -> Fifo under tmp_path. Closed at teardown."""
    made = []

    def factory(name="fifo"):
        f = Fifo(tmp_path / name)
        made.append(f)
        return f

    yield factory
    for f in made:
        f.abandon()


@pytest.fixture(scope="session")
def streamfs_bin():
    p = Path(os.environ.get("STREAMFS_BIN") or REPO / "build" / "streamfs")
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"streamfs binary not found at {p}: build it first "
                    f"(cmake -B build && cmake --build build) or set STREAMFS_BIN", pytrace=False)
    return p


@pytest.fixture
def mount(streamfs_bin, tmp_path):
    """Factory: mount("a.bin=cmd:...", "b=pipe:/x", opts=["--size=wait"],
    stdin=..., env=..., foreground=True) -> Mount. Every mount is torn down
    at the end of the test, and teardown problems (unclean shutdown,
    sanitizer report, still mounted) fail the test."""
    f = MountFactory(streamfs_bin, tmp_path)
    yield f
    problems = f.teardown()
    if problems:
        pytest.fail("streamfs teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def mount_fail(streamfs_bin, tmp_path):
    """Run a streamfs mount command line that is expected to fail:
    mount_fail(*args, foreground=True, mountpoint=None) runs
    'streamfs [-f] ARGS' (ARGS include the mount point; use the
    .mountpoint attribute of this fixture for a fresh existing directory) and
    returns the CompletedProcess. If it does not exit within the deadline it
    is stopped, unmounted, and the test fails. Also fails if anything ended
    up mounted on the given mount point."""
    counter = itertools.count()
    started = []

    class Runner:
        def new_mountpoint(self):
            d = tmp_path / f"failmnt{next(counter)}"
            d.mkdir()
            return d

        def __call__(self, *args, foreground=True, check_mountpoint=None, stdin=None,
                     timeout=DEADLINE):
            argv = [str(streamfs_bin)] + (["-f"] if foreground else []) + [str(a) for a in args]
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
            register_pid(p.pid)
            started.append((p, check_mountpoint))
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                if check_mountpoint and mounted(check_mountpoint):
                    fusermount_u(check_mountpoint)
                p.kill()
                p.communicate(timeout=DEADLINE)
                unregister_pid(p.pid)
                pytest.fail(f"{argv} was expected to fail but was still running after "
                            f"{timeout:g} s (mounted?)", pytrace=False)
            unregister_pid(p.pid)
            if check_mountpoint and mounted(check_mountpoint):
                fusermount_u(check_mountpoint)
                pytest.fail(f"{argv} left {check_mountpoint} mounted", pytrace=False)
            return subprocess.CompletedProcess(argv, p.returncode, out, err)

    yield Runner()
    for p, mnt in started:
        if p.poll() is None:
            p.kill()
            p.wait(DEADLINE)
        if mnt and mounted(mnt):
            fusermount_u(mnt)


@pytest.fixture
def streamfs_cli(streamfs_bin):
    """Run a streamfs subcommand: streamfs_cli("status", "--json", mnt)."""
    def runner(*args, timeout=DEADLINE, **kw):
        return run([streamfs_bin, *args], timeout=timeout, **kw)
    return runner


