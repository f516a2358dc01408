"""The driver base class: glance_store's Store API plus the gsfs extensions.

glance_store part (same names, signatures and return shapes):
    get_schemes(), configure(), configure_add(), get(), get_size(), add(),
    delete(), set_acls(), url_prefix, weight.

gsfs extensions (what the filesystem needs; every driver implements them):
    location_for(image_id)        where image ``image_id`` lives (or would) in this store
    list_images()                 ImageInfo for every image, without reading data
    stat_image(location)          ImageInfo of one image (NotFound if missing)
    read(location, offset, length) bytes at any offset (short only at end of image)
    get_image_meta(location)      dict of str: checksum, os_hash_algo, os_hash_value, mtime
                                  (mtime as written by format_mtime_ns: "<sec>.<9 digits>")
    set_image_meta(location, d)   merge ``d`` into the image's stored metadata
    rename(location, new_id)      move the image to a new id (RENAME_* capability)
    add_image(..., replace=False) add(); with replace=True an existing image is
                                  replaced atomically (the old one stays intact
                                  until the new one is complete)
    capacity()                    (total_bytes, free_bytes) or None
    check_access()                a cheap read that fails as the listing would on a
                                  wrong configuration (missing bucket, pool or
                                  container): ``gsfs check-config``'s probe
    cleanup_leftovers()           remove what a crashed writer left; returns descriptions
    max_id_length                 longest image id the backend accepts

An image source may have ``preferred_read_size``: drivers that read in small
chunks then read that much at once (gsfs's upload queue hands out whole
written buffers without copying them).

Drivers implement ``_add()``; ``add()`` (capability-checked, back-compatible
with callers that omit ``hashing_algo``) and ``add_image()`` call it.

Every library error (OSError, botocore, rados, requests) leaving a driver is a
gsfs exception; the original is chained as ``__cause__``.
"""

import contextlib
import functools
import logging
import typing

from gsfs import capabilities, config, exceptions, hashing

LOG = logging.getLogger(__name__)

# Names starting with this are gsfs's temporary and metadata objects.
RESERVED_PREFIX = ".gsfs-"

# Metadata keys stored with an image (values are always str).
META_KEYS = ("checksum", "os_hash_algo", "os_hash_value", "mtime")


class ImageInfo(typing.NamedTuple):
    id: str
    size: int
    mtime: typing.Optional[float] = None
    mtime_ns: typing.Optional[int] = None   # exact, where the backend has it
    # opaque token that changes whenever the image's bytes may have changed
    # (s3: ETag + LastModified, rbd: image id, file: inode + size); the
    # filesystem drops cached checksums of an image whose version changed
    version: typing.Optional[str] = None


def format_mtime_ns(ns):
    """The stored form of a modification time: exact decimal seconds."""
    ns = int(ns)
    if ns < 0:
        return "-" + format_mtime_ns(-ns)
    return "%d.%09d" % divmod(ns, 1_000_000_000)


def parse_mtime_ns(text):
    """Inverse of format_mtime_ns; also accepts plain floats and ints."""
    text = str(text).strip()
    if "." in text:
        sec, frac = text.split(".", 1)
        frac = (frac + "000000000")[:9]
        sign = -1 if sec.startswith("-") else 1
        return int(sec) * 1_000_000_000 + sign * int(frac or 0)
    return int(text) * 1_000_000_000


def validate_image_id(image_id, max_length=255):
    """Return ``str(image_id)`` or raise Invalid.

    glance_store passes ids straight into paths and keys; gsfs refuses the ones
    that would escape or corrupt the store.
    """
    image_id = str(image_id)
    if not image_id:
        raise exceptions.Invalid("Invalid image id: it is empty")
    if "/" in image_id or "\0" in image_id:
        raise exceptions.Invalid("Invalid image id %r: '/' and NUL are not allowed" % image_id)
    if ".." in image_id or image_id == ".":
        raise exceptions.Invalid("Invalid image id %r: '.' and '..' are not allowed" % image_id)
    if image_id.startswith(RESERVED_PREFIX):
        raise exceptions.Invalid("Invalid image id %r: names starting with %r are gsfs's own"
                                 % (image_id, RESERVED_PREFIX))
    if len(image_id.encode("utf-8", "surrogateescape")) > max_length:
        raise exceptions.Invalid(
            "Invalid image id: %d bytes is longer than the %d this store accepts"
            % (len(image_id.encode("utf-8", "surrogateescape")), max_length))
    return image_id


