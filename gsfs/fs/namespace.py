"""Inode table and the view of each store: committed images plus pending ones.

The root (inode 1) holds one directory per store. A store directory maps names
to ``Image`` nodes: images the backend has (from its listing, cached for
``cache_ttl`` seconds and updated by this mount's own writes and deletes) and
pending images (being written, or spooled and waiting to be uploaded), which
only this mount sees until they are committed.

With Glance's catalog configured the root also holds ``by-name/`` (a
``ByNameDir``): one read-only ``Link`` per catalog image with data in a
mounted store (``NAME -> ../STORE/ID``); its names come from
gsfs/fs/catalog_view.py, ``set_links`` keeps their inodes stable.
"""

import logging
import os
import stat
import time

import pyfuse3
import trio

from gsfs import driver, exceptions, multi_backend
from gsfs.capabilities import BitMasks

LOG = logging.getLogger("gsfs.fs")

ROOT_INODE = pyfuse3.ROOT_INODE
BLKSIZE = 1024 * 1024       # st_blksize: cp writes 1 MiB per write(2)
ATTR_TIMEOUT = 1.0          # kernel attribute/entry cache, seconds


def info_mtime_ns(info):
    if info.mtime_ns is not None:
        return info.mtime_ns
    if info.mtime is not None:
        return int(round(info.mtime * 1e9))
    return None


class Image:
    """One file: an image in a store, committed or pending."""

    __slots__ = ("ino", "store_dir", "name", "size", "mtime_ns", "committed", "session",
                 "meta", "checked_at", "open_count", "pending_mtime_ns", "version")

    def __init__(self, ino, store_dir, name, size=0, mtime_ns=None, committed=True):
        self.ino = ino
        self.store_dir = store_dir
        self.name = name
        self.size = size
        self.mtime_ns = mtime_ns if mtime_ns is not None else time.time_ns()
        self.committed = committed
        self.session = None        # StreamSession / SpoolSession while pending
        self.meta = None           # the stored metadata dict, once read
        self.checked_at = time.monotonic()
        self.open_count = 0
        self.pending_mtime_ns = None  # utimens on a pending image, applied at commit
        self.version = None        # ImageInfo.version last seen (None: not known)

    @property
    def path(self):
        return "%s/%s" % (self.store_dir.store_id, self.name)

    @property
    def pending(self):
        return not self.committed


class StoreDir:
    """A store's directory."""

    def __init__(self, ino, store_id, store, read_only):
        self.ino = ino
        self.store_id = store_id
        self.store = store
        self.read_only = read_only
        self.entries = {}          # name → Image
        self.listed_at = None      # monotonic time of the last full listing
        self.list_lock = trio.Lock()
        self.mtime = time.time()

    @property
    def path(self):
        return self.store_id


class ByNameDir:
    """by-name/ at the root: Glance's image names as symlinks (read-only)."""

    name = "by-name"
    read_only = True

    def __init__(self, ino):
        self.ino = ino
        self.links = {}            # link name → Link
        self.mtime = time.time()

    @property
    def path(self):
        return self.name


class Link:
    """A symlink in by-name/: ``target`` is ``../STORE/ID``."""

    __slots__ = ("ino", "name", "target")

    def __init__(self, ino, name, target):
        self.ino = ino
        self.name = name
        self.target = target

    @property
    def path(self):
        return "%s/%s" % (ByNameDir.name, self.name)


