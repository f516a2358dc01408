"""The ``file`` driver: images are files in one or more data directories.

Options, locations (``file:///datadir/<id>``) and results are glance_store's.
What gsfs does differently (docs/compatibility.md):

* an image is written under a temporary name (``.gsfs-tmp.<host>.<pid>.<rand>.<id>``)
  in its data directory, fsync'd, then published with ``link()`` (fails if the id
  exists: no overwrite race) or ``rename()`` (atomic replace); no reader and no
  crash ever sees a partial image under its id;
* it is written with direct I/O from an aligned block (``_ImageFile``), so it
  leaves nothing in the page cache; where the filesystem refuses direct I/O,
  and with thin provisioning, through the page cache, its writeback started
  every 16 MiB and what is on disk dropped from the cache (``_Writeback``), so
  that fsync waits for the last few MiB and a large image does not fill it;
* reads are confined to the store's data directories: a ``file://`` URI outside
  them is NotFound for this store;
* every OSError leaves the driver as a gsfs exception.

Image metadata (checksums, the multihash algorithm) lives in ``user.gsfs.*``
extended attributes of the image file, so it moves with rename and vanishes
with delete; where the filesystem has no user xattrs, in a hidden sidecar file
``.gsfs-meta.<id>.json`` next to the image. The modification time is the
file's own mtime.

ImageInfo.version is ``<st_dev>:<st_ino>:<st_size>:<write id>``: a replace
(rename over the id) gives the image another inode, and utimens or metadata
changes touch none of these. The write id is a random token add() stores in
the ``user.gsfs-version`` xattr of the file it writes (not image metadata, so
not under ``user.gsfs.``): filesystems such as ext4 give a file written right
after a delete the inode just freed, so a delete and a re-add of the same id
and size would otherwise keep the version. Files without it (written by
glance_store, or on a filesystem without user xattrs) have a version without
it. Reading it costs one getxattr per image in list_images(), none where
xattrs are not supported.
"""

import concurrent.futures
import errno
import fcntl
import json
import logging
import mmap
import os
import secrets
import socket
import stat as stat_mod
import urllib.parse

from oslo_config import cfg

from gsfs import capabilities, driver, exceptions, hashing, location, process

LOG = logging.getLogger(__name__)

TMP_PREFIX = ".gsfs-tmp."
META_PREFIX = ".gsfs-meta."
XATTR_PREFIX = "user.gsfs."
VERSION_XATTR = "user.gsfs-version"     # the write id in ImageInfo.version

_FILESYSTEM_CONFIGS = [
    cfg.StrOpt("filesystem_store_datadir", default="/var/lib/glance/images",
               help="Directory to which the filesystem backend store writes images."),
    cfg.MultiStrOpt("filesystem_store_datadirs",
                    help="List of directories and their priorities (path:priority)."),
    cfg.StrOpt("filesystem_store_metadata_file",
               help="JSON file with the metadata returned for images in this store."),
    cfg.IntOpt("filesystem_store_file_perm", default=0,
               help="Octal file mode for new images (digits read as octal); <=0 keeps it."),
    cfg.IntOpt("filesystem_store_chunk_size", default=64 * 1024, min=1,
               help="Chunk size, in bytes, for reading and writing image files."),
    cfg.BoolOpt("filesystem_thin_provisioning", default=False,
                help="Leave all-zero chunks as holes in the image file."),
    cfg.IntOpt("filesystem_store_timeout", default=0, min=0,
               help="Seconds before a filesystem operation times out; 0 disables."),
    cfg.IntOpt("filesystem_store_thread_pool_size", default=10, min=1,
               help="Threads for filesystem operations with a timeout."),
    cfg.IntOpt("filesystem_store_threadpool_threshold", default=75, min=0, max=100,
               help="Percent of the thread pool in use that triggers a warning."),
]


