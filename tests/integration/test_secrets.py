"""
Secrets: where credentials go and where they must not show.

- /proc/PID/cmdline of the daemon, of the keepers it forks and of the
  `streamfs add` client shows no password, header value or URL password:
  they are overwritten in argv once parsed.
- The ways that never put a secret in argv work and authenticate:
  --user=@FILE, --header=@FILE, --netrc, --netrc-file, a manifest, and
  `streamfs add` with user=@FILE/header=@FILE; a regular file holding
  credentials that group or others can access is refused (exit 2).
- The daemon's log shows URLs without their credentials.
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

from helpers import DEADLINE, call, read_all, run, wait_until, xattr

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpserver import TestHTTPServer, auth_hash  # noqa: E402
from nginx_fixture import OPENSSL, make_self_signed  # noqa: E402

PY = "/usr/bin/python3"
BLOB = os.urandom(200_000)


@pytest.fixture
def srv(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "f").write_bytes(BLOB)
    s = TestHTTPServer(root).start()
    yield s
    s.stop()


def secret_file(path, text, mode=0o600):
    p = Path(path)
    p.write_text(text)
    os.chmod(p, mode)
    return p


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def children(pid):
    """PIDs whose parent is @pid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out


def add(bin_, mnt, *args, cwd=None):
    return run([bin_, "add", str(mnt), *args], timeout=20, cwd=cwd)


# ------------------------------------------------------------ argv

@pytest.mark.parametrize("foreground", [True, False])
def test_no_secret_in_cmdline_of_the_daemon_and_its_children(srv, mount, foreground):
    secrets = [b"Pw1Secret", b"Tok2Secret", b"Url3Secret"]
    a = srv.url("f", auth=auth_hash("alice", "Pw1Secret"))
    b = "http://bob:Url3Secret@127.0.0.1:%d/f" % srv.port
    m = mount("a.bin=" + a, "b.bin=" + b, "c.txt=cmd:echo c; exec sleep 600",
              opts=["--user", "alice:Pw1Secret", "--head=X-Api-Key: Tok2Secret"],
              foreground=foreground)
    # --user still works once wiped from argv
    assert call(read_all, m / "a.bin", timeout=30) == BLOB
    wait_until(lambda: any(e["headers"].get("X-Api-Key") == "Tok2Secret"
                           for e in srv.requests("/f")), DEADLINE, "--header in the request")
    # the command's keeper (a fork of the daemon) and the shell
    call(os.close, call(os.open, str(m / "c.txt"), os.O_RDONLY))
    keepers = wait_until(lambda: children(m.pid), DEADLINE, "the keeper of c.txt")
    shells = wait_until(lambda: [c for k in keepers for c in children(k)], DEADLINE,
                        "the command of c.txt")
    seen = {}
    for pid in [m.pid] + keepers + shells:
        seen[pid] = cmdline(pid) or b""
    assert b"alice:" in seen[m.pid] and b"X-Api-Key: " in seen[m.pid], seen[m.pid]
    assert b"bob:" in seen[m.pid] and b"@127.0.0.1" in seen[m.pid], seen[m.pid]
    for pid, line in seen.items():
        for sec in secrets:
            assert sec not in line, f"pid {pid} shows {sec!r}: {line!r}"


# ------------------------------------------------------------ ways that keep secrets out of argv

def test_user_and_header_files_authenticate(srv, mount, tmp_path):
    uf = secret_file(tmp_path / "user.txt", "alice:file pw\n")
    m = mount("a.bin=" + srv.url("f", auth=auth_hash("alice", "file pw")),
              opts=["--user=@" + str(uf)])
    assert call(read_all, m / "a.bin", timeout=30) == BLOB

    hf = secret_file(tmp_path / "headers.txt", "Authorization: Bearer t0k\r\n\nX-Extra: 1\n", 0o400)
    m2 = mount("b.bin=" + srv.url("f", auth=auth_hash(header="Bearer t0k"), n=2),
               opts=["--header=@" + str(hf)])
    assert call(read_all, m2 / "b.bin", timeout=30) == BLOB
    wait_until(lambda: any(e["headers"].get("X-Extra") == "1" for e in srv.requests("/f")),
               DEADLINE, "the second header of the file in the request")
    # and without them the server refuses: the files did the work
    m3 = mount("c.bin=" + srv.url("f", auth=auth_hash("alice", "file pw"), n=3),
               opts=["--retries=0"])
    with pytest.raises(OSError):
        call(read_all, m3 / "c.bin", timeout=30)
    assert xattr(m3 / "c.bin", "error") == "HTTP 401"


def test_netrc_authenticates(srv, mount, tmp_path):
    nf = secret_file(tmp_path / "my.netrc", "machine 127.0.0.1 login alice password NetrcPw\n")
    url = srv.url("f", auth=auth_hash("alice", "NetrcPw"))
    m = mount("a.bin=" + url, opts=["--netrc-file=" + str(nf)])
    assert call(read_all, m / "a.bin", timeout=30) == BLOB
    home = tmp_path / "home"
    home.mkdir()
    secret_file(home / ".netrc", nf.read_text())
    m2 = mount("b.bin=" + url, opts=["--netrc"], env={"HOME": str(home)})
    assert call(read_all, m2 / "b.bin", timeout=30) == BLOB


