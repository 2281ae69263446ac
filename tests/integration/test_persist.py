"""--persist: URL streams keep their bytes in --cache-dir across mounts,
revalidated with the server before a cached byte is served."""

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import read_all, wait_until, xattr  # noqa: E402

MiB = 1 << 20
HDR = 72  # the map's header (src/engine/persist.c)


def maps(d):
    return sorted(p for p in Path(d).iterdir() if p.suffix == ".map")


def datas(d):
    return sorted(p for p in Path(d).iterdir() if p.suffix == ".data")


def map_ranges(path):
    """The (start, end) ranges a map names (its format: persist.c)."""
    b = path.read_bytes()
    el, ll, n = struct.unpack_from("<III", b, 56)
    off = HDR + el + ll
    return [struct.unpack_from("<QQ", b, off + 16 * i) for i in range(n)]


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def set_last_used(path, when):
    """Rewrite a map's last-used time (and its CRC): an entry used then."""
    b = bytearray(path.read_bytes())
    struct.pack_into("<Q", b, 48, when)
    struct.pack_into("<I", b, len(b) - 4, crc32c(bytes(b[:-4])))
    path.write_bytes(bytes(b))


def get_bytes(srv, path):
    return sum(e["sent"] for e in srv.requests(path) if e["method"] == "GET")


@pytest.fixture
def pdir(tmp_path):
    d = tmp_path / "pcache"
    d.mkdir()
    return d


def persist_mount(mount, pdir, *specs, opts=()):
    return mount(*specs, opts=["--persist", "--cache-dir=%s" % pdir, *opts])


def cached_once(mount, pdir, www, name, size, url):
    """A file of @size random bytes served as @name, read whole once by a
    --persist mount of @url and unmounted: its bytes are in the cache."""
    blob = os.urandom(size)
    (www / name).write_bytes(blob)
    m = persist_mount(mount, pdir, "%s=%s" % (name, url))
    assert read_all(m / name) == blob
    m.teardown()
    return blob


def test_remount_reuses_bytes(srv, www, mount, pdir):
    size = 24 * MiB + 777
    blob = os.urandom(size)
    (www / "v.bin").write_bytes(blob)
    m = persist_mount(mount, pdir, "v.bin=" + srv.url("v.bin"))
    assert read_all(m / "v.bin") == blob
    assert xattr(m / "v.bin", "persist") == "new"
    m.teardown()
    first = get_bytes(srv, "/v.bin")
    assert first >= size
    assert len(maps(pdir)) == 1 and map_ranges(maps(pdir)[0]) == [(0, size)]

    m2 = persist_mount(mount, pdir, "v.bin=" + srv.url("v.bin"))
    assert read_all(m2 / "v.bin") == blob
    second = get_bytes(srv, "/v.bin") - first
    assert second < size / 100, "the remount downloaded %d bytes again" % second
    assert xattr(m2 / "v.bin", "persist") == "reused %d bytes" % size
    # revalidated before use: a validated Range request with If-Range
    last = srv.requests("/v.bin")[-1]
    assert last["if_range"] and last["range"] and last["status"] == 206
    # random access on a reused copy, fill=ondemand: nothing is fetched
    m2.teardown()
    before = get_bytes(srv, "/v.bin")
    m3 = persist_mount(mount, pdir, "v.bin=" + srv.url("v.bin"), opts=["--fill=ondemand"])
    with open(m3 / "v.bin", "rb") as f:
        f.seek(17 * MiB)
        assert f.read(MiB) == blob[17 * MiB:18 * MiB]
    assert get_bytes(srv, "/v.bin") - before < size / 100