def _bad_config(reason):
    LOG.error(reason)
    return exceptions.BadStoreConfiguration(store_name="filesystem", reason=reason)


def _os_error(e, what, path):
    """One place where an OSError of this driver becomes a gsfs exception."""
    if e.errno == errno.ENOENT:
        return exceptions.NotFound(image=path)
    if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return exceptions.StorageFull(
            "There is not enough disk space on the image storage media "
            "(%s %s: %s)." % (what, path, e.strerror))
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return exceptions.StorageWriteDenied(
            "Permission to write image storage media denied (%s %s: %s)."
            % (what, path, e.strerror))
    return exceptions.BackendException("%s %s failed: %s" % (what, path, e))


class StoreLocation(location.StoreLocation):
    """``file://<path>``; ``filesystem://`` is accepted too."""

    def process_specs(self):
        self.scheme = self.specs.get("scheme", "file")
        self.path = self.specs.get("path")

    def get_uri(self):
        return "file://%s" % self.path

    def parse_uri(self, uri):
        pieces = urllib.parse.urlparse(uri)
        self.validate_schemas(uri, valid_schemas=("file://", "filesystem://"))
        self.scheme = pieces.scheme
        path = (pieces.netloc + pieces.path).strip()
        if path == "":
            reason = "No path specified in URI"
            LOG.info(reason)
            raise exceptions.BadStoreUri(message=reason)
        self.path = path


class ChunkedFile:
    """Iterate a file from ``offset``, ``chunk_size`` bytes at a time, at most
    ``length`` bytes in all (None: to the end). Closes itself at the end."""

    def __init__(self, path, offset=0, chunk_size=65536, length=None):
        self.path = path
        self.chunk_size = chunk_size
        self.remaining = length
        try:
            self.fp = open(path, "rb")
            if offset:
                self.fp.seek(offset)
        except OSError as e:
            raise _os_error(e, "open", path) from e

    def __iter__(self):
        try:
            while self.fp is not None:
                want = self.chunk_size
                if self.remaining is not None:
                    want = min(want, self.remaining)
                    if want <= 0:
                        break
                try:
                    chunk = self.fp.read(want)
                except OSError as e:
                    raise _os_error(e, "read", self.path) from e
                if not chunk:
                    break
                if self.remaining is not None:
                    self.remaining -= len(chunk)
                yield chunk
        finally:
            self.close()

    def close(self):
        if self.fp is not None:
            self.fp.close()
            self.fp = None