@contextlib.contextmanager
def translated(library_errors, translate, *args, **kwargs):
    """Raise the ``library_errors`` raised inside the block as the gsfs exception
    ``translate(exc, *args, **kwargs)`` returns, the original chained."""
    try:
        yield
    except library_errors as e:
        raise translate(e, *args, **kwargs) from e


def chunkreadable(data, chunk_size):
    """Iterate ``data`` in chunks: a file-like (has ``read``) or an iterable of bytes.

    Rejects what would silently corrupt an image: a bare bytes/str object
    (iterating it yields ints or characters) and non-bytes chunks.
    """
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        raise exceptions.Invalid(
            "Image data must be a file-like object or an iterable of bytes chunks, "
            "not %s" % type(data).__name__)
    if hasattr(data, "read"):
        def reader():
            while True:
                chunk = data.read(chunk_size)
                if not chunk:
                    return
                yield _check_chunk(chunk)
        return reader()
    try:
        iterator = iter(data)
    except TypeError:
        raise exceptions.Invalid(
            "Image data must be a file-like object or an iterable of bytes chunks, "
            "not %s" % type(data).__name__) from None
    return (_check_chunk(chunk) for chunk in iterator if chunk)


def _check_chunk(chunk):
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return chunk
    raise exceptions.Invalid("Image data chunks must be bytes, not %s" % type(chunk).__name__)


def read_range(offset, length):
    """``(offset, length)`` of a read() as ints; Invalid if either is negative."""
    offset, length = int(offset), int(length)
    if offset < 0 or length < 0:
        raise exceptions.Invalid("Invalid read: offset %d, length %d" % (offset, length))
    return offset, length


class SizeChecker:
    """glance_store's size rules: 0 means unknown; overflow fails before the
    chunk is written ("Size exceeds"), underflow after the last ("Size mismatch")."""

    def __init__(self, expected):
        self.expected = int(expected or 0)
        self.seen = 0

    def add(self, n):
        self.seen += n
        if self.expected and self.seen > self.expected:
            raise exceptions.Invalid("Size exceeds: expected %d bytes, got %d bytes"
                                     % (self.expected, self.seen))

    def finish(self):
        if self.expected and self.seen != self.expected:
            raise exceptions.Invalid("Size mismatch: expected %d bytes, got %d bytes"
                                     % (self.expected, self.seen))


def back_compat_add(store_add_fun):
    """Let old callers omit ``hashing_algo`` and get glance_store's 4-tuple.

    Mirrors glance_store's rules: 7 arguments in all, ``hashing_algo`` given by
    keyword, or a str in position 4 → 5-tuple; otherwise md5 is used and the
    multihash is dropped from the result.
    """

    @functools.wraps(store_add_fun)
    def add_adapter(*args, **kwargs):
        p_algo = 4
        max_args = 7
        num_args = len(args) + len(kwargs)
        if num_args == max_args or "hashing_algo" in kwargs or (
                len(args) > p_algo and isinstance(args[p_algo], str)):
            return store_add_fun(*args, **kwargs)
        if any("image_" in key for key in kwargs):
            kwargs["hashing_algo"] = "md5"
        else:
            args = args[:p_algo] + ("md5",) + args[p_algo:]
        location, size, checksum, _multihash, metadata = store_add_fun(*args, **kwargs)
        return location, size, checksum, metadata

    return add_adapter


