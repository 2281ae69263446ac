"""s3://BUCKET/KEY sources against a real S3-compatible server (s3rver) and
against a server that checks every SigV4 signature (s3_fixture.SigV4Server),
and libcurl's verbose output at -vv.

The daemon gets a hermetic environment: HOME is the test's own directory
and every AWS_* variable the lookups read is set (empty means unset), so
nothing of the machine's AWS set-up leaks in.
"""

import errno
import hashlib
import os
import subprocess

import pytest

from helpers import DEADLINE, open_errno, preads, run, wait_until
from helpers import status_files, status_json
from s3_fixture import S3RVER_KEY, UNSIGNED, S3rver, SigV4Server, sigv4_signature

MiB = 1 << 20
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"
KEY_ID = "AKIDSTREAMFSTEST"


def aws_env(home, **kw):
    """The daemon's environment: HOME=@home, every AWS_* empty but @kw."""
    env = {v: "" for v in AWS_VARS}
    env["HOME"] = str(home)
    env.update(kw)
    return env


def blob(n, seed):
    """@n bytes that differ at every offset and between seeds."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%s-%d" % (seed.encode(), i)).digest()
        i += 1
    return bytes(out[:n])


def cat(path, timeout=60):
    p = subprocess.run(["cat", str(path)], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


@pytest.fixture
def s3rver(tmp_path):
    s = S3rver(tmp_path / "s3rver", buckets=("bkt",)).start()
    yield s
    s.stop()


@pytest.fixture
def sigv4(request):
    servers = []

    def factory(**kw):
        s = SigV4Server(**kw).start()
        servers.append(s)
        return s

    yield factory
    for s in servers:
        s.stop()


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    (h / ".aws").mkdir(parents=True)
    return h


# ---------------------------------------------------------------- the signer itself

def test_python_signer_matches_the_aws_documentation_example():
    """The test servers' signer against the example AWS publishes for a GET
    of an S3 object (Signature Version 4, "Example: GET Object")."""
    headers = {"host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9",
               "x-amz-content-sha256": hashlib.sha256(b"").hexdigest(),
               "x-amz-date": "20130524T000000Z"}
    sig = sigv4_signature("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524T000000Z",
                          "us-east-1", "GET", "/test.txt", "", headers, sorted(headers),
                          headers["x-amz-content-sha256"])
    assert sig == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


# ---------------------------------------------------------------- s3rver

@pytest.mark.timeout(120)
def test_s3rver_whole_object_and_random_reads(s3rver, mount, home, streamfs_bin):
    data = blob(3 * MiB + 12345, "whole")
    small = b"hello from s3rver\n"
    key = "dir/a b+c&d=e ü.bin"
    s3rver.put("bkt", key, data)
    s3rver.put("bkt", "small.txt", small)
    m = mount(f"big.bin=s3://bkt/{key}", "s.txt=s3://bkt/small.txt",
              opts=[f"--endpoint-url={s3rver.endpoint}"],
              env=aws_env(home, AWS_ACCESS_KEY_ID=S3RVER_KEY, AWS_SECRET_ACCESS_KEY=S3RVER_KEY))
    assert cat(m / "s.txt")[1] == small
    assert preads(m / "big.bin", [(3 * MiB, 12345), (17, 1000), (1 * MiB + 1, 4096)]) == \
        [data[3 * MiB:], data[17:1017], data[MiB + 1:MiB + 4097]]
    rc, out, _ = cat(m / "big.bin")
    assert rc == 0 and out == data
    m.wait_state("big.bin", "complete")
    f = status_files(status_json(streamfs_bin, m.path))["big.bin"]
    assert f["source"] == f"s3://bkt/{key}"
    # The key went out encoded, path style (the endpoint is an IP address).
    assert m.xattr("big.bin", "url") == \
        f"{s3rver.endpoint}/bkt/dir/a%20b%2Bc%26d%3De%20%C3%BC.bin"
    assert m.xattr("big.bin", "etag") == '"%s"' % hashlib.md5(data).hexdigest()


@pytest.mark.timeout(120)
def test_s3rver_ondemand_fetches_only_what_is_read(s3rver, mount, home):
    data = blob(8 * MiB, "ondemand")
    s3rver.put("bkt", "o.bin", data)
    m = mount("o.bin=s3://bkt/o.bin",
              opts=[f"--endpoint-url={s3rver.endpoint}", "--fill=ondemand"],
              env=aws_env(home, AWS_ACCESS_KEY_ID=S3RVER_KEY, AWS_SECRET_ACCESS_KEY=S3RVER_KEY))
    offs = [(7 * MiB + 5, 70000), (3 * MiB, 1000), (100, 100)]
    assert preads(m / "o.bin", offs) == [data[o:o + n] for o, n in offs]
    assert os.stat(m / "o.bin").st_size == len(data)
    got = int(m.xattr("o.bin", "bytes"))
    # The head and what the three reads fetched (with read-ahead), not all.
    assert 0 < got < 6 * MiB, f"fill=ondemand held {got} bytes of 8 MiB after three reads"
    assert m.state("o.bin") == "running"


@pytest.mark.timeout(120)
def test_s3rver_eviction_refetches_under_a_small_cache(s3rver, mount, home, tmp_path):
    data = blob(12 * MiB, "evict")
    s3rver.put("bkt", "e.bin", data)
    m = mount("e.bin=s3://bkt/e.bin",
              opts=[f"--endpoint-url={s3rver.endpoint}", "--cache-size=4M",
                    f"--cache-dir={tmp_path}"],
              env=aws_env(home, AWS_ACCESS_KEY_ID=S3RVER_KEY, AWS_SECRET_ACCESS_KEY=S3RVER_KEY))
    rc, out, err = cat(m / "e.bin")
    assert rc == 0 and out == data, err
    m.wait_state("e.bin", "complete")
    assert int(m.xattr("e.bin", "evicted")) > 4 * MiB
    # Evicted bytes come back, signed and validated, on a second read.
    assert preads(m / "e.bin", [(0, 5000), (6 * MiB, 5000)]) == \
        [data[:5000], data[6 * MiB:6 * MiB + 5000]]


@pytest.mark.timeout(120)
def test_s3rver_changed_object_fails_at_the_byte(s3rver, mount, home):
    """A range of a replaced object is not mixed in: the read of it fails
    with EIO, bytes already there stay readable, status says what changed."""
    data = blob(4 * MiB, "v1")
    s3rver.put("bkt", "c.bin", data)
    m = mount("c.bin=s3://bkt/c.bin",
              opts=[f"--endpoint-url={s3rver.endpoint}", "--fill=ondemand", "--retries=1"],
              env=aws_env(home, AWS_ACCESS_KEY_ID=S3RVER_KEY, AWS_SECRET_ACCESS_KEY=S3RVER_KEY))
    assert preads(m / "c.bin", [(0, 1000)]) == [data[:1000]]
    s3rver.put("bkt", "c.bin", blob(4 * MiB, "v2"))
    assert preads(m / "c.bin", [(3 * MiB, 1000), (10, 100)]) == [errno.EIO, data[10:110]]
    assert m.state("c.bin") == "failed"
    assert "changed" in m.xattr("c.bin", "error")


def test_s3rver_unknown_key_and_missing_object(s3rver, mount, home, streamfs_bin):
    s3rver.put("bkt", "k.txt", b"x" * 100)
    m = mount("denied=s3://bkt/k.txt", opts=[f"--endpoint-url={s3rver.endpoint}"],
              env=aws_env(home, AWS_ACCESS_KEY_ID="NOSUCHKEY", AWS_SECRET_ACCESS_KEY="x"))
    assert open_errno(m / "denied") == errno.EIO
    assert m.xattr("denied", "error") == "HTTP 403: InvalidAccessKeyId"
    m2 = mount("gone=s3://bkt/nothing-here", opts=[f"--endpoint-url={s3rver.endpoint}"],
               env=aws_env(home, AWS_ACCESS_KEY_ID=S3RVER_KEY, AWS_SECRET_ACCESS_KEY=S3RVER_KEY))
    assert open_errno(m2 / "gone") == errno.EIO
    assert m2.xattr("gone", "error") == "HTTP 404: NoSuchKey"
    r = run([streamfs_bin, "status", m2.path], timeout=DEADLINE)
    assert "HTTP 404: NoSuchKey" in r.stdout


def test_s3rver_add_with_options(s3rver, mount, home, streamfs_bin):
    data = blob(300000, "add")
    s3rver.put("bkt", "added.bin", data)
    m = mount(env=aws_env(home, AWS_ACCESS_KEY_ID=S3RVER_KEY, AWS_SECRET_ACCESS_KEY=S3RVER_KEY))
    r = run([streamfs_bin, "add", m.path, "x/added.bin=s3://bkt/added.bin",
             f"endpoint-url={s3rver.endpoint}", "force-path-style", "fill=ondemand"],
            timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert preads(m / "x/added.bin", [(200000, 100000)]) == [data[200000:]]
    r = run([streamfs_bin, "add", m.path, "y=s3://bkt/added.bin", "region=Bad Region"],
            timeout=DEADLINE)
    assert r.returncode != 0 and "bad region value 'Bad Region'" in r.stderr
    r = run([streamfs_bin, "add", m.path, "z=s3://bkt"], timeout=DEADLINE)
    assert r.returncode != 0 and "no key" in r.stderr


# ---------------------------------------------------------------- no credentials

def test_no_credentials_mounts_and_open_fails_eio(mount, home, streamfs_bin):
    m = mount("a=s3://bkt/k", opts=["--endpoint-url=http://127.0.0.1:9"], env=aws_env(home))
    assert open_errno(m / "a") == errno.EIO
    assert m.state("a") == "failed"
    assert "no AWS credentials" in m.xattr("a", "error")
    f = status_files(status_json(streamfs_bin, m.path))["a"]
    assert "no AWS credentials" in f["error"]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("args,env,msg", [
    (["x=s3://bkt"], {}, "bad S3 URI 's3://bkt' for 'x': no key"),
    (["x=s3://bkt/"], {}, "no key"),
    (["x=s3:///key"], {}, "no bucket"),
    (["x=s3://"], {}, "no bucket"),
    (["--region=us east", "x=s3://b/k"], {}, "bad --region value 'us east'"),
    (["--endpoint-url=127.0.0.1:9000", "x=s3://b/k"], {}, "bad --endpoint-url value"),
    (["--endpoint-url=http://", "x=s3://b/k"], {}, "bad --endpoint-url value 'http://'"),
    (["x=s3://b/k"], {"AWS_REGION": "EU_WEST"}, "bad AWS region 'EU_WEST' (from AWS_REGION)"),
    (["x=s3://b/k"], {"AWS_ENDPOINT_URL": "ftp://h"}, "bad S3 endpoint 'ftp://h'"),
])
def test_bad_s3_input_exits_2(mount_fail, monkeypatch, home, args, env, msg):
    for k, v in aws_env(home, AWS_ACCESS_KEY_ID="A", AWS_SECRET_ACCESS_KEY="B", **env).items():
        monkeypatch.setenv(k, v)
    mnt = mount_fail.new_mountpoint()
    r = mount_fail(mnt, *args, check_mountpoint=mnt)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_region_in_the_config_file_exits_2(mount_fail, monkeypatch, home):
    (home / ".aws" / "config").write_text("[default]\nregion = nowhere!\n")
    for k, v in aws_env(home).items():
        monkeypatch.setenv(k, v)
    mnt = mount_fail.new_mountpoint()
    r = mount_fail(mnt, "x=s3://b/k", check_mountpoint=mnt)
    assert r.returncode == 2 and "bad AWS region 'nowhere!' (from the config file)" in r.stderr


# ---------------------------------------------------------------- signatures checked

@pytest.mark.timeout(120)
def test_signatures_verified_by_an_independent_signer(sigv4, mount, home):
    """Every request streamfs signs, the fill's and the range fetches'
    (with If-Range), passes a server that recomputes SigV4; a wrong secret
    is refused and status says why."""
    srv = sigv4(keys={KEY_ID: SECRET}, region="eu-west-3")
    data = blob(3 * MiB, "signed")
    srv.objects["/bkt/dir/x%20y.bin"] = data  # as sent: encoded
    env = aws_env(home, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
                  AWS_REGION="eu-west-3")
    m = mount("x.bin=s3://bkt/dir/x y.bin",
              opts=[f"--endpoint-url={srv.endpoint}", "--fill=ondemand"], env=env)
    offs = [(2 * MiB, 5000), (MiB, 7), (0, 100)]
    assert preads(m / "x.bin", offs) == [data[o:o + n] for o, n in offs]
    reqs = [h for meth, path, h in srv.requests if path == "/bkt/dir/x%20y.bin"]
    assert len(reqs) >= 2
    assert any("if-range" in h for h in reqs), "no range fetch carried If-Range"
    for h in reqs:
        assert h["x-amz-content-sha256"] == UNSIGNED
        assert "/eu-west-3/s3/aws4_request" in h["authorization"]
        signed = h["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert "x-amz-content-sha256" in signed and "host" in signed
        if "if-range" in h:
            assert "if-range" in signed
    # A wrong secret: 403 with S3's XML, its code in status.
    m2 = mount("bad.bin=s3://bkt/dir/x y.bin", opts=[f"--endpoint-url={srv.endpoint}"],
               env={**env, "AWS_SECRET_ACCESS_KEY": SECRET + "x"})
    assert open_errno(m2 / "bad.bin") == errno.EIO
    assert m2.xattr("bad.bin", "error") == \
        "HTTP 403: SignatureDoesNotMatch (the bucket is in eu-west-3)"
    assert m2.xattr("bad.bin", "http_code") == "403"
    # Signed for another region: S3's answer names the bucket's.
    m3 = mount("r.bin=s3://bkt/dir/x y.bin",
               opts=[f"--endpoint-url={srv.endpoint}", "--region=us-east-2"], env=env)
    assert open_errno(m3 / "r.bin") == errno.EIO
    assert m3.xattr("r.bin", "error") == \
        "HTTP 400: AuthorizationHeaderMalformed (the bucket is in eu-west-3)"
    m4 = mount("moved.bin=s3://moved/x", opts=[f"--endpoint-url={srv.endpoint}"], env=env)
    assert open_errno(m4 / "moved.bin") == errno.EIO
    assert m4.xattr("moved.bin", "error") == \
        "HTTP 301 without a Location (the bucket is in sa-east-1)"


def test_session_token_and_profile_from_files(sigv4, mount, home):
    """AWS_PROFILE names the profile of ~/.aws/credentials (keys, session
    token) and ~/.aws/config (region, endpoint_url)."""
    srv = sigv4(keys={KEY_ID: SECRET}, region="ap-south-1", tokens={KEY_ID: "TOKEN/abc="})
    srv.objects["/bkt/k"] = b"from a profile\n"
    (home / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n"
        f"[dev]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"
        "aws_session_token = TOKEN/abc=\n")
    (home / ".aws" / "config").write_text(
        f"[profile dev]\nregion = ap-south-1\nendpoint_url = {srv.endpoint}\n")
    m = mount("k=s3://bkt/k", env=aws_env(home, AWS_PROFILE="dev"))
    assert cat(m / "k")[1] == b"from a profile\n"
    h = srv.requests[-1][2]
    assert h["x-amz-security-token"] == "TOKEN/abc="
    assert "x-amz-security-token" in h["authorization"].split("SignedHeaders=")[1]
    # --profile in a manifest, against the environment's (wrong) keys.
    man = home / "m.ini"
    man.write_text("[p]\nsource = s3://bkt/k\nprofile = dev\n")
    m2 = mount(opts=["-c", man], env=aws_env(home, AWS_ACCESS_KEY_ID="WRONG",
                                               AWS_SECRET_ACCESS_KEY="WRONG"))
    assert cat(m2 / "p")[1] == b"from a profile\n"


def test_no_sign_request_sends_no_credentials(sigv4, mount, home):
    srv = sigv4(keys={}, anonymous=True)
    srv.objects["/bkt/public.txt"] = b"public\n"
    m = mount("p=s3://bkt/public.txt", opts=[f"--endpoint-url={srv.endpoint}",
                                             "--no-sign-request"],
              env=aws_env(home, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET))
    assert cat(m / "p")[1] == b"public\n"
    h = srv.requests[-1][2]
    assert "authorization" not in h and "x-amz-date" not in h


def test_authorization_is_the_one_curl_computes(sigv4, mount, home):
    """curl --aws-sigv4, given the same request and date, signs it the same."""
    srv = sigv4(keys={KEY_ID: SECRET}, region="us-west-2")
    srv.objects["/bkt/a%2Bb.txt"] = b"plus\n"
    m = mount("a=s3://bkt/a+b.txt", opts=[f"--endpoint-url={srv.endpoint}", "--region=us-west-2"],
              env=aws_env(home, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET))
    assert cat(m / "a")[1] == b"plus\n"
    ours = srv.requests[-1][2]
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                        "--aws-sigv4", "aws:amz:us-west-2:s3", "-u", f"{KEY_ID}:{SECRET}",
                        "-H", f"X-Amz-Date: {ours['x-amz-date']}",
                        "-H", f"x-amz-content-sha256: {UNSIGNED}",
                        f"{srv.endpoint}/bkt/a%2Bb.txt"],
                       capture_output=True, text=True, timeout=DEADLINE)
    assert r.stdout == "200", r.stderr
    theirs = srv.requests[-1][2]
    assert theirs["authorization"] == ours["authorization"]


# ---------------------------------------------------------------- -vv

def test_vv_logs_curl_headers_redacted(sigv4, mount, home, streamfs_bin):
    srv = sigv4(keys={KEY_ID: SECRET}, tokens={KEY_ID: "SESSIONTOKEN123"})
    body = b"BODY-MARKER-" + b"z" * 100
    srv.objects["/bkt/v"] = body
    m = mount("v=s3://bkt/v", opts=[f"--endpoint-url={srv.endpoint}", "-vv"],
              env=aws_env(home, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
                          AWS_SESSION_TOKEN="SESSIONTOKEN123"))
    assert cat(m / "v")[1] == body
    sig = srv.requests[-1][2]["authorization"].split("Signature=")[1]
    wait_until(lambda: "curl < ETag" in m.stderr_text(), DEADLINE, "curl's response headers")
    log = m.stderr_text()
    assert "v: curl > GET /bkt/v HTTP/1.1" in log
    assert "v: curl > Authorization: [redacted]" in log
    assert "v: curl > x-amz-security-token: [redacted]" in log
    assert "v: curl < HTTP/1.1 200" in log
    status = run([streamfs_bin, "status", "--json", m.path], timeout=DEADLINE).stdout
    attrs = "".join(os.getxattr(m / "v", n).decode(errors="replace")
                    for n in os.listxattr(m / "v"))
    for secret in (SECRET, "SESSIONTOKEN123", sig):
        assert secret not in log and secret not in status and secret not in attrs
    assert "BODY-MARKER" not in log  # headers and notes only


def test_vv_redacts_url_credentials_and_basic_auth(mount, www, srv):
    (www / "f").write_bytes(b"data\n")
    url = srv.url("f").replace("http://", "http://alice:pw-SECRET-1@")
    m = mount(f"f={url}", opts=["-vv", "--header=Cookie: c=SECRET-2"])
    assert cat(m / "f")[1] == b"data\n"
    wait_until(lambda: "f: curl < " in m.stderr_text(), DEADLINE, "curl's response headers")
    log = m.stderr_text()
    assert "f: curl > Authorization: [redacted]" in log
    assert "f: curl > Cookie: [redacted]" in log
    assert "SECRET-1" not in log and "SECRET-2" not in log


def test_single_v_has_no_curl_output(mount, www, srv):
    (www / "f").write_bytes(b"data\n")
    m = mount(f"f={srv.url('f')}", opts=["-v"])
    assert cat(m / "f")[1] == b"data\n"
    m.wait_state("f", "complete")
    assert "curl >" not in m.stderr_text() and "curl <" not in m.stderr_text()
