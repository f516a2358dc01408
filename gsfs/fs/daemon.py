"""Mount plumbing: configuration, stores, pyfuse3 session, signals, shutdown.

Life of a mount (``gsfs mount -f``):
  1. parse ``-o`` (gsfs/mount_options.py: the [gsfs] settings, config files,
     FUSE options), load the configuration (a glance-api.conf or the embedded
     default; the ``-o`` settings override it),
     create the stores, clean what a crashed run left (temp files, unfinished
     multipart uploads, half-written rbd images, spool files);
  2. pyfuse3.init (with auto_unmount, so a killed daemon leaves no dead mount);
  3. serve; once the mount answers a stat, report readiness (READY=1 to
     systemd, a line on --ready-fd for the backgrounding parent);
  4. SIGTERM/SIGINT: refuse new writers, let in-flight uploads finish for
     shutdown_timeout seconds, abort the rest (nothing is left behind),
     unmount, exit 0. SIGUSR1 logs every task's stack.
  5. unmounted from outside (gsfs umount / fusermount3 -u): upload what is
     still spooled, then exit.
"""

import faulthandler
import logging
import os
import signal
import sys
import traceback

import pyfuse3
import trio
from oslo_config import cfg

from gsfs import (
    budget,
    catalog,
    config,
    logsetup,
    mount_options,
    multi_backend,
    notify,
    process,
)
from gsfs.fs import settings as settings_mod
from gsfs.fs.catalog_view import CatalogView
from gsfs.fs.operations import Operations

LOG = logging.getLogger("gsfs")

RESERVED_STORES = {"os_glance_staging_store": "file", "os_glance_tasks_store": "file"}


def load_config(config_files, config_dir, gsfs_opts):
    """Fill the global CONF the way Glance does, or with the embedded default;
    ``gsfs_opts`` ([gsfs] name → value, from ``-o``) override the files."""
    conf = config.CONF
    config.ensure_enabled_backends_opt(conf)
    settings_mod.register(conf)
    for path in config_files:
        if not os.path.isfile(path):
            raise SystemExit("gsfs: config file %s does not exist" % path)
    conf(args=[], project="gsfs", default_config_files=list(config_files),
         default_config_dirs=[config_dir] if config_dir else [])
    embedded = not config_files and not config_dir
    if embedded:
        datadir = settings_mod.default_data_dir()
        conf.set_override("enabled_backends", {"images": "file"})
    for key, value in gsfs_opts.items():
        conf.set_override(key, value, group=settings_mod.GROUP)
    reserved = RESERVED_STORES if conf.gsfs.show_reserved else None
    multi_backend.register_store_opts(conf, reserved_stores=reserved)
    catalog.register_opts(conf)
    if embedded:
        conf.set_override("default_backend", "images", group="glance_store")
        conf.set_override("filesystem_store_datadir", datadir, group="images")
        conf.set_override("store_description", "gsfs default file store", group="images")
    if not conf.enabled_backends:
        raise SystemExit("gsfs: no stores: set [DEFAULT] enabled_backends in the config file")
    return conf, reserved, embedded


def register_secrets(conf):
    """Tell the log filter every secret the configuration holds (the swift
    driver registers the keys of its glance-swift.conf when it reads it)."""
    for store_id in (conf.enabled_backends or {}):
        group = getattr(conf, store_id, None)
        for name in ("s3_store_access_key", "s3_store_secret_key", "swift_store_key",
                     "swift_store_application_credential_secret"):
            try:
                value = getattr(group, name)
            except (cfg.NoSuchOptError, AttributeError):
                continue
            if value:
                logsetup.register_secret(value)


def clean_leftovers(ops):
    """Remove what a crashed run (or another client) left behind, and log it."""
    for store_id, store in sorted(multi_backend.stores().items()):
        try:
            for line in store.cleanup_leftovers():
                LOG.warning("Cleaned a leftover: %s", line)
        except Exception as e:  # a store that cannot be reached is reported, not fatal
            LOG.error("Could not check store %s for leftovers: %s", store_id, e)
    spool_dir = ops.settings.spool_dir
    try:
        names = os.listdir(spool_dir)
    except OSError:
        return
    for name in names:
        pid = name.split(".", 1)[0]
        if name.endswith(".spool") and pid.isdigit() and not process.process_alive(int(pid)):
            path = os.path.join(spool_dir, name)
            LOG.warning("Removed the spool file %s of a gsfs process (pid %s) that is gone; "
                        "its image was never committed", path, pid)
            try:
                os.unlink(path)
            except OSError:
                pass


