"""glance_store's multi-backend API, implemented by gsfs.

Same functions, signatures, return shapes and exceptions as
``glance_store.multi_backend`` 5.7 (see docs/compatibility.md for the
deliberate differences). Like glance_store, lookups read the process-wide
``CONF`` (oslo.config's global), which ``create_multi_stores`` fills.
"""

import hashlib  # noqa: F401  (re-exported name used by callers of glance_store)
import importlib.metadata
import logging

from oslo_config import cfg

from gsfs import config, exceptions, hashing, location

LOG = logging.getLogger(__name__)

CONF = config.CONF
ENTRY_POINT_GROUP = "gsfs.drivers"

_RESERVED_STORES = {}
_STORES = {}          # store id → driver instance (gsfs keeps one per id)


def _driver_classes():
    """Entry-point name → class loader, from the ``gsfs.drivers`` group."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_driver_class(store_type):
    ep = _driver_classes().get(store_type)
    if ep is None:
        return None
    try:
        return ep.load()
    except Exception as e:  # an optional dependency missing: log, skip
        LOG.error("Could not load the %s driver (%s): %s", store_type, ep.value, e)
        return None


def _list_driver_opts(types=None):
    """Store type → its options, for the types gsfs has drivers for (only
    ``types``, when given: a driver is imported only when a store uses it, so
    a mount of file stores does not import boto3, librados or swiftclient)."""
    opts = {}
    names = _driver_classes()
    for name in sorted(names if types is None else set(types) & set(names)):
        cls = _load_driver_class(name)
        if cls is not None and cls.OPTIONS is not None and name == cls.STORE_TYPE:
            opts[name] = list(cls.OPTIONS)
    return opts


def _list_config_opts():
    """(group, options) pairs for oslo-config-generator (the ``oslo.config.opts``
    entry point ``gsfs``): ``[DEFAULT] enabled_backends``, ``[glance_store]
    default_backend``, one group per store type named after it (in a real file
    the section is the store id) holding store_description, weight and the
    driver's options, the ``[gsfs]`` mount settings and the optional
    ``[gsfs_catalog]`` connection to Glance's Image API."""
    from gsfs import catalog
    from gsfs.fs import settings

    groups = [("DEFAULT", [config.ENABLED_BACKENDS_OPT]),
              ("glance_store", [config.DEFAULT_BACKEND_OPT])]
    for store_type, opts in sorted(_list_driver_opts().items()):
        group = cfg.OptGroup(store_type, help=(
            "A store of type %s. Name the section after the store's id in "
            "enabled_backends (enabled_backends = ID:%s); options it leaves unset are "
            "read from [%s], then take these defaults."
            % (store_type, store_type, config.SHARED_CONF_GROUP)))
        groups.append((group, list(config.MULTI_BACKEND_OPTS) + opts))
    groups.append((cfg.OptGroup(settings.GROUP, help=(
        "gsfs mount settings; each can also be given as gsfs mount -o NAME=VALUE.")),
        settings.OPTS))
    groups.append((cfg.OptGroup(catalog.GROUP, help=(
        "Optional: Glance's Image API, so the mount shows Glance's records and rm keeps "
        "them true (README, 'Connecting the mount to Glance's catalog'). Off unless "
        "auth_type is set; the auth plugin's own options (auth_url, username, ...) "
        "follow keystoneauth1.")), catalog.list_opts()))
    return groups


def register_store_opts(conf, reserved_stores=None):
    """Register default_backend, the options of every enabled store type in its
    store group and in [backend_defaults], and the reserved stores' file options.

    Store types gsfs has no driver for (swift, cinder, vmware, ...) are skipped
    with one warning that names them, so a real glance-api.conf loads unchanged.
    """
    config.ensure_enabled_backends_opt(conf)
    config.register_opts_ignoring_duplicates(conf, [config.DEFAULT_BACKEND_OPT], "glance_store")
    enabled = dict(conf.enabled_backends or {})
    if reserved_stores:
        for store_id in reserved_stores:
            config.register_opts_ignoring_duplicates(
                conf, config.reserved_file_opts(store_id), store_id)
    driver_opts = _list_driver_opts(enabled.values())
    missing = []
    for store_id, store_type in enabled.items():
        opts = driver_opts.get(store_type)
        if opts is None:
            missing.append("%s:%s" % (store_id, store_type))
            continue
        config.register_opts_ignoring_duplicates(conf, opts, store_id)
        config.register_opts_ignoring_duplicates(conf, config.MULTI_BACKEND_OPTS, store_id)
        config.register_opts_ignoring_duplicates(conf, opts, config.SHARED_CONF_GROUP)
    if missing:
        LOG.warning("gsfs has no driver for these enabled_backends, which are skipped "
                    "with their options: %s", ", ".join(sorted(missing)))


