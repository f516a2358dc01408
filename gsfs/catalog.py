"""Glance's catalog (its Image API v2), optional: what the images in the stores are.

Off unless configured. The ``[gsfs_catalog]`` group is keystoneauth1's own
oslo.config loading (``register_auth_conf_options``,
``register_session_conf_options``, ``register_adapter_conf_options``), so
any Keystone auth plugin works, or ``auth_type = none`` with
``endpoint_override = http://GLANCE:9292`` for a Glance without Keystone;
``interface``, ``region_name`` and ``timeout`` are the adapter's and the
session's. Plus ``catalog_ttl`` (seconds a listing is reused). The catalog
is on when ``auth_type`` is set.

``Catalog`` (one per mount):

* ``images()``: every image record, paginated (``GET /v2/images?limit&marker``),
  cached for ``catalog_ttl``; ``by_id()``: the same as a dict;
* ``image(id)``: one record (``GET /v2/images/ID``), None if Glance has none;
* ``delete_from_store(store, id)``: Glance's ``DELETE /v2/stores/STORE/ID``
  (the record loses that location and the store its data);
* ``copy_image(id, store)``: Glance's copy-image import
  (``POST /v2/images/ID/import``): Glance copies an active image's data into
  one more store, as a task; ``copy_state(record, store)`` reads its progress
  from the record (``stores``, ``os_glance_importing_to_stores``,
  ``os_glance_failed_import``);
* ``available``: False after a failed call, until the next one succeeds.

Every call is blocking (requests through keystoneauth1): the filesystem runs
them in worker threads. A failure raises ``CatalogUnavailable`` (the server
is down, slow or refuses the credentials) or ``CatalogRefused`` (Glance
answered, and said no: its status and message are kept).
"""

import html
import logging
import re
import threading
import time
import urllib.parse

from oslo_config import cfg

LOG = logging.getLogger(__name__)

GROUP = "gsfs_catalog"
PAGE = 200

OPTS = [
    cfg.FloatOpt("catalog_ttl", default=30.0, min=0,
                 help="Seconds a listing of Glance's images is reused."),
    cfg.FloatOpt("catalog_copy_timeout", default=3600.0, min=1,
                 help="Seconds mv of a catalog image between stores waits for Glance's "
                      "copy-image import to finish before it gives up (the source is "
                      "kept)."),
]


class CatalogUnavailable(Exception):
    """The Image API could not be reached (or refused the credentials)."""


class CatalogRefused(Exception):
    """Glance answered a change with an error (``status``, its message)."""

    def __init__(self, status, message):
        super().__init__("Glance answered %s: %s" % (status, message))
        self.status = status
        self.message = message


def list_opts():
    """The options of [gsfs_catalog] for the sample config: ours and keystoneauth1's
    auth, session and adapter options (the auth plugin's come with it)."""
    from keystoneauth1 import loading

    return (list(OPTS) + loading.get_auth_common_conf_options()
            + loading.get_session_conf_options()
            + loading.get_adapter_conf_options(include_deprecated=False))


def register_opts(conf):
    """Register the [gsfs_catalog] options (keystoneauth1's and catalog_ttl)."""
    from keystoneauth1 import loading

    try:
        conf.register_opts(OPTS, group=GROUP)
    except cfg.DuplicateOptError:
        pass
    for register in (loading.register_auth_conf_options,
                     loading.register_session_conf_options,
                     loading.register_adapter_conf_options):
        try:
            register(conf, GROUP)
        except cfg.DuplicateOptError:
            pass


def configured(conf):
    return bool(getattr(conf, GROUP).auth_type)


def option_names(conf):
    """Every option [gsfs_catalog] may hold: ours, keystoneauth1's, and those
    of the configured auth plugin (registered only when it is loaded)."""
    from keystoneauth1 import loading

    register_opts(conf)
    names = set(getattr(conf, GROUP))
    auth_type = getattr(conf, GROUP).auth_type
    if auth_type:
        try:
            names |= {o.dest for o in loading.get_auth_plugin_conf_options(auth_type)}
        except Exception:  # noqa: BLE001 - an unknown plugin: from_conf says so
            pass
    return names


