"""Mount settings: the ``[gsfs]`` config group, overridable with ``-o``.

Every knob is here with its default; ``gsfs mount -o name=value`` overrides it
(gsfs/mount_options.py parses ``-o``; ``ALIASES`` are its other spellings).
"""

import os

from oslo_config import cfg

from gsfs import paths

GROUP = "gsfs"

OPTS = [
    cfg.BoolOpt("read_only", default=False, help="Mount read-only (-o ro)."),
    cfg.BoolOpt("allow_replace", default=False,
                help="Let O_TRUNC and rename replace an existing image, atomically."),
    cfg.BoolOpt("show_reserved", default=False,
                help="Show Glance's reserved stores (os_glance_*) as directories."),
    cfg.StrOpt("spool_dir", default=None,
               help="Directory for spool files of random-access writers "
                    "(default: <cache dir>/spool)."),
    cfg.IntOpt("spool_max_mib", default=65536, min=0,
               help="Total MiB the spool may hold; 0 disables spooling."),
    cfg.FloatOpt("spool_commit_delay", default=2.0, min=0,
                 help="Seconds a spooled image waits after its last close before it is "
                      "uploaded, so a writer that reopens it (qemu-img) keeps writing."),
    cfg.IntOpt("upload_queue_mib", default=8, min=1,
               help="MiB of written data queued per open file before write() waits."),
    cfg.IntOpt("reorder_window_mib", default=16, min=1,
               help="MiB of writes that arrived ahead of the stream (threads or "
                    "asynchronous I/O writing one file at once) held per open file "
                    "until the bytes before them arrive."),
    cfg.IntOpt("memory_mib", default=96, min=16,
               help="MiB that all uploads of the daemon may hold at once (s3 part "
                    "buffers and upload queues; see docs/memory.md)."),
    cfg.IntOpt("readahead_mib", default=32, min=0,
               help="MiB fetched ahead per open file on sequential reads, in blocks "
                    "of up to 8 MiB fetched in parallel."),
    cfg.FloatOpt("cache_ttl", default=5.0, min=0,
                 help="Seconds a store listing and image attributes are cached."),
    cfg.IntOpt("worker_threads", default=16, min=1,
               help="Threads for short blocking backend calls (stat, list, read, delete)."),
    cfg.IntOpt("max_uploads", default=8, min=1,
               help="Uploads running at once; further creates wait for a slot."),
    cfg.FloatOpt("shutdown_timeout", default=600.0, min=0,
                 help="Seconds SIGTERM waits for in-flight uploads before aborting them."),
    cfg.IntOpt("uid", default=None, help="Owner of every file (default: the mounting user)."),
    cfg.IntOpt("gid", default=None, help="Group of every file (default: the mounting group)."),
    cfg.StrOpt("file_mode", default="0644", help="Mode of image files (octal)."),
    cfg.StrOpt("dir_mode", default="0755", help="Mode of directories (octal)."),
    cfg.StrOpt("hash_algo", default="sha512", help="os_hash_algo of images written."),
    cfg.StrOpt("metrics_file", default=None,
               help="Write the Prometheus metrics (docs/METRICS.md) to this file every 5 s."),
    cfg.PortOpt("metrics_port", default=None,
                help="Serve the Prometheus metrics at http://metrics_address:PORT/metrics "
                     "(0: a free port, named in the log and in gsfs status)."),
    cfg.StrOpt("metrics_address", default="127.0.0.1",
               help="Address the metrics are served on (with metrics_port)."),
    cfg.BoolOpt("catalog_protect", default=True,
                help="With Glance's catalog configured ([gsfs_catalog]): rm of an image "
                     "Glance lists in that store goes through Glance, and rename of one "
                     "is refused; off: plain store deletes and renames."),
]

# -o name → option name, for the -o spellings that differ
ALIASES = {"ro": "read_only", "spool_max": "spool_max_mib"}


def names():
    """The option names of the [gsfs] group (what ``-o name=value`` may set)."""
    return {opt.dest for opt in OPTS}


def register(conf):
    try:
        conf.register_opts(OPTS, group=GROUP)
    except cfg.DuplicateOptError:
        pass


def default_data_dir():
    """The embedded default store's images (gsfs/paths.py)."""
    return os.path.join(paths.base_dir("data"), "images")


def default_cache_dir():
    return paths.base_dir("cache")


class Settings:
    """The resolved settings of one mount."""

    def __init__(self, conf):
        g = getattr(conf, GROUP)
        self.read_only = g.read_only
        self.allow_replace = g.allow_replace
        self.show_reserved = g.show_reserved
        self.spool_dir = g.spool_dir or os.path.join(default_cache_dir(), "spool")
        self.spool_max = g.spool_max_mib * 1024 * 1024
        self.spool_commit_delay = g.spool_commit_delay
        self.upload_queue = g.upload_queue_mib * 1024 * 1024
        self.reorder_window = g.reorder_window_mib * 1024 * 1024
        self.memory = g.memory_mib * 1024 * 1024
        self.readahead = g.readahead_mib * 1024 * 1024
        self.cache_ttl = g.cache_ttl
        self.worker_threads = g.worker_threads
        self.max_uploads = g.max_uploads
        self.shutdown_timeout = g.shutdown_timeout
        self.uid = os.getuid() if g.uid is None else g.uid
        self.gid = os.getgid() if g.gid is None else g.gid
        self.file_mode = int(g.file_mode, 8)
        self.dir_mode = int(g.dir_mode, 8)
        self.hash_algo = g.hash_algo
        self.metrics_file = g.metrics_file
        self.metrics_port = g.metrics_port
        self.metrics_address = g.metrics_address
        self.catalog_protect = g.catalog_protect
