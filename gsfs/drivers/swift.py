"""Swift driver: glance_store 5.7's single-tenant ``swift`` store, plus the gsfs extensions.

Map of this module
------------------
* ``OPTIONS``: glance_store 5.7's option names, types and defaults (plus
  ``gsfs_swift_journal_dir``). Its "MB" is 1,024,000 bytes (``ONE_MB``).
* Credentials (``_references``): the sections of ``swift_store_config_file``
  (glance-swift.conf: ``user``, ``key``, ``auth_address``, ``auth_version``,
  ``*_domain_*``, application credentials), chosen by
  ``default_swift_reference``; without a file, the legacy in-group
  ``swift_store_auth_address`` / ``swift_store_user`` / ``swift_store_key``.
* Connections (``_connection``): one python-swiftclient ``Connection`` per
  thread and credentials. Auth v1 is swiftclient's own; v2 and v3 go through a
  keystoneauth1 session (``_keystone_session``). ``swift_store_endpoint``
  overrides the storage URL of the catalog.
* ``StoreLocation``: ``swift+config://REF/CONTAINER/OBJ`` when a config file is
  used, else ``swift+http[s]://USER:KEY@AUTH/CONTAINER/OBJ`` (glance_store's
  shapes, parsed the same way).
* Errors: ``_swift_error`` is the one place a swiftclient/requests/keystoneauth
  error becomes a gsfs exception.
* ``Store``: get/get_size/add/delete (glance_store API), then the gsfs
  extensions of gsfs/driver.py.

Layout in the container
-----------------------
An image is the object ``CONTAINER/ID`` (``CONTAINER`` is
``swift_store_container``, or ``<container>_<first N chars of the id>`` with
``swift_store_multiple_containers_seed`` = N, as glance_store names them).

* An image of known size below ``swift_store_large_object_size`` is one PUT,
  as in glance_store. Swift makes a PUT visible only once it is complete.
* Larger images and images of unknown size (``image_size`` 0: every ``cp``
  into the mount) are uploaded as segments, streamed one after the other
  (memory: one chunk of the source, never a segment), and published by one
  final PUT of a DLO manifest (``X-Object-Manifest``). glance_store names its
  segments ``ID-00001``...; gsfs puts them under
  ``.gsfs-segments/<upload token>/00000001``... so that an upload replacing
  an image never touches the segments of the image it replaces, a rename does
  not move segments, and no prefix of another image's name (glance_store's
  prefix ``ID-`` also matches an image named ``ID-2``) can be mixed in.
  glance_store reads such an image (a GET of the manifest) and deletes it with
  its segments (it lists the manifest's prefix).
* A failed or interrupted upload deletes the segments it wrote before the
  error is raised; one this process could not finish (killed) is in the local
  journal (``gsfs_swift_journal_dir``) and removed by cleanup_leftovers().
* Without ``replace``, the name is checked before the upload and again before
  the manifest is published, and the final PUT carries ``If-None-Match: *``
  (Swift refuses it with 412 if the name exists meanwhile; radosgw ignores
  the header, so two hosts adding one new name at the same moment: the last
  one wins there, as on s3).

Metadata
--------
Checksums and the mtime are object metadata (``X-Object-Meta-Gsfs-*``), so
they travel with the object and disappear with it; a manifest's are set by the
PUT that publishes it, a single PUT's by a POST right after it. A POST
replaces all of an object's metadata, so set_image_meta() re-sends every
header it read (and ``X-Object-Manifest``, which Swift would drop).

A container listing shows neither metadata nor a manifest's size (radosgw
lists a DLO manifest with 0 bytes), so gsfs also writes both into the
object's Content-Type, as parameters Swift itself uses for this:
``application/octet-stream;swift_bytes=SIZE;gsfs_mtime=SEC.NANOSEC``. On
Swift the listing then shows the size; on radosgw gsfs reads it from the
parameter. Images glance_store wrote: a plain object's listing is exact; a
glance_store DLO (``ID`` with 0 bytes plus ``ID-00001``...) is sized from its
segments in the same listing, which are not listed as images.
"""

import configparser
import contextlib
import datetime
import hashlib
import logging
import os
import re
import socket
import threading
import typing
import urllib.parse
import uuid

import requests
import swiftclient
from keystoneauth1 import exceptions as ksa_exceptions
from oslo_config import cfg

from gsfs import (
    backend,
    capabilities,
    driver,
    exceptions,
    hashing,
    journal,
    location,
    logsetup,
    process,
)

LOG = logging.getLogger(__name__)

ONE_MB = 1000 * 1024            # glance_store's swift "MB" (units.Ki * 1000)
DEFAULT_CONTAINER = "glance"
DEFAULT_LARGE_OBJECT_SIZE = 5 * 1024        # in ONE_MB
DEFAULT_LARGE_OBJECT_CHUNK_SIZE = 200       # in ONE_MB
SEGMENTS_PREFIX = driver.RESERVED_PREFIX + "segments/"
META_HEADER = "x-object-meta-gsfs-"
CONTENT_TYPE = "application/octet-stream"
MD5_EMPTY = hashlib.md5(b"").hexdigest()
# glance_store's segment names: ID-00001, ID-00002, ...
_GLANCE_SEGMENT_RE = re.compile(r"^(?P<image>.+)-(?P<n>\d{5,})$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")

