"""
Packaging: `cmake --install` puts the binary, the man page and the bash
completion in place under a prefix (GNUInstallDirs); `cpack -G DEB` makes a
.deb whose Depends name the libraries the binary needs (dpkg-shlibdeps)
and fuse3; the completion completes subcommands, options, mount points
and the names of a mount's files, and starts no stream doing it.

The build tree is the one STREAMFS_BIN was built in: these tests install
and package what the other tests run.
"""
import os
import re
import shlex
from pathlib import Path

import pytest

from helpers import REPO, run

COMPLETION = REPO / "completions" / "streamfs"


@pytest.fixture(scope="module")
def build_dir(streamfs_bin):
    d = Path(streamfs_bin).resolve().parent
    if not (d / "CPackConfig.cmake").is_file() or not (d / "cmake_install.cmake").is_file():
        pytest.fail(f"{d} is not a CMake build tree of streamfs (no CPackConfig.cmake)",
                    pytrace=False)
    return d


@pytest.mark.parametrize("prefix, bindir", [("/usr/local", "usr/local/bin"), ("/usr", "usr/bin")])
def test_cmake_install(build_dir, tmp_path, prefix, bindir):
    dest = tmp_path / "root"
    r = run(["cmake", "--install", build_dir, "--prefix", prefix],
            env={**os.environ, "DESTDIR": str(dest)}, timeout=120)
    assert r.returncode == 0, r.stderr
    share = dest / prefix.lstrip("/") / "share"
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert files == sorted([f"{bindir}/streamfs",
                            str((share / "man/man1/streamfs.1").relative_to(dest)),
                            str((share / "bash-completion/completions/streamfs")
                                .relative_to(dest))]), files
    binary = dest / bindir / "streamfs"
    assert os.access(binary, os.X_OK)
    v = run([binary, "--version"], timeout=10)
    assert v.returncode == 0 and re.fullmatch(r"streamfs \d+\.\d+\.\d+\n", v.stdout), v
    assert (share / "man/man1/streamfs.1").read_bytes() == (REPO / "man/streamfs.1").read_bytes()
    assert (share / "bash-completion/completions/streamfs").read_bytes() == \
        COMPLETION.read_bytes()


@pytest.mark.timeout(300)
def test_cpack_deb(build_dir, tmp_path):
    out = tmp_path / "pkg"
    r = run(["cpack", "-G", "DEB", "--config", build_dir / "CPackConfig.cmake", "-B", out],
            cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    debs = list(out.glob("*.deb"))
    assert len(debs) == 1, list(out.iterdir())
    deb = debs[0]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert deb.name == f"streamfs_{deb.name.split('_')[1]}_{arch}.deb"

    def field(name):
        f = run(["dpkg-deb", "-f", deb, name])
        assert f.returncode == 0, f.stderr
        return f.stdout.strip()
    assert field("Package") == "streamfs"
    assert field("Architecture") == arch
    version = run([build_dir / "streamfs", "--version"]).stdout.split()[1]
    assert field("Version") == version
    depends = {d.strip().split()[0]: d.strip() for d in field("Depends").split(",")}
    for pkg in ("fuse3", "libfuse3-3", "libcurl4", "libinih1", "libc6"):
        assert pkg in depends, f"{pkg} missing from Depends: {field('Depends')}"
    # Versioned by dpkg-shlibdeps from the symbols the binary uses.
    assert re.fullmatch(r"libfuse3-3 \(>= [\d.]+\)", depends["libfuse3-3"]), depends

    listing = run(["dpkg-deb", "-c", deb]).stdout
    paths = {ln.split()[-1] for ln in listing.splitlines()}
    for p in ("./usr/bin/streamfs", "./usr/share/man/man1/streamfs.1",
              "./usr/share/bash-completion/completions/streamfs"):
        assert p in paths, f"{p} not in the package:\n{listing}"
    assert re.search(r"^-rwxr-xr-x root/root .* \./usr/bin/streamfs$", listing, re.M), listing

    # The packaged binary runs (it was stripped, not broken).
    root = tmp_path / "x"
    assert run(["dpkg-deb", "-x", deb, root]).returncode == 0
    v = run([root / "usr/bin/streamfs", "--version"], timeout=10)
    assert v.returncode == 0 and v.stdout == f"streamfs {version}\n", v


def complete(line, env=None):
    """What the completion offers for the command line @line (the cursor
    at its end; a trailing space starts a new word), computed by bash
    with the completion file sourced: COMPREPLY, one item per line."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = (f"source {shlex.quote(str(COMPLETION))}\n"
              "complete -p streamfs\n"
              f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
              f"COMP_CWORD={len(words) - 1}\n"
              f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}\n"
              "_streamfs\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = run(["bash", "--norc", "--noprofile", "-c", script], timeout=10, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "complete -F _streamfs streamfs", lines
    return [ln for ln in lines[1:] if ln]


def test_completion_subcommands_and_options(tmp_path):
    assert complete("streamfs st") == ["status"]
    assert complete("streamfs a") == ["add"]
    assert set(complete("streamfs --cache-")) == {"--cache-dir=", "--cache-size=",
                                                  "--cache-min-free="}
    assert complete("streamfs --start=") == ["--start=access", "--start=mount"]
    assert complete("streamfs --size-unknown=w") == ["--size-unknown=wait"]
    assert complete("streamfs status --w") == ["--watch"]
    assert set(complete("streamfs status --")) == {"--json", "--watch", "--interval=", "--help"}
    assert complete("streamfs -o allow_other,cache_s") == ["allow_other,cache_size="]
    assert complete("streamfs wait --t") == ["--timeout"]
    assert complete("streamfs --no-s") == ["--no-sign-request"]
    # A manifest for the fstab form, a mount point, or a subcommand.
    (tmp_path / "media.ini").write_text("")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "other.txt").write_text("")
    got = set(complete(f"streamfs {tmp_path}/"))
    assert got == {f"{tmp_path}/media.ini", f"{tmp_path}/mnt"}, got


def test_completion_mounts_and_names(mount, tmp_path):
    m = mount("a.bin=cmd:echo a", "dir/b c.txt=cmd:echo b", "dir/sub/d.bin=cmd:echo d",
              "zz.bin=cmd:echo z")
    mnt = str(m.path)
    assert mnt in complete("streamfs status ")
    assert mnt in complete("streamfs rm ")
    assert mnt in complete(f"streamfs add {mnt[:-1]}")
    names = complete(f"streamfs rm {shlex.quote(mnt)} ")
    assert sorted(names) == sorted(["a.bin", "dir/b\\ c.txt", "dir/sub/d.bin", "zz.bin"]), names
    assert complete(f"streamfs rm {shlex.quote(mnt)} dir/s") == ["dir/sub/d.bin"]
    # rm takes one name; wait any number, after --timeout's value too.
    assert complete(f"streamfs rm {shlex.quote(mnt)} a.bin ") == []
    assert sorted(complete(f"streamfs wait --timeout 5 {shlex.quote(mnt)} a.bin z")) == \
        ["zz.bin"]
    assert set(complete(f"streamfs add {shlex.quote(mnt)} x=cmd:ls st")) == \
        {"start=", "stall-timeout="}
    # Listing names for completion started no stream (S1).
    for name in ("a.bin", "dir/b c.txt", "dir/sub/d.bin", "zz.bin"):
        assert m.state(name) == "idle", name
