"""What ``gsfs status`` prints: one snapshot, or a live view (``--watch``).

The daemon's ``user.gsfs.status`` xattr (JSON, see Operations.status) is
read once, or every ``--interval`` seconds. Each frame shows the mount (pid,
uptime, spool), the per-store counters, then every upload and download in
flight with a progress bar, bytes done of the total, rate and time left.

Totals: a spooled upload's is its spool file's size; a streaming upload's is
the size the writer announced with ``user.glance.size`` (the status field
``expected_bytes``), else it is unknown and no bar or time left is shown; a
download's is the image's size.

Rates (``Tracker``): in watch mode, from successive samples of the bytes
sent (or read): the bytes added over the last ``RATE_WINDOW`` seconds of
samples divided by the time between those samples. Samples taken before the
first byte went to the store are collapsed into the last of them, so the time
an upload spent spooling or waiting for its commit delay never counts: the
rate is measured from (at most one interval before) the first byte sent. The
first frame of a transfer has no rate yet. The one-shot status shows the
daemon's own ``rate_bytes_per_s`` where the daemon measures it from the first
byte (it reports ``sending_seconds`` then), and no rate otherwise.

On a terminal the frame is redrawn in place (cursor home, each line cleared to
its end, the rest of the screen cleared), the cursor hidden while watching and
shown again on exit, Ctrl-C and SIGTERM. Elsewhere (a pipe, a file) each
interval appends one plain snapshot, without escape codes, after a blank line.
"""

import collections
import json
import os
import shutil
import signal
import sys
import time

RATE_WINDOW = 10.0      # seconds of samples a rate is measured over

HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
HOME = "\x1b[H"
CLEAR_EOL = "\x1b[K"
CLEAR_BELOW = "\x1b[J"


def read_status(mountpoint):
    return json.loads(os.getxattr(mountpoint, "user.gsfs.status"))


