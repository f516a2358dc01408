"""Is a process still running, and how is it ending? (leftover cleanup, gsfs
umount, and the writer's fate at a commit point: exit_state)

A zombie counts as ended; ``process_tag`` tells a process from a later one
that reused its pid (boot id + start time).
"""

import os
import signal


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
    number in the low 7 bits; ``status << 8`` for exit(status)). ``dying``:
    not exiting yet, but a signal that will end it is pending (``code`` is
    that signal); a process killed while it waits for a FUSE reply stays in
    the kernel until the reply comes. ``gone``: no such process (already
    reaped, or /proc cannot tell).
    """

    __slots__ = ("pid", "state", "code", "name")

    def __init__(self, pid, state, code=0, name=""):
        self.pid, self.state, self.code, self.name = pid, state, code, name

    @property
    def failed(self):
        return self.state == "dying" or (self.state == "exiting" and self.code != 0)

    def describe(self):
        who = "%s (pid %d)" % (self.name or "process", self.pid)
        if self.state == "dying":
            return "%s is being killed (signal %d is pending)" % (who, self.code)
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

    A process that is still running is ``dying`` if /proc/PID/status shows a
    fatal signal pending (``fatal_signal_pending``): a writer killed while its
    close waits for the commit.
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
    sig = fatal_signal_pending(pid)
    if sig:
        return ExitState(pid, "dying", sig, name)
    return ExitState(pid, "running", name=name)


# signals whose default action does not end the process (signal(7))
_NOT_FATAL = {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH,
              signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


def fatal_signal_pending(pid):
    """The number of a pending signal that will end process ``pid``, or 0.

    When a fatal signal (one not caught, ignored or blocked, whose default
    action ends the process) is sent, kernel/signal.c complete_signal() adds
    SIGKILL to every thread's pending set at once, before the process gets to
    act on it; a core-dumping signal stays pending as itself. So SIGKILL in
    ``SigPnd``/``ShdPnd`` of /proc/PID/status, or a pending signal that is
    not in ``SigCgt``, ``SigIgn`` or ``SigBlk`` and whose default action
    ends the process, means the process is being killed.
    """
    masks = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"):
                    masks[key] = int(value.strip(), 16)
    except (OSError, TypeError, ValueError):
        return 0
    pending = masks.get("SigPnd", 0) | masks.get("ShdPnd", 0)
    if pending & _bit(signal.SIGKILL):
        return int(signal.SIGKILL)
    pending &= ~(masks.get("SigBlk", 0) | masks.get("SigIgn", 0) | masks.get("SigCgt", 0))
    for sig in range(1, 65):
        if pending & _bit(sig) and sig not in _NOT_FATAL:
            return sig
    return 0


def _bit(sig):
    return 1 << (int(sig) - 1)
