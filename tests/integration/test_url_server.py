"""Self-test of tests/httpserver.py (the fault-injecting test server).

Needs no daemon and no FUSE: plain sockets / http.client / urllib against the
server, so a broken fixture is told apart from a broken streamfs.
"""

import email.utils
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from httpserver import TestHTTPServer, _parse_range, synth_bytes  # noqa: E402

from helpers import DEADLINE, call, wait_until  # noqa: E402

PY = "/usr/bin/python3"
SIZE = 300_000


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    blob = os.urandom(SIZE)
    (root / "f.bin").write_bytes(blob)
    (root / "sub").mkdir()
    (root / "sub" / "g.txt").write_bytes(b"hello\n")
    return root, blob


@pytest.fixture
def srv(data):
    s = TestHTTPServer(data[0]).start()
    yield s
    s.stop()


def raw_get(port, target, headers=None, method="GET", timeout=20):
    """One request on a fresh connection, read until the server closes.

    Returns (status, headers{lower: value}, body bytes as received after the
    header block, raw). Works for dropped/truncated bodies where http.client
    would raise."""
    h = {"Host": "127.0.0.1:%d" % port, "Connection": "close"}
    h.update(headers or {})
    req = "%s %s HTTP/1.1\r\n" % (method, target)
    req += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(req.encode())
        buf = bytearray()
        while True:
            d = s.recv(1 << 16)
            if not d:
                break
            buf += d
    finally:
        s.close()
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def dechunk(body):
    out, pos = bytearray(), 0
    while True:
        eol = body.index(b"\r\n", pos)
        n = int(body[pos:eol], 16)
        if n == 0:
            return bytes(out), True
        out += body[eol + 2:eol + 2 + n]
        pos = eol + 2 + n + 2


# ---------------------------------------------------------------- basics

def test_parse_range():
    assert _parse_range(None, 10) is None
    assert _parse_range("bytes=0-3", 10) == (0, 3)
    assert _parse_range("bytes=4-", 10) == (4, 9)
    assert _parse_range("bytes=-3", 10) == (7, 9)
    assert _parse_range("bytes=-30", 10) == (0, 9)
    assert _parse_range("bytes=5-100", 10) == (5, 9)
    assert _parse_range("bytes=10-", 10) == "unsatisfiable"
    assert _parse_range("bytes=0-1,3-4", 10) is None
    assert _parse_range("items=0-1", 10) is None
    assert _parse_range("bytes=5-2", 10) is None


def test_get_and_head(srv, data):
    _, blob = data
    with urllib.request.urlopen(srv.url("f.bin"), timeout=20) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(SIZE)
        assert r.headers["Accept-Ranges"] == "bytes"
        etag = r.headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"')
        assert email.utils.parsedate_to_datetime(r.headers["Last-Modified"])
        assert r.read() == blob
    st, h, body = raw_get(srv.port, "/f.bin", method="HEAD")
    assert st == 200 and body == b"" and h["content-length"] == str(SIZE)
    assert h["etag"] == etag
    st, _, body = raw_get(srv.port, "/sub/g.txt")
    assert st == 200 and body == b"hello\n"
    assert raw_get(srv.port, "/nope")[0] == 404
    assert raw_get(srv.port, "/sub")[0] == 404
    assert raw_get(srv.port, "/../../etc/passwd")[0] == 404
    # urllib stops at Content-Length: the GET may be logged after the HEAD.
    wait_until(lambda: len(srv.requests("/f.bin")) == 2, what="both requests logged")
    log = sorted(srv.requests("/f.bin"), key=lambda e: e["t"])
    assert [e["method"] for e in log] == ["GET", "HEAD"]
    assert log[0]["sent"] == SIZE and log[0]["status"] == 200 and not log[0]["dropped"]


def test_keepalive_two_requests_one_connection(srv, data):
    _, blob = data
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    for _ in range(2):
        c.request("GET", "/f.bin")
        r = c.getresponse()
        assert r.read() == blob
    c.close()