def test_partial_copy_is_completed(srv, www, mount, pdir):
    """fill=ondemand reads leave parts cached; a later mount reuses them and
    fetches only the rest."""
    size = 16 * MiB
    blob = os.urandom(size)
    (www / "p.bin").write_bytes(blob)
    m = persist_mount(mount, pdir, "p.bin=" + srv.url("p.bin"), opts=["--fill=ondemand"])
    with open(m / "p.bin", "rb") as f:
        f.seek(8 * MiB)
        assert f.read(MiB) == blob[8 * MiB:9 * MiB]
    m.teardown()
    cached = sum(b - a for a, b in map_ranges(maps(pdir)[0]))
    assert 0 < cached < size
    before = get_bytes(srv, "/p.bin")
    m2 = persist_mount(mount, pdir, "p.bin=" + srv.url("p.bin"))
    assert read_all(m2 / "p.bin") == blob
    fetched = get_bytes(srv, "/p.bin") - before
    assert fetched <= size - cached + MiB, (fetched, cached)


@pytest.mark.parametrize("validator", ["etag", "lastmod"])
def test_origin_change_between_mounts(srv, www, mount, pdir, validator):
    size = 6 * MiB
    old = os.urandom(size)
    new = os.urandom(size)
    f = www / "c.bin"
    f.write_bytes(old)
    q = {"noetag": 1} if validator == "lastmod" else {}
    url = srv.url("c.bin", **q)
    m = persist_mount(mount, pdir, "c.bin=" + url)
    assert read_all(m / "c.bin") == old
    m.teardown()
    f.write_bytes(new)  # same length, another version
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # Last-Modified moves
    m2 = persist_mount(mount, pdir, "c.bin=" + url)
    assert read_all(m2 / "c.bin") == new
    why = xattr(m2 / "c.bin", "persist")
    assert why.startswith("discarded: the resource changed on the server"), why
    assert ("ETag" if validator == "etag" else "Last-Modified") in why
    assert "cached copy discarded" in m2.stderr_text()
    m2.teardown()
    # and the new version is what is kept now
    m3 = persist_mount(mount, pdir, "c.bin=" + url)
    before = get_bytes(srv, "/c.bin")
    assert read_all(m3 / "c.bin") == new
    assert get_bytes(srv, "/c.bin") - before < size / 100


def test_lastmod_same_but_length_differs(srv, www, mount, pdir):
    """Without an ETag, the same Last-Modified with another length is a
    change too."""
    f = www / "l.bin"
    f.write_bytes(os.urandom(3 * MiB))
    mtime = f.stat().st_mtime_ns
    url = srv.url("l.bin", noetag=1)
    m = persist_mount(mount, pdir, "l.bin=" + url)
    read_all(m / "l.bin")
    m.teardown()
    new = os.urandom(3 * MiB + 10)
    f.write_bytes(new)
    os.utime(f, ns=(mtime, mtime))
    m2 = persist_mount(mount, pdir, "l.bin=" + url)
    assert read_all(m2 / "l.bin") == new
    assert "bytes, was" in xattr(m2 / "l.bin", "persist")


def test_no_validator_not_reused(srv, www, mount, pdir):
    blob = os.urandom(2 * MiB)
    (www / "n.bin").write_bytes(blob)
    url = srv.url("n.bin", noetag=1, nolastmod=1)
    for i in range(2):
        m = persist_mount(mount, pdir, "n.bin=" + url)
        assert read_all(m / "n.bin") == blob
        assert xattr(m / "n.bin", "persist") == "not kept: no validator"
        m.teardown()
        assert maps(pdir) == [] and datas(pdir) == []
    assert get_bytes(srv, "/n.bin") == 2 * len(blob)


def test_identity_is_part_of_the_key(srv, www, mount, pdir):
    """Another header is another request identity: not the same entry; and
    the header's value is not stored in clear."""
    blob = os.urandom(MiB)
    (www / "h.bin").write_bytes(blob)
    m = persist_mount(mount, pdir, "h.bin=" + srv.url("h.bin"),
                      opts=["--header=Authorization: Bearer s3cr3t-t0ken"])
    assert read_all(m / "h.bin") == blob
    m.teardown()
    m2 = persist_mount(mount, pdir, "h.bin=" + srv.url("h.bin"),
                       opts=["--header=Authorization: Bearer other"])
    assert read_all(m2 / "h.bin") == blob
    assert xattr(m2 / "h.bin", "persist") == "new"
    m2.teardown()
    assert len(maps(pdir)) == 2
    for p in Path(pdir).iterdir():
        if p.is_file():
            data = p.read_bytes()
            assert b"s3cr3t" not in data and b"h.bin" not in data, p


