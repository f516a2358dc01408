"""The read-only HTTP(S) store (store type ``http``, schemes ``http`` and ``https``).

glance_store compatibility
--------------------------
Same options, location format, capabilities check and exceptions as
``glance_store._drivers.http`` 5.7: ``add`` raises ``StoreAddDisabled``,
``delete`` raises ``StoreDeleteNotSupported`` (both through
``capabilities.check``), ``get`` and ``get_size`` follow 301/302 redirects,
a 404 is ``NotFound("HTTP datastore could not find image at URI.")``, any other
status >= 400 and any other 3xx are ``BadStoreUri``, too many redirects is
``MaxRedirectsExceeded``, a connection failure is ``RemoteServiceUnavailable``
in ``get`` and ``BadStoreUri`` in ``get_size``. ``url_prefix`` is literally
``'http'``, as in glance_store.

Deliberate differences (also listed in docs/compatibility.md):

* ``https_insecure`` defaults to **False**: server certificates are verified
  (glance_store defaults to True, i.e. it does not verify them).
* Capabilities are READ_RANDOM | DRIVER_REUSABLE (0x47; glance_store: 0x41).
  Random access: ``get(offset=, chunk_size=)`` is served with an HTTP
  ``Range`` request (glance_store raises ``StoreRandomGetNotSupported``).
  As in glance_store's filesystem driver, ``chunk_size`` is the total number of
  bytes wanted and the returned size is then ``chunk_size``; otherwise it is
  the full image size. If the server ignores ``Range`` (answers 200 instead of
  206), the driver reads and discards the first ``offset`` bytes of the stream
  and stops after ``chunk_size`` bytes: correct, but slow for far offsets (a
  warning is logged once per store). A 206 shorter than asked is completed
  with further range requests. An offset at or past the end yields no data.
* Up to 5 redirects are followed (glance_store gives up at the 5th redirect,
  i.e. it follows 4, while its message says "exceeded 5"). A relative
  ``Location`` is resolved against the request URL (glance_store fails on it);
  credentials of the URI are kept for a redirect to the same scheme, host and
  port, dropped for any other.
* Every request has a timeout (``gsfs_http_timeout``), so a dead or stalled
  server fails in bounded time. A timeout counts as a connection failure.
* Credentials are sent as HTTP Basic auth, never as part of the request URL.
  ``get_uri()`` re-emits them (glance_store does, and Glance stores that URI),
  but no gsfs log line or error message contains the password: URIs are shown
  as ``scheme://user:***@host/path``. A URI whose credentials cannot be parsed
  is shown with ``***@`` in place of all of them.
* Parsing splits the credentials at the *last* ``@`` of the netloc (as
  urllib3 does), so ``http://u:p@ss@host/x`` has password ``p@ss``;
  glance_store rejects that URI (and takes ``http://a@b@host/x`` as a URI
  without credentials, which gsfs rejects as "Credentials are not
  well-formatted."). Every other URI parses identically (tested against
  glance_store's parser).
* Image requests send ``Accept-Encoding: identity`` so that lengths and ranges
  count the image's own bytes.
* Error messages name the (redacted) URL and the cause, e.g. a failed
  certificate verification says so and names ``https_ca_certificates_file`` and
  ``https_insecure``. Library errors never leave the driver unwrapped; the
  original is chained as ``__cause__``.

gsfs options (prefixed ``gsfs_http_`` so they never clash with glance's)
------------------------------------------------------------------------
``gsfs_http_base_url``
    Where this store's images live: image id ``X`` is at
    ``<base_url>/<quote(X)>`` (every character but unreserved ones
    percent-encoded). Needed by ``location_for`` and, when no index URL is set,
    by ``list_images``. Credentials (``user:pass@``) are allowed.
``gsfs_http_index_url``
    The listing of the store; default ``<base_url>/``.
``gsfs_http_timeout``
    Seconds to wait to connect and between bytes received (default 30; 0 waits
    for ever).

Index format (``list_images``)
------------------------------
The index URL is fetched with GET (redirects followed). Then:

* ``Content-Type: text/plain``: one image per line, ``NAME [SIZE [MTIME]]``,
  fields separated by white space. ``NAME`` is the image id, URL-quoted
  (``%20`` for a space, ``%25`` for ``%``); ``SIZE`` is the size in bytes;
  ``MTIME`` the modification time in seconds since the epoch (a float is
  fine). ``-`` in place of ``SIZE`` or ``MTIME`` means unknown. Empty lines and
  lines starting with ``#`` are ignored; malformed lines are skipped with a
  warning.
* ``Content-Type: text/html`` (or ``application/xhtml+xml``): an autoindex page
  as nginx, Apache or python's http.server write. Every ``<a href>`` is
  resolved against the index URL; it names an image when the result is a
  direct child of ``base_url`` (same scheme, host and port; no query, no
  fragment, no trailing ``/``). So plain names qualify, while ``../``,
  subdirectories (``dir/``), sort links (``?C=N;O=D``) and links elsewhere do
  not. The image id is the unquoted last path segment.
* Any other content type: HTML if the body starts with ``<``, else plain text.

Sizes (and modification times) not given by the index are obtained with one
HEAD per image (``stat_image``), several in parallel, when ``list_images`` is
called. Names that are not valid image ids are skipped with a warning; an
image that vanished between the index and its HEAD (404) or that the server
refuses (another 4xx/5xx) is skipped with a warning.

Other gsfs extensions
---------------------
``stat_image`` uses HEAD (``Content-Length``; ``Last-Modified`` → mtime). If
HEAD is refused (405/501) or carries no length, it falls back to ``GET`` with
``Range: bytes=0-0`` and reads the total from ``Content-Range``.
``read(location, offset, length)`` is one range request (more if the server
answers with less); it returns ``b''`` at or past the end and is short only
at the end. ``get_image_meta`` returns ``{}`` (an HTTP store cannot store
metadata; the filesystem layer keeps computed checksums in memory).
``set_image_meta`` and ``rename`` raise ``StoreAddDisabled`` (the store is
read-only). ``capacity()`` is None.

Threads: one ``requests.Session`` per store, shared by all threads (its
connection pool is thread-safe; TLS verification, proxies, auth and timeout
are passed with each request instead of being set on the session).
"""

