"""Is a process still running? (leftover cleanup, gsfs umount)

A zombie counts as ended; ``process_tag`` tells a process from a later one
that reused its pid (boot id + start time).
"""

import os


def process_tag(pid):
    """``"<boot id>:<start time>"`` of running process ``pid``; None if there
    is none (a zombie has ended too); '' if it runs but /proc cannot tell more."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rpartition(")")[2].split()   # the name may hold ')'
    except OSError:                         # no /proc, or hidden: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    if fields[0] in ("Z", "X"):
        return None
    return "%s:%s" % (_boot_id(), fields[19])         # field 22: start time after boot


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_alive(pid, tag=None):
    """True if process ``pid`` runs and, when both tags are known, is the one
    ``tag`` (from process_tag) was taken of."""
    current = process_tag(pid)
    return current is not None and (not tag or not current or current == tag)