def dump_stacks():
    """SIGUSR1: every trio task's stack, then every thread's."""
    lines = ["gsfs task dump:"]

    def walk(task, depth):
        lines.append("%stask %s" % ("  " * depth, task.name))
        frame_stack = []
        coro = task.coro
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            frame_stack.append(frame)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        for frame in frame_stack:
            for entry in traceback.format_stack(frame, limit=1):
                lines.append("  " * (depth + 1) + entry.strip().replace("\n", " | "))
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)
    LOG.warning("\n".join(lines), extra={"multiline": True})
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


async def _shutdown(ops, reason):
    """Stop new writers, give in-flight uploads shutdown_timeout, abort the rest."""
    if not ops.accepting_writes:
        return
    ops.accepting_writes = False
    waiting = len(ops.uploads) + len(ops.spools)
    notify.notify_stopping("Stopping: waiting for %d upload(s)" % waiting)
    LOG.info("%s: no new writers; waiting up to %.0f s for %d upload(s)", reason,
             ops.settings.shutdown_timeout, waiting)
    with trio.move_on_after(ops.settings.shutdown_timeout):
        while ops.uploads or ops.spools:
            # under systemd, keep the stop job alive while uploads are still moving
            notify.notify_extend_timeout(30)
            notify.notify_status("Stopping: %d upload(s) in flight"
                                 % (len(ops.uploads) + len(ops.spools)))
            with trio.move_on_after(5):
                await ops.sync_all()
            if ops.uploads or ops.spools:
                await trio.sleep(0.2)
    for session in list(ops.uploads) + list(ops.spools):
        LOG.warning("Aborting the upload of %s at shutdown (nothing is committed)",
                    session.image.path)
        await session.abort("gsfs stopped")


async def _signals(ops):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                dump_stacks()
                continue
            await _shutdown(ops, signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _report_ready(mountpoint, ready_fd):
    # the first request the mount answers: it is ready (never stat it before
    # pyfuse3.main runs: nobody would answer)
    await trio.to_thread.run_sync(_raise_readahead, mountpoint)
    LOG.info("gsfs mounted at %s (pid %d)", mountpoint, os.getpid())
    notify.notify_ready("Mounted at %s" % mountpoint)
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"READY\n")
            os.close(ready_fd)
        except OSError:
            pass


async def _serve(ops, mountpoint, ready_fd):
    _serve_metrics(ops)
    try:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            nursery.start_soon(_signals, ops)
            nursery.start_soon(_report_ready, mountpoint, ready_fd)
            nursery.start_soon(_write_metrics, ops)
            nursery.start_soon(_late_cleanup, ops)
            nursery.start_soon(_trim_heap)
            await pyfuse3.main(min_tasks=4, max_tasks=64)
            # unmounted from outside, or terminate() after a signal
            await _shutdown(ops, "unmounted")
            nursery.cancel_scope.cancel()
    finally:
        ops.metrics.stop()


def _serve_metrics(ops):
    """-o metrics_port: /metrics over HTTP. A port that cannot be bound is
    logged and the mount goes on without it (the files matter more)."""
    port = ops.settings.metrics_port
    if port is None:
        return
    address = ops.settings.metrics_address
    try:
        ops.metrics.serve(port, address)
    except OSError as e:
        LOG.error("Cannot serve metrics on %s:%d: %s; the mount goes on without them "
                  "(choose a free port with -o metrics_port=PORT)", address, port, e)


LATE_CLEANUP_DELAY = 90
CLEANUP_INTERVAL = 3600


async def _late_cleanup(ops):
    """Clean leftovers once more after a while (right after a crash, the dead
    writer's rbd temp image is still watched (locked) for ~30 s by Ceph, so the
    start-up pass skips it; a restart by systemd comes sooner than that), then
    every hour: what others leave (a sidecar whose s3 object Glance deleted)
    does not wait for the next mount."""
    await trio.sleep(LATE_CLEANUP_DELAY)
    while True:
        await trio.to_thread.run_sync(clean_leftovers, ops, limiter=ops.worker_limiter)
        await trio.sleep(CLEANUP_INTERVAL)


async def _write_metrics(ops):
    path = ops.settings.metrics_file
    if not path:
        return
    while True:
        text = ops.metrics.render()
        tmp = "%s.tmp" % path
        try:
            with open(tmp, "wb") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as e:
            LOG.warning("Cannot write metrics to %s: %s", path, e)
        await trio.sleep(5)