import codecs
import concurrent.futures
import decimal
import email.utils
import html.parser
import logging
import re
import threading
import time
import urllib.parse

import requests
import requests.adapters
import urllib3.exceptions
from oslo_config import cfg

from gsfs import backend, capabilities, driver, exceptions, location

LOG = logging.getLogger(__name__)

MAX_REDIRECTS = 5
LIST_HEAD_WORKERS = 8
# a listing reuses the HEAD of an image the index gives no size for this long (s)
LIST_HEAD_TTL = 60.0
LIST_CACHE_MAX = 10000    # entries kept before expired ones are dropped
_ERROR_BODY_LIMIT = 300
_CONTENT_RANGE_RE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE_RE = re.compile(r"\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)
_HTTP_OPTS = [
    cfg.StrOpt("https_ca_certificates_file",
               help="Path to the CA bundle used to verify the server certificate. When "
                    "set, https_insecure is ignored."),
    # gsfs deliberately differs from glance_store here: glance_store's default
    # is True (certificates are NOT verified); gsfs verifies them by default.
    # Set https_insecure = True to get glance_store's behaviour back.
    cfg.BoolOpt("https_insecure", default=False,
                help="Do not verify the server certificate. gsfs default: False "
                     "(glance_store's default is True). Ignored when "
                     "https_ca_certificates_file is set."),
    cfg.DictOpt("http_proxy_information", default={},
                help="Proxies by scheme, e.g. http:10.0.0.1:3128, https:10.0.0.1:1080."),
    cfg.StrOpt("gsfs_http_base_url",
               help="gsfs: URL of the directory holding this store's images; image X "
                    "is at <base_url>/<quote(X)>."),
    cfg.StrOpt("gsfs_http_index_url",
               help="gsfs: URL of the listing of this store's images (plain text "
                    "'NAME [SIZE [MTIME]]' lines or an autoindex HTML page). "
                    "Default: <base_url>/."),
    cfg.FloatOpt("gsfs_http_timeout", default=30.0, min=0,
                 help="gsfs: seconds to wait for a connection and between received "
                      "bytes; 0 waits for ever."),
]


# -- URIs and credentials ---------------------------------------------------------

def _quote(text):
    return urllib.parse.quote(text, safe="", encoding="utf-8", errors="surrogateescape")


def _unquote(text):
    return urllib.parse.unquote(text, encoding="utf-8", errors="surrogateescape")


class StoreLocation(location.StoreLocation):
    """``http[s]://[user:password@]host[:port]/path[?query]``."""

    def process_specs(self):
        self.scheme = self.specs.get("scheme", "http")
        self.netloc = self.specs["netloc"]
        self.user = self.specs.get("user")
        self.password = self.specs.get("password")
        self.path = self.specs.get("path")
        self.query = self.specs.get("query")

    def _get_credstring(self, redact=False):
        if self.user:
            return "%s:%s@" % (self.user, "***" if redact else self.password)
        return ""

    def _get_query_string(self):
        return "?%s" % self.query if self.query else ""

    def get_uri(self):
        """The URI as glance_store writes it: with the credentials."""
        return "%s://%s%s%s%s" % (self.scheme, self._get_credstring(), self.netloc,
                                  self.path or "", self._get_query_string())

    def get_redacted_uri(self):
        """For messages and logs: the password replaced by ``***``."""
        return "%s://%s%s%s%s" % (self.scheme, self._get_credstring(redact=True), self.netloc,
                                  self.path or "", self._get_query_string())

    def request_url(self):
        """The URL sent on the wire: no credentials (they go in an auth header)."""
        return "%s://%s%s%s" % (self.scheme, self.netloc, self.path or "",
                                self._get_query_string())

    def auth(self):
        if not self.user:
            return None
        return (_unquote(self.user), _unquote(self.password or ""))

    def secrets(self):
        """Strings that must never appear in a message."""
        if not self.password:
            return ()
        return tuple({self.password, _unquote(self.password)})

    def parse_uri(self, uri):
        pieces = urllib.parse.urlparse(uri)
        self.validate_schemas(uri, valid_schemas=("https://", "http://"))
        self.scheme = pieces.scheme
        netloc = pieces.netloc
        creds = None
        if "@" in netloc:
            creds, _, netloc = netloc.rpartition("@")
        if creds is not None:
            parts = creds.split(":")
            if len(parts) != 2:
                reason = "Credentials are not well-formatted."
                LOG.info(reason)
                raise exceptions.BadStoreUri(message=reason)
            self.user, self.password = parts
        else:
            self.user = self.password = None
        if netloc == "":
            LOG.info("No address specified in HTTP URL")
            raise exceptions.BadStoreUri(uri=location.redact_uri(uri))
        # IPv6: [1223:0:0:..]:<port>; otherwise host:<port>
        delimiter = "]:" if netloc.count(":") > 1 else ":"
        _host, _dlm, port = netloc.partition(delimiter)
        if port and not port.isdigit():
            raise exceptions.BadStoreUri(uri=location.redact_uri(uri))
        self.netloc = netloc
        self.path = pieces.path
        self.query = pieces.query


def _parse_location(uri, conf, backend_group, image_id=None):
    scheme = urllib.parse.urlparse(uri).scheme or "http"
    return location.Location(scheme, StoreLocation, conf, uri=uri, image_id=image_id,
                             backend=backend_group)


# -- error mapping: the one place library errors become gsfs exceptions ----------

def _scrub(text, secrets):
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _describe(exc):
    """The useful part of a requests error: the cause urllib3 wrapped in
    "Max retries exceeded", and the ssl error inside urllib3's SSLError."""
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    while (isinstance(exc, urllib3.exceptions.SSLError) and exc.args
           and isinstance(exc.args[0], BaseException)):
        exc = exc.args[0]
    return str(exc)


def _map_error(exc, loc, op, timeout=None):
    """The gsfs exception for a requests/urllib3/socket error ``exc`` raised while
    doing ``op`` on StoreLocation ``loc``.

    ``op`` is ``"get_size"`` (connection problems are BadStoreUri, as in
    glance_store) or anything else (connection problems are
    RemoteServiceUnavailable). The message names the URL without the password.
    """
    url = loc.get_redacted_uri()
    # redact_uri: a proxy URL with credentials may be quoted by the library
    detail = location.redact_uri(_scrub(_describe(exc), loc.secrets()))
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
        reason = ("TLS error talking to %s: %s. If the server's certificate is not signed "
                  "by a CA this host trusts, set https_ca_certificates_file to the CA "
                  "bundle that signed it (or https_insecure = True to skip verification)."
                  % (url, detail))
    elif isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)):
        reason = "HTTP request to %s timed out after %ss: %s" % (url, timeout, detail)
    elif isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                          requests.exceptions.InvalidSchema,
                          requests.exceptions.InvalidHeader)):
        return exceptions.BadStoreUri(message="The HTTP URL %s is invalid: %s" % (url, detail))
    elif isinstance(exc, (requests.exceptions.ChunkedEncodingError,
                          requests.exceptions.ContentDecodingError,
                          urllib3.exceptions.ProtocolError,
                          urllib3.exceptions.HTTPError)):
        reason = "Connection to %s broke while reading the image: %s" % (url, detail)
    elif isinstance(exc, requests.exceptions.ConnectionError):
        reason = ("Remote server where the image is present is unavailable: %s: %s"
                  % (url, detail))
    else:  # any other RequestException or OSError
        reason = "HTTP request to %s failed: %s" % (url, detail)
    if op == "get_size":
        return exceptions.BadStoreUri(message="The HTTP URL is invalid: %s" % reason)
    return exceptions.RemoteServiceUnavailable(message=reason)


