#!/usr/bin/python3
"""A small HTTP/1.1 file server with fault injection, for streamfs tests.

Stdlib only. Two ways to use it:

  script:  /usr/bin/python3 tests/httpserver.py --root DIR [--host 127.0.0.1]
               [--port 0] [--port-file F] [--log F.jsonl]
           prints the chosen port on stdout (one line), writes it to
           --port-file (atomically), appends one JSON object per request to
           --log, and runs until SIGINT/SIGTERM.

  module:  srv = TestHTTPServer(root).start(); srv.url("a.bin", drop_after=5)
           ... srv.log (list of dicts), srv.requests("/a.bin") ... srv.stop()

Files under --root are served with GET and HEAD, single byte ranges
(`bytes=a-b`, `a-`, `-n` -> 206 + Content-Range; unsatisfiable -> 416),
a strong ETag (from size and mtime), Last-Modified, Accept-Ranges: bytes,
and If-Range (ETag or HTTP date; mismatch -> full 200).

Faults are query parameters of the URL, so a streamfs source URL carries its
own faults. "Per URL" below means per path+query; the counters start at 1.

  drop_after=N     close the connection after N body bytes of the response
                   (graceful FIN, Content-Length announced in full); only on
                   the first GET of this URL unless drop_always=1
  drop_always=1    apply drop_after to every GET
  truncate=N       never send the file's bytes at or past offset N: announce
                   the full Content-Length, send up to offset N, close.
                   Every time (a Range request from N gets 0 bytes then a close)
  stall_after=N    after N body bytes, send nothing for stall_secs seconds
  stall_secs=S     (default 3600) then go on; first GET only unless stall_always=1
  stall_always=1
  nolength=1       no Content-Length; body delimited by closing the connection
  chunked=1        Transfer-Encoding: chunked (64 KiB chunks)
  norange=1        ignore Range and If-Range: always 200 with the whole body,
                   no Accept-Ranges header
  etag=change      every GET/HEAD of the URL gets a different ETag and
                   Last-Modified, and the body differs too: every byte is
                   XORed with (request number % 255) + 1, so data mixed from
                   two requests is detectable. If-Range never matches.
  ignore_if_range=1  honour Range even when If-Range does not match (a broken
                   server or proxy; with etag=change this serves a 206 of a
                   different version)
  noetag=1         send no ETag (Last-Modified only)
  etag_text=S      the ETag is "S" (with etag=change: "S-rN"), sent as it
                   is: S may carry control bytes (hostile-server tests)
  nolastmod=1      send no Last-Modified
  status=CODE      answer CODE (e.g. 404, 500, 503, 429) with a short body ...
  fail_times=K     ... for the first K requests of this URL only (default: all)
  retry_after=S    add "Retry-After: S" to those failures
  rate=BPS         throttle the body to BPS bytes per second
  redirect=N       302 to the same URL with redirect=N-1 (N=0: serve)
  redirect_code=C  use C (301, 302, 303, 307, 308) instead of 302
  location=URL     302 to URL, sent as it is (any bytes, any scheme)
  delay=S          wait S seconds before sending the response headers
                   (first request only unless delay_always=1)
  content_encoding=E  add "Content-Encoding: E" (the bytes are sent as they
                   are on disk, e.g. an already gzipped file)
  auth=HEX         answer 401 (with WWW-Authenticate: Basic) unless the
                   request's Authorization header hashes to HEX (sha256 of
                   its value, e.g. of "Basic YWxpY2U6cHc="), so a URL can
                   demand credentials without holding them; see auth_hash()
  status_from=K    status=CODE applies from the K-th request of this URL on
                   (fail_times then counts from there)
  empty_body=1     status=CODE responses have an empty body (Content-Length: 0)
  synth=SIZE       serve SIZE synthetic bytes instead of a file (the path
                   need not exist; SIZE may be far larger than any disk, e.g.
                   20 TiB): every 8-byte aligned word is its own offset, big
                   endian (synth_bytes(off, n) makes any range). A strong
                   ETag and a fixed Last-Modified; the faults apply (not resize)

Lying or changing servers (each Content-Range describes the bytes sent):

  unranged206=OFF  answer a GET without Range with 206 and the bytes from
                   OFF on ("bytes OFF-(size-1)/size"); OFF=0 is legitimate
  range_shift=K    serve a range request a-b as (a+K)-(b+K), clipped to the
                   file, with a Content-Range saying so; from request
                   range_shift_from (default 1) of this URL on
  range_extend=K   serve a range request a-b as a-(b+K), clipped to the file
                   (more than asked), with a Content-Range saying so
  resize=D         from request resize_from (default 2) of this URL on, the
                   resource is D bytes longer (zeros appended) or, if D < 0,
                   -D bytes shorter; ETag and Content-Length follow the size
  unknown_total=1  Content-Range totals are "*" ("bytes a-b/*"), and a 416
                   carries no Content-Range

The request log (srv.log, or JSONL with --log) has one entry per request,
appended when its response ends: t (start, epoch seconds), method, path,
query, n (request number for this URL), range, if_range, headers (all the
request's headers), status, sent (body bytes written), dropped (the server
cut it on purpose), client_gone (the client closed first), stalled (the
body paused for stall_secs).
"""