def size(n):
    """1023 B, 1.0 KiB, 4.5 MiB ... (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def duration(seconds):
    """45s, 2m 05s, 2h 03m, 3d 04h: the two largest units."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm %02ds" % divmod(s, 60)
    if s < 86400:
        return "%dh %02dm" % (s // 3600, s % 3600 // 60)
    return "%dd %02dh" % (s // 86400, s % 86400 // 3600)


def bar(fraction, width):
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Tracker:
    """Rates from successive samples of bytes done, per transfer."""

    def __init__(self, window=RATE_WINDOW, clock=time.monotonic):
        self.window = window
        self.clock = clock
        self.samples = {}       # key → deque of (time, bytes)

    def update(self, status):
        """Record one status sample; forget transfers that ended."""
        now = self.clock()
        seen = set()
        for key, done in _transfers(status):
            seen.add(key)
            history = self.samples.setdefault(key, collections.deque())
            if history and done < history[-1][1]:
                history.clear()             # a new transfer under the same name
            if history and done == 0 and history[-1][1] == 0:
                history[-1] = (now, 0)      # nothing sent yet: the clock starts later
            else:
                history.append((now, done))
            while len(history) > 2 and now - history[1][0] >= self.window:
                history.popleft()
        for key in set(self.samples) - seen:
            del self.samples[key]

    def rate(self, key):
        """Bytes per second over the window, or None before two samples."""
        history = self.samples.get(key)
        if not history or len(history) < 2:
            return None
        (t0, b0), (t1, b1) = history[0], history[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def _transfers(status):
    for u in status.get("uploads", []):
        yield ("upload", u["path"]), u["uploaded"]
    for d in status.get("downloads", []):
        yield ("download", d["path"]), d["bytes"]


def upload_total(u):
    """The bytes an upload will send, or None when nobody knows yet."""
    if u.get("expected_bytes") is not None:
        return u["expected_bytes"]
    if u.get("kind") == "spool":
        return u["bytes"]
    return None


def _daemon_rate(u):
    # the daemon's rate counts from the first byte only where it says how long
    # it has been sending; before that it was measured from the open
    if "sending_seconds" in u and u.get("rate_bytes_per_s"):
        return u["rate_bytes_per_s"]
    return None


def render(status, tracker=None, width=100, clock=None):
    """The lines of one frame (``tracker``: rates from samples; ``width``:
    the terminal's columns, lines are cut to it)."""
    lines = []
    header = "gsfs at %s: pid %d, up %s, spool %s" % (
        status["mountpoint"], status["pid"], duration(status["uptime_s"]),
        size(status.get("spool_used_bytes", 0)))
    memory = status.get("memory") or {}
    if memory.get("budget_bytes"):
        header += ", memory %s of %s (peak %s)" % (
            size(memory["used_bytes"]), size(memory["budget_bytes"]),
            size(memory["peak_bytes"]))
    if status.get("metrics_url"):
        header += ", metrics %s" % status["metrics_url"]
    if clock is not None:
        header += "  [%s]" % time.strftime("%H:%M:%S", time.localtime(clock))
    lines.append(header)
    lines.append("%-20s %-5s %-3s %11s %11s %7s %6s %6s" % (
        "STORE", "TYPE", "RO", "IN", "OUT", "UPLOADS", "FAILED", "ERRORS"))
    for s in status["stores"]:
        c = s["counters"]
        lines.append("%-20s %-5s %-3s %11s %11s %7d %6d %6d" % (
            s["id"], s["type"], "ro" if s["read_only"] else "rw",
            size(c.get("bytes_in", 0)), size(c.get("bytes_out", 0)), c.get("uploads", 0),
            c.get("failed_uploads", 0), c.get("errors", 0)))
    for store_id, ops in sorted(status.get("failures", {}).items()):
        lines.append("errors %s: %s" % (store_id, ", ".join(
            "%s %d" % (op, n) for op, n in sorted(ops.items()))))

    bar_width = max(10, min(30, width - 70))
    uploads = status.get("uploads", [])
    pending = status.get("pending_spooled", [])
    downloads = status.get("downloads", [])
    if uploads or pending:
        lines.append("")
        lines.append("UPLOADS")
    for u in uploads:
        rate = tracker.rate(("upload", u["path"])) if tracker else _daemon_rate(u)
        lines.append(_transfer_line(u["path"], u["uploaded"], upload_total(u), rate,
                                    bar_width, "sent", written=u.get("bytes")))
    for u in pending:
        lines.append("  %s  %s spooled, waiting for its upload" % (u["path"], size(u["bytes"])))
    if downloads:
        lines.append("")
        lines.append("DOWNLOADS")
    for d in downloads:
        rate = tracker.rate(("download", d["path"])) if tracker else None
        lines.append(_transfer_line(d["path"], d["bytes"], d.get("size"), rate, bar_width,
                                    "read"))
    if not (uploads or pending or downloads):
        lines.append("")
        lines.append("no uploads or downloads in flight")
    return [line[:width] for line in lines]


def _transfer_line(path, done, total, rate, bar_width, verb, written=None):
    parts = ["  %s " % path]
    if total:
        parts.append("%s %3d%%  %s / %s" % (bar(done / total, bar_width),
                                            min(100, int(100 * done / total)),
                                            size(done), size(total)))
    else:
        parts.append("%s %s" % (size(done), verb))
        if written is not None and written > done:
            parts.append(" of %s written" % size(written))
    if rate is not None:
        parts.append("  %s/s" % size(rate))
        if total and rate > 0:
            parts.append("  %s left" % duration(max(total - done, 0) / rate))
    return "".join(parts)


def show(mountpoint, as_json=False, out=sys.stdout):
    """One snapshot (``gsfs status``)."""
    status = read_status(mountpoint)
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True), file=out)
        return 0
    for line in render(status, width=10_000):
        print(line, file=out)
    return 0


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop


def watch(mountpoint, interval=1.0, out=sys.stdout):
    """``gsfs status --watch``: a frame every ``interval`` s until Ctrl-C,
    SIGTERM or the mount goes away (exit 1 then)."""
    tty = out.isatty()
    tracker = Tracker()
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    if tty:
        out.write(HIDE_CURSOR)
    first = True
    try:
        while True:
            try:
                status = read_status(mountpoint)
            except OSError as e:
                if tty:
                    out.write(CLEAR_BELOW)
                out.write("gsfs: %s is no gsfs mount any more (%s)\n"
                          % (mountpoint, e.strerror))
                return 1
            tracker.update(status)
            if tty:
                columns, rows = shutil.get_terminal_size((100, 24))
                # one column and one row spare: no line wraps, the screen never scrolls
                lines = render(status, tracker, width=columns - 1, clock=time.time())
                lines = lines[:max(rows - 1, 1)]
                out.write(HOME + "".join(line + CLEAR_EOL + "\n" for line in lines)
                          + CLEAR_BELOW)
            else:
                lines = render(status, tracker, width=10_000, clock=time.time())
                out.write(("" if first else "\n") + "\n".join(lines) + "\n")
            out.flush()
            first = False
            time.sleep(interval)
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tty:
            out.write(SHOW_CURSOR)
        out.flush()
