"""Location URIs and the scheme registry, and the one rule for the
credentials in a URI (``credentials_span``, ``redact_uri``).

``SCHEME_TO_CLS_BACKEND_MAP`` maps a URI scheme to ``{store_id: {'store': driver,
'location_class': StoreLocation subclass, 'store_entry': type}}``, exactly the
shape glance_store keeps, so a URI Glance wrote finds its store here too.
"""

import logging
import urllib.parse

from gsfs import config, exceptions

LOG = logging.getLogger(__name__)

SCHEME_TO_CLS_BACKEND_MAP = {}


def credentials_span(uri, start=0):
    """(begin, end) of the ``user:password@`` of the URI that starts at
    ``start`` of ``uri`` (a URI or a text holding one), or None.

    The credentials end at the last '@' before the first '/', '?' or '#' after
    ``://`` (RFC 3986). glance_store's old s3 and swift locations carry
    secrets unquoted, and S3 secret keys contain '/': so ``user:se/cret@host``
    (no '@' before the first '/', and what follows the first ':' is not a port)
    ends at the first '@' after that '/'."""
    sep = uri.find("://", start)
    if sep < 0:
        return None
    begin = sep + 3
    end = len(uri)
    for ch in "/?# \t\n'\"":
        i = uri.find(ch, begin)
        if 0 <= i < end:
            end = i
    authority = uri[begin:end]
    if "@" in authority:
        return begin, begin + authority.rindex("@") + 1
    colon = authority.find(":")
    if colon >= 0 and end < len(uri) and uri[end] == "/" and \
            not authority[colon + 1:].isdigit():
        at = uri.find("@", end)
        stop = min((i for i in (uri.find(c, end) for c in " \t\n'\"") if i >= 0),
                   default=len(uri))
        if 0 <= at < stop:
            return begin, at + 1
    return None


def redact_uri(uri, mask="***"):
    """``uri`` with the password of its credentials replaced by ``mask`` (the
    user stays: it names the account); ``mask=None`` drops the credentials."""
    uri = str(uri)
    span = credentials_span(uri)
    if span is None:
        return uri
    begin, end = span
    if mask is None:
        return uri[:begin] + uri[end:]
    creds = uri[begin:end - 1]
    user, sep, _password = creds.partition(":")
    return uri[:begin] + (user + ":" + mask if sep else mask) + "@" + uri[end:]


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