import argparse
import base64
import email.utils
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse

CHUNK = 1 << 20  # fast-path write size
SLOW_CHUNK = 64 * 1024


class _ClientGone(Exception):
    pass


def auth_hash(user=None, password=None, header=None):
    """The auth= value that accepts Basic USER:PASSWORD, or the Authorization
    header value @header (e.g. "Bearer t0k")."""
    if header is None:
        header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return hashlib.sha256(header.encode()).hexdigest()


SYNTH_MTIME = 1700000000  # Last-Modified of synth= bodies


def synth_bytes(off, n):
    """Bytes [off, off+n) of a synth= body: each 8-byte aligned word holds
    its own offset, big endian."""
    first = off // 8
    last = (off + n + 7) // 8
    words = struct.pack(">%dQ" % (last - first), *range(first * 8, last * 8, 8))
    skip = off - first * 8
    return words[skip:skip + n]


class _SynthFile:
    """The file-like body of a synth= response (seek and read only)."""

    def __init__(self, size):
        self.size = size
        self.pos = 0

    def seek(self, pos):
        self.pos = pos

    def read(self, n):
        n = max(0, min(n, self.size - self.pos))
        data = synth_bytes(self.pos, n)
        self.pos += n
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _parse_range(value, size):
    """Parse a single-range Range header.

    Returns None (ignore the header: absent, not bytes, multi-range or bad
    syntax), "unsatisfiable", or (start, end_inclusive).
    """
    if not value:
        return None
    value = value.strip()
    if not value.lower().startswith("bytes="):
        return None
    spec = value[6:].strip()
    if "," in spec or "-" not in spec:
        return None
    first, _, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    try:
        if first == "":
            if not last.isdigit():
                return None
            n = int(last)
            if n == 0:
                return "unsatisfiable"
            if size == 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1)
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        a = int(first)
        if last and int(last) < a:
            return None
        if a >= size:
            return "unsatisfiable"
        b = int(last) if last else size - 1
        return (a, min(b, size - 1))
    except ValueError:
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "streamfs-testhttp/1.0"
    sys_version = ""

    # ---- plumbing -------------------------------------------------------

    def log_message(self, fmt, *args):  # no access log on stderr
        pass

    def log_error(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        self.server.owner._track(self.connection, False)

    def handle(self):
        try:
            super().handle()
        except (OSError, _ClientGone):
            pass

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _write(self, data):
        try:
            self.wfile.write(data)
        except OSError as e:
            raise _ClientGone() from e

    def _sleep(self, secs):
        """Sleep; True if the server is stopping."""
        return self.server.owner._stopping.wait(secs)

    # ---- the request ----------------------------------------------------

    def _serve(self, head):
        owner = self.server.owner
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path)
        q = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        key = parsed.path + "?" + parsed.query
        n_all, n_get = owner._count(key, head)
        entry = {
            "t": time.time(),
            "method": self.command,
            "path": parsed.path,
            "query": parsed.query,
            "n": n_all,
            "range": self.headers.get("Range"),
            "if_range": self.headers.get("If-Range"),
            "headers": {k: v for k, v in self.headers.items()},
            "status": None,
            "sent": 0,
            "dropped": False,
            "client_gone": False,
            "stalled": False,
        }
        self._entry = entry
        self._cut = False
        owner._begin(entry)
        try:
            self._respond(head, parsed, path, q, n_all, n_get, entry)
        except _ClientGone:
            entry["client_gone"] = True
            self.close_connection = True
        finally:
            owner._record(entry)
            # A client that sees the cut finds its request in the log.
            if self._cut:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _qint(self, q, name, default=None):
        v = q.get(name)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            return int(float(v))

    def _qfloat(self, q, name, default=None):
        v = q.get(name)
        if v is None or v == "":
            return default
        return float(v)

    def _simple(self, code, body=b"", extra=()):
        self._entry["status"] = code
        self.send_response(code)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self._write(body)
            self._entry["sent"] = len(body)

    def _respond(self, head, parsed, path, q, n_all, n_get, entry):
        owner = self.server.owner
        n_first = n_get if not head else n_all

        delay = self._qfloat(q, "delay")
        if delay and (n_all == 1 or q.get("delay_always") == "1"):
            if self._sleep(delay):
                raise _ClientGone()

        # auth=HEX: the credentials must be there, on every request
        want = q.get("auth")
        if want is not None:
            got = self.headers.get("Authorization")
            if got is None or hashlib.sha256(got.encode()).hexdigest() != want:
                self._simple(401, b"unauthorized\n",
                             [("WWW-Authenticate", 'Basic realm="streamfs-test"')])
                return

        # location=URL
        loc = q.get("location")
        if loc is not None:
            self._simple(302, b"redirect\n", [("Location", loc)])
            return

        # redirect=N
        red = self._qint(q, "redirect", 0)
        if red > 0:
            q2 = [(k, v) for k, v in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)]
            q2 = [(k, (str(red - 1) if k == "redirect" else v)) for k, v in q2]
            host = self.headers.get("Host") or "%s:%d" % owner.server_address()
            loc = "http://%s%s?%s" % (host, parsed.path, urllib.parse.urlencode(q2))
            code = self._qint(q, "redirect_code", 302)
            self._simple(code, b"redirect\n", [("Location", loc)])
            return

        # status=CODE, fail_times=K
        st = self._qint(q, "status")
        if st:
            ft = self._qint(q, "fail_times")
            k = n_all - self._qint(q, "status_from", 1) + 1  # this URL's k-th failure
            if k >= 1 and (ft is None or k <= ft):
                extra = []
                ra = q.get("retry_after")
                if ra is not None:
                    extra.append(("Retry-After", ra))
                body = b"" if q.get("empty_body") == "1" else ("error %d\n" % st).encode()
                self._simple(st, body, extra)
                return

        # the file, or a synthetic body
        synth = self._qint(q, "synth")
        if synth is not None:
            f = _SynthFile(synth)
            size, mtime_ns = synth, SYNTH_MTIME * 10**9
        else:
            fpath = owner._resolve(path)
            if fpath is None:
                self._simple(404, b"not found\n")
                return
            try:
                f = open(fpath, "rb")
            except OSError:
                self._simple(404, b"not found\n")
                return
            stt = os.fstat(f.fileno())
            size, mtime_ns = stt.st_size, stt.st_mtime_ns
            resize = self._qint(q, "resize")
            if resize and n_all >= self._qint(q, "resize_from", 2):
                # A changed resource: the file's bytes, cut or extended with zeros.
                with f:
                    blob = f.read(max(0, size + resize))
                blob += bytes(max(0, size + resize - len(blob)))
                f = io.BytesIO(blob)
                size = len(blob)
        with f:
            mtime = mtime_ns // 10**9
            change = q.get("etag") == "change"
            if change:
                etag = '"%x-%x-r%d"' % (size, mtime_ns, n_all)
                lastmod = email.utils.formatdate(mtime + n_all, usegmt=True)
                xor = (n_all % 255) + 1
            else:
                etag = '"%x-%x"' % (size, mtime_ns)
                lastmod = email.utils.formatdate(mtime, usegmt=True)
                xor = 0
            text = q.get("etag_text")
            if text is not None:
                etag = '"%s-r%d"' % (text, n_all) if change else '"%s"' % text
            if q.get("noetag") == "1":
                etag = None
            if q.get("nolastmod") == "1":
                lastmod = None
            norange = q.get("norange") == "1"

            # Range / If-Range
            rng = None
            if not norange:
                rng = _parse_range(self.headers.get("Range"), size)
                if rng is not None:
                    ir = self.headers.get("If-Range")
                    if ir is not None and q.get("ignore_if_range") != "1":
                        ir = ir.strip()
                        ok = False
                        if ir.startswith('"') or ir.startswith("W/"):
                            ok = etag is not None and ir == etag  # strong compare
                        else:
                            ok = lastmod is not None and ir == lastmod
                        if not ok:
                            rng = None
            unknown_total = q.get("unknown_total") == "1"
            shift = self._qint(q, "range_shift", 0)
            if n_all < self._qint(q, "range_shift_from", 1):
                shift = 0
            if rng is not None and rng != "unsatisfiable" and shift:
                a = min(rng[0] + shift, size - 1)
                rng = (a, min(max(rng[1] + shift, a), size - 1))
            extend = self._qint(q, "range_extend", 0)
            if rng is not None and rng != "unsatisfiable" and extend:
                rng = (rng[0], min(rng[1] + extend, size - 1))
            if rng == "unsatisfiable":
                self._simple(416, b"range not satisfiable\n",
                             [] if unknown_total else [("Content-Range", "bytes */%d" % size)])
                return
            u206 = self._qint(q, "unranged206")
            if rng is None and u206 is not None and not self.headers.get("Range") \
                    and u206 < size:
                rng = (u206, size - 1)
            if rng is None:
                status, start, end = 200, 0, size  # end exclusive
            else:
                status, start, end = 206, rng[0], rng[1] + 1
            length = end - start

            nolength = q.get("nolength") == "1"
            chunked = q.get("chunked") == "1" and not nolength

            entry["status"] = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if not norange:
                self.send_header("Accept-Ranges", "bytes")
            if etag is not None:
                self.send_header("ETag", etag)
            if lastmod is not None:
                self.send_header("Last-Modified", lastmod)
            ce = q.get("content_encoding")
            if ce:
                self.send_header("Content-Encoding", ce)
            if status == 206:
                self.send_header("Content-Range", "bytes %d-%d/%s" % (
                    start, end - 1, "*" if unknown_total else size))
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif nolength:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(length))
            try:
                self.end_headers()
            except OSError as e:
                raise _ClientGone() from e
            if head:
                return

            # body plan
            limit = length  # bytes of this body we will send
            cut = False
            drop_after = self._qint(q, "drop_after")
            if drop_after is not None and (n_first == 1 or q.get("drop_always") == "1"):
                if drop_after < limit:
                    limit, cut = drop_after, True
            trunc = self._qint(q, "truncate")
            if trunc is not None:
                room = max(0, trunc - start)
                if room < limit:
                    limit, cut = room, True
            stall_after = self._qint(q, "stall_after")
            stall_secs = self._qfloat(q, "stall_secs", 3600.0)
            if stall_after is None or not (n_first == 1 or q.get("stall_always") == "1"):
                stall_after = None
            rate = self._qfloat(q, "rate")

            fast = (not chunked and not xor and stall_after is None and not rate
                    and synth is None and not isinstance(f, io.BytesIO))
            if fast:
                self._send_fast(f, start, limit, entry)
            else:
                self._send_slow(f, start, limit, entry, chunked=chunked, xor=xor,
                                stall_after=stall_after, stall_secs=stall_secs, rate=rate,
                                final_chunk=not cut)
            if cut:
                entry["dropped"] = True
                self.close_connection = True
                try:
                    self.wfile.flush()
                except OSError:
                    pass
                self._cut = True  # shut down once the entry is logged
            elif nolength:
                self.close_connection = True

    def _send_fast(self, f, offset, count, entry):
        sock = self.connection
        sent = 0
        while sent < count:
            n = min(CHUNK * 8, count - sent)
            try:
                k = sock.sendfile(f, offset + sent, n)
            except OSError as e:
                entry["sent"] = sent
                raise _ClientGone() from e
            if k == 0:
                break
            sent += k
            entry["sent"] = sent
        entry["sent"] = sent

    def _send_slow(self, f, offset, count, entry, chunked, xor, stall_after, stall_secs,
                   rate, final_chunk):
        table = bytes((b ^ xor) for b in range(256)) if xor else None
        sent = 0
        t0 = time.monotonic()
        paced = 0  # bytes counted against the rate since t0
        step = SLOW_CHUNK
        if rate:
            step = max(1, min(SLOW_CHUNK, int(rate / 50) or 1))
        while sent < count:
            if stall_after is not None and sent >= stall_after:
                stall_after = None
                entry["stalled"] = True
                if self._sleep(stall_secs):
                    raise _ClientGone()
                t0, paced = time.monotonic(), 0
            n = min(step, count - sent)
            if stall_after is not None:
                n = min(n, stall_after - sent)
            f.seek(offset + sent)
            data = f.read(n)
            if not data:
                break
            if table:
                data = data.translate(table)
            if rate:
                due = t0 + (paced + len(data)) / rate
                wait = due - time.monotonic()
                if wait > 0 and self._sleep(wait):
                    raise _ClientGone()
                paced += len(data)
            if chunked:
                self._write(b"%x\r\n" % len(data) + data + b"\r\n")
            else:
                self._write(data)
            sent += len(data)
            entry["sent"] = sent
        if chunked and final_chunk:
            self._write(b"0\r\n\r\n")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, _ClientGone)):
            return
        super().handle_error(request, client_address)