def test_manifest_with_credentials_must_be_private(srv, mount, mount_fail, tmp_path):
    url = srv.url("f", auth=auth_hash("alice", "IniPw"))
    ini = secret_file(tmp_path / "s.ini", f"[a.bin]\nsource = {url}\nuser = alice:IniPw\n", 0o644)
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("-c", ini, mnt, check_mountpoint=mnt)
    assert r.returncode == 2, r
    assert r.stderr.startswith("streamfs: manifest ") and len(r.stderr.splitlines()) == 1, r.stderr
    assert "accessible by group or others (mode 0644)" in r.stderr
    os.chmod(ini, 0o600)
    m = mount(opts=["-c", ini])
    assert call(read_all, m / "a.bin", timeout=30) == BLOB
    # credentials kept in a file of their own: the manifest may be readable
    uf = secret_file(tmp_path / "u.txt", "alice:IniPw\n")
    ini2 = secret_file(tmp_path / "open.ini", f"[b.bin]\nsource = {url}\nuser = @{uf}\n", 0o644)
    m2 = mount(opts=["-c", ini2])
    assert call(read_all, m2 / "b.bin", timeout=30) == BLOB


@pytest.mark.parametrize("opt", ["--user=@{}", "--header=@{}", "--netrc-file={}"])
def test_secret_file_readable_by_others_is_refused(mount_fail, tmp_path, opt):
    f = secret_file(tmp_path / "s", "machine h login a password p\n" if "netrc" in opt
                    else "X-A: p\n" if "header" in opt else "a:p\n", 0o604)
    mnt = mount_fail.new_mountpoint()
    r = mount_fail(opt.format(f), mnt, "a=http://127.0.0.1:9/x", check_mountpoint=mnt)
    assert r.returncode == 2, r
    assert len(r.stderr.splitlines()) == 1 and "(mode 0604): chmod go= it" in r.stderr, r.stderr


def test_add_with_secret_files_authenticates(srv, mount, streamfs_bin, tmp_path):
    m = mount()
    uf = secret_file(tmp_path / "u.txt", "alice:AddPw\n")
    r = add(streamfs_bin, m.path, "a.bin=" + srv.url("f", auth=auth_hash("alice", "AddPw")),
            "user=@u.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert call(read_all, m / "a.bin", timeout=30) == BLOB
    secret_file(tmp_path / "h.txt", "Authorization: Bearer AddTok\n")
    r = add(streamfs_bin, m.path, "b.bin=" + srv.url("f", auth=auth_hash(header="Bearer AddTok")),
            "--header=@h.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert call(read_all, m / "b.bin", timeout=30) == BLOB
    secret_file(tmp_path / "n.netrc", "machine 127.0.0.1 login alice password AddPw\n")
    r = add(streamfs_bin, m.path, "c.bin=" + srv.url("f", auth=auth_hash("alice", "AddPw"), n=3),
            "netrc-file=n.netrc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert call(read_all, m / "c.bin", timeout=30) == BLOB
    # a file others can read: refused by the client, nothing sent
    os.chmod(uf, 0o644)
    r = add(streamfs_bin, m.path, "d.bin=" + srv.url("f"), "user=@u.txt", cwd=tmp_path)
    assert r.returncode == 2 and "(mode 0644)" in r.stderr, r
    assert sorted(os.listdir(m.path)) == ["a.bin", "b.bin", "c.bin"]


# ------------------------------------------------------------ the log

def test_log_shows_no_url_password(srv, mount, streamfs_bin):
    """The daemon's log (-v: everything) never holds a URL's password: not
    from the command line, not from `streamfs add`, not after a redirect."""
    r_url = "http://bob:LogPw1@127.0.0.1:%d/f?redirect=1" % srv.port
    m = mount("r.bin=" + r_url, opts=["-v"])
    assert call(read_all, m / "r.bin", timeout=30) == BLOB
    a_url = "http://carol:LogPw2@127.0.0.1:%d/f?auth=%s" % (srv.port, auth_hash("carol", "LogPw2"))
    r = add(streamfs_bin, m.path, "x.bin=" + a_url)
    assert r.returncode == 0, r.stderr
    assert call(read_all, m / "x.bin", timeout=30) == BLOB
    log = wait_until(lambda: "control: add x.bin=" in m.stderr_text() and m.stderr_text(),
                     DEADLINE, "the add in the log")
    assert "LogPw1" not in log and "LogPw2" not in log, log
    assert "control: add x.bin=http://127.0.0.1:%d/f" % srv.port in log
    assert "redirected" in log


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


def test_add_client_argv_shows_no_secret(streamfs_bin, tmp_path):
    """The `streamfs add` client wipes the secrets from its own argv before
    it talks to the daemon (here a fake one, run by us, that holds the
    client waiting for its answer while the test reads its cmdline)."""
    name = "streamfs-fake-" + uuid.uuid4().hex
    d = fake_mount_dir(tmp_path, name)
    uf = secret_file(tmp_path / "u.txt", "dave:FromFile4\n")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind("\0" + name)
    lst.listen(1)
    lst.settimeout(DEADLINE)
    client = subprocess.Popen([str(streamfs_bin), "add", str(d), "x=http://u:Client1@127.0.0.1/f",
                               "user=a:Client2", "header=X-K: Client3", "user=@" + str(uf)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = lst.accept()
        conn.settimeout(DEADLINE)
        req = b""
        while True:
            b = conn.recv(65536)
            if not b:
                break
            req += b
        # the whole request is sent: the client now waits for the answer
        line = cmdline(client.pid)
        assert line and b"x=http://u:" in line, line
        for sec in (b"Client1", b"Client2", b"Client3"):
            assert sec not in line, line
        fields = req.split(b"\0")
        assert fields[:2] == [b"add", b"x=http://u:Client1@127.0.0.1/f"], fields
        assert b"user=a:Client2" in fields and b"header=X-K: Client3" in fields, fields
        assert b"user=dave:FromFile4" in fields, fields
        conn.sendall(b"ok\n")
        conn.close()
        out, err = client.communicate(timeout=DEADLINE)
        assert client.returncode == 0, err
    finally:
        lst.close()
        if client.poll() is None:
            client.kill()
            client.wait(DEADLINE)
