"""End to end: streamfs against a real nginx on 127.0.0.1 (HTTP and HTTPS)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import xattr  # noqa: E402
from nginx_fixture import NGINX, Nginx  # noqa: E402

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx not installed")


@pytest.fixture
def nginx(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    n = Nginx(root, tmp_path / "nginx", tls=True)
    n.start()
    yield n
    n.stop()




def test_nginx_end_to_end(nginx, mount):
    blob = os.urandom(24 * MiB + 12345)
    (nginx.root / "big.bin").write_bytes(blob)
    url = nginx.url("big.bin")
    m = mount("v.bin=" + url)
    p = Path(m.path) / "v.bin"
    # size from Content-Length, then sha256 of the whole stream
    st = subprocess.run(["stat", "-c", "%s", str(p)], capture_output=True, text=True, timeout=30)
    assert st.returncode == 0, st.stderr
    assert int(st.stdout) == len(blob)
    sh = subprocess.run(["sha256sum", str(p)], capture_output=True, text=True, timeout=120)
    assert sh.returncode == 0, sh.stderr
    assert sh.stdout.split()[0] == hashlib.sha256(blob).hexdigest()
    # a tail read after completion (page cache / keep_cache path)
    t = subprocess.run(["tail", "-c", "1000", str(p)], capture_output=True, timeout=30)
    assert t.stdout == blob[-1000:]
    assert xattr(p, "http_code") == "200"
    assert xattr(p, "url") == url
    assert xattr(p, "state") == "complete"
    assert xattr(p, "etag")  # nginx sends one
    gets = [ln for ln in nginx.access_log() if '"GET /big.bin' in ln]
    assert len(gets) == 1, gets
    assert '" 200 %d ' % len(blob) in gets[0]


def test_nginx_https_verification(nginx, mount):
    blob = os.urandom(MiB)
    (nginx.root / "s.bin").write_bytes(blob)
    url = nginx.url("s.bin", https=True)
    m = mount("bad.bin=" + url, opts=["--retries=1", "--retry-time=10"])
    p = Path(m.path) / "bad.bin"
    r = subprocess.run(["cat", str(p)], capture_output=True, timeout=60)
    assert r.returncode != 0, "a self-signed certificate must be refused by default"
    assert r.stdout == b""
    assert xattr(p, "error")
    assert not [ln for ln in nginx.access_log() if "/s.bin" in ln]  # refused before HTTP
    # the same URL with --insecure works (so the refusal was about the certificate)
    m2 = mount("ok.bin=" + url, opts=["--insecure"])
    r = subprocess.run(["cat", str(Path(m2.path) / "ok.bin")], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == blob


def test_nginx_https_insecure(nginx, mount):
    blob = os.urandom(MiB)
    (nginx.root / "s.bin").write_bytes(blob)
    m = mount("ok.bin=" + nginx.url("s.bin", https=True), opts=["--insecure"])
    p = Path(m.path) / "ok.bin"
    r = subprocess.run(["cat", str(p)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == blob
