"""``mount.fuse.gsfs``: mount(8)'s helper convention -> ``gsfs mount``.

``mount -t fuse.gsfs SOURCE /srv/images -o OPTS`` (and an fstab line or a
systemd ``.mount`` unit with ``Type=fuse.gsfs``) makes mount(8) run::

    /sbin/mount.fuse.gsfs SOURCE MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTS] [-t TYPE] [-N NS]

(util-linux libmount, ``exec_helper()``).  mount(8) looks for the helper in
/sbin (/usr/sbin on merged-/usr systems), not on $PATH, so a pip-installed
``/usr/local/bin/mount.fuse.gsfs`` needs a symlink:
``ln -s /usr/local/bin/mount.fuse.gsfs /sbin/mount.fuse.gsfs``.  Without it
mount(8) falls back to libfuse's ``mount.fuse3``, which would run
``gsfs SOURCE MOUNTPOINT -o OPTS`` -- not a valid gsfs command line.

Translation:

* SOURCE ``gsfs`` or ``none`` (or empty): no config argument; a directory:
  ``--config-dir SOURCE``; anything else is a config file:
  ``--config-file SOURCE``.  Relative paths are made absolute (the daemon
  does not run in the caller's directory).
* ``-o`` options are split and classified by gsfs/mount_options.py, the
  parser ``gsfs mount`` uses too.  ``config_file=P`` (repeatable) and
  ``config_dir=P`` become ``--config-file P`` / ``--config-dir P``; options
  meant for mount(8), fstab or systemd, and ``rw``, are dropped (see
  ``mount_options.MOUNT8``); the rest is passed on in one ``-o``, in order,
  as written (``gsfs mount`` checks it).
* ``-s`` (sloppy), ``-n`` (no mtab), ``-t TYPE``: ignored.  ``-v``: the gsfs
  command line is printed to stderr.  ``-f`` is mount(8)'s *fake* mode
  ("do everything except the mount"): nothing is run and the exit status is
  0 -- it is NOT gsfs's ``-f`` (foreground), which would make mount(8) hang.
  ``-N NS`` (mount in another mount namespace) is refused.

``gsfs mount`` without ``-f`` returns once the mount is ready, which is what
mount(8) expects of a helper; its exit status becomes mount's.
"""

import os
import sys

from gsfs import mount_options

__all__ = ["translate", "main", "HelperUsageError", "DROPPED", "DROPPED_PREFIXES"]

PROG = "mount.fuse.gsfs"

#: What is dropped: mount(8)'s, fstab's and systemd's options (``rw`` is the
#: default), and the prefixes of theirs (``x-systemd.*`` ...).
DROPPED = mount_options.MOUNT8 | {"rw"}
DROPPED_PREFIXES = mount_options.MOUNT8_PREFIXES

USAGE = """\
usage: %s SOURCE MOUNTPOINT [-o OPT[,OPT...]] [-s] [-f] [-n] [-v]

mount(8) helper for gsfs: `mount -t fuse.gsfs SOURCE MOUNTPOINT -o OPTS` and fstab
lines of type fuse.gsfs end up here.  SOURCE is `gsfs`, `none`, a config file
(--config-file) or a config directory (--config-dir).  Runs `gsfs mount`.
""" % PROG


class HelperUsageError(ValueError):
    """The command line does not follow mount(8)'s helper convention."""


def _strip_program_name(argv):
    # Tolerate a caller passing sys.argv instead of sys.argv[1:].
    if argv and os.path.basename(argv[0]).startswith("mount.fuse"):
        return argv[1:]
    return argv


