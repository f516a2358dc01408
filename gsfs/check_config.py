"""``gsfs check-config``: load configuration files exactly as ``gsfs mount``
does, and say per store whether gsfs can use it and what it ignored.

    gsfs check-config [CONF...] [--config-dir D] [-o OPTS] [--timeout S] [-v]

The files (and ``-o``: ``config_file=``, ``show_reserved``...) go through the
daemon's own ``load_config`` and ``multi_backend.create_multi_stores``; then,
for every store of ``[DEFAULT] enabled_backends`` (and the reserved stores
with ``-o show_reserved``):

loaded      whether its driver made a store of it, and if not why: no driver
            for the type, the driver cannot be imported, or the driver's
            refusal (``BadStoreConfiguration``)
reachable   a cheap read, the driver's ``check_access()``: a stat of an image
            id that does not exist (a HEAD for http, a stat for file; "not
            found" is the answer of a store that works), and for s3, swift
            and rbd a listing of at most one name in the bucket or container,
            or an open of the pool, which fails as ``ls`` of the store would
            when it does not exist. Bounded by
            ``--timeout`` (a probe still hanging then counts as unreachable)
writable    the driver's add capability (``WRITE_ACCESS``): "add enabled" or
            "add disabled" and why; nothing is written
capacity    the driver's ``capacity()`` (same timeout), or "unknown"

and every option of the files that gsfs ignores: options of a store section
that its driver does not have, sections of stores that are not enabled,
stores of types gsfs has no driver for, and names that are not options in
``[glance_store]``, ``[backend_defaults]`` and ``[gsfs]``. Option values are
never printed (they may be secrets). The other sections of a glance-api.conf
(``[database]``, ``[keystone_authtoken]``...) and ``[DEFAULT]``'s options
are Glance's own: named in one line.

Exit status: 0 when every enabled store loaded and answered the probe; 1
when one did not, or when the files cannot be loaded at all.
"""

import glob
import logging
import os
import sys
import threading
import time

from oslo_config import cfg

from gsfs import (
    capabilities,
    catalog,
    config,
    exceptions,
    logsetup,
    mount_options,
    multi_backend,
)
from gsfs.fs import daemon
from gsfs.fs import settings as settings_mod

STORE_OPTION_PREFIXES = ("filesystem_", "s3_store_", "rbd_", "rados_", "swift_", "http",
                         "https_", "cinder_", "vmware_", "gsfs_", "default_swift_reference")
STORE_SECTION_MARKERS = {"store_description", "weight"}