def _status_error(resp, loc, what="image"):
    """The gsfs exception for an unwanted HTTP status (the response is closed)."""
    url = loc.get_redacted_uri()
    status = resp.status_code
    try:
        if status == 404:
            if what == "image":
                return exceptions.NotFound(message="HTTP datastore could not find image at URI.")
            return exceptions.NotFound(message="HTTP %s %s not found (404)." % (what, url))
        if 300 <= status < 400:
            return exceptions.BadStoreUri(
                message="The HTTP URL %s attempted to redirect with an invalid %s status "
                        "code." % (url, status))
        body = ""
        if resp.request is not None and resp.request.method != "HEAD":
            try:
                body = resp.raw.read(_ERROR_BODY_LIMIT, decode_content=True)
                body = body.decode("utf-8", "replace").strip()
            except Exception:  # a broken error body must not hide the status
                body = ""
        return exceptions.BadStoreUri(
            message=_scrub("HTTP URL %s returned a %s status code.%s"
                           % (url, status, "\nThe response body:\n" + body if body else ""),
                           loc.secrets()))
    finally:
        resp.close()


# -- the store ---------------------------------------------------------------

class _Settings:
    def __init__(self, group_conf):
        ca_file = group_conf.https_ca_certificates_file
        insecure = group_conf.https_insecure
        self.verify = ca_file if ca_file else not insecure
        self.proxies = dict(group_conf.http_proxy_information or {})
        base_url = group_conf.gsfs_http_base_url
        self.base_url = base_url.rstrip("/") if base_url else None
        index_url = group_conf.gsfs_http_index_url
        self.index_url = index_url or (self.base_url + "/" if self.base_url else None)
        timeout = group_conf.gsfs_http_timeout
        self.timeout = float(timeout) if timeout else None


