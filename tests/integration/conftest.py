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
  - Every test has a timeout (pytest-timeout, Debian python3-pytest-timeout:
    `timeout` in pytest.ini, @pytest.mark.timeout(N) for a slow test; it
    covers setup, call and teardown). It fails the test with SIGALRM
    wherever it is, and the fixtures then clean up as after any failure.
    The `leftovers` fixture runs after every other fixture's cleanup: a
    daemon or mount that is still there (a timeout cut a teardown short)
    is SIGKILLed or unmounted, and the test fails saying so. A test stuck
    in the kernel (a FUSE request nobody answers) never sees the signal:
    helpers.Rescue SIGKILLs the daemons of this run 15 s after the timeout,
    which aborts their FUSE connections so the call returns; as a last
    resort it exits the run.

Environment: STREAMFS_BIN (default <repo>/build/streamfs); PYTEST_TIMEOUT
(or --timeout) sets the timeout of the tests that have no marker.
"""
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from httpserver import TestHTTPServer  # noqa: E402

from helpers import (DEADLINE, Fifo, MountFactory, REPO, Rescue, clean_up_leftovers,
                     fusermount_u, mounted, register_pid, run, unregister_pid)  # noqa: E402


def pytest_configure(config):
    # A shell starts a background job (`tools/test &` without job control)
    # with SIGINT and SIGQUIT ignored, and a child inherits that: the
    # readers and daemons the tests send SIGINT would then ignore it, and
    # libfuse keeps an ignored SIGINT ignored. A handler, unlike SIG_IGN,
    # is not inherited across exec: with one, every child starts at the
    # default.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, lambda signum, frame: None)
    if not config.pluginmanager.hasplugin("timeout"):
        pytest.exit("the integration tests need pytest-timeout "
                    "(apt-get install python3-pytest-timeout)", returncode=4)
    config.addinivalue_line(
        "markers", "deadline(seconds): the old name of timeout(seconds); still honoured")


def pytest_collection_modifyitems(items):
    # deadline(N), the watchdog marker of older tests, is timeout(N).
    for item in items:
        d = item.get_closest_marker("deadline")
        if d and d.args and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(float(d.args[0])))


def pytest_timeout_set_timer(item, settings):
    # Alongside pytest-timeout's own timer (this returns None, so it runs).
    item.streamfs_rescue = Rescue(item.nodeid, settings.timeout)


def pytest_timeout_cancel_timer(item):
    rescue = getattr(item, "streamfs_rescue", None)
    if rescue is not None:
        rescue.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    if rep.failed:
        item.streamfs_failed = True  # for `leftovers`


@pytest.fixture(autouse=True)
def leftovers(request):
    """Set up before, so torn down after, every other fixture of a test:
    what their cleanup left (a timeout can cut it short) is killed and
    unmounted here, and the test fails saying what it was. So does a test
    that ran past its timeout but did not fail: the failure raised by the
    timeout's signal handler is lost when the handler runs while pytest's
    hook machinery handles another exception (pluggy returns from a finally
    block), as after a call stuck in the kernel that fails once the rescue
    has killed its daemon."""
    yield
    # This cleanup must run to its end: the test's timer is done with.
    signal.setitimer(signal.ITIMER_REAL, 0)
    item = request.node
    problems = clean_up_leftovers()
    rescue = getattr(item, "streamfs_rescue", None)
    if rescue is not None and rescue.overran() and not getattr(item, "streamfs_failed", False):
        problems.insert(0, f"ran past its {rescue.timeout:g} s timeout"
                        + (" stuck in the kernel (the rescue SIGKILLed the daemons)"
                           if rescue.fired else ""))
    if problems:
        # A section of the report: shown even when an earlier teardown
        # error is the one pytest reports.
        item.add_report_section("teardown", "leftovers", "\n".join(problems))
        pytest.fail("; ".join(problems), pytrace=False)


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


@pytest.fixture
def www(tmp_path):
    """The directory the `srv` fixture serves (helpers.put() adds files)."""
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def srv(www):
    """tests/httpserver.py serving `www`, stopped at teardown; faults are
    query parameters of its URLs: srv.url("f", drop_after=1000)."""
    s = TestHTTPServer(www).start()
    yield s
    s.stop()
