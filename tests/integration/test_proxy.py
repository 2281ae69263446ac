"""--proxy, --noproxy, libcurl's proxy variables, and the shared cache tier
of contrib/nginx-slice-cache.conf (a real nginx in front of the test server)."""

import hashlib
import os
import re
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import Background, read_all, xattr  # noqa: E402
from nginx_fixture import NGINX, Nginx  # noqa: E402

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "nginx-slice-cache.conf"

needs_nginx = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx not installed")

# The environment of every mount here: no proxy unless the test sets one,
# whatever the machine running the tests has.
NO_PROXY_ENV = {k: "" for k in ("http_proxy", "https_proxy", "HTTPS_PROXY", "ALL_PROXY",
                                "all_proxy", "no_proxy", "NO_PROXY")}


def closed_port():
    """A port nothing listens on (bound, then closed: connect() is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def slice_cache_conf(cache_dir):
    """contrib/nginx-slice-cache.conf with its three marked values made
    local. Each replaced line must be there: the test runs the shipped file."""
    text = CONTRIB.read_text()
    subs = [
        (r"proxy_cache_path /var/cache/nginx/streamfs ", "proxy_cache_path %s " % cache_dir),
        (r"listen 3128;", "listen 127.0.0.1:%(port)d;"),
        (r"resolver 127\.0\.0\.53 ipv6=off;", "# (no resolver: IP addresses only)"),
    ]
    for pat, rep in subs:
        text, n = re.subn(pat, rep.replace("\\", "\\\\"), text)
        assert n == 1, "contrib/nginx-slice-cache.conf no longer has %r" % pat
    return text


@pytest.fixture
def slice_cache(tmp_path):
    """A real nginx running contrib/nginx-slice-cache.conf on .extra_port."""
    cache = tmp_path / "nginx-cache"
    cache.mkdir()
    text = slice_cache_conf(cache)
    n = Nginx(tmp_path / "nginx-www", tmp_path / "nginx",
              http_extra=lambda ng: text.replace("%(port)d", str(ng.extra_port)))
    (tmp_path / "nginx-www").mkdir()
    n.start()
    yield n
    n.stop()


def origin_bytes(srv, path):
    return sum(e["sent"] for e in srv.requests(path) if e["method"] == "GET")


@needs_nginx
def test_two_hosts_through_slice_cache(srv, www, slice_cache, mount, tmp_path):
    """Two mounts with separate stores read the same file at the same time
    through the nginx slice cache: the origin sends it about once."""
    size = 24 * MiB + 4321
    blob = os.urandom(size)
    (www / "film.bin").write_bytes(blob)
    proxy = "--proxy=http://127.0.0.1:%d" % slice_cache.extra_port
    mounts = []
    for i in range(2):
        d = tmp_path / ("store%d" % i)
        d.mkdir()
        mounts.append(mount("film.bin=" + srv.url("film.bin"),
                            opts=[proxy, "--cache-dir=%s" % d], env=NO_PROXY_ENV))
    readers = [Background(read_all, str(m / "film.bin"), name="read %s" % m.path)
               for m in mounts]
    for r in readers:
        assert hashlib.sha256(r.result(what="whole file through the proxy")).digest() == \
            hashlib.sha256(blob).digest()
    sent = origin_bytes(srv, "/film.bin")
    assert size <= sent < 1.2 * size, "origin sent %d bytes for a %d byte file" % (sent, size)
    # What the origin saw were nginx's slice requests, never a whole-file GET.
    ranges = [e["range"] for e in srv.requests("/film.bin")]
    assert ranges and all(r and r.startswith("bytes=") for r in ranges), ranges
    # and every byte the mounts got came through nginx
    assert sum(1 for ln in slice_cache.access_log() if "/film.bin" in ln) >= 2
    for m in mounts:
        assert xattr(m / "film.bin", "proxy") == "http://127.0.0.1:%d/" % slice_cache.extra_port


@needs_nginx
def test_range_reads_through_slice_cache(srv, www, slice_cache, mount, tmp_path):
    """fill=ondemand: a second host's Range reads come from the slices the
    first host's reads cached; the bytes are right."""
    size = 48 * MiB
    blob = os.urandom(size)
    (www / "r.bin").write_bytes(blob)
    proxy = "--proxy=http://127.0.0.1:%d" % slice_cache.extra_port
    offsets = [0, 17 * MiB + 100, 33 * MiB - 3, size - 5000]
    got = []
    for i in range(2):
        d = tmp_path / ("rstore%d" % i)
        d.mkdir()
        m = mount("r.bin=" + srv.url("r.bin"), opts=[proxy, "--fill=ondemand",
                                                     "--cache-dir=%s" % d], env=NO_PROXY_ENV)
        with open(m / "r.bin", "rb") as f:
            for off in offsets:
                f.seek(off)
                got.append((off, f.read(4096)))
    for off, data in got:
        assert data == blob[off:off + 4096], "wrong bytes at %d" % off
    # The origin saw slice requests only, each slice once: what the second
    # host read near the first one's offsets came from the cache.
    ranges = [e["range"] for e in srv.requests("/r.bin")]
    assert ranges and all(r and r.startswith("bytes=") for r in ranges), ranges
    assert len(set(ranges)) == len(ranges), "a slice fetched twice: %s" % ranges
    sent = origin_bytes(srv, "/r.bin")
    assert sent < size / 2, "ondemand reads through the proxy cost the origin %d: %s" % (sent, ranges)


