"""S3 driver: glance_store 5.7's ``s3`` store, plus the gsfs extensions.

Compatible with glance_store 5.7 (same options, schemes, location URIs,
url_prefix, return shapes and messages); the differences are deliberate:

* Locations never carry credentials: ``s3://host/bucket/key`` or
  ``s3+https://host/bucket/key``. The older credentialed form
  ``s3://AK:SK@host/bucket/key`` still parses; the credentials in it are
  dropped (also from ``get_uri()``) and the configured ones are always used.
* ``add()`` works through the 4-tuple path too (glance's s3 driver needs
  ``hashing_algo``), and an image of unknown size (``image_size == 0``) is
  streamed as a multipart upload with growing part sizes instead of being
  buffered in memory. Part buffers share a fixed budget of
  ``(s3_store_thread_pools + 1)`` first-size parts (see docs/memory.md, "S3
  add"): parts are uploaded in parallel, the reader blocks while the budget is
  in use, and as parts grow fewer of them are in flight.
* Every failure of a multipart upload (part error, size error, an exception
  from the image source, KeyboardInterrupt) aborts the upload: nothing is left
  behind. The ETag of CompleteMultipartUpload is not used (radosgw sends '').
* ``get()`` serves ``offset``/``chunk_size`` with ranged GETs (size semantics
  of glance's filesystem driver) and a plain get is a single GET, not HEAD+GET.
* Every botocore error is translated by :func:`_s3_error` into a gsfs
  exception whose message names the bucket/key and the cause.
* Bucket creation omits the LocationConstraint for ``us-east-1`` (AWS rejects
  it; glance sends it and fails).

gsfs metadata (checksum, os_hash_algo, os_hash_value, mtime, ...) lives in a
sidecar object ``.gsfs-meta/<image id>`` next to the image (a JSON object of
str to str). Listing uses ``Delimiter='/'`` so sidecars are never images; the
sidecar follows its image on rename and goes away with it on delete. It also
records which object version it describes (ETag + LastModified), so a sidecar
left behind by a glance_store delete is ignored, not served as the metadata of
a new image of the same id; cleanup_leftovers() removes sidecars without image.
An add writes the sidecar only for its own object: when the HEAD after its
PUT or CompleteMultipartUpload shows another ETag, another writer has
replaced the object, and the metadata is left to that writer.

The mtime index
---------------
A listing must show the stored mtime (set by utimens, kept in the sidecar),
not LastModified (the upload time), or ``rsync -a`` sends everything again
after a remount; reading one sidecar per image would cost one GET per image.
So the image's sidecar has an index: one zero-byte object whose key carries
the value::

    .gsfs-mtime/<image id>/<mtime ns>.<tag hash>

``<mtime ns>`` is the image's mtime as signed decimal nanoseconds (the stored
one, else the object's LastModified second, which is what get_image_meta
reports then), ``<tag hash>`` the first 16 hex digits of the SHA-256 of the
object tag (ETag + LastModified second) the sidecar records. Image ids never
contain '/', so ``.gsfs-mtime/<id>/`` lists exactly one image's keys.
list_images() does one more paginated ListObjectsV2 (prefix ``.gsfs-mtime/``)
after the image listing: O(1) requests per 1000 images. An index key applies
only if its tag hash is that of the listed object, so the key of an older
object of that name (deleted or overwritten behind gsfs's back) is ignored,
as its sidecar is; if several keys of one image apply (a crash or a failed
delete between two writes), the newest object wins. stat_image() reads the
sidecar (one GET), so stat and listing agree.

Writes: set_image_meta() lists the image's index keys, puts the new one
(unless it is there already; with LastModified when the metadata has no
mtime), writes the sidecar, then deletes the other keys; if the sidecar
write fails, the new key is removed again. rename() does the same after its
sidecar write (the index follows the image, like the sidecar), delete()
removes the image's keys, and add() removes the keys of an older object of
that id but writes none (its metadata has no mtime, and a glance_store-style
add leaves just the image and its sidecar); there a failing index request only
logs. cleanup_leftovers() removes index keys whose image object does not
exist (only those: the bucket may be shared), and writes the index of
sidecars that have none for their object (an add() without set_image_meta(),
a sidecar from before the index): one GET each, once.

With 12 bytes of prefix and at most 38 after the id (``/``, 20 digits, ``.``,
16 hex digits), ids are limited to 974 bytes (``max_id_length``), so that
every key stays within S3's 1024 bytes.

Unfinished multipart uploads and the shared bucket
--------------------------------------------------
The bucket may be shared with Glance and with gsfs on other hosts, so an
unfinished upload is not necessarily a leftover. Every multipart upload gsfs
starts (add, and rename's multipart copy) is recorded in a local journal
(gsfs/journal.py; one small file per upload in ``gsfs_s3_journal_dir``:
endpoint, bucket, key, upload id, host, pid, start) that is removed when the
upload completes or is aborted; an abort that fails marks it abandoned.
cleanup_leftovers(), for each unfinished upload of an image key in the bucket:

* journaled by this host and its process is gone (exited, a zombie, or its pid
  now belongs to another process), or the entry is abandoned → aborted, entry
  removed;
* journaled by this host and its process runs → left alone;
* not journaled (Glance's, another host's, or one whose process died between
  CreateMultipartUpload and the journal write) → aborted only if its Initiated
  time is more than ``gsfs_s3_leftover_age_hours`` ago (0: never). Set it above
  the longest upload any client of the bucket may run.

Journal entries of this endpoint and bucket whose upload no longer exists are
removed (the journal is read before the uploads are listed, so an upload
started meanwhile is never taken for a vanished one).
"""

import concurrent.futures
import contextlib
import datetime
import hashlib
import json
import logging
import math
import re
import socket
import threading
import time

import boto3.session
import botocore.config
import botocore.exceptions
import botocore.utils
import urllib3.exceptions
from oslo_config import cfg

from gsfs import backend, capabilities, driver, exceptions, hashing, journal, location, process
from gsfs.budget import BUDGET

LOG = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

DEFAULT_LARGE_OBJECT_SIZE = 100          # MiB
DEFAULT_LARGE_OBJECT_CHUNK_SIZE = 10     # MiB
DEFAULT_LARGE_OBJECT_MIN_CHUNK_SIZE = 5  # MiB
DEFAULT_THREAD_POOLS = 10
MAX_PART_NUM = 10000                     # S3's limit on parts per multipart upload
MAX_PART_SIZE = 5 * GiB                  # S3's limit on one part
MAX_OBJECT_SIZE = 5 * TiB                # S3's limit on one object
META_PREFIX = ".gsfs-meta/"              # sidecar key prefix: .gsfs-meta/<image id>
MTIME_PREFIX = ".gsfs-mtime/"            # mtime index: .gsfs-mtime/<id>/<mtime ns>.<tag hash>
MAX_KEY_BYTES = 1024                     # S3's limit on a key (UTF-8)
_TAG_HASH_LEN = 16                       # hex digits of the object tag's hash in an index key
_INDEX_LEAF = re.compile(r"(-?[0-9]{1,19})\.([0-9a-f]{%d})" % _TAG_HASH_LEN)
_MIN_NS, _MAX_NS = -2 ** 63, 2 ** 63 - 1  # an index key holds a 64-bit mtime
_SIDECAR_TAG = "_gsfs_object"            # in a sidecar: the object version it describes

_CHECKSUM_CHOICES = ["when_required", "when_supported"]
_URL_FORMATS = ("auto", "virtual", "path")

