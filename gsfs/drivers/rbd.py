"""The ``rbd`` driver: images are RBD images in a Ceph pool, read through librbd.

Options, locations (``rbd://<fsid>/<pool>/<image>/snap``), the protected
snapshot ``snap`` and delete's snapshot/trash handling are glance_store's.
What gsfs does differently (docs/compatibility.md):

* an image is written under a temporary name
  (``..gsfs-tmp.<rand>.<pid>.<host>.<id>``; ``..`` never occurs in a valid id),
  snapshotted, protected, given its metadata and only then renamed to its id, so
  no reader ever sees a partial image under its id and no failed add leaves an
  image behind (a crashed writer's temp image is removed by cleanup_leftovers);
* one rados connection per store object (glance_store connects and shuts down
  for every call), made lazily and again after a connection failure;
* ``rbd_store_user`` unset means librados' default user, not the user 'None';
* get() serves offset/chunk_size (glance_store: StoreRandomGetNotSupported);
* every rados/rbd exception leaves the driver as a gsfs exception (see
  ``_translate``), naming pool, image, operation and cause;
* size 0 (unknown) uploads keep their resize state per upload (glance_store keeps
  it on the store object, shared by concurrent uploads and never reset);
* read() keeps images open at their snapshot for up to READ_HANDLE_MAX_AGE
  seconds (an open costs ten 128 KiB reads);
* librbd is never asked to open an image or snapshot that does not exist
  (librbd 16.2 crashes the process later; see ``_open_image``).

gsfs image metadata (checksum, os_hash_algo, os_hash_value, mtime) is RBD image
metadata with keys ``gsfs.<name>``: it moves with rename and vanishes with delete.
ImageInfo.version is the RBD image id (new for every add or replace, kept by
rename and by metadata changes), read from the image list_images() and
stat_image() open anyway.
"""

import contextlib
import errno
import logging
import math
import os
import secrets
import socket
import sys
import threading
import time
import urllib.parse

from oslo_config import cfg

from gsfs import capabilities, driver, exceptions, hashing, location, process

try:
    import rados
    import rbd
except ImportError:  # the Debian python3-rados/python3-rbd bindings are optional
    rados = None
    rbd = None

LOG = logging.getLogger(__name__)

DEFAULT_POOL = "images"
DEFAULT_USER = None      # librados' default (client.admin, or what the conf says)
DEFAULT_CHUNKSIZE = 8    # MiB
DEFAULT_SNAPNAME = "snap"
MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_RESIZE_STEP = 8 * GiB   # glance_store's cap on the size-0 growth step
MAX_ORDER = 25              # librbd refuses objects above 32 MiB (ERANGE)

# Names gsfs gives images that are not (yet, or any more) images: validate_image_id
# refuses '..' anywhere, so no valid image id can start with these.
TMP_PREFIX = "..gsfs-tmp."    # an upload in progress (or a crashed one)
OLD_PREFIX = "..gsfs-old."    # an image being replaced (replace=True), moved aside
HIDDEN_PREFIX = "..gsfs-"
META_PREFIX = "gsfs."         # RBD image metadata keys holding gsfs metadata
# cleanup_leftovers leaves another host's watcher-less temp images alone for this
# long (a live writer holds a watch except for milliseconds around create/rename)
FOREIGN_GRACE = 600

# read() keeps images open at their (immutable, protected) snapshot: opening
# costs ~4 ms, a 128 KiB read ~0.4 ms. A handle is reopened after this many
# seconds, so an image deleted or re-created behind gsfs's back is seen within it.
READ_HANDLE_MAX_AGE = 2.0
READ_HANDLES_MAX = 16

# temp images this process is writing right now (any Store object)
_WRITING = set()
_WRITING_LOCK = threading.Lock()


class _AioWrites:
    """librbd asynchronous writes with at most ``limit`` bytes in flight, as
    ``rbd import`` keeps several writes going: the image's objects are written
    in parallel instead of one round trip after the other. The first failure
    is raised by the next submit() or by check()."""

    def __init__(self, image, limit, name):
        self.image = image
        self.limit = max(limit, 1)
        self.name = name
        self.cond = threading.Condition()
        self.inflight = 0
        self.pending = set()
        self.error = None

    def submit(self, data, offset):
        with self.cond:
            while self.inflight and self.inflight + len(data) > self.limit \
                    and self.error is None:
                self.cond.wait()
            self._raise()
            self.inflight += len(data)
        n = len(data)

        def done(completion):
            ret = completion.get_return_value()
            with self.cond:
                self.inflight -= n
                self.pending.discard(completion)
                if ret < 0 and self.error is None:
                    self.error = exceptions.BackendException(
                        "RBD write of %d bytes at offset %d of %s failed: %s"
                        % (n, offset, self.name, os.strerror(-ret)))
                self.cond.notify_all()

        completion = self.image.aio_write(data, offset, done)
        with self.cond:
            if self.inflight and completion.is_complete() is False:
                self.pending.add(completion)

    def wait_all(self, check=True):
        with self.cond:
            while self.inflight:
                self.cond.wait()
        if check:
            self.check()

    def check(self):
        with self.cond:
            self._raise()

    def _raise(self):
        if self.error is not None:
            raise self.error

_RBD_OPTS = [
    cfg.IntOpt("rbd_store_chunk_size", default=DEFAULT_CHUNKSIZE, min=1,
               help="Size, in MiB, of the RADOS objects images are split into "
                    "(the image order is log2 of it) and of each read and write."),
    cfg.StrOpt("rbd_store_pool", default=DEFAULT_POOL,
               help="RADOS pool in which images are stored."),
    cfg.StrOpt("rbd_store_user", default=DEFAULT_USER,
               help="RADOS (cephx) user to authenticate as, without 'client.'; "
                    "unset means librados' default."),
    cfg.StrOpt("rbd_store_ceph_conf", default="",
               help="Ceph configuration file; empty means librados' default search "
                    "($CEPH_CONF, /etc/ceph/ceph.conf, ...)."),
    cfg.IntOpt("rados_connect_timeout", default=-1,
               help="Seconds for the mon/osd operation and mount timeouts; "
                    "< 0 keeps librados' defaults."),
    cfg.BoolOpt("rbd_thin_provisioning", default=False,
                help="Do not write all-zero chunks: they stay unallocated holes."),
]