def _load_multi_store(conf, store_type, backend):
    cls = _load_driver_class(store_type)
    if cls is None:
        return None
    try:
        return cls(conf, backend=backend)
    except exceptions.BadStoreConfiguration as e:
        LOG.warning("Store %s of type %s is not available: %s", backend, store_type, e)
        return None


def create_multi_stores(conf=CONF, reserved_stores=None):
    """Load and configure every enabled store (and the reserved ones).

    Returns the number of (scheme, store) registrations, as glance_store does
    (its docstring says "stores"; its code counts schemes).
    """
    store_count = 0
    scheme_map = {}
    enabled = dict(conf.enabled_backends or {})
    if reserved_stores:
        enabled.update(reserved_stores)
        _RESERVED_STORES.update(reserved_stores)
    for backend, store_type in enabled.items():
        store = _load_multi_store(conf, store_type, backend)
        if store is None:
            continue
        try:
            schemes = store.get_schemes()
            store.configure(re_raise_bsc=False)
        except NotImplementedError:
            continue
        if not schemes:
            raise exceptions.BackendException(
                "Unable to register store %s. No schemes associated with it." % store_type)
        LOG.debug("Registering store %s with schemes %s", backend, schemes)
        _STORES[backend] = store
        for scheme in schemes:
            scheme_map.setdefault(scheme, {})[backend] = {
                "store": store,
                "location_class": store.get_store_location_class(),
                "store_entry": store_type,
            }
            store_count += 1
    location.register_scheme_backend_map(scheme_map)
    return store_count


def verify_store():
    store_id = CONF.glance_store.default_backend
    if not store_id:
        raise RuntimeError("'default_backend' config option is not set.")
    try:
        get_store_from_store_identifier(store_id)
    except exceptions.UnknownScheme:
        raise RuntimeError("Store for identifier %s not found" % store_id) from None


def _enabled_and_reserved():
    try:
        enabled = dict(CONF.enabled_backends or {})
    except cfg.NoSuchOptError:
        enabled = {}
    enabled.update(_RESERVED_STORES)
    return enabled


def get_store_from_store_identifier(store_identifier):
    """The driver instance for a store id (UnknownScheme if there is none).

    gsfs keeps one configured instance per store id, also for s3 and rbd, which
    glance_store rebuilds on every call.
    """
    enabled = _enabled_and_reserved()
    try:
        store_type = enabled[store_identifier]
    except KeyError:
        raise exceptions.UnknownScheme(
            "Store for identifier %s not found" % store_identifier) from None
    store = _STORES.get(store_identifier)
    if store is None:
        raise exceptions.UnknownScheme(scheme=store_type)
    return store


def get_store_weight(store_identifier):
    return get_store_from_store_identifier(store_identifier).weight


def get_known_schemes_for_multi_store():
    return location.SCHEME_TO_CLS_BACKEND_MAP.keys()


def check_location_metadata(val, key=""):
    if isinstance(val, dict):
        for key in val:
            check_location_metadata(val[key], key=key)
    elif isinstance(val, list):
        ndx = 0
        for v in val:
            check_location_metadata(v, key="%s[%d]" % (key, ndx))
            ndx = ndx + 1
    elif not isinstance(val, str):
        raise exceptions.BackendException(
            "The image metadata key %(key)s has an invalid type of %(type)s. "
            "Only dict, list, and unicode are supported." % {"key": key, "type": type(val)})


def _check_metadata(store, metadata):
    if not isinstance(metadata, dict):
        raise exceptions.BackendException(
            "The storage driver %(driver)s returned invalid  metadata %(meta)s. "
            "This must be a dictionary type" % {"driver": str(store), "meta": str(metadata)})
    try:
        check_location_metadata(metadata)
    except exceptions.BackendException as e:
        raise exceptions.BackendException(
            "A bad metadata structure was returned from the %(driver)s storage driver: "
            "%(meta)s.  %(e)s." % {"driver": str(store), "meta": str(metadata), "e": str(e)}
        ) from e


