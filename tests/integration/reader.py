"""
The readers the integration tests run as subprocesses, so that a read that
hangs fails the test that waits for it with a deadline, not the whole run.
Tests use them through helpers.py (read_ops, read_values, open_errno,
reader_argv, storm_argv); this file is the program.

  python3 reader.py ops [--exit-on-sigint N] PATH OPS_JSON
    Opens PATH and runs OPS_JSON, a list of operations, in order on that
    one descriptor:
      ["pread", off, len]         one pread
      ["seq", off, total, chunk]  preads of CHUNK from OFF on, until TOTAL
                                  bytes or the end of the file
      ["fstat"]                   st_size
      ["seek_end"]                lseek(fd, 0, SEEK_END)
    It prints one JSON object per line, flushed as it happens, so a test
    can see how far it got while a read waits:
      {"open": 0}, or {"open": ERRNO} and nothing more;
      then per operation {"n", "sha" (sha256 hex), "data" (hex; pread
      only), "t"} for a read, {"size"} or {"off"}, or {"errno"} if it
      failed; every result has "t", the seconds it took.
    --exit-on-sigint N: on SIGINT print {"interrupted": true} and exit N
    at once, which shows that a read waiting on a stream returned to user
    space (EINTR) to run the handler.

  python3 reader.py storm ROOT GO SEED ITERS NAME:REF:LIMIT...
    Waits for the file GO to exist, opens every NAME under ROOT once, then
    ITERS times opens a random one and preads at random offsets (seeded),
    comparing with the local file REF. LIMIT is "-" for a stream that is
    complete, or the bytes present so far (reads stay below it). Prints
    the number of reads; exits non-zero with a message on a wrong read.
"""
import argparse
import hashlib
import json
import os
import random
import signal
import sys
import time


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def run_op(fd, op):
    kind = op[0]
    if kind == "pread":
        b = os.pread(fd, op[2], op[1])
        return {"n": len(b), "sha": hashlib.sha256(b).hexdigest(), "data": b.hex()}
    if kind == "seq":
        _, off, total, chunk = op
        h, n = hashlib.sha256(), 0
        while n < total:
            b = os.pread(fd, min(chunk, total - n), off + n)
            if not b:
                break
            h.update(b)
            n += len(b)
        return {"n": n, "sha": h.hexdigest()}
    if kind == "fstat":
        return {"size": os.fstat(fd).st_size}
    if kind == "seek_end":
        return {"off": os.lseek(fd, 0, os.SEEK_END)}
    raise ValueError(f"unknown operation {op!r}")


def ops_main(a):
    if a.exit_on_sigint is not None:
        def on_sigint(signum, frame):
            emit({"interrupted": True})
            os._exit(a.exit_on_sigint)
        signal.signal(signal.SIGINT, on_sigint)
    try:
        fd = os.open(a.path, os.O_RDONLY)
    except OSError as e:
        emit({"open": e.errno})
        return 0
    emit({"open": 0})
    for op in json.loads(a.ops):
        t = time.monotonic()
        try:
            r = run_op(fd, op)
        except OSError as e:
            r = {"errno": e.errno}
        r["t"] = time.monotonic() - t
        emit(r)
    os.close(fd)
    return 0


def storm_main(a):
    files = []
    for spec in a.specs:
        name, ref, limit = spec.split(":")
        with open(ref, "rb") as f:
            d = f.read()
        files.append((name, d, len(d) if limit == "-" else int(limit)))
    rng = random.Random(a.seed)
    deadline = time.monotonic() + 30
    while not os.path.exists(a.go):
        if time.monotonic() > deadline:
            sys.exit("no go")
        time.sleep(0.01)  # the test creates GO right after starting us all
    # Everyone opens every file at once: races on the first open of each.
    for name, _, _ in files:
        os.close(os.open(os.path.join(a.root, name), os.O_RDONLY))
    ops = 0
    for _ in range(a.iters):
        name, d, limit = rng.choice(files)
        fd = os.open(os.path.join(a.root, name), os.O_RDONLY)
        try:
            for _ in range(rng.randint(1, 4)):
                ln = rng.choice([1, 4096, 65536, 1 << 20, rng.randrange(1, 300000)])
                if limit < len(d):  # still running: stay inside what is present
                    off = rng.randrange(0, limit)
                    ln = min(ln, limit - off)
                else:
                    off = rng.randrange(0, len(d) + 5000)
                got = os.pread(fd, ln, off)
                if got != d[off:off + ln]:
                    sys.exit(f"{name}: pread({ln}, {off}) gave {len(got)} bytes, not the "
                             f"{len(d[off:off + ln])} expected, or wrong ones")
                ops += 1
        finally:
            os.close(fd)
    print(ops)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="streamfs test readers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("ops")
    o.add_argument("--exit-on-sigint", type=int)
    o.add_argument("path")
    o.add_argument("ops")
    s = sub.add_parser("storm")
    s.add_argument("root")
    s.add_argument("go")
    s.add_argument("seed", type=int)
    s.add_argument("iters", type=int)
    s.add_argument("specs", nargs="+")
    a = ap.parse_args(argv)
    return ops_main(a) if a.cmd == "ops" else storm_main(a)


if __name__ == "__main__":
    sys.exit(main())
