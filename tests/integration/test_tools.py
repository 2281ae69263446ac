"""
Real tools on streams: each tool's output on a mounted stream must equal its
output on the same local file. Sources are mostly slow (the file arrives in
chunks 0.3 s apart), so the tools really run on data still arriving.

Which size policy each case uses (--size, README.md):
  - ffprobe learns the size from fstat; unzip from stat(). With size=auto a
    running stream shows the bytes so far, so those tools get --size=wait
    or a declared size (--size=N) when the stream is slow. ffprobe on a
    faststart MP4 with size=auto differs only in the [FORMAT] size and
    bit_rate (computed from the size), which are left out of the comparison.
  - Python's zipfile finds the end with lseek(SEEK_END), which waits for
    the end (S6), so it works with size=auto.
  - sqlite compares the header's page count with the file size, so it gets
    --size=wait or a declared size.
"""
import hashlib
import os
import shutil
import zipfile

import pytest

from helpers import call, q, run, slow_cmd

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    lavfi = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=d=5:s=320x240"]
    r = run(lavfi + ["-movflags", "+faststart", "-f", "mp4", d / "faststart.mp4"], timeout=120)
    assert r.returncode == 0, r.stderr
    r = run(lavfi + ["-f", "mp4", d / "moovend.mp4"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert _top_boxes(d / "faststart.mp4").index("moov") < _top_boxes(d / "faststart.mp4").index("mdat")
    assert _top_boxes(d / "moovend.mp4")[-1] == "moov"

    r = run(["tar", "cf", d / "doc.tar", "-C", "/usr/share/doc", "bash"], timeout=60)
    assert r.returncode == 0, r.stderr

    src = d / "zipsrc"
    shutil.copytree("/usr/share/doc/bash", src / "bash")
    (src / "random.bin").write_bytes(os.urandom(600_000))
    (src / "text.txt").write_text("".join(f"line {i}\n" for i in range(50_000)))
    r = run(["zip", "-q", "-r", d / "archive.zip", "bash", "random.bin", "text.txt"],
            cwd=src, timeout=60)
    assert r.returncode == 0, r.stderr

    r = run(["sqlite3", d / "data.db",
             "create table t(id integer primary key, v text);"
             "with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000) "
             "insert into t(v) select hex(randomblob(32)) from c;"
             "create index tv on t(v);"], timeout=60)
    assert r.returncode == 0, r.stderr
    return d


def _top_boxes(path):
    data = path.read_bytes()
    out, off = [], 0
    while off + 8 <= len(data):
        size = int.from_bytes(data[off:off + 4], "big")
        out.append(data[off + 4:off + 8].decode("latin1"))
        if size < 8:
            break
        off += size
    return out


def source_for(kind, path):
    if kind == "cat":
        return f"cmd:cat {q(path)}"
    if kind == "slow":
        return slow_cmd(path, chunks=4, delay=0.3)
    if kind == "pipe":
        return f"pipe:{path}"
    raise ValueError(kind)


def mount_one(mount, corpus, name, kind, size=None):
    """Mount corpus/NAME as MNT/NAME; size: None (auto), 'wait' or 'exact'."""
    opts = []
    if size == "wait":
        opts.append("--size=wait")
    elif size == "exact":
        opts.append(f"--size={os.path.getsize(corpus / name)}")
    return mount(f"{name}={source_for(kind, corpus / name)}", opts=opts)


def same_output(argv, local_dir, mnt_dir, timeout=60, filt=None):
    """Run argv in both directories (same relative file names); compare."""
    a = run(argv, cwd=local_dir, timeout=timeout)
    b = run(argv, cwd=mnt_dir, timeout=timeout)
    assert a.returncode == 0, f"{argv} on the local file failed: {a.stderr}"
    fa, fb = a.stdout, b.stdout
    if filt:
        fa, fb = filt(fa), filt(fb)
    assert (b.returncode, fb) == (0, fa), \
        f"{argv} differs on the mount (rc {b.returncode}):\nstderr: {b.stderr}\n" \
        f"--- local\n{a.stdout}\n--- mount\n{b.stdout}"
    return b


FFPROBE = ["ffprobe", "-v", "error", "-show_format", "-show_streams"]


def without_format_size(text):
    out, in_format = [], False
    for line in text.splitlines():
        if line == "[FORMAT]":
            in_format = True
        elif line == "[/FORMAT]":
            in_format = False
        elif in_format and line.split("=")[0] in ("size", "bit_rate"):
            continue
        out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("name,kind,size", [
    ("faststart.mp4", "cat", None),
    ("faststart.mp4", "slow", None),
    ("faststart.mp4", "slow", "wait"),
    ("moovend.mp4", "cat", "wait"),
    ("moovend.mp4", "slow", "wait"),
    ("moovend.mp4", "slow", "exact"),
])
def test_ffprobe(mount, corpus, name, kind, size):
    m = mount_one(mount, corpus, name, kind, size)
    filt = without_format_size if size is None else None
    same_output(FFPROBE + [name], corpus, m.path, filt=filt)


@pytest.mark.parametrize("name", ["faststart.mp4", "moovend.mp4", "doc.tar", "archive.zip",
                                  "data.db"])
def test_file(mount, corpus, name):
    m = mount_one(mount, corpus, name, "slow")
    same_output(["file", name], corpus, m.path)


def test_file_on_all_files_at_once(mount, corpus):
    """`file mnt/*`: stat of each file starts it and shows a real size."""
    names = ["faststart.mp4", "doc.tar", "archive.zip", "data.db"]
    m = mount(*[f"{n}={slow_cmd(corpus / n)}" for n in names])
    same_output(["file"] + names, corpus, m.path)


@pytest.mark.parametrize("kind", ["slow", "pipe"])
def test_tar(mount, corpus, kind):
    m = mount_one(mount, corpus, "doc.tar", kind)
    same_output(["tar", "tvf", "doc.tar"], corpus, m.path)
    a = run(["sh", "-c", "tar xOf doc.tar | sha256sum"], cwd=corpus, timeout=60)
    b = run(["sh", "-c", "tar xOf doc.tar | sha256sum"], cwd=m.path, timeout=60)
    assert a.returncode == 0 and (b.returncode, b.stdout) == (0, a.stdout), b.stderr


@pytest.mark.parametrize("size", ["wait", "exact"])
def test_unzip(mount, corpus, size):
    m = mount_one(mount, corpus, "archive.zip", "slow", size)
    same_output(["unzip", "-l", "archive.zip"], corpus, m.path)
    same_output(["unzip", "-t", "archive.zip"], corpus, m.path)
    same_output(["sh", "-c", "unzip -p archive.zip random.bin | sha256sum"], corpus, m.path)


def test_unzip_on_a_complete_stream(mount, corpus):
    """Without --size=wait: once the stream is complete, stat is exact."""
    m = mount_one(mount, corpus, "archive.zip", "cat")
    assert run(["cat", m / "archive.zip"], timeout=60, capture_output=True,
               text=False).returncode == 0
    m.wait_state("archive.zip", "complete")
    same_output(["unzip", "-l", "archive.zip"], corpus, m.path)


@pytest.mark.parametrize("name", ["faststart.mp4", "doc.tar", "archive.zip", "data.db"])
def test_sha256sum(mount, corpus, name):
    m = mount_one(mount, corpus, name, "slow")
    same_output(["sha256sum", name], corpus, m.path)


@pytest.mark.parametrize("size", [None, "wait"])
def test_cp(mount, corpus, tmp_path, size):
    """GNU cp (which may probe SEEK_DATA/SEEK_HOLE) copies a stream that is
    still arriving byte for byte: missing data is not a hole."""
    m = mount_one(mount, corpus, "doc.tar", "slow", size)
    r = run(["cp", m / "doc.tar", tmp_path / "copy.tar"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "copy.tar").read_bytes() == (corpus / "doc.tar").read_bytes()


@pytest.mark.parametrize("name", ["doc.tar", "faststart.mp4"])
def test_tail(mount, corpus, name):
    """tail -c seeks to the end first (SEEK_END waits for it)."""
    m = mount_one(mount, corpus, name, "slow")
    same_output(["sh", "-c", f"tail -c 5000 {name} | sha256sum"], corpus, m.path)


SQL = "select count(*), sum(length(v)), max(id), min(v) from t; pragma integrity_check;"


@pytest.mark.parametrize("kind,size", [("slow", "wait"), ("slow", "exact"), ("cat", "wait")])
def test_sqlite(mount, corpus, kind, size):
    m = mount_one(mount, corpus, "data.db", kind, size)
    b = same_output(["sqlite3", "data.db", SQL], corpus, m.path)
    assert b.stdout.splitlines()[0].startswith("20000|")


def zip_listing_and_member(path):
    with zipfile.ZipFile(path) as z:
        names = [(i.filename, i.file_size, i.CRC) for i in z.infolist()]
        member = hashlib.sha256(z.read("random.bin")).hexdigest()
        text = z.read("text.txt")
        bad = z.testzip()
    return names, member, hashlib.sha256(text).hexdigest(), bad


@pytest.mark.parametrize("size", [None, "wait"])
def test_python_zipfile(mount, corpus, size):
    m = mount_one(mount, corpus, "archive.zip", "slow", size)
    local = zip_listing_and_member(corpus / "archive.zip")
    assert local[3] is None
    got = call(zip_listing_and_member, m / "archive.zip", timeout=60)
    assert got == local