OPTIONS = [
    cfg.BoolOpt("swift_store_auth_insecure", default=False,
                help="Set verification of the server certificate."),
    cfg.StrOpt("swift_store_cacert", sample_default="/etc/ssl/certs/ca-certificates.crt",
               help="Path to the CA bundle file."),
    cfg.StrOpt("swift_store_region", sample_default="RegionTwo",
               help="The region of Swift endpoint to use by Glance."),
    cfg.StrOpt("swift_store_endpoint",
               sample_default="https://swift.openstack.example.org/v1/path_not_including_"
                              "container_name",
               help="The URL endpoint to use for Swift backend storage."),
    cfg.StrOpt("swift_store_endpoint_type", default="publicURL",
               choices=("publicURL", "adminURL", "internalURL"),
               help="Endpoint type of Swift service."),
    cfg.StrOpt("swift_store_service_type", default="object-store",
               help="Type of Swift service to use."),
    cfg.StrOpt("swift_store_container", default=DEFAULT_CONTAINER,
               help="Name of single container to store images/name prefix for multiple "
                    "containers"),
    cfg.IntOpt("swift_store_large_object_size", default=DEFAULT_LARGE_OBJECT_SIZE, min=1,
               help="The size threshold, in MB (1,024,000 bytes), after which Glance will "
                    "start segmenting image data."),
    cfg.IntOpt("swift_store_large_object_chunk_size", default=DEFAULT_LARGE_OBJECT_CHUNK_SIZE,
               min=1, help="The maximum size, in MB (1,024,000 bytes), of the segments when "
                           "image data is segmented."),
    cfg.BoolOpt("swift_store_create_container_on_put", default=False,
                help="Create container, if it doesn't already exist, when uploading image."),
    cfg.BoolOpt("swift_store_multi_tenant", default=False,
                help="Store images in tenant's Swift account (not supported by gsfs)."),
    cfg.IntOpt("swift_store_multiple_containers_seed", default=0, min=0, max=32,
               help="Seed indicating the number of containers to use for storing images."),
    cfg.ListOpt("swift_store_admin_tenants", default=[],
                help="List of tenants that will be granted admin access."),
    cfg.BoolOpt("swift_store_ssl_compression", default=True,
                help="SSL layer compression for HTTPS Swift requests."),
    cfg.IntOpt("swift_store_retry_get_count", default=0, min=0,
               help="The number of times a Swift download will be retried before the "
                    "request fails."),
    cfg.IntOpt("swift_store_expire_soon_interval", min=0, default=60,
               help="Time in seconds defining the size of the window in which a new token "
                    "may be requested before the current token is due to expire."),
    cfg.BoolOpt("swift_store_use_trusts", default=True,
                help="Use trusts for multi-tenant Swift store."),
    cfg.BoolOpt("swift_buffer_on_upload", default=False,
                help="Buffer image segments before upload to Swift (gsfs streams them)."),
    cfg.StrOpt("swift_upload_buffer_dir",
               help="Directory to buffer image segments before upload to Swift."),
    cfg.StrOpt("default_swift_reference", default="ref1",
               help="Reference to default Swift account/backing store parameters."),
    cfg.StrOpt("swift_store_auth_version", default="3", choices=("1", "2", "3"),
               help="The authentication version to be used (gsfs: 1, 2 or 3; "
                    "glance_store 5.7 always uses 3)."),
    cfg.StrOpt("swift_store_auth_address",
               help="The address where the Swift authentication service is listening."),
    cfg.StrOpt("swift_store_user", secret=True,
               help="The user to authenticate against the Swift authentication service."),
    cfg.StrOpt("swift_store_key", secret=True,
               help="Auth key for the user authenticating against the Swift "
                    "authentication service."),
    cfg.StrOpt("swift_store_application_credential_id", secret=True,
               help="Application credential ID for authenticating against Swift."),
    cfg.StrOpt("swift_store_application_credential_secret", secret=True,
               help="Application credential secret for authenticating against Swift."),
    cfg.StrOpt("swift_store_project_name",
               help="Project name for authenticating with application credentials."),
    cfg.StrOpt("swift_store_project_id",
               help="Project ID for authenticating with application credentials."),
    cfg.StrOpt("swift_store_config_file",
               help="Absolute path to the file containing the swift account(s) "
                    "configurations."),
    cfg.StrOpt("gsfs_swift_journal_dir", default=journal.default_dir("swift-journal"),
               sample_default="/var/lib/gsfs/swift-journal as root, else "
                              "$XDG_STATE_HOME/gsfs/swift-journal",
               help="gsfs: local directory recording the segmented uploads this host runs "
                    "(created on demand), so that cleanup_leftovers() removes the segments "
                    "of those whose process is gone, and only those."),
]


# --------------------------------------------------------------------------- credentials

class Reference(typing.NamedTuple):
    """One Swift account reference (a section of glance-swift.conf)."""
    name: str
    auth_address: str
    user: typing.Optional[str] = None
    key: typing.Optional[str] = None
    auth_version: str = "3"
    user_domain_id: typing.Optional[str] = None
    user_domain_name: typing.Optional[str] = None
    project_domain_id: typing.Optional[str] = None
    project_domain_name: typing.Optional[str] = None
    application_credential_id: typing.Optional[str] = None
    application_credential_secret: typing.Optional[str] = None
    project_name: typing.Optional[str] = None
    project_id: typing.Optional[str] = None

    def __repr__(self):      # never the key
        return "Reference(%r, %r, user=%r, auth_version=%r)" % (
            self.name, self.auth_address, self.user, self.auth_version)


def _unquote_value(value):
    """glance-swift.conf values may be quoted ('...' or "...")."""
    if value and value[0] in "\"'":
        if len(value) == 1 or value[-1] != value[0]:
            raise ValueError("Non-closed quote: %s" % value)
        return value[1:-1]
    return value


