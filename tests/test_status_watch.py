"""``gsfs status --watch``: the live view, on a pseudo-terminal and in a pipe.

- under a real pty, during a slow upload into a file store (a writer that
  announced user.glance.size, then writes 1 MiB, sleeps, writes...), the
  screen is redrawn in place, the file's progress rises, each frame's time
  left is what remains at the rate it shows, and less remains at the end than
  at the start; Ctrl-C shows the cursor again;
- not on a terminal: plain snapshots, one per interval, no escape codes;
- the view's arithmetic (rates from samples, never before the first byte;
  totals; durations) on synthetic status documents.
"""

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from gsfs import status_view
from tests.servers.mounts import GSFS, unique

MiB = 1024 * 1024

# Creates PATH, announces its size (user.glance.size), writes SIZE_MIB MiB one
# MiB every DELAY s, prints "written", and closes it once a line arrives on stdin.
SLOW_WRITER = r"""
import os, sys, time
path, size_mib, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.setxattr(fd, "user.glance.size", str(size_mib * 1024 * 1024).encode())
chunk = os.urandom(1024 * 1024)
for i in range(size_mib):
    os.write(fd, chunk)
    if i == 0:
        print("writing", flush=True)
    time.sleep(delay)
print("written", flush=True)
sys.stdin.readline()
os.close(fd)
print("closed", flush=True)
"""

UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB, "TiB": 1024 ** 4}
LINE = re.compile(r"(?P<pct>\d+)%\s+(?P<done>[\d.]+ \w+) / (?P<total>[\d.]+ \w+)"
                  r"\s+(?P<rate>[\d.]+ \w+)/s\s+(?P<left>.+?) left")

DONE = re.compile(r"([\d.]+ [KMGT]?i?B) (?:/|sent)")


def nbytes(text):
    number, unit = text.split()
    return float(number) * UNITS[unit]


def seconds(text):
    """'45s', '2m 05s', '2h 03m', '3d 04h' → seconds."""
    total = 0
    for number, unit in re.findall(r"(\d+)([dhms])", text):
        total += int(number) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[unit]
    return total


@pytest.fixture
def slow_writer():
    procs = []

    def start(path, size_mib, delay):
        proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path), str(size_mib),
                                 str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=60)


class PtyProcess:
    """A command whose stdin/stdout/stderr are a pseudo-terminal of ROWS x COLS."""

    def __init__(self, argv, rows=40, cols=160):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm"
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.output = b""

    def read_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:         # EIO: the other side is closed
                    return
                if not data:
                    return
                self.output += data

    def frames(self):
        """The screens drawn so far: text after each cursor-home, escapes removed."""
        text = self.output.decode("utf-8", "replace")
        return [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", part)
                for part in text.split(status_view.HOME)[1:]]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self.master)


def upload_line(frame, path):
    for line in frame.splitlines():
        if line.strip().startswith(path + " "):
            return line
    return None


@pytest.mark.fuse
def test_watch_on_a_terminal_during_a_slow_upload(gsfs_mount, stores_conf, slow_writer):
    m = gsfs_mount(stores_conf("file"))
    name = unique()
    path = "file/%s" % name
    writer = slow_writer(m.path("file", name), size_mib=40, delay=0.25)
    status = status_view.read_status(str(m.mountpoint))
    upload = {u["path"]: u for u in status["uploads"]}[path]
    view = PtyProcess([GSFS, "status", str(m.mountpoint), "--watch", "--interval", "0.5"])
    try:
        view.read_for(4.5)
        frames = view.frames()
        assert len(frames) >= 5, view.output
        raw = view.output.decode("utf-8", "replace")
        assert raw.startswith(status_view.HIDE_CURSOR), raw[:40]
        assert "gsfs at %s: pid %d, up " % (m.mountpoint, m.proc.pid) in frames[-1]
        assert re.search(r"\n\s*file\s+file\s+rw\s", frames[-1]), frames[-1]  # store counters
        lines = [upload_line(f, path) for f in frames]
        assert all(lines), frames
        sent = [nbytes(DONE.search(line).group(1)) for line in lines]
        assert sent[-1] > sent[0], lines
        assert upload["expected_bytes"] == 40 * MiB     # announced with user.glance.size
        timed = [LINE.search(line) for line in lines if LINE.search(line)]
        assert len(timed) >= 3, lines
        first, last = timed[0], timed[-1]
        assert nbytes(first.group("total")) == nbytes(last.group("total")) == 40 * MiB
        assert int(last.group("pct")) > int(first.group("pct")), (first.group(0),
                                                                  last.group(0))
        assert nbytes(last.group("done")) > nbytes(first.group("done"))
        # time left is what remains at the rate shown (rates vary with the
        # machine, so compare each frame with its own rate, not frames' times)
        for line in timed:
            remaining = nbytes(line.group("total")) - nbytes(line.group("done"))
            rate = nbytes(line.group("rate"))
            low, high = remaining / (rate + 0.05 * MiB), remaining / max(rate - 0.05 * MiB, 1)
            assert low - 1 <= seconds(line.group("left")) <= high + 1, line.group(0)
        # at the last rate, what the first frame had left takes longer than what is left now
        first_left_at_last_rate = ((nbytes(first.group("total")) - nbytes(first.group("done")))
                                   / nbytes(last.group("rate")))
        assert seconds(last.group("left")) < first_left_at_last_rate, (first.group(0),
                                                                       last.group(0))
        # Ctrl-C (SIGINT): exit 0, the cursor shown again
        view.proc.send_signal(signal.SIGINT)
        view.read_for(1.0)
        assert view.proc.wait(timeout=10) == 0
        assert view.output.decode().endswith(status_view.SHOW_CURSOR), view.output[-40:]
    finally:
        view.close()
    out, err = writer.communicate("\n", timeout=120)
    assert writer.returncode == 0 and "closed" in out, err
    assert os.path.getsize(m.path("file", name)) == 40 * MiB


