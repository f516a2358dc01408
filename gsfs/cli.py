"""The ``gsfs`` command: mount, umount, status, check-config, audit, --version.

    gsfs mount [--config-file F]... [--config-dir D] MOUNTPOINT [-o OPTS] [-f] [--debug]
    gsfs umount MOUNTPOINT
    gsfs status MOUNTPOINT [--json | --watch [--interval S]]
    gsfs check-config [CONF...] [--config-dir D] [-o OPTS] [--timeout S]
    gsfs audit MOUNTPOINT [--json] [--verify] [--config-file F]...

``-o`` and ``--debug`` are parsed by gsfs/mount_options.py (``--debug`` is
``-o debug``); the mount's debug switch is read there and nowhere else.
``status`` is gsfs/status_view.py, ``check-config`` gsfs/check_config.py,
``audit`` gsfs/audit.py.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import gsfs
from gsfs import mount_options, paths, process

LOG = logging.getLogger("gsfs")


def _setup_logging(debug, foreground, log_file=None):
    from gsfs import logsetup
    logsetup.setup_logging(debug=debug, foreground=foreground, log_file=log_file)


def default_log_file():
    return os.path.join(paths.base_dir("log"), "gsfs.log")


def _parser():
    p = argparse.ArgumentParser(prog="gsfs", description=gsfs.__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version="gsfs %s" % gsfs.__version__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount the stores of a glance-api.conf (or the default)")
    m.add_argument("mountpoint")
    m.add_argument("--config-file", action="append", default=[], metavar="PATH",
                   help="a glance-api.conf-style file (repeatable); none: embedded default")
    m.add_argument("--config-dir", metavar="DIR", help="read every *.conf in DIR too")
    mount_options.add_argument(m)
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground (systemd Type=notify uses this)")
    m.add_argument("--log-file", metavar="PATH",
                   help="log file when in the background (default %s)" % default_log_file())
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="wait for uploads, unmount, wait for the daemon")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=3600,
                   help="seconds to wait for uploads and the daemon (default 3600)")

    s = sub.add_parser("status", help="stores, uploads, downloads and counters of a mount")
    s.add_argument("mountpoint")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="machine-readable output")
    how.add_argument("--watch", action="store_true",
                     help="a live view, refreshed in place (plain snapshots when not a "
                          "terminal); Ctrl-C ends it")
    s.add_argument("--interval", type=_positive_float, default=1.0, metavar="S",
                   help="seconds between refreshes with --watch (default 1)")

    c = sub.add_parser("check-config",
                       help="load config files as mount does; check each store's reach")
    c.add_argument("config_file", nargs="*", metavar="CONF",
                   help="glance-api.conf-style files (none and no --config-dir: the "
                        "embedded default)")
    c.add_argument("--config-dir", metavar="DIR", help="read every *.conf in DIR too")
    mount_options.add_argument(c, debug=False)      # as for mount: show_reserved...
    c.add_argument("--timeout", type=_positive_float, default=5.0, metavar="S",
                   help="seconds each store's reachability probe may take (default 5)")
    c.add_argument("-v", "--verbose", action="store_true",
                   help="also print the warnings the loading logged")

    a = sub.add_parser("audit", help="compare a mount's stores with Glance's catalog: "
                                     "orphans, missing images, size or checksum mismatches")
    a.add_argument("mountpoint")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--verify", action="store_true",
                   help="also read every catalog image through the mount and compare its "
                        "checksums (slow: all the data is read)")
    a.add_argument("--config-file", action="append", default=[], metavar="PATH",
                   help="read [gsfs_catalog] from this file (repeatable) instead of the "
                        "config the daemon loaded")
    return p


def _positive_float(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0, not %s" % text)
    return value


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "mount":
        return cmd_mount(args)
    if args.command == "umount":
        return cmd_umount(args)
    if args.command == "check-config":
        from gsfs import check_config
        return check_config.main(args)
    if args.command == "audit":
        from gsfs import audit
        return audit.main(args)
    return cmd_status(args)


def cmd_mount(args):
    try:
        opts = mount_options.parse(args.options)
    except mount_options.MountOptionError as e:
        print("gsfs: %s" % e, file=sys.stderr)
        return 1
    if args.foreground:
        _setup_logging(opts.debug, foreground=True, log_file=args.log_file)
        from gsfs.fs import daemon
        try:
            return daemon.mount(args.mountpoint, args.config_file, args.config_dir,
                                opts, ready_fd=args.ready_fd)
        except SystemExit as e:
            if isinstance(e.code, str):
                LOG.error(e.code.replace("gsfs: ", ""))
                print(e.code, file=sys.stderr)
                return 1
            raise
        except RuntimeError as e:  # pyfuse3.init failures: mountpoint busy, no /dev/fuse
            LOG.error("Cannot mount %s: %s", args.mountpoint, e)
            print("gsfs: cannot mount %s: %s" % (args.mountpoint, e), file=sys.stderr)
            return 1
    return _mount_in_background(args)


def _mount_in_background(args):
    """Start the daemon (this command with -f), return once the mount answers."""
    log_file = args.log_file or default_log_file()
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "gsfs.cli", "mount", args.mountpoint, "-f",
           "--ready-fd", str(write_fd), "--log-file", log_file]
    for path in args.config_file:
        cmd += ["--config-file", os.path.abspath(path)]
    if args.config_dir:
        cmd += ["--config-dir", os.path.abspath(args.config_dir)]
    for opt in args.options:        # --debug is among them, as "debug"
        cmd += ["-o", opt]
    with open(os.devnull, "rb") as devnull, open(log_file, "ab") as log:
        log_start = log.seek(0, os.SEEK_END)   # on failure, show this run's lines only
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=log,
                                pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    ready = _wait_ready(read_fd, proc)
    os.close(read_fd)
    mountpoint = os.path.abspath(args.mountpoint)
    if not ready:
        if proc.poll() is None:
            proc.terminate()
        print("gsfs: mounting %s failed; the log %s says why:" % (mountpoint, log_file),
              file=sys.stderr)
        _print_tail(log_file, start=log_start)
        return 1
    try:
        status = json.loads(os.getxattr(mountpoint, "user.gsfs.status"))
        stores = [d["id"] for d in status["stores"]]
        extra = " (and by-name/, Glance's image names)" if status.get("catalog") else ""
    except (OSError, ValueError, KeyError):
        stores, extra = sorted(os.listdir(mountpoint)), ""
    print("gsfs: mounted %s%s at %s (pid %d, log %s)" % (
        ", ".join(stores), extra, mountpoint, proc.pid, log_file))
    return 0


def _wait_ready(read_fd, proc, timeout=120):
    """Wait for the daemon's READY line, or its death."""
    deadline = time.monotonic() + timeout
    buf = b""
    os.set_blocking(read_fd, False)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(read_fd, 64)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            if b"READY" in buf:
                return True
        elif chunk == b"":
            return False   # the daemon closed the pipe without READY: it failed
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _print_tail(path, lines=15, start=0):
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
            for line in text.splitlines()[-lines:]:
                print("  " + line.rstrip(), file=sys.stderr)
    except OSError:
        pass