OPTIONS = [
    cfg.StrOpt("s3_store_host",
               help="The S3 (or S3-compatible) server: a DNS name or an IP address, "
                    "optionally with http:// or https:// and a port. Required."),
    cfg.StrOpt("s3_store_region_name", default="",
               help="The S3 region name. When empty it is derived from "
                    "s3_store_host for AWS regional endpoints."),
    cfg.StrOpt("s3_store_access_key", secret=True,
               help="The S3 access key. Required."),
    cfg.StrOpt("s3_store_secret_key", secret=True,
               help="The S3 secret key. Required."),
    cfg.StrOpt("s3_store_bucket",
               help="The bucket images are added to. Required."),
    cfg.BoolOpt("s3_store_create_bucket_on_put", default=False,
                help="Create the bucket on the first add if it does not exist."),
    cfg.StrOpt("s3_store_bucket_url_format", default="auto",
               help="Bucket addressing: 'auto', 'virtual' (bucket.host) or "
                    "'path' (host/bucket); botocore's addressing_style."),
    cfg.IntOpt("s3_store_large_object_size", default=DEFAULT_LARGE_OBJECT_SIZE, min=0,
               help="Images of this size in MiB or larger (and images of unknown "
                    "size) are sent as multipart uploads."),
    cfg.IntOpt("s3_store_large_object_chunk_size", default=DEFAULT_LARGE_OBJECT_CHUNK_SIZE,
               help="Multipart part size in MiB (at least 5)."),
    cfg.IntOpt("s3_store_thread_pools", default=DEFAULT_THREAD_POOLS,
               help="Number of parts of one multipart upload sent in parallel."),
    cfg.StrOpt("s3_store_cacert", default="",
               help="CA bundle for HTTPS; empty means botocore's default bundle."),
    cfg.BoolOpt("s3_store_enable_data_integrity_protection", default=False,
                help="Use s3_store_request_checksum_calculation and "
                     "s3_store_response_checksum_validation; when False both are "
                     "'when_required'."),
    cfg.StrOpt("s3_store_request_checksum_calculation", default="when_required",
               choices=_CHECKSUM_CHOICES,
               help="botocore request_checksum_calculation (with integrity protection)."),
    cfg.StrOpt("s3_store_response_checksum_validation", default="when_required",
               choices=_CHECKSUM_CHOICES,
               help="botocore response_checksum_validation (with integrity protection)."),
    # gsfs options (prefixed so they never clash with glance_store's)
    cfg.StrOpt("gsfs_s3_journal_dir", default=journal.default_dir("s3-journal"),
               sample_default="/var/lib/gsfs/s3-journal as root, else "
                              "$XDG_STATE_HOME/gsfs/s3-journal",
               help="gsfs: local directory recording the multipart uploads this host "
                    "runs (created on demand), so that cleanup_leftovers() aborts "
                    "only those whose process is gone."),
    cfg.FloatOpt("gsfs_s3_leftover_age_hours", default=24.0, min=0,
                 help="gsfs: cleanup_leftovers() aborts an unfinished multipart upload "
                      "this host has no journal entry for (Glance's, another host's) "
                      "only if it was started more than this many hours ago; 0: never."),
]

# Options glance_store lets be falsy; any other falsy option is "not found".
_MAY_BE_FALSY = frozenset([
    "s3_store_create_bucket_on_put", "s3_store_large_object_size", "s3_store_region_name",
    "s3_store_cacert", "s3_store_enable_data_integrity_protection",
    "s3_store_request_checksum_calculation", "s3_store_response_checksum_validation",
])

_AWS_REGIONAL_HOST = re.compile(
    r"^(?:https?://)?s3-(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?"
    r"(?::\d+)?/?$")


def get_s3_location(s3_host):
    """The AWS region of a regional endpoint host (``s3-<region>.amazonaws.com``
    with optional scheme, port and trailing slash); '' for any other host."""
    match = _AWS_REGIONAL_HOST.match(s3_host or "")
    return match.group("region") if match else ""