def _read_references(path, default_version):
    """The references of glance-swift.conf ``path``: {name: Reference}."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise exceptions.BadStoreConfiguration(
            store_name="swift", reason="swift config file %s: %s" % (path, e)) from e
    refs = {}
    for name in parser.sections():
        def get(option, section=name):
            return _unquote_value(parser.get(section, option, fallback=None))
        try:
            values = {k: get(k) for k in (
                "auth_address", "user", "key", "user_domain_id", "user_domain_name",
                "project_domain_id", "project_domain_name", "application_credential_id",
                "application_credential_secret", "project_name", "project_id")}
            version = get("auth_version") or default_version or "3"
        except ValueError as e:
            LOG.error("Invalid reference [%s] in the swift config file %s: %s", name, path, e)
            continue
        if not values["auth_address"]:
            LOG.error("Invalid reference [%s] in the swift config file %s: no auth_address",
                      name, path)
            continue
        if not values["project_domain_id"] and not values["project_domain_name"]:
            values["project_domain_id"] = "default"
        if not values["user_domain_id"] and not values["user_domain_name"]:
            values["user_domain_id"] = "default"
        refs[name] = Reference(name=name, auth_version=str(version), **values)
    return refs


def _strip_http(url):
    for prefix in ("http://", "https://"):
        if url.startswith(prefix):
            return url[len(prefix):]
    return url


def _quote(text):
    return urllib.parse.quote(text)


# --------------------------------------------------------------------------- errors

_UNAVAILABLE_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                       requests.exceptions.ChunkedEncodingError, socket.error)


_LIBRARY_ERRORS = (swiftclient.ClientException, requests.exceptions.RequestException,
                   socket.error, ksa_exceptions.ClientException)


def _swift_error(exc, op, container=None, obj=None, write=False):
    """The gsfs exception for library error ``exc`` of operation ``op``.

    404 → NotFound(image=obj); 401/403 → Forbidden (StorageWriteDenied when
    ``write``); 413/507 → StorageFull; 412 on a PUT → Duplicate; 503, refused,
    reset or timed-out connections → RemoteServiceUnavailable; anything else →
    BackendException. Messages name the container/object, never credentials.
    """
    where = "container %r" % container if container else "the Swift store"
    if obj is not None:
        where += " object %r" % obj
    if isinstance(exc, swiftclient.ClientException):
        status = exc.http_status
        cause = "HTTP %s %s" % (status, exc.http_reason or "") if status else str(exc.msg)
        message = "Swift %s failed for %s: %s" % (op, where, cause.strip())
        if status == 404:
            return exceptions.NotFound(image=obj) if obj is not None else \
                exceptions.NotFound(message)
        if status == 401:
            message += (" (the credentials were refused: check user, key and auth_address "
                        "of the account reference in swift_store_config_file)")
        if status in (401, 403):
            return exceptions.StorageWriteDenied(message) if write else \
                exceptions.Forbidden(message)
        if status in (413, 507):
            return exceptions.StorageFull(message)
        if status == 412 and write:
            return exceptions.Duplicate(image=obj)
        if status == 503 or status is None:
            return exceptions.RemoteServiceUnavailable(message)
        return exceptions.BackendException(message)
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return exceptions.RemoteServiceUnavailable(
            "Swift %s failed for %s: the server is unavailable (%s: %s)"
            % (op, where, type(exc).__name__, exc))
    if isinstance(exc, ksa_exceptions.ClientException):
        status = getattr(exc, "http_status", None)
        message = "Swift %s failed for %s: Keystone authentication: %s: %s" % (
            op, where, type(exc).__name__, exc)
        if status in (401, 403):
            return exceptions.StorageWriteDenied(message) if write else \
                exceptions.Forbidden(message)
        if status is None or status >= 500:
            return exceptions.RemoteServiceUnavailable(message)
        return exceptions.BackendException(message)
    return exceptions.BackendException("Swift %s failed for %s: %s: %s"
                                       % (op, where, type(exc).__name__, exc))


def _swift_errors(op, container=None, obj=None, write=False):
    """Raise library errors inside the block as gsfs exceptions (see _swift_error)."""
    return driver.translated(_LIBRARY_ERRORS, _swift_error, op, container, obj, write)


def _is_missing(exc):
    return isinstance(exc, swiftclient.ClientException) and exc.http_status == 404


# --------------------------------------------------------------------------- locations

class StoreLocation(location.StoreLocation):
    """``swift+config://REF/CONTAINER/OBJ`` or
    ``swift[+http|+https]://[USER:KEY@]AUTH_ADDRESS/CONTAINER/OBJ``.

    ``reference`` is set for swift+config; ``user``/``key`` for the
    credentialed form (``user`` may contain ':' as in ``tenant:user``)."""

    def process_specs(self):
        self.scheme = self.specs.get("scheme", "swift+https")
        self.reference = self.specs.get("reference")
        self.user = self.specs.get("user")
        self.key = self.specs.get("key")
        self.auth_or_store_url = self.specs.get("auth_or_store_url") or ""
        self.container = self.specs.get("container")
        self.obj = self.specs.get("obj")

    def get_uri(self):
        container = self.container.strip("/")
        obj = self.obj.strip("/")
        if self.scheme == "swift+config":
            return "swift+config://%s/%s/%s" % (self.reference, container, obj)
        creds = ""
        if self.user and self.key:
            creds = "%s:%s@" % (_quote(self.user), _quote(self.key))
        return "%s://%s%s/%s/%s" % (self.scheme, creds,
                                    _strip_http(self.auth_or_store_url).strip("/"),
                                    container, obj)

    def safe_uri(self):
        """get_uri() without credentials (for xattrs and logs)."""
        return location.redact_uri(self.get_uri(), mask=None)

    def parse_uri(self, uri):
        if uri.count("://") != 1:
            reason = ("URI cannot contain more than one occurrence of a scheme. If you have "
                      "specified a URI like swift://user:pass@http://authurl.com/v1/container/"
                      "obj, you need to change it to use the swift+http:// scheme, like so: "
                      "swift+http://user:pass@authurl.com/v1/container/obj")
            LOG.info("Invalid store URI: %s", reason)
            raise exceptions.BadStoreUri(message=reason)
        self.validate_schemas(uri, valid_schemas=(
            "swift://", "swift+http://", "swift+https://", "swift+config://"))
        scheme, rest = uri.split("://", 1)
        self.scheme = scheme
        self.reference = self.user = self.key = None
        if scheme == "swift+config":
            netloc, _, path = rest.partition("/")
            self.reference = netloc
        else:
            netloc, _, path = rest.partition("/")
            if "@" in netloc:
                creds, netloc = netloc.rsplit("@", 1)
                if ":" not in creds:
                    reason = "Badly formed credentials in Swift URI."
                    LOG.info(reason)
                    raise exceptions.BadStoreUri(message=reason)
                # split before unquoting: a quoted ':' (%3A) belongs to the key
                # or user (glance_store splits after, at the key's last ':')
                user, key = creds.rsplit(":", 1)
                self.user, self.key = urllib.parse.unquote(user), urllib.parse.unquote(key)
        parts = path.strip("/").split("/")
        if len(parts) < 2 or not parts[-1] or not parts[-2]:
            reason = "Badly formed Swift URI."
            LOG.info(reason)
            raise exceptions.BadStoreUri(message=reason)
        self.obj = parts[-1]
        self.container = parts[-2]
        if scheme != "swift+config":
            self.auth_or_store_url = "/".join([netloc] + parts[:-2])

    @property
    def auth_url(self):
        """The auth address with its scheme (https unless swift+http)."""
        url = self.auth_or_store_url
        if url.startswith(("http://", "https://")):
            return url
        return ("http://" if self.scheme == "swift+http" else "https://") + url


# --------------------------------------------------------------------------- helpers

class _ResponseIndexable(backend.Indexable):
    def another(self):
        try:
            return next(self.wrapped)
        except StopIteration:
            return b""


class _ChunkReader:
    """A file-like view of an iterable of chunks, for a PUT of known length:
    swiftclient sends a ``read()``-able body with Content-Length (an iterable
    it would send chunked next to its Content-Length header: HTTP 400)."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.view = memoryview(b"")

    def read(self, size=-1):
        if not self.view:
            chunk = next(self.chunks, None)
            if chunk is None:
                return b""
            self.view = memoryview(chunk)
        if size is None or size < 0:
            size = len(self.view)
        data, self.view = self.view[:size], self.view[size:]
        return data


class _Feed:
    """The image source as a PUT body sees it. An error of the source itself
    (or of a size check) raised inside the body reaches swiftclient as a
    connection error of requests; it is kept here and raised as itself."""

    def __init__(self):
        self.error = None

    def guard(self, body):
        try:
            yield from body
        except BaseException as e:
            self.error = e
            raise

    @contextlib.contextmanager
    def put(self, op, container, obj):
        try:
            with _swift_errors(op, container, obj, write=True):
                yield
        except (exceptions.GlanceStoreException, exceptions.BackendException):
            if self.error is not None:
                raise self.error from None
            raise


def _content_type(size=None, mtime=None, base=CONTENT_TYPE):
    """Content-Type with the gsfs parameters: swift_bytes (a manifest's size)
    and gsfs_mtime (the stored mtime), both readable from a listing."""
    parts = [base]
    if size is not None:
        parts.append("swift_bytes=%d" % size)
    if mtime:
        parts.append("gsfs_mtime=%s" % mtime)
    return ";".join(parts)


def _type_params(content_type):
    """(base type, {param: value}) of a Content-Type."""
    base, _, rest = (content_type or "").partition(";")
    params = {}
    for item in rest.split(";"):
        name, sep, value = item.strip().partition("=")
        if sep:
            params[name.strip().lower()] = value.strip()
    return base.strip() or CONTENT_TYPE, params