def test_ranges(srv, data):
    _, blob = data
    st, h, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=100-199"})
    assert st == 206 and body == blob[100:200]
    assert h["content-range"] == "bytes 100-199/%d" % SIZE
    assert h["content-length"] == "100"
    st, h, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=1000-"})
    assert st == 206 and body == blob[1000:]
    st, h, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=-10"})
    assert st == 206 and body == blob[-10:]
    st, h, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=%d-" % SIZE})
    assert st == 416 and h["content-range"] == "bytes */%d" % SIZE
    log = srv.requests("/f.bin")
    assert [e["range"] for e in log] == ["bytes=100-199", "bytes=1000-", "bytes=-10",
                                         "bytes=%d-" % SIZE]
    assert [e["sent"] for e in log[:3]] == [100, SIZE - 1000, 10]


def test_if_range(srv, data):
    _, blob = data
    _, h, _ = raw_get(srv.port, "/f.bin", method="HEAD")
    etag, lm = h["etag"], h["last-modified"]
    st, _, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=10-", "If-Range": etag})
    assert st == 206 and body == blob[10:]
    st, _, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=10-", "If-Range": lm})
    assert st == 206 and body == blob[10:]
    st, _, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=10-", "If-Range": '"other"'})
    assert st == 200 and body == blob
    st, _, body = raw_get(srv.port, "/f.bin", {"Range": "bytes=10-", "If-Range": "W/" + etag})
    assert st == 200 and body == blob
    assert srv.requests("/f.bin")[-1]["if_range"] == "W/" + etag


# ---------------------------------------------------------------- faults

def test_drop_after_first_request_only(srv, data):
    _, blob = data
    q = "/f.bin?drop_after=1000"
    st, h, body = raw_get(srv.port, q)
    assert st == 200 and h["content-length"] == str(SIZE) and body == blob[:1000]
    st, h, body = raw_get(srv.port, q, {"Range": "bytes=1000-"})
    assert st == 206 and body == blob[1000:]
    log = srv.requests("/f.bin")
    assert log[0]["dropped"] and log[0]["sent"] == 1000
    assert not log[1]["dropped"] and log[1]["sent"] == SIZE - 1000
    # http.client sees the cut as an incomplete read
    st, h, body = raw_get(srv.port, "/f.bin?drop_after=5")  # another URL: first again
    assert body == blob[:5]


def test_drop_always(srv, data):
    _, blob = data
    q = "/f.bin?drop_after=100&drop_always=1"
    for i in range(3):
        st, _, body = raw_get(srv.port, q, {"Range": "bytes=%d-" % (i * 100)})
        assert st == 206 and body == blob[i * 100:i * 100 + 100]
    assert all(e["dropped"] for e in srv.requests("/f.bin"))


def test_drop_with_http_client_is_an_error(srv):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    c.request("GET", "/f.bin?drop_after=777")
    r = c.getresponse()
    with pytest.raises(http.client.IncompleteRead) as ei:
        r.read()
    assert len(ei.value.partial) == 777
    c.close()


def test_truncate_every_time(srv, data):
    _, blob = data
    q = "/f.bin?truncate=5000"
    for _ in range(2):
        st, h, body = raw_get(srv.port, q)
        assert st == 200 and h["content-length"] == str(SIZE) and body == blob[:5000]
    st, h, body = raw_get(srv.port, q, {"Range": "bytes=4000-"})
    assert st == 206 and body == blob[4000:5000]
    st, h, body = raw_get(srv.port, q, {"Range": "bytes=5000-"})
    assert st == 206 and body == b"" and h["content-length"] == str(SIZE - 5000)
    assert all(e["dropped"] for e in srv.requests("/f.bin"))


def test_stall(srv, data):
    _, blob = data
    q = "/f.bin?stall_after=2000&stall_secs=0.6"
    t0 = time.monotonic()
    st, _, body = raw_get(srv.port, q)
    assert time.monotonic() - t0 >= 0.5  # a lower bound: the pause happened
    assert st == 200 and body == blob
    st, _, body = raw_get(srv.port, q)  # second GET: no stall
    assert st == 200 and body == blob
    q2 = "/f.bin?stall_after=2000&stall_secs=0&stall_always=1"
    assert raw_get(srv.port, q2)[2] == blob
    assert raw_get(srv.port, q2)[2] == blob
    # An entry is logged once its response has ended, maybe after the
    # client has read the body.
    wait_until(lambda: len(srv.requests("/f.bin")) == 4, what="4 entries in the log")
    seen = sorted((e["query"], e["n"], e["stalled"]) for e in srv.requests("/f.bin"))
    assert [x[2] for x in seen] == [True, True, True, False], seen