def unknown_size_capacity(base, interval):
    """Bytes 10000 parts hold when part n is ``base * 2 ** ((n - 1) // interval)``
    (at most 5 GiB each)."""
    total = 0
    for first in range(1, MAX_PART_NUM + 1, interval):
        count = min(interval, MAX_PART_NUM + 1 - first)
        total += count * min(MAX_PART_SIZE, base << ((first - 1) // interval))
    return total


def growth_interval(base, candidates):
    """The largest interval (parts between doublings) in ``candidates`` with
    which 10000 parts starting at ``base`` bytes hold 5 TiB."""
    for interval in candidates:
        if unknown_size_capacity(base, interval) >= MAX_OBJECT_SIZE:
            return interval
    return min(candidates)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _mtime_ns(when):
    """Nanoseconds since the epoch of LastModified, in whole seconds: HEAD
    (an HTTP date) has no more, a listing has milliseconds; one image must not
    show two mtimes."""
    return (when - _EPOCH) // datetime.timedelta(seconds=1) * 1_000_000_000


def _etag(head):
    return str(head.get("ETag") or "").strip('"')


def _object_tag(head):
    """Identifies one version of an object (ETag and LastModified second): a
    sidecar is valid only for the object it was written for."""
    return "%s %d" % (_etag(head), _mtime_ns(head["LastModified"]) // 1_000_000_000)


def _image_info(key, size, when, version=None, stored_ns=None):
    """ImageInfo with mtime ``stored_ns`` if given, else LastModified ``when``."""
    ns = _mtime_ns(when) if stored_ns is None else stored_ns
    return driver.ImageInfo(key, size, ns / 1e9, ns, version)


def _stored_mtime_ns(meta):
    """The stored mtime of metadata ``meta`` in ns, or None (none, unreadable,
    or beyond the 64 bits an index key holds)."""
    text = meta.get("mtime")
    if text is None:
        return None
    try:
        ns = driver.parse_mtime_ns(text)
    except ValueError:
        return None
    return ns if _MIN_NS <= ns <= _MAX_NS else None


def _indexed_mtime(entries, tag):
    """The mtime (ns) that one image's index entries (see Store._mtime_index)
    give object version ``tag``: the newest matching entry's; None if none
    matches (no index, or only one of an older object of that name)."""
    want = _tag_hash(tag)
    best = None
    for key, ns, tag_hash, when in entries or ():
        if tag_hash == want and (best is None or (when, key) > best[:2]):
            best = (when, key, ns)
    return None if best is None else best[2]


def _tag_hash(tag):
    """The short hash of an object tag that an index key carries."""
    return hashlib.sha256(tag.encode("utf-8", "surrogateescape")).hexdigest()[:_TAG_HASH_LEN]


def _index_prefix(image_id):
    return MTIME_PREFIX + image_id + "/"


def _index_key(image_id, mtime_ns, tag):
    """The mtime index key saying: image ``image_id``, as object version ``tag``
    (see _object_tag), has mtime ``mtime_ns``."""
    return "%s%d.%s" % (_index_prefix(image_id), mtime_ns, _tag_hash(tag))


def _parse_index_key(key):
    """(image id, mtime ns, tag hash) of an index key; None if ``key`` is not one."""
    if not key.startswith(MTIME_PREFIX):
        return None
    image_id, sep, leaf = key[len(MTIME_PREFIX):].partition("/")
    match = _INDEX_LEAF.fullmatch(leaf)
    if not sep or not image_id or match is None:
        return None
    ns = int(match.group(1))
    if not _MIN_NS <= ns <= _MAX_NS:
        return None
    return image_id, ns, match.group(2)


def _strip_scheme(host):
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            return host[len(prefix):]
    return host


# --------------------------------------------------------------------------- errors

_NOT_FOUND_CODES = frozenset(["NoSuchKey", "NoSuchBucket", "NotFound", "404"])
_DENIED_CODES = frozenset([
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "AccountProblem", "InvalidObjectState", "403", "Forbidden"])
_FULL_CODES = frozenset([
    "EntityTooLarge", "QuotaExceeded", "InsufficientStorage", "StorageFull", "507", "413"])
_UNAVAILABLE_CODES = frozenset([
    "ServiceUnavailable", "SlowDown", "503", "RequestTimeout", "Throttling"])
_CONFIG_CODES = frozenset(["InvalidBucketName", "InvalidLocationConstraint",
                           "IllegalLocationConstraintException"])

_UNAVAILABLE_ERRORS = (
    botocore.exceptions.ConnectionError,          # EndpointConnectionError, timeouts, ...
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError,
)
_CONFIG_ERRORS = (
    botocore.exceptions.InvalidDNSNameError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.NoRegionError,
)
_LIBRARY_ERRORS = (
    botocore.exceptions.ClientError,
    botocore.exceptions.BotoCoreError,
    urllib3.exceptions.HTTPError,
)


def _s3_error(exc, op, bucket=None, key=None, write=False):
    """The gsfs exception for a botocore/boto3/urllib3 error ``exc`` raised by
    operation ``op`` on ``bucket``/``key``; None if ``exc`` is not one of those.

    The one place errors are mapped: 404 → NotFound(image=key); 403 → Forbidden
    (StorageWriteDenied when ``write``); quota / too large / 507 → StorageFull;
    connection failures, timeouts and 503 → RemoteServiceUnavailable; a bad
    bucket name or missing credentials → BadStoreConfiguration; anything else
    → BackendException. Messages never contain credentials.
    """
    where = "bucket %r" % (bucket,) if bucket else "the S3 store"
    if key is not None:
        where += " key %r" % (key,)
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        text = error.get("Message")
        cause = "%s (HTTP %s)" % (code or "error", status)
        if text and text != code:
            cause += ": %s" % text
        message = "S3 %s failed for %s: %s" % (op, where, cause)
        if code == "NoSuchUpload":
            return exceptions.BackendException(message)
        if code in _FULL_CODES or status in (413, 507):
            return exceptions.StorageFull(message)
        if code in _NOT_FOUND_CODES or status == 404:
            if key is not None:
                return exceptions.NotFound(image=key)
            return exceptions.NotFound(message)
        if code in _DENIED_CODES or status == 403:
            if write:
                return exceptions.StorageWriteDenied(message)
            return exceptions.Forbidden(message)
        if code in _UNAVAILABLE_CODES or status == 503:
            return exceptions.RemoteServiceUnavailable(message)
        if code in _CONFIG_CODES:
            return exceptions.BadStoreConfiguration(store_name="s3", reason=message)
        return exceptions.BackendException(message)
    if isinstance(exc, _CONFIG_ERRORS):
        return exceptions.BadStoreConfiguration(
            store_name="s3", reason="S3 %s for %s: %s" % (op, where, exc))
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return exceptions.RemoteServiceUnavailable(
            "S3 %s failed for %s: the server is unavailable (%s: %s)"
            % (op, where, type(exc).__name__, exc))
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return exceptions.BackendException(
            "S3 %s failed for %s: %s: %s" % (op, where, type(exc).__name__, exc))
    return None


def _s3_errors(op, bucket=None, key=None, write=False):
    """Raise library errors inside the block as gsfs exceptions (see _s3_error)."""
    return driver.translated(_LIBRARY_ERRORS, _s3_error, op, bucket, key, write)


def _unreachable(exc):
    """True if the server did not answer in time (a frozen server: every
    request would wait for the timeouts again), as opposed to an HTTP error
    answer or a refused or reset connection, which fail at once."""
    cause = exc.__cause__
    return isinstance(exc, exceptions.RemoteServiceUnavailable) and isinstance(
        cause, (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError))


def _is_missing(exc):
    """True for a ClientError meaning "no such key/bucket" (404)."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    code = str((exc.response.get("Error") or {}).get("Code") or "")
    status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchUpload")


def _error_code(exc):
    if isinstance(exc, botocore.exceptions.ClientError):
        return str((exc.response.get("Error") or {}).get("Code") or "")
    return ""


# --------------------------------------------------------------------------- locations

class StoreLocation(location.StoreLocation):
    """An S3 location: ``s3://host[:port]/bucket/key`` or ``s3+https://...``.

    ``s3+http://`` is accepted when parsing. The pre-5.7 credentialed form
    ``s3://AK:SK@host/bucket/key`` parses too; its credentials are dropped.
    """

    def process_specs(self):
        self.scheme = self.specs.get("scheme", "s3")
        host = self.specs.get("s3serviceurl") or ""
        if host.startswith("https://"):
            self.scheme = "s3+https"
        self.s3serviceurl = _strip_scheme(host).strip("/")
        self.bucket = self.specs.get("bucket")
        self.key = self.specs.get("key")

    def get_uri(self):
        return "%s://%s/%s/%s" % (self.scheme, self.s3serviceurl, self.bucket, self.key)

    def parse_uri(self, uri):
        if uri.count("://") != 1:
            LOG.info("Invalid S3 URI %r: more than one scheme; use s3+https:// for https",
                     location.redact_uri(uri))
            raise exceptions.BadStoreUri(uri=location.redact_uri(uri))
        self.validate_schemas(uri, valid_schemas=("s3://", "s3+http://", "s3+https://"))
        self.scheme, rest = uri.split("://", 1)
        path = rest.strip("/")
        # Old glance_store locations: AK:SK@host/bucket/key. The secret may
        # contain '/', so split at the first '@' and accept it as credentials
        # only if host/bucket/key remain after it.
        if "@" in path:
            creds, after = path.split("@", 1)
            if ":" in creds and len(after.strip("/").split("/")) >= 3:
                path = after.strip("/")
        parts = path.split("/")
        if len(parts) < 3 or not all(parts[-2:]) or not "/".join(parts[:-2]).strip("/"):
            LOG.error("Badly formed S3 URI: it needs host, bucket and key")
            raise exceptions.BadStoreUri(uri=location.redact_uri(uri))
        self.key = parts[-1]
        self.bucket = parts[-2]
        self.s3serviceurl = "/".join(parts[:-2]).strip("/")


# --------------------------------------------------------------------------- uploads

class _ResponseIndexable(backend.Indexable):
    """Indexable whose another() returns b'' at the end, as glance's s3 does."""

    def another(self):
        try:
            self.chunk = next(self.wrapped)
            self.cursor += len(self.chunk)
        except StopIteration:
            self.chunk = b""
        return self.chunk


class _PartBuffers:
    """Reusable part buffers within a fixed byte budget per upload and the
    process budget (gsfs/budget.py): take() blocks while the buffers in use
    plus the one asked for would exceed the upload's budget (one buffer is
    always allowed, however large), or while a new buffer does not fit in
    the process budget and none of this upload's own can be reused (a new
    buffer goes over the process budget only when no upload holds any, so
    16 uploads at once do not hold 16 parts beyond the budget). This is
    the upload's memory bound and its backpressure; as parts grow (unknown
    sizes), fewer are in flight, so the memory stays at max(budget, one part)
    instead of growing with the image. close() gives every buffer back."""

    held = 0                    # part-buffer bytes allocated by all uploads (under BUDGET.cond)

    def __init__(self, budget):
        self.budget = budget
        self._in_use = 0
        self._taken = {}        # id(buffer) → bytes accounted (a last part shrinks)
        self._free = []
        self._allocated = 0     # drawn from the process budget
        self._cond = BUDGET.cond  # one lock: a buffer given back here wakes waiters there

    def take(self, size):
        released = 0
        with self._cond:
            while self._in_use and self._in_use + size > self.budget:
                self._cond.wait()
            while True:
                buf = next((b for b in self._free if len(b) == size), None)
                if buf is not None:
                    self._free.remove(buf)
                    break
                if self._free:      # other sizes: drop them before allocating
                    dropped = sum(len(b) for b in self._free)
                    self._free.clear()
                    self._allocated -= dropped
                    _PartBuffers.held -= dropped
                    BUDGET.give_locked(dropped)
                    released += dropped
                drawn = BUDGET.try_draw(size)
                if not drawn and not _PartBuffers.held:
                    # no upload holds a part buffer (the budget is in upload
                    # queues): this one goes on, or none would. Otherwise it
                    # waits for one that holds buffers to end: each upload
                    # reuses its own, so one that holds any always goes on.
                    BUDGET.force(size)
                    drawn = True
                if drawn:
                    buf = bytearray(size)
                    self._allocated += size
                    _PartBuffers.held += size
                    break
                self._cond.wait()   # a part of ours, or another upload, gives back
            self._in_use += size
            self._taken[id(buf)] = size
        if released:
            BUDGET.wake()           # trio-side waiters, for what was dropped
        return buf

    def give(self, buf):
        with self._cond:
            self._in_use -= self._taken.pop(id(buf), len(buf))
            self._free.append(buf)
            self._cond.notify_all()

    def close(self):
        """The upload ended: every buffer goes back to the process budget."""
        with self._cond:
            n, self._allocated = self._allocated, 0
            _PartBuffers.held -= n
            self._free.clear()
        BUDGET.give(n)


class _MultipartUpload:
    """One multipart upload: parts go to a thread pool; any failure is kept
    and reported to the reader thread; abort() removes everything."""

    def __init__(self, store, client, bucket, key, buffers):
        self.store = store
        self.client = client
        self.bucket = bucket
        self.key = key
        self.buffers = buffers
        self.upload_id = None
        self.parts = 0
        self.size = 0
        self._etags = {}
        self._error = None
        self._lock = threading.Lock()
        self._executor = None

    def start(self):
        with _s3_errors("create multipart upload", self.bucket, self.key, write=True):
            resp = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
        self.upload_id = resp["UploadId"]
        self.store._upload_started(self.client, self.bucket, self.key, self.upload_id)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.store.thread_pools, thread_name_prefix="gsfs-s3-part")
        LOG.debug("Multipart upload of %s/%s started: %s", self.bucket, self.key,
                  self.upload_id)

    def submit(self, buf):
        """Upload ``buf`` as the next part (buf goes back to the pool when sent)."""
        self.check()
        if self.upload_id is None:
            self.start()
        self.parts += 1
        if self.parts > MAX_PART_NUM:
            self.buffers.give(buf)
            raise exceptions.StorageFull(
                "S3 add of bucket %r key %r: the image is larger than an S3 multipart "
                "upload can hold (%d parts)" % (self.bucket, self.key, MAX_PART_NUM))
        self.size += len(buf)
        self._executor.submit(self._upload_part, self.parts, buf)

    def _upload_part(self, number, buf):
        try:
            if self._error is not None:
                return
            resp = self.client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                PartNumber=number, Body=buf, ContentLength=len(buf))
            self._etags[number] = resp["ETag"]
        except BaseException as e:  # noqa: B036 - reported to the reader thread
            with self._lock:
                if self._error is None:
                    self._error = e
        finally:
            # the same buffer goes back: the reader reuses it, nothing is copied
            self.buffers.give(buf)

    def check(self):
        error = self._error
        if error is None:
            return
        mapped = _s3_error(error, "upload part", self.bucket, self.key, write=True)
        if mapped is None:
            raise error
        raise mapped from error

    def complete(self, before=None):
        """Wait for the parts, call ``before`` (the last word before publishing),
        then complete the upload."""
        self._executor.shutdown(wait=True)
        self.check()
        if before is not None:
            before()
        numbers = sorted(self._etags)
        if numbers != list(range(1, self.parts + 1)):
            raise exceptions.BackendException(
                "S3 add of bucket %r key %r: parts %s were not uploaded"
                % (self.bucket, self.key, sorted(set(range(1, self.parts + 1)) - set(numbers))))
        try:
            with _s3_errors("complete multipart upload", self.bucket, self.key, write=True):
                # rgw answers with an empty ETag here: nothing in the answer is used
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": self._etags[n]}
                                               for n in numbers]})
        except (exceptions.GlanceStoreException, exceptions.BackendException) as e:
            # the answer was lost (a reset, a cut body): the server may have
            # completed the upload all the same. It did if the object now has the
            # ETag of exactly these parts; then this add succeeded.
            if not self._completed_anyway():
                raise
            LOG.warning("Completing the multipart upload of %s/%s failed (%s), but the "
                        "object has the ETag of its parts: it was completed", self.bucket,
                        self.key, e)
        self.store._upload_ended(self.bucket, self.key, self.upload_id)

    def etag(self):
        """The ETag S3 gives the object this upload completes: the md5 of
        its parts' binary md5s, then "-" and the number of parts."""
        numbers = sorted(self._etags)
        digests = b"".join(bytes.fromhex(self._etags[n].strip('"')) for n in numbers)
        return "%s-%d" % (hashlib.md5(digests, usedforsecurity=False).hexdigest(),
                          len(numbers))

    def _completed_anyway(self):
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        except Exception:  # noqa: BLE001 - cannot tell: the add failed
            return False
        return _etag(head) == self.etag()

    def abort(self, wait=True):
        """Abort the upload. ``wait=False``: do not wait for the parts in flight
        and abort in the background (the server is not answering)."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
        if self.upload_id is None:
            return
        if not wait:
            LOG.warning("Aborting the multipart upload of %s/%s (%s) in the background: "
                        "the server is not answering", self.bucket, self.key, self.upload_id)
            self.store._upload_ended(self.bucket, self.key, self.upload_id, False)
            self._abort_later()
            return
        aborted = False
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            aborted = True
            LOG.info("Aborted the multipart upload of %s/%s (%s)", self.bucket, self.key,
                     self.upload_id)
        except Exception as e:
            LOG.error("Could not abort the multipart upload of %s/%s (%s): %s; retrying "
                      "in the background", self.bucket, self.key, self.upload_id, e)
            self._abort_later()
        finally:
            self.store._upload_ended(self.bucket, self.key, self.upload_id, aborted)

    # seconds between the retries of a failed abort (about 10 minutes in all)
    ABORT_RETRY_DELAYS = (1, 2, 4, 8, 15) + (30,) * 19

    def _abort_later(self):
        """The abort failed (typically: the server is unreachable, which is also
        why the upload failed). Retry it in a background thread so the upload
        leaves nothing once the server is back; if the process exits first,
        cleanup_leftovers at the next start aborts it."""
        store, client = self.store, self.client
        bucket, key, upload_id = self.bucket, self.key, self.upload_id

        def retry():
            for delay in self.ABORT_RETRY_DELAYS:
                time.sleep(delay)
                try:
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                except botocore.exceptions.ClientError as e:
                    if _error_code(e) in ("NoSuchUpload", "404"):
                        store._upload_ended(bucket, key, upload_id)
                        return          # gone already (e.g. cleanup_leftovers)
                    if not isinstance(_s3_error(e, "abort"), exceptions.RemoteServiceUnavailable):
                        LOG.error("Giving up aborting the multipart upload of %s/%s (%s): %s",
                                  bucket, key, upload_id, e)
                        return
                    continue
                except Exception:
                    continue
                store._upload_ended(bucket, key, upload_id)
                LOG.info("Aborted the multipart upload of %s/%s (%s) on a retry",
                         bucket, key, upload_id)
                return
            LOG.error("Could not abort the multipart upload of %s/%s (%s); the next "
                      "start of gsfs removes it (cleanup_leftovers)", bucket, key, upload_id)

        threading.Thread(target=retry, name="gsfs-s3-abort", daemon=True).start()


# --------------------------------------------------------------------------- the store

class Store(driver.Store):
    """S3 store (AWS S3, radosgw, any S3-compatible server)."""

    _CAPABILITIES = (capabilities.BitMasks.RW_ACCESS | capabilities.BitMasks.READ_RANDOM
                     | capabilities.BitMasks.DRIVER_REUSABLE
                     | capabilities.BitMasks.RENAME_COPY)
    OPTIONS = OPTIONS
    STORE_TYPE = "s3"
    EXAMPLE_URL = "s3://<S3_URL>/<BUCKET>/<OBJ>"

    READ_CHUNKSIZE = 4 * MiB
    WRITE_CHUNKSIZE = 5 * MiB       # read size of a file-like image source
    # S3 keys are <= 1024 bytes: the longest key gsfs derives from an id is its
    # mtime index key, 12 bytes of prefix plus 38 after the id
    max_id_length = 974             # 1024 - len(".gsfs-mtime/") - len("/<int64>.<16 hex>")

    # Part sizes of an upload of unknown size: part n (from 1) is
    # chunk_size * 2 ** ((n - 1) // interval), at most MAX_PART_SIZE, where
    # interval is the largest of GROWTH_INTERVALS letting 10000 parts hold 5 TiB.
    GROWTH_INTERVALS = tuple(range(1000, 0, -50))
    # rename: objects larger than this are copied with UploadPartCopy
    MULTIPART_COPY_THRESHOLD = 5 * GiB
    MULTIPART_COPY_PART_SIZE = 512 * MiB

    def __init__(self, conf, backend=None):
        super().__init__(conf, backend=backend)
        self._client = None
        self._client_lock = threading.Lock()
        self._options_loaded = False
        self._opt = {}
        self._growth = (None, None)
        self._active_uploads = set()

    @staticmethod
    def get_schemes():
        return ("s3", "s3+http", "s3+https")

    # -- configuration -------------------------------------------------------
    def _load_options(self):
        gc = self.group_conf()
        for name in ("s3_store_host", "s3_store_region_name", "s3_store_access_key",
                     "s3_store_secret_key", "s3_store_bucket",
                     "s3_store_create_bucket_on_put", "s3_store_bucket_url_format",
                     "s3_store_large_object_size", "s3_store_large_object_chunk_size",
                     "s3_store_thread_pools", "s3_store_cacert",
                     "s3_store_enable_data_integrity_protection",
                     "s3_store_request_checksum_calculation",
                     "s3_store_response_checksum_validation",
                     "gsfs_s3_journal_dir", "gsfs_s3_leftover_age_hours"):
            self._opt[name] = getattr(gc, name)
        host = self._opt["s3_store_host"] or ""
        self.s3_host = host
        self.scheme = "s3+https" if host.startswith("https://") else "s3"
        self.full_s3_host = host if host.startswith(("http://", "https://")) else "http://" + host
        self.bucket = self._opt["s3_store_bucket"]
        self.region_name = self._opt["s3_store_region_name"] or ""
        self.large_object_size = (self._opt["s3_store_large_object_size"] or 0) * MiB
        self.large_object_chunk_size = (self._opt["s3_store_large_object_chunk_size"] or 0) * MiB
        self.thread_pools = self._opt["s3_store_thread_pools"] or 0
        self.journal = journal.Journal(self._opt["gsfs_s3_journal_dir"]
                                       or journal.default_dir("s3-journal"))
        self._options_loaded = True

    def _option(self, name):
        """An option value; a falsy required one → BadStoreConfiguration (glance's rule)."""
        value = self._opt[name]
        if not value and name not in _MAY_BE_FALSY:
            reason = "Could not find %s in configuration options." % name
            LOG.error(reason)
            raise exceptions.BadStoreConfiguration(store_name="s3", reason=reason)
        return value

    def configure_add(self):
        with self._client_lock:
            self._client = None
        self._opt = {}
        self._load_options()
        for name in ("s3_store_host", "s3_store_region_name", "s3_store_access_key",
                     "s3_store_secret_key", "s3_store_bucket",
                     "s3_store_large_object_size", "s3_store_large_object_chunk_size"):
            self._option(name)
        if self.large_object_chunk_size < DEFAULT_LARGE_OBJECT_MIN_CHUNK_SIZE * MiB:
            reason = ("s3_store_large_object_chunk_size must be at least %d MB."
                      % DEFAULT_LARGE_OBJECT_MIN_CHUNK_SIZE)
            LOG.error(reason)
            raise exceptions.BadStoreConfiguration(store_name="s3", reason=reason)
        if self.large_object_chunk_size > MAX_PART_SIZE:
            reason = ("s3_store_large_object_chunk_size must be at most %d MB."
                      % (MAX_PART_SIZE // MiB))
            raise exceptions.BadStoreConfiguration(store_name="s3", reason=reason)
        self._option("s3_store_thread_pools")
        if self.thread_pools <= 0:
            reason = "s3_store_thread_pools must be a positive integer. %s" % self.thread_pools
            LOG.error(reason)
            raise exceptions.BadStoreConfiguration(store_name="s3", reason=reason)
        url_format = self._option("s3_store_bucket_url_format")
        if url_format not in _URL_FORMATS:
            raise exceptions.BadStoreConfiguration(
                store_name="s3", reason="s3_store_bucket_url_format must be one of %s, not %r"
                % (", ".join(_URL_FORMATS), url_format))
        if self.backend_group:
            self._url_prefix = "%s://%s/%s" % (
                self.scheme, _strip_scheme(self.s3_host).strip("/"), self.bucket)

    def _ensure_options(self):
        if not self._options_loaded:
            self._opt = {}
            self._load_options()

    def _get_client(self):
        """This store's boto3 client (thread-safe; built once, on first use)."""
        client = self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._client is None:
                self._client = self._create_client()
            return self._client

    def _create_client(self):
        self._ensure_options()
        host = self._option("s3_store_host")
        access_key = self._option("s3_store_access_key")
        secret_key = self._option("s3_store_secret_key")
        url_format = self._option("s3_store_bucket_url_format")
        if self._opt["s3_store_enable_data_integrity_protection"]:
            request_checksum = self._opt["s3_store_request_checksum_calculation"]
            response_checksum = self._opt["s3_store_response_checksum_validation"]
        else:
            request_checksum = response_checksum = "when_required"
        config = botocore.config.Config(
            # no SHA-256 of every request body (botocore signs bodies over http):
            # UNSIGNED-PAYLOAD, as over https; the image's md5 and multihash are
            # computed by gsfs from the same bytes (docs/compatibility.md 4.15)
            s3={"addressing_style": url_format, "payload_signing_enabled": False},
            request_checksum_calculation=request_checksum,
            response_checksum_validation=response_checksum,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=max(10, (self.thread_pools or DEFAULT_THREAD_POOLS) + 4),
        )
        bucket = self.bucket
        if url_format == "virtual" and bucket and not botocore.utils.check_dns_name(bucket):
            raise exceptions.BadStoreConfiguration(
                store_name="s3", reason="The bucket name %r is not valid in a DNS name, "
                "which s3_store_bucket_url_format = virtual needs" % bucket)
        full_host = host if host.startswith(("http://", "https://")) else "http://" + host
        aws_region = get_s3_location(host)
        if self.region_name:
            region_name, endpoint_url = self.region_name, full_host
        elif aws_region:
            region_name, endpoint_url = aws_region, None
        else:
            region_name, endpoint_url = None, full_host
        cacert = self._opt["s3_store_cacert"]
        session = boto3.session.Session(aws_access_key_id=access_key,
                                        aws_secret_access_key=secret_key)
        try:
            with _s3_errors("client setup", bucket):
                return session.client(
                    service_name="s3", endpoint_url=endpoint_url, region_name=region_name,
                    use_ssl=full_host.startswith("https://"),
                    verify=cacert or None, config=config)
        except ValueError as e:          # botocore: "Invalid endpoint: ..."
            raise exceptions.BadStoreConfiguration(
                store_name="s3", reason="Invalid s3_store_host %r: %s" % (host, e)) from e

    # -- helpers -------------------------------------------------------------
    @staticmethod
    def _where(location_or_loc):
        loc = getattr(location_or_loc, "store_location", location_or_loc)
        return loc.bucket, loc.key

    def _new_location(self, image_id, bucket=None, scheme=None, host=None):
        specs = {"scheme": scheme or self.scheme,
                 "bucket": bucket or self.bucket,
                 "key": image_id,
                 "s3serviceurl": host or self.full_s3_host}
        return location.Location(specs["scheme"], StoreLocation, self.conf,
                                 image_id=image_id, store_specs=specs,
                                 backend=self.backend_group)

    def _head(self, client, bucket, key, op="stat"):
        """head_object, or None if the object does not exist."""
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if _is_missing(e):
                return None
            raise _s3_error(e, op, bucket, key) from e
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, op, bucket, key) from e

    def _bucket_exists(self, client, bucket):
        try:
            client.head_bucket(Bucket=bucket)
            return True
        except botocore.exceptions.ClientError as e:
            if _is_missing(e):
                return False
            raise _s3_error(e, "bucket check", bucket, write=True) from e
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, "bucket check", bucket, write=True) from e

    def _ensure_bucket(self, client, bucket):
        if self._bucket_exists(client, bucket):
            return
        if not self._opt["s3_store_create_bucket_on_put"]:
            raise exceptions.BackendException(
                "The bucket %s does not exist in S3. Please set the "
                "s3_store_create_bucket_on_put option to add bucket to S3 "
                "automatically." % bucket)
        region = self.region_name or get_s3_location(self.s3_host)
        kwargs = {"Bucket": bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except botocore.exceptions.ClientError as e:
            # a concurrent add may have created it: that is fine
            if _error_code(e) in ("BucketAlreadyOwnedByYou",):
                return
            mapped = _s3_error(e, "bucket creation", bucket, write=True)
            if isinstance(mapped, exceptions.BackendException):
                mapped = exceptions.BadStoreConfiguration(
                    store_name="s3", reason="Failed to add bucket to S3: %s" % mapped)
            raise mapped from e
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, "bucket creation", bucket, write=True) from e
        LOG.info("Created bucket %s", bucket)

    def _part_size(self, number, image_size):
        """Size of part ``number`` (from 1) of an upload of ``image_size`` (0: unknown)."""
        base = self.large_object_chunk_size
        if image_size:
            needed = math.ceil(image_size / MAX_PART_NUM / MiB) * MiB
            return min(MAX_PART_SIZE, max(base, needed))
        return min(MAX_PART_SIZE, base << ((number - 1) // self._growth_interval()))

    def _growth_interval(self):
        base = self.large_object_chunk_size
        if self._growth[0] != base:
            self._growth = (base, growth_interval(base, self.GROWTH_INTERVALS))
        return self._growth[1]

    # -- the journal of this host's multipart uploads (see the module docstring)
    @staticmethod
    def _journal_name(bucket, key, upload_id):
        return "%s/%s/%s" % (bucket, upload_id, key)

    def _upload_started(self, client, bucket, key, upload_id):
        self._active_uploads.add(upload_id)
        self.journal.begin(self._journal_name(bucket, key, upload_id),
                           endpoint=client.meta.endpoint_url, bucket=bucket, key=key,
                           upload_id=upload_id)

    def _upload_ended(self, bucket, key, upload_id, gone=True):
        """The upload completed or was aborted (``gone``), or its abort failed:
        then the entry stays, marked abandoned, for cleanup_leftovers()."""
        self._active_uploads.discard(upload_id)
        self.journal.end(self._journal_name(bucket, key, upload_id), gone)

    # -- glance_store API ----------------------------------------------------
    @capabilities.check
    def get(self, location, offset=0, chunk_size=None, context=None):
        """(iterable of chunks, size). With ``offset``/``chunk_size`` a ranged
        GET; ``chunk_size`` is the total number of bytes wanted and is then the
        returned size; otherwise the returned size is the image size."""
        client = self._get_client()
        bucket, key = self._where(location)
        offset = int(offset or 0)
        kwargs = {"Bucket": bucket, "Key": key}
        if offset or chunk_size:
            end = "" if not chunk_size else str(offset + int(chunk_size) - 1)
            kwargs["Range"] = "bytes=%d-%s" % (offset, end)
        try:
            resp = client.get_object(**kwargs)
        except botocore.exceptions.ClientError as e:
            if _error_code(e) != "InvalidRange":
                raise _s3_error(e, "get", bucket, key) from e
            # offset at/after the end: nothing to read
            size = chunk_size or self._stat(client, bucket, key, stored=False).size
            return _ResponseIndexable(iter(()), size), size
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, "get", bucket, key) from e
        if "Range" in kwargs:
            total = self._total_from_range(resp)
            size = int(chunk_size) if chunk_size else total
        else:
            size = resp["ContentLength"]
        chunks = self._stream(resp["Body"], bucket, key)
        return _ResponseIndexable(chunks, size), size

    @staticmethod
    def _total_from_range(resp):
        content_range = resp.get("ContentRange") or ""
        total = content_range.rpartition("/")[2]
        if total.isdigit():
            return int(total)
        return resp["ContentLength"]

    def _stream(self, body, bucket, key):
        try:
            with _s3_errors("read", bucket, key):
                while True:
                    data = body.read(self.READ_CHUNKSIZE)
                    if not data:
                        return
                    yield data
        finally:
            body.close()

    def get_size(self, location, context=None):
        return self.stat_image(location).size

    @capabilities.check
    def delete(self, location, context=None):
        """Delete the image (NotFound if missing), its gsfs sidecar and mtime
        index; returns the DeleteObject response, as glance_store 5.7 does."""
        client = self._get_client()
        bucket, key = self._where(location)
        if self._head(client, bucket, key, op="delete") is None:
            LOG.warning("Could not find key %s in bucket %s", key, bucket)
            raise exceptions.NotFound(image=key)
        with _s3_errors("delete", bucket, key, write=True):
            resp = client.delete_object(Bucket=bucket, Key=key)
        self._delete_sidecar(client, bucket, key, quiet=True)
        self._update_index(client, bucket, key, None, None, quiet=True)
        return resp

    # -- add -----------------------------------------------------------------
    def _add(self, image_id, image_file, image_size, hashing_algo,
             verifier=None, replace=False):
        self._ensure_options()
        client = self._get_client()
        bucket = self._option("s3_store_bucket")
        key = image_id
        loc = self._new_location(key)
        self._ensure_bucket(client, bucket)
        if not replace and self._head(client, bucket, key, op="add") is not None:
            LOG.warning("S3 already has an image with bucket %s, key %s", bucket, key)
            raise exceptions.Duplicate(image=key)

        image_size = int(image_size or 0)
        hasher = hashing.ImageHasher(hashing_algo, verifier)
        checker = driver.SizeChecker(image_size)
        chunks = driver.chunkreadable(image_file, self.WRITE_CHUNKSIZE)
        if image_size and image_size < self.large_object_size:
            first_part = image_size          # one PUT, never multipart
        else:
            first_part = self._part_size(1, image_size)
        total, etag = self._upload(client, bucket, key, chunks, checker, hasher,
                                   image_size, first_part)
        head = self._head(client, bucket, key, op="add")
        meta = {"checksum": hasher.checksum, "os_hash_algo": hasher.algo,
                "os_hash_value": hasher.hash_value}
        if head is not None and _etag(head) != etag:
            # another writer of this name (a second host) completed its own
            # object after ours: the last writer wins, and this add's checksums
            # must not be stored as the metadata of that other object
            LOG.warning("s3://%s/%s was replaced by another writer right after this add "
                        "stored it; the metadata is left to that writer", bucket, key)
        elif head is None or head["ContentLength"] != total:
            raise exceptions.BackendException(
                "S3 add of bucket %r key %r: the object written has %s bytes, not %d"
                % (bucket, key, None if head is None else head["ContentLength"], total))
        else:
            written = self._reset_sidecar(client, bucket, key, head, meta)
            # no mtime in an add's metadata, so no index key (cleanup_leftovers
            # writes it); the keys of an older object of this id go
            self._update_index(client, bucket, key,
                               head if written and "mtime" in meta else None, meta, quiet=True)
        metadata = {"store": self.backend_group} if self.backend_group else {}
        LOG.debug("Wrote %d bytes to S3 bucket %s key %s, checksum %s",
                  total, bucket, key, hasher.checksum)
        return loc.get_store_uri(), total, hasher.checksum, hasher.hash_value, metadata

    def _upload(self, client, bucket, key, chunks, checker, hasher, image_size, first_part):
        """Send the image: one PUT if it fits in the first part, else a
        multipart upload with parts sent in parallel. Returns the size and
        the ETag of the object this upload made."""
        buffers = _PartBuffers((self.thread_pools + 1) * first_part)
        try:
            return self._send_parts(client, bucket, key, chunks, checker, hasher, image_size,
                                    first_part, buffers)
        finally:
            buffers.close()

    def _send_parts(self, client, bucket, key, chunks, checker, hasher, image_size,
                    first_part, buffers):
        mpu = _MultipartUpload(self, client, bucket, key, buffers)
        number = 1
        buf = buffers.take(first_part)
        pos = 0
        full = None            # a full part not sent yet: it may be the only one
        try:
            for chunk in chunks:
                checker.add(len(chunk))      # "Size exceeds" before anything is sent
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    if buf is None:
                        mpu.submit(full)
                        full = None
                        number += 1
                        buf = buffers.take(self._part_size(number, image_size))
                        pos = 0
                    n = min(len(view), len(buf) - pos)
                    buf[pos:pos + n] = view[:n]
                    pos += n
                    view = view[n:]
                    if pos == len(buf):
                        full, buf = buf, None
                del view, chunk
            checker.finish()                 # "Size mismatch"
            if buf is not None:
                del buf[pos:]
                last, buf = buf, None
                if full is not None:
                    mpu.submit(full)
                    full = None
            else:
                last, full = full, None
            if mpu.upload_id is None:
                hasher.before_publish()
                with _s3_errors("add", bucket, key, write=True):
                    resp = client.put_object(Bucket=bucket, Key=key, Body=last)
                return len(last), _etag(resp)
            if last:
                mpu.submit(last)
            last = None
            mpu.complete(before=hasher.before_publish)
        except BaseException as e:
            buf = full = last = None  # noqa: F841 - drop the buffers before waiting
            # the server is unreachable or not answering: waiting for the parts in
            # flight and for an abort would take every timeout again; abort in the
            # background (cleanup_leftovers covers a process that exits first). A
            # server that answered (a 500, a 503) or reset the connection is asked
            # to abort at once, so nothing is left when the close returns.
            mpu.abort(wait=not _unreachable(e))
            raise
        return mpu.size, mpu.etag()

    # -- gsfs extensions -----------------------------------------------------
    def location_for(self, image_id):
        image_id = driver.validate_image_id(image_id, self.max_id_length)
        self._ensure_options()
        self._option("s3_store_host")
        self._option("s3_store_bucket")
        return self._new_location(image_id)

    def _listing(self, bucket, call):
        """``call()``, a listing of ``bucket``: its result, or None when the
        bucket does not exist and s3_store_create_bucket_on_put makes it at the
        first add. Otherwise a missing bucket names the fix."""
        try:
            return call()
        except botocore.exceptions.ClientError as e:
            if _error_code(e) != "NoSuchBucket":
                raise _s3_error(e, "list", bucket) from e
            if self._opt["s3_store_create_bucket_on_put"]:
                return None
            raise exceptions.BackendException(
                "The bucket %s does not exist in S3. Please set the "
                "s3_store_create_bucket_on_put option to add bucket to S3 "
                "automatically." % bucket) from e
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, "list", bucket) from e

    def check_access(self):
        """One listing request of at most one key: fails as list_images() does."""
        self._ensure_options()
        bucket = self._option("s3_store_bucket")
        client = self._get_client()
        self._listing(bucket, lambda: client.list_objects_v2(Bucket=bucket, MaxKeys=1))

    def list_images(self):
        """ImageInfo of every image (top-level key) in the configured bucket.

        ``mtime`` is the stored mtime (what get_image_meta() returns) where the
        mtime index has it for this very object, else LastModified; ``version``
        is the object tag (ETag + LastModified second). Two paginated listings:
        the images, then the mtime index (see the module docstring).
        """
        self._ensure_options()
        client = self._get_client()
        bucket = self._option("s3_store_bucket")
        def both():
            objects = self._image_objects(client, bucket)
            return objects, (self._mtime_index(client, bucket) if objects else {})

        objects, index = self._listing(bucket, both) or ({}, {})
        images = []
        for image_id, obj in objects.items():
            tag = _object_tag(obj)
            images.append(_image_info(image_id, obj["Size"], obj["LastModified"], tag,
                                      _indexed_mtime(index.get(image_id), tag)))
        return images

    def _image_objects(self, client, bucket):
        """{image id: listed object} of the bucket's top-level keys that are
        image ids (botocore errors propagate)."""
        objects = {}
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/")
        for page in pages:
            for obj in page.get("Contents", ()):
                if self._is_image_id(obj["Key"]):
                    objects[obj["Key"]] = obj
                else:
                    LOG.debug("Skipping S3 key %r: not an image id", obj["Key"])
        return objects

    @staticmethod
    def _mtime_index(client, bucket):
        """{image id: [(index key, mtime ns, tag hash, LastModified), ...]} of
        the whole mtime index (botocore errors propagate)."""
        index = {}
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=MTIME_PREFIX)
        for page in pages:
            for obj in page.get("Contents", ()):
                parsed = _parse_index_key(obj["Key"])
                if parsed is None:
                    LOG.debug("Ignoring S3 key %r: not an mtime index key", obj["Key"])
                    continue
                image_id, ns, tag_hash = parsed
                index.setdefault(image_id, []).append(
                    (obj["Key"], ns, tag_hash, obj["LastModified"]))
        return index

    def _check_writable(self, what):
        if not self.is_capable(capabilities.BitMasks.WRITE_ACCESS):
            raise exceptions.StoreAddDisabled(
                "Store %s cannot %s: its configuration failed, writing is disabled"
                % (self, what))

    def _stat(self, client, bucket, key, stored=True):
        """ImageInfo from a HEAD; with ``stored`` the mtime is the sidecar's
        (one GET more) where it has one for this object."""
        head = self._head(client, bucket, key)
        if head is None:
            raise exceptions.NotFound(image=key)
        ns = None
        if stored:
            ns = _stored_mtime_ns(self._valid_meta(client, bucket, key, head, quiet=True))
        return _image_info(key, head["ContentLength"], head["LastModified"],
                           _object_tag(head), ns)

    def stat_image(self, location):
        """ImageInfo from a HEAD and the sidecar: mtime and version as
        list_images() gives them (a HEAD and a GET)."""
        bucket, key = self._where(location)
        return self._stat(self._get_client(), bucket, key)

    def read(self, location, offset, length):
        """``length`` bytes at ``offset``; shorter only at the end, b'' after it."""
        offset, length = driver.read_range(offset, length)
        if length == 0:
            return b""
        client = self._get_client()
        bucket, key = self._where(location)
        try:
            resp = client.get_object(Bucket=bucket, Key=key,
                                     Range="bytes=%d-%d" % (offset, offset + length - 1))
        except botocore.exceptions.ClientError as e:
            if _error_code(e) == "InvalidRange":
                return b""
            raise _s3_error(e, "read", bucket, key) from e
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, "read", bucket, key) from e
        body = resp["Body"]
        try:
            with _s3_errors("read", bucket, key):
                return body.read()
        finally:
            body.close()

    @staticmethod
    def _sidecar_key(key):
        return META_PREFIX + key

    def _read_sidecar(self, client, bucket, key):
        """The sidecar's dict (with its object tag), or None if there is none."""
        meta_key = self._sidecar_key(key)
        try:
            resp = client.get_object(Bucket=bucket, Key=meta_key)
            with contextlib.closing(resp["Body"]) as body:
                raw = body.read()
        except botocore.exceptions.ClientError as e:
            if _is_missing(e):
                return None
            raise _s3_error(e, "metadata read", bucket, meta_key) from e
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, "metadata read", bucket, meta_key) from e
        try:
            meta = json.loads(raw)
        except ValueError:
            LOG.warning("Ignoring the unreadable gsfs metadata %s/%s", bucket, meta_key)
            return {}
        if not isinstance(meta, dict):
            return {}
        return {str(k): str(v) for k, v in meta.items()}

    def _valid_meta(self, client, bucket, key, head, quiet=False):
        """The stored metadata of the object version ``head`` describes: {} if
        there is no sidecar or it was written for another version (the image
        was deleted and re-added behind gsfs's back, e.g. by glance_store)."""
        raw = self._read_sidecar(client, bucket, key)
        if not raw:
            return {}
        tag = raw.pop(_SIDECAR_TAG, None)
        if tag is not None and tag != _object_tag(head):
            LOG.log(logging.DEBUG if quiet else logging.INFO,
                    "Ignoring the gsfs metadata of s3://%s/%s: it describes an older "
                    "object of that name", bucket, key)
            return {}
        return raw

    def _write_sidecar(self, client, bucket, key, head, meta):
        """Store ``meta`` as the metadata of object version ``head``."""
        meta = dict(meta)
        meta[_SIDECAR_TAG] = _object_tag(head)
        meta_key = self._sidecar_key(key)
        with _s3_errors("metadata write", bucket, meta_key, write=True):
            client.put_object(Bucket=bucket, Key=meta_key,
                              Body=json.dumps(meta, sort_keys=True).encode("utf-8"),
                              ContentType="application/json")

    def _delete_sidecar(self, client, bucket, key, quiet=False):
        meta_key = self._sidecar_key(key)
        try:
            with _s3_errors("metadata delete", bucket, meta_key, write=True):
                client.delete_object(Bucket=bucket, Key=meta_key)
        except (exceptions.GlanceStoreException, exceptions.BackendException) as e:
            if not quiet:
                raise
            LOG.warning("Could not remove the gsfs metadata of %s/%s: %s", bucket, key, e)

    def _reset_sidecar(self, client, bucket, key, head, meta):
        """After an add: the new image's metadata replaces any stale sidecar.
        The image is complete already, so a failure here only logs. True if
        the sidecar was written."""
        try:
            self._write_sidecar(client, bucket, key, head, meta)
            return True
        except (exceptions.GlanceStoreException, exceptions.BackendException) as e:
            LOG.warning("Could not store the gsfs metadata of %s/%s: %s", bucket, key, e)
            self._delete_sidecar(client, bucket, key, quiet=True)
            return False

    # -- the mtime index (see the module docstring) -----------------------------
    @staticmethod
    def _index_keys(client, bucket, key):
        """The mtime index keys of image ``key`` (normally none or one); other
        keys under its prefix are not gsfs's and are left alone."""
        keys = []
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=_index_prefix(key))
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", ())
                        if _parse_index_key(obj["Key"]) is not None)
        return keys

    def _update_index(self, client, bucket, key, head, meta, between=None, quiet=False):
        """Make the mtime index of image ``key`` give object version ``head``
        the mtime of ``meta`` (the stored one, else LastModified); ``head``
        None: remove the image's index.

        The image's index keys are listed, the new key is put (unless it is
        there), ``between()`` runs (the sidecar write), then the image's other
        keys are deleted; if ``between()`` fails the new key is removed again.
        A failing delete of an old key only logs (the new key is the newest,
        it wins in a listing). With ``quiet`` any failing index request only
        logs, and ``between()`` runs all the same. True if the new key (or
        none, for ``head`` None) is in place.
        """
        new = None
        if head is not None:
            ns = _stored_mtime_ns(meta or {})
            if ns is None:
                ns = _mtime_ns(head["LastModified"])
            new = _index_key(key, ns, _object_tag(head))
        prefix = _index_prefix(key)
        old, created, ok = [], False, True
        try:
            with _s3_errors("mtime index list", bucket, prefix):
                old = self._index_keys(client, bucket, key)
            if new is not None and new not in old:
                with _s3_errors("mtime index write", bucket, new, write=True):
                    client.put_object(Bucket=bucket, Key=new, Body=b"")
                created = True
        except (exceptions.GlanceStoreException, exceptions.BackendException) as e:
            if not quiet:
                raise
            LOG.warning("Could not update the gsfs mtime index of %s/%s: %s", bucket, key, e)
            ok = False
        try:
            if between is not None:
                between()
        except BaseException:
            if created:
                self._delete_index_keys(client, bucket, [new])
            raise
        self._delete_index_keys(client, bucket, [k for k in old if k != new])
        return ok

    def _delete_index_keys(self, client, bucket, keys):
        for index_key in keys:
            try:
                with _s3_errors("mtime index delete", bucket, index_key, write=True):
                    client.delete_object(Bucket=bucket, Key=index_key)
            except (exceptions.GlanceStoreException, exceptions.BackendException) as e:
                LOG.warning("Could not remove the gsfs mtime index key %s/%s: %s",
                            bucket, index_key, e)

    def _head_or_not_found(self, client, bucket, key, op="stat"):
        head = self._head(client, bucket, key, op=op)
        if head is None:
            raise exceptions.NotFound(image=key)
        return head

    def get_image_meta(self, location):
        """The image's gsfs metadata (str → str): what was stored for this very
        object (add stores checksum, os_hash_algo, os_hash_value; see
        set_image_meta) and always ``mtime`` (format_mtime_ns): the stored one,
        else LastModified. NotFound if the image does not exist."""
        client = self._get_client()
        bucket, key = self._where(location)
        head = self._head_or_not_found(client, bucket, key, op="metadata read")
        meta = self._valid_meta(client, bucket, key, head)
        meta.setdefault("mtime", driver.format_mtime_ns(_mtime_ns(head["LastModified"])))
        return meta

    def set_image_meta(self, location, meta):
        """Merge ``meta`` (str → str) into the image's stored metadata and
        update its mtime index (see the module docstring). ``mtime`` must be
        a decimal number of seconds; it is stored as format_mtime_ns writes it."""
        if not isinstance(meta, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise exceptions.Invalid("Image metadata must be a dict of str to str")
        if "mtime" in meta:
            try:
                ns = driver.parse_mtime_ns(meta["mtime"])
            except ValueError as e:
                raise exceptions.Invalid("Invalid mtime %r" % (meta["mtime"],)) from e
            if not _MIN_NS <= ns <= _MAX_NS:
                raise exceptions.Invalid("Invalid mtime %r: out of range" % (meta["mtime"],))
            meta = dict(meta, mtime=driver.format_mtime_ns(ns))
        self._check_writable("store image metadata")
        client = self._get_client()
        bucket, key = self._where(location)
        head = self._head_or_not_found(client, bucket, key, op="metadata write")
        current = self._valid_meta(client, bucket, key, head)
        current.update(meta)
        self._update_index(
            client, bucket, key, head, current,
            between=lambda: self._write_sidecar(client, bucket, key, head, current))

    def rename(self, location, new_id, replace=False):
        """Server-side copy to ``new_id`` in the same bucket (UploadPartCopy
        above MULTIPART_COPY_THRESHOLD), then delete the source; the metadata
        (sidecar and mtime index) follows, with the source's mtime. Duplicate
        if ``new_id`` exists and not ``replace``. If the copy fails the source
        is untouched. Returns the new Location."""
        new_id = driver.validate_image_id(new_id, self.max_id_length)
        self._check_writable("rename images")
        client = self._get_client()
        loc = getattr(location, "store_location", location)
        bucket, key = loc.bucket, loc.key
        source = self._head_or_not_found(client, bucket, key, op="rename")
        new_location = self._new_location(new_id, bucket=bucket, scheme=loc.scheme,
                                          host=loc.s3serviceurl)
        if new_id == key:
            return new_location
        if not replace and self._head(client, bucket, new_id, op="rename") is not None:
            raise exceptions.Duplicate(image=new_id)
        self._copy_object(client, bucket, key, new_id, source["ContentLength"])
        target = self._head_or_not_found(client, bucket, new_id, op="rename")
        # the copy's LastModified is now: keep the source's mtime
        meta = self._valid_meta(client, bucket, key, source)
        meta.setdefault("mtime", driver.format_mtime_ns(_mtime_ns(source["LastModified"])))
        self._write_sidecar(client, bucket, new_id, target, meta)
        self._update_index(client, bucket, new_id, target, meta, quiet=True)
        with _s3_errors("rename (delete source)", bucket, key, write=True):
            client.delete_object(Bucket=bucket, Key=key)
        self._delete_sidecar(client, bucket, key, quiet=True)
        self._update_index(client, bucket, key, None, None, quiet=True)
        return new_location

    def _copy_object(self, client, bucket, src, dst, size):
        source = {"Bucket": bucket, "Key": src}
        if size <= self.MULTIPART_COPY_THRESHOLD:
            with _s3_errors("copy from %r" % src, bucket, dst, write=True):
                client.copy_object(Bucket=bucket, Key=dst, CopySource=source,
                                   MetadataDirective="COPY")
            return
        part_size = max(self.MULTIPART_COPY_PART_SIZE,
                        math.ceil(size / MAX_PART_NUM / MiB) * MiB)
        part_size = min(part_size, MAX_PART_SIZE)
        with _s3_errors("copy from %r" % src, bucket, dst, write=True):
            upload_id = client.create_multipart_upload(Bucket=bucket, Key=dst)["UploadId"]
        self._upload_started(client, bucket, dst, upload_id)
        ended = False

        def copy_part(number, start):
            end = min(size, start + part_size) - 1
            resp = client.upload_part_copy(
                Bucket=bucket, Key=dst, UploadId=upload_id, PartNumber=number,
                CopySource=source, CopySourceRange="bytes=%d-%d" % (start, end))
            return {"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]}

        try:
            with concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.thread_pools or 1,
                    thread_name_prefix="gsfs-s3-copy") as executor:
                futures = [executor.submit(copy_part, i + 1, start)
                           for i, start in enumerate(range(0, size, part_size))]
                try:
                    with _s3_errors("copy part from %r" % src, bucket, dst, write=True):
                        parts = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
            with _s3_errors("complete copy from %r" % src, bucket, dst, write=True):
                client.complete_multipart_upload(
                    Bucket=bucket, Key=dst, UploadId=upload_id,
                    MultipartUpload={"Parts": parts})
            ended = True
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=bucket, Key=dst, UploadId=upload_id)
                ended = True
            except Exception as e:
                LOG.error("Could not abort the multipart copy to %s/%s: %s", bucket, dst, e)
            raise
        finally:
            self._upload_ended(bucket, dst, upload_id, ended)

    def capacity(self):
        return None

    def cleanup_leftovers(self):
        """Abort the unfinished multipart uploads of images in the configured
        bucket that are leftovers: journaled by this host and their process is
        gone (or the entry is abandoned), or not journaled and started more
        than gsfs_s3_leftover_age_hours ago (see the module docstring). Remove
        journal entries of uploads that no longer exist, and sidecars and mtime
        index keys whose image is gone (e.g. deleted through glance_store).
        Write the mtime index of sidecars that have none for their object (an
        add() without set_image_meta(), a sidecar from before the index, a
        failed index write): one GET each, once.
        Returns one description per thing removed (and one line for the index
        written); nothing if writing is disabled."""
        if not self.is_capable(capabilities.BitMasks.WRITE_ACCESS):
            return []
        self._ensure_options()
        client = self._get_client()
        bucket = self._option("s3_store_bucket")
        endpoint = client.meta.endpoint_url
        # read before listing: an entry missing from the listing is really gone
        journaled = {e.get("upload_id"): e for e in self.journal.entries()
                     if e.get("endpoint") == endpoint and e.get("bucket") == bucket}
        done = []
        try:
            listed = set()
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
            for page in pages:
                for upload in page.get("Uploads", ()):
                    listed.add(upload["UploadId"])
                    line = self._clean_upload(client, bucket, upload, journaled)
                    if line:
                        done.append(line)
            for upload_id, entry in journaled.items():
                if upload_id not in listed:
                    self.journal.remove(self._journal_name(bucket, entry.get("key"),
                                                           upload_id))
                    done.append("removed the journal entry of the multipart upload %s of "
                                "s3://%s/%s: the upload no longer exists"
                                % (upload_id, bucket, entry.get("key")))
            # sidecars and index first: both are written after their image, so
            # an image missing from the later listing is really gone
            sidecars = []
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=META_PREFIX)
            for page in pages:
                sidecars.extend(obj["Key"] for obj in page.get("Contents", ()))
            index = self._mtime_index(client, bucket)
            if sidecars or index:
                images = self._image_objects(client, bucket)
                done.extend(self._clean_metadata(client, bucket, sidecars, index, images))
        except botocore.exceptions.ClientError as e:
            if _error_code(e) == "NoSuchBucket":
                return done
            raise _s3_error(e, "cleanup", bucket) from e
        except _LIBRARY_ERRORS as e:
            raise _s3_error(e, "cleanup", bucket) from e
        for line in done:
            LOG.info("%s", line)
        return done

    def _clean_metadata(self, client, bucket, sidecars, index, images):
        """cleanup_leftovers' part for the sidecars (keys) and the mtime index
        (as _mtime_index gives it) listed before ``images`` (_image_objects)."""
        done = []
        for meta_key in sidecars:
            image_id = meta_key[len(META_PREFIX):]
            if image_id in images or not self._is_image_id(image_id):
                continue
            with _s3_errors("metadata delete", bucket, meta_key, write=True):
                client.delete_object(Bucket=bucket, Key=meta_key)
            done.append("removed s3://%s/%s: metadata of a missing image" % (bucket, meta_key))
        # only keys whose image object does not exist: the bucket may be shared,
        # and the key of an older object of an existing image is ignored anyway
        for image_id, entries in sorted(index.items()):
            if image_id in images or not self._is_image_id(image_id):
                continue
            for index_key, _ns, _hash, _when in entries:
                with _s3_errors("mtime index delete", bucket, index_key, write=True):
                    client.delete_object(Bucket=bucket, Key=index_key)
                done.append("removed s3://%s/%s: mtime index of a missing image"
                            % (bucket, index_key))
        indexed = 0
        for meta_key in sidecars:
            image_id = meta_key[len(META_PREFIX):]
            obj = images.get(image_id)
            if obj is None or _indexed_mtime(index.get(image_id), _object_tag(obj)) is not None:
                continue
            raw = self._read_sidecar(client, bucket, image_id)
            if raw is None:
                continue
            tag = raw.pop(_SIDECAR_TAG, None)
            if tag is not None and tag != _object_tag(obj):
                continue            # the sidecar of an older object: no index for it
            if self._update_index(client, bucket, image_id, obj, raw, quiet=True):
                indexed += 1
        if indexed:
            done.append("wrote the mtime index of %d image(s) in s3://%s from their "
                        "metadata sidecars" % (indexed, bucket))
        return done

    def _clean_upload(self, client, bucket, upload, journaled):
        """Abort ``upload`` (from ListMultipartUploads) if it is a leftover;
        the description, or None if it stays."""
        key, upload_id = upload["Key"], upload["UploadId"]
        if upload_id in self._active_uploads or not self._is_image_id(key):
            return None
        name = self._journal_name(bucket, key, upload_id)
        entry = journaled.get(upload_id) or self.journal.get(name)   # get: started meanwhile
        initiated = upload.get("Initiated")
        if entry is not None and entry.get("host") == socket.gethostname():
            if entry.get("abandoned"):
                why = "its abort had failed"
            elif process.process_alive(entry.get("pid"), entry.get("process")):
                return None
            else:
                why = "its process %s is gone" % entry.get("pid")
        else:
            age = self._opt["gsfs_s3_leftover_age_hours"]
            now = datetime.datetime.now(datetime.timezone.utc)
            if not age or initiated is None or now - initiated <= datetime.timedelta(hours=age):
                return None
            why = "not started by this host, older than %g hours" % age
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except botocore.exceptions.ClientError as e:
            if _error_code(e) != "NoSuchUpload":
                raise _s3_error(e, "abort multipart upload", bucket, key, write=True) from e
        self.journal.remove(name)
        return ("aborted the unfinished multipart upload %s of s3://%s/%s (started %s; %s)"
                % (upload_id, bucket, key, initiated.isoformat() if initiated else "?", why))

    def _is_image_id(self, key):
        try:
            driver.validate_image_id(key, self.max_id_length)
        except exceptions.Invalid:
            return False
        return True