def _translate(exc, op, pool=None, image=None, write=False, user=None):
    """The gsfs exception for a rados/rbd exception ``exc`` raised while doing ``op``.

    The one place where librados/librbd errors become gsfs errors. Messages name
    the operation, pool, image and cause; nothing from the keyring is ever in them.
    """
    where = []
    if pool is not None:
        where.append("pool %s" % pool)
    if image is not None:
        where.append("image %s" % image)
    if user is not None:
        where.append("as client.%s" % user)
    msg = "RBD %s failed%s: %s: %s" % (
        op, (" (%s)" % ", ".join(where)) if where else "", type(exc).__name__, exc)
    if isinstance(exc, (rbd.ImageNotFound, rbd.ObjectNotFound, rados.ObjectNotFound)):
        if image is not None:
            return exceptions.NotFound(message="RBD image %s does not exist in pool %s (%s)"
                                       % (image, pool, exc))
        return exceptions.NotFound(message=msg)
    if isinstance(exc, (rbd.PermissionError, rados.PermissionError,
                        rados.PermissionDeniedError)):
        if write:
            return exceptions.StorageWriteDenied(message=msg)
        return exceptions.Forbidden(message=msg)
    if isinstance(exc, (rbd.NoSpace, rados.NoSpace, rbd.DiskQuotaExceeded)):
        return exceptions.StorageFull(message=msg)
    if _is_connection_error(exc):
        return exceptions.RemoteServiceUnavailable(message=msg)
    if isinstance(exc, (rbd.ImageBusy, rados.ObjectBusy)):
        return exceptions.InUseByStore(message=msg)
    if isinstance(exc, (rbd.ImageExists, rados.ObjectExists)):
        return exceptions.Duplicate(message=msg)
    if isinstance(exc, rbd.IncompleteWriteError):
        return exceptions.Invalid(message=msg)
    return exceptions.BackendException(msg)


def _is_connection_error(exc):
    """True for errors after which the rados handle should be replaced."""
    if isinstance(exc, (rados.TimedOut, rados.InterruptedOrTimeoutError,
                        rados.ConnectionShutdown, rados.NotConnected,
                        rados.RadosStateError, rbd.Timeout, rbd.ConnectionShutdown)):
        return True
    return getattr(exc, "errno", None) in (errno.ETIMEDOUT, errno.ESHUTDOWN, errno.ENOTCONN,
                                           errno.ECONNREFUSED, errno.ECONNRESET,
                                           errno.EHOSTUNREACH)


def _quote(value):
    return urllib.parse.quote(value, "")


# librbd 16.2 (Debian 12's Ceph) corrupts its state when an image open FAILS
# (no such image, no such snapshot; also inside rename() of a missing image):
# a later open in the same process aborts ("terminate called after throwing
# std::system_error: Invalid argument") or segfaults in an io_context_pool
# thread, within a few hundred alternating failed/successful opens. So this
# driver never lets librbd fail an open: existence is checked with a plain RADOS
# stat of the image's id object first, and a snapshot is selected with
# snap_exists() + set_snap() on an image opened at its head. Only a race (the
# image removed between the stat and the open) still reaches a failing open.
# tests/test_rbd_driver.py::test_missing_images_never_reach_a_failing_open.

def _close_quietly(image, ioctx):
    """Close an image, then its ioctx (never the other way round: librbd would
    use a destroyed ioctx); either may be None."""
    if image is not None:
        with contextlib.suppress(Exception):
            image.close()
    if ioctx is not None:
        with contextlib.suppress(Exception):
            ioctx.close()


def _image_exists(ioctx, name):
    """Whether image ``name`` exists, without opening it: format 2 images have
    an ``rbd_id.<name>`` object (removed by rename, trash_move and remove),
    format 1 images a ``<name>.rbd`` header."""
    for obj in ("rbd_id." + name, name + ".rbd"):
        try:
            ioctx.stat(obj)
            return True
        except rados.ObjectNotFound:
            continue
    return False


def _missing(name, snapshot=None):
    """The exception librbd raises for a missing image (or snapshot)."""
    return rbd.ImageNotFound("error opening image %s at snapshot %s" % (name, snapshot),
                             errno=errno.ENOENT)


def _open_image(ioctx, name, snapshot=None, read_only=True):
    """``rbd.Image(ioctx, name, snapshot, read_only)``, but rbd.ImageNotFound is
    raised before librbd is asked to open a missing image or snapshot."""
    if not _image_exists(ioctx, name):
        raise _missing(name)
    image = rbd.Image(ioctx, name, read_only=read_only)
    if snapshot is not None:
        try:
            exists = getattr(image, "snap_exists", None)
            if exists is not None:
                found = exists(snapshot)
            else:
                found = any(s["name"] == snapshot for s in image.list_snaps())
            if not found:
                raise _missing(name, snapshot)
            image.set_snap(snapshot)
        except BaseException:
            image.close()
            raise
    return image


