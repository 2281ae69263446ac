"""S3 servers for the s3:// tests, both on 127.0.0.1:

  - S3rver: the real s3rver (npm; tools/bootstrap installs it) in its own
    temporary directory on a free port, stopped by PID. It serves objects
    with ETag and Range like S3, and answers unknown access keys with S3's
    403 XML, but does not check V4 signatures.
  - SigV4Server: a small S3 look-alike in this process that does: every
    request's Authorization is recomputed here (sigv4_signature(), written
    from the AWS documentation, checked against its published example in
    test_s3.py) with the secret the server knows, and a wrong one is
    refused with 403 and S3's SignatureDoesNotMatch XML body. It records
    each request's headers for the tests.

sigv4_headers() signs the requests the tests make themselves (uploads to
s3rver), with the same code.
"""

import datetime
import hashlib
import hmac
import http.client
import http.server
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

S3RVER = shutil.which("s3rver") or "/usr/bin/s3rver"
S3RVER_KEY = "S3RVER"  # s3rver's built-in account (key id and secret)
UNSIGNED = "UNSIGNED-PAYLOAD"


# ---- SigV4 ------------------------------------------------------------------

def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_signature(secret, amz_date, region, method, path, query, headers, signed,
                    payload_hash, service="s3"):
    """The hex signature of a request (AWS Signature Version 4, S3 flavour:
    the path is used as sent, already URI-encoded once). @headers maps
    lower-case names to values; @signed lists the names that are signed."""
    canon_headers = "".join("%s:%s\n" % (n, " ".join(headers[n].split())) for n in signed)
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    canon_query = "&".join("%s=%s" % (urllib.parse.quote(k, safe="-_.~"),
                                      urllib.parse.quote(v, safe="-_.~")) for k, v in pairs)
    creq = "\n".join([method, path, canon_query, canon_headers, ";".join(signed), payload_hash])
    scope = "%s/%s/%s/aws4_request" % (amz_date[:8], region, service)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), amz_date[:8]), region), service),
                "aws4_request")
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def sigv4_headers(method, host, path, key_id, secret, region="us-east-1", payload=b""):
    """Headers for a request the tests sign themselves (payload hashed)."""
    amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    h = {"host": host, "x-amz-date": amz_date,
         "x-amz-content-sha256": hashlib.sha256(payload).hexdigest()}
    signed = sorted(h)
    sig = sigv4_signature(secret, amz_date, region, method, path, "", h, signed,
                          h["x-amz-content-sha256"])
    h["authorization"] = ("AWS4-HMAC-SHA256 Credential=%s/%s/%s/s3/aws4_request, "
                          "SignedHeaders=%s, Signature=%s"
                          % (key_id, amz_date[:8], region, ";".join(signed), sig))
    return h


_AUTH_RE = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, "
                      r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ---- s3rver -----------------------------------------------------------------

class S3rver:
    """s3rver on 127.0.0.1, data in @workdir, with @buckets created at start."""

    def __init__(self, workdir, buckets=("bkt",)):
        self.dir = Path(workdir)
        self.buckets = buckets
        self.proc = None
        self.port = None
        self._log = None

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=30):
        if not Path(S3RVER).exists():
            raise RuntimeError("s3rver is not installed (tools/bootstrap installs it from npm)")
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        last = ""
        for _attempt in range(5):
            self.port = _free_port()
            argv = [S3RVER, "-d", str(self.dir / "data"), "-a", "127.0.0.1", "-p",
                    str(self.port), "-s"]
            for b in self.buckets:
                argv += ["--configure-bucket", b]
            self._log = open(self.dir / "s3rver.log", "wb")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _port_open(self.port):
                    return self
                time.sleep(0.05)
            last = self.log_text()
            self.stop()
            if "EADDRINUSE" not in last:
                break
        raise RuntimeError("s3rver did not start: %s" % last)

    def log_text(self):
        p = self.dir / "s3rver.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def request(self, method, path, body=b"", key_id=S3RVER_KEY, secret=S3RVER_KEY):
        """A signed request; returns (status, body)."""
        host = "127.0.0.1:%d" % self.port
        h = sigv4_headers(method, host, path, key_id, secret, payload=body)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def put(self, bucket, key, data):
        """Upload @data as s3://@bucket/@key (the key encoded as S3 wants)."""
        path = "/%s/%s" % (bucket, urllib.parse.quote(key, safe="/-_.~"))
        status, body = self.request("PUT", path, data)
        assert status == 200, "PUT %s: %d %r" % (path, status, body[:300])

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc = None
        if self._log:
            self._log.close()
            self._log = None


