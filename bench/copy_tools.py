#!/usr/bin/python3
"""copy_tools.py - copy a running command stream of unknown length with the
usual tools, and say which of them got the whole stream.

    bench/copy_tools.py [--mib N] [--seconds S] [--wait] [STREAMFS OPTION...]

Mounts one file per tool, each the same N MiB (default 20) of random bytes
sent by a command in 40 chunks over S seconds (default 4): a stream still
running, with no announced length, when the tool starts. Each tool copies
its own file as soon as the mount is there (its stream starts with the
tool). --wait runs `streamfs wait MNT NAME` first (the safe way for
scripts). Options after that go to streamfs (e.g. --size=wait or
--size-unknown=wait). Prints, per tool: its exit status, the bytes it
copied, whether they are the whole stream (sha256), and the first line of
its standard error.

Environment: STREAMFS (default build/streamfs).
"""
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STREAMFS = os.environ.get("STREAMFS") or str(REPO / "build" / "streamfs")

# tool name -> (command copying mnt/NAME into out/, how to get the copied bytes back)
TOOLS = {
    "cp": ("cp {src} {out}/cp.bin", "cat {out}/cp.bin"),
    "cat": ("cat {src} > {out}/cat.bin", "cat {out}/cat.bin"),
    "dd": ("dd if={src} of={out}/dd.bin bs=1M status=none", "cat {out}/dd.bin"),
    "zip": ("cd {mnt} && zip -q {out}/z.zip {name}", "unzip -p {out}/z.zip"),
    "tar cf": ("tar cf {out}/t.tar -C {mnt} {name}", "tar xOf {out}/t.tar"),
    "rsync": ("rsync {src} {out}/rsync.bin", "cat {out}/rsync.bin"),
    "shutil.copyfile": ("/usr/bin/python3 -c 'import shutil, sys; shutil.copyfile(*sys.argv[1:])' "
                        "{src} {out}/shutil.bin", "cat {out}/shutil.bin"),
}


def main():
    args = sys.argv[1:]
    mib, seconds, wait = 20, 4.0, False
    while args and args[0] in ("--mib", "--seconds", "--wait"):
        if args[0] == "--wait":
            wait = True
            args = args[1:]
            continue
        if args[0] == "--mib":
            mib = int(args[1])
        else:
            seconds = float(args[1])
        args = args[2:]
    opts = args
    tmp = Path(tempfile.mkdtemp(prefix="copy_tools."))
    data = tmp / "data.bin"
    chunk = (mib << 20) // 40
    data.write_bytes(os.urandom(chunk * 40))
    want = hashlib.sha256(data.read_bytes()).hexdigest()
    cmd = (f"cmd:for i in $(seq 0 39); do dd if={data} bs={chunk} skip=$i count=1 status=none; "
           f"sleep {seconds / 40:.3f}; done")
    mnt = tmp / "mnt"
    mnt.mkdir()
    names = {t: "f_" + t.replace(" ", "_").replace(".", "_") + ".bin" for t in TOOLS}
    subprocess.run([STREAMFS, *opts, str(mnt)] + [f"{n}={cmd}" for n in names.values()],
                   check=True, timeout=30)
    print(f"{mib} MiB in 40 chunks over {seconds:g} s; streamfs {' '.join(opts) or '(defaults)'}"
          f"{'; streamfs wait first' if wait else ''}")
    print(f"{'tool':18} {'exit':>4} {'copied':>10} {'whole':>5}  stderr")
    try:
        for tool, (copy, back) in TOOLS.items():
            name = names[tool]
            out = tmp / ("out_" + name)
            out.mkdir()
            fmt = dict(src=shlex.quote(str(mnt / name)), out=shlex.quote(str(out)),
                       mnt=shlex.quote(str(mnt)), name=shlex.quote(name))
            t = time.monotonic()
            if wait:
                subprocess.run([STREAMFS, "wait", str(mnt), name], check=True, timeout=120)
            r = subprocess.run(copy.format(**fmt), shell=True, capture_output=True, text=True,
                               timeout=120)
            took = time.monotonic() - t
            got = subprocess.run(back.format(**fmt), shell=True, capture_output=True,
                                 timeout=120).stdout
            whole = hashlib.sha256(got).hexdigest() == want
            err = (r.stderr.strip().splitlines() or [""])[0][:70]
            print(f"{tool:18} {r.returncode:>4} {len(got):>10} {'yes' if whole else 'NO':>5}  "
                  f"{err}  ({took:.1f} s)")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30)
        subprocess.run(["rm", "-rf", str(tmp)], timeout=60)


if __name__ == "__main__":
    main()
