"""The pyfuse3 handlers. Each one validates, translates and delegates:

    lookup/getattr/readdir  → Namespace (store.list_images / stat_image, cached)
    by-name/ (readdir, lookup, readlink) → CatalogView.links (Glance's listing)
    create + write + flush  → StreamSession / SpoolSession → store.add_image()
    open + read             → ReadSession → store.read()
    unlink                  → store.delete()
    rename                  → store.rename()       (between stores: EXDEV, or for
                              an image Glance's catalog lists: CatalogView.move,
                              Glance's copy-image, verify, delete from the source)
    setattr (mtime)         → store.set_image_meta()
    getxattr/setxattr       → xattrs (checksums: stored metadata, or one full read)
    statfs                  → store.capacity()

Every handler named in ``HANDLERS`` is wrapped by ``errors.funnel``: whatever
it raises becomes one errno, logged once and counted per store and operation
(``self.failures``), and nothing can end the daemon. Handlers only raise;
they do not catch store errors themselves. Background work (uploads, the
spool's delayed commit, readahead) is started with ``spawn``, which reports
failures the same way.

Blocking calls run in worker threads (Namespace.run, bounded by worker_threads;
uploads by max_uploads).
"""

import errno
import logging
import os
import re
import time

import pyfuse3
import trio

from gsfs import driver, exceptions
from gsfs.budget import BUDGET
from gsfs.fs import errors, metrics, xattrs
from gsfs.fs.namespace import BLKSIZE, ROOT_INODE, ByNameDir, Image, Link, Namespace, StoreDir
from gsfs.fs.read_session import ReadSession
from gsfs.fs.write_session import SpoolSession, StreamSession

LOG = logging.getLogger("gsfs.fs")
RSYNC_TEMP = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")


STATFS_TTL = 2.0      # seconds a statfs answer is reused


class Handle:
    """An open file: what it reads from and writes to."""

    __slots__ = ("fh", "image", "session", "reader", "created", "pid")

    def __init__(self, fh, image, session=None, reader=None, created=False,
                 pid=None):
        self.fh = fh
        self.image = image
        self.session = session
        self.reader = reader
        self.created = created     # this open created the session (it commits it)
        self.pid = pid             # the opener: its fate decides a commit


class Stats:
    """Per-store counters for the status channel and metrics."""

    def __init__(self):
        self.per_store = {}

    def count(self, store_id, key, n=1):
        counters = self.per_store.setdefault(
            store_id, {"bytes_in": 0, "bytes_out": 0, "uploads": 0, "failed_uploads": 0,
                       "deletes": 0})
        counters[key] = counters.get(key, 0) + n


