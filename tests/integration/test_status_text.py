"""
What `streamfs status` prints, whatever the names and sources hold:
hostile text from commands and servers (terminal escapes) is escaped in the
table, in --watch and in the daemon's log; --json is strict UTF-8 JSON for
any name (a name that is not UTF-8 also comes as name_hex); names nested
a thousand directories deep and sources of 60 KB show whole.
"""
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from httpserver import TestHTTPServer  # noqa: E402

from helpers import DEADLINE, register_pid, run, unregister_pid  # noqa: E402

# ESC [ 2 J clears the screen; ESC ] 0 ; ... BEL sets the window title;
# U+009B (C2 9B in UTF-8) is the 8-bit CSI.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\u009b2J"


def assert_terminal_safe(raw, what):
    """@raw (bytes) is UTF-8 with no control byte but line breaks, no DEL
    and no C1 control."""
    text = raw.decode("utf-8", "strict")
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f]
    assert not bad, f"{what} carries raw control characters {bad!r}:\n{text!r}"
    return text


def status_raw(bin_, mnt, *opts, timeout=DEADLINE):
    r = run([bin_, "status", *opts, mnt], timeout=timeout, text=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def status_doc(bin_, mnt, timeout=DEADLINE):
    raw = status_raw(bin_, mnt, "--json", timeout=timeout)
    # Strict: bytes that are not UTF-8 are an error here, not replaced.
    doc = json.loads(raw.decode("utf-8", "strict"))
    assert_terminal_safe(raw, "status --json")
    return doc


def watch_once(bin_, mnt):
    """The first table `status --watch` prints (then it is stopped)."""
    p = subprocess.Popen([str(bin_), "status", "--watch", str(mnt)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    register_pid(p.pid)
    out = b""
    try:
        end = time.monotonic() + DEADLINE
        # Not on a terminal, --watch ends each table with an empty line.
        while b"\n\n" not in out:
            left = end - time.monotonic()
            assert left > 0, f"status --watch printed no whole table: {out!r}"
            r, _, _ = select.select([p.stdout], [], [], left)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                assert chunk, f"status --watch exited: {out!r}"
                out += chunk
    finally:
        p.kill()
        p.wait(DEADLINE)
        unregister_pid(p.pid)
    return out[:out.index(b"\n\n") + 1]


def table_rows(text):
    lines = text.splitlines()
    assert lines and lines[0].startswith("NAME"), text
    return {ln.split()[0]: ln for ln in lines[1:] if ln.strip()}


def check_log(m):
    raw = m.stderr_path.read_bytes()
    assert_terminal_safe(raw, "the daemon's log")
    return raw.decode()


def test_command_stderr_escapes_are_escaped(mount, streamfs_bin):
    printf = "".join("\\%03o" % b for b in HOSTILE.encode())
    m = mount(f"bad.bin=cmd:printf 'x{printf}y' >&2; exit 3", "ok.txt=cmd:echo ok")
    m.start("bad.bin")
    m.wait_state("bad.bin", "failed")
    assert HOSTILE in m.xattr("bad.bin", "error"), "the attribute keeps the real bytes"

    for what, raw in (("status", status_raw(streamfs_bin, m.path)),
                      ("status --watch", watch_once(streamfs_bin, m.path))):
        text = assert_terminal_safe(raw, what)
        row = table_rows(text)["bad.bin"]
        assert "exit 3: x\\x1b[2J\\x1b]0;owned\\x07\\xc2\\x9b2Jy (at byte 0)" in row, text

    files = {f["name"]: f for f in status_doc(streamfs_bin, m.path)["files"]}
    assert files["bad.bin"]["error"] == f"exit 3: x{HOSTILE}y"
    assert files["bad.bin"]["exit_status"] == 3
    # The first stderr lines and the failure are logged, escaped.
    log = check_log(m)
    assert "stderr: x\\x1b[2J" in log and "exit 3: x\\x1b[2J" in log, log


@pytest.fixture
def srv(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "f.bin").write_bytes(os.urandom(200_000))
    s = TestHTTPServer(www).start()
    yield s
    s.stop()


def test_server_etag_and_redirect_escapes_are_escaped(mount, streamfs_bin, srv):
    # The first response is cut; the resumed one carries another ETag, so
    # the stream fails with a message quoting both.
    etag = srv.url("f.bin", etag="change", drop_after=1000, etag_text=HOSTILE)
    redirect = srv.url("f.bin", location="gopher://h/" + HOSTILE)
    m = mount(f"etag.bin={etag}", f"redir.bin={redirect}", opts=["--retries=2"])
    for name in ("etag.bin", "redir.bin"):
        m.start(name)
    m.wait_state("etag.bin", "failed", timeout=30)
    m.wait_state("redir.bin", "failed")

    # The test server sends header values in Latin-1: U+009B goes out as
    # the lone byte 9B, which is not UTF-8 (\x9b in the table, U+FFFD in JSON).
    rows = table_rows(assert_terminal_safe(status_raw(streamfs_bin, m.path), "status"))
    assert 'ETag "\\x1b[2J\\x1b]0;owned\\x07\\x9b2J-r2"' in rows["etag.bin"], rows
    assert "refused protocol: gopher://h/\\x1b[2J\\x1b]0;owned\\x07\\x9b2J" in rows["redir.bin"]

    wire = HOSTILE.replace("\u009b", "\ufffd")
    files = {f["name"]: f for f in status_doc(streamfs_bin, m.path)["files"]}
    assert f'ETag "{wire}-r2", was "{wire}-r1"' in files["etag.bin"]["error"]
    assert files["redir.bin"]["error"] == "redirect to a refused protocol: gopher://h/" + wire
    log = check_log(m)
    assert "gopher://h/\\x1b[2J" in log, log


def test_name_that_is_not_utf8(mount, streamfs_bin):
    latin1 = b"caf\xe9.txt"
    m = mount(os.fsdecode(latin1) + "=cmd:echo x", "caf\u00e9.utf8=cmd:echo y",
              "sub/\u0085nel=cmd:echo z")
    text = assert_terminal_safe(status_raw(streamfs_bin, m.path), "status")
    rows = table_rows(text)
    assert set(rows) == {"caf\\xe9.txt", "caf\u00e9.utf8", "sub/\\xc2\\x85nel"}, text

    doc = status_doc(streamfs_bin, m.path)
    files = {f["name"]: f for f in doc["files"]}
    assert set(files) == {"caf\ufffd.txt", "caf\u00e9.utf8", "sub/\u0085nel"}
    bad = files["caf\ufffd.txt"]
    assert bytes.fromhex(bad["name_hex"]) == latin1
    # The bytes address the file (getxattr starts nothing).
    path = os.path.join(os.fsencode(m.path), bytes.fromhex(bad["name_hex"]))
    assert os.getxattr(path, "user.streamfs.source") == b"cmd:echo x"
    assert "name_hex" not in files["caf\u00e9.utf8"] and "name_hex" not in files["sub/\u0085nel"]


# Listing 1000 directories takes ~5000 FUSE requests: about 1.5 s with the
# normal daemon, but up to 20 s with the ASan one (each of its requests maps
# memory).
DEEP_TIMEOUT = 120


@pytest.mark.timeout(3 * DEEP_TIMEOUT)
def test_status_of_a_name_1000_directories_deep(mount, streamfs_bin):
    deep = "/".join(["d"] * 1000) + "/leaf.txt"
    assert len(deep) < 4095
    m = mount(f"{deep}=cmd:echo deep", "top.txt=cmd:echo top")
    raw = status_raw(streamfs_bin, m.path, timeout=DEEP_TIMEOUT)
    rows = table_rows(assert_terminal_safe(raw, "status"))
    assert len(rows) == 2 and "top.txt" in rows, rows
    files = {f["name"]: f for f in status_doc(streamfs_bin, m.path, DEEP_TIMEOUT)["files"]}
    assert set(files) == {deep, "top.txt"}
    assert files[deep]["state"] == "idle" and files[deep]["source"] == "cmd:echo deep"


def test_a_60_kb_source_shows_whole(mount, streamfs_bin):
    src = "cmd:: " + "x" * 60_000 + "; echo hi"
    m = mount(f"long.txt={src}", "short.txt=cmd:echo s")
    r = run(["getfattr", "--only-values", "-n", "user.streamfs.source", m / "long.txt"],
            timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert r.stdout == src
    files = {f["name"]: f for f in status_doc(streamfs_bin, m.path)["files"]}
    assert files["long.txt"]["source"] == src
    rows = table_rows(status_raw(streamfs_bin, m.path).decode())
    assert src[:40] in rows["long.txt"], "the table shows the start of the source"
    m.wait_state("long.txt", "complete")  # getfattr stat'ed it: it ran
    assert (m / "long.txt").read_bytes() == b"hi\n"


def test_a_source_over_64_kib_is_cut_at_the_kernel_limit(mount, streamfs_bin):
    src = "cmd:: " + "y" * 100_000 + "; echo hi"
    m = mount(f"huge.txt={src}")
    # The kernel carries at most 64 KiB of one attribute: its start, not E2BIG.
    assert os.getxattr(m / "huge.txt", "user.streamfs.source") == src[:65536].encode()
    files = {f["name"]: f for f in status_doc(streamfs_bin, m.path)["files"]}
    assert files["huge.txt"]["source"] == src[:65536]