def _http_date_ns(text):
    try:
        when = datetime.datetime.strptime(text, "%a, %d %b %Y %H:%M:%S GMT")
    except (TypeError, ValueError):
        return None
    return int(when.replace(tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000_000


def _listing_ns(text):
    """last_modified of a listing entry ('2026-12-01T12:02:53.562Z' or without
    the Z/fraction) in ns, at whole seconds as HEAD's Last-Modified has them."""
    try:
        when = datetime.datetime.fromisoformat((text or "").rstrip("Z"))
    except ValueError:
        return None
    return int(when.replace(tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000_000


def _mtime_ns(text):
    try:
        return driver.parse_mtime_ns(text) if text else None
    except ValueError:
        return None


def _is_manifest(head):
    return bool(head.get("x-object-manifest")) or \
        str(head.get("x-static-large-object", "")).lower() == "true"


def _etag_of(head):
    """A HEAD's ETag without its quotes, in lower case."""
    return str(head.get("etag") or "").strip('"').lower()


def _missing_container(container):
    """glance_store's error for a container that does not exist (add and listing)."""
    return exceptions.BackendException(
        "The container %s does not exist in Swift. Please set the "
        "swift_store_create_container_on_put option to add container to Swift "
        "automatically." % container)


def _segment_prefix(token):
    return "%s%s/" % (SEGMENTS_PREFIX, token)


def _meta_of(head, where=""):
    """The gsfs metadata (str → str) in the headers of a HEAD.

    A whole object's ETag is the md5 of its bytes, which is also its stored
    ``checksum``: when they differ, the metadata was written for other bytes
    (a second writer's PUT landed between an add's PUT and the POST of its
    checksums) and none of it is returned. A manifest carries its metadata in
    the PUT that publishes it, and its ETag is not an md5 of the image."""
    meta = {}
    for key in driver.META_KEYS:
        value = head.get(META_HEADER + key.replace("_", "-"))
        if value:
            meta[key] = value
    etag = _etag_of(head)
    if meta.get("checksum") and etag and not _is_manifest(head) \
            and meta["checksum"].lower() != etag:
        LOG.info("Ignoring the gsfs metadata of %s: its checksum %s is not the object's "
                 "ETag %s (another writer replaced the object)", where, meta["checksum"], etag)
        return {}
    return meta


# --------------------------------------------------------------------------- the store

class Store(driver.Store):
    """Single-tenant Swift store (OpenStack Swift, radosgw's Swift API)."""

    _CAPABILITIES = (capabilities.BitMasks.RW_ACCESS | capabilities.BitMasks.READ_RANDOM
                     | capabilities.BitMasks.DRIVER_REUSABLE
                     | capabilities.BitMasks.RENAME_COPY)
    OPTIONS = OPTIONS
    STORE_TYPE = "swift"
    EXAMPLE_URL = "swift://<USER>:<KEY>@<AUTH_ADDRESS>/<CONTAINER>/<FILE>"

    READ_CHUNKSIZE = 1024 * 1024
    WRITE_CHUNKSIZE = 1024 * 1024       # read size of a file-like image source
    max_id_length = 1024                # Swift object names; segment names omit the id
    RETRIES = 2                         # swiftclient retries of requests it can repeat
    TIMEOUT = 60                        # seconds, per request (connect and each read)

    def __init__(self, conf, backend=None):
        super().__init__(conf, backend=backend)
        if self.group_conf().swift_store_multi_tenant:
            raise exceptions.BadStoreConfiguration(
                store_name="swift",
                reason="swift_store_multi_tenant = true: a multi-tenant store keeps each "
                       "image in its owner's account and needs that user's token for every "
                       "request, which gsfs does not have; gsfs serves single-tenant swift "
                       "stores only")
        self._local = threading.local()
        self._opt = None
        self._refs = None
        self._active = set()            # upload tokens of this process in flight

    @staticmethod
    def get_schemes():
        return ("swift+https", "swift", "swift+http", "swift+config")

    # -- configuration -------------------------------------------------------
    def _options(self):
        if self._opt is None:
            gc = self.group_conf()
            self._opt = {opt.dest: getattr(gc, opt.dest) for opt in OPTIONS}
            opt = self._opt
            self.large_object_size = opt["swift_store_large_object_size"] * ONE_MB
            self.large_object_chunk_size = opt["swift_store_large_object_chunk_size"] * ONE_MB
            self.container = opt["swift_store_container"]
            self.journal = journal.Journal(opt["gsfs_swift_journal_dir"]
                                           or journal.default_dir("swift-journal"))
        return self._opt

    def _references(self):
        """{name: Reference}: glance-swift.conf, or the legacy in-group options."""
        if self._refs is None:
            opt = self._options()
            path = opt["swift_store_config_file"]
            if path:
                found = self.conf.find_file(path) if not os.path.isabs(path) else path
                refs = _read_references(found or path, opt["swift_store_auth_version"])
            else:
                refs = {}
                if opt["swift_store_auth_address"] and (
                        (opt["swift_store_user"] and opt["swift_store_key"]) or
                        (opt["swift_store_application_credential_id"]
                         and opt["swift_store_application_credential_secret"])):
                    name = opt["default_swift_reference"]
                    refs[name] = Reference(
                        name=name, auth_address=opt["swift_store_auth_address"],
                        user=opt["swift_store_user"], key=opt["swift_store_key"],
                        auth_version=opt["swift_store_auth_version"] or "3",
                        user_domain_id="default", project_domain_id="default",
                        application_credential_id=opt[
                            "swift_store_application_credential_id"],
                        application_credential_secret=opt[
                            "swift_store_application_credential_secret"],
                        project_name=opt["swift_store_project_name"],
                        project_id=opt["swift_store_project_id"])
            for ref in refs.values():
                logsetup.register_secret(ref.key)
                logsetup.register_secret(ref.application_credential_secret)
            self._refs = refs
        return self._refs

    def _default_reference(self):
        name = self._options()["default_swift_reference"]
        ref = self._references().get(name)
        if ref is None:
            raise exceptions.BadStoreConfiguration(
                store_name="swift",
                reason="A value for swift_store_auth_address is required: no Swift account "
                       "reference %r (default_swift_reference) in %s" % (
                           name, self._opt["swift_store_config_file"]
                           or "swift_store_auth_address/_user/_key"))
        return ref

    def configure_add(self):
        self._opt = self._refs = None
        self._local = threading.local()
        self._options()
        ref = self._default_reference()
        if not ((ref.user and ref.key) or
                (ref.application_credential_id and ref.application_credential_secret)):
            raise exceptions.BadStoreConfiguration(
                store_name="swift",
                reason="A value for swift_store_ref_params (user/key or application "
                       "credentials) is required (reference %r)." % ref.name)
        if ref.auth_version not in ("1", "2", "3"):
            raise exceptions.BadStoreConfiguration(
                store_name="swift", reason="auth_version of reference %r must be 1, 2 or 3, "
                                           "not %r" % (ref.name, ref.auth_version))
        if ref.auth_version != "3" and ref.application_credential_id:
            raise exceptions.BadStoreConfiguration(
                store_name="swift", reason="application credentials need auth_version 3 "
                                           "(reference %r)" % ref.name)
        if ref.auth_version in ("2", "3") and ref.user and ":" not in ref.user:
            raise exceptions.BadStoreConfiguration(
                store_name="swift", reason="Badly formed tenant:user %r in reference %r: "
                                           "Keystone auth needs PROJECT:USER" % (ref.user,
                                                                                 ref.name))
        if self.backend_group:
            self._url_prefix = self._location(self.container, "").get_uri()

    def _uses_config_file(self):
        return bool(self._options()["swift_store_config_file"])

    # -- connections -----------------------------------------------------------
    def _reference_of(self, loc):
        """The Reference to talk to the account of StoreLocation ``loc``."""
        refs = self._references()
        if loc.scheme == "swift+config":
            ref = refs.get(loc.reference)
            if ref is None:
                reason = "Badly formed Swift URI. Credentials not found for account reference"
                LOG.info(reason)
                raise exceptions.BadStoreUri(message=reason)
            return ref
        if loc.user and loc.key:
            for ref in refs.values():
                if (ref.user, ref.key, _strip_http(ref.auth_address).strip("/")) == (
                        loc.user, loc.key, _strip_http(loc.auth_or_store_url).strip("/")):
                    return ref
            logsetup.register_secret(loc.key)
            version = self._options()["swift_store_auth_version"] or "3"
            return Reference(name="(location)", auth_address=loc.auth_url, user=loc.user,
                             key=loc.key, auth_version=version, user_domain_id="default",
                             project_domain_id="default")
        return self._default_reference()

    def _connection(self, ref=None, streaming=False):
        """This thread's swiftclient Connection for ``ref`` (default: the store's).
        ``streaming``: the one without retries, for PUTs of a generator (a retry
        cannot resend it, and swiftclient would hide the first error)."""
        ref = ref or self._default_reference()
        cache = getattr(self._local, "conns", None)
        if cache is None:
            cache = self._local.conns = {}
        key = (ref, streaming)
        conn = cache.get(key)
        if conn is None:
            conn = cache[key] = self._new_connection(ref, 0 if streaming else self.RETRIES)
        return conn

    def _new_connection(self, ref, retries):
        opt = self._options()
        os_options = {"service_type": opt["swift_store_service_type"],
                      "endpoint_type": opt["swift_store_endpoint_type"],
                      "interface": opt["swift_store_endpoint_type"].replace("URL", "")}
        if opt["swift_store_region"]:
            os_options["region_name"] = opt["swift_store_region"]
        if opt["swift_store_endpoint"]:
            os_options["object_storage_url"] = opt["swift_store_endpoint"]
        common = dict(retries=retries, timeout=self.TIMEOUT, starting_backoff=0.5,
                      insecure=opt["swift_store_auth_insecure"], cacert=opt["swift_store_cacert"],
                      ssl_compression=opt["swift_store_ssl_compression"], os_options=os_options)
        if ref.auth_version == "1":
            return swiftclient.Connection(authurl=ref.auth_address, user=ref.user, key=ref.key,
                                          auth_version="1", **common)
        return swiftclient.Connection(session=self._keystone_session(ref), **common)

    def _keystone_session(self, ref):
        """A keystoneauth1 session for Keystone v2 or v3 credentials."""
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v2, v3

        opt = self._options()
        verify = False if opt["swift_store_auth_insecure"] else (
            opt["swift_store_cacert"] or True)
        url = ref.auth_address
        if ref.application_credential_id:
            auth = v3.ApplicationCredential(
                auth_url=url, application_credential_id=ref.application_credential_id,
                application_credential_secret=ref.application_credential_secret,
                user_domain_id=ref.user_domain_id, user_domain_name=ref.user_domain_name)
        else:
            project, _, user = ref.user.rpartition(":")
            if ref.auth_version == "2":
                auth = v2.Password(auth_url=url, username=user, password=ref.key,
                                   tenant_name=project)
            else:
                auth = v3.Password(auth_url=url, username=user, password=ref.key,
                                   project_name=project, user_domain_id=ref.user_domain_id,
                                   user_domain_name=ref.user_domain_name,
                                   project_domain_id=ref.project_domain_id,
                                   project_domain_name=ref.project_domain_name)
        return ks_session.Session(auth=auth, verify=verify, timeout=self.TIMEOUT)

    # -- locations ---------------------------------------------------------------
    def container_for(self, image_id):
        """glance_store's container name for ``image_id``."""
        seed = self._options()["swift_store_multiple_containers_seed"]
        if not seed:
            return self.container
        image_id = str(image_id).lower()
        chars = seed + image_id[:seed].count("-")
        return "%s_%s" % (self.container, image_id[:chars])

    def _location(self, container, obj):
        if self._uses_config_file():
            specs = {"scheme": "swift+config", "container": container, "obj": obj,
                     "reference": self._options()["default_swift_reference"]}
        else:
            ref = self._default_reference()
            specs = {"scheme": "swift+http" if ref.auth_address.startswith("http://")
                     else "swift+https", "container": container, "obj": obj,
                     "auth_or_store_url": ref.auth_address, "user": ref.user, "key": ref.key}
        return StoreLocation(specs, self.conf, backend_group=self.backend_group)

    def location_for(self, image_id):
        image_id = driver.validate_image_id(image_id, self.max_id_length)
        loc = self._location(self.container_for(image_id), image_id)
        return location.Location("swift", StoreLocation, self.conf, uri=None,
                                 image_id=image_id, store_specs=loc.specs,
                                 backend=self.backend_group)

    @staticmethod
    def _where(location_or_loc):
        return getattr(location_or_loc, "store_location", location_or_loc)

    def _conn_for(self, loc, streaming=False):
        return self._connection(self._reference_of(loc), streaming)

    def _head(self, conn, container, obj, op="stat"):
        """HEAD of an object; None if it does not exist."""
        try:
            return conn.head_object(container, obj)
        except swiftclient.ClientException as e:
            if _is_missing(e):
                return None
            raise _swift_error(e, op, container, obj) from e
        except _LIBRARY_ERRORS as e:
            raise _swift_error(e, op, container, obj) from e

    def _check_writable(self, what):
        if not self.is_capable(capabilities.BitMasks.WRITE_ACCESS):
            raise exceptions.StoreAddDisabled("Store %s cannot %s: writing is disabled"
                                              % (self, what))

    # -- glance_store API ----------------------------------------------------------
    @capabilities.check
    def get(self, location, offset=0, chunk_size=None, context=None):
        """(iterable of chunks, size); with ``offset``/``chunk_size`` a ranged GET
        (``chunk_size`` is the number of bytes wanted and then the size)."""
        loc = self._where(location)
        conn = self._conn_for(loc)
        offset = int(offset or 0)
        headers = {}
        if offset or chunk_size:
            end = "" if not chunk_size else str(offset + int(chunk_size) - 1)
            headers["Range"] = "bytes=%d-%s" % (offset, end)
        try:
            resp, body = conn.get_object(loc.container, loc.obj, headers=headers,
                                         resp_chunk_size=self.READ_CHUNKSIZE)
        except swiftclient.ClientException as e:
            if e.http_status == 416:          # offset at or after the end
                size = chunk_size or self.stat_image(location).size
                return _ResponseIndexable(iter(()), size), size
            raise _swift_error(e, "get", loc.container, loc.obj) from e
        except _LIBRARY_ERRORS as e:
            raise _swift_error(e, "get", loc.container, loc.obj) from e
        if headers:
            total = (resp.get("content-range") or "").rpartition("/")[2]
            size = int(chunk_size) if chunk_size else (
                int(total) if total.isdigit() else int(resp.get("content-length", 0)))
        else:
            size = int(resp.get("content-length", 0))
        return _ResponseIndexable(self._stream(body, loc), size), size

    @staticmethod
    def _stream(body, loc):
        try:
            with _swift_errors("read", loc.container, loc.obj):
                yield from body
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def get_size(self, location, context=None):
        return self.stat_image(location).size

    @capabilities.check
    def delete(self, location, context=None):
        """Delete the image; a manifest first (so no reader sees it shortened),
        then its segments."""
        loc = self._where(location)
        conn = self._conn_for(loc)
        head = self._head(conn, loc.container, loc.obj, op="delete")
        if head is None:
            raise exceptions.NotFound(message="Swift could not find image at URI.")
        with _swift_errors("delete", loc.container, loc.obj, write=True):
            if str(head.get("x-static-large-object", "")).lower() == "true":
                conn.delete_object(loc.container, loc.obj,
                                   query_string="multipart-manifest=delete")
                return
            try:
                conn.delete_object(loc.container, loc.obj)
            except swiftclient.ClientException as e:
                if _is_missing(e):
                    raise exceptions.NotFound(
                        message="Swift could not find image at URI.") from e
                raise
        self._delete_segments(conn, loc.obj, head.get("x-object-manifest"))

    def _segments_of(self, conn, obj, manifest):
        """(container, [names]) of the segments DLO ``manifest`` of ``obj``
        points at that gsfs may delete: everything under a gsfs prefix; under
        glance_store's prefix ``OBJ-``, only ``OBJ-<digits>`` (not an image
        named ``OBJ-2``)."""
        if not manifest or "/" not in manifest:
            return None, []
        container, prefix = manifest.split("/", 1)
        container = urllib.parse.unquote(container)
        prefix = urllib.parse.unquote(prefix)
        if not prefix.startswith(SEGMENTS_PREFIX) and prefix != obj + "-":
            LOG.warning("Not deleting the segments of %s: its manifest prefix %s/%s is "
                        "neither gsfs's nor glance_store's", obj, container, prefix)
            return container, []
        _, listed = conn.get_container(container, prefix=prefix, full_listing=True)
        names = [o["name"] for o in listed if "name" in o]
        if not prefix.startswith(SEGMENTS_PREFIX):
            names = [n for n in names if _GLANCE_SEGMENT_RE.match(n) and n.startswith(prefix)
                     and n[len(prefix):].isdigit()]
        return container, names

    def _delete_segments(self, conn, obj, manifest, quiet=False):
        try:
            container, names = self._segments_of(conn, obj, manifest)
            for name in names:
                try:
                    conn.delete_object(container, name)
                except swiftclient.ClientException as e:
                    if not _is_missing(e):
                        raise
        except _LIBRARY_ERRORS as e:
            if quiet:
                LOG.warning("Could not delete the segments of %s (%s): %s; "
                            "cleanup_leftovers() will not find them", obj, manifest, e)
                return
            raise _swift_error(e, "delete segments of", None, obj, write=True) from e

    # -- add -------------------------------------------------------------------------
    def _ensure_container(self, conn, container):
        try:
            conn.head_container(container)
            return
        except swiftclient.ClientException as e:
            if not _is_missing(e):
                raise _swift_error(e, "add", container) from e
        except _LIBRARY_ERRORS as e:
            raise _swift_error(e, "add", container) from e
        if not self._options()["swift_store_create_container_on_put"]:
            raise _missing_container(container)
        LOG.info("Creating swift container %s", container)
        with _swift_errors("create container", container, write=True):
            conn.put_container(container)

    def _add(self, image_id, image_file, image_size, hashing_algo,
             verifier=None, replace=False):
        self._options()
        container = self.container_for(image_id)
        conn = self._connection()
        self._ensure_container(conn, container)
        old = self._head(conn, container, image_id, op="add")
        if old is not None and not replace:
            LOG.warning("Swift already has an image at %s/%s", container, image_id)
            raise exceptions.Duplicate(message="Swift already has an image at this location")
        image_size = int(image_size or 0)
        hasher = hashing.ImageHasher(hashing_algo, verifier)
        checker = driver.SizeChecker(image_size)
        chunks = driver.chunkreadable(image_file, self.WRITE_CHUNKSIZE)
        if 0 < image_size < self.large_object_size:
            total = self._put_whole(container, image_id, chunks, checker, hasher, replace)
        else:
            total = self._put_segmented(container, image_id, chunks, checker, hasher,
                                        image_size, replace)
        if old is not None and _is_manifest(old):
            self._delete_segments(conn, image_id, old.get("x-object-manifest"), quiet=True)
        loc = self._location(container, image_id)
        metadata = {"store": self.backend_group} if self.backend_group else {}
        return loc.get_uri(), total, hasher.checksum, hasher.hash_value, metadata

    def _meta_headers(self, hasher):
        return {META_HEADER + "checksum": hasher.checksum,
                META_HEADER + "os-hash-algo": hasher.algo,
                META_HEADER + "os-hash-value": hasher.hash_value}

    def _put_whole(self, container, obj, chunks, checker, hasher, replace):
        """One PUT of a known size; the checksums follow in a POST."""
        def body():
            for chunk in chunks:
                checker.add(len(chunk))      # "Size exceeds" before it is sent
                hasher.update(chunk)
                yield chunk
            checker.finish()                 # "Size mismatch": the PUT is cut short

        headers = {"Content-Type": CONTENT_TYPE}
        if not replace:
            headers["If-None-Match"] = "*"
        conn = self._connection(streaming=True)
        feed = _Feed()
        with feed.put("add", container, obj):
            conn.put_object(container, obj, _ChunkReader(feed.guard(body())),
                            content_length=checker.expected, headers=headers)
        headers = dict(self._meta_headers(hasher), **{"Content-Type": CONTENT_TYPE})
        with _swift_errors("add (metadata)", container, obj, write=True):
            self._connection().post_object(container, obj, headers=headers)
        return checker.seen

    def _put_segmented(self, container, obj, chunks, checker, hasher, image_size, replace):
        """Segments under a fresh prefix, streamed one at a time, then the DLO
        manifest. Any failure deletes the segments written."""
        token = uuid.uuid4().hex
        prefix = _segment_prefix(token)
        written = []
        pending = [None]                  # a chunk's tail that belongs to the next segment
        source = iter(chunks)
        self._upload_started(container, obj, token)
        gone = True
        try:
            conn = self._connection(streaming=True)
            number = 0
            while True:
                first = pending[0] if pending[0] is not None else next(source, None)
                pending[0] = None
                if first is None:
                    break
                number += 1
                name = "%s%08d" % (prefix, number)
                sent = [0]
                feed = _Feed()
                with feed.put("add (segment %d)" % number, container, obj):
                    conn.put_object(container, name, feed.guard(self._segment_body(
                        first, source, pending, sent, checker, hasher)),
                        content_length=None, headers={"Content-Type": CONTENT_TYPE})
                written.append(name)
            checker.finish()
            total = checker.seen
            conn = self._connection()
            if not written:
                # an empty image: a plain empty object, no manifest
                headers = dict(self._meta_headers(hasher), **{"Content-Type": CONTENT_TYPE})
                if not replace:
                    headers["If-None-Match"] = "*"
                with _swift_errors("add", container, obj, write=True):
                    conn.put_object(container, obj, b"", content_length=0, headers=headers)
                return 0
            if not replace and self._head(conn, container, obj, op="add") is not None:
                LOG.warning("Swift already has an image at %s/%s (added while this upload "
                            "ran)", container, obj)
                raise exceptions.Duplicate(
                    message="Swift already has an image at this location")
            headers = dict(self._meta_headers(hasher), **{
                "X-Object-Manifest": "%s/%s" % (_quote(container), _quote(prefix)),
                "Content-Type": _content_type(size=total)})
            if not replace:
                headers["If-None-Match"] = "*"
            hasher.before_publish()
            with _swift_errors("add (manifest)", container, obj, write=True):
                conn.put_object(container, obj, b"", content_length=0, headers=headers)
            written = []                  # published: the segments are the image's now
            head = self._head(conn, container, obj, op="add")
            if head is None or int(head.get("content-length", -1)) != total:
                LOG.warning("Swift reports %s bytes for the new image %s/%s, %d were "
                            "written (the container listing of its segments may lag)",
                            None if head is None else head.get("content-length"),
                            container, obj, total)
            return total
        except BaseException:
            gone = self._discard_segments(container, written)
            raise
        finally:
            self._upload_ended(container, obj, token, gone)

    def _segment_body(self, first, source, pending, sent, checker, hasher):
        """One segment's data: ``first``, then chunks of ``source`` up to
        large_object_chunk_size bytes; a chunk's tail beyond goes to ``pending``."""
        limit = self.large_object_chunk_size
        chunk = first
        while chunk is not None:
            view = memoryview(chunk)
            room = limit - sent[0]
            if len(view) > room:
                pending[0], view = view[room:], view[:room]
            checker.add(len(view))
            hasher.update(view)
            sent[0] += len(view)
            yield view
            if pending[0] is not None or sent[0] >= limit:
                return
            chunk = next(source, None)

    def _discard_segments(self, container, names):
        """Delete the segments of a failed upload; True if none is left."""
        if not names:
            return True
        conn = self._connection()
        left = 0
        for name in names:
            try:
                conn.delete_object(container, name)
            except swiftclient.ClientException as e:
                if not _is_missing(e):
                    left += 1
            except _LIBRARY_ERRORS:
                left += 1
        if left:
            LOG.warning("%d segment(s) of a failed upload are left in container %s; "
                        "cleanup_leftovers() removes them", left, container)
        return left == 0

    def _journal_name(self, container, token):
        return "%s/%s/%s" % (self._default_reference().auth_address, container, token)

    def _upload_started(self, container, obj, token):
        self._active.add(token)
        self.journal.begin(self._journal_name(container, token),
                           auth_address=self._default_reference().auth_address,
                           container=container, image=obj, token=token)

    def _upload_ended(self, container, obj, token, gone):
        self._active.discard(token)
        self.journal.end(self._journal_name(container, token), gone)

    # -- gsfs extensions: listing and stat ----------------------------------------
    def _containers(self, conn):
        """The containers of this store: one, or every ``<container>_*`` with a seed."""
        if not self._options()["swift_store_multiple_containers_seed"]:
            return [self.container]
        with _swift_errors("list containers"):
            _, listed = conn.get_account(prefix=self.container + "_", full_listing=True)
        return [c["name"] for c in listed]

    def list_images(self):
        conn = self._connection()
        infos = []
        for container in self._containers(conn):
            listed = self._list_container(conn, container, full_listing=True)
            if listed is not None:
                infos.extend(self._listed_images(listed))
        return infos

    def _list_container(self, conn, container, **kwargs):
        """The container's listing, or None when it does not exist and
        swift_store_create_container_on_put makes it at the first add."""
        try:
            return conn.get_container(container, delimiter="/", **kwargs)[1]
        except swiftclient.ClientException as e:
            if not _is_missing(e):
                raise _swift_error(e, "list", container) from e
            if self._options()["swift_store_create_container_on_put"]:
                return None         # made by the first add: no images yet
            # as the s3 driver's missing bucket: the listing names the
            # fix instead of showing an empty store
            raise _missing_container(container) from e
        except _LIBRARY_ERRORS as e:
            raise _swift_error(e, "list", container) from e

    def check_access(self):
        """One listing request of at most one name per container: fails as
        list_images() does (a missing container names the fix)."""
        conn = self._connection()
        for container in self._containers(conn):
            self._list_container(conn, container, limit=1)

    def _listed_images(self, listed):
        objects = {o["name"]: o for o in listed if "name" in o}
        segments = {}                     # glance_store DLO image → its segments' bytes
        for name, o in objects.items():
            m = _GLANCE_SEGMENT_RE.match(name)
            if m and (m.group("image") in objects or _UUID_RE.match(m.group("image"))):
                segments.setdefault(m.group("image"), []).append(int(o.get("bytes", 0)))
        hidden = {name for name in objects
                  if (m := _GLANCE_SEGMENT_RE.match(name)) and m.group("image") in segments}
        for name, o in objects.items():
            if name in hidden or not self._is_image_id(name):
                continue
            yield self._info_from_listing(name, o, segments.get(name))

    def _info_from_listing(self, name, o, segment_sizes):
        _, params = _type_params(o.get("content_type"))
        size = int(o.get("bytes", 0))
        if not size and params.get("swift_bytes", "").isdigit():
            size = int(params["swift_bytes"])
        elif not size and segment_sizes:
            size = sum(segment_sizes)
        stored = _mtime_ns(params.get("gsfs_mtime"))
        ns = stored if stored is not None else _listing_ns(o.get("last_modified"))
        version = "%s:%d" % (o.get("hash"), size)
        return driver.ImageInfo(name, size, None if ns is None else ns / 1e9, ns, version)

    def _info_from_head(self, name, head):
        _, params = _type_params(head.get("content-type"))
        stored = _mtime_ns(head.get(META_HEADER + "mtime") or params.get("gsfs_mtime"))
        ns = stored if stored is not None else _http_date_ns(head.get("last-modified"))
        size = int(head.get("content-length", 0))
        version = "%s:%d" % (MD5_EMPTY if _is_manifest(head) else _etag_of(head), size)
        return driver.ImageInfo(name, size, None if ns is None else ns / 1e9, ns, version)

    @staticmethod
    def _is_image_id(name):
        return not name.startswith(driver.RESERVED_PREFIX) and "/" not in name

    def _stat(self, loc, op="stat"):
        conn = self._conn_for(loc)
        head = self._head(conn, loc.container, loc.obj, op=op)
        if head is None:
            raise exceptions.NotFound(image=loc.obj)
        return conn, head

    def stat_image(self, location):
        loc = self._where(location)
        _, head = self._stat(loc)
        return self._info_from_head(loc.obj, head)

    def read(self, location, offset, length):
        offset, length = driver.read_range(offset, length)
        if not length:
            return b""
        loc = self._where(location)
        conn = self._conn_for(loc)
        headers = {"Range": "bytes=%d-%d" % (offset, offset + length - 1)}
        try:
            _, data = conn.get_object(loc.container, loc.obj, headers=headers)
        except swiftclient.ClientException as e:
            if e.http_status == 416:
                return b""
            raise _swift_error(e, "read", loc.container, loc.obj) from e
        except _LIBRARY_ERRORS as e:
            raise _swift_error(e, "read", loc.container, loc.obj) from e
        return data

    # -- gsfs extensions: metadata ----------------------------------------------------
    def get_image_meta(self, location):
        loc = self._where(location)
        _, head = self._stat(loc)
        meta = _meta_of(head, "%s/%s" % (loc.container, loc.obj))
        if "mtime" not in meta:
            info = self._info_from_head(loc.obj, head)
            if info.mtime_ns is not None:
                meta["mtime"] = driver.format_mtime_ns(info.mtime_ns)
        return meta

    def set_image_meta(self, location, meta):
        """Merge ``meta`` into the object's metadata: one POST carrying every
        header the object had (a POST replaces them all)."""
        self._check_writable("store image metadata")
        loc = self._where(location)
        conn, head = self._stat(loc, op="set metadata")
        headers = {k: v for k, v in head.items() if k.startswith("x-object-meta-")}
        for key, value in meta.items():
            if key == "mtime" and value is not None:
                value = driver.format_mtime_ns(driver.parse_mtime_ns(value))
            if key in driver.META_KEYS and value is not None:
                headers[META_HEADER + key.replace("_", "-")] = str(value)
        self._post(conn, loc.container, loc.obj, head, headers)

    def _post(self, conn, container, obj, head, headers):
        base, params = _type_params(head.get("content-type"))
        mtime = headers.get(META_HEADER + "mtime")
        size = int(params["swift_bytes"]) if params.get("swift_bytes", "").isdigit() else None
        if head.get("x-object-manifest"):
            headers["X-Object-Manifest"] = head["x-object-manifest"]
            size = int(head.get("content-length", 0))
        headers["Content-Type"] = _content_type(size=size, mtime=mtime, base=base)
        with _swift_errors("set metadata", container, obj, write=True):
            conn.post_object(container, obj, headers=headers)

    # -- gsfs extensions: rename -------------------------------------------------------
    def rename(self, location, new_id, replace=False):
        """Server side: a new manifest pointing at the same segments (gsfs's) or
        at server-side copies of them (glance_store's ``ID-`` segments, whose
        prefix would take in a later image of the old name), or a COPY of a
        plain object; then the source is deleted. The metadata follows."""
        self._check_writable("rename images")
        new_id = driver.validate_image_id(new_id, self.max_id_length)
        loc = self._where(location)
        conn, head = self._stat(loc, op="rename")
        dst_container = self.container_for(new_id)
        if dst_container != loc.container:
            self._ensure_container(conn, dst_container)
        target = self._head(conn, dst_container, new_id, op="rename")
        if target is not None and not replace:
            raise exceptions.Duplicate(image=new_id)
        manifest = head.get("x-object-manifest")
        meta = {k: v for k, v in head.items() if k.startswith("x-object-meta-")}
        old_segments = None
        with _swift_errors("rename", loc.container, loc.obj, write=True):
            if manifest:
                _, prefix = manifest.split("/", 1)
                if not urllib.parse.unquote(prefix).startswith(SEGMENTS_PREFIX):
                    manifest = self._copy_segments(conn, loc, manifest, dst_container)
                    old_segments = head["x-object-manifest"]
                headers = dict(meta, **{"X-Object-Manifest": manifest,
                                        "Content-Type": head.get("content-type", CONTENT_TYPE)})
                conn.put_object(dst_container, new_id, b"", content_length=0, headers=headers)
            elif str(head.get("x-static-large-object", "")).lower() == "true":
                conn.put_object(dst_container, new_id, None, content_length=0,
                                query_string="multipart-manifest=get",
                                headers={"X-Copy-From": "/%s/%s" % (
                                    _quote(loc.container), _quote(loc.obj))})
            else:
                conn.copy_object(loc.container, loc.obj, "/%s/%s" % (dst_container, new_id))
            conn.delete_object(loc.container, loc.obj)
        if old_segments:
            self._delete_segments(conn, loc.obj, old_segments, quiet=True)
        if target is not None and _is_manifest(target) and \
                target.get("x-object-manifest") != manifest:
            self._delete_segments(conn, new_id, target.get("x-object-manifest"), quiet=True)
        new = self._location(dst_container, new_id)
        return new.get_uri()

    def _copy_segments(self, conn, loc, manifest, container):
        """Server-side copies of a glance_store DLO's segments under a fresh gsfs
        prefix in ``container``; the new manifest value."""
        src_container, names = self._segments_of(conn, loc.obj, manifest)
        prefix = _segment_prefix(uuid.uuid4().hex)
        copied = []
        try:
            for n, name in enumerate(sorted(names), 1):
                dst = "%s%08d" % (prefix, n)
                conn.copy_object(src_container, name, "/%s/%s" % (container, dst))
                copied.append(dst)
        except BaseException:
            self._discard_segments(container, copied)
            raise
        return "%s/%s" % (_quote(container), _quote(prefix))

    # -- gsfs extensions: capacity and leftovers -------------------------------------------
    def capacity(self):
        """(quota, quota - used) where the account has a byte quota, else None."""
        try:
            head = self._connection().head_account()
        except _LIBRARY_ERRORS as e:
            LOG.debug("No capacity for %s: %s", self, e)
            return None
        quota = head.get("x-account-meta-quota-bytes", "")
        if not quota.isdigit():
            return None
        used = int(head.get("x-account-bytes-used", 0) or 0)
        return int(quota), max(0, int(quota) - used)

    def cleanup_leftovers(self):
        """Remove the segments of uploads journaled by this host whose process is
        gone (or whose discard failed), unless a manifest took them (the
        process died between publishing and ending its entry). Never touches an
        upload of another host or of a live process."""
        if not self.is_capable(capabilities.BitMasks.WRITE_ACCESS):
            return []
        self._options()
        auth = self._default_reference().auth_address
        conn = self._connection()
        done = []
        for entry in self.journal.entries():
            if entry.get("auth_address") != auth or entry.get("host") != socket.gethostname():
                continue
            token, container = entry.get("token"), entry.get("container")
            if not token or not container:
                continue
            if token in self._active or (not entry.get("abandoned") and process.process_alive(
                    entry.get("pid") or 0, entry.get("process"))):
                continue
            prefix = _segment_prefix(token)
            head = self._head(conn, container, entry.get("image") or "", op="cleanup")
            if head is not None and urllib.parse.unquote(
                    head.get("x-object-manifest", "")).endswith("/" + prefix):
                line = ("the upload %s of %s/%s was published before its process ended"
                        % (token, container, entry.get("image")))
            else:
                with _swift_errors("cleanup", container):
                    try:
                        _, listed = conn.get_container(container, prefix=prefix,
                                                       full_listing=True)
                    except swiftclient.ClientException as e:
                        if not _is_missing(e):
                            raise
                        listed = []
                names = [o["name"] for o in listed if "name" in o]
                if not self._discard_segments(container, names):
                    continue
                why = ("its discard had failed" if entry.get("abandoned")
                       else "process %s is gone" % entry.get("pid"))
                line = ("removed %d segment(s) of the unfinished upload %s of %s/%s (%s)"
                        % (len(names), token, container, entry.get("image"), why))
            self.journal.remove(self._journal_name(container, token))
            LOG.info("%s", line)
            done.append(line)
        return done