def test_sigkill_during_fill(srv, www, mount, pdir):
    """A daemon killed while filling: the next mount reads the right bytes,
    reusing what the last map names."""
    size = 24 * MiB
    blob = os.urandom(size)
    (www / "k.bin").write_bytes(blob)
    m = persist_mount(mount, pdir, "k.bin=" + srv.url("k.bin", rate=4 * MiB))
    m.start("k.bin").result()
    # a map that names at least 4 MiB: the sync thread wrote it after an fdatasync
    wait_until(lambda: maps(pdir) and sum(b - a for a, b in map_ranges(maps(pdir)[0])) >= 4 * MiB,
               what="a map naming 4 MiB")
    assert m.state("k.bin") == "running"
    m.signal(signal.SIGKILL)
    m.wait_exit()
    m.teardown()
    named = sum(b - a for a, b in map_ranges(maps(pdir)[0]))
    # the server logs a response when it ends: the killed one, first
    wait_until(lambda: len(srv.requests("/k.bin")) == 1, what="the killed response logged")
    before = get_bytes(srv, "/k.bin")
    m2 = persist_mount(mount, pdir, "k.bin=" + srv.url("k.bin", rate=4 * MiB))
    assert read_all(m2 / "k.bin") == blob
    assert xattr(m2 / "k.bin", "persist").startswith("reused ")
    assert get_bytes(srv, "/k.bin") - before <= size - named + MiB


def test_damaged_entry_discarded(srv, www, mount, pdir):
    blob = os.urandom(3 * MiB)
    (www / "d.bin").write_bytes(blob)
    url = srv.url("d.bin")
    m = persist_mount(mount, pdir, "d.bin=" + url)
    assert read_all(m / "d.bin") == blob
    m.teardown()
    mp = maps(pdir)[0]
    b = bytearray(mp.read_bytes())
    b[HDR - 2] ^= 0x40  # a flipped bit: the CRC no longer matches
    mp.write_bytes(bytes(b))
    before = get_bytes(srv, "/d.bin")
    m2 = persist_mount(mount, pdir, "d.bin=" + url)
    assert "discarding cache entry %s" % mp.stem in m2.stderr_text()
    assert "checksum mismatch" in m2.stderr_text()
    assert read_all(m2 / "d.bin") == blob
    assert get_bytes(srv, "/d.bin") - before == len(blob)  # nothing was trusted
    m2.teardown()
    # A map under another entry's name is foreign: discarded too.
    mp = maps(pdir)[0]
    foreign = mp.with_name("0" * 64 + ".map")
    foreign.write_bytes(mp.read_bytes())
    (pdir / ("0" * 64 + ".data")).write_bytes(b"x" * 100)
    m3 = persist_mount(mount, pdir, "d.bin=" + url)
    assert "a map of another entry" in m3.stderr_text()
    assert not foreign.exists() and not (pdir / ("0" * 64 + ".data")).exists()
    assert read_all(m3 / "d.bin") == blob


def test_data_hole_not_trusted(srv, www, mount, pdir):
    """Bytes the map names but the data file does not hold (a punched or
    lost block) are fetched again, never served as zeros."""
    blob = cached_once(mount, pdir, www, "z.bin", 4 * MiB, srv.url("z.bin"))
    data = datas(pdir)[0]
    fd = os.open(data, os.O_RDWR)
    try:
        os.ftruncate(fd, 2 * MiB)  # the second half is gone
    finally:
        os.close(fd)
    m2 = persist_mount(mount, pdir, "z.bin=" + srv.url("z.bin"))
    assert read_all(m2 / "z.bin") == blob
    assert xattr(m2 / "z.bin", "persist") == "reused %d bytes" % (2 * MiB)


