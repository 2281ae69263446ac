"""The store's largest file.

A store cannot hold bytes past the largest file its file system allows
(16 TiB on ext4) or past the daemon's RLIMIT_FSIZE; writing there fails
with EFBIG. A read far ahead (a random-access Range fetch) at such an
offset fails with EFBIG for that read only: the stream goes on and serves
every other offset. The sequential fill reaching the limit is a real
failure of the stream at that byte.

The limit is set with RLIMIT_FSIZE on the running daemon (prlimit), which
the kernel applies exactly like a file system's limit, so the tests behave
the same whatever file system the store is on, and take no disk space:
the test server synthesises its 20 TiB body (tests/httpserver.py synth=).
"""
import errno
import os
import resource
import sys
from pathlib import Path

import pytest

from helpers import call

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from httpserver import TestHTTPServer, synth_bytes  # noqa: E402

TiB = 1 << 40
SIZE = 20 * TiB


@pytest.fixture
def srv(tmp_path):
    s = TestHTTPServer(tmp_path).start()
    yield s
    s.stop()


def limit_file_size(pid, limit):
    """Lower the soft RLIMIT_FSIZE of the (running) daemon."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


def pread_errno(fd, n, off):
    """os.pread with a deadline: the bytes, or the errno it failed with."""
    try:
        return call(os.pread, fd, n, off)
    except OSError as e:
        return e.errno


def range_starts(srv, name):
    """The first byte of every bounded Range request for /name that the
    server has received (answered or not: a refused range's request is
    logged only once the server notices the client has gone)."""
    out = []
    for e in srv.requests("/" + name, method="GET", started=True):
        r = e["range"] or ""
        a, _, b = r[6:].partition("-")
        if r.startswith("bytes=") and a.isdigit() and b.isdigit():
            out.append(int(a))
    return out


@pytest.mark.parametrize("fill,cache", [("ondemand", "disk"), ("ondemand", "memory"),
                                        ("all", "disk")])
def test_read_past_the_store_limit_fails_that_read_only(srv, mount, fill, cache):
    limit = TiB + 12345  # not a multiple of anything
    opts = [f"--fill={fill}"] + (["--cache-dir=memory"] if cache == "memory" else [])
    # fill=all downloads on in the background: slow it to keep the test light.
    url = srv.url("huge.bin", synth=SIZE, rate=8_000_000)
    m = mount("huge.bin=" + url, opts=opts)
    limit_file_size(m.pid, limit)
    fd = call(os.open, str(m / "huge.bin"), os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == SIZE
        assert pread_errno(fd, 4096, 5 << 30) == synth_bytes(5 << 30, 4096)
        # Far past the limit: this read fails, nothing else does.
        assert pread_errno(fd, 4096, 17 * TiB) == errno.EFBIG
        assert m.state("huge.bin") == "running" and m.xattr("huge.bin", "error") is None
        # Across the limit: the bytes before it, then EFBIG at it (as at a
        # failure point: a short count, then the error).
        assert pread_errno(fd, 4096, limit - 100) == synth_bytes(limit - 100, 100)
        assert pread_errno(fd, 1, limit) == errno.EFBIG
        assert pread_errno(fd, 4096, SIZE - 4096) == errno.EFBIG
        # The stream goes on for everyone below the limit.
        assert pread_errno(fd, 4096, 6 << 30) == synth_bytes(6 << 30, 4096)
        assert pread_errno(fd, 100, 0) == synth_bytes(0, 100)
        assert m.state("huge.bin") == "running"
    finally:
        os.close(fd)
    # A refused range is asked for once, not retried; once the limit is
    # known, reads past it ask the server for nothing.
    assert len([a for a in range_starts(srv, "huge.bin") if a >= limit]) == 1
    assert "failed" not in m.stderr_text()


@pytest.mark.parametrize("source", ["cmd", "url"])
def test_sequential_fill_fails_at_the_store_limit(srv, mount, source):
    """The sequential fill reaching the limit cannot go on: the stream fails
    there, to the byte, with the store's error; the daemon lives on."""
    limit = (1 << 20) + 5
    size = 3 << 20
    spec = (f"cmd:head -c {size} /dev/zero" if source == "cmd"
            else srv.url("seq.bin", synth=size))
    m = mount("seq.bin=" + spec, "other.txt=cmd:echo other")
    limit_file_size(m.pid, limit)
    fd = call(os.open, str(m / "seq.bin"), os.O_RDONLY)
    try:
        m.wait_state("seq.bin", "failed")
        assert m.xattr("seq.bin", "error_offset") == str(limit)
        assert m.xattr("seq.bin", "error") == "store: File too large"
        want = bytes(100) if source == "cmd" else synth_bytes(limit - 100, 100)
        assert pread_errno(fd, 4096, limit - 100) == want
        assert pread_errno(fd, 1, limit) == errno.EIO
    finally:
        os.close(fd)
    assert call(Path(m / "other.txt").read_bytes) == b"other\n"
    assert m.alive()


def test_commands_get_sigxfsz_at_its_default(mount):
    """The daemon ignores SIGXFSZ (a store past ulimit -f must fail with
    EFBIG, not kill it); its commands must not inherit that."""
    m = mount("sig.txt=cmd:grep SigIgn /proc/self/status")
    out = call(Path(m / "sig.txt").read_text)
    ignored = int(out.split()[1], 16)
    assert not ignored & (1 << (25 - 1)), f"SIGXFSZ ignored in a command: {out}"
