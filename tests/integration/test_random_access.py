"""Random access ahead of the download: Range fetches into the sparse
store, read-ahead around a jump, fill=all|ondemand.

The test server (tests/httpserver.py) is throttled with rate=BPS, so a
sequential download of the test files takes many seconds; the tests check
that reads far ahead of the sequential frontier are served by Range requests
in about one round trip, with the right bytes, while the sequential fill
goes on. The time bounds are generous (several times what a working daemon
needs, and well under what the sequential download would take): they tell
"one round trip" from "waited for the download", nothing finer.

Every tool and reader runs in a subprocess with a deadline; the server's
request log is the witness for what streamfs asked for and how much it got.
"""

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time

import pytest

from helpers import DEADLINE, Reader, assert_unchanged, open_errno, pid_alive, read_ops, wait_until
from helpers import xattr as _xattr

MiB = 1 << 20
KiB = 1 << 10
BIG = 64 * MiB  # the "large remote file"
FAST_FAIL = ["--retries=2", "--retry-time=20"]


def xattr(path, name):
    v = _xattr(path, name)
    return v.rstrip("\0") if v is not None else v


# ---------------------------------------------------------------- fixtures

def _make_mp4(path):
    """A ~16 MB moov-at-end MP4 (ffmpeg's default layout: no +faststart).
    Noise keeps the video incompressible, so the size follows the bitrate."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25,noise=alls=60:allf=t",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "8",
         "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "16M", "-minrate", "16M",
         "-maxrate", "16M", "-bufsize", "4M", "-x264-params", "nal-hrd=cbr",
         "-c:a", "aac", "-b:a", "128k", str(path)],
        check=True, timeout=120, capture_output=True)
    order = []
    with open(path, "rb") as f:
        while True:
            h = f.read(8)
            if len(h) < 8:
                break
            n = int.from_bytes(h[:4], "big")
            pos = f.tell() - 8
            if n == 1:
                n = int.from_bytes(f.read(8), "big")
            order.append(h[4:].decode())
            f.seek(pos + n)
    assert order.index("moov") > order.index("mdat"), order


def _make_zip(path, tmp):
    """A ~16 MiB zip (central directory at the end) of incompressible members,
    stored, plus a small text member near the end."""
    src = tmp / "zipsrc"
    src.mkdir()
    for i in range(16):
        (src / ("member%02d.bin" % i)).write_bytes(os.urandom(MiB))
    (src / "zz-notes.txt").write_text("".join("line %d of the notes\n" % i for i in range(2000)))
    subprocess.run(["zip", "-q", "-0", "-X", str(path)] + sorted(p.name for p in src.iterdir()),
                   cwd=src, check=True, timeout=60)
    shutil.rmtree(src)


def _make_db(path):
    """A ~12 MB sqlite database: a table of 40000 rows of 256 random bytes with
    a unique text key; the index is built last, so it sits at the end."""
    con = sqlite3.connect(str(path))
    con.execute("PRAGMA page_size=4096")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
    rnd = os.urandom(40000 * 256)
    con.executemany("INSERT INTO t (id, k, v) VALUES (?, ?, ?)",
                    ((i, "key%06d" % i, rnd[i * 256:(i + 1) * 256]) for i in range(40000)))
    con.execute("CREATE UNIQUE INDEX t_k ON t (k)")
    con.commit()
    con.close()


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """The served files, made once for the module."""
    root = tmp_path_factory.mktemp("www")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    _make_mp4(root / "v.mp4")
    _make_zip(root / "a.zip", tmp_path_factory.mktemp("zip"))
    _make_db(root / "db.sqlite")
    return root


# ---------------------------------------------------------------- helpers

def sha(b):
    return hashlib.sha256(b).hexdigest()


def timed(argv, timeout=120):
    """(seconds, CompletedProcess) of a tool run with a deadline."""
    t = time.monotonic()
    p = subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout)
    return time.monotonic() - t, p


def ranges(srv, name, started=False):
    """(start, end_inclusive, entry) of the GETs of /name that asked for a
    bounded range "bytes=a-b" (with started, also those still answered)."""
    out = []
    for e in srv.requests("/" + name, method="GET", started=started):
        r = e["range"]
        if r and r.startswith("bytes=") and "-" in r[6:]:
            a, _, b = r[6:].partition("-")
            if a.isdigit() and b.isdigit():
                out.append((int(a), int(b), e))
    return out


def sent_total(srv, name):
    return sum(e["sent"] for e in srv.requests("/" + name))


def ffprobe_cmd(path):
    return ["ffprobe", "-v", "error", "-of", "json",
            "-show_entries",
            "format=duration,size,bit_rate,nb_streams,format_name:"
            "stream=index,codec_name,codec_type,width,height,nb_frames,duration,sample_rate",
            str(path)]


def unzip_list(path, timeout=120):
    """unzip -l without its first line (which names the archive path)."""
    t, p = timed(["unzip", "-l", path], timeout)
    assert p.returncode == 0, p.stderr
    return t, p.stdout.split(b"\n", 1)[1]


def rangesent_ok(srv, name, size):
    """At least one Range request, and the bytes sent stay about the size."""
    rs = ranges(srv, name)
    total = sent_total(srv, name)
    assert rs, [e["range"] for e in srv.requests("/" + name)]
    assert total < size + size // 2, (total, size)
    return True


def status_line(m, name):
    return "state=%s bytes=%s error=%s" % (m.state(name), m.nbytes(name), m.xattr(name, "error"))


# ---------------------------------------------------------------- the tail of a big file

def test_tail_read_one_round_trip(srv, www, mount):
    """The last 64 KiB of a 64 MiB file at 2 MB/s (33 s sequentially) arrive
    in about one round trip, by a Range request, while the fill goes on."""
    blob = (www / "big.bin").read_bytes()
    rate = 2_000_000
    m = mount("big.bin=" + srv.url("big.bin", rate=rate))
    p = m / "big.bin"
    res = read_ops(p, [("pread", BIG - 64 * KiB, 64 * KiB), ("pread", BIG - 100, 1000),
                     ("pread", 0, 4096)], timeout=60)
    tail, last, first = res
    assert "errno" not in tail, tail
    assert tail["n"] == 64 * KiB and tail["sha"] == sha(blob[-64 * KiB:])
    assert last["n"] == 100 and last["data"] == blob[-100:]
    assert first["n"] == 4096 and first["data"] == blob[:4096]
    print("tail read %.3f s" % tail["t"])
    assert tail["t"] < 5.0, "tail read took %.1f s (sequential: %.0f s)" % (tail["t"], BIG / rate)
    # The sequential fill goes on, far from the end.
    assert m.state("big.bin") == "running", status_line(m, "big.bin")
    assert m.nbytes("big.bin") < BIG
    # The server saw a bounded Range request covering the tail.
    rs = ranges(srv, "big.bin")
    assert any(a <= BIG - 64 * KiB and b == BIG - 1 for a, b, _ in rs), \
        [e["range"] for e in srv.requests("/big.bin")]
    tails = [e for a, b, e in rs if a <= BIG - 64 * KiB and b == BIG - 1]
    assert tails[0]["if_range"], "a Range request must be validated with If-Range"
    assert tails[0]["status"] == 206
    # ...and only one GET of the whole resource (no restart of the fill).
    whole = [e for e in srv.requests("/big.bin", method="GET") if not e["range"]]
    assert len(whole) <= 1, whole


def test_tail_then_whole_file_correct(srv, www, mount):
    """A tail fetch followed by the whole download: the sequential fill
    jumps over what the range brought, and the file is exactly the
    resource; the fill does not download the tail twice."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", rate=40_000_000))
    p = m / "big.bin"
    res = read_ops(p, [("pread", BIG - 8 * MiB, 8 * MiB)], timeout=60)
    assert res[0]["n"] == 8 * MiB and res[0]["sha"] == sha(blob[-8 * MiB:])
    res = read_ops(p, [("seq", 0, BIG + 1, MiB)], timeout=120)
    assert res[0]["n"] == BIG and res[0]["sha"] == sha(blob)
    m.wait_state("big.bin", "complete", timeout=30)
    # Each byte about once: the 8 MiB tail was not sent again in full by
    # the sequential transfer (which stops where the range's bytes begin).
    assert sent_total(srv, "big.bin") < BIG + 6 * MiB, \
        [(e["range"], e["sent"]) for e in srv.requests("/big.bin")]