def test_stall_client_gives_up(srv):
    """A client closing during a stall is logged, not a traceback."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    s.sendall(b"GET /f.bin?stall_after=10&stall_secs=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(100)
    s.close()
    wait_until(lambda: srv.requests("/f.bin"), what="the request to be logged")
    e = srv.requests("/f.bin")[0]
    assert e["client_gone"] and e["sent"] < SIZE


def test_nolength_and_chunked(srv, data):
    _, blob = data
    st, h, body = raw_get(srv.port, "/f.bin?nolength=1")
    assert st == 200 and "content-length" not in h and body == blob
    assert h.get("connection") == "close"
    st, h, body = raw_get(srv.port, "/f.bin?chunked=1")
    assert st == 200 and h["transfer-encoding"] == "chunked"
    assert dechunk(body) == (blob, True)
    with urllib.request.urlopen(srv.url("f.bin", chunked=1), timeout=20) as r:
        assert r.read() == blob
    # chunked + drop: no terminating chunk
    st, h, body = raw_get(srv.port, "/f.bin?chunked=1&drop_after=70000")
    with pytest.raises(ValueError):
        dechunk(body)


def test_norange(srv, data):
    _, blob = data
    st, h, body = raw_get(srv.port, "/f.bin?norange=1", {"Range": "bytes=100-"})
    assert st == 200 and body == blob and "accept-ranges" not in h


def test_etag_change(srv, data):
    _, blob = data
    q = "/f.bin?etag=change"
    st1, h1, b1 = raw_get(srv.port, q)
    st2, h2, b2 = raw_get(srv.port, q, {"Range": "bytes=10-", "If-Range": h1["etag"]})
    assert st1 == 200 and st2 == 200  # If-Range never matches: full body
    assert h1["etag"] != h2["etag"] and h1["last-modified"] != h2["last-modified"]
    assert b1 != blob and b2 != blob and b1 != b2
    k1, k2 = b1[0] ^ blob[0], b2[0] ^ blob[0]
    assert k1 != k2 and k1 and k2
    assert bytes(x ^ k1 for x in b1[:1000]) == blob[:1000]
    assert bytes(x ^ k2 for x in b2[-1000:]) == blob[-1000:]
    # a range without If-Range is still served, from the changed version
    st3, h3, b3 = raw_get(srv.port, q, {"Range": "bytes=10-19"})
    assert st3 == 206 and b3 not in (blob[10:20], b1[10:20], b2[10:20])


def test_status_and_fail_times(srv, data):
    _, blob = data
    st, _, body = raw_get(srv.port, "/f.bin?status=404")
    assert st == 404 and b"404" in body
    assert raw_get(srv.port, "/f.bin?status=404")[0] == 404
    q = "/f.bin?status=500&fail_times=2"
    assert [raw_get(srv.port, q)[0] for _ in range(3)] == [500, 500, 200]
    assert raw_get(srv.port, q)[2] == blob


def test_429_retry_after(srv, data):
    _, blob = data
    q = "/f.bin?status=429&fail_times=1&retry_after=2"
    st, h, _ = raw_get(srv.port, q)
    assert st == 429 and h["retry-after"] == "2"
    st, h, body = raw_get(srv.port, q)
    assert st == 200 and body == blob and "retry-after" not in h


def test_rate(srv):
    t0 = time.monotonic()
    st, _, body = raw_get(srv.port, "/f.bin?rate=1000000")
    dt = time.monotonic() - t0
    assert st == 200 and len(body) == SIZE
    assert dt >= 0.25  # 300 kB at 1 MB/s is ~0.3 s; only a lower bound is checked


def test_redirect(srv, data):
    _, blob = data
    with urllib.request.urlopen(srv.url("f.bin", redirect=3), timeout=20) as r:
        assert r.read() == blob
        assert "redirect=0" in r.url
    st, h, _ = raw_get(srv.port, "/f.bin?redirect=1&x=y", method="GET")
    assert st == 302
    assert h["location"] == "http://127.0.0.1:%d/f.bin?redirect=0&x=y" % srv.port
    # The server records a request once it has sent the body: the 200's
    # record may land after the last 302's on a loaded machine, or after
    # the client has read the body and gone on (seen under load).
    wait_until(lambda: len(srv.requests("/f.bin")) >= 5, what="5 requests recorded")
    statuses = [e["status"] for e in srv.requests("/f.bin")]
    assert statuses[:3] == [302, 302, 302] and sorted(statuses[3:]) == [200, 302], statuses


def test_content_encoding_and_headers_logged(srv, data):
    _, blob = data
    st, h, body = raw_get(srv.port, "/f.bin?content_encoding=gzip", {"X-Test": "v1"})
    assert st == 200 and h["content-encoding"] == "gzip" and body == blob
    e = srv.requests("/f.bin")[0]
    assert e["headers"]["X-Test"] == "v1"


def test_delay(srv):
    t0 = time.monotonic()
    assert raw_get(srv.port, "/sub/g.txt?delay=0.4")[0] == 200
    assert time.monotonic() - t0 >= 0.35


def test_stop_with_stalled_client(data):
    s = TestHTTPServer(data[0]).start()
    c = socket.create_connection(("127.0.0.1", s.port), timeout=20)
    c.sendall(b"GET /f.bin?stall_after=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    c.recv(100)
    call(s.stop, what="stop() with a client in a stall")
    # The stalled response is cut, not left to its hour-long pause.
    c.settimeout(DEADLINE)
    try:
        while c.recv(65536):
            pass
    except ConnectionResetError:
        pass
    c.close()


# ---------------------------------------------------------------- script mode

def complete_lines(path):
    """The lines of @path that are whole (end with a newline)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text.splitlines()[:text.count("\n")]