class Store(driver.Store):
    _CAPABILITIES = (capabilities.BitMasks.READ_RANDOM
                     | capabilities.BitMasks.WRITE_ACCESS
                     | capabilities.BitMasks.DRIVER_REUSABLE
                     | capabilities.BitMasks.RENAME_NATIVE)
    OPTIONS = _FILESYSTEM_CONFIGS
    STORE_TYPE = "file"
    READ_CHUNKSIZE = 64 * 1024
    WRITE_CHUNKSIZE = READ_CHUNKSIZE
    FILESYSTEM_STORE_METADATA = None
    max_id_length = 255

    def __init__(self, conf, backend=None):
        super().__init__(conf, backend=backend)
        self.datadir = None
        self.datadirs = []            # every data directory, highest priority first
        self.priority_data_map = {}   # priority → [dirs]
        self.priority_list = []
        self.multiple_datadirs = False
        self.thin_provisioning = False
        self.file_perm = 0
        self.timeout = 0
        self._executor = None
        self._pool_size = 10
        self._threshold = 75
        self._in_flight = 0
        self._xattrs_supported = {}

    def get_schemes(self):
        return ("file", "filesystem")

    # -- configuration -------------------------------------------------------
    def configure_add(self):
        opts = self.group_conf()
        datadir = opts.filesystem_store_datadir
        datadirs = opts.filesystem_store_datadirs
        if self._is_reserved() and not datadirs and opts._group_value(
                "filesystem_store_datadir") is None:
            # glance_store's reserved stores fall back to [backend_defaults], i.e.
            # /var/lib/glance/images, and so share the images directory; gsfs gives
            # each its own directory, the default glance_store meant to register.
            datadir = "/var/lib/glance/%s" % self.backend_group
        if not (datadir or datadirs):
            raise _bad_config("Specify at least 'filesystem_store_datadir' or "
                              "'filesystem_store_datadirs' option")
        if datadir and datadirs:
            raise _bad_config("Specify either 'filesystem_store_datadir' or "
                              "'filesystem_store_datadirs' option")
        self.file_perm = opts.filesystem_store_file_perm
        if self.file_perm > 0:
            perm = int(str(self.file_perm), 8)
            if not perm & stat_mod.S_IRUSR:
                raise _bad_config("Invalid 'filesystem_store_file_perm' option.")
        self.thin_provisioning = opts.filesystem_thin_provisioning
        chunk = opts.filesystem_store_chunk_size
        self.READ_CHUNKSIZE = self.WRITE_CHUNKSIZE = chunk
        self.timeout = opts.filesystem_store_timeout
        self._pool_size = opts.filesystem_store_thread_pool_size
        self._threshold = opts.filesystem_store_threadpool_threshold
        if self.timeout > 0 and self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self._pool_size, thread_name_prefix="gsfs-file-%s" % self.backend_group)

        if datadirs:
            self.multiple_datadirs = True
            self._configure_datadirs(datadirs)
        else:
            self.multiple_datadirs = False
            self.datadir = datadir
            self._create_image_directories([datadir])
            self.priority_data_map = {0: [datadir]}
            self.priority_list = [0]
        self.datadirs = [d for p in self.priority_list for d in self.priority_data_map[p]]

        metadata_file = opts.filesystem_store_metadata_file
        if metadata_file:
            self.FILESYSTEM_STORE_METADATA = self._validate_metadata(metadata_file)
        if self.backend_group:
            self._url_prefix = "file://%s" % self._find_best_datadir(0)

    def _is_reserved(self):
        from gsfs import multi_backend
        return self.backend_group in multi_backend._RESERVED_STORES

    def _configure_datadirs(self, datadirs):
        priority_map = {}
        seen = {}
        for entry in datadirs:
            path, _, priority = entry.rpartition(":")
            if not path:  # no ':' at all
                path, priority = entry, "0"
            path = path.strip()
            try:
                priority = int(priority.strip() or 0)
            except ValueError:
                raise _bad_config("Invalid priority value %s in filesystem configuration"
                                  % priority) from None
            if not path:
                raise _bad_config("Invalid directory specified in filesystem_store_datadirs")
            if path in seen:
                if seen[path] != priority:
                    raise _bad_config("Directory %s used with different priorities %s and %s"
                                      % (path, seen[path], priority))
                LOG.warning("Directory %s is listed twice with priority %s", path, priority)
                continue
            seen[path] = priority
            priority_map.setdefault(priority, []).append(path)
        self._create_image_directories(list(seen))
        self.priority_data_map = priority_map
        self.priority_list = sorted(priority_map, reverse=True)

    def _create_image_directories(self, directories):
        for datadir in directories:
            if not os.path.exists(datadir):
                LOG.info("Directory to write image files does not exist (%s). Creating.",
                         datadir)
                try:
                    os.makedirs(datadir, exist_ok=True)
                except OSError as e:
                    raise _bad_config("Unable to create datadir: %s (%s)" % (datadir, e)) from e
            if not os.access(datadir, os.W_OK):
                raise _bad_config("Permission to write in %s denied" % datadir)
            if self.file_perm > 0:
                self._set_exec_permission(datadir)

    def _set_exec_permission(self, datadir):
        perm = int(str(self.file_perm), 8)
        mode = os.stat(datadir).st_mode
        if perm & stat_mod.S_IRWXO:
            mode |= stat_mod.S_IXOTH
        if perm & stat_mod.S_IRWXG:
            mode |= stat_mod.S_IXGRP
        try:
            os.chmod(datadir, mode)
        except OSError as e:
            LOG.warning("Could not add execute permission to %s: %s", datadir, e)

    def _validate_metadata(self, metadata_file):
        try:
            with open(metadata_file) as f:
                metadata = json.load(f)
        except (OSError, ValueError) as e:
            raise _bad_config("The JSON in the metadata file %s could not be loaded: %s"
                              % (metadata_file, e)) from e
        if isinstance(metadata, dict):
            metadata = [metadata]
        if not isinstance(metadata, list):
            raise _bad_config("The metadata file %s must hold an object or a list of objects"
                              % metadata_file)
        from gsfs import multi_backend
        for entry in metadata:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) \
                    or not isinstance(entry.get("mountpoint"), str):
                raise _bad_config("The metadata file %s: every entry needs string 'id' and "
                                  "'mountpoint' keys" % metadata_file)
            try:
                multi_backend.check_location_metadata(entry)
            except exceptions.BackendException as e:
                raise _bad_config("The metadata file %s: %s" % (metadata_file, e)) from e
        return metadata

    # -- helpers -------------------------------------------------------------
    def _run(self, func, *args):
        """Run a filesystem call, with filesystem_store_timeout if configured."""
        if not self._executor:
            return func(*args)
        self._in_flight += 1
        try:
            if self._in_flight * 100 >= self._threshold * self._pool_size:
                LOG.warning("Store %s: %d of %d filesystem threads busy",
                            self.backend_group, self._in_flight, self._pool_size)
            future = self._executor.submit(func, *args)
            try:
                return future.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                raise exceptions.TimeoutError(timeout=self.timeout) from None
        finally:
            self._in_flight -= 1

    def _free_space(self, path):
        st = self._run(os.statvfs, path)
        return st.f_bavail * st.f_frsize

    def _find_best_datadir(self, image_size):
        if not self.multiple_datadirs:
            return self.datadir
        for priority in self.priority_list:
            candidates = []
            for datadir in self.priority_data_map[priority]:
                try:
                    free = self._free_space(datadir)
                except OSError:
                    continue
                if free >= image_size:
                    candidates.append((free, datadir))
            if candidates:
                return max(candidates)[1]
        raise exceptions.StorageFull(
            "There is no enough disk space left on the image storage media. "
            "requested=%s" % image_size)

    def _path_of(self, loc):
        """The image path of a Location, if it lies inside this store's datadirs."""
        path = loc.store_location.path
        real = os.path.realpath(path)
        for datadir in self.datadirs:
            root = os.path.realpath(datadir)
            if os.path.dirname(real) == root:
                return path
        raise exceptions.NotFound(
            "Image %s is outside the data directories of store %s" % (path, self.backend_group))

    def _find_image(self, image_id):
        for datadir in self.datadirs:
            path = os.path.join(datadir, image_id)
            if os.path.lexists(path):
                return path
        return None

    def _metadata_for(self, filepath):
        for entry in self.FILESYSTEM_STORE_METADATA or []:
            if filepath.startswith(entry["mountpoint"]):
                return dict(entry)
        return {}

    def _location(self, path, image_id=None):
        # from specs, not by parsing "file://<path>": an id may hold '?' or '#',
        # which a URI parse cuts off (the image would be written but not found)
        return location.Location("file", StoreLocation, self.conf, image_id=image_id,
                                 store_specs={"scheme": "file", "path": path},
                                 backend=self.backend_group)

    @staticmethod
    def _is_hidden(name):
        return name.startswith(TMP_PREFIX) or name.startswith(META_PREFIX)

    # -- glance_store API ----------------------------------------------------
    @capabilities.check
    def get(self, location, offset=0, chunk_size=None, context=None):
        path = self._path_of(location)
        size = self._size(path)
        iterator = ChunkedFile(path, offset=offset, chunk_size=self.READ_CHUNKSIZE,
                               length=chunk_size or None)
        return iterator, chunk_size or size

    def _size(self, path):
        try:
            return self._run(os.path.getsize, path)
        except OSError as e:
            raise _os_error(e, "stat", path) from e

    def get_size(self, location, context=None):
        return self._size(self._path_of(location))

    @capabilities.check
    def delete(self, location, context=None):
        path = self._path_of(location)
        if not os.path.exists(path):
            raise exceptions.NotFound(image=path)
        try:
            self._run(os.unlink, path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise exceptions.NotFound(image=path) from e
            raise exceptions.Forbidden(message="You cannot delete file %s" % path) from e
        self._remove_sidecar(path)

    def _tmp_name(self, image_id):
        prefix = "%s%s.%d.%s." % (TMP_PREFIX, socket.gethostname(), os.getpid(),
                                  secrets.token_hex(4))
        # The id is only there for a human reading the directory: cut it so the
        # name stays within NAME_MAX (255 bytes) for ids up to max_id_length.
        room = max(0, 255 - len(prefix.encode("utf-8", "surrogateescape")))
        tail = image_id.encode("utf-8", "surrogateescape")[:room]
        return prefix + tail.decode("utf-8", "ignore")

    def _add(self, image_id, image_file, image_size, hashing_algo,
             verifier=None, replace=False):
        datadir = self._find_best_datadir(image_size)
        filepath = os.path.join(datadir, image_id)
        existing = self._find_image(image_id)
        if existing and not replace:
            raise exceptions.Duplicate(image=existing)
        tmp_path = os.path.join(datadir, self._tmp_name(image_id))
        hasher = hashing.ImageHasher(hashing_algo, verifier)
        sizes = driver.SizeChecker(image_size)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise _os_error(e, "create", tmp_path) from e
        out = _ImageFile(fd, direct=not self.thin_provisioning)
        try:
            try:
                # a source that hands out large buffers (gsfs's upload queue) is
                # read in those: fewer, larger writes and hash hand-offs
                size = max(self.WRITE_CHUNKSIZE, getattr(image_file, "preferred_read_size", 0))
                for chunk in driver.chunkreadable(image_file, size):
                    sizes.add(len(chunk))
                    hasher.update(chunk)
                    if self.thin_provisioning and not any(chunk):
                        out.skip(len(chunk))
                    else:
                        out.write(chunk)
                sizes.finish()
                out.finish()
                self._set_write_id(fd, datadir)
                os.fsync(fd)
            finally:
                out.close()         # its block and the file
            hasher.before_publish()
            self._publish(tmp_path, filepath, replace)
        except BaseException as e:
            _unlink_quietly(tmp_path)
            if isinstance(e, OSError):
                raise _os_error(e, "write", filepath) from e
            raise
        metadata = self._metadata_for(filepath)
        if self.backend_group:
            metadata["store"] = self.backend_group
        if self.file_perm > 0:
            try:
                os.chmod(filepath, int(str(self.file_perm), 8))
            except OSError as e:
                LOG.warning("Unable to set permission to image %s: %s", filepath, e)
        return ("file://%s" % filepath, hasher.size, hasher.checksum,
                hasher.hash_value, metadata)

    def _publish(self, tmp_path, filepath, replace):
        """Give the finished temp file its id: link() refuses an existing id
        atomically; rename() replaces atomically."""
        if replace:
            os.rename(tmp_path, filepath)
            return
        try:
            os.link(tmp_path, filepath)
        except FileExistsError:
            raise exceptions.Duplicate(image=filepath) from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            # no hard links here: check, then rename (a tiny race, logged once)
            if os.path.lexists(filepath):
                raise exceptions.Duplicate(image=filepath) from None
            os.rename(tmp_path, filepath)
            return
        os.unlink(tmp_path)

    # -- ImageInfo.version (see the module docstring) ----------------------------
    def _set_write_id(self, fd, datadir):
        if self._xattrs_supported.get(datadir) is False:
            return
        try:
            os.setxattr(fd, VERSION_XATTR, secrets.token_hex(8).encode())
        except OSError as e:        # optional: the version is then inode and size only
            LOG.debug("No write id for an image in %s: %s", datadir, e)
            if e.errno == errno.ENOTSUP:
                self._xattrs_supported[datadir] = False

    def _version(self, path, st, datadir):
        version = "%d:%d:%d" % (st.st_dev, st.st_ino, st.st_size)
        if self._xattrs_supported.get(datadir) is False:
            return version
        try:
            write_id = os.getxattr(path, VERSION_XATTR)
        except OSError as e:
            if e.errno == errno.ENOTSUP:
                self._xattrs_supported[datadir] = False
            return version
        return "%s:%s" % (version, write_id.decode("ascii", "replace"))

    def _info(self, path, name, st, datadir):
        return driver.ImageInfo(name, st.st_size, st.st_mtime, st.st_mtime_ns,
                                self._version(path, st, datadir))

    # -- gsfs extensions -----------------------------------------------------
    def location_for(self, image_id):
        image_id = driver.validate_image_id(image_id, self.max_id_length)
        path = self._find_image(image_id) or os.path.join(self._find_best_datadir(0), image_id)
        return self._location(path, image_id)

    def list_images(self):
        seen = set()
        for datadir in self.datadirs:
            try:
                entries = list(os.scandir(datadir))
            except OSError as e:
                raise _os_error(e, "list", datadir) from e
            for entry in entries:
                if self._is_hidden(entry.name) or entry.name in seen:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat_mod.S_ISREG(st.st_mode):
                    continue
                seen.add(entry.name)
                yield self._info(entry.path, entry.name, st, datadir)

    def stat_image(self, location):
        path = self._path_of(location)
        try:
            st = self._run(os.stat, path)
        except OSError as e:
            raise _os_error(e, "stat", path) from e
        if not stat_mod.S_ISREG(st.st_mode):
            # a directory, fifo or device in the datadir is not an image (as in listings)
            raise exceptions.NotFound(image=path)
        return self._info(path, os.path.basename(path), st, os.path.dirname(path))

    def read(self, location, offset, length):
        path = self._path_of(location)
        try:
            with open(path, "rb") as f:
                return os.pread(f.fileno(), length, offset)
        except OSError as e:
            raise _os_error(e, "read", path) from e

    def _sidecar(self, path):
        return os.path.join(os.path.dirname(path), "%s%s.json" % (META_PREFIX,
                                                                os.path.basename(path)))

    def get_image_meta(self, location):
        path = self._path_of(location)
        meta = {}
        try:
            names = os.listxattr(path)
            for name in names:
                if name.startswith(XATTR_PREFIX):
                    meta[name[len(XATTR_PREFIX):]] = os.getxattr(path, name).decode()
        except FileNotFoundError as e:
            raise exceptions.NotFound(image=path) from e
        except OSError as e:
            if e.errno != errno.ENOTSUP:
                raise _os_error(e, "read metadata of", path) from e
        try:
            with open(self._sidecar(path)) as f:
                meta.update(json.load(f))
        except (OSError, ValueError):
            pass
        try:
            meta["mtime"] = driver.format_mtime_ns(os.stat(path).st_mtime_ns)
        except OSError as e:
            raise _os_error(e, "stat", path) from e
        return meta

    def set_image_meta(self, location, meta):
        path = self._path_of(location)
        meta = dict(meta)
        mtime = meta.pop("mtime", None)
        try:
            if mtime is not None:
                ns = driver.parse_mtime_ns(mtime)
                os.utime(path, ns=(ns, ns))
            for key, value in meta.items():
                os.setxattr(path, XATTR_PREFIX + key, str(value).encode())
        except OSError as e:
            if e.errno != errno.ENOTSUP:
                raise _os_error(e, "write metadata of", path) from e
            self._write_sidecar(path, meta)

    def _write_sidecar(self, path, meta):
        sidecar = self._sidecar(path)
        current = {}
        try:
            with open(sidecar) as f:
                current = json.load(f)
        except (OSError, ValueError):
            pass
        current.update({k: str(v) for k, v in meta.items()})
        tmp = sidecar + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(current, f)
            os.rename(tmp, sidecar)
        except OSError as e:
            raise _os_error(e, "write metadata of", path) from e

    def _remove_sidecar(self, path):
        _unlink_quietly(self._sidecar(path))

    def rename(self, location, new_id, replace=False):
        new_id = driver.validate_image_id(new_id, self.max_id_length)
        path = self._path_of(location)
        target = os.path.join(os.path.dirname(path), new_id)
        elsewhere = self._find_image(new_id)
        if elsewhere and elsewhere != target and not replace:
            raise exceptions.Duplicate(image=elsewhere)
        try:
            if not os.path.exists(path):
                raise exceptions.NotFound(image=path)
            self._publish(path, target, replace)
            sidecar = self._sidecar(path)
            if os.path.exists(sidecar):
                os.rename(sidecar, self._sidecar(target))
        except OSError as e:
            raise _os_error(e, "rename", path) from e
        return self._location(target, new_id)

    def capacity(self):
        total = free = 0
        devices = set()
        for datadir in self.datadirs:
            try:
                st = os.statvfs(datadir)
                dev = os.stat(datadir).st_dev
            except OSError:
                continue
            if dev in devices:
                continue
            devices.add(dev)
            total += st.f_blocks * st.f_frsize
            free += st.f_bavail * st.f_frsize
        return (total, free) if devices else None

    def cleanup_leftovers(self):
        """Remove temp files of writers on this host that no longer run."""
        removed = []
        host = socket.gethostname()
        for datadir in self.datadirs:
            try:
                names = os.listdir(datadir)
            except OSError:
                continue
            for name in names:
                if not name.startswith(TMP_PREFIX):
                    continue
                # <host>.<pid>.<rand>.<id>; host may contain dots, so match it as a prefix
                if not name[len(TMP_PREFIX):].startswith(host + "."):
                    continue
                rest = name[len(TMP_PREFIX) + len(host) + 1:].split(".", 2)
                if len(rest) < 3 or not rest[0].isdigit() or process.process_alive(int(rest[0])):
                    continue
                path = os.path.join(datadir, name)
                _unlink_quietly(path)
                removed.append("file store %s: removed unfinished upload %s"
                               % (self.backend_group, path))
        return removed


class _ImageFile:
    """Writes the bytes of a new image file, in order: direct I/O where the
    filesystem takes it, the page cache elsewhere.

    Direct I/O (``O_DIRECT``, set on the open file with fcntl): the bytes are
    gathered into one page-aligned block of BLOCK bytes, and each full block
    is written from it, so the disk reads gsfs's buffer instead of the kernel
    first copying every byte into fresh page-cache pages. Here 1 GiB written
    from Python cost 1.0 CPU-s through the page cache (with ``_Writeback``)
    and 0.4-0.5 CPU-s this way, the copy into the block included; a 1 GiB
    ``cp`` into a mount, about 0.2 CPU-s less (docs/PERFORMANCE.md). The last
    block is written padded with zeros to ALIGN bytes and the file truncated
    to its size. Such writes leave no page cache behind.

    The page cache: a filesystem that refuses ``O_DIRECT`` (at fcntl, or with
    EINVAL at the first write), and thin provisioning, whose holes are per
    source chunk. Writes go through ``_Writeback`` there."""

    BLOCK = 1024 * 1024
    ALIGN = 4096        # of the block's address, offsets and lengths: any logical block size

    def __init__(self, fd, direct):
        self.fd = fd
        self.size = 0               # bytes of the image so far, holes included
        self.on_disk = 0            # bytes written to (or skipped in) the file
        self.block = None           # the direct I/O block, or None: the page cache
        self.fill = 0
        self.writeback = _Writeback(fd)
        if direct:
            try:
                _set_direct(fd, True)
                self.block = mmap.mmap(-1, self.BLOCK)
            except OSError as e:
                LOG.debug("No direct I/O for a new image: %s", e)

    def write(self, chunk):
        if self.block is None:
            self.on_disk = self._write(chunk, self.on_disk)
            self.size += len(chunk)
            self.writeback.written(self.on_disk)
            return
        view = memoryview(chunk).cast("B")
        while view:
            n = min(len(view), self.BLOCK - self.fill)
            self.block[self.fill:self.fill + n] = view[:n]
            self.fill += n
            self.size += n
            view = view[n:]
            if self.fill == self.BLOCK:
                self._write_block()

    def skip(self, n):
        """Leave n bytes as a hole (page cache only: thin provisioning)."""
        assert self.block is None
        self.size += n
        self.on_disk += n

    def finish(self):
        """Write what is left and give the file its size."""
        if self.fill:
            self._write_block()
        if os.fstat(self.fd).st_size != self.size:     # padding, or a trailing hole
            os.ftruncate(self.fd, self.size)

    def close(self):
        """Free the block and close the file."""
        self._free_block()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _free_block(self):
        if self.block is not None:
            try:
                self.block.close()
            except BufferError:     # a failed write's traceback still holds a view of it
                pass                # unmapped with the last view, then
            self.block = None

    def _write_block(self):
        n = self.fill
        length = -(-n // self.ALIGN) * self.ALIGN
        self.block[n:length] = bytes(length - n)
        with memoryview(self.block) as whole:
            try:
                self._write(whole[:length], self.on_disk)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # opened, but no direct writes here: the page cache from now on
                LOG.debug("Direct I/O refused (%s): writing through the page cache", e)
                _set_direct(self.fd, False)
                self._write(whole[:n], self.on_disk)
                self.on_disk += n
                self.fill = 0
                self._free_block()
                return
        self.on_disk += n
        self.fill = 0

    def _write(self, data, offset):
        view = memoryview(data).cast("B")
        while view:
            done = os.pwrite(self.fd, view, offset)
            offset += done
            view = view[done:]
        return offset


def _set_direct(fd, on):
    """Turn ``O_DIRECT`` on or off for an open file (EINVAL where it is refused)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)


class _Writeback:
    """Starts the writeback of an image file written through the page cache.

    Without it the fsync before publishing writes the whole image to disk
    after its last byte arrived (0.5 s per GiB here, with the copy waiting).
    Every WINDOW bytes, ``posix_fadvise(POSIX_FADV_DONTNEED)`` over what was
    written since the last call starts the kernel's writeback of that range
    without waiting for it, and drops the pages of it that are already on
    disk, so a large copy-in neither ends in a long fsync nor fills the
    page cache with an image nobody is reading. Filesystems that do not
    support it are written as before (the first refusal ends the hints)."""

    WINDOW = 16 * 1024 * 1024

    def __init__(self, fd):
        self.fd = fd
        self.started = 0          # bytes whose writeback was started
        self.enabled = hasattr(os, "posix_fadvise")

    def written(self, size):
        if not self.enabled or size - self.started < self.WINDOW:
            return
        try:
            # the window before the one just written is on disk by now: drop it too
            start = max(0, self.started - self.WINDOW)
            os.posix_fadvise(self.fd, start, size - start, os.POSIX_FADV_DONTNEED)
        except OSError:
            self.enabled = False
        self.started = size


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