# ---------------------------------------------------------------- real tools

def test_ffprobe_moov_at_end(srv, www, mount):
    local = www / "v.mp4"
    size = local.stat().st_size
    rate = 1_000_000  # 16 s sequentially
    _, ref = timed(ffprobe_cmd(local))
    assert ref.returncode == 0, ref.stderr
    m = mount("v.mp4=" + srv.url("v.mp4", rate=rate))
    t, out = timed(ffprobe_cmd(m / "v.mp4"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(ref.stdout)
    print("ffprobe %.2f s, sent %d of %d" % (t, sent_total(srv, "v.mp4"), size))
    assert t < 5.0, "ffprobe took %.1f s (sequential: %.1f s)" % (t, size / rate)
    assert m.state("v.mp4") == "running", status_line(m, "v.mp4")
    assert any(b == size - 1 for a, b, _ in ranges(srv, "v.mp4")), \
        [e["range"] for e in srv.requests("/v.mp4")]


def test_unzip_list_and_extract(srv, www, mount):
    local = www / "a.zip"
    size = local.stat().st_size
    rate = 1_000_000  # 17 s sequentially
    _, ref_list = unzip_list(local)
    ref_member = subprocess.run(["unzip", "-p", local, "member13.bin"], capture_output=True,
                                timeout=60, check=True).stdout
    ref_notes = subprocess.run(["unzip", "-p", local, "zz-notes.txt"], capture_output=True,
                               timeout=60, check=True).stdout
    m = mount("a.zip=" + srv.url("a.zip", rate=rate))
    p = m / "a.zip"
    t_list, lst = unzip_list(p)
    assert lst == ref_list
    assert t_list < 5.0, "unzip -l took %.1f s (sequential: %.1f s)" % (t_list, size / rate)
    t_notes, notes = timed(["unzip", "-p", p, "zz-notes.txt"])
    assert notes.returncode == 0, notes.stderr
    assert notes.stdout == ref_notes
    assert t_notes < 5.0, "extracting the last member took %.1f s" % t_notes
    # A 1 MiB member 13 MiB in: read-ahead brings it long before the fill.
    t_mem, mem = timed(["unzip", "-p", p, "member13.bin"])
    assert mem.returncode == 0, mem.stderr
    assert mem.stdout == ref_member
    print("unzip -l %.2f s, notes %.2f s, member13 %.2f s" % (t_list, t_notes, t_mem))
    assert t_mem < 8.0, "extracting member13 took %.1f s" % t_mem
    assert m.state("a.zip") == "running", status_line(m, "a.zip")
    # unzip -t reads everything: CRCs check out over the whole archive.
    t, test = timed(["unzip", "-tq", p], timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr


def test_sqlite_queries(srv, www, mount):
    local = www / "db.sqlite"
    size = local.stat().st_size
    rate = 2_000_000
    q_point = "SELECT id, k, hex(v) FROM t WHERE k = 'key039990';"
    q_range = "SELECT id, length(v) FROM t WHERE k BETWEEN 'key039000' AND 'key039010' ORDER BY k;"
    q_all = "SELECT count(*), sum(length(v)), max(k) FROM t; PRAGMA integrity_check;"

    def sql(path, q):
        return timed(["sqlite3", "-readonly", "-batch", path, q], timeout=120)

    refs = [sql(local, q)[1] for q in (q_point, q_range, q_all)]
    for r in refs:
        assert r.returncode == 0 and r.stdout, r.stderr
    m = mount("db.sqlite=" + srv.url("db.sqlite", rate=rate))
    p = m / "db.sqlite"
    t, out = sql(p, q_point)
    assert out.returncode == 0, out.stderr
    assert out.stdout == refs[0].stdout
    print("sqlite point query %.2f s" % t)
    assert t < 5.0, "point query took %.1f s (sequential: %.1f s)" % (t, size / rate)
    t, out = sql(p, q_range)
    assert out.returncode == 0, out.stderr
    assert out.stdout == refs[1].stdout
    # A full scan and an integrity check read every page.
    t, out = sql(p, q_all)
    assert out.returncode == 0, out.stderr
    assert out.stdout == refs[2].stdout
    assert rangesent_ok(srv, "db.sqlite", size)


# ---------------------------------------------------------------- validation and fallback

def _one_version(out, blob, off):
    """True if @out is blob[off:off+len(out)] XOR one constant (one version)."""
    if not out:
        return True
    k = out[0] ^ blob[off]
    return out == blob[off:off + len(out)].translate(bytes(b ^ k for b in range(256)))


@pytest.mark.parametrize("ignore_if_range", [0, 1])
def test_etag_change_between_fill_and_range_fails(srv, www, mount, ignore_if_range):
    """etag=change: every request gets another version. The tail read's
    Range request (If-Range: the first version's ETag) is answered with the
    new version: the stream must fail, not mix. The read gets EIO (or, had
    the data been one version, correct data) and status names the change."""
    blob = (www / "big.bin").read_bytes()
    # ignore_if_range=1: a broken server answers 206 from the new version;
    # the ETag of the 206 must be compared, not only trusted to If-Range.
    m = mount("big.bin=" + srv.url("big.bin", rate=2_000_000, etag="change",
                                   ignore_if_range=ignore_if_range), opts=FAST_FAIL)
    p = m / "big.bin"
    tail = read_ops(p, [("pread", BIG - 64 * KiB, 64 * KiB)])[0]
    if "errno" not in tail:
        # Correct data: the whole read from one version of the resource.
        assert tail["n"] == 64 * KiB and _one_version(tail["data"], blob, BIG - 64 * KiB)
    else:
        assert tail["errno"] == errno.EIO, tail
    m.wait_state("big.bin", "failed", timeout=20)
    err = m.xattr("big.bin", "error")
    assert err and "changed" in err, err
    # What was kept before the failure is one version, the first one.
    eo = int(m.xattr("big.bin", "error_offset"))
    if eo == 0:
        # Nothing before it (the fresh fill waited for a reader, and the
        # only reader was the tail's): the open itself fails.
        assert open_errno(p) == errno.EIO
        return
    head = read_ops(p, [("pread", 0, eo)])[0]["data"]
    assert len(head) == eo
    assert _one_version(head, blob, 0)
    if head:
        assert head[0] == blob[0] ^ 2, "the first response is version 1 (XOR 2)"
    # A read at the tail still fails: nothing of another version was kept.
    tail = read_ops(p, [("pread", BIG - 64 * KiB, 64 * KiB)])[0]
    if "errno" not in tail:
        pytest.fail("tail read after the failure returned %d bytes" % tail["n"])
    assert tail["errno"] == errno.EIO
    g = srv.requests("/big.bin", method="GET", started=True)  # the tail's was dropped
    assert any(e["range"] and e["if_range"] for e in g), [(e["range"], e["if_range"]) for e in g]


def test_server_without_ranges(srv, www, mount):
    """norange=1: 200 to every Range request, no Accept-Ranges. A tail read
    waits for the sequential fill and gets the right bytes; the whole file
    is exact; the fallback is decided once."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", rate=16_000_000, norange=1))
    p = m / "big.bin"
    res = read_ops(p, [("pread", BIG - 64 * KiB, 64 * KiB), ("pread", BIG - 3 * MiB, 1 * MiB),
                     ("pread", BIG // 2, 1 * MiB)], timeout=90)
    assert res[0]["n"] == 64 * KiB and res[0]["sha"] == sha(blob[-64 * KiB:])
    assert res[1]["n"] == MiB and res[1]["sha"] == sha(blob[-3 * MiB:-2 * MiB])
    assert res[2]["n"] == MiB and res[2]["sha"] == sha(blob[BIG // 2:BIG // 2 + MiB])
    res = read_ops(p, [("seq", 0, BIG + 1, MiB)], timeout=90)
    assert res[0]["n"] == BIG and res[0]["sha"] == sha(blob)
    m.wait_state("big.bin", "complete", timeout=30)
    rs = [e for e in srv.requests("/big.bin", method="GET") if e["range"]]
    assert len(rs) <= 1, "ranges were asked again after the server ignored one: %r" % \
        [(e["range"], e["status"], e["sent"]) for e in rs]
    for e in rs:
        assert e["status"] == 200 and e["sent"] < BIG, (e["range"], e["status"], e["sent"])
    full = [e for e in srv.requests("/big.bin", method="GET") if not e["range"]]
    assert len(full) == 1 and full[0]["sent"] == BIG


def test_server_without_ranges_ondemand(srv, www, mount):
    """fill=ondemand on a server without ranges: everything is downloaded
    after all, and reads anywhere are right."""
    blob = (www / "v.mp4").read_bytes()
    m = mount("v.mp4=" + srv.url("v.mp4", norange=1), opts=["--fill=ondemand"])
    p = m / "v.mp4"
    res = read_ops(p, [("pread", len(blob) - 5000, 5000), ("seq", 0, len(blob) + 1, MiB)],
                 timeout=60)
    assert res[0]["n"] == 5000 and res[0]["sha"] == sha(blob[-5000:])
    assert res[1]["n"] == len(blob) and res[1]["sha"] == sha(blob)
    m.wait_state("v.mp4", "complete", timeout=30)


# ---------------------------------------------------------------- fill=ondemand

def test_ondemand_ffprobe_small_fraction(srv, www, mount):
    local = www / "v.mp4"
    size = local.stat().st_size
    _, ref = timed(ffprobe_cmd(local))
    m = mount("v.mp4=" + srv.url("v.mp4", rate=2_000_000), opts=["--fill=ondemand"])
    t, out = timed(ffprobe_cmd(m / "v.mp4"), timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(ref.stdout)
    assert m.state("v.mp4") == "running", status_line(m, "v.mp4")
    m.teardown()  # end the transfers, so that the log holds every response
    wait_until(lambda: not srv.answering("/v.mp4"), 10, "the server to log every response")
    sent = sent_total(srv, "v.mp4")
    print("ondemand ffprobe %.2f s, sent %d of %d" % (t, sent, size))
    assert sent < size // 4, "fill=ondemand: the server sent %d of %d bytes: %r" % (
        sent, size, [(e["range"], e["sent"]) for e in srv.requests("/v.mp4")])


def test_ondemand_sends_no_more_without_readers(srv, www, mount):
    """fill=ondemand: after the first 256 KiB nothing is downloaded unless a
    reader asks; the tail read asks for the tail only."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin"), opts=["--fill=ondemand"])
    p = m / "big.bin"
    res = read_ops(p, [("pread", BIG - 64 * KiB, 64 * KiB)])
    assert res[0]["n"] == 64 * KiB and res[0]["sha"] == sha(blob[-64 * KiB:])
    wait_until(lambda: all(e["status"] for e in srv.requests("/big.bin"))
               and len(srv.requests("/big.bin")) >= 2, 10, "the server to log both requests")
    b0 = m.nbytes("big.bin")
    assert b0 <= 2 * MiB, status_line(m, "big.bin")
    assert_unchanged(lambda: m.nbytes("big.bin"), 1.0, "the bytes of big.bin")  # nothing more
    assert m.nbytes("big.bin") == b0
    assert m.state("big.bin") == "running"
    assert sent_total(srv, "big.bin") <= 2 * MiB


def test_ondemand_all_read_becomes_complete(srv, www, mount):
    """fill=ondemand: once readers have touched every byte, the stream is
    complete (and the size exact), whichever transfers brought the bytes."""
    blob = (www / "v.mp4").read_bytes()
    m = mount("v.mp4=" + srv.url("v.mp4"), opts=["--fill=ondemand"])
    p = m / "v.mp4"
    # Out of order: the tail first, then the middle, then all of it.
    res = read_ops(p, [("pread", len(blob) - 100000, 100000), ("pread", len(blob) // 2, 2 * MiB),
                     ("seq", 0, len(blob) + 1, 128 * KiB)], timeout=60)
    assert res[0]["sha"] == sha(blob[-100000:])
    assert res[1]["sha"] == sha(blob[len(blob) // 2:len(blob) // 2 + 2 * MiB])
    assert res[2]["n"] == len(blob) and res[2]["sha"] == sha(blob)
    m.wait_state("v.mp4", "complete", timeout=20)
    assert m.nbytes("v.mp4") == len(blob)
    assert os.stat(p).st_size == len(blob)
    # Complete: re-reads need no transfer at all.
    n = len(srv.requests("/v.mp4"))
    res = read_ops(p, [("pread", 12345, 4096)])
    assert res[0]["data"] == blob[12345:12345 + 4096]
    assert len(srv.requests("/v.mp4")) == n
    assert sent_total(srv, "v.mp4") < len(blob) + len(blob) // 4


# ---------------------------------------------------------------- read-ahead after a jump

@pytest.mark.parametrize("fill", ["all", "ondemand"])
def test_jump_near_the_end_fetches_to_the_end(srv, www, mount, fill):
    """A jump to within 8 MiB of the end (in the file's second half) asks
    for everything up to the end in one range request (tools that probe
    the end read it in one go: `file` its last 7 MiB); a jump farther from
    the end asks for 128 KiB."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", rate=8_000_000), opts=["--fill=" + fill])
    p = m / "big.bin"
    near, far = BIG - 7 * MiB - 4096, 32 * MiB + 12345
    res = read_ops(p, [("pread", near, 4096), ("pread", far, 4096)])
    assert res[0]["data"] == blob[near:near + 4096]
    assert res[1]["data"] == blob[far:far + 4096]

    def asked():
        return sorted((a, b) for a, b, _ in ranges(srv, "big.bin") if a >= far)

    # Logged once sent: 7 MiB at 8 MB/s take about a second.
    wait_until(lambda: len(asked()) >= 2, 30, "the server to log both ranges")
    rs = asked()
    assert rs == [(far, far + 128 * KiB - 1), (near, BIG - 1)], rs


def test_scattered_reads_ask_for_little_and_reading_on_for_more(srv, www, mount):
    """A read after a jump asks for 128 KiB: a database's page reads are
    scattered (sqlite over a throttled server sent 3.7 times the bytes, and
    took 2.4 times as long, with 1 MiB). A reader that reads on from there
    asks for 2 MiB at once, as much as a first 1 MiB window doubled did."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin"), opts=["--fill=ondemand"])
    offs = [3 * MiB + 5, 17 * MiB, 9 * MiB + 100]
    on = 21 * MiB + 12288
    ops = [("pread", o, 4096) for o in offs] + [("pread", on, 4096), ("pread", on + 4096, 4096)]
    res = read_ops(m / "big.bin", ops)
    for (_, o, n), r in zip(ops, res):
        assert r["data"] == blob[o:o + n]
    # (The open asks for the head: not counted.)
    asked = sorted((a, b) for a, b, _ in ranges(srv, "big.bin", started=True) if a >= MiB)
    want = sorted([(o, o + 128 * KiB - 1) for o in offs + [on]] +
                  [(on + 128 * KiB, on + 4096 + 2 * MiB - 1)])
    assert asked == want, asked


@pytest.mark.parametrize("fill", ["all", "ondemand"])
def test_readahead_after_jump(srv, www, mount, fill):
    """A jump to the middle, then reading on: 16 MiB from 24 MiB at 2 MB/s.
    The sequential fill would reach 40 MiB after 21 s; read-ahead with
    growing Range windows brings it much sooner."""
    blob = (www / "big.bin").read_bytes()
    rate = 2_000_000
    m = mount("big.bin=" + srv.url("big.bin", rate=rate), opts=["--fill=" + fill])
    p = m / "big.bin"
    off, total = 24 * MiB, 16 * MiB
    res = read_ops(p, [("seq", off, total, 128 * KiB)], timeout=60)
    assert res[0]["n"] == total and res[0]["sha"] == sha(blob[off:off + total])
    seq_time = (off + total) / rate
    assert res[0]["t"] < seq_time / 2, "reading on after a jump took %.1f s (sequential fill: " \
        "%.0f s)" % (res[0]["t"], seq_time)
    rs = ranges(srv, "big.bin")
    assert rs, [e["range"] for e in srv.requests("/big.bin")]
    sizes = [b - a + 1 for a, b, _ in rs if a >= off]
    # The window grows: some request asks for more than 2 MiB.
    print("readahead %s: %.2f s, range sizes %r" % (fill, res[0]["t"], sizes))
    assert max(sizes) > 2 * MiB, sizes
    if fill == "all":
        assert m.state("big.bin") == "running"
        assert m.nbytes("big.bin") < BIG


# ---------------------------------------------------------------- validators, redirects

def test_range_validated_by_last_modified(srv, www, mount):
    """Without an ETag the Range requests carry If-Range: Last-Modified."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", rate=2_000_000, noetag=1))
    res = read_ops(m / "big.bin", [("pread", BIG - 64 * KiB, 64 * KiB)], timeout=30)
    assert res[0]["n"] == 64 * KiB and res[0]["sha"] == sha(blob[-64 * KiB:])
    assert res[0]["t"] < 5.0
    rs = ranges(srv, "big.bin")
    assert rs and all(e["if_range"] and not e["if_range"].startswith('"') for _, _, e in rs), \
        [(e["range"], e["if_range"]) for _, _, e in rs]
    assert m.state("big.bin") == "running"


@pytest.mark.parametrize("fill", ["all", "ondemand"])
def test_range_after_redirect_goes_to_final_url(srv, www, mount, fill):
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", redirect=1, rate=2_000_000),
              opts=["--fill=" + fill])
    res = read_ops(m / "big.bin", [("pread", BIG - 64 * KiB, 64 * KiB)], timeout=30)
    assert res[0]["n"] == 64 * KiB and res[0]["sha"] == sha(blob[-64 * KiB:])
    assert res[0]["t"] < 5.0
    rs = ranges(srv, "big.bin")
    tails = [e for a, b, e in rs if b == BIG - 1]
    assert tails and all("redirect=0" in e["query"] for e in tails), \
        [(e["query"], e["range"], e["status"]) for e in srv.requests("/big.bin")]


# ---------------------------------------------------------------- many readers, stops

def test_many_far_readers_each_byte_once(srv, www, mount):
    """Eight readers at eight far offsets at once (more than the range
    transfers a stream runs at a time): all served soon with the right
    bytes, and no byte is asked for by two Range requests."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", rate=2_000_000))
    p = m / "big.bin"
    offs = [8 * MiB * k + 5 * MiB for k in range(1, 8)] + [BIG - 256 * KiB]
    readers = [Reader(p, [("pread", o, 256 * KiB)]) for o in offs]
    try:
        outs = [rd.finish(timeout=60) for rd in readers]
    finally:
        for rd in readers:
            rd.stop()
    for o, (_, res) in zip(offs, outs):
        r = res[0]
        assert r.get("n") == 256 * KiB and r["sha"] == sha(blob[o:o + 256 * KiB]), (o, r)
        assert r["t"] < 8.0, (o, r["t"])
    assert m.state("big.bin") == "running"
    m.teardown()
    wait_until(lambda: not srv.answering("/big.bin"), 10, "the server to log every response")
    spans = sorted((a, b) for a, b, _ in ranges(srv, "big.bin"))
    for (a1, b1), (a2, b2) in zip(spans, spans[1:]):
        assert b1 < a2, "overlapping Range requests: %r" % spans