def _parse(argv):
    """-> (positionals, option strings, flags dict)."""
    positionals, options = [], []
    flags = {"fake": False, "verbose": False, "help": False}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positionals.extend(args[i:])
            break
        if arg in ("-h", "--help"):
            flags["help"] = True
            continue
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            continue
        if arg.startswith("--"):
            raise HelperUsageError("unknown option %s" % arg)
        # a cluster of short options: -nv, -ofoo,bar, -o foo
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c in "otN":
                value = arg[j:]
                if not value:
                    if i >= len(args):
                        raise HelperUsageError("option -%s needs a value" % c)
                    value = args[i]
                    i += 1
                if c == "o":
                    options.append(value)
                elif c == "N":
                    raise HelperUsageError(
                        "-N (mount in another mount namespace) is not supported; "
                        "run mount inside that namespace (nsenter -m) instead")
                break       # the value used up the rest of this argument
            if c == "f":
                flags["fake"] = True
            elif c == "v":
                flags["verbose"] = True
            elif c in "snrw":
                # -s sloppy, -n no mtab: nothing to do.  -r/-w (read-only /
                # read-write) are old spellings mount(8) turns into -o ro/rw.
                if c == "r":
                    options.append("ro")
            else:
                raise HelperUsageError("unknown option -%s" % c)
    return positionals, options, flags


def translate(argv: list[str]) -> list[str]:
    """mount(8) helper arguments -> ``gsfs`` arguments (``["mount", ...]``).

    ``argv`` is the helper's argument list without the program name
    (``sys.argv[1:]``).  The result is the argument list for the ``gsfs``
    command, starting with the ``mount`` subcommand.  Raises
    ``HelperUsageError`` for a malformed command line.
    """
    positionals, option_strings, flags = _parse(_strip_program_name(list(argv)))
    if len(positionals) != 2:
        raise HelperUsageError(
            "expected SOURCE and MOUNTPOINT, got %d argument(s)%s" % (
                len(positionals), ": " + " ".join(positionals) if positionals else ""))
    source, mountpoint = positionals

    result = ["mount"]
    if source and source not in ("gsfs", "none"):
        if os.path.isdir(source):
            result += ["--config-dir", os.path.abspath(source)]
        else:
            result += ["--config-file", os.path.abspath(source)]

    passed = []
    try:
        for item in mount_options.items(option_strings):
            kind = item.kind
            if kind in ("mount8", "default"):
                continue
            if kind in ("config_file", "config_dir"):
                path = mount_options.config_path(item)
                result += ["--" + kind.replace("_", "-"), os.path.abspath(path)]
                continue
            passed.append(item.text)
    except mount_options.MountOptionError as e:
        raise HelperUsageError(str(e)) from None

    result.append(os.path.abspath(mountpoint))
    if passed:
        result += ["-o", ",".join(passed)]
    return result


def _gsfs_command():
    """argv prefix that runs the ``gsfs`` CLI of this very installation."""
    candidates = []
    if sys.argv and sys.argv[0] and os.path.isfile(sys.argv[0]):
        # /sbin/mount.fuse.gsfs -> /usr/local/bin/mount.fuse.gsfs: gsfs is beside it
        candidates.append(os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), "gsfs"))
    if sys.executable:
        candidates.append(os.path.join(os.path.dirname(sys.executable), "gsfs"))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return [path]
    return [sys.executable or "python3", "-m", "gsfs.cli"]


def main(argv=None) -> int:
    """Entry point of ``mount.fuse.gsfs``; only returns on error or fake mode.

    Exit status follows mount(8): 1 for a bad command line, 32 when ``gsfs``
    cannot be started; otherwise the process becomes ``gsfs mount``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _positionals, _options, flags = _parse(_strip_program_name(argv))
        if flags["help"]:
            sys.stdout.write(USAGE)
            return 0
        gsfs_args = translate(argv)
    except HelperUsageError as e:
        sys.stderr.write("%s: %s\n%s" % (PROG, e, USAGE))
        return 1
    command = _gsfs_command() + gsfs_args
    if flags["verbose"] or flags["fake"]:
        sys.stderr.write("%s: %s%s\n" % (
            PROG, "(fake, not run) " if flags["fake"] else "", " ".join(command)))
    if flags["fake"]:
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.stderr.write("%s: cannot run %s: %s\n" % (PROG, command[0], e.strerror))
        return 32
    return 32  # not reached: execvp only returns by raising