def from_conf(conf):
    """The Catalog of ``conf``, or None when [gsfs_catalog] is not configured."""
    register_opts(conf)
    if not configured(conf):
        return None
    from keystoneauth1 import loading

    auth = loading.load_auth_from_conf_options(conf, GROUP)
    session = loading.load_session_from_conf_options(conf, GROUP, auth=auth)
    adapter = loading.load_adapter_from_conf_options(
        conf, GROUP, session=session, auth=auth, service_type="image")
    group = getattr(conf, GROUP)
    return Catalog(adapter, ttl=group.catalog_ttl, timeout=group.timeout or 10.0,
                   copy_timeout=group.catalog_copy_timeout)


class Catalog:
    def __init__(self, adapter, ttl=30.0, timeout=10.0, copy_timeout=3600.0):
        self.adapter = adapter
        self.copy_timeout = copy_timeout
        self.ttl = ttl
        self.timeout = timeout
        self.available = None          # unknown until the first call
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()   # one listing at a time
        self._listed = None            # (time.monotonic(), [record, ...], {id: record})

    def describe(self):
        try:
            return self.adapter.get_endpoint() or "the Image API"
        except Exception:  # noqa: BLE001 - only for a log line
            return "the Image API (endpoint not known yet)"

    def admin(self):
        """Does Keystone give [gsfs_catalog]'s user the admin role? None when
        it cannot be told (auth_type none, Keystone not answering)."""
        try:
            auth = self.adapter.session.auth or self.adapter.auth
            access = auth.get_access(self.adapter.session)
            return "admin" in (access.role_names or [])
        except Exception:  # noqa: BLE001 - only decides a warning
            return None

    # -- requests ---------------------------------------------------------------
    def _request(self, method, path, ok=(200,), **kwargs):
        from keystoneauth1 import exceptions as ksa

        try:
            resp = self.adapter.request(path, method, raise_exc=False,
                                        timeout=self.timeout, **kwargs)
        except ksa.ClientException as e:
            self._unavailable("%s %s: %s: %s" % (method, path, type(e).__name__, e))
        if resp.status_code in (401, 403) and method == "GET":
            self._unavailable("%s %s: HTTP %d (check [gsfs_catalog]'s credentials and the "
                              "policy)" % (method, path, resp.status_code))
        if resp.status_code >= 500:
            self._unavailable("%s %s: HTTP %d" % (method, path, resp.status_code))
        self.available = True
        if resp.status_code not in ok:
            raise CatalogRefused(resp.status_code, _message(resp))
        return resp

    def _json(self, resp):
        try:
            return resp.json()
        except ValueError:
            self._unavailable("%s %s: HTTP %d without JSON (is endpoint_override Glance's "
                              "Image API?)" % (resp.request.method if resp.request else "",
                                               resp.url, resp.status_code))

    def _unavailable(self, why):
        if self.available is not False:
            LOG.warning("Glance's catalog is unavailable: %s; listings and reads go on from "
                        "the stores", why)
        self.available = False
        raise CatalogUnavailable(why)

    # -- reading ----------------------------------------------------------------------
    def images(self, fresh=False):
        """Every image record (dicts as Glance returns them), hidden ones too,
        cached for ttl. One listing runs at a time: callers that wait for it
        use its answer."""
        asked = time.monotonic()
        with self._lock:
            listed = self._listed
        if not fresh and listed is not None and asked - listed[0] < self.ttl:
            return listed[1]
        with self._refreshing:
            with self._lock:
                listed = self._listed
            if listed is not None and listed[0] >= asked:
                return listed[1]           # listed by another caller meanwhile
            records = self._list(hidden=False) + self._list(hidden=True)
            with self._lock:
                self._listed = (time.monotonic(), records, {r["id"]: r for r in records})
        return records

    def _list(self, hidden):
        """One paginated listing; Glance leaves hidden images (os_hidden) out of
        its default one, and lists only them with os_hidden=true."""
        records, marker = [], None
        while True:
            params = {"limit": PAGE}
            if hidden:
                params["os_hidden"] = "true"
            if marker:
                params["marker"] = marker
            page = self._json(self._request("GET", "/v2/images", params=params))
            if not isinstance(page, dict):
                self._unavailable("GET /v2/images: the answer is not an image listing")
            batch = [r for r in page.get("images", []) if isinstance(r, dict) and r.get("id")]
            records.extend(batch)
            if not page.get("next") or not batch:
                break
            marker = batch[-1]["id"]
        return records

    def cached(self, image_id):
        """The record of ``image_id`` in the last listing, without asking: None
        when there is no listing yet, False when the listing has no such image."""
        with self._lock:
            listed = self._listed
        if listed is None:
            return None
        return listed[2].get(image_id, False)

    def by_id(self, fresh=False):
        """The listing as {id: record} (made once per listing)."""
        records = self.images(fresh=fresh)
        with self._lock:
            listed = self._listed
        if listed is not None and listed[1] is records:
            return listed[2]
        return {r["id"]: r for r in records}

    def image(self, image_id):
        """One record, asked of Glance now; None if it has none."""
        try:
            rec = self._json(self._request("GET", "/v2/images/%s" % _quoted(image_id)))
        except CatalogRefused as e:
            if e.status == 404:
                return None
            raise
        if not isinstance(rec, dict) or rec.get("id") != image_id:
            return None                    # not this image's record
        return rec

    def forget(self):
        """Drop the cached listing (after a change)."""
        with self._lock:
            self._listed = None

    # -- changing -------------------------------------------------------------------------
    def delete_from_store(self, store_id, image_id):
        """Glance's delete of one store's copy: the record loses the location."""
        try:
            self._request("DELETE", "/v2/stores/%s/%s" % (_quoted(store_id), _quoted(image_id)),
                          ok=(204,))
        finally:
            self.forget()


    def copy_image(self, image_id, store_id):
        """Start Glance's copy-image import of an active image into ``store_id``."""
        try:
            self._request("POST", "/v2/images/%s/import" % _quoted(image_id), ok=(202,),
                          json={"method": {"name": "copy-image"}, "stores": [store_id]})
        finally:
            self.forget()