def _daemon_pid(mountpoint):
    try:
        return int(os.getxattr(mountpoint, "user.gsfs.pid"))
    except OSError as e:
        raise SystemExit("gsfs: %s is not a gsfs mount (%s)" % (mountpoint, e.strerror)) from e


def cmd_umount(args):
    mountpoint = os.path.abspath(args.mountpoint)
    pid = _daemon_pid(mountpoint)
    status = json.loads(os.getxattr(mountpoint, "user.gsfs.status"))
    pending = len(status["uploads"]) + len(status["pending_spooled"])
    if pending:
        print("gsfs: waiting for %d upload(s) to finish" % pending, file=sys.stderr)
    try:
        os.setxattr(mountpoint, "user.gsfs.control", b"sync")
    except OSError as e:
        # the failed uploads are gone (nothing partial was left); unmount anyway
        print("gsfs: some uploads failed (%s); the log names each one" % e.strerror,
              file=sys.stderr)
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        print("gsfs: cannot unmount %s: %s" % (mountpoint, result.stderr.strip()),
              file=sys.stderr)
        if "busy" in result.stderr.lower():
            print("gsfs: files are still open there; `fuser -vm %s` lists who holds them"
                  % mountpoint, file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not process.process_alive(pid):
            return 0
        time.sleep(0.1)
    print("gsfs: unmounted, but the daemon (pid %d) is still running" % pid, file=sys.stderr)
    return 1


def cmd_status(args):
    from gsfs import status_view
    mountpoint = os.path.abspath(args.mountpoint)
    _daemon_pid(mountpoint)
    if args.watch:
        return status_view.watch(mountpoint, interval=args.interval)
    return status_view.show(mountpoint, as_json=args.json)


def mount_helper(argv=None):
    """``mount.fuse.gsfs``: mount(8)'s calling convention → gsfs mount."""
    from gsfs import mount_helper as helper
    return helper.main(argv)


if __name__ == "__main__":
    sys.exit(main())