class _Captured(logging.Handler):
    """What the loading logs (warnings and errors), for -v."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(logsetup.redact("%s %s" % (record.levelname, record.getMessage())))


def _names(opts):
    """Every spelling of ``opts`` a file may use (deprecated names included)."""
    names = set()
    for opt in opts:
        names.update((opt.name, opt.dest))
        names.update(d.name for d in opt.deprecated_opts if d.name)
    return names


def _group(name):
    return name if name == "DEFAULT" else name.lower()


def config_files(files, config_dir):
    """The files oslo.config reads, in its order (a directory's *.conf sorted)."""
    paths = list(files)
    if config_dir:
        paths += sorted(glob.glob(os.path.join(config_dir, "*.conf")))
    return paths


def parsed_sections(paths):
    """section → {option name: [file, ...]} over ``paths`` (values are dropped;
    sections without options are left out)."""
    sections = {}
    for path in paths:
        raw = {}
        cfg.ConfigParser(path, raw).parse()
        for section, values in raw.items():
            for key in values:
                sections.setdefault(_group(section), {}).setdefault(key, []).append(path)
    return sections


def _run_bounded(func, timeout):
    """``func()`` in a thread: (ok, result or exception, seconds); (None, None,
    timeout) when it has not returned within ``timeout`` seconds."""
    box = {}

    def run():
        try:
            box["result"] = (True, func())
        except Exception as e:  # noqa: BLE001 - reported to the operator
            box["result"] = (False, e)

    start = time.monotonic()
    thread = threading.Thread(target=run, name="gsfs-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if "result" not in box:
        return None, None, timeout
    ok, value = box["result"]
    return ok, value, time.monotonic() - start


def _why_not_loaded(conf, store_id, store_type):
    classes = multi_backend._driver_classes()
    if store_type not in classes:
        return "gsfs has no driver for store type %r (it has: %s)" % (
            store_type, ", ".join(sorted(classes)))
    try:
        cls = classes[store_type].load()
    except Exception as e:  # noqa: BLE001 - an optional dependency missing
        return "the %s driver cannot be imported: %s" % (store_type, e)
    try:
        cls(conf, backend=store_id).configure(re_raise_bsc=True)
    except exceptions.BadStoreConfiguration as e:
        return str(e)
    except NotImplementedError:
        return "the %s driver cannot serve a multi-store configuration" % store_type
    except Exception as e:  # noqa: BLE001
        return "%s: %s" % (type(e).__name__, e)
    return "not created (see -v)"


def _why_add_disabled(store):
    try:
        store.configure_add()
    except exceptions.BadStoreConfiguration as e:
        return str(e)
    finally:
        store.update_capabilities()
    return "the %s driver is read-only" % store.STORE_TYPE


def _capacity_text(value):
    if not value:
        return "unknown"
    total, free = value
    from gsfs.status_view import size
    return "%s free of %s" % (size(free), size(total))


def check_store(conf, store_id, store_type, timeout):
    """One store's report: dict with the lines to print and ``usable``."""
    store = multi_backend.stores().get(store_id)
    report = {"id": store_id, "type": store_type, "lines": [], "usable": False}
    lines = report["lines"]
    if store is None:
        lines.append(("loaded", "no: %s" % _why_not_loaded(conf, store_id, store_type)))
        return report
    lines.append(("loaded", "yes"))
    ok, value, seconds = _run_bounded(store.check_access, timeout)
    if ok is None:
        lines.append(("reachable", "no: no answer within %g s" % timeout))
    elif not ok:
        lines.append(("reachable", "no: %s (after %.1f s)" % (_one_line(value), seconds)))
    else:
        lines.append(("reachable", "yes (answered in %.2f s)" % seconds))
        report["usable"] = True
    if store.is_capable(capabilities.BitMasks.WRITE_ACCESS):
        writable = "add enabled"
    else:
        writable = "add disabled: %s" % _one_line(_why_add_disabled(store))
    if conf.gsfs.read_only:
        writable += " (but the mount is read-only: -o ro)"
    lines.append(("writable", writable))
    if report["usable"]:
        ok, value, _seconds = _run_bounded(store.capacity, timeout)
        capacity = _capacity_text(value) if ok else "unknown"
    else:
        capacity = "unknown"
    lines.append(("capacity", capacity))
    return report


def _one_line(value):
    return " ".join(str(value).split())


def ignored_options(conf, sections, reserved):
    """(ignored: [(section, option or None, why)], glance_own: [section or
    "[DEFAULT] a, b"]) for the parsed ``sections``."""
    enabled = {_group(k): v for k, v in (conf.enabled_backends or {}).items()}
    driver_opts = multi_backend._list_driver_opts()
    known = {
        "DEFAULT": {config.ENABLED_BACKENDS_OPT.name},
        "glance_store": _names([config.DEFAULT_BACKEND_OPT]),
        settings_mod.GROUP: _names(settings_mod.OPTS),
        config.SHARED_CONF_GROUP: _names(
            opt for t in set(enabled.values()) for opt in driver_opts.get(t, [])),
        catalog.GROUP: catalog.option_names(conf),
    }
    for store_id, store_type in enabled.items():
        if store_type in driver_opts:
            known[store_id] = _names(driver_opts[store_type] + config.MULTI_BACKEND_OPTS)
    for store_id in reserved or {}:
        known[_group(store_id)] = _names(config.reserved_file_opts(store_id)
                                         + config.MULTI_BACKEND_OPTS)
    all_driver_names = _names(opt for opts in driver_opts.values() for opt in opts)

    ignored, glance_own, default_own = [], [], []
    for section, options in sorted(sections.items(), key=lambda kv: kv[0] != "DEFAULT"):
        if section in known:
            unknown = sorted(set(options) - known[section])
            if section == "DEFAULT":
                default_own = unknown
                continue
            for name in unknown:
                if section in enabled:
                    why = "not an option of the %s driver" % enabled[section]
                elif section == settings_mod.GROUP:
                    why = "not a gsfs mount setting (gsfs/fs/settings.py)"
                else:
                    why = "not an option gsfs reads in [%s]" % section
                ignored.append((section, name, why))
        elif section in enabled:
            ignored.append((section, None, "store type %s: gsfs has no driver for it; its "
                            "options are ignored: %s" % (enabled[section],
                                                         ", ".join(sorted(options)))))
        elif section in daemon.RESERVED_STORES:
            ignored.append((section, None, "Glance's reserved store: shown only with -o "
                            "show_reserved"))
        elif _looks_like_a_store(options, all_driver_names):
            ignored.append((section, None, "a store section, but %r is not in [DEFAULT] "
                            "enabled_backends; ignored: %s" % (section,
                                                              ", ".join(sorted(options)))))
        else:
            glance_own.append("[%s]" % section)
    if default_own:
        glance_own.insert(0, "[DEFAULT] " + ", ".join(default_own))
    return ignored, glance_own


def _looks_like_a_store(options, driver_names):
    return any(name in driver_names or name in STORE_SECTION_MARKERS
               or name.startswith(STORE_OPTION_PREFIXES) for name in options)


def main(args, out=sys.stdout):
    """``gsfs check-config`` (``args`` from the cli's parser). Returns the exit code."""
    captured = _Captured()
    root = logging.getLogger()
    root.addHandler(captured)
    try:
        code = _check(args, captured, out)
    finally:
        root.removeHandler(captured)
    out.flush()
    if any(t.name == "gsfs-probe" for t in threading.enumerate()):
        # a probe still hangs in a client library: do not wait for it at exit
        sys.stderr.flush()
        os._exit(code)
    return code


def _check(args, captured, out):
    try:
        opts = mount_options.parse(args.options)
    except mount_options.MountOptionError as e:
        print("gsfs: %s" % e, file=sys.stderr)
        return 1
    files = [os.path.abspath(p) for p in args.config_file] + opts.config_files
    config_dir = args.config_dir or opts.config_dir
    try:
        conf, reserved, embedded = daemon.load_config(files, config_dir, opts.settings)
        daemon.register_secrets(conf)
        sections = parsed_sections(config_files(files, config_dir))
        multi_backend.create_multi_stores(conf, reserved_stores=reserved)
    except SystemExit as e:
        print(e.code, file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a value oslo.config or a driver refuses
        print("gsfs: the configuration cannot be loaded: %s: %s" % (type(e).__name__, e),
              file=sys.stderr)
        return 1

    if embedded:
        print("no config file: the embedded default store (%s)"
              % settings_mod.default_data_dir(), file=out)
    else:
        print("config: %s" % ", ".join(config_files(files, config_dir)), file=out)
    stores = dict(conf.enabled_backends or {})
    stores.update(reserved or {})
    reports = [check_store(conf, store_id, store_type, args.timeout)
               for store_id, store_type in stores.items()]
    default = conf.glance_store.default_backend
    for r in reports:
        mark = "usable" if r["usable"] else "UNUSABLE"
        if r["id"] == default:
            mark += ", the default store"
        print("\n%s (%s): %s" % (r["id"], r["type"], mark), file=out)
        for key, value in r["lines"]:
            print("  %-10s %s" % (key, value), file=out)
    if default and default not in stores:
        print("\n[glance_store] default_backend = %s is not an enabled store" % default,
              file=out)

    ignored, glance_own = ignored_options(conf, sections, reserved)
    if ignored:
        print("\nignored by gsfs:", file=out)
        for section, name, why in ignored:
            print("  [%s]%s: %s" % (section, " " + name if name else "", why), file=out)
    if glance_own:
        print("\nnot read by gsfs (Glance's own): %s" % "; ".join(glance_own), file=out)
    if args.verbose and captured.lines:
        print("\nlogged while loading:", file=out)
        for line in captured.lines:
            print("  " + line, file=out)

    bad = [r["id"] for r in reports if not r["usable"]]
    if bad:
        print("\n%d of %d store(s) unusable: %s" % (len(bad), len(reports), ", ".join(bad)),
              file=out)
        return 1
    print("\nall %d store(s) usable" % len(reports), file=out)
    return 0