class Namespace:
    def __init__(self, settings, worker_limiter):
        self.settings = settings
        self.limiter = worker_limiter
        self.by_ino = {}
        self.store_dirs = {}       # store id → StoreDir
        self.next_ino = ROOT_INODE + 1
        self.mtime = time.time()
        stores = multi_backend.stores()
        reserved = set(multi_backend._RESERVED_STORES)
        for store_id in sorted(stores):
            if store_id in reserved and not settings.show_reserved:
                continue
            store = stores[store_id]
            read_only = settings.read_only or not store.is_capable(BitMasks.WRITE_ACCESS)
            d = StoreDir(self._alloc(), store_id, store, read_only)
            self.store_dirs[store_id] = d
            self.by_ino[d.ino] = d
        self.by_name = None        # a ByNameDir once enable_by_name() (catalog configured)

    def enable_by_name(self):
        if ByNameDir.name in self.store_dirs:
            LOG.warning("A store is called %r: the catalog's %s/ directory of image names "
                        "is not shown", ByNameDir.name, ByNameDir.name)
            return
        self.by_name = ByNameDir(self._alloc())
        self.by_ino[self.by_name.ino] = self.by_name

    def root_entries(self):
        """The root's directories, by name: one per store, and by-name/."""
        entries = {d.store_id: d for d in self.store_dirs.values()}
        if self.by_name is not None:
            entries[ByNameDir.name] = self.by_name
        return entries

    def set_links(self, targets):
        """by-name/'s links are ``targets`` ({name: target}); a link whose name and
        target stay keeps its inode."""
        d = self.by_name
        old = d.links
        new = {}
        for name, target in targets.items():
            link = old.get(name)
            if link is None or link.target != target:
                link = Link(self._alloc(), name, target)
                self.by_ino[link.ino] = link
            new[name] = link
        if set(new) != set(old):
            d.mtime = time.time()
        for name, link in old.items():
            if new.get(name) is not link:
                self.by_ino.pop(link.ino, None)
        d.links = new
        return new

    def _alloc(self):
        ino = self.next_ino
        self.next_ino += 1
        return ino

    async def run(self, func, *args):
        """Run a blocking backend call in a worker thread (bounded)."""
        return await trio.to_thread.run_sync(func, *args, limiter=self.limiter)

    # -- nodes ---------------------------------------------------------------
    def node(self, ino):
        try:
            return self.by_ino[ino]
        except KeyError:
            raise pyfuse3.FUSEError(2) from None  # ENOENT

    def new_image(self, store_dir, name, size=0, mtime_ns=None, committed=True):
        image = Image(self._alloc(), store_dir, name, size, mtime_ns, committed)
        store_dir.entries[name] = image
        self.by_ino[image.ino] = image
        store_dir.mtime = time.time()
        return image

    def drop(self, image):
        """Forget an image's name (unlink, failed upload); its inode stays
        while the kernel or an open handle still refers to it."""
        d = image.store_dir
        if d.entries.get(image.name) is image:
            del d.entries[image.name]
            d.mtime = time.time()

    def forget(self, ino):
        node = self.by_ino.get(ino)
        if isinstance(node, Image) and node.open_count == 0 and \
                node.store_dir.entries.get(node.name) is not node:
            del self.by_ino[ino]

    # -- backend views ---------------------------------------------------------
    def _fresh(self, t):
        return t is not None and time.monotonic() - t < self.settings.cache_ttl

    async def list_dir(self, store_dir):
        """The store's entries, refreshed from the backend when the cache is old."""
        async with store_dir.list_lock:
            if not self._fresh(store_dir.listed_at):
                infos = await self.run(lambda: list(store_dir.store.list_images()))
                now = time.monotonic()
                seen = set()
                for info in infos:
                    seen.add(info.id)
                    self._update(store_dir, info, now)
                for name, image in list(store_dir.entries.items()):
                    if image.committed and name not in seen:
                        self.drop(image)
                store_dir.listed_at = now
        return store_dir.entries

    def _update(self, store_dir, info, now):
        mtime_ns = info_mtime_ns(info)
        image = store_dir.entries.get(info.id)
        if image is None:
            image = self.new_image(store_dir, info.id, info.size, mtime_ns)
            image.version = info.version
        elif image.committed:
            if image.size != info.size or (info.version is not None and
                                            image.version != info.version):
                # another object under the name (replaced by another host, or the
                # winner of a race with this mount's own upload; after this mount's
                # own commit the version is not known yet): the cached checksums
                # may describe other bytes, so they are read again
                image.meta = None
            image.size = info.size
            image.version = info.version
            if mtime_ns is not None:
                image.mtime_ns = mtime_ns   # the store's (stored) mtime wins
        image.checked_at = now
        return image

    async def load_meta(self, image):
        """The image's stored metadata (checksums, mtime), read once and cached."""
        if image.meta is None and image.committed:
            store = image.store_dir.store
            meta = await self.run(lambda: store.get_image_meta(store.location_for(image.name)))
            image.meta = dict(meta or {})
            if "mtime" in image.meta:
                try:
                    image.mtime_ns = driver.parse_mtime_ns(image.meta["mtime"])
                except ValueError:
                    LOG.warning("Image %s has an unreadable stored mtime %r",
                                image.path, image.meta["mtime"])
        return image.meta or {}

    async def lookup(self, store_dir, name):
        """The Image called ``name``, asking the backend when not known fresh."""
        image = store_dir.entries.get(name)
        if image is not None and (image.pending or self._fresh(image.checked_at)):
            return image
        store = store_dir.store
        try:
            info = await self.run(lambda: store.stat_image(store.location_for(name)))
        except exceptions.Invalid:
            info = None
        except exceptions.NotFound:
            info = None
        if info is None:
            if image is not None and image.committed:
                self.drop(image)
            return None
        image = self._update(store_dir, info._replace(id=name), time.monotonic())
        if image.meta is None:
            # a single stat (not a listing): worth one metadata read for the exact mtime
            try:
                await self.load_meta(image)
            except exceptions.GlanceStoreException as e:
                LOG.debug("Metadata of %s not readable: %s", image.path, e)
                image.meta = {}
        return image

    # -- attributes ------------------------------------------------------------
    def attrs(self, node):
        s = self.settings
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino if node is not None else ROOT_INODE
        a.generation = 0
        a.entry_timeout = ATTR_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_uid = s.uid
        a.st_gid = s.gid
        a.st_blksize = BLKSIZE
        if isinstance(node, Link):
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_nlink = 1
            a.st_size = len(os.fsencode(node.target))
            a.st_blocks = 0
            ns = int(self.by_name.mtime * 1e9)
        elif node is None or isinstance(node, (StoreDir, ByNameDir)):
            mode = s.dir_mode
            if node is not None and node.read_only:
                mode &= ~0o222
            a.st_mode = stat.S_IFDIR | mode
            a.st_nlink = 2
            a.st_size = 0
            a.st_blocks = 0
            ns = int((node.mtime if node is not None else self.mtime) * 1e9)
        else:
            mode = s.file_mode
            if node.store_dir.read_only:
                mode &= ~0o222
            a.st_mode = stat.S_IFREG | mode
            a.st_nlink = 1
            size = node.session.size if node.session is not None else node.size
            a.st_size = size
            a.st_blocks = (size + 511) // 512
            ns = node.pending_mtime_ns if node.pending_mtime_ns is not None else node.mtime_ns
        a.st_mtime_ns = ns
        a.st_ctime_ns = ns
        a.st_atime_ns = ns
        return a
