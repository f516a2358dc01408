"""Location URIs and the scheme registry.

``SCHEME_TO_CLS_BACKEND_MAP`` maps a URI scheme to ``{store_id: {'store': driver,
'location_class': StoreLocation subclass, 'store_entry': type}}``, exactly the
shape glance_store keeps, so a URI Glance wrote finds its store here too.
"""

import logging
import urllib.parse

from gsfs import config, exceptions

LOG = logging.getLogger(__name__)

SCHEME_TO_CLS_BACKEND_MAP = {}


def register_scheme_backend_map(scheme_map):
    for scheme, backends in scheme_map.items():
        SCHEME_TO_CLS_BACKEND_MAP.setdefault(scheme, {}).update(backends)


def get_location_from_uri_and_backend(uri, backend, conf=None):
    """Parse ``uri`` with the location class of store ``backend``.

    Unknown scheme → UnknownScheme(scheme); scheme not served by ``backend``
    → UnknownScheme(scheme=backend), as glance_store does.
    """
    conf = conf or config.CONF
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in SCHEME_TO_CLS_BACKEND_MAP:
        raise exceptions.UnknownScheme(scheme=scheme)
    try:
        entry = SCHEME_TO_CLS_BACKEND_MAP[scheme][backend]
    except KeyError:
        raise exceptions.UnknownScheme(scheme=backend) from None
    return Location(scheme, entry["location_class"], conf, uri=uri, backend=backend)


class Location:
    """A parsed location: ``store_location`` is the driver's StoreLocation."""

    def __init__(self, store_name, store_location_class, conf, uri=None,
                 image_id=None, store_specs=None, backend=None):
        self.store_name = store_name
        self.image_id = image_id
        self.store_specs = store_specs or {}
        self.conf = conf
        self.backend_group = backend
        self.store_location = store_location_class(
            self.store_specs, conf, backend_group=backend)
        if uri:
            self.store_location.parse_uri(uri)

    def get_store_uri(self):
        return self.store_location.get_uri()

    def get_uri(self):
        return None


class StoreLocation:
    """Base class of a driver's location: parse_uri() / get_uri()."""

    def __init__(self, store_specs, conf, backend_group=None):
        self.specs = store_specs
        self.conf = conf
        self.backend_group = backend_group
        if self.specs:
            self.process_specs()

    def process_specs(self):
        """Set attributes from ``self.specs`` (drivers override)."""

    def get_uri(self):
        raise NotImplementedError

    def parse_uri(self, uri):
        raise NotImplementedError

    def validate_schemas(self, uri, valid_schemas):
        if not uri.startswith(valid_schemas):
            reason = ("Location URI must start with one of the following schemas: %s"
                      % ", ".join(valid_schemas))
            LOG.warning(reason)
            raise exceptions.BadStoreUri(message=reason)
