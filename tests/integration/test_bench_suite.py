"""
bench/suite end to end, on small data and the systems CI has: it prints one
table with every row, streamfs's figures in it (medians with min-max over
the repetitions), the bytes nginx sent as streamfs fetched them once per
mount, correctness "ok"; a file system that cannot mount shows as an error
with its reason and the suite still finishes; --write writes the markdown
file with date, commit and machine.
"""
import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.timeout(900)

SUITE = REPO / "bench" / "suite"
FIGURE = r"\d+(?:\.\d+)?"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # made by the first run, reused by the others (--data)
    return tmp_path_factory.mktemp("suite-data")


def run_suite(tmp_path, data, *args):
    r = subprocess.run([str(SUITE), "--no-install", "--tmp", str(tmp_path), "--data", str(data),
                        "--size-mib", "8", "--mp4-mib", "4", *args],
                       capture_output=True, text=True, timeout=800)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def table(stdout):
    """{row label: {column title: cell}} from the printed markdown table."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head[1:], cells[1:]))
    return rows


def notes(stdout):
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\[(\d+)\] (.*)$", stdout, re.M)}


def test_suite_table(tmp_path, data, streamfs_bin):
    out = run_suite(tmp_path, data, "--reps", "2", "--streamfs", str(streamfs_bin),
                    "--systems", "local,curl,streamfs,streamfs-mem")
    t = table(out)
    assert list(next(iter(t.values()))) == ["local file", "curl", "streamfs", "streamfs memory"]
    labels = list(t)
    assert labels[0] == "first read of 8 MiB, MiB/s"
    assert "4 KiB at 6 MiB, fresh mount, ms" in labels
    assert sum(1 for lb in labels if lb.startswith("ffprobe")) == 6
    for col in ("streamfs", "streamfs memory"):
        for label, cells in t.items():
            cell = cells[col]
            if label.endswith("sha256"):
                assert cell == "ok", (label, cell)
            else:
                # a median and the min-max of two repetitions, no failure
                assert re.fullmatch(r"%s \(%s–%s\)" % (FIGURE, FIGURE, FIGURE), cell), (label, cell)
        # two reads on one mount: the file came from the server once (S7)
        sent = float(t["server sent for the two reads, MiB"][col].split()[0])
        assert 8.0 <= sent < 8.1, sent
    assert 16.0 <= float(t["server sent for the two reads, MiB"]["curl"].split()[0]) < 16.1
    assert t["daemon peak RSS, MiB"]["local file"] == "–"
    assert t["`unzip -l` (32 MiB zip), ms"]["curl"].startswith("n/a [")
    assert "unzip needs a seekable file" in out
    assert re.search(r"^Run \d{4}-\d\d-\d\d \d\d:\d\d UTC at commit \w+", out, re.M)
    # the state of free memory the first reads started from, and what it costs here
    assert re.search(r"^Writing 8 MiB into a new file here: \d+ MiB/s at the start, \d+ at once "
                     r"again \(free page reporting o(n|ff)\); each first read of the big file "
                     r"started on warm memory \(--memory warm\)\.$", out, re.M), out


def test_suite_mount_failure_is_a_cell(tmp_path, data):
    fake = tmp_path / "fake-streamfs"
    fake.write_text("#!/bin/sh\necho 'fake-streamfs: no mount here' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = run_suite(tmp_path, data, "--reps", "1", "--streamfs", str(fake),
                    "--systems", "local,streamfs", "--write", "--results", str(tmp_path / "R.md"))
    t = table(out)
    n = notes(out)
    for label, cells in t.items():
        m = re.fullmatch(r"error \[(\d+)\]", cells["streamfs"])
        assert m, (label, cells)
        why = n[int(m.group(1))]
        if label.startswith("server sent"):  # no mount, no bytes to count
            assert why in ("streamfs: did not mount", "streamfs: 11 of 11 mounts failed"), why
        else:
            assert why == "streamfs: mount failed (exit 1): fake-streamfs: no mount here", why
    assert re.fullmatch(FIGURE, t["first read of 8 MiB, MiB/s"]["local file"])
    md = (tmp_path / "R.md").read_text()
    assert "| measure " in md and "mount failed (exit 1)" in md
    assert "at commit" in md and "kernel %s" % os.uname().release in md
    # every mount of the run is gone
    assert not any(str(tmp_path) in ln for ln in Path("/proc/self/mountinfo").read_text().splitlines())


def test_suite_download_column(tmp_path, data):
    # "curl -o file": each measure downloads the whole file, then reads it
    out = run_suite(tmp_path, data, "--reps", "1", "--systems", "local,download")
    t = table(out)
    assert list(next(iter(t.values()))) == ["local file", "curl -o file"]
    for label, cells in t.items():
        cell = cells["curl -o file"]
        if label.endswith("sha256"):
            assert cell == "ok", (label, cell)
        else:
            assert re.fullmatch(FIGURE, cell), (label, cell)
    # the two reads are one download and a read of the file it made
    assert 8.0 <= float(t["server sent for the two reads, MiB"]["curl -o file"]) < 8.1
    # the two 4 KiB reads download the 8 MiB file each, and every probe its file
    assert float(t["server sent for the 4 KiB reads and the probes, MiB"]["curl -o file"]) > 16
    # nothing downloaded is left behind
    assert not list(tmp_path.rglob("download.bin"))


def test_bench_probe(tmp_path, streamfs_bin):
    """bench/bench_probe.sh: the tool on the local file and through a fresh
    mount, a line each with median (min-max); a tool that fails on the
    mount (or anywhere) fails the script, which leaves nothing behind."""
    f = tmp_path / "probe.bin"
    f.write_bytes(os.urandom(3 << 20))
    script = REPO / "bench" / "bench_probe.sh"
    env = dict(os.environ, REPS="2", STREAMFS=str(streamfs_bin))
    r = subprocess.run([str(script), str(f), "cmp", str(f)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^  local file +%s \(%s-%s\)$" % ((FIGURE,) * 3), r.stdout, re.M), r.stdout
    assert re.search(r"^  streamfs +%s \(%s-%s\)" % ((FIGURE,) * 3), r.stdout, re.M), r.stdout
    # cmp against another file's bytes fails: the script says so and stops
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(3 << 20))
    before = set(Path("/var/tmp").glob("streamfs-probe.*"))
    r = subprocess.run([str(script), str(f), "cmp", str(other)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 1 and "failed" in r.stderr, (r.returncode, r.stderr)
    assert set(Path("/var/tmp").glob("streamfs-probe.*")) == before


def test_bench_cpu(tmp_path, streamfs_bin):
    """bench/bench_cpu.sh: per repetition a curl line and a streamfs line,
    each with a rate and CPU seconds per GiB whose parts add up to the
    total; the daemon's I/O thread is among the parts; nothing is left
    mounted or behind."""
    script = REPO / "bench" / "bench_cpu.sh"
    env = dict(os.environ, REPS="2", SIZE_MIB="32", STREAMFS=str(streamfs_bin),
               BENCH_TMP=str(tmp_path), BENCH_MEM="asis")
    r = subprocess.run([str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["curl", "streamfs"] * 2, r.stdout
    for ln in lines:
        m = re.match(r"^\w+ +(%s) MiB/s  (.*)  total (%s) CPU-s/GiB$" % (FIGURE, FIGURE), ln)
        assert m and float(m.group(1)) > 0, ln
        parts = dict(re.findall(r"([\w-]+) (%s)" % FIGURE, m.group(2).replace("| ", "")))
        total = float(m.group(3))
        own = sum(float(v) for k, v in parts.items() if k != "daemon")
        assert abs(own - total) < 0.05, (ln, parts)
    assert "streamfs-io" in lines[1], lines[1]
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
