"""URL sources (http://) against the fault-injecting test server.

Every file is read by a subprocess with a deadline (cat, stat, reader.py),
so a daemon bug fails a test instead of hanging it. The server's request
log is the witness for what streamfs asked for.
"""

import errno
import gzip
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import DEADLINE, open_errno, put, read_values, wait_until
from helpers import xattr as _xattr

MiB = 1 << 20
# Bounded retries for tests that expect a failure, so they end quickly.
FAST_FAIL = ["--retries=2", "--retry-time=20"]


# ---------------------------------------------------------------- helpers

def cat(path, timeout=120):
    """(returncode, stdout bytes, stderr text) of `cat path`."""
    p = subprocess.run(["cat", str(path)], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def stat_size(path, timeout=30):
    p = subprocess.run(["stat", "-c", "%s", str(path)], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr
    return int(p.stdout)


def xattr(path, name):
    """user.streamfs.NAME as str (None if absent; other errors raise)."""
    v = _xattr(path, name)
    return v.rstrip("\0") if v is not None else v


def head(srv, target):
    """Response headers (lower-case names) of a HEAD request."""
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    c.sendall(b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            break
        buf += d
    c.close()
    out = {}
    for ln in buf.decode("latin-1").split("\r\n")[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


def gets(srv, name):
    return srv.requests("/" + name, method="GET")


def statuses_become(srv, name, want):
    """The statuses of the GETs of @name become @want. The server logs a
    request once its response is over, which can be a moment after the
    client has all of it (seen under stress-ng): wait, with a deadline."""
    wait_until(lambda: [e["status"] for e in gets(srv, name)] == want,
               what=f"GET statuses of {name} to be {want}")


def fpath(m, name="a.bin"):
    return Path(m.path) / name


# ---------------------------------------------------------------- the basics

def test_whole_file(srv, www, mount):
    blob = put(www, "f", 8 * MiB + 123)
    url = srv.url("f")
    m = mount("a.bin=" + url)
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    assert stat_size(p) == len(blob)
    g = gets(srv, "f")
    assert len(g) == 1 and g[0]["sent"] == len(blob)
    assert xattr(p, "http_code") == "200"
    assert xattr(p, "url") == url
    assert xattr(p, "retries") == "0"
    assert xattr(p, "etag") is not None and xattr(p, "etag").strip('"') != ""
    assert float(xattr(p, "rate")) > 0
    assert xattr(p, "state") == "complete"
    assert not xattr(p, "error")


def test_etag_xattr_matches_server(srv, www, mount):
    put(www, "f", 1000)
    m = mount("a.bin=" + srv.url("f"))
    p = fpath(m)
    assert cat(p)[0] == 0
    h = head(srv, "/f")
    assert xattr(p, "etag").strip('"') == h["etag"].strip('"')
    assert xattr(p, "last_modified") in (None, "", h["last-modified"])


def test_random_preads(srv, www, mount):
    blob = put(www, "f", 3 * MiB)
    m = mount("a.bin=" + srv.url("f"))
    ops = [("pread", off, n) for off, n in
           [(0, 4096), (3 * MiB - 10, 10), (1234567, 99999), (3 * MiB - 5, 100), (3 * MiB, 10)]]
    ops += [("fstat",), ("seek_end",)]
    res = read_values(fpath(m), ops)
    assert res[0] == blob[:4096]
    assert res[1] == blob[-10:]
    assert res[2] == blob[1234567:1234567 + 99999]
    assert res[3] == blob[-5:]
    assert res[4] == b""
    assert res[5] == 3 * MiB and res[6] == 3 * MiB


def test_size_known_while_body_arriving(srv, www, mount):
    """st_size is the Content-Length as soon as headers arrive."""
    blob = put(www, "f", 4 * MiB)
    m = mount("a.bin=" + srv.url("f", stall_after=65536, stall_secs=120),
              opts=["--stall-timeout=600"])
    p = fpath(m)
    assert stat_size(p) == len(blob)
    # the body is still on its way: the one GET has not finished
    assert gets(srv, "f") == []
    b = xattr(p, "bytes")
    if b is not None:
        assert int(b) <= 65536
    # bytes that are there are served at once (S2)
    res = read_values(p, [("pread", 0, 65536), ("fstat",)], timeout=10)
    assert res[0] == blob[:65536] and res[1] == len(blob)


def test_no_content_length(srv, www, mount):
    blob = put(www, "f", 3 * MiB + 7)
    m = mount("a.bin=" + srv.url("f", nolength=1))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    assert stat_size(p) == len(blob)
    res = read_values(p, [("seek_end",), ("pread", len(blob), 10)])
    assert res == [len(blob), b""]


def test_no_content_length_size_is_bytes_so_far(srv, www, mount):
    put(www, "f", 2 * MiB)
    m = mount("a.bin=" + srv.url("f", nolength=1, stall_after=100000, stall_secs=120),
              opts=["--stall-timeout=600"])
    p = fpath(m)
    wait_until(lambda: stat_size(p) == 100000, 20, "st_size == bytes so far (100000)")
    assert gets(srv, "f") == []  # still running


def test_chunked(srv, www, mount):
    blob = put(www, "f", 2 * MiB + 1)
    m = mount("a.bin=" + srv.url("f", chunked=1))
    rc, out, err = cat(fpath(m))
    assert rc == 0, err
    assert out == blob


def test_content_encoding_not_decoded(srv, www, mount):
    raw = os.urandom(100000) + b"x" * 100000
    gz = gzip.compress(raw)
    (www / "f.gz").write_bytes(gz)
    m = mount("a.gz=" + srv.url("f.gz", content_encoding="gzip"))
    rc, out, err = cat(fpath(m, "a.gz"))
    assert rc == 0, err
    assert out == gz
    for e in srv.requests("/f.gz"):
        assert "accept-encoding" not in {k.lower() for k in e["headers"]}, e["headers"]


def test_custom_header(srv, www, mount):
    blob = put(www, "f", 500000)
    m = mount("a.bin=" + srv.url("f", drop_after=100000), opts=["--header=X-Token: abc 123"])
    rc, out, err = cat(fpath(m))
    assert rc == 0, err
    assert out == blob
    g = gets(srv, "f")
    assert len(g) >= 2
    for e in g:  # sent on the resume too
        assert e["headers"].get("X-Token") == "abc 123"


# ---------------------------------------------------------------- resume

def test_resume_after_drop(srv, www, mount):
    blob = put(www, "f", 4 * MiB)
    cut = 1 * MiB + 4321
    m = mount("a.bin=" + srv.url("f", drop_after=cut))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    g = gets(srv, "f")
    assert g[0]["dropped"] and g[0]["sent"] == cut
    assert len(g) == 2, g
    assert g[1]["range"] == "bytes=%d-" % cut
    etag = xattr(p, "etag")
    assert g[1]["if_range"] and g[1]["if_range"].strip('"') == etag.strip('"')
    assert g[1]["status"] == 206
    total = srv.bytes_sent("/f")
    assert len(blob) <= total <= len(blob) * 1.05, total
    assert int(xattr(p, "retries")) == 1
    assert xattr(p, "http_code") == "206"


def test_resume_uses_last_modified_without_etag(srv, www, mount):
    blob = put(www, "f", 1 * MiB)
    m = mount("a.bin=" + srv.url("f", drop_after=300000, noetag=1))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    g = gets(srv, "f")
    assert len(g) == 2 and g[1]["range"] == "bytes=300000-"
    # the validator is the Last-Modified date, as the server sent it
    lm = head(srv, "/f?drop_after=300000&noetag=1")["last-modified"]
    assert g[1]["if_range"] == lm
    assert xattr(p, "last_modified") == lm


def test_many_drops_make_progress(srv, www, mount):
    blob = put(www, "f", 2 * MiB)
    m = mount("a.bin=" + srv.url("f", drop_after=512 * 1024, drop_always=1),
              opts=["--retries=5", "--retry-time=120"])
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    # The server logs a request once its response is sent, and cat may
    # have the last bytes first (seen under stress-ng): wait for the log.
    wait_until(lambda: len(gets(srv, "f")) >= 4, what="the fourth GET in the server's log")
    g = gets(srv, "f")
    assert len(g) == 4
    assert [e["range"] for e in g[1:]] == ["bytes=%d-" % (i * 512 * 1024) for i in range(1, 4)]
    assert int(xattr(p, "retries")) == 3
    assert srv.bytes_sent("/f") == len(blob)


def test_retries_exhausted_by_drops(srv, www, mount):
    blob = put(www, "f", 2 * MiB)
    m = mount("a.bin=" + srv.url("f", drop_after=100000, drop_always=1), opts=FAST_FAIL)
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc != 0
    n = len(gets(srv, "f"))
    assert n == 3, n  # the first request and two retries
    assert out == blob[:len(out)] and len(out) == 300000
    assert xattr(p, "state") == "failed"


def test_stall_timeout_resumes(srv, www, mount):
    blob = put(www, "f", 2 * MiB)
    m = mount("a.bin=" + srv.url("f", stall_after=262144, stall_secs=120),
              opts=["--stall-timeout=2"])
    p = fpath(m)
    rc, out, err = cat(p, timeout=60)
    assert rc == 0, err
    assert out == blob
    g = gets(srv, "f")  # the stalled first GET is still asleep, not logged
    assert any(e["range"] == "bytes=262144-" for e in g), g


def test_range_ignored_by_server(srv, www, mount):
    """A 200 to a range request: skip the bytes already held."""
    blob = put(www, "f", 3 * MiB)
    m = mount("a.bin=" + srv.url("f", norange=1, drop_after=MiB + 17))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    g = gets(srv, "f")
    assert len(g) == 2
    assert g[1]["range"] == "bytes=%d-" % (MiB + 17) and g[1]["status"] == 200


def test_truncation_fails_at_exact_cut(srv, www, mount):
    blob = put(www, "f", 1_000_000)
    cut = 654_321
    m = mount("a.bin=" + srv.url("f", truncate=cut), opts=FAST_FAIL)
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc != 0
    assert out == blob[:cut]
    assert "Input/output error" in err
    res = read_values(p, [("pread", cut - 100, 100), ("pread", cut - 10, 100),
                          ("pread", cut, 1), ("pread", cut + 5000, 10), ("pread", 0, 10)])
    assert res[0] == blob[cut - 100:cut]
    assert res[1] == blob[cut - 10:cut]  # short count at the point of failure
    assert res[2] == errno.EIO
    assert res[3] == errno.EIO
    assert res[4] == blob[:10]
    assert xattr(p, "state") == "failed"
    assert xattr(p, "error")
    assert len(gets(srv, "f")) == 3  # bounded by --retries=2
    assert srv.requests("/f")[1]["range"] == "bytes=%d-" % cut


def _single_version_prefix(out, blob):
    """True if out is blob[:len(out)] XOR one constant (one version)."""
    if not out:
        return True
    k = out[0] ^ blob[0]
    table = bytes(b ^ k for b in range(256))
    return out == blob[:len(out)].translate(table)


def test_changed_etag_fails_never_mixes(srv, www, mount):
    blob = put(www, "f", 1_000_000)
    m = mount("a.bin=" + srv.url("f", etag="change", drop_after=100000), opts=FAST_FAIL)
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc != 0, "a changed validator must fail the stream"
    assert _single_version_prefix(out, blob)
    assert len(out) == 100000  # the bytes before the change stay readable
    assert xattr(p, "state") == "failed"
    g = srv.requests("/f", method="GET", started=True)  # the new version was dropped
    assert g[1]["range"] == "bytes=100000-" and g[1]["if_range"]


def test_changed_etag_with_server_ignoring_if_range(srv, www, mount):
    """A 206 carrying a different ETag (server ignores If-Range) is refused."""
    blob = put(www, "f", 1_000_000)
    m = mount("a.bin=" + srv.url("f", etag="change", ignore_if_range=1, drop_after=100000),
              opts=FAST_FAIL)
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc != 0
    assert _single_version_prefix(out, blob)
    assert len(out) == 100000


# ---------------------------------------------------------------- status codes

@pytest.mark.parametrize("code", [404, 403, 410])
def test_4xx_fails_open(srv, www, mount, code):
    put(www, "f", 1000)
    m = mount("a.bin=" + srv.url("f", status=code))
    p = fpath(m)
    e = open_errno(p)
    assert e == errno.EIO
    assert "HTTP %d" % code in (xattr(p, "error") or "")
    assert xattr(p, "http_code") == str(code)
    assert xattr(p, "state") == "failed"
    assert len(gets(srv, "f")) == 1  # no retry
    assert m.proc.poll() is None  # the mount lives on


def test_missing_file_404(srv, www, mount):
    m = mount("a.bin=" + srv.url("nope"))
    p = fpath(m)
    e = open_errno(p)
    assert e == errno.EIO
    assert "HTTP 404" in (xattr(p, "error") or "")


def test_500_then_success(srv, www, mount):
    blob = put(www, "f", 1 * MiB)
    m = mount("a.bin=" + srv.url("f", status=500, fail_times=1))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    statuses_become(srv, "f", [500, 200])
    assert int(xattr(p, "retries")) == 1
    assert xattr(p, "http_code") == "200"


def test_503_twice_then_success(srv, www, mount):
    blob = put(www, "f", 100000)
    m = mount("a.bin=" + srv.url("f", status=503, fail_times=2))
    rc, out, err = cat(fpath(m))
    assert rc == 0, err
    assert out == blob
    statuses_become(srv, "f", [503, 503, 200])


def test_5xx_retries_bounded(srv, www, mount):
    put(www, "f", 1000)
    m = mount("a.bin=" + srv.url("f", status=503), opts=FAST_FAIL)
    p = fpath(m)
    e = open_errno(p)
    assert e == errno.EIO
    assert "HTTP 503" in (xattr(p, "error") or "")
    assert len(gets(srv, "f")) == 3


def test_retry_time_bounds_retries(srv, www, mount):
    put(www, "f", 1000)
    m = mount("a.bin=" + srv.url("f", status=503, retry_after=1),
              opts=["--retries=1000", "--retry-time=3"])
    p = fpath(m)
    e = open_errno(p, timeout=60)  # ends: --retry-time stops the 1000 retries
    assert e == errno.EIO
    n = len(gets(srv, "f"))
    assert 2 <= n < 10, n  # it did retry, and --retry-time stopped it
    assert "HTTP 503" in (xattr(p, "error") or "")


def test_429_honours_retry_after(srv, www, mount):
    blob = put(www, "f", 200000)
    m = mount("a.bin=" + srv.url("f", status=429, fail_times=1, retry_after=2))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    statuses_become(srv, "f", [429, 200])
    g = gets(srv, "f")
    assert g[1]["t"] - g[0]["t"] >= 1.9, "Retry-After: 2 not honoured"
    assert int(xattr(p, "retries")) == 1


def test_connection_refused_fails_at_byte0(mount):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    m = mount("a.bin=http://127.0.0.1:%d/f" % port, opts=FAST_FAIL)
    p = fpath(m)
    e = open_errno(p, timeout=60)
    assert e == errno.EIO
    assert xattr(p, "error")


# ---------------------------------------------------------------- redirects

def test_redirects_followed(srv, www, mount):
    blob = put(www, "f", 300000)
    m = mount("a.bin=" + srv.url("f", redirect=3))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    assert xattr(p, "url") == srv.url("f", redirect=0)
    assert xattr(p, "http_code") == "200"


def test_max_redirs(srv, www, mount):
    put(www, "f", 300000)
    m = mount("a.bin=" + srv.url("f", redirect=3), opts=["--max-redirs=1"] + FAST_FAIL)
    p = fpath(m)
    e = open_errno(p)
    assert e == errno.EIO
    assert xattr(p, "error")
    st = [e["status"] for e in gets(srv, "f")]
    assert st[:2] == [302, 302] and 200 not in st, st  # followed one, refused the next


def test_resume_after_redirect_uses_final_url(srv, www, mount):
    blob = put(www, "f", 1 * MiB)
    m = mount("a.bin=" + srv.url("f", redirect=1, drop_after=200000))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob


# ---------------------------------------------------------------- readers

def test_stalled_server_does_not_block_ctrl_c(srv, www, mount):
    put(www, "f", 4 * MiB)
    m = mount("a.bin=" + srv.url("f", stall_after=65536, stall_secs=300),
              opts=["--stall-timeout=600"])
    p = fpath(m)
    rd = subprocess.Popen(["cat", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: xattr(p, "bytes") == "65536", 20, "the first 64 KiB")
        # cat's read past them is parked on the stream (the daemon says so).
        m.wait_waiters("a.bin", 1, timeout=20)
        assert rd.poll() is None, "the reader should be waiting"
        rd.send_signal(signal.SIGINT)
        try:
            rd.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError("cat waiting on a stalled server ignored SIGINT")
        assert rd.returncode != 0
    finally:
        if rd.poll() is None:
            rd.kill()
            rd.wait(10)
    # the mount still answers, the stream is still running
    assert stat_size(p, timeout=10) == 4 * MiB
    assert m.proc.poll() is None


def test_many_readers_one_fetch(srv, www, mount):
    blob = put(www, "f", 2 * MiB)
    m = mount("a.bin=" + srv.url("f", rate=8 * MiB))
    p = fpath(m)
    procs = [subprocess.Popen(["cat", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    outs = []
    try:
        for pr in procs:
            o, e = pr.communicate(timeout=60)
            assert pr.returncode == 0, e
            outs.append(o)
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait(10)
    assert all(o == blob for o in outs)
    assert len(gets(srv, "f")) == 1
    assert srv.bytes_sent("/f") == len(blob)


# ---------------------------------------------------------------- more edges

def test_empty_file(srv, www, mount):
    (www / "f").write_bytes(b"")
    m = mount("a.bin=" + srv.url("f"))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == b""
    assert stat_size(p) == 0
    assert xattr(p, "state") == "complete"


def test_chunked_drop_resumes(srv, www, mount):
    blob = put(www, "f", 1 * MiB)
    m = mount("a.bin=" + srv.url("f", chunked=1, drop_after=300000))
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc == 0, err
    assert out == blob
    g = gets(srv, "f")
    assert len(g) == 2 and g[1]["range"] == "bytes=300000-"


def test_range_ignored_and_version_changed_fails(srv, www, mount):
    """A 200 to a range request with a different validator: fail, never mix."""
    blob = put(www, "f", 1_000_000)
    m = mount("a.bin=" + srv.url("f", norange=1, etag="change", drop_after=100000),
              opts=FAST_FAIL)
    p = fpath(m)
    rc, out, err = cat(p)
    assert rc != 0
    assert _single_version_prefix(out, blob)
    assert len(out) == 100000
    assert xattr(p, "state") == "failed"


def test_mtime_is_last_modified(srv, www, mount):
    """A URL's Last-Modified becomes the file's mtime (as curl -R does), and
    is shown as user.streamfs.mtime."""
    put(www, "f", 100_000)
    os.utime(www / "f", (1_600_000_000, 1_600_000_000))
    m = mount("a.bin=" + srv.url("f"))
    st = os.stat(fpath(m))
    assert int(st.st_mtime) == 1_600_000_000
    assert xattr(fpath(m), "mtime") == "1600000000"