class _Opened:
    """A GET response positioned for reading: skip ``skip`` bytes of the body,
    then it is image byte ``offset``. ``resp`` None means nothing to read."""

    def __init__(self, resp, loc, skip, total, partial):
        self.resp = resp
        self.loc = loc
        self.skip = skip
        self.total = total
        self.partial = partial        # a 206 (or 416): the server honours Range


class _ChunkIterator:
    """The chunks of a get(); ``close()`` releases the connection even when
    iteration never started (a generator's ``finally`` would not run then)."""

    def __init__(self, generator, resp):
        self._generator = generator
        self._resp = resp

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._generator)

    def close(self):
        self._generator.close()
        if self._resp is not None:
            self._resp.close()


class Store(driver.Store):
    """Read-only HTTP(S) store."""

    STORE_TYPE = "http"
    _CAPABILITIES = (capabilities.BitMasks.READ_RANDOM
                     | capabilities.BitMasks.DRIVER_REUSABLE)
    OPTIONS = _HTTP_OPTS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._session = None
        self._settings = None
        self._warned_no_range = False
        self._listed_heads = {}     # id → (time.monotonic(), ImageInfo) of listing HEADs
        if self.backend_group:
            # as glance_store: the URLs start with http or https
            self._url_prefix = "http"

    # -- configuration ---------------------------------------------------------
    def get_schemes(self):
        return ("http", "https")

    def configure_add(self):
        """Read the options once. Nothing here can disable add: there is none."""
        with self._lock:
            self._settings = _Settings(self.group_conf())
        settings = self._settings
        for name, url in (("gsfs_http_base_url", settings.base_url),
                          ("gsfs_http_index_url", settings.index_url)):
            if url and not url.startswith(("http://", "https://")):
                LOG.warning("Store %s: %s must start with http:// or https://: %s",
                            self.backend_group, name, location.redact_uri(url))
        if settings.verify is False:
            LOG.info("Store %s: https_insecure is set; server certificates are not verified",
                     self.backend_group)

    def _conf(self):
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = _Settings(self.group_conf())
        return self._settings

    def _get_session(self):
        if self._session is None:
            with self._lock:
                if self._session is None:
                    session = requests.Session()
                    adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                                            pool_maxsize=32)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    self._session = session
        return self._session

    def close(self):
        """Close the pooled connections (the store stays usable)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # -- HTTP plumbing ---------------------------------------------------------
    def _request(self, verb, loc, headers, op):
        settings = self._conf()
        try:
            return self._get_session().request(
                verb, loc.request_url(), headers=headers, auth=loc.auth(), stream=True,
                allow_redirects=False, verify=settings.verify, proxies=settings.proxies,
                timeout=settings.timeout)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                OSError) as e:
            raise _map_error(e, loc, op, settings.timeout) from e

    def _redirect_target(self, resp, loc):
        target = resp.headers.get("Location")
        resp.close()
        if not target:
            raise exceptions.BadStoreUri(
                message="The HTTP URL %s redirected (%s) without a Location"
                        % (loc.get_redacted_uri(), resp.status_code))
        new = StoreLocation({}, self.conf, backend_group=self.backend_group)
        new.parse_uri(urllib.parse.urljoin(loc.get_uri(), target))
        # A relative Location keeps our credentials (urljoin keeps the netloc);
        # an absolute one gets them only if it names the same scheme, host and port.
        if new.user is None and (new.scheme, new.netloc.lower()) == (loc.scheme,
                                                                      loc.netloc.lower()):
            new.user, new.password = loc.user, loc.password
        return new

    def _query(self, loc, verb, headers=None, op="get", ok=(), what="image"):
        """Send ``verb``, following up to MAX_REDIRECTS 301/302 redirects.

        Returns (response, final StoreLocation) for a 2xx status or a status in
        ``ok``; raises the mapped gsfs exception otherwise.
        """
        for _attempt in range(MAX_REDIRECTS + 1):
            resp = self._request(verb, loc, headers, op)
            status = resp.status_code
            if status < 300 or status in ok:
                return resp, loc
            if status in (301, 302):
                LOG.debug("%s %s redirected (%s)", verb, loc.get_redacted_uri(), status)
                loc = self._redirect_target(resp, loc)
                continue
            raise _status_error(resp, loc, what)
        resp.close()
        reason = "The HTTP URL exceeded %s maximum redirects." % MAX_REDIRECTS
        LOG.debug(reason)
        raise exceptions.MaxRedirectsExceeded(message=reason)

    def _open_range(self, loc, offset, length, op):
        """GET image bytes [offset, offset+length) (length None: to the end)."""
        headers = {"Accept-Encoding": "identity"}
        ranged = bool(offset or length)
        if ranged:
            last = "" if length is None else str(offset + length - 1)
            headers["Range"] = "bytes=%d-%s" % (offset, last)
        resp, final = self._query(loc, "GET", headers, op, ok=(416,) if ranged else ())
        if resp.status_code == 416:
            m = _UNSATISFIED_RANGE_RE.match(resp.headers.get("Content-Range", ""))
            resp.close()
            return _Opened(None, final, 0, int(m.group(1)) if m else None, True)
        length_header = resp.headers.get("Content-Length")
        if resp.status_code == 206:
            m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) > offset or int(m.group(2)) < offset:
                resp.close()
                raise exceptions.BadStoreUri(
                    message="HTTP URL %s answered Range %s with an unusable Content-Range %r"
                            % (final.get_redacted_uri(), headers["Range"],
                               resp.headers.get("Content-Range")))
            start = int(m.group(1))
            total = None if m.group(3) == "*" else int(m.group(3))
            return _Opened(resp, final, offset - start, total, True)
        total = int(length_header) if length_header and length_header.isdigit() else None
        if ranged and offset and not self._warned_no_range:
            self._warned_no_range = True
            LOG.warning("Store %s: %s ignores Range requests; reads at an offset download "
                        "and discard everything before it", self.backend_group,
                        final.get_redacted_uri())
        return _Opened(resp, final, offset, total, False)

    def _chunks(self, opened, offset, length, op):
        """Iterate image bytes [offset, offset+length) starting from ``opened``,
        asking again when a 206 is shorter than asked."""
        pos = offset
        end = None if length is None else offset + length
        while opened.resp is not None:
            resp, loc = opened.resp, opened.loc
            progress = False
            try:
                raw = resp.raw
                skip = opened.skip
                while skip > 0:
                    data = raw.read(min(skip, self.READ_CHUNKSIZE), decode_content=False)
                    if not data:
                        break
                    skip -= len(data)
                while end is None or pos < end:
                    want = self.READ_CHUNKSIZE if end is None else min(self.READ_CHUNKSIZE,
                                                                       end - pos)
                    data = raw.read(want, decode_content=False)
                    if not data:
                        break
                    pos += len(data)
                    progress = True
                    yield data
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                    OSError) as e:
                raise _map_error(e, loc, op, self._conf().timeout) from e
            finally:
                resp.close()
            if end is not None and pos >= end:
                return
            if not opened.partial or not progress:
                return                      # a whole body (200) was read, or no data
            if opened.total is not None and pos >= opened.total:
                return
            # the server sent less than asked (a short 206): ask for the rest
            opened = self._open_range(loc, pos, None if end is None else end - pos, op)

    # -- glance_store API ------------------------------------------------------
    @capabilities.check
    def get(self, location, offset=0, chunk_size=None, context=None):
        """(Indexable of byte chunks, size): the whole image, or from ``offset``
        ``chunk_size`` bytes at most (size = ``chunk_size`` then)."""
        offset = int(offset or 0)
        length = int(chunk_size) if chunk_size else None
        if offset < 0:
            raise exceptions.Invalid("Invalid offset %d" % offset)
        loc = location.store_location
        opened = self._open_range(loc, offset, length, "get")
        if length is not None:
            size = length
        elif opened.total is not None:
            size = opened.total
        elif opened.resp is None:
            size = self._head_info(opened.loc, "get")[0] or 0
        else:
            size = 0                        # unknown length, as glance_store's 0
        iterator = _ChunkIterator(self._chunks(opened, offset, length, "get"), opened.resp)
        return backend.Indexable(iterator, size), size

    def get_size(self, location, context=None):
        """Content-Length of a HEAD (0 if absent), as glance_store."""
        resp, _loc = self._query(location.store_location, "HEAD",
                                 {"Accept-Encoding": "identity"}, "get_size")
        resp.close()
        value = resp.headers.get("Content-Length", "0")
        return int(value) if value.isdigit() else 0

    # add() and delete(): the base class refuses them through capabilities.check
    # (StoreAddDisabled, StoreDeleteNotSupported), as glance_store does.

    def _add(self, image_id, image_file, image_size, hashing_algo,
             verifier=None, replace=False):
        raise exceptions.StoreAddDisabled()

    # -- gsfs extensions ---------------------------------------------------------
    def _base_url(self):
        base_url = self._conf().base_url
        if not base_url:
            raise exceptions.BadStoreConfiguration(
                store_name="http %s" % self.backend_group,
                reason="gsfs_http_base_url is not set, so this store has no place for "
                       "image ids")
        if not base_url.startswith(("http://", "https://")):
            raise exceptions.BadStoreConfiguration(
                store_name="http %s" % self.backend_group,
                reason="gsfs_http_base_url must start with http:// or https://: %s"
                       % location.redact_uri(base_url))
        return base_url

    def location_for(self, image_id):
        image_id = driver.validate_image_id(image_id, self.max_id_length)
        return _parse_location(self._base_url() + "/" + _quote(image_id), self.conf,
                               self.backend_group, image_id=image_id)

    @staticmethod
    def _image_id_of(location):
        if location.image_id:
            return str(location.image_id)
        path = location.store_location.path or ""
        return _unquote(path.rstrip("/").rpartition("/")[2])

    def _head_info(self, loc, op):
        """(size or None, mtime_ns or None) from a HEAD, falling back to a 1-byte GET."""
        size = mtime = None
        resp, final = self._query(loc, "HEAD", {"Accept-Encoding": "identity"}, op,
                                  ok=(405, 501))
        resp.close()
        if resp.status_code < 300:
            length = resp.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            mtime = _http_date(resp.headers.get("Last-Modified"))
        if size is None:
            opened = self._open_range(final, 0, 1, op)
            if opened.resp is not None:
                if mtime is None:
                    mtime = _http_date(opened.resp.headers.get("Last-Modified"))
                opened.resp.close()
            size = opened.total
            if opened.resp is None and size is None:
                size = 0                    # 416 for bytes=0-0: an empty image
        return size, mtime

    def stat_image(self, location):
        size, mtime_ns = self._head_info(location.store_location, "stat")
        if size is None:
            raise exceptions.BadStoreUri(
                message="HTTP URL %s does not tell the size of the image (no Content-Length "
                        "and no Range support)"
                        % location.store_location.get_redacted_uri())
        return _image_info(self._image_id_of(location), size, mtime_ns)

    def read(self, location, offset, length):
        offset, length = driver.read_range(offset, length)
        if length == 0:
            return b""
        opened = self._open_range(location.store_location, offset, length, "read")
        return b"".join(self._chunks(opened, offset, length, "read"))

    def get_image_meta(self, location):
        return {}

    def set_image_meta(self, location, meta):
        raise exceptions.StoreAddDisabled(
            "Store %s is read-only (http): image metadata cannot be stored" % self)

    def rename(self, location, new_id, replace=False):
        raise exceptions.StoreAddDisabled(
            "Store %s is read-only (http): images cannot be renamed" % self)

    def capacity(self):
        return None

    # -- listing -----------------------------------------------------------------
    def list_images(self):
        settings = self._conf()
        if not settings.index_url:
            LOG.debug("Store %s has neither gsfs_http_base_url nor gsfs_http_index_url: "
                      "nothing to list", self.backend_group)
            return []
        base_url = self._base_url() if settings.base_url else None
        index = StoreLocation({}, self.conf, backend_group=self.backend_group)
        index.parse_uri(settings.index_url)
        resp, final = self._query(index, "GET", None, "list", what="index")
        try:
            body = resp.content
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                OSError) as e:
            raise _map_error(e, final, "list", settings.timeout) from e
        finally:
            resp.close()
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype in ("text/html", "application/xhtml+xml"):
            is_html = True
        elif ctype == "text/plain":
            is_html = False
        else:
            is_html = body.lstrip().startswith(b"<")
        text = body.decode(_charset(resp.headers.get("Content-Type", "")),
                           "replace" if is_html else "surrogateescape")
        if is_html:
            if base_url is None:
                raise exceptions.BadStoreConfiguration(
                    store_name="http %s" % self.backend_group,
                    reason="an HTML index needs gsfs_http_base_url")
            entries = [(name, None, None) for name in
                       _html_index_names(text, final.request_url(), base_url)]
        else:
            entries = _plain_index_entries(text, final.get_redacted_uri())
        return self._complete(entries)

    def _complete(self, entries):
        images, todo, seen = [], [], set()
        for name, size, mtime in entries:
            try:
                name = driver.validate_image_id(name, self.max_id_length)
            except exceptions.Invalid as e:
                LOG.warning("Store %s: index entry skipped: %s", self.backend_group, e)
                continue
            if name in seen:
                continue
            seen.add(name)
            images.append(_image_info(name, size, mtime))
            if size is None:
                todo.append(len(images) - 1)
        if todo:
            self._base_url()
            with concurrent.futures.ThreadPoolExecutor(
                    max_workers=min(LIST_HEAD_WORKERS, len(todo)),
                    thread_name_prefix="gsfs-http-list") as pool:
                futures = {i: pool.submit(self._stat_for_listing, images[i]) for i in todo}
                for i, future in futures.items():
                    images[i] = future.result()
        return [info for info in images if info is not None]

    def _stat_for_listing(self, listed):
        """The listed ImageInfo completed with a HEAD (an index mtime wins); the
        HEAD of the last LIST_HEAD_TTL seconds is reused (a mount lists again
        every few seconds)."""
        now = time.monotonic()
        with self._lock:
            cached = self._listed_heads.get(listed.id)
        if cached is not None and now - cached[0] < LIST_HEAD_TTL:
            info = cached[1]
        else:
            try:
                info = self.stat_image(self.location_for(listed.id))
            except (exceptions.NotFound, exceptions.BadStoreUri) as e:
                LOG.warning("Store %s: listed image %r skipped: %s", self.backend_group,
                            listed.id, e)
                return None
            with self._lock:
                self._listed_heads[listed.id] = (now, info)
                if len(self._listed_heads) > 4 * LIST_CACHE_MAX:
                    self._listed_heads = {k: v for k, v in self._listed_heads.items()
                                          if now - v[0] < LIST_HEAD_TTL}
        if listed.mtime_ns is not None:
            return listed._replace(size=info.size)
        return info._replace(id=listed.id)


def _charset(content_type):
    """The charset of a Content-Type, UTF-8 when absent or unknown (requests
    would say ISO-8859-1 for any text/* without one)."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"')
            try:
                codecs.lookup(charset)
            except LookupError:
                break
            return charset
    return "utf-8"


def _image_info(image_id, size, mtime_ns):
    if mtime_ns is None:
        return driver.ImageInfo(image_id, size)
    return driver.ImageInfo(image_id, size, mtime_ns / 1e9, mtime_ns)


def _http_date(value):
    """An HTTP date (whole seconds, exact) in ns since the epoch, or None."""
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) * 1_000_000_000
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _plain_index_entries(text, where):
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            if len(fields) > 3:
                raise ValueError("more than 3 fields")
            size = None
            if len(fields) > 1 and fields[1] != "-":
                size = int(fields[1])
                if size < 0:
                    raise ValueError("negative size")
            mtime = None
            if len(fields) > 2 and fields[2] != "-":
                mtime = int(decimal.Decimal(fields[2]).scaleb(9))   # exact ns
        except (ValueError, ArithmeticError) as e:
            LOG.warning("Index %s line %d skipped (%s): %r", where, number, e, line[:200])
            continue
        entries.append((_unquote(fields[0]), size, mtime))   # mtime in ns
    return entries


class _HrefCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag.lower() == "a":
            for name, value in attrs:
                if name.lower() == "href" and value:
                    self.hrefs.append(value.strip())


def _origin(split):
    netloc = split.netloc.rpartition("@")[2].lower()
    port = split.port
    default = {"http": 80, "https": 443}.get(split.scheme)
    if port is not None and port == default:
        netloc = netloc.rpartition(":")[0]
    return split.scheme.lower(), netloc


def _html_index_names(text, index_url, base_url):
    """Names of the direct children of ``base_url`` an autoindex page links to."""
    parser = _HrefCollector()
    parser.feed(text)
    parser.close()
    base = urllib.parse.urlsplit(base_url)
    base_origin, base_path = _origin(base), base.path.rstrip("/") + "/"
    index_norm = urllib.parse.urlsplit(index_url)._replace(fragment="")
    names = []
    for href in parser.hrefs:
        try:
            target = urllib.parse.urlsplit(urllib.parse.urljoin(index_url, href))
            if target.query or _origin(target) != base_origin:
                continue
        except ValueError:
            continue
        if target._replace(fragment="") == index_norm:
            continue
        if not target.path.startswith(base_path):
            continue
        rest = target.path[len(base_path):]
        if not rest or "/" in rest:
            continue
        name = _unquote(rest)
        if name in (".", ".."):
            continue
        names.append(name)
    return names
