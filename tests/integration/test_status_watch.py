"""
`streamfs status --watch`: progress people can read. On a terminal (a
pseudo-terminal here) the frame is redrawn in place and the cursor comes
back on every way out; through a pipe, plain frames without one escape
code; with --json, a document per line with a rate (bytes/s, measured by
the client over a sliding window) and an ETA. The sources are throttled
by the test HTTP server (rate=BPS), so the rates have a known ceiling.
"""
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

import pytest

from helpers import DEADLINE, register_pid, unregister_pid, wait_until

RATE = 400_000      # bytes/s the server sends at most
SIZE = 1_600_000    # four seconds' worth at RATE


class Watch:
    """`streamfs status --watch ARGS MNT` with stdout on a pipe or on the
    slave side of a pseudo-terminal; .output() reads until it exits."""

    def __init__(self, bin_, mnt, *args, tty=False):
        self.master = None
        argv = [str(bin_), "status", "--watch", *args, str(mnt)]
        if tty:
            self.master, slave = pty.openpty()
            # 120 columns, 30 lines: wide enough that no line is cut.
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))

            def ctty():
                os.setsid()
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # Ctrl-C reaches it
            self.p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                      preexec_fn=ctty)
            os.close(slave)
            self.fd = self.master
        else:
            self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True)
            self.fd = self.p.stdout.fileno()
        register_pid(self.p.pid)
        self.buf = b""
        self.eof = False

    def read_some(self, deadline):
        left = deadline - time.monotonic()
        assert left > 0, f"status --watch: no end in time; output so far:\n{self.buf!r}"
        r, _, _ = select.select([self.fd], [], [], min(left, 1.0))
        if r:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the pty's slave side is closed
                chunk = b""
            self.buf += chunk
            self.eof = not chunk

    def read_until(self, pred, timeout=DEADLINE):
        deadline = time.monotonic() + timeout
        while not pred(self.buf):
            assert not self.eof, f"status --watch ended early:\n{self.buf!r}"
            self.read_some(deadline)

    def output(self, timeout=30):
        """Everything, once it has exited by itself; and its exit code."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self.read_some(deadline)
        rc = self.p.wait(DEADLINE)
        return self.buf, rc

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(DEADLINE)
        unregister_pid(self.p.pid)
        if self.master is not None:
            os.close(self.master)
        if self.p.stdout:
            self.p.stdout.close()
        self.p.stderr.close()


@pytest.fixture
def watch(streamfs_bin):
    made = []

    def factory(mnt, *args, tty=False):
        w = Watch(streamfs_bin, mnt, *args, tty=tty)
        made.append(w)
        return w
    yield factory
    for w in made:
        w.close()


@pytest.fixture
def throttled(mount, srv, www):
    """A mount with one URL the server sends at RATE, started at mount."""
    (www / "f.bin").write_bytes(os.urandom(SIZE))
    m = mount(f"f.bin={srv.url('f.bin', rate=RATE)}", opts=["--start=mount"])
    # The tests read bars and ETAs from the first frame on: those need the
    # announced length, which comes with the response headers (before
    # them, a frame rightly shows an unknown size). The body takes
    # SIZE / RATE seconds, so frames with a length follow.
    wait_until(lambda: m.xattr("f.bin", "size") == str(SIZE), what="f.bin's length to be known")
    return m


def frames_plain(text):
    """The frames of plain output: blocks separated by an empty line."""
    return [f for f in text.split("\n\n") if f.strip()]


def row(frame, name):
    lines = [ln for ln in frame.splitlines() if ln.split() and ln.split()[0] == name]
    assert len(lines) == 1, f"no single {name} line in:\n{frame}"
    return lines[0]


@pytest.mark.timeout(120)
def test_plain_frames_through_a_pipe(throttled, watch):
    w = watch(throttled.path, "--interval=0.3")
    out, rc = w.output()
    assert rc == 0, w.p.stderr.read()
    text = out.decode()
    assert "\x1b" not in text and "\r" not in text, "escape codes in plain output"
    frames = frames_plain(text)
    assert len(frames) >= 3, text
    pcts = []
    seen_rate = seen_eta = False
    for fr in frames:
        lines = fr.splitlines()
        assert lines[0].split()[:3] == ["NAME", "STATE", "PROGRESS"], fr
        assert lines[-1].startswith("TOTAL"), fr
        line = row(fr, "f.bin")
        m = re.search(r"\[([=> ]{20})\]\s+(\d+)%", line)
        assert m, f"no bar and percentage in {line!r}"
        pcts.append(int(m.group(2)))
        seen_rate |= bool(re.search(r"\d+(\.\d)? [KM]iB/s", line))
        seen_eta |= bool(re.search(r"\s\d+:\d\d\s*$", line))
    assert pcts == sorted(pcts), f"percentages went down: {pcts}"
    assert pcts[-1] == 100 and 0 <= pcts[0] < 100, pcts
    assert seen_rate and seen_eta, text
    last = frames[-1]
    assert "complete" in row(last, "f.bin") and "done" in row(last, "f.bin")
    assert "1/1 done" in row(last, "TOTAL") and "1.5 MiB" in row(last, "TOTAL")


@pytest.mark.timeout(120)
def test_json_rate_and_eta(throttled, watch):
    w = watch(throttled.path, "--json", "--interval=0.5")
    out, rc = w.output()
    assert rc == 0, w.p.stderr.read()
    docs = [json.loads(ln) for ln in out.decode().splitlines()]
    assert len(docs) >= 3, out
    files = [d["files"][0] for d in docs]
    assert files[0]["rate"] is None, "one sample cannot make a rate"
    running = [f for f in files[1:] if f["state"] == "running"]
    assert running, files
    for f, d in zip(files[1:], docs[1:]):
        if f["state"] != "running":
            continue
        rate, eta = f["rate"], f["eta"]
        # The server never sends faster than RATE: over the window the
        # measured rate cannot be far above it.
        assert rate is not None and 0 <= rate <= 2 * RATE, f
        if rate > 0:
            assert eta is not None
            assert abs(eta - (f["size"] - f["bytes"]) / rate) <= 1, f
        assert d["total"]["bytes"] == f["bytes"] and d["total"]["size"] == SIZE
        assert d["total"]["rate"] == rate and d["total"]["eta"] == eta
    assert any(f["rate"] and f["rate"] > RATE / 10 for f in running), running
    last = docs[-1]
    assert last["files"][0]["state"] == "complete"
    assert last["files"][0]["eta"] == 0 and last["files"][0]["rate"] is None
    assert last["total"] == {"files": 1, "bytes": SIZE, "size": SIZE, "rate": None, "eta": 0}


def screen(raw, cols=120):
    """What a terminal shows after @raw: a tiny emulator of what
    --watch writes (text, CR, LF, cursor up, erase line / below, cursor
    show and hide). Any other escape fails the test."""
    lines, y, x, i = [""], 0, 0, 0
    s = raw.decode()
    while i < len(s):
        c = s[i]
        if c == "\x1b":
            m = re.match(r"\x1b\[(\??)(\d*)([A-Za-z])", s[i:])
            assert m, f"unexpected escape at {s[i:i + 10]!r}"
            q, n, op = m.group(1), int(m.group(2) or 1), m.group(3)
            if q == "?" and op in "hl" and n == 25:
                pass
            elif op == "A":
                y = max(0, y - n)
            elif op == "K":
                lines[y] = lines[y][:x]
            elif op == "J":
                lines[y] = lines[y][:x]
                del lines[y + 1:]
            else:
                raise AssertionError(f"unexpected escape {m.group(0)!r}")
            i += len(m.group(0))
            continue
        if c == "\r":
            x = 0
        elif c == "\n":
            y += 1
            if y == len(lines):
                lines.append("")
        else:
            ln = lines[y].ljust(x)
            lines[y] = ln[:x] + c + ln[x + 1:]
            x += 1
        i += 1
    return [ln.rstrip() for ln in lines if ln.strip()]


@pytest.mark.timeout(120)
def test_redrawn_in_place_on_a_terminal(throttled, watch):
    w = watch(throttled.path, "--interval=0.3", tty=True)
    out, rc = w.output()
    assert rc == 0, w.p.stderr.read()
    assert out.startswith(b"\x1b[?25l"), out[:40]
    assert out.rstrip(b"\r\n").endswith(b"\x1b[?25h"), out[-40:]
    # Every frame after the first goes back up over the last one: header,
    # the file, TOTAL.
    ups = re.findall(rb"\x1b\[(\d+)A", out)
    assert len(ups) >= 2 and set(ups) == {b"3"}, ups
    assert out.count(b"NAME") == len(ups) + 1
    shown = screen(out)
    # One frame on the screen: the last, complete one.
    assert len(shown) == 3, shown
    assert shown[0].startswith("NAME") and shown[2].startswith("TOTAL"), shown
    assert "complete" in shown[1] and "100%" in shown[1] and "done" in shown[1], shown


@pytest.mark.timeout(60)
def test_ctrl_c_restores_the_terminal(mount, watch):
    # A file never started: the watch would go on for ever.
    m = mount("idle.txt=cmd:echo never")
    w = watch(m.path, "--interval=0.2", tty=True)
    w.read_until(lambda b: b.count(b"TOTAL") >= 2)
    assert b"\x1b[?25h" not in w.buf
    os.write(w.master, b"\x03")  # Ctrl-C, through the terminal's line discipline
    out, rc = w.output()
    assert rc == 130
    assert out.rstrip(b"\r\n").endswith(b"\x1b[?25h"), out[-40:]
    assert "idle" in screen(out)[1]


def test_interval_and_usage_errors(mount, streamfs_cli):
    m = mount("a.txt=cmd:echo a")
    for args, want in [(["--watch", "--interval=0"], "bad --interval value '0'"),
                       (["--watch", "--interval=abc"], "bad --interval value 'abc'"),
                       (["--watch", "--interval=-1"], "bad --interval value '-1'"),
                       (["--watch", "--bogus"], "usage: streamfs status"),
                       (["--interval=1"], "--interval goes with --watch")]:
        r = streamfs_cli("status", *args, m.path)
        assert r.returncode == 2, (args, r)
        assert r.stdout == "" and r.stderr.count("\n") == 1 and want in r.stderr, (args, r.stderr)


def test_single_status_json_has_rate_and_eta(mount, streamfs_cli):
    m = mount("a.txt=cmd:echo a", "idle.txt=cmd:echo b")
    with open(m / "a.txt", "rb") as f:
        assert f.read() == b"a\n"
    m.wait_state("a.txt", "complete")
    r = streamfs_cli("status", "--json", m.path)
    doc = json.loads(r.stdout)
    files = {f["name"]: f for f in doc["files"]}
    # One look measures no rate; a complete file has nothing left to wait for.
    assert files["a.txt"]["rate"] is None and files["a.txt"]["eta"] == 0
    assert files["idle.txt"]["rate"] is None and files["idle.txt"]["eta"] is None
    assert doc["total"] == {"files": 2, "bytes": 2, "size": None, "rate": None, "eta": None}