def _select(entries, path, method):
    """The log entries for one path ("/a.bin" or "a.bin") and method."""
    if path is not None:
        p = path if path.startswith("/") else "/" + path
        entries = [e for e in entries if e["path"] == p]
    if method is not None:
        entries = [e for e in entries if e["method"] == method]
    return entries


class TestHTTPServer:
    """The server in a background thread (for pytest)."""

    __test__ = False  # not a pytest test class

    def __init__(self, root, host="127.0.0.1", port=0, log_path=None):
        self.root = os.path.realpath(str(root))
        self.host = host
        self._want_port = port
        self.log_path = log_path
        self.log = []
        self._lock = threading.Lock()
        self._counts = {}
        self._conns = set()
        self._open = {}  # id -> entry of each request being answered
        self._stopping = threading.Event()
        self._httpd = None
        self._thread = None
        self._logf = None

    # -- lifecycle --
    def start(self):
        self._httpd = _Server((self.host, self._want_port), _Handler)
        self._httpd.owner = self
        if self.log_path:
            self._logf = open(self.log_path, "a", buffering=1)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="testhttp", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        if self._httpd is not None:
            if self._thread is not None:
                self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._logf:
            self._logf.close()
            self._logf = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- addresses --
    @property
    def port(self):
        return self._httpd.server_address[1]

    def server_address(self):
        return (self.host, self.port)

    def url(self, name, **faults):
        u = "http://%s:%d/%s" % (self.host, self.port, urllib.parse.quote(name.lstrip("/")))
        if faults:
            u += "?" + urllib.parse.urlencode(faults)
        return u

    # -- log --
    def requests(self, path=None, method=None, started=False):
        """Log entries, optionally for one path ("/a.bin") / method, in the
        order their answers ended.

        A request is logged when its answer ends (a client that drops it
        is noticed at the server's next write); started=True adds the
        requests still being answered, whose entries are not final yet,
        and orders all by when they started.
        """
        with self._lock:
            out = list(self.log)
            if started:
                out = sorted(out + list(self._open.values()), key=lambda e: e["t"])
        return _select(out, path, method)

    def answering(self, path=None):
        """The requests (for one path) whose answers have not ended."""
        with self._lock:
            out = list(self._open.values())
        return _select(out, path, None)

    def bytes_sent(self, path=None):
        return sum(e["sent"] for e in self.requests(path))

    def reset(self):
        with self._lock:
            self.log.clear()
            self._counts.clear()

    # -- internal --
    def _count(self, key, head):
        with self._lock:
            c = self._counts.setdefault(key, [0, 0])
            c[0] += 1
            if not head:
                c[1] += 1
            return c[0], c[1]

    def _begin(self, entry):
        with self._lock:
            self._open[id(entry)] = entry

    def _record(self, entry):
        with self._lock:
            self._open.pop(id(entry), None)
            self.log.append(entry)
            if self._logf:
                try:
                    self._logf.write(json.dumps(entry) + "\n")
                except (OSError, ValueError):
                    pass

    def _track(self, conn, add):
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _resolve(self, path):
        rel = path.lstrip("/")
        full = os.path.realpath(os.path.join(self.root, rel))
        if full != self.root and not full.startswith(self.root + os.sep):
            return None
        if not os.path.isfile(full):
            return None
        return full


def main(argv=None):
    ap = argparse.ArgumentParser(description="streamfs test HTTP server")
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    a = ap.parse_args(argv)

    srv = TestHTTPServer(a.root, host=a.host, port=a.port, log_path=a.log)
    srv.start()
    port = srv.port
    if a.port_file:
        tmp = a.port_file + ".tmp%d" % os.getpid()
        with open(tmp, "w") as pf:
            pf.write("%d\n" % port)
        os.rename(tmp, a.port_file)
    print(port, flush=True)

    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not done.wait(0.5):
        pass
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