def test_script_mode(tmp_path, data):
    root, blob = data
    pf, logf = tmp_path / "port", tmp_path / "log.jsonl"
    p = subprocess.Popen([PY, str(TESTS / "httpserver.py"), "--root", str(root),
                          "--port-file", str(pf), "--log", str(logf)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        port = int(line)
        assert int(pf.read_text()) == port
        assert raw_get(port, "/f.bin")[2] == blob
        # a client vanishing mid-body (broken pipe / reset) must stay quiet
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sendall(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            c.recv(10)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        raw_get(port, "/f.bin?drop_after=10")
        raw_get(port, "/f.bin?truncate=10")
        # An entry is logged when its response ends, which for the vanished
        # clients is when the server notices: wait for all six.
        wait_until(lambda: len(complete_lines(logf)) == 6, what="6 entries in the log")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
    assert p.returncode == 0
    assert err == "", err
    entries = [json.loads(x) for x in complete_lines(logf)]
    assert len(entries) == 6
    assert entries[0]["sent"] == SIZE and entries[0]["status"] == 200
    assert entries[-1]["dropped"] and entries[-1]["query"] == "truncate=10"


def test_ignore_if_range(srv, data):
    _, blob = data
    q = "/f.bin?etag=change&ignore_if_range=1"
    _, h1, b1 = raw_get(srv.port, q)
    st, h2, b2 = raw_get(srv.port, q, {"Range": "bytes=10-", "If-Range": h1["etag"]})
    assert st == 206 and h2["etag"] != h1["etag"]
    assert b2 != b1[10:] and len(b2) == SIZE - 10


def test_status_from_and_empty_body(srv, data):
    _, blob = data
    q = "/f.bin?status=503&status_from=2&fail_times=1&empty_body=1"
    st, _, body = raw_get(srv.port, q)
    assert st == 200 and body == blob
    st, h, body = raw_get(srv.port, q)
    assert st == 503 and body == b"" and h["content-length"] == "0"
    assert raw_get(srv.port, q)[0] == 200


def test_unranged206(srv, data):
    _, blob = data
    st, h, body = raw_get(srv.port, "/f.bin?unranged206=100")
    assert st == 206 and h["content-range"] == "bytes 100-%d/%d" % (SIZE - 1, SIZE)
    assert body == blob[100:]
    st, _, body = raw_get(srv.port, "/f.bin?unranged206=100", {"Range": "bytes=5-9"})
    assert st == 206 and body == blob[5:10]  # only unranged requests lie


def test_range_shift(srv, data):
    _, blob = data
    st, h, body = raw_get(srv.port, "/f.bin?range_shift=7", {"Range": "bytes=10-19"})
    assert st == 206 and h["content-range"] == "bytes 17-26/%d" % SIZE and body == blob[17:27]
    st, _, body = raw_get(srv.port, "/f.bin?range_shift=7")
    assert st == 200 and body == blob
    q = "/f.bin?range_shift=7&range_shift_from=2"
    assert raw_get(srv.port, q, {"Range": "bytes=10-19"})[2] == blob[10:20]
    assert raw_get(srv.port, q, {"Range": "bytes=10-19"})[2] == blob[17:27]
    st, h, body = raw_get(srv.port, "/f.bin?range_extend=5", {"Range": "bytes=10-19"})
    assert st == 206 and h["content-range"] == "bytes 10-24/%d" % SIZE and body == blob[10:25]


def test_resize(srv, data):
    _, blob = data
    q = "/f.bin?resize=1000&noetag=1&nolastmod=1"
    st, h, body = raw_get(srv.port, q)
    assert st == 200 and body == blob and "etag" not in h
    st, h, body = raw_get(srv.port, q, {"Range": "bytes=10-"})
    assert st == 206 and h["content-range"] == "bytes 10-%d/%d" % (SIZE + 999, SIZE + 1000)
    assert body == blob[10:] + bytes(1000)
    st, h, body = raw_get(srv.port, "/f.bin?resize=-1000")
    assert st == 200 and body == blob  # the first request of this URL is as on disk
    st, h, body = raw_get(srv.port, "/f.bin?resize=-1000")
    assert st == 200 and body == blob[:-1000] and h["content-length"] == str(SIZE - 1000)


def test_unknown_total(srv, data):
    _, blob = data
    q = "/f.bin?unknown_total=1"
    st, h, body = raw_get(srv.port, q, {"Range": "bytes=10-19"})
    assert st == 206 and h["content-range"] == "bytes 10-19/*" and body == blob[10:20]
    st, h, body = raw_get(srv.port, q, {"Range": "bytes=%d-" % SIZE})
    assert st == 416 and "content-range" not in h
    st, h, body = raw_get(srv.port, q)
    assert st == 200 and body == blob


def test_synth_any_size_and_offset(srv):
    """synth=SIZE: a body larger than any disk, any range of it generated
    on the fly, every aligned 8-byte word its own offset."""
    assert synth_bytes(0, 16) == bytes(8) + (8).to_bytes(8, "big")
    assert synth_bytes(13, 6) == (8).to_bytes(8, "big")[5:] + (16).to_bytes(8, "big")[:3]
    size = 20 << 40
    target = "/any/name?synth=%d" % size
    st, h, _ = raw_get(srv.port, target, method="HEAD")
    assert st == 200 and h["content-length"] == str(size) and h["accept-ranges"] == "bytes"
    etag = h["etag"]
    off = (17 << 40) + 3
    st, h, body = raw_get(srv.port, target, {"Range": "bytes=%d-%d" % (off, off + 99999),
                                             "If-Range": etag})
    assert st == 206 and h["content-range"] == "bytes %d-%d/%d" % (off, off + 99999, size)
    assert body == synth_bytes(off, 100000)
    assert int.from_bytes(body[5:13], "big") == off + 5
    st, h, body = raw_get(srv.port, target, {"Range": "bytes=-5"})
    assert st == 206 and body == synth_bytes(size - 5, 5)
    st, h, _ = raw_get(srv.port, target, {"Range": "bytes=%d-" % size})
    assert st == 416 and h["content-range"] == "bytes */%d" % size
    st, _, body = raw_get(srv.port, "/s?synth=1000&drop_after=100")
    assert st == 200 and body == synth_bytes(0, 100)
