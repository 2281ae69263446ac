"""
Secrets: where credentials go and where they must not show.

- Redirects: --user and --header go only to the scheme, host and port they
  were given for (https -> http on the same host:port is another origin).
- `streamfs add` talks only to a control socket run by root or the caller.
"""
import os
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from helpers import DEADLINE, call, read_all, run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nginx_fixture import OPENSSL, make_self_signed  # noqa: E402

PY = "/usr/bin/python3"


# ------------------------------------------------------------ a port that speaks both

class SniffServer:
    """One TCP port that answers TLS to a client that opens with a TLS
    handshake and plain HTTP to one that does not, so that
    https://127.0.0.1:P/ and http://127.0.0.1:P/ are the same host and port
    with two schemes. GET /start answers 302 to http://127.0.0.1:P/data;
    GET /data answers BODY. Every request is recorded as (tls, path,
    headers with lower-case names)."""

    BODY = b"plain body\n" * 100

    def __init__(self, workdir):
        cert, key = make_self_signed(workdir)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True, name="sniff")
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(DEADLINE)
        try:
            tls = conn.recv(1, socket.MSG_PEEK) == b"\x16"
            if tls:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            path = head[0].split()[1]
            headers = {}
            for ln in head[1:]:
                k, _, v = ln.partition(":")
                headers[k.strip().lower()] = v.strip()
            with self.lock:
                self.requests.append((tls, path, headers))
            if path == "/start":
                loc = "http://127.0.0.1:%d/data" % self.port
                conn.sendall(("HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n" % loc).encode())
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                             % len(self.BODY) + self.BODY)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopping.set()
        self.sock.close()
        self.thread.join(DEADLINE)


@pytest.fixture
def sniff(tmp_path):
    if not os.path.exists(OPENSSL):
        pytest.fail("openssl is needed for the TLS fixture (apt-get install openssl)")
    d = tmp_path / "tls"
    d.mkdir()
    s = SniffServer(d)
    yield s
    s.stop()


def test_redirect_to_another_scheme_drops_credentials(sniff, mount):
    """https://h:P -> http://h:P keeps host and port but not the scheme:
    --user and --header must not follow (in clear) without
    --location-trusted, and must follow with it."""
    url = "https://127.0.0.1:%d/start" % sniff.port
    m = mount("a.bin=" + url, opts=["--insecure", "--user=alice:pw-https-only",
                                    "--header=X-Token: tok-https-only"])
    assert call(read_all, m / "a.bin", timeout=30) == SniffServer.BODY
    with sniff.lock:
        reqs = list(sniff.requests)
    first = [r for r in reqs if r[1] == "/start"]
    plain = [r for r in reqs if r[1] == "/data"]
    assert first and first[0][0], reqs
    assert "authorization" in first[0][2] and first[0][2].get("x-token") == "tok-https-only"
    assert plain and not plain[0][0], reqs
    assert "authorization" not in plain[0][2], plain
    assert "x-token" not in plain[0][2], plain

    m2 = mount("b.bin=" + url, opts=["--insecure", "--user=alice:pw", "--header=X-Token: t2",
                                     "--location-trusted"])
    assert call(read_all, m2 / "b.bin", timeout=30) == SniffServer.BODY
    with sniff.lock:
        plain = [r for r in sniff.requests if r[1] == "/data" and r[2].get("x-token") == "t2"]
    assert plain and "authorization" in plain[0][2], sniff.requests


# ------------------------------------------------------------ the add client

FAKE_LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + sys.argv[1])
s.listen(1)
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(float(sys.argv[2]))
got = b""
while True:
    b = c.recv(65536)
    if not b:
        break
    got += b
sys.stdout.write(got.hex() + "\n")
"""


def fake_mount_dir(tmp_path, name):
    """A directory whose user.streamfs.control names abstract socket @name:
    what `streamfs add` reads to find the daemon of a mount."""
    d = tmp_path / "fakemnt"
    d.mkdir()
    os.setxattr(d, "user.streamfs.control", b"@" + name.encode())
    return d


def test_add_sends_nothing_to_a_socket_of_another_user(streamfs_bin, tmp_path):
    """A control socket listened on by another user (not root, not us) gets
    nothing: the request may hold credentials."""
    if os.geteuid() != 0:
        pytest.fail("needs root to run the fake listener as another user")
    name = "streamfs-fake-" + uuid.uuid4().hex
    d = fake_mount_dir(tmp_path, name)
    fake = subprocess.Popen([PY, "-c", FAKE_LISTENER, name, str(DEADLINE)], user=65534,
                            group=65534, cwd="/", stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline() == "ready\n"
        r = run([streamfs_bin, "add", d, "x=http://u:Secr3tPw@127.0.0.1:9/f", "user=a:Secr3tU"],
                timeout=DEADLINE + 5)
        assert r.returncode == 1, r
        assert "belongs to uid 65534" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        out, _ = fake.communicate(timeout=DEADLINE + 5)
        assert out.strip() == "", f"the fake daemon received {bytes.fromhex(out.strip())!r}"
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait(DEADLINE)