class Store(capabilities.StoreCapability):
    OPTIONS = None
    MULTI_BACKEND_OPTIONS = config.MULTI_BACKEND_OPTS
    READ_CHUNKSIZE = 4 * 1024 * 1024
    WRITE_CHUNKSIZE = READ_CHUNKSIZE
    STORE_TYPE = None          # the entry-point name, e.g. "file"
    max_id_length = 255

    def __init__(self, conf, backend=None):
        super().__init__()
        self.conf = conf
        self.backend_group = backend
        self.store_location_class = None
        self._url_prefix = None
        if self.OPTIONS is not None:
            group = self.backend_group or "glance_store"
            if self.backend_group and self.MULTI_BACKEND_OPTIONS is not None:
                config.register_opts_ignoring_duplicates(
                    self.conf, self.MULTI_BACKEND_OPTIONS, group)
            config.register_opts_ignoring_duplicates(self.conf, self.OPTIONS, group)
            config.register_opts_ignoring_duplicates(
                self.conf, self.OPTIONS, config.SHARED_CONF_GROUP)

    def __str__(self):
        return "%s store %s" % (self.STORE_TYPE, self.backend_group)

    # -- configuration -------------------------------------------------------
    @property
    def url_prefix(self):
        return self._url_prefix

    @property
    def weight(self):
        if self.backend_group is None:
            return 0
        return getattr(self.conf, self.backend_group).weight

    @property
    def description(self):
        if self.backend_group is None:
            return None
        return getattr(self.conf, self.backend_group).store_description

    def group_conf(self):
        """This store's options, falling back to [backend_defaults]."""
        return config.BackendGroupConfiguration(
            self.OPTIONS or [], self.backend_group, conf=self.conf)

    def configure(self, re_raise_bsc=False):
        try:
            self.configure_add()
        except exceptions.BadStoreConfiguration as e:
            self.unset_capabilities(capabilities.BitMasks.WRITE_ACCESS)
            LOG.warning("Failed to configure store correctly: %s Disabling add method.", e)
            if re_raise_bsc:
                raise
        finally:
            self.update_capabilities()

    def configure_add(self):
        """Check the configuration; raise BadStoreConfiguration if unusable for add."""

    def get_schemes(self):
        raise NotImplementedError

    def get_store_location_class(self):
        if not self.store_location_class:
            import importlib
            module = importlib.import_module(type(self).__module__)
            self.store_location_class = module.StoreLocation
        return self.store_location_class

    # -- glance_store API ----------------------------------------------------
    @capabilities.check
    def get(self, location, offset=0, chunk_size=None, context=None):
        """(iterable of bytes, size). gsfs drivers serve offset/chunk_size everywhere:
        ``chunk_size`` is the total number of bytes wanted, as in glance_store's
        filesystem driver, and the returned size is then ``chunk_size``."""
        raise NotImplementedError

    def get_size(self, location, context=None):
        return self.stat_image(location).size

    @back_compat_add
    @capabilities.check
    def add(self, image_id, image_file, image_size, hashing_algo,
            context=None, verifier=None):
        hashing.validate_algo(hashing_algo)
        image_id = validate_image_id(image_id, self.max_id_length)
        return self._add(image_id, image_file, image_size, hashing_algo, verifier=verifier)

    @capabilities.check
    def delete(self, location, context=None):
        raise NotImplementedError

    def set_acls(self, location, public=False, read_tenants=None,
                 write_tenants=None, context=None):
        raise NotImplementedError()

    # -- gsfs extensions -----------------------------------------------------
    def add_image(self, image_id, image_file, image_size, hashing_algo="sha512",
                  verifier=None, replace=False):
        """add() for the filesystem: same 5-tuple; ``replace`` overwrites atomically."""
        if not self.is_capable(capabilities.BitMasks.WRITE_ACCESS):
            raise exceptions.StoreAddDisabled()
        hashing.validate_algo(hashing_algo)
        image_id = validate_image_id(image_id, self.max_id_length)
        return self._add(image_id, image_file, image_size, hashing_algo,
                         verifier=verifier, replace=replace)

    def _add(self, image_id, image_file, image_size, hashing_algo,
             verifier=None, replace=False):
        raise NotImplementedError

    def location_for(self, image_id):
        raise NotImplementedError

    def list_images(self):
        raise NotImplementedError

    def stat_image(self, location):
        raise NotImplementedError

    def read(self, location, offset, length):
        raise NotImplementedError

    def get_image_meta(self, location):
        return {}

    def set_image_meta(self, location, meta):
        raise NotImplementedError

    def rename(self, location, new_id, replace=False):
        raise exceptions.StoreAddDisabled("Store %s cannot rename images" % self)

    def capacity(self):
        return None

    PROBE_ID = "00000000-0000-4000-8000-0000c0ec4c0f"     # a well-formed Glance id no image has

    def check_access(self):
        """Stat an image that does not exist: NotFound is the healthy answer.
        Drivers whose images live in a bucket, pool or container also check
        that it exists, and raise what their listing raises when it does not."""
        try:
            self.stat_image(self.location_for(self.PROBE_ID))
        except exceptions.NotFound:
            pass

    def cleanup_leftovers(self):
        return []

    def ranged_get(self, location, offset=0, chunk_size=None):
        """get() with offset/length served through read(): an iterator of chunks."""
        size = self.stat_image(location).size
        end = size if not chunk_size else min(size, offset + chunk_size)

        def chunks():
            pos = offset
            while pos < end:
                data = self.read(location, pos, min(self.READ_CHUNKSIZE, end - pos))
                if not data:
                    return
                pos += len(data)
                yield data

        return chunks(), (chunk_size or size)