def test_lru_across_restarts(srv, www, mount, pdir):
    """--cache-size applies across mounts: the least recently used entries
    go first when the next mount opens the directory."""
    blobs = {n: os.urandom(3 * MiB) for n in ("old.bin", "new.bin")}
    for n, b in blobs.items():
        (www / n).write_bytes(b)
    m = persist_mount(mount, pdir, *("%s=%s" % (n, srv.url(n)) for n in blobs))
    for n, b in blobs.items():
        assert read_all(m / n) == b
    m.teardown()
    assert len(maps(pdir)) == 2
    # which entry is which: the one whose data is old.bin's
    by_name = {}
    for mp in maps(pdir):
        d = mp.with_suffix(".data").read_bytes()
        by_name["old.bin" if d == blobs["old.bin"] else "new.bin"] = mp
    set_last_used(by_name["old.bin"], 1000)
    set_last_used(by_name["new.bin"], 2000)
    m2 = persist_mount(mount, pdir, *("%s=%s" % (n, srv.url(n)) for n in blobs),
                       opts=["--cache-size=5M"])
    assert "deleting cache entry %s" % by_name["old.bin"].stem in m2.stderr_text()
    assert not by_name["old.bin"].exists() and by_name["new.bin"].exists()
    before = get_bytes(srv, "/new.bin")
    assert read_all(m2 / "new.bin") == blobs["new.bin"]
    assert get_bytes(srv, "/new.bin") - before < MiB
    assert read_all(m2 / "old.bin") == blobs["old.bin"]


def test_two_mounts_one_directory_refused(srv, www, mount, mount_fail, pdir):
    (www / "a.bin").write_bytes(b"a" * 1000)
    persist_mount(mount, pdir, "a.bin=" + srv.url("a.bin"))
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("--persist", "--cache-dir=%s" % pdir, mnt, "a.bin=" + srv.url("a.bin"),
                   check_mountpoint=mnt)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "streamfs: cache directory '%s' is in use by another streamfs mount with --persist "
        "(one mount per directory)" % pdir]


@pytest.mark.parametrize("args,want", [
    (["--persist"], "--persist needs --cache-dir DIR"),
    (["--persist", "--cache-dir=memory"], "--persist needs --cache-dir DIR"),
    (["--persist", "--cache-dir=/nonexistent/streamfs"], "/nonexistent/streamfs"),
    (["--persist", "--cache-dir=/proc/self"], "/proc/self"),
])
def test_bad_persist_input(mount_fail, args, want):
    mnt = mount_fail.new_mountpoint()
    r = mount_fail(*args, mnt, "a=http://127.0.0.1:1/a", check_mountpoint=mnt)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0], r.stderr