class StoreLocation(location.StoreLocation):
    """``rbd://<image>`` or ``rbd://<fsid>/<pool>/<image>/<snapshot>``.

    Generated URIs quote every component with no safe characters; only the
    4-component form is unquoted when parsed (as glance_store does).
    """

    def process_specs(self):
        for key, value in self.specs.items():
            self.specs[key] = str(value)
        self.fsid = self.specs.get("fsid")
        self.pool = self.specs.get("pool")
        self.image = self.specs.get("image")
        self.snapshot = self.specs.get("snapshot")

    def get_uri(self):
        if self.fsid and self.pool and self.snapshot:
            return "rbd://%s/%s/%s/%s" % (_quote(self.fsid), _quote(self.pool),
                                          _quote(self.image), _quote(self.snapshot))
        return "rbd://%s" % self.image

    def parse_uri(self, uri):
        prefix = "rbd://"
        self.validate_schemas(uri, valid_schemas=(prefix,))
        pieces = str(uri)[len(prefix):].split("/")
        if len(pieces) == 1:
            self.fsid, self.pool, self.image, self.snapshot = None, None, pieces[0], None
        elif len(pieces) == 4:
            self.fsid, self.pool, self.image, self.snapshot = map(urllib.parse.unquote, pieces)
        else:
            reason = "URI must have exactly 1 or 4 components"
            LOG.info("Invalid URI: %s", reason)
            raise exceptions.BadStoreUri(message=reason)
        if any(p == "" for p in pieces):
            reason = "URI cannot contain empty components"
            LOG.info("Invalid URI: %s", reason)
            raise exceptions.BadStoreUri(message=reason)


class _Cluster:
    """A rados handle and how many operations use it (shut down when stale and unused)."""

    def __init__(self, client):
        self.client = client
        self.users = 0
        self.stale = False


class _OpenImage:
    """A read-only image handle at a snapshot, shared by read() calls."""

    def __init__(self, key, cluster, ioctx, image):
        self.key = key
        self.cluster = cluster
        self.ioctx = ioctx
        self.image = image
        self.size = image.size()
        self.opened = time.monotonic()
        self.users = 0
        self.evicted = False

    def close(self):
        """Close the image, then its ioctx (never the other way round: librbd
        would use a destroyed ioctx)."""
        image, ioctx, self.image, self.ioctx = self.image, self.ioctx, None, None
        _close_quietly(image, ioctx)

    def __del__(self):
        # a store dropped without close(): finalizers run before the garbage
        # collector clears the Image/Ioctx objects in arbitrary order
        self.close()


class ImageIterator:
    """Chunks of an image (at its snapshot) from ``offset`` up to ``end``."""

    def __init__(self, store, pool, name, snapshot, offset=0, end=None, chunk_size=None):
        self.store = store
        self.pool = pool
        self.name = name
        self.snapshot = snapshot
        self.offset = offset
        self.end = end
        self.chunk_size = chunk_size or store.READ_CHUNKSIZE
        self._gen = None

    def __iter__(self):
        self._gen = self._chunks()
        return self._gen

    def _chunks(self):
        with self.store._ioctx(self.pool, "read", self.name) as ioctx:
            try:
                image = _open_image(ioctx, self.name, self.snapshot)
            except rbd.ImageNotFound as e:
                raise exceptions.NotFound(
                    message="RBD image %s does not exist" % self.name) from e
            with image:
                size = image.size()
                end = size if self.end is None else min(self.end, size)
                pos = self.offset
                while pos < end:
                    data = image.read(pos, min(self.chunk_size, end - pos))
                    if not data:
                        return
                    pos += len(data)
                    yield data

    def close(self):
        if self._gen is not None:
            self._gen.close()