def test_interrupted_read_of_a_range(srv, www, mount):
    """A reader waiting for a slow Range transfer is interruptible (S8); the
    transfer goes on for the others."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", rate=300_000))
    p = m / "big.bin"
    rd = Reader(p, [("pread", BIG - MiB, MiB)])
    try:
        rd.wait_open()
        m.wait_waiters("big.bin", 1)  # the read is parked on the stream
        rd.proc.kill()
        rd.proc.wait(DEADLINE)
    finally:
        rd.stop()
    assert not pid_alive(rd.pid)
    # The range goes on: another reader gets the last 64 KiB of it.
    res = read_ops(p, [("pread", BIG - 64 * KiB, 64 * KiB)], timeout=30)
    assert res[0]["n"] == 64 * KiB and res[0]["sha"] == sha(blob[-64 * KiB:])
    assert m.state("big.bin") == "running"


def test_rm_with_range_transfers_in_flight(srv, www, mount, streamfs_bin):
    """`streamfs rm` of a stream with Range transfers running: its waiting
    reader is woken with an error, the transfers stop, the daemon lives on."""
    m = mount("big.bin=" + srv.url("big.bin", rate=100_000), "other=cmd:echo other",
              opts=["--fill=ondemand"])
    p = m / "big.bin"
    rd = Reader(p, [("pread", BIG // 2, MiB), ("pread", BIG - MiB, MiB)])
    try:
        rd.wait_open()
        m.wait_waiters("big.bin", 1)  # the first read is parked on the stream
        r = subprocess.run([str(streamfs_bin), "rm", str(m.path), "big.bin"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        _, res = rd.finish()
    finally:
        rd.stop()
    # The read waited for [32 MiB, 33 MiB), of which a part had come: it
    # must fail (S4: a short count only at the end or the failure point,
    # which is the frontier, far below), not return a short count that a
    # program takes for the end of the file.
    assert res[0].get("errno") == errno.EIO, res
    assert "big.bin" not in os.listdir(m.path)
    assert (m / "other").read_bytes() == b"other\n"
    # The transfers end: no response of the server stays open for long.
    wait_until(lambda: srv.requests("/big.bin") and not srv.answering("/big.bin"), 10,
               "the server to see the transfers end")


def test_failure_with_partial_range_is_eio_not_short(srv, www, mount):
    """fill=all, every response cut after 200000 bytes: the range fetch at
    the middle brings a part of what the reader waits for, then the stream
    fails (retries exhausted) at its frontier, far below the read. The read
    must get EIO, not a short count in the middle of the file."""
    m = mount("big.bin=" + srv.url("big.bin", drop_after=200_000, drop_always=1, rate=4_000_000),
              opts=FAST_FAIL)
    p = m / "big.bin"
    res = read_ops(p, [("pread", BIG // 2, MiB)], timeout=60)
    st = status_line(m, "big.bin")
    assert m.state("big.bin") == "failed", st
    eo = int(m.xattr("big.bin", "error_offset"))
    assert eo < BIG // 2, st
    assert res[0].get("errno") == errno.EIO, (res, st)


def test_inflight_range_not_downloaded_twice(srv, www, mount):
    """fill=all: read on after a jump (the read-ahead window grows to a
    Range request running to the end of the file), then read everything.
    When the sequential fill reaches bytes that a Range transfer is still
    bringing, it must not download them again (S7, each byte fetched once:
    in-flight ranges are not requested twice)."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin", rate=4_000_000))
    p = m / "big.bin"
    res = read_ops(p, [("seq", 16 * MiB, 32 * MiB, 128 * KiB)], timeout=60)
    assert res[0]["n"] == 32 * MiB and res[0]["sha"] == sha(blob[16 * MiB:48 * MiB])
    res = read_ops(p, [("seq", 0, BIG + 1, MiB)], timeout=60)
    assert res[0]["n"] == BIG and res[0]["sha"] == sha(blob)
    m.wait_state("big.bin", "complete", timeout=30)
    m.teardown()
    wait_until(lambda: not srv.answering("/big.bin"), 10, "the server to log every response")
    sent = sent_total(srv, "big.bin")
    assert sent < BIG + 4 * MiB, "the server sent %.1f MiB for a %d MiB file: %r" % (
        sent / MiB, BIG // MiB, [(e["range"], e["sent"]) for e in srv.requests("/big.bin")])


# ---------------------------------------------------------------- a fresh fill's grace

GRACE_LOG = "the fill waits up to 100 ms for a reader"


def test_fresh_fill_waits_for_a_reader(srv, www, mount):
    """fill=all from a server that takes ranges: after the first response
    the fill waits for a reader; a read at the frontier ends the wait at
    once (the daemon says why), and the bytes are the file's."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin"), opts=["-v"])
    p = m / "big.bin"
    assert os.stat(p).st_size == BIG  # starts the stream, waits for the length
    res = read_ops(p, [("pread", 0, 4096), ("seq", 0, BIG + 1, MiB)])
    assert res[0]["data"] == blob[:4096]
    assert res[1]["n"] == BIG and res[1]["sha"] == sha(blob)
    m.wait_state("big.bin", "complete")
    log = m.stderr_text()
    assert GRACE_LOG in log, log
    # Ended by the read, unless the 100 ms passed before it came (a
    # loaded machine): never both, and never neither.
    ends = [w for w in ("(a reader waits for it)", "(no reader came)") if w in log]
    assert len(ends) == 1, log


def test_fresh_fill_goes_on_without_readers(srv, www, mount):
    """Nobody reads after the stat: the fill goes on by itself and the
    stream completes."""
    m = mount("big.bin=" + srv.url("big.bin"), opts=["-v"])
    assert os.stat(m / "big.bin").st_size == BIG
    m.wait_state("big.bin", "complete")
    log = m.stderr_text()
    assert GRACE_LOG in log and "the fill goes on (no reader came)" in log, log


def test_fresh_fill_tail_probe(srv, www, mount):
    """A probe of the end of a fresh stream is served by a range request
    while the fill waits (no reader of its bytes), and the fill then goes
    on: the whole file arrives, each byte fetched about once."""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin"), opts=["-v"])
    p = m / "big.bin"
    res = read_ops(p, [("pread", BIG - 100, 100)])
    assert res[0]["data"] == blob[-100:]
    m.wait_state("big.bin", "complete")
    assert read_ops(p, [("seq", 0, BIG + 1, MiB)])[0]["sha"] == sha(blob)
    m.teardown()
    wait_until(lambda: not srv.answering("/big.bin"), 10, "the server to log every response")
    assert sent_total(srv, "big.bin") < BIG + 4 * MiB


def test_fresh_fill_stores_the_head_before_it_waits(srv, www, mount):
    """The head of the file comes with the first response: its first
    128 KiB are stored before the fill waits, so a probe of the start of
    a fresh stream is answered at once and leaves the fill waiting; a read
    past the head ends the wait. (The wait is stretched to 20 s here, so
    that nothing but a reader can end it while the test looks.)"""
    blob = (www / "big.bin").read_bytes()
    m = mount("big.bin=" + srv.url("big.bin"), opts=["-v"],
              env={"STREAMFS_TEST_GRACE_MS": "20000"})
    p = m / "big.bin"
    assert os.stat(p).st_size == BIG
    wait_until(lambda: m.nbytes("big.bin") >= 128 * 1024, DEADLINE, "the head to be stored")
    assert read_ops(p, [("pread", 100, 4096)])[0]["data"] == blob[100:4196]
    log = m.stderr_text()
    assert "the fill waits up to 20000 ms for a reader" in log, log
    assert "the fill goes on" not in log, log  # the probe did not wake it
    assert m.nbytes("big.bin") < 1 * MiB  # the head and no more
    res = read_ops(p, [("pread", 2 * MiB, 4096), ("seq", 0, BIG + 1, MiB)])
    assert res[0]["data"] == blob[2 * MiB:2 * MiB + 4096]
    assert res[1]["n"] == BIG and res[1]["sha"] == sha(blob)
    assert "the fill goes on (a reader waits for it)" in m.stderr_text()


@pytest.mark.parametrize("how", ["norange", "ondemand"])
def test_no_grace_without_ranges_or_fill(srv, www, mount, how):
    """No grace where readers far ahead must wait for the fill (a server
    without ranges), nor with fill=ondemand (no fill)."""
    blob = (www / "big.bin").read_bytes()
    if how == "norange":
        m = mount("big.bin=" + srv.url("big.bin", norange=1), opts=["-v"])
    else:
        m = mount("big.bin=" + srv.url("big.bin"), opts=["-v", "--fill=ondemand"])
    p = m / "big.bin"
    assert read_ops(p, [("pread", 8 * MiB, 4096)])[0]["data"] == blob[8 * MiB:8 * MiB + 4096]
    log = m.stderr_text()
    assert GRACE_LOG not in log, log