def mount(mountpoint, config_files=(), config_dir=None, options=(), ready_fd=None):
    """Mount and serve until unmounted or signalled. Returns the exit code.

    ``options``: ``-o`` strings, or the MountOptions ``gsfs mount`` parsed
    (gsfs/mount_options.py; its ``debug`` is the caller's logging business)."""
    mountpoint = os.path.abspath(mountpoint)
    try:
        opts = mount_options.parse(options)
    except mount_options.MountOptionError as e:
        raise SystemExit("gsfs: %s" % e) from None
    conf, _reserved, embedded = load_config(list(config_files) + opts.config_files,
                                            config_dir or opts.config_dir, opts.settings)
    register_secrets(conf)
    count = multi_backend.create_multi_stores(conf, reserved_stores=_reserved)
    if not multi_backend.stores():
        raise SystemExit("gsfs: none of the configured stores could be loaded (see the log)")
    LOG.info("Loaded %d store(s) (%d scheme registrations): %s", len(multi_backend.stores()),
             count, ", ".join(sorted(multi_backend.stores())))
    if embedded:
        LOG.info("No config file: using the embedded default store 'images' in %s",
                 settings_mod.default_data_dir())
    settings = settings_mod.Settings(conf)
    budget.BUDGET.set_limit(settings.memory)
    _return_freed_memory()
    ops = Operations(settings)
    ops.mountpoint = mountpoint
    ops.config_files = [os.path.abspath(f) for f in list(config_files) + opts.config_files]
    ops.config_dir = os.path.abspath(config_dir or opts.config_dir) \
        if (config_dir or opts.config_dir) else None
    glance = catalog.from_conf(conf)
    if glance is not None:
        ops.catalog = CatalogView(glance, ops._run, protect=settings.catalog_protect)
        ops.namespace.enable_by_name()
        LOG.info("Glance's catalog: %s (catalog_protect %s)", glance.describe(),
                 "on" if settings.catalog_protect else "off")
        if settings.catalog_protect and glance.admin() is False:
            LOG.warning("[gsfs_catalog]'s user has no admin role: Glance hides other projects' "
                        "private images from it, so rm and mv of those images are plain "
                        "store operations that Glance's records do not follow. Give the user "
                        "the admin role (as Glance's own service user has)")
    clean_leftovers(ops)
    if not os.path.isdir(mountpoint):
        raise SystemExit("gsfs: mountpoint %s is not a directory" % mountpoint)
    fuse_options = set(pyfuse3.default_options)
    fuse_options |= {"fsname=gsfs", "subtype=gsfs", "auto_unmount"} | set(opts.fuse)
    if settings.read_only:
        fuse_options.add("ro")
    pyfuse3.init(ops, mountpoint, fuse_options)
    ok = False
    try:
        trio.run(_serve, ops, mountpoint, ready_fd)
        ok = True
    finally:
        pyfuse3.close(unmount=ok)
    LOG.info("gsfs at %s stopped", mountpoint)
    return 0


_LIBC = None
TRIM_INTERVAL = 1                  # seconds between looks at the heap
TRIM_FREE = 16 * 1024 * 1024       # free heap bytes that make a trim worth it


def _return_freed_memory():
    """Buffers above 12 MiB (s3 parts of 16 MiB) get their own mappings,
    returned to the OS when freed; glibc otherwise raises its mmap threshold
    after the first large free and keeps them in its heap. Smaller ones are
    reused from the heap: the FUSE write buffers (1 MiB; a fresh mapping per
    buffer cost 0.6 CPU-s of page faults per GiB copied in) and the read
    blocks of the prefetcher and of librbd (up to 8 MiB; 0.5 CPU-s per GiB
    read from rbd). What they leave free in the heap is given back by
    ``_trim_heap``."""
    global _LIBC
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 12 * 1024 * 1024)  # M_MMAP_THRESHOLD, fixed: no dynamic growth
        libc.mallopt(-1, 4 * 1024 * 1024)   # M_TRIM_THRESHOLD
        libc.mallinfo2.restype = MallInfo2  # glibc 2.33+; without it, no trimming
        _LIBC = libc
    except (OSError, AttributeError):
        pass


def _heap_free_bytes():
    return _LIBC.mallinfo2().fordblks


async def _trim_heap():
    """Every TRIM_INTERVAL s: when the heap holds TRIM_FREE bytes or more that
    nothing uses (buffers of uploads that ended, or of many at once), return
    their pages to the OS (``malloc_trim``). One copy at a time reuses its
    few free buffers and is never trimmed; 16 parallel copies are, and the
    daemon's RSS falls back once they end (docs/memory.md)."""
    if _LIBC is None:
        return
    after_trim = None
    while True:
        await trio.sleep(TRIM_INTERVAL)
        free = await trio.to_thread.run_sync(_heap_free_bytes)
        # trimmed pages still count as free: trim again only when that changed
        if free >= TRIM_FREE and free != after_trim:
            await trio.to_thread.run_sync(_LIBC.malloc_trim, 0)
            after_trim = await trio.to_thread.run_sync(_heap_free_bytes)


def _raise_readahead(mountpoint):
    """1 MiB kernel readahead instead of 128 KiB (needs root; best effort)."""
    dev = os.stat(mountpoint).st_dev
    try:
        path = "/sys/class/bdi/%d:%d/read_ahead_kb" % (os.major(dev), os.minor(dev))
        with open(path, "w") as f:
            f.write("1024")
    except OSError:
        pass