@pytest.mark.fuse
def test_watch_in_a_pipe_prints_plain_snapshots(gsfs_mount, stores_conf, slow_writer):
    m = gsfs_mount(stores_conf("file"))
    name = unique()
    writer = slow_writer(m.path("file", name), size_mib=20, delay=0.2)
    view = subprocess.Popen([GSFS, "status", str(m.mountpoint), "--watch", "--interval",
                             "0.4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.0)
    view.send_signal(signal.SIGTERM)
    out, err = view.communicate(timeout=30)
    assert view.returncode == 0, err
    assert b"\x1b" not in out
    text = out.decode()
    snapshots = text.strip().split("\n\ngsfs at ")
    assert len(snapshots) >= 3, text
    for snap in snapshots:
        assert "STORE" in snap and "file/%s" % name in snap, snap
    writer.communicate("\n", timeout=120)
    assert writer.returncode == 0


# ------------------------------------------------------------------- arithmetic

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def status_with(uploads=(), downloads=()):
    return {"pid": 42, "mountpoint": "/mnt", "uptime_s": 7380.4, "spool_used_bytes": 0,
            "stores": [{"id": "fast", "type": "file", "read_only": False, "weight": 0,
                        "counters": {"bytes_in": 3 * MiB, "bytes_out": 0, "uploads": 1,
                                     "failed_uploads": 0, "errors": 2}}],
            "failures": {"fast": {"write": 2}}, "uploads": list(uploads),
            "pending_spooled": [], "downloads": list(downloads)}


def upload(done, kind="stream", written=None, expected=None):
    u = {"path": "fast/a", "kind": kind, "bytes": written if written is not None else done,
         "uploaded": done, "rate_bytes_per_s": 0, "seconds": 1.0}
    if expected is not None:
        u["expected_bytes"] = expected
    return u


def test_rate_counts_from_the_first_byte_and_time_left_shrinks():
    clock = FakeClock()
    tracker = status_view.Tracker(clock=clock)
    frames = []
    # 5 s spooling / waiting (nothing sent), then 2 MiB/s
    for t, done in [(0, 0), (1, 0), (5, 0), (6, 2 * MiB), (7, 4 * MiB), (8, 6 * MiB)]:
        clock.now = 1000.0 + t
        st = status_with([upload(done, kind="spool", written=20 * MiB)])
        tracker.update(st)
        frames.append(status_view.render(st, tracker, width=200))
    assert tracker.rate(("upload", "fast/a")) == pytest.approx(2 * MiB)
    lines = [[x for x in f if x.startswith("  fast/a")][0] for f in frames]
    assert "/s" not in lines[2]                 # no rate before the first byte
    # the 5 s before the first byte are not in the rate: 2 MiB/s, not 2 MiB / 6 s
    assert lines[3].endswith("2.0 MiB / 20.0 MiB  2.0 MiB/s  9s left"), lines[3]
    assert lines[4].endswith("4.0 MiB / 20.0 MiB  2.0 MiB/s  8s left"), lines[4]
    assert lines[5].endswith(" 30%  6.0 MiB / 20.0 MiB  2.0 MiB/s  7s left"), lines[5]
    assert frames[0][0] == "gsfs at /mnt: pid 42, up 2h 03m, spool 0 B"
    assert "errors fast: write 2" in frames[0]


def test_header_shows_the_memory_budget():
    st = dict(status_with(), memory={"budget_bytes": 96 * MiB, "used_bytes": 17 * MiB,
                                     "peak_bytes": 40 * MiB})
    assert status_view.render(st)[0] == (
        "gsfs at /mnt: pid 42, up 2h 03m, spool 0 B, memory 17.0 MiB of 96.0 MiB "
        "(peak 40.0 MiB)")
    # no budget (a daemon without memory_mib never runs, but older statuses have none)
    assert "memory" not in status_view.render(status_with())[0]


def test_totals_of_each_kind():
    assert status_view.upload_total(upload(5, kind="spool", written=9)) == 9
    assert status_view.upload_total(upload(5, written=9)) is None
    assert status_view.upload_total(upload(5, written=9, expected=12)) == 12
    st = status_with([upload(3 * MiB, written=4 * MiB)])
    line = [x for x in status_view.render(st) if x.startswith("  fast/a")][0]
    assert line == "  fast/a 3.0 MiB sent of 4.0 MiB written"
    # the daemon's own rate is used only where it counts from the first byte
    u = dict(upload(3 * MiB, kind="spool", written=4 * MiB), rate_bytes_per_s=MiB)
    assert "/s" not in [x for x in status_view.render(status_with([u]))
                        if x.startswith("  fast/a")][0]
    u["sending_seconds"] = 3.0
    assert "1.0 MiB/s  1s left" in [x for x in status_view.render(status_with([u]))
                                    if x.startswith("  fast/a")][0]
    d = {"path": "fast/b", "bytes": MiB, "size": 4 * MiB, "window": 0}
    line = [x for x in status_view.render(status_with(downloads=[d]))
            if x.startswith("  fast/b")][0]
    assert " 25%  1.0 MiB / 4.0 MiB" in line


def test_durations():
    assert [status_view.duration(s) for s in (0, 45, 125, 7380, 3 * 86400 + 4 * 3600)] == \
        ["0s", "45s", "2m 05s", "2h 03m", "3d 04h"]