# ---- a server that checks signatures ----------------------------------------

def _error_xml(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code>'
            "<Message>%s</Message></Error>" % (code, message)).encode()


class SigV4Server:
    """An S3 look-alike on 127.0.0.1 that checks every signature.

    objects: {"/bucket/key-as-sent": bytes}; keys: {key_id: secret};
    requests: every request's (method, path, {lower-case header: value}).
    Path-style only; Range (one range), If-Range and ETag as S3 does them.
    """

    def __init__(self, keys, region="us-east-1", tokens=None, anonymous=False):
        self.keys = dict(keys)
        self.anonymous = anonymous  # unsigned requests are served (a public bucket)
        self.region = region
        self.tokens = dict(tokens or {})  # key_id -> the session token it needs
        self.objects = {}
        self.requests = []
        self.lock = threading.Lock()
        self.httpd = None
        self.thread = None

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def etag(self, path):
        return '"%s"' % hashlib.md5(self.objects[path]).hexdigest()

    def check(self, method, path, query, headers):
        """None if the request is signed right, else (status, code)."""
        auth = headers.get("authorization")
        if auth is None:
            return None if self.anonymous else (403, "AccessDenied")
        m = _AUTH_RE.match(auth)
        if not m:
            return (400, "AuthorizationHeaderMalformed")
        key_id, day, region, signed, sig = m.groups()
        if key_id not in self.keys:
            return (403, "InvalidAccessKeyId")
        signed = signed.split(";")
        amz_date = headers.get("x-amz-date", "")
        if (region != self.region or not amz_date.startswith(day) or "host" not in signed
                or "x-amz-date" not in signed or any(n not in headers for n in signed)):
            return (400, "AuthorizationHeaderMalformed")
        payload = headers.get("x-amz-content-sha256")
        if payload is None:
            return (400, "InvalidRequest")  # S3 wants it on every signed request
        if self.tokens.get(key_id) is not None:
            if "x-amz-security-token" not in signed or \
                    headers.get("x-amz-security-token") != self.tokens[key_id]:
                return (403, "InvalidToken")
        want = sigv4_signature(self.keys[key_id], amz_date, region, method, path, query,
                               headers, signed, payload)
        if not hmac.compare_digest(want, sig):
            return (403, "SignatureDoesNotMatch")
        return None

    def start(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send_body(self, status, body, headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                path, _, query = self.path.partition("?")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server.lock:
                    server.requests.append((self.command, self.path, headers))
                bad = server.check(self.command, path, query, headers)
                if bad:
                    status, code = bad
                    # S3 names the bucket's region in every error response.
                    return self.send_body(status, _error_xml(code, "refused by the test server"),
                                          [("Content-Type", "application/xml"),
                                           ("x-amz-bucket-region", server.region)])
                if path.startswith("/moved/"):
                    # S3's answer at another region's endpoint: no Location.
                    return self.send_body(301, _error_xml("PermanentRedirect", "elsewhere"),
                                          [("Content-Type", "application/xml"),
                                           ("x-amz-bucket-region", "sa-east-1")])
                data = server.objects.get(path)
                if data is None:
                    return self.send_body(404, _error_xml("NoSuchKey", "no such key"),
                                          [("Content-Type", "application/xml")])
                etag = server.etag(path)
                common = [("ETag", etag), ("Accept-Ranges", "bytes"),
                          ("Last-Modified", "Wed, 02 Dec 2026 10:00:00 GMT")]
                rng = headers.get("range")
                if rng and headers.get("if-range", etag) == etag:
                    m = re.match(r"bytes=(\d+)-(\d*)$", rng)
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                    if start >= len(data):
                        return self.send_body(416, b"", common + [
                            ("Content-Range", "bytes */%d" % len(data))])
                    return self.send_body(206, data[start:end + 1], common + [
                        ("Content-Range", "bytes %d-%d/%d" % (start, end, len(data)))])
                return self.send_body(200, data, common)

            do_HEAD = do_GET

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(10)
            self.httpd = None