COPIED, COPYING, COPY_FAILED, COPY_UNKNOWN = "copied", "copying", "failed", "unknown"


def copy_state(record, store_id):
    """Where Glance's copy of an image into ``store_id`` is, from its record."""
    if store_id in stores_of(record):
        return COPIED
    if store_id in listed(record.get("os_glance_importing_to_stores")):
        return COPYING
    if store_id in listed(record.get("os_glance_failed_import")):
        return COPY_FAILED
    return COPY_UNKNOWN    # neither: not started yet, or the task ended without it


WRITING = ("saving", "importing", "uploading")   # statuses of an image Glance is writing


def being_written(record, store_id):
    """Is Glance writing this image (an upload or import, or a copy into the store)?"""
    return record.get("status") in WRITING or \
        store_id in listed(record.get("os_glance_importing_to_stores"))


def listed(text):
    """The store ids of a comma-separated record property."""
    return [s for s in (text or "").split(",") if s]


def _quoted(part):
    """One path segment: an image name with ``#``, ``?`` or ``/`` must not
    become another image's URL."""
    return urllib.parse.quote(part, safe="")


def stores_of(record):
    """The store ids a record lists (Glance's comma-separated ``stores``)."""
    return listed(record.get("stores"))


def _message(resp):
    try:
        body = resp.json()
    except ValueError:
        # Glance's errors are small HTML pages: their text, in one line
        text = html.unescape(re.sub(r"<[^>]+>", " ", resp.text or ""))
        text = " ".join(text.split())
        title = "%d %s" % (resp.status_code, resp.reason or "")
        while text.startswith(title):           # <title> and <h1> repeat the status
            text = text[len(title):].lstrip()
        return text[:500]
    if isinstance(body, dict):
        for key in ("message", "title"):
            if body.get(key):
                return str(body[key])
        err = body.get("error") or {}
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(body)[:500]