class Store(driver.Store):
    """RBD images in one pool of one Ceph cluster."""

    _CAPABILITIES = (capabilities.BitMasks.RW_ACCESS | capabilities.BitMasks.READ_RANDOM
                     | capabilities.BitMasks.DRIVER_REUSABLE
                     | capabilities.BitMasks.RENAME_NATIVE)
    OPTIONS = _RBD_OPTS
    STORE_TYPE = "rbd"
    EXAMPLE_URL = "rbd://<FSID>/<POOL>/<IMAGE>/<SNAP>"

    # Image names are RADOS object-name material ("rbd_id.<name>", omap keys
    # "name_<name>" in rbd_directory), limited by osd_max_object_name_len (2048
    # bytes; a 3000-byte name fails with ENAMETOOLONG on bluestore, 1000 works).
    # The temp/aside names add ~40 bytes plus the host name (<= 64) to the id.
    # 255 = NAME_MAX, which the FUSE layer needs anyway, leaves > 1600 bytes of
    # headroom for every name gsfs derives from an id.
    max_id_length = 255

    def __init__(self, conf, backend=None):
        super().__init__(conf, backend=backend)
        # re-entrant: an abandoned ImageIterator finalised by the garbage collector
        # releases its connection from whatever code the thread was running
        self._lock = threading.RLock()
        self._cluster = None
        self._fsid = None
        self._handles = {}       # (pool, image, snapshot) -> _OpenImage, LRU order
        self.pool = DEFAULT_POOL
        self.user = DEFAULT_USER
        self.conf_file = ""
        self.connect_timeout = -1
        self.thin_provisioning = False
        self.chunk_size = DEFAULT_CHUNKSIZE * MiB
        self.READ_CHUNKSIZE = self.WRITE_CHUNKSIZE = self.chunk_size
        self.order = int(math.log(self.chunk_size, 2))

    def get_schemes(self):
        return ("rbd",)

    # -- configuration -------------------------------------------------------
    def configure_add(self):
        if rbd is None or rados is None:
            reason = "The required libraries(rbd and rados) are not available"
            LOG.error(reason)
            raise exceptions.BadStoreConfiguration(store_name="rbd", reason=reason)
        try:
            opts = self.group_conf()
            chunk = opts.rbd_store_chunk_size
            self.pool = str(opts.rbd_store_pool)
            user = opts.rbd_store_user
            # glance_store str()s a None user into the user 'None'; gsfs lets
            # librados pick its default (client.admin or the conf's choice)
            self.user = str(user) if user else None
            self.conf_file = str(opts.rbd_store_ceph_conf or "")
            self.connect_timeout = opts.rados_connect_timeout
            self.thin_provisioning = bool(opts.rbd_thin_provisioning)
        except (cfg.ConfigFileValueError, cfg.NoSuchOptError) as e:
            reason = "Error in store configuration: %s" % e
            LOG.error(reason)
            raise exceptions.BadStoreConfiguration(store_name="rbd", reason=reason) from e
        self.chunk_size = chunk * MiB
        self.READ_CHUNKSIZE = self.WRITE_CHUNKSIZE = self.chunk_size
        self.order = int(math.log(self.WRITE_CHUNKSIZE, 2))
        if self.order > MAX_ORDER:
            reason = ("rbd_store_chunk_size %d MiB is above the 32 MiB librbd accepts "
                      "as object size" % chunk)
            LOG.error(reason)
            raise exceptions.BadStoreConfiguration(store_name="rbd", reason=reason)
        if self.backend_group:
            self._set_url_prefix()

    def _set_url_prefix(self):
        try:
            fsid = self._get_fsid()
        except exceptions.GlanceStoreException as e:
            reason = "Error in store configuration: %s" % e
            LOG.debug(reason)
            raise exceptions.BadStoreConfiguration(
                store_name=self.backend_group, reason=reason) from e
        if fsid and self.pool:
            self._url_prefix = "rbd://%s/%s/" % (_quote(fsid), _quote(self.pool))
        else:
            self._url_prefix = "rbd://"

    # -- the rados connection ------------------------------------------------
    def _connect(self):
        if rados is None or rbd is None:
            raise exceptions.BackendException(
                "RBD store %s: the rados and rbd python bindings are not available"
                % self.backend_group)
        op = "connect to the Ceph cluster (conf %s)" % (self.conf_file or "librados default")
        try:
            client = rados.Rados(conffile=self.conf_file, rados_id=self.user)
        except rados.Error as e:
            raise exceptions.RemoteServiceUnavailable(
                message="RBD %s failed: cannot read the configuration: %s: %s"
                        % (op, type(e).__name__, e)) from e
        try:
            if self.connect_timeout >= 0:
                t = str(self.connect_timeout)
                client.conf_set("rados_osd_op_timeout", t)
                client.conf_set("rados_mon_op_timeout", t)
                client.conf_set("client_mount_timeout", t)
            client.connect()
        except rados.Error as e:
            with contextlib.suppress(Exception):
                client.shutdown()
            err = _translate(e, op, user=self.user or "admin (librados default)")
            if not isinstance(err, (exceptions.Forbidden, exceptions.StorageWriteDenied)):
                err = exceptions.RemoteServiceUnavailable(message=str(err))
            raise err from e
        return client

    def _acquire(self):
        with self._lock:
            if self._cluster is None:
                self._cluster = _Cluster(self._connect())
            cluster = self._cluster
            cluster.users += 1
            return cluster

    def _release(self, cluster, broken=False):
        with self._lock:
            cluster.users -= 1
            if broken and self._cluster is cluster:
                LOG.warning("RBD store %s: dropping the rados connection after an error; "
                            "the next operation reconnects", self.backend_group)
                self._cluster = None
                cluster.stale = True
            shutdown = cluster.stale and cluster.users == 0
        if shutdown:
            with contextlib.suppress(Exception):
                cluster.client.shutdown()

    def __del__(self):
        if not sys.is_finalizing():
            with contextlib.suppress(Exception):
                self.close()

    def close(self):
        """Shut the rados connection down (once no operation uses it)."""
        self._invalidate()
        with self._lock:
            cluster, self._cluster = self._cluster, None
            if cluster is None:
                return
            cluster.stale = True
            shutdown = cluster.users == 0
        if shutdown:
            with contextlib.suppress(Exception):
                cluster.client.shutdown()

    @contextlib.contextmanager
    def _rados(self, op, write=False):
        """The connected rados handle; rados/rbd errors become gsfs errors."""
        cluster = self._acquire()
        broken = False
        try:
            yield cluster.client
        except (rados.Error, rbd.Error) as e:
            broken = _is_connection_error(e)
            raise _translate(e, op, write=write, user=self.user) from e
        finally:
            self._release(cluster, broken)

    @contextlib.contextmanager
    def _ioctx(self, pool, op, image=None, write=False, whole_pool=False):
        """An ioctx on ``pool``; rados/rbd errors in the block become gsfs errors
        naming ``op``, ``pool`` and ``image``. A missing pool is NotFound, or,
        for ``whole_pool`` operations (adding, listing, cleaning up: no image
        is named), a BackendException naming the fix."""
        cluster = self._acquire()
        broken = False
        try:
            try:
                ioctx = cluster.client.open_ioctx(pool)
            except rados.ObjectNotFound as e:
                if whole_pool:
                    # the store's configuration is wrong, not an image missing
                    # (ENOENT made ls print nothing)
                    raise exceptions.BackendException(
                        "RADOS pool %s of store %s does not exist (%s): create it (ceph osd "
                        "pool create %s; rbd pool init %s) or set rbd_store_pool"
                        % (pool, self.backend_group, e, pool, pool)) from e
                raise exceptions.NotFound(
                    message="RADOS pool %s does not exist (%s)" % (pool, e)) from e
            with ioctx:
                yield ioctx
        except (rados.Error, rbd.Error) as e:
            broken = _is_connection_error(e)
            raise _translate(e, op, pool, image, write=write, user=self.user) from e
        finally:
            self._release(cluster, broken)

    @contextlib.contextmanager
    def _read_handle(self, pool, name, snapshot):
        """An open read-only handle on ``name@snapshot`` from the cache (or a new
        one); rados/rbd errors become gsfs errors."""
        key = (pool, name, snapshot)
        now = time.monotonic()
        handle = None
        with self._lock:
            handle = self._handles.pop(key, None)
            if handle is not None and now - handle.opened > READ_HANDLE_MAX_AGE:
                self._evict(handle)
                handle = None
            if handle is not None:
                self._handles[key] = handle            # most recently used last
                handle.users += 1
        if handle is None:
            handle = self._open_handle(key)
        broken = False
        try:
            yield handle
        except (rados.Error, rbd.Error) as e:
            broken = True
            if _is_connection_error(e):
                with self._lock:
                    if self._cluster is handle.cluster:
                        self._cluster = None             # the next operation reconnects
                        handle.cluster.stale = True
            raise _translate(e, "read", pool, name, user=self.user) from e
        finally:
            with self._lock:
                handle.users -= 1
                if broken:
                    self._evict(handle)
                close = handle.evicted and handle.users == 0
            if close:
                self._close_handle(handle)

    def _open_handle(self, key):
        pool, name, snapshot = key
        cluster = self._acquire()
        ioctx = image = None
        try:
            ioctx = cluster.client.open_ioctx(pool)
            image = _open_image(ioctx, name, snapshot)
            handle = _OpenImage(key, cluster, ioctx, image)
        except BaseException as e:
            _close_quietly(image, ioctx)
            self._release(cluster, isinstance(e, (rados.Error, rbd.Error))
                          and _is_connection_error(e))
            if isinstance(e, rados.ObjectNotFound) and ioctx is None:
                raise exceptions.NotFound(
                    message="RADOS pool %s does not exist (%s)" % (pool, e)) from e
            if isinstance(e, (rados.Error, rbd.Error)):
                raise _translate(e, "open", pool, name, user=self.user) from e
            raise
        handle.users = 1
        with self._lock:
            old = self._handles.pop(key, None)
            if old is not None:
                self._evict(old)
            self._handles[key] = handle
            while len(self._handles) > READ_HANDLES_MAX:
                self._evict(next(iter(self._handles.values())))
        return handle

    def _evict(self, handle):
        """Drop ``handle`` from the cache (lock held); closed once unused."""
        if self._handles.get(handle.key) is handle:
            del self._handles[handle.key]
        if not handle.evicted:
            handle.evicted = True
            if handle.users == 0:
                # closing under the lock is fine: librbd's close of a read-only
                # image does not call back into this store
                self._close_handle(handle)

    def _close_handle(self, handle):
        handle.close()
        self._release(handle.cluster)

    def _invalidate(self, pool=None, name=None):
        """Forget cached handles (of one image, or all)."""
        with self._lock:
            for handle in list(self._handles.values()):
                if name is None or handle.key[:2] == (pool, name):
                    self._evict(handle)

    def _get_fsid(self):
        if self._fsid is None:
            with self._rados("read the cluster fsid") as client:
                self._fsid = client.get_fsid()
        return self._fsid

    # -- helpers ---------------------------------------------------------------
    def _pool_of(self, loc):
        return loc.pool or self.pool

    def _location(self, image_id, pool=None, snapshot=DEFAULT_SNAPNAME, fsid=None):
        specs = {"fsid": fsid or self._get_fsid(), "pool": pool or self.pool,
                 "image": image_id, "snapshot": snapshot}
        loc = location.Location("rbd", StoreLocation, self.conf, image_id=image_id,
                                store_specs=specs, backend=self.backend_group)
        return loc

    def _short_location(self, image_id):
        """The 1-component form ``rbd://<image>`` (configured pool, no snapshot)."""
        return location.Location("rbd", StoreLocation, self.conf, image_id=image_id,
                                 store_specs={"image": image_id}, backend=self.backend_group)

    def _tmp_name(self, prefix, image_id):
        # <prefix><rand>.<pid>.<host>.<id>: rand, pid and host (dots replaced)
        # contain no '.', so cleanup_leftovers can split the id off any host's names
        return "%s%s.%d.%s.%s" % (prefix, secrets.token_hex(6), os.getpid(), _host(), image_id)

    @staticmethod
    def _parse_tmp_name(name):
        """(prefix, pid, host, image_id) of a temp/aside name, or None."""
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            if name.startswith(prefix):
                parts = name[len(prefix):].split(".", 3)
                if len(parts) == 4 and parts[1].isdigit():
                    return prefix, int(parts[1]), parts[2], parts[3]
        return None

    @staticmethod
    def _unprotect_snapshot(image, snap_name):
        try:
            image.unprotect_snap(snap_name)
        except rbd.InvalidArgument:
            # librbd says EINVAL when the snapshot is not protected (any more)
            LOG.debug("Snapshot %s is unprotected already", snap_name)

    def _delete_image(self, ioctx, pool, image_name, snapshot_name=None):
        """glance_store's delete: snapshot first, then the image; the trash for an
        image that still has snapshots (clone v2 children keep a trashed snap).

        NotFound if the image does not exist; InUseByStore if it (or the snapshot)
        is busy. Other rados/rbd errors propagate to the caller's ``_ioctx``.
        """
        try:
            if snapshot_name is not None:
                with _open_image(ioctx, image_name, read_only=False) as image:
                    try:
                        self._unprotect_snapshot(image, snapshot_name)
                        image.remove_snap(snapshot_name)
                    except rbd.ImageNotFound as exc:
                        LOG.debug("Snap Operating Exception %s Snapshot does not exist.", exc)
                    except rbd.ImageBusy as exc:
                        LOG.warning("Snap Operating Exception %s Snapshot is in use.", exc)
                        raise exceptions.InUseByStore() from exc
            rbd.RBD().remove(ioctx, image_name)
        except rbd.ImageHasSnapshots:
            LOG.warning("Unable to remove image %s: it has snapshot(s) left; trashing instead",
                        image_name)
            try:
                rbd.RBD().trash_move(ioctx, image_name)
                LOG.debug("Moved %s to trash", image_name)
            except rbd.ImageBusy as exc:
                LOG.warning("Unable to move in-use image %s to trash", image_name)
                raise exceptions.InUseByStore() from exc
        except rbd.ImageBusy as exc:
            LOG.warning("Remove image %s failed. It is in use.", image_name)
            raise exceptions.InUseByStore() from exc
        except rbd.ImageNotFound as exc:
            raise exceptions.NotFound(
                message="RBD image %s does not exist" % image_name) from exc

    def _discard(self, pool, name, why):
        """Best-effort removal of a temp/aside image; failures are logged (and the
        image is left for cleanup_leftovers)."""
        try:
            with self._ioctx(pool, "remove leftover", name, write=True) as ioctx:
                self._delete_image(ioctx, pool, name, DEFAULT_SNAPNAME)
        except exceptions.NotFound:
            pass
        except Exception as e:
            LOG.warning("RBD store %s: could not remove %s image %s/%s (%s); "
                        "cleanup_leftovers will retry", self.backend_group, why, pool, name, e)

    @staticmethod
    def _exists(ioctx, name):
        return _image_exists(ioctx, name)

    def _publish(self, ioctx, pool, src, dst, replace):
        """Give image ``src`` the name ``dst``.

        Without ``replace``: RBD rename, which refuses an existing ``dst``
        (Duplicate). With ``replace``: the existing ``dst`` is renamed aside
        first, ``src`` takes its name, then the old image is deleted as delete()
        would (snapshot, then image, else the trash); if it cannot be (in use,
        clones), it stays aside for cleanup_leftovers.

        NOT ATOMIC on rbd: librbd's rename refuses an existing target and has no
        exchange/overwrite mode, and an image name is an entry in the pool's
        rbd_directory object plus an rbd_id.<name> object, updated by separate
        operations. Between the two renames (two metadata round trips, a few ms)
        the id resolves to no image, and a reader opening it then gets NotFound.
        Readers that already opened the old image keep reading it (librbd opens
        by internal id). The old image stays intact until the new one is
        complete, and is renamed back if the second rename fails.
        """
        self._invalidate(pool, src)
        self._invalidate(pool, dst)
        aside = marker = None
        try:
            if replace and self._exists(ioctx, dst):
                marker = self._tmp_name(OLD_PREFIX, dst)
                with _WRITING_LOCK:
                    _WRITING.add(marker)      # not cleanup_leftovers' business yet
                try:
                    rbd.RBD().rename(ioctx, dst, marker)
                    aside = marker
                except rbd.ImageNotFound:
                    pass                      # deleted meanwhile: nothing to replace
            self._rename_and_drop(ioctx, pool, src, dst, aside)
        finally:
            if marker is not None:
                with _WRITING_LOCK:
                    _WRITING.discard(marker)

    def _rename_and_drop(self, ioctx, pool, src, dst, aside):
        try:
            if not _image_exists(ioctx, src):
                raise _missing(src)       # never let librbd's rename fail to open src
            rbd.RBD().rename(ioctx, src, dst)
        except rbd.ImageExists as e:
            if aside is not None:
                self._rename_back(ioctx, pool, aside, dst)
            raise exceptions.Duplicate(message="RBD image %s already exists" % dst) from e
        except BaseException:
            if aside is not None:
                self._rename_back(ioctx, pool, aside, dst)
            raise
        if aside is not None:
            try:
                self._delete_image(ioctx, pool, aside, DEFAULT_SNAPNAME)
            except exceptions.NotFound:
                pass
            except Exception as e:
                LOG.warning("RBD store %s: replaced image %s, but the old one (now %s) "
                            "could not be removed: %s; cleanup_leftovers will retry",
                            self.backend_group, dst, aside, e)

    def _rename_back(self, ioctx, pool, aside, dst):
        try:
            rbd.RBD().rename(ioctx, aside, dst)
        except Exception as e:
            LOG.error("RBD store %s: could not rename %s/%s back to %s: %s",
                      self.backend_group, pool, aside, dst, e)

    @staticmethod
    def _timestamp_ns(image):
        """The image's modification time (ns since the epoch) if the binding offers
        it (whole seconds), else None."""
        for name in ("modify_timestamp", "create_timestamp"):
            getter = getattr(image, name, None)
            if getter is None:
                continue
            try:
                dt = getter()
            except Exception:
                continue
            # the Pacific binding returns a naive local-time datetime
            # (datetime.fromtimestamp); .timestamp() reads naive values as local
            return int(dt.timestamp()) * 1_000_000_000
        return None

    @staticmethod
    def _stored_mtime_ns(image):
        try:
            return driver.parse_mtime_ns(image.metadata_get(META_PREFIX + "mtime"))
        except (KeyError, ValueError):
            return None

    def _mtime_ns(self, image):
        ns = self._stored_mtime_ns(image)
        return self._timestamp_ns(image) if ns is None else ns

    def _info(self, image, name):
        ns = self._mtime_ns(image)
        return driver.ImageInfo(name, image.stat()["size"],
                                None if ns is None else ns / 1e9, ns, self._version(image))

    @staticmethod
    def _version(image):
        """ImageInfo.version of an open image: its RBD image id, which librbd
        gives every new image (an add, a replace) and which rename keeps; read
        from the open image (no request), so that size, mtime and version are
        those of one image even if the name was reused since the listing.
        None for a format 1 image (it has no id)."""
        try:
            return image.id() or None
        except rbd.Error:
            return None

    # -- glance_store API ----------------------------------------------------
    @capabilities.check
    def get(self, location, offset=0, chunk_size=None, context=None):
        """(chunks, size). gsfs serves offset/chunk_size (glance_store refuses
        them): ``chunk_size`` is the number of bytes wanted, and then the size."""
        loc = location.store_location
        size = self.get_size(location)
        offset = int(offset or 0)
        end = offset + chunk_size if chunk_size else None
        return (ImageIterator(self, self._pool_of(loc), loc.image, loc.snapshot, offset, end),
                chunk_size or size)

    def get_size(self, location, context=None):
        loc = location.store_location
        pool = self._pool_of(loc)
        with self._ioctx(pool, "stat", loc.image) as ioctx:
            try:
                with _open_image(ioctx, loc.image, loc.snapshot) as image:
                    return image.stat()["size"]
            except rbd.ImageNotFound as e:
                msg = "RBD image %s does not exist" % loc.get_uri()
                LOG.debug(msg)
                raise exceptions.NotFound(message=msg) from e

    @capabilities.check
    def delete(self, location, context=None):
        loc = location.store_location
        pool = self._pool_of(loc)
        self._invalidate(pool, loc.image)
        with self._ioctx(pool, "delete", loc.image, write=True) as ioctx:
            self._delete_image(ioctx, pool, loc.image, loc.snapshot)

    def _add(self, image_id, image_file, image_size, hashing_algo,
             verifier=None, replace=False):
        image_size = int(image_size or 0)
        hasher = hashing.ImageHasher(hashing_algo, verifier)
        sizes = driver.SizeChecker(image_size)
        pool = self.pool
        fsid = self._get_fsid()
        tmp = self._tmp_name(TMP_PREFIX, image_id)
        chunk_size = self.WRITE_CHUNKSIZE
        with self._ioctx(pool, "add", image_id, write=True, whole_pool=True) as ioctx:
            if not replace and self._exists(ioctx, image_id):
                raise exceptions.Duplicate(message="RBD image %s already exists" % image_id)
            features = self._features()
            if image_size == 0:
                LOG.debug("Image size unknown: resizing %s while writing", image_id)
            LOG.debug("creating image %s (as %s) with order %d and size %d",
                      image_id, tmp, self.order, image_size)
            with _WRITING_LOCK:
                _WRITING.add(tmp)
            try:
                rbd.RBD().create(ioctx, tmp, image_size, self.order,
                                 old_format=False, features=features)
            except BaseException:
                with _WRITING_LOCK:
                    _WRITING.discard(tmp)
                raise
            try:
                with _open_image(ioctx, tmp, read_only=False) as image:
                    current = image_size
                    resize_amount = chunk_size
                    offset = 0
                    writes = _AioWrites(image, 2 * chunk_size, tmp)
                    try:
                        for chunk in driver.chunkreadable(image_file, chunk_size):
                            if not isinstance(chunk, bytes):
                                chunk = bytes(chunk)     # librbd's write wants bytes
                            n = len(chunk)
                            sizes.add(n)                 # "Size exceeds" before writing
                            if image_size == 0 and current < offset + n:
                                # glance_store's resize-on-write: the step doubles up
                                # to 8 GiB; a big chunk from an iterator may need more
                                while current < offset + n:
                                    resize_amount = min(resize_amount * 2, MAX_RESIZE_STEP)
                                    current += resize_amount
                                writes.wait_all()
                                image.resize(current)
                            hasher.update(chunk)         # queued to the hash threads
                            if not (self.thin_provisioning and chunk.count(0) == n):
                                writes.submit(chunk, offset)
                            offset += n
                            del chunk
                    finally:
                        writes.wait_all(check=False)     # nothing in flight past here
                    writes.check()
                    sizes.finish()                   # "Size mismatch"
                    if image_size == 0 and current != offset:
                        image.resize(offset)         # trim the overshoot
                    for key, value in (("checksum", hasher.checksum),
                                       ("os_hash_algo", hashing_algo),
                                       ("os_hash_value", hasher.hash_value),
                                       ("mtime", driver.format_mtime_ns(time.time_ns()))):
                        image.metadata_set(META_PREFIX + key, value)
                    image.create_snap(DEFAULT_SNAPNAME)
                    image.protect_snap(DEFAULT_SNAPNAME)
                hasher.before_publish()
                self._publish(ioctx, pool, tmp, image_id, replace)
            except BaseException as e:
                if isinstance(e, (rbd.Error, rados.Error, exceptions.GlanceStoreException,
                                  exceptions.BackendException, OSError)):
                    LOG.error("Failed to store image %s in pool %s: %s: %s",
                              image_id, pool, type(e).__name__, e)
                else:
                    # the image data's source stopped it (a FUSE writer's
                    # Ctrl-C, which its caller reports): not a store failure
                    LOG.info("Stopped storing image %s in pool %s: its data source raised "
                             "%s: %s", image_id, pool, type(e).__name__, e)
                self._discard(pool, tmp, "unfinished upload")
                if isinstance(e, rbd.IncompleteWriteError):
                    raise exceptions.Invalid(
                        message="Failed to store image %s: image data exceeded the "
                                "expected size: %s" % (image_id, e)) from e
                raise
            finally:
                with _WRITING_LOCK:
                    _WRITING.discard(tmp)
        metadata = {}
        if self.backend_group:
            metadata["store"] = self.backend_group
        uri = StoreLocation({"fsid": fsid, "pool": pool, "image": image_id,
                             "snapshot": DEFAULT_SNAPNAME}, self.conf).get_uri()
        return uri, hasher.size, hasher.checksum, hasher.hash_value, metadata

    def _features(self):
        with self._rados("read rbd_default_features") as client:
            features = client.conf_get("rbd_default_features")
        if features is None or int(features) == 0:
            return rbd.RBD_FEATURE_LAYERING
        return int(features)

    # -- gsfs extensions -----------------------------------------------------
    def location_for(self, image_id):
        image_id = driver.validate_image_id(image_id, self.max_id_length)
        return self._location(image_id)

    def check_access(self):
        """Open the pool: fails as list_images() does (a missing pool names the fix)."""
        with self._ioctx(self.pool, "check", whole_pool=True):
            pass

    def list_images(self):
        pool = self.pool
        with self._ioctx(pool, "list images", whole_pool=True) as ioctx:
            names = rbd.RBD().list(ioctx)
            infos = []
            for name in names:
                if name.startswith(HIDDEN_PREFIX):
                    continue
                try:
                    with _open_image(ioctx, name) as image:
                        infos.append(self._info(image, name))
                except rbd.ImageNotFound:
                    continue             # removed since the listing
        return infos

    def stat_image(self, location):
        loc = location.store_location
        pool = self._pool_of(loc)
        with self._ioctx(pool, "stat", loc.image) as ioctx:
            with _open_image(ioctx, loc.image, loc.snapshot) as image:
                return self._info(image, loc.image)

    def read(self, location, offset, length):
        loc = location.store_location
        pool = self._pool_of(loc)
        if loc.snapshot:
            # a snapshot never changes: serve reads from a cached open handle
            with self._read_handle(pool, loc.image, loc.snapshot) as handle:
                if offset >= handle.size or length <= 0:
                    return b""
                return handle.image.read(offset, min(length, handle.size - offset))
        with self._ioctx(pool, "read", loc.image) as ioctx:
            with _open_image(ioctx, loc.image, loc.snapshot) as image:
                size = image.size()
                if offset >= size or length <= 0:
                    return b""
                return image.read(offset, min(length, size - offset))

    def get_image_meta(self, location):
        loc = location.store_location
        pool = self._pool_of(loc)
        with self._ioctx(pool, "read metadata", loc.image) as ioctx:
            with _open_image(ioctx, loc.image) as image:
                meta = {key[len(META_PREFIX):]: value
                        for key, value in image.metadata_list()
                        if key.startswith(META_PREFIX)}
                if "mtime" not in meta:
                    ns = self._timestamp_ns(image)
                    if ns is not None:
                        meta["mtime"] = driver.format_mtime_ns(ns)
        return meta

    def set_image_meta(self, location, meta):
        """Merge ``meta`` (str keys and values; None removes a key) into the image's
        gsfs metadata; ``mtime`` is stored as format_mtime_ns writes it."""
        meta = dict(meta)
        for key, value in meta.items():
            if not isinstance(key, str) or not key or (
                    value is not None and not isinstance(value, (str, int, float))):
                raise exceptions.Invalid("Invalid image metadata %r: %r" % (key, value))
        if meta.get("mtime") is not None:
            try:
                meta["mtime"] = driver.format_mtime_ns(driver.parse_mtime_ns(meta["mtime"]))
            except ValueError as e:
                raise exceptions.Invalid("Invalid mtime %r" % (meta["mtime"],)) from e
        loc = location.store_location
        pool = self._pool_of(loc)
        with self._ioctx(pool, "write metadata", loc.image, write=True) as ioctx:
            with _open_image(ioctx, loc.image, read_only=False) as image:
                for key, value in meta.items():
                    if value is None:
                        with contextlib.suppress(KeyError):
                            image.metadata_remove(META_PREFIX + key)
                    else:
                        image.metadata_set(META_PREFIX + key, str(value))

    def rename(self, location, new_id, replace=False):
        new_id = driver.validate_image_id(new_id, self.max_id_length)
        loc = location.store_location
        pool = self._pool_of(loc)
        if new_id != loc.image:
            with self._ioctx(pool, "rename", loc.image, write=True) as ioctx:
                if not self._exists(ioctx, loc.image):
                    raise exceptions.NotFound(
                        message="RBD image %s does not exist" % loc.image)
                if not replace and self._exists(ioctx, new_id):
                    raise exceptions.Duplicate(
                        message="RBD image %s already exists" % new_id)
                self._publish(ioctx, pool, loc.image, new_id, replace)
        if loc.fsid and loc.snapshot:
            return self._location(new_id, pool=pool, snapshot=loc.snapshot, fsid=loc.fsid)
        return self._short_location(new_id)

    def capacity(self):
        """(total, free) bytes of the cluster, or None when unknown: the cluster
        statistics come from the mgr, and without one they are all zeros."""
        with self._rados("read cluster statistics") as client:
            stats = client.get_cluster_stats()
        total = int(stats.get("kb", 0)) * 1024
        if total <= 0:
            return None
        return total, int(stats.get("kb_avail", 0)) * 1024

    def cleanup_leftovers(self):
        """Remove temp images of uploads that died and old images a replace moved
        aside; an aside image whose id has no image any more (the writer died
        between the two renames) is renamed back instead.

        Left alone: names this process is writing, names of live processes on
        this host, images someone still has open (a writer holds a watch), and
        another host's images changed in the last FOREIGN_GRACE seconds.
        """
        pool = self.pool
        done = []
        host = _host()
        me = os.getpid()
        with self._ioctx(pool, "clean up leftovers", write=True, whole_pool=True) as ioctx:
            for name in rbd.RBD().list(ioctx):
                parsed = self._parse_tmp_name(name)
                if parsed is None:
                    continue
                with _WRITING_LOCK:
                    if name in _WRITING:
                        continue
                prefix, pid, name_host, image_id = parsed
                if name_host == host and pid != me and process.process_alive(pid):
                    continue
                try:
                    with _open_image(ioctx, name) as image:
                        watchers = list(image.watchers_list())
                        changed = self._timestamp_ns(image)
                except rbd.ImageNotFound:
                    continue
                if watchers:
                    done.append("rbd store %s: skipped %s/%s: still open by %d client(s)"
                                % (self.backend_group, pool, name, len(watchers)))
                    continue
                if name_host != host and changed is not None and \
                        time.time() - changed / 1e9 < FOREIGN_GRACE:
                    continue
                if prefix == OLD_PREFIX and not self._exists(ioctx, image_id):
                    try:
                        if not _image_exists(ioctx, name):
                            continue
                        rbd.RBD().rename(ioctx, name, image_id)
                        done.append("rbd store %s: restored %s/%s as %s (a replace did "
                                    "not finish)" % (self.backend_group, pool, name, image_id))
                        continue
                    except rbd.ImageExists:
                        pass
                try:
                    self._delete_image(ioctx, pool, name, DEFAULT_SNAPNAME)
                except exceptions.NotFound:
                    continue
                except exceptions.InUseByStore:
                    done.append("rbd store %s: could not remove %s/%s: in use"
                                % (self.backend_group, pool, name))
                    continue
                what = "unfinished upload" if prefix == TMP_PREFIX else "replaced image"
                done.append("rbd store %s: removed %s %s/%s"
                            % (self.backend_group, what, pool, name))
        return done


def _host():
    """This host's name as it appears in temp names (no dots)."""
    return socket.gethostname().replace(".", "_") or "localhost"