def test_proxy_down_fails_like_a_connect_error(srv, www, mount):
    (www / "d.bin").write_bytes(os.urandom(MiB))
    m = mount("d.bin=" + srv.url("d.bin"),
              opts=["--proxy=http://127.0.0.1:%d" % closed_port(), "--retries=1",
                    "--retry-time=5", "--connect-timeout=2"], env=NO_PROXY_ENV)
    p = m / "d.bin"
    with pytest.raises(OSError) as e:
        read_all(p)
    assert e.value.errno == 5  # EIO
    assert m.state("d.bin") == "failed"
    err = xattr(p, "error")
    assert "connect" in err.lower(), err
    assert srv.requests("/d.bin") == []  # nothing went around the proxy


@needs_nginx
def test_env_proxy_and_noproxy(srv, www, slice_cache, mount):
    """libcurl's http_proxy is honoured when --proxy is not given, and
    --noproxy (or NO_PROXY) sends a host around it."""
    blob = os.urandom(2 * MiB)
    (www / "e.bin").write_bytes(blob)
    env = dict(NO_PROXY_ENV, http_proxy="http://127.0.0.1:%d" % slice_cache.extra_port)
    m = mount("e.bin=" + srv.url("e.bin"), env=env)
    assert read_all(m / "e.bin") == blob
    assert any("/e.bin" in ln for ln in slice_cache.access_log())
    # A dead proxy in the environment: --noproxy reaches the origin directly.
    dead = dict(NO_PROXY_ENV, http_proxy="http://127.0.0.1:%d" % closed_port())
    m2 = mount("n.bin=" + srv.url("e.bin") + "?direct=1",
               opts=["--noproxy=127.0.0.1", "--retries=0"], env=dead)
    assert read_all(m2 / "n.bin") == blob
    # NO_PROXY from the environment works the same.
    m3 = mount("n.bin=" + srv.url("e.bin") + "?direct=2", opts=["--retries=0"],
               env=dict(dead, no_proxy="127.0.0.1"))
    assert read_all(m3 / "n.bin") == blob
    # --proxy wins over the environment's dead one.
    m4 = mount("p.bin=" + srv.url("e.bin") + "?viaproxy=1",
               opts=["--proxy=http://127.0.0.1:%d" % slice_cache.extra_port], env=dead)
    assert read_all(m4 / "p.bin") == blob
    assert any("viaproxy=1" in ln for ln in slice_cache.access_log())


@pytest.mark.parametrize("value", ["ftp://cache:21", "socks5://cache:1080", "cache:3128",
                                   "http://", "http:///x", "http://a b", ""])
def test_bad_proxy_refused(mount_fail, value):
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("--proxy=" + value, mnt, "x=http://127.0.0.1:1/x", check_mountpoint=mnt)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--proxy" in lines[0] and "http://" in lines[0], r.stderr


def test_bad_noproxy_refused(mount_fail):
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("--noproxy=a, b", mnt, "x=http://127.0.0.1:1/x", check_mountpoint=mnt)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--noproxy" in r.stderr


def test_proxy_password_hidden(mount_fail, mount, srv, www):
    """A proxy password is neither echoed in an error nor left in argv."""
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("--proxy=socks5://bob:s3cret@h:1", mnt, "x=http://127.0.0.1:1/x",
                   check_mountpoint=mnt)
    assert r.returncode == 2 and "s3cret" not in r.stderr and "not shown" in r.stderr
    (www / "c.bin").write_bytes(b"x" * 1000)
    m = mount("c.bin=" + srv.url("c.bin"),
              opts=["--proxy=http://bob:s3cret@127.0.0.1:%d" % closed_port()], env=NO_PROXY_ENV)
    cmdline = Path("/proc/%d/cmdline" % m.pid).read_bytes()
    assert b"s3cret" not in cmdline and b"bob:******@" in cmdline
    assert "s3cret" not in (xattr(m / "c.bin", "proxy") or "")


def test_proxy_in_manifest_and_add(mount, mount_fail, streamfs_cli, srv, www, tmp_path):
    (www / "a.bin").write_bytes(b"a" * 5000)
    man = tmp_path / "m.ini"
    man.write_text("[a.bin]\nsource = %s\nproxy = http://127.0.0.1:%d\nretries = 0\n"
                   % (srv.url("a.bin"), closed_port()))
    m = mount(opts=["-c", str(man)], env=NO_PROXY_ENV)
    with pytest.raises(OSError):
        read_all(m / "a.bin")  # through the dead proxy
    assert "connect" in xattr(m / "a.bin", "error").lower()
    r = streamfs_cli("add", str(m.path), "b.bin=" + srv.url("a.bin"), "proxy=gopher://x")
    assert r.returncode == 2 and "proxy" in r.stderr, r.stderr
    r = streamfs_cli("add", str(m.path), "b.bin=" + srv.url("a.bin"), "noproxy=127.0.0.1",
                     "proxy=http://127.0.0.1:%d" % closed_port())
    assert r.returncode == 0, r.stderr
    assert read_all(m / "b.bin") == b"a" * 5000
    bad = tmp_path / "bad.ini"
    bad.write_text("[a.bin]\nsource = %s\nproxy = ftp://x\n" % srv.url("a.bin"))
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("-c", bad, mnt, check_mountpoint=mnt)
    assert r.returncode == 2 and "bad.ini:3" in r.stderr, r.stderr
