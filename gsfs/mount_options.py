"""``-o`` mount options: the one parser behind ``gsfs mount``, ``gsfs
check-config``, ``mount.fuse.gsfs`` and the daemon.

``-o`` takes comma-separated ``name`` or ``name=value`` items and may be given
several times; ``items()`` splits them (the only place that does). Each item
is of one kind (``kind()``):

``setting``      a mount setting of the ``[gsfs]`` group (gsfs/fs/settings.py),
                 by its name or an alias (``ro``, ``spool_max``); it overrides
                 the configuration file
``debug``        per-request traces in the log (``--debug`` is the same item)
``config_file``  ``config_file=PATH``, repeatable: like ``--config-file``
``config_dir``   ``config_dir=PATH``: like ``--config-dir``
``fuse``         a FUSE or VFS option handed to the kernel (``allow_other``...)
``default``      ``rw``: what a mount is anyway; ignored
``mount8``       an option for mount(8), fstab or systemd (``_netdev``,
                 ``x-systemd.*``...): ``mount.fuse.gsfs`` drops these, ``gsfs
                 mount`` refuses them
``unknown``      anything else: refused

``parse()`` turns option strings into a ``MountOptions``; ``MountOptionError``
says which item is wrong. ``add_argument()`` gives an argparse parser the
``-o`` and ``--debug`` arguments, which both collect into ``args.options``.
"""

import dataclasses

from oslo_config import types

from gsfs.fs import settings as settings_mod

#: FUSE and VFS options passed on to the kernel as given (no value).
FUSE_FLAGS = frozenset({
    "allow_other", "allow_root", "default_permissions", "auto_unmount", "nosuid", "suid",
    "nodev", "dev", "noexec", "exec", "noatime", "atime", "relatime", "norelatime",
    "strictatime", "lazytime", "dirsync", "sync", "async",
})
#: FUSE options that take a value (SELinux contexts).
FUSE_VALUED = frozenset({"context", "fscontext", "defcontext", "rootcontext"})

#: Options that mean something to mount(8), fstab or systemd but not to gsfs
#: or FUSE. ``user``/``users``/``owner``/``group`` and ``user=NAME`` come from
#: fstab's user-mount permissions.
MOUNT8 = frozenset({
    "_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "owner", "group",
    "defaults",
})
#: Prefixes of mount(8)'s options: ``x-systemd.*``, ``x-gvfs-*`` ... (mount(8):
#: "x-* options are for userspace applications"), libmount's ``X-mount.*``,
#: ``comment=`` and the ``user=NAME`` that mount(8) adds for user mounts.
MOUNT8_PREFIXES = ("x-", "X-", "comment=", "user=")

_BOOL = types.Boolean()


class MountOptionError(ValueError):
    """An ``-o`` item gsfs cannot use (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Item:
    text: str           # as given, stripped
    key: str            # the name, aliases resolved (``ro`` → ``read_only``)
    value: object       # the text after ``=``, or None when there is no ``=``

    @property
    def kind(self):
        return kind(self)


@dataclasses.dataclass
class MountOptions:
    settings: dict = dataclasses.field(default_factory=dict)   # [gsfs] name → value
    fuse: list = dataclasses.field(default_factory=list)       # kernel option strings
    config_files: list = dataclasses.field(default_factory=list)
    config_dir: object = None
    debug: bool = False


def items(option_strings):
    """Every item of ``-o`` strings, in order (empty ones skipped)."""
    for text in option_strings or ():
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            yield Item(part, settings_mod.ALIASES.get(key, key), value if sep else None)


def kind(item):
    key = item.key
    if key == "debug":
        return "debug"
    if key in ("config_file", "config_dir"):
        return key
    if key in settings_mod.names():
        return "setting"
    if key == "rw" and item.value is None:
        return "default"
    if key in (FUSE_FLAGS if item.value is None else FUSE_VALUED):
        return "fuse"
    if item.text in MOUNT8 or item.text.startswith(MOUNT8_PREFIXES):
        return "mount8"
    return "unknown"


def config_path(item):
    """The PATH of ``config_file=PATH`` / ``config_dir=PATH``."""
    if not item.value:
        raise MountOptionError("option %s needs a path (%s=PATH)" % (item.key, item.key))
    return item.value


def parse(option_strings):
    """``-o`` strings (or a MountOptions, returned as is) → MountOptions."""
    if isinstance(option_strings, MountOptions):
        return option_strings
    result = MountOptions()
    for item in items(option_strings):
        k = item.kind
        if k == "setting":
            result.settings[item.key] = True if item.value is None else item.value
        elif k == "debug":
            try:
                result.debug = True if item.value is None else _BOOL(item.value)
            except ValueError:
                raise MountOptionError("debug takes no value, or true/false, not %r"
                                       % item.value) from None
        elif k == "config_file":
            result.config_files.append(config_path(item))
        elif k == "config_dir":
            result.config_dir = config_path(item)
        elif k == "fuse":
            result.fuse.append(item.text)
        elif k == "mount8":
            raise MountOptionError("%r is an option for mount(8) or fstab, not for gsfs mount "
                                   "(mount -t fuse.gsfs drops it)" % item.text)
        elif k == "unknown":
            raise MountOptionError("unknown mount option %r (see gsfs mount --help)"
                                   % item.text)
    return result


def add_argument(parser, debug=True):
    """``-o OPTS`` (repeatable) and, with ``debug``, ``--debug`` on an argparse
    parser: both land in ``args.options``, a list of option strings for ``parse()``."""
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                        help="comma-separated mount options: the [gsfs] settings, debug, "
                             "config_file=, config_dir= and FUSE options (README.md)")
    if debug:
        parser.add_argument("--debug", dest="options", action="append_const", const="debug",
                            help="per-request traces in the log (the same as -o debug)")
