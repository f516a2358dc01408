"""Is a process still running, and how is it ending? (leftover cleanup, gsfs
umount, and the writer's fate at a commit point: exit_state)

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


PF_EXITING = 0x4      # include/linux/sched.h: the task is in do_exit()


class ExitState:
    """What /proc/PID/stat says of a process that may be ending.

    ``running``: not exiting. ``exiting``: in do_exit() or a zombie; then
    ``code`` is its exit code in waitpid format (0: a normal exit 0; a signal
    number in the low 7 bits; ``status << 8`` for exit(status)). ``gone``:
    no such process (already reaped, or /proc cannot tell).
    """

    __slots__ = ("pid", "state", "code", "name")

    def __init__(self, pid, state, code=0, name=""):
        self.pid, self.state, self.code, self.name = pid, state, code, name

    @property
    def failed(self):
        return self.state == "exiting" and self.code != 0

    def describe(self):
        who = "%s (pid %d)" % (self.name or "process", self.pid)
        if self.state != "exiting":
            return "%s is %s" % (who, self.state)
        if self.code & 0x7f:
            return "%s was killed by signal %d" % (who, self.code & 0x7f)
        return "%s is exiting with status %d" % (who, self.code >> 8)


def exit_state(pid):
    """ExitState of ``pid``, read from /proc/PID/stat.

    The kernel's do_exit() sets PF_EXITING and the exit code *before* it
    closes the task's files, so while a dying writer's close (FUSE flush) is
    being answered, this tells how the writer ends. The exit code field is
    only shown to a reader allowed to ptrace the process (root, or the same
    user); to others it reads 0, as for a clean exit.
    """
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except (OSError, TypeError, ValueError):
        return ExitState(pid, "gone")
    head, _, rest = text.rpartition(")")
    name = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is field 3 (state); flags is field 9, exit_code field 52
    try:
        flags = int(fields[6])
        code = int(fields[49]) if len(fields) > 49 else 0
    except (IndexError, ValueError):
        return ExitState(pid, "running", name=name)
    if fields[0] in ("Z", "X") or flags & PF_EXITING:
        return ExitState(pid, "exiting", code, name)
    return ExitState(pid, "running", name=name)