def test_cache_dir_is_a_file(mount_fail, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    mnt = mount_fail.new_mountpoint()
    r = mount_fail("--persist", "--cache-dir=%s" % f, mnt, "a=http://127.0.0.1:1/a",
                   check_mountpoint=mnt)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_budget_applies_to_reused_bytes(srv, www, mount, pdir):
    """A copy that does not fit in what is left of --cache-size: what fits
    is reused, the rest is fetched again, the budget holds, and every byte
    is right."""
    blob = cached_once(mount, pdir, www, "b.bin", 6 * MiB, srv.url("b.bin"))
    # 4 MiB of a command's output cannot be evicted: 4 MiB left for b.bin
    m2 = persist_mount(mount, pdir, "b.bin=" + srv.url("b.bin"),
                       "c.bin=cmd:head -c 4194304 /dev/zero",
                       opts=["--cache-size=8M", "--cache-min-free=0"])
    assert "deleting cache entry" not in m2.stderr_text()  # 6 MiB fit in 8 at open
    m2.start("c.bin").result()
    m2.wait_state("c.bin", "complete")
    m2.start("b.bin").result()
    wait_until(lambda: (xattr(m2 / "b.bin", "persist") or "").startswith("reused"),
               what="the copy revalidated")
    reused = int(xattr(m2 / "b.bin", "persist").split()[1])
    assert 0 < reused <= 4 * MiB
    assert int(xattr(m2.path, "cache_used")) <= 8 * MiB
    assert read_all(m2 / "b.bin") == blob
    assert int(xattr(m2.path, "cache_used")) <= 8 * MiB
    assert read_all(m2 / "c.bin") == bytes(4 * MiB)


def test_added_files_persist_too(srv, www, mount, pdir, streamfs_cli):
    blob = os.urandom(3 * MiB)
    (www / "a.bin").write_bytes(blob)
    for i in range(2):
        m = persist_mount(mount, pdir)
        r = streamfs_cli("add", str(m.path), "a.bin=" + srv.url("a.bin"))
        assert r.returncode == 0, r.stderr
        assert read_all(m / "a.bin") == blob
        assert xattr(m / "a.bin", "persist") == ("new" if i == 0 else "reused %d bytes" % len(blob))
        m.teardown()
    assert get_bytes(srv, "/a.bin") < len(blob) * 1.01


def named_pages_wrong(pdir, blob):
    """Pages the map on disk names that the data file holds (data, not a
    hole) but with bytes other than the resource's: what a remount would
    trust and serve. 4 KiB pages."""
    page = 4096
    wrong = []
    with open(datas(pdir)[0], "rb") as f:
        fd = f.fileno()
        for a, b in map_ranges(maps(pdir)[0]):
            off = a
            while off < b:
                try:
                    d = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break  # no data after off
                if d >= b:
                    break
                h = min(os.lseek(fd, d, os.SEEK_HOLE), b)
                got = os.pread(fd, h - d, d)
                for p in range(d, h, page):
                    if got[p - d:p - d + page] != blob[p:min(p + page, h)]:
                        wrong.append(p)
                off = h
    return wrong


def test_sigkill_while_refilling_punched_bytes(srv, www, mount, pdir):
    """A map written, then some of the bytes it names punched (here: a copy
    that does not fit in the budget at a remount), then fetched again
    slowly, in pieces that end inside pages: killed meanwhile, the map on
    disk must not name a page that holds only part of its bytes (the rest
    of a punched page reads as zeros)."""
    size = 6 * MiB
    # One URL for every mount (it names the entry): paced at 3 MB/s, in
    # 60000-byte pieces, which end inside pages.
    url = srv.url("r.bin", rate=3000000)
    blob = cached_once(mount, pdir, www, "r.bin", size, url)
    assert len(maps(pdir)) == 1 and map_ranges(maps(pdir)[0]) == [(0, size)]
    # 4 MiB of a command's output cannot be evicted: 4 of the 6 MiB fit,
    # the rest is punched at the revalidation and fetched again.
    m2 = persist_mount(mount, pdir, "r.bin=" + url, "c.bin=cmd:head -c 4194304 /dev/zero",
                       opts=["--cache-size=8M", "--cache-min-free=0"])
    m2.start("c.bin").result()
    m2.wait_state("c.bin", "complete")
    m2.start("r.bin").result()
    wait_until(lambda: (xattr(m2 / "r.bin", "persist") or "").startswith("reused"),
               what="the copy revalidated (and what did not fit punched)")
    assert xattr(m2 / "r.bin", "persist") == "reused %d bytes" % (4 * MiB)
    data = datas(pdir)[0]
    # A reader of the punched bytes, at once (before the sync thread's
    # next map, which would name only what is present, a second later).
    reader = subprocess.Popen(["dd", "if=%s" % (m2 / "r.bin"), "of=/dev/null", "bs=1M",
                               "skip=4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def refilling():
        fd = os.open(data, os.O_RDONLY)
        try:
            d = os.lseek(fd, 4 * MiB, os.SEEK_DATA)
            return d < size and os.lseek(fd, d, os.SEEK_HOLE) > d + 3 * 4096
        except OSError:
            return False
        finally:
            os.close(fd)
    try:
        wait_until(refilling, what="punched bytes being written again")
        m2.signal(signal.SIGKILL)
        m2.wait_exit()
        m2.teardown()
    finally:
        reader.kill()
        reader.wait()
    assert len(maps(pdir)) == 1
    assert named_pages_wrong(pdir, blob) == []
    m3 = persist_mount(mount, pdir, "r.bin=" + url)
    assert read_all(m3 / "r.bin") == blob