def store_add_to_backend(image_id, data, size, store, context=None, verifier=None):
    (location_uri, size, checksum, metadata) = store.add(
        image_id, data, size, context=context, verifier=verifier)
    if metadata is not None:
        _check_metadata(store, metadata)
    return location_uri, size, checksum, metadata


def store_add_to_backend_with_multihash(image_id, data, size, hashing_algo, store,
                                        context=None, verifier=None):
    if hashing_algo not in hashlib.algorithms_available:
        raise exceptions.UnknownHashingAlgo(algo=hashing_algo)
    hashing.validate_algo(hashing_algo)
    (location_uri, size, checksum, multihash, metadata) = store.add(
        image_id, data, size, hashing_algo, context=context, verifier=verifier)
    if metadata is not None:
        _check_metadata(store, metadata)
    return location_uri, size, checksum, multihash, metadata


def add(conf, image_id, data, size, backend, context=None, verifier=None):
    if not backend:
        backend = conf.glance_store.default_backend
    store = get_store_from_store_identifier(backend)
    return store_add_to_backend(image_id, data, size, store, context, verifier)


def add_with_multihash(conf, image_id, data, size, backend, hashing_algo,
                       scheme=None, context=None, verifier=None):
    if not backend:
        backend = conf.glance_store.default_backend
    store = get_store_from_store_identifier(backend)
    return store_add_to_backend_with_multihash(
        image_id, data, size, hashing_algo, store, context, verifier)


def _search_backends(uri, operation):
    """Try ``operation(loc, store)`` on every enabled store whose type prefixes
    the URI, as glance_store does when no backend is named."""
    LOG.warning("Backend is not supplied; searching every configured store for %s", uri)
    for backend, store_type in dict(CONF.enabled_backends or {}).items():
        if not uri.startswith(store_type):
            continue
        try:
            loc = location.get_location_from_uri_and_backend(uri, backend, conf=CONF)
            store = get_store_from_store_identifier(backend)
            result = operation(loc, store)
        except (exceptions.NotFound, exceptions.UnknownScheme):
            continue
        yield result


def get(uri, backend, offset=0, chunk_size=None, context=None):
    if backend:
        loc = location.get_location_from_uri_and_backend(uri, backend, conf=CONF)
        store = get_store_from_store_identifier(backend)
        return store.get(loc, offset=offset, chunk_size=chunk_size, context=context)
    for data, size in _search_backends(
            uri, lambda loc, store: store.get(loc, offset=offset, chunk_size=chunk_size,
                                              context=context)):
        if data:
            return data, size
    raise exceptions.NotFound(message="Image not found in any configured backend")


def delete(uri, backend, context=None):
    if backend:
        loc = location.get_location_from_uri_and_backend(uri, backend, conf=CONF)
        store = get_store_from_store_identifier(backend)
        return store.delete(loc, context=context)
    for result in _search_backends(uri, lambda loc, store: store.delete(loc, context=context)):
        return result
    raise exceptions.NotFound(message="Image not found in any configured backend")


def get_size_from_uri_and_backend(uri, backend, context=None):
    loc = location.get_location_from_uri_and_backend(uri, backend, conf=CONF)
    store = get_store_from_store_identifier(backend)
    return store.get_size(loc, context=context)


def set_acls_for_multi_store(location_uri, backend, public=False, read_tenants=[],  # noqa: B006
                             write_tenants=None, context=None):
    loc = location.get_location_from_uri_and_backend(location_uri, backend, conf=CONF)
    store = get_store_from_store_identifier(backend)
    try:
        store.set_acls(loc, public=public, read_tenants=read_tenants,
                       write_tenants=write_tenants or [], context=context)
    except NotImplementedError:
        LOG.debug("Skipping store.set_acls... not implemented")


def stores():
    """gsfs: the configured stores, id → driver (operator stores, then reserved)."""
    return dict(_STORES)


def reset():
    """gsfs: forget every registered store (for tests: a fresh configuration)."""
    _STORES.clear()
    _RESERVED_STORES.clear()
    location.SCHEME_TO_CLS_BACKEND_MAP.clear()


__all__ = [
    "add", "add_with_multihash", "check_location_metadata", "create_multi_stores",
    "delete", "get", "get_known_schemes_for_multi_store", "get_size_from_uri_and_backend",
    "get_store_from_store_identifier", "get_store_weight", "register_store_opts",
    "set_acls_for_multi_store", "store_add_to_backend", "store_add_to_backend_with_multihash",
    "verify_store",
]