def _name(raw):
    return os.fsdecode(raw)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    # streaming uploads need the writes in order and the close to see errors:
    # the kernel's writeback cache would reorder and defer them.
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.worker_limiter = trio.CapacityLimiter(settings.worker_threads)
        self.upload_limiter = trio.CapacityLimiter(settings.max_uploads)
        self.namespace = Namespace(settings, self.worker_limiter)
        self.handles = {}
        self.dir_handles = {}
        self.next_fh = 1
        self.nursery = None            # set by the daemon before serving
        self.uploads = set()
        self.spools = set()
        self.downloads = set()
        self.spool_used = 0
        self.stats = Stats()
        self.failures = errors.Failures()
        self.metrics = metrics.Metrics(self)
        self.catalog = None            # a CatalogView when [gsfs_catalog] is configured
        self.accepting_writes = True
        self.checksum_locks = {}
        self.mountpoint = None
        self.config_files = []         # absolute paths the daemon loaded (gsfs audit reads them)
        self.config_dir = None
        self.started = time.time()
        self._statfs_cache = None      # (when, (total, free)) of the last statfs

    # -- helpers ---------------------------------------------------------------
    def _fh(self):
        fh = self.next_fh
        self.next_fh += 1
        return fh

    def _node(self, ino):
        if ino == ROOT_INODE:
            return None
        return self.namespace.node(ino)

    def _store_dir(self, ino, op, name=""):
        node = self._node(ino)
        if isinstance(node, ByNameDir):
            raise errors.refuse(errno.EROFS, op, "%s/%s" % (node.name, name),
                                "by-name/ shows Glance's image names and is read-only; "
                                "write, remove and rename images in their store directory")
        if not isinstance(node, StoreDir):
            raise errors.refuse(errno.EPERM, op, name or "/",
                                "images live in the store directories; the root holds "
                                "only one directory per store")
        return node

    async def _run(self, func, *args):
        return await self.namespace.run(func, *args)

    def spawn(self, func, what, *args):
        """Start background work in the daemon's nursery; its failure is
        reported (logged once, counted), never raised into the nursery."""

        async def guarded():
            try:
                await func(*args)
            except pyfuse3.FUSEError:
                pass  # a session's errno: reported where it arose
            except Exception as e:  # noqa: BLE001 - nothing may end the daemon
                errors.report(e, "background", what, None, self.failures)

        self.nursery.start_soon(guarded, name=what)

    def describe(self, op, args):
        """(path, store id) a request is about, for the funnel's log line."""
        try:
            first = args[0] if args else None
            if op in BY_NAME:
                node = self._node(first)
                name = _name(args[1])
                if isinstance(node, StoreDir):
                    return "%s/%s" % (node.store_id, name), node.store_id
                if isinstance(node, ByNameDir):
                    return "%s/%s" % (node.name, name), None
                return name, None
            if op in BY_DIR_FH:
                entry = self.dir_handles.get(first)
                node = self._node(entry[0]) if entry is not None else None
                if isinstance(node, StoreDir):
                    return node.store_id + "/", node.store_id
                return "/" if entry is not None else "dir fh %s" % first, None
            if op in BY_FH:
                h = self.handles.get(first)
                if h is not None:
                    return h.image.path, h.image.store_dir.store_id
                return "fh %s" % first, None
            if op in BY_INODE:
                node = self._node(first)
                if isinstance(node, Image):
                    return node.path, node.store_dir.store_id
                if isinstance(node, StoreDir):
                    return node.store_id, node.store_id
                if isinstance(node, (ByNameDir, Link)):
                    return node.path, None
            return "/", None
        except Exception:  # noqa: BLE001 - describing must never fail
            return "?", None

    def _writable_dir(self, d, op, path):
        if d.read_only:
            why = ("the mount is read-only" if self.settings.read_only else
                   "store %s cannot add images (type %s, or its configuration failed)"
                   % (d.store_id, d.store.STORE_TYPE))
            raise errors.refuse(errno.EROFS, op, path, why, d.store_id)
        if not self.accepting_writes:
            raise errors.refuse(errno.EROFS, op, path, "gsfs is shutting down", d.store_id)

    def _validate_name(self, d, name, op):
        try:
            return driver.validate_image_id(name, d.store.max_id_length)
        except exceptions.Invalid as e:
            code = errno.ENAMETOOLONG if "longer" in str(e) else errno.EINVAL
            raise errors.refuse(code, op, "%s/%s" % (d.store_id, name), str(e), d.store_id) from e

    # -- lookup and attributes ---------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        name = _name(name)
        if parent_inode == ROOT_INODE:
            d = self.namespace.root_entries().get(name)
            if d is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.namespace.attrs(d)
        d = self._node(parent_inode)
        if isinstance(d, ByNameDir):
            link = (await self._links()).get(name)
            if link is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.namespace.attrs(link)
        if not isinstance(d, StoreDir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        image = await self.namespace.lookup(d, name)
        if image is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.namespace.attrs(image)

    async def _links(self):
        """by-name/'s Link nodes, from the catalog's listing (cached for catalog_ttl)."""
        targets = await self.catalog.links(set(self.namespace.store_dirs))
        return self.namespace.set_links(targets)

    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, Link):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        if isinstance(node, Image) and node.committed and \
                node.store_dir.entries.get(node.name) is node and \
                not self.namespace._fresh(node.checked_at):
            try:
                await self.namespace.lookup(node.store_dir, node.name)
            except errors.KNOWN as e:
                # the attributes known are served; the next request asks again
                LOG.warning("getattr %s: the store could not be asked (%s: %s); serving "
                            "the attributes cached %.0f s ago", node.path,
                            type(e).__name__, e, time.monotonic() - node.checked_at)
        return self.namespace.attrs(node)

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if not isinstance(node, Image):
            return self.namespace.attrs(node)  # chmod/chown/utimes on dirs: no effect
        image = node
        if fields.update_size:
            await self._truncate(image, attr.st_size)
        if fields.update_mtime:
            await self._set_mtime(image, attr.st_mtime_ns)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            LOG.debug("chmod/chown %s: accepted without effect (mode and owner come from "
                      "the mount options)", image.path)
        return self.namespace.attrs(image)

    async def _truncate(self, image, size):
        if image.session is not None:
            await image.session.truncate(size)
            return
        if size != image.size:
            raise errors.refuse(errno.EEXIST, "truncate", image.path,
                                "images are immutable; truncating from %d to %d bytes would "
                                "change it" % (image.size, size), image.store_dir.store_id)

    async def _set_mtime(self, image, mtime_ns):
        if image.pending or image.session is not None:
            # being written (or replaced, -o allow_replace): applied at commit, to
            # the new data, not to the image being replaced
            image.pending_mtime_ns = mtime_ns
            return
        d = image.store_dir
        if d.read_only:
            raise errors.refuse(errno.EROFS, "utimens", image.path,
                                "the store cannot store a modification time", d.store_id)
        store = d.store
        text = driver.format_mtime_ns(mtime_ns)
        await self._run(lambda: store.set_image_meta(store.location_for(image.name),
                                                     {"mtime": text}))
        image.mtime_ns = mtime_ns
        if image.meta is not None:
            image.meta["mtime"] = text

    # -- directories -------------------------------------------------------------
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if isinstance(node, (Image, Link)):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._fh()
        self.dir_handles[fh] = (inode, None)
        return fh

    async def readdir(self, fh, start_id, token):
        inode, snapshot = self.dir_handles[fh]
        if snapshot is None or start_id == 0:
            if inode == ROOT_INODE:
                entries = self.namespace.root_entries()
            elif isinstance(self._node(inode), ByNameDir):
                entries = await self._links()
            else:
                entries = await self.namespace.list_dir(self._node(inode))
            snapshot = [(os.fsencode(k), entries[k]) for k in sorted(entries)]
            self.dir_handles[fh] = (inode, snapshot)
        for index in range(start_id, len(snapshot)):
            name, node = snapshot[index]
            if not pyfuse3.readdir_reply(token, name, self.namespace.attrs(node), index + 1):
                break

    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise errors.refuse(errno.EPERM, "mkdir", _name(name),
                            "store directories are flat; a directory is a store and comes "
                            "from the configuration (enabled_backends)")

    async def rmdir(self, parent_inode, name, ctx):
        raise errors.refuse(errno.EPERM, "rmdir", _name(name),
                            "store directories come from the configuration")

    async def symlink(self, parent_inode, name, target, ctx):
        raise errors.refuse(errno.EPERM, "symlink", _name(name),
                            "stores hold images only; symbolic links are not supported")

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise errors.refuse(errno.EPERM, "link", _name(new_name),
                            "stores hold images only; hard links are not supported")

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise errors.refuse(errno.EPERM, "mknod", _name(name), "only regular files")

    # -- creating and writing ----------------------------------------------------
    def _new_session(self, image, flags, replace, pid):
        rdwr = (flags & os.O_ACCMODE) == os.O_RDWR
        # rsync (mkstemp) opens its temp file .NAME.XXXXXX read-write but writes it
        # in order: stream it, so its close reports the store's error
        if rdwr and self.settings.spool_max > 0 and not RSYNC_TEMP.match(image.name):
            session = SpoolSession(self, image, replace)
        else:
            session = StreamSession(self, image, replace)
            session.guard.writer_pid = pid      # asked again before the driver publishes
            session.start()
        image.session = session
        return session

    async def create(self, parent_inode, name, mode, flags, ctx):
        name = _name(name)
        d = self._store_dir(parent_inode, "create", name)
        path = "%s/%s" % (d.store_id, name)
        self._writable_dir(d, "create", path)
        self._validate_name(d, name, "create")
        existing = d.entries.get(name)
        if existing is None or existing.committed:
            existing = await self.namespace.lookup(d, name)
        replace = False
        if existing is not None:
            if existing.pending or not self.settings.allow_replace:
                raise errors.refuse(errno.EEXIST, "create", path,
                                    "the image exists and images are immutable "
                                    "(mount with -o allow_replace to replace atomically)",
                                    d.store_id)
            replace = True
            image = existing
        else:
            image = self.namespace.new_image(d, name, committed=False)
        session = self._new_session(image, flags, replace, ctx.pid)
        return self._open_handle(image, session, created=True, pid=ctx.pid), \
            self.namespace.attrs(image)

    def _open_handle(self, image, session=None, reader=None, created=False, pid=None):
        fh = self._fh()
        self.handles[fh] = Handle(fh, image, session, reader, created, pid)
        image.open_count += 1
        if isinstance(session, SpoolSession):
            session.opened()
        # A streamed file's writes bypass the page cache (FOPEN_DIRECT_IO): the
        # kernel hands gsfs the writer's own buffer instead of copying it into
        # page-cache pages first (cp into the file store: 0.6-0.85 -> 0.22
        # CPU-s of cp per GiB), and the pages of an upload that is abandoned
        # never reach the cache of the image's inode.
        return pyfuse3.FileInfo(fh=fh, direct_io=isinstance(session, StreamSession))

    async def open(self, inode, flags, ctx):
        image = self._node(inode)
        if isinstance(image, Link):
            raise pyfuse3.FUSEError(errno.ELOOP)   # O_NOFOLLOW of a by-name/ link
        if not isinstance(image, Image):
            raise pyfuse3.FUSEError(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        d = image.store_dir
        session = image.session
        if session is not None:
            if isinstance(session, SpoolSession) and not session.committing:
                return self._open_handle(image, session, pid=ctx.pid)
            raise errors.refuse(errno.EBUSY, "open", image.path,
                                "the image is being written (uploads have one writer and "
                                "can be read once committed)", d.store_id)
        if writable:
            self._writable_dir(d, "open", image.path)
            if flags & os.O_TRUNC:
                if not self.settings.allow_replace:
                    raise errors.refuse(errno.EEXIST, "open(O_TRUNC)", image.path,
                                        "images are immutable (mount with -o allow_replace "
                                        "to replace them atomically)", d.store_id)
                session = self._new_session(image, flags, replace=True, pid=ctx.pid)
                return self._open_handle(image, session, created=True, pid=ctx.pid)
        reader = ReadSession(self, image) if accmode != os.O_WRONLY else None
        return self._open_handle(image, reader=reader)

    async def write(self, fh, offset, buf):
        h = self.handles[fh]
        if h.session is None:
            raise errors.refuse(errno.EEXIST, "write", h.image.path,
                                "images are immutable; write a new image instead",
                                h.image.store_dir.store_id)
        n = await h.session.write(offset, buf)
        self.stats.count(h.image.store_dir.store_id, "bytes_in", n)
        return n

    async def flush(self, fh):
        h = self.handles.get(fh)
        if h is None or h.session is None:
            return
        session = h.session
        if isinstance(session, SpoolSession):
            session.closed_by(h.pid)
            return
        if not h.created:
            return
        # A writer being killed, or exiting non-zero, closes its files in the
        # kernel's exit path: that flush is not the end of a finished copy.
        if await session.abandon_if_writer_failed(h.pid):
            return
        # Only a flush after data was written commits: a shell's close of its
        # copy of the descriptor before the command writes must not publish an
        # empty image. Otherwise the release commits (errors then only logged).
        if session.wrote:
            await session.commit()

    async def fsync(self, fh, datasync):
        h = self.handles.get(fh)
        if h is None or h.session is None:
            return
        if isinstance(h.session, SpoolSession):
            await h.session.fsync()
        elif h.created:
            await h.session.commit()

    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if h is None:
            return
        image = h.image
        image.open_count -= 1
        if h.reader is not None:
            h.reader.close()
        session = h.session
        if isinstance(session, SpoolSession):
            session.released()
        elif isinstance(session, StreamSession) and h.created and not session.done.is_set():
            if await session.abandon_if_writer_failed(h.pid):   # a zombie still tells
                return
            try:
                await session.commit()
            except pyfuse3.FUSEError:
                pass  # already logged by the session; release cannot report it

    # -- reading -------------------------------------------------------------------
    async def read(self, fh, offset, size):
        h = self.handles[fh]
        if isinstance(h.session, SpoolSession):
            return await h.session.read(offset, size)
        if h.reader is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        data = await h.reader.read(offset, size)
        self.stats.count(h.image.store_dir.store_id, "bytes_out", len(data))
        return data

    # -- removing and renaming -------------------------------------------------------
    async def unlink(self, parent_inode, name, ctx):
        name = _name(name)
        d = self._store_dir(parent_inode, "unlink", name)
        path = "%s/%s" % (d.store_id, name)
        if d.read_only:
            self._writable_dir(d, "unlink", path)
        image = d.entries.get(name)
        if image is not None and image.session is not None and image.pending:
            await image.session.abort("unlinked while being written")
            self.namespace.drop(image)
            return
        store = d.store
        if self.catalog is not None and await self.catalog.unlink(d.store_id, name, path):
            self.stats.count(d.store_id, "deletes")
            if image is not None:
                self.namespace.drop(image)
            return
        await self._run(lambda: store.delete(store.location_for(name)))
        self.stats.count(d.store_id, "deletes")
        LOG.info("Deleted %s", path)
        if image is not None:
            self.namespace.drop(image)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old, new = _name(name_old), _name(name_new)
        src_dir = self._store_dir(parent_inode_old, "rename", old)
        dst_dir = self._store_dir(parent_inode_new, "rename", new)
        path = "%s/%s" % (src_dir.store_id, old)
        if flags & getattr(pyfuse3, "RENAME_EXCHANGE", 2):
            raise errors.refuse(errno.EINVAL, "rename", path, "RENAME_EXCHANGE is not supported")
        if src_dir is not dst_dir and self.catalog is not None:
            self._writable_dir(src_dir, "rename", path)
            self._writable_dir(dst_dir, "rename", path)
            if flags & getattr(pyfuse3, "RENAME_NOREPLACE", 1) and \
                    await self.namespace.lookup(dst_dir, new) is not None:
                raise errors.refuse(errno.EEXIST, "rename", path, "%s/%s exists"
                                    % (dst_dir.store_id, new), src_dir.store_id)
            image = src_dir.entries.get(old)
            busy = None
            if image is not None and (image.open_count or image.session is not None):
                busy = "it is open or being written through this mount"
            if await self.catalog.move(src_dir, dst_dir, old, new, path, busy=busy):
                self._move_node(src_dir, dst_dir, old)
                return
        if src_dir is not dst_dir:
            raise errors.refuse(errno.EXDEV, "rename", path,
                                "between stores an image is copied, not renamed (mv does "
                                "this by itself)", src_dir.store_id, level=logging.INFO)
        d = src_dir
        self._writable_dir(d, "rename", path)
        self._validate_name(d, new, "rename")
        image = await self.namespace.lookup(d, old)
        if image is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        target = await self.namespace.lookup(d, new)
        if self.catalog is not None:
            # a file being written is not Glance's yet; the image it would replace may be
            await self.catalog.check_rename(d.store_id, old if image.committed else None, path,
                                            target=new if target is not None else None)
        replace = False
        if target is not None:
            if target is image:
                return
            if not self.settings.allow_replace or flags & getattr(pyfuse3, "RENAME_NOREPLACE", 1):
                raise errors.refuse(errno.EEXIST, "rename", path,
                                    "%s/%s exists and images are immutable (mount with "
                                    "-o allow_replace to replace atomically)" % (d.store_id, new),
                                    d.store_id)
            if target.pending:
                raise errors.refuse(errno.EBUSY, "rename", path, "the target is being written")
            replace = True
        if image.pending and isinstance(image.session, StreamSession):
            # rsync renames its temp file right after close; the commit of an empty
            # file happens at release, which the kernel may send after the rename
            await image.session.commit()
        if image.pending:
            if isinstance(image.session, SpoolSession) and not image.session.committing:
                if replace:
                    # the upload publishes under the new name: over the target
                    image.session.replace = True
                self._rename_node(image, new, target)
                return
            raise errors.refuse(errno.EBUSY, "rename", path,
                                "the image is still being uploaded; rename it after close",
                                d.store_id)
        store = d.store
        await self._run(lambda: store.rename(store.location_for(old), new, replace=replace))
        self._rename_node(image, new, target)
        LOG.info("Renamed %s to %s/%s", path, d.store_id, new)

    def _move_node(self, src, dst, name):
        """After Glance moved image ``name`` from store ``src`` to ``dst``."""
        image = src.entries.get(name)
        old = dst.entries.get(name)
        if old is not None:
            self.namespace.drop(old)
        if image is None:
            dst.listed_at = None        # the next listing shows it
            return
        self.namespace.drop(image)
        image.store_dir = dst
        image.meta = None               # Glance's copy: its own metadata
        image.version = None
        dst.entries[name] = image
        image.checked_at = time.monotonic()
        dst.mtime = time.time()

    def _rename_node(self, image, new, target):
        d = image.store_dir
        if target is not None:
            self.namespace.drop(target)
        self.namespace.drop(image)
        image.name = new
        d.entries[new] = image
        image.checked_at = time.monotonic()

    # -- extended attributes ---------------------------------------------------------
    async def getxattr(self, inode, name, ctx):
        if xattrs.is_fast_refusal(name):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        node = self._node(inode)
        value = await xattrs.get(self, node, _name(name))
        return value.encode()

    async def listxattr(self, inode, ctx):
        return [n.encode() for n in xattrs.names(self._node(inode), self.catalog is not None)]

    async def setxattr(self, inode, name, value, ctx):
        if xattrs.is_fast_refusal(name):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        node = self._node(inode)
        name = _name(name)
        text = value.decode("utf-8", "replace").strip("\0")
        if node is None and name == xattrs.CONTROL:
            if text.strip() == "sync":
                if await self.sync_all():
                    # gsfs umount reports it; the log has one line per failed upload
                    raise pyfuse3.FUSEError(errno.EIO)
                return
            raise errors.refuse(errno.EINVAL, "setxattr", "/", "unknown control %r" % text)
        if isinstance(node, Image):
            xattrs.set_on_image(node, name, text)
            return
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode, name, ctx):
        node = self._node(inode)
        name = _name(name)
        if name in xattrs.names(node, self.catalog is not None):
            # rsync -X removes the attributes its source lacks: gsfs's own ones are
            # computed, so this is a no-op (as setxattr of them is), except that an
            # expected checksum of a file being written is forgotten
            if isinstance(node, Image) and node.session is not None:
                xattrs.forget_expected(node.session.guard, name)
            return
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def checksums(self, image):
        """Stored checksums of an image; computed by one full read if missing."""
        if image.pending:
            session = image.session
            if isinstance(session, SpoolSession) and session.handles == 0:
                await session.commit()
            elif isinstance(session, StreamSession) and session.closing:
                # its writer closed it and the commit runs (an empty image of touch
                # commits at release, after touch returned): its checksums come with it
                await session.done.wait()
                session.raise_if_failed()
            else:
                raise pyfuse3.FUSEError(errno.ENODATA)
        meta = await self.namespace.load_meta(image)
        if meta.get("checksum") and meta.get("os_hash_value"):
            return meta
        lock = self.checksum_locks.setdefault(image.ino, trio.Lock())
        async with lock:
            meta = image.meta or {}
            if meta.get("checksum") and meta.get("os_hash_value"):
                return meta
            from gsfs import hashing
            store = image.store_dir.store
            algo = self.settings.hash_algo

            LOG.info("Computing the checksums of %s (not stored with the image)", image.path)
            hasher, _ = await self._run(hashing.hash_stored, store, image.name, algo)
            await self.remember_checksums(image, hasher.checksum, algo, hasher.hash_value)
        self.checksum_locks.pop(image.ino, None)
        return image.meta

    async def remember_checksums(self, image, checksum, algo, hash_value):
        meta = {"checksum": checksum, "os_hash_algo": algo, "os_hash_value": hash_value}
        image.meta = dict(image.meta or {}, **meta)
        if self.catalog is not None:
            self.spawn(self.catalog.judge, "catalog verify", image, image.size, checksum,
                       algo, hash_value)
        store = image.store_dir.store
        if image.store_dir.read_only:
            return  # kept in memory for this mount (e.g. the http store)
        try:
            await self._run(lambda: store.set_image_meta(store.location_for(image.name), meta))
        except errors.KNOWN + (NotImplementedError,) as e:
            # computed and served from memory; the next mount computes them again
            LOG.warning("Checksums of %s computed but not stored: %s", image.path, e)

    # -- filesystem ----------------------------------------------------------------------
    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        total, free = await self._capacity()
        if not total:
            total = free = 1 << 50   # unknown: report 1 PiB, as object-store mounts do
        st.f_bsize = BLKSIZE
        st.f_frsize = BLKSIZE
        st.f_blocks = total // BLKSIZE
        st.f_bfree = free // BLKSIZE
        st.f_bavail = free // BLKSIZE
        st.f_files = st.f_ffree = st.f_favail = 1 << 20
        st.f_namemax = 255
        return st

    async def _capacity(self):
        """(total, free) bytes of the stores that know theirs, summed; asked of
        the stores at most every STATFS_TTL seconds (df, and programs that
        check free space before every file, would ask a store each time)."""
        now = time.monotonic()
        cached = self._statfs_cache
        if cached is not None and now - cached[0] < STATFS_TTL:
            return cached[1]
        total = free = 0
        seen = set()   # stores on one file system report it once
        for d in self.namespace.store_dirs.values():
            try:
                cap = await self._run(d.store.capacity)
            except Exception as e:  # noqa: BLE001 - capacity is advisory
                LOG.debug("capacity of %s: %s", d.store_id, e)
                cap = None
            if cap and tuple(cap) not in seen:
                seen.add(tuple(cap))
                total += cap[0]
                free += cap[1]
        self._statfs_cache = (time.monotonic(), (total, free))
        return total, free

    async def forget(self, inode_list):
        for inode, _nlookup in inode_list:
            self.namespace.forget(inode)

    # -- control ---------------------------------------------------------------------------
    async def sync_all(self):
        """Upload every spooled image now and wait for uploads that are closing.
        Returns how many of them failed (each one is logged)."""
        failed = 0
        for session in list(self.spools):
            if session.handles == 0:
                try:
                    await session.commit()
                except pyfuse3.FUSEError:
                    failed += 1
        for session in list(self.uploads):
            if getattr(session, "closing", True):
                await session.done.wait()
                failed += session.errno is not None
        return failed

    def status(self):
        stores = []
        failures = self.failures.per_store()
        for store_id in sorted(self.namespace.store_dirs):
            d = self.namespace.store_dirs[store_id]
            counters = dict(self.stats.per_store.get(store_id, {}))
            counters["errors"] = sum(failures.get(store_id, {}).values())
            stores.append({"id": store_id, "type": d.store.STORE_TYPE,
                           "read_only": d.read_only, "weight": d.store.weight,
                           "counters": counters})
        return {"pid": os.getpid(), "mountpoint": self.mountpoint,
                "uptime_s": round(time.time() - self.started, 1),
                "stores": stores,
                "uploads": [s.status() for s in list(self.uploads)],
                "pending_spooled": [s.status() for s in list(self.spools)
                                    if s not in self.uploads],
                "downloads": [r.status() for r in list(self.downloads)],
                "failures": failures,
                "spool_used_bytes": self.spool_used,
                "memory": BUDGET.status(),
                "metrics_url": self.metrics.url,
                "config_files": list(self.config_files),
                "config_dir": self.config_dir,
                "catalog": self.catalog is not None}


# Operations' pyfuse3 handlers, by what their first argument names (for the
# funnel's log line). Each one is wrapped by errors.funnel below.
BY_NAME = ("lookup", "create", "mkdir", "rmdir", "symlink", "mknod", "unlink", "rename")
BY_INODE = ("getattr", "setattr", "open", "opendir", "getxattr", "setxattr", "listxattr",
            "removexattr", "link", "readlink")
BY_FH = ("read", "write", "flush", "fsync", "release")
BY_DIR_FH = ("readdir", "releasedir")
HANDLERS = BY_NAME + BY_INODE + BY_FH + BY_DIR_FH + ("statfs", "forget")

for _op in HANDLERS:
    setattr(Operations, _op, errors.funnel(_op, getattr(Operations, _op)))
del _op
