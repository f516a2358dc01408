"""Exceptions of the store library.

Same class names, hierarchy and message templates as glance_store 5.7, so code
written against glance_store catches the same things. gsfs additionally wraps
library errors (botocore, rados, requests, OSError) in these classes; the
original exception is kept as ``__cause__``.
"""

from urllib.parse import urlparse


class BackendException(Exception):
    """A driver-level failure. Like glance_store, not a GlanceStoreException."""


class UnsupportedBackend(BackendException):
    pass


class RedirectException(Exception):
    def __init__(self, url):
        self.url = urlparse(url)


class GlanceStoreException(Exception):
    """Base class: ``message`` is a %-template filled from keyword arguments."""

    message = "An unknown exception occurred"

    def __init__(self, message=None, **kwargs):
        if not message:
            message = self.message
        if kwargs:
            try:
                message = message % kwargs
            except (KeyError, TypeError, ValueError):
                # glance_store keeps the raw template when formatting fails
                pass
        self.msg = message
        super().__init__(message)

    def __str__(self):
        return self.msg


def _template(name, text, base=GlanceStoreException):
    return type(name, (base,), {"message": text, "__module__": __name__})


MissingCredentialError = _template(
    "MissingCredentialError", "Missing required credential: %(required)s")
BadAuthStrategy = _template(
    "BadAuthStrategy",
    'Incorrect auth strategy, expected "%(expected)s" but received "%(received)s"')
AuthorizationRedirect = _template(
    "AuthorizationRedirect", "Redirecting to %(uri)s for authorization.")
NotFound = _template("NotFound", "Image %(image)s not found")
UnknownHashingAlgo = _template(
    "UnknownHashingAlgo", "Unknown hashing algorithm identifier: %(algo)s")
UnknownScheme = _template("UnknownScheme", "Unknown scheme '%(scheme)s' found in URI")
BadStoreUri = _template("BadStoreUri", "The Store URI was malformed: %(uri)s")
Duplicate = _template("Duplicate", "Image %(image)s already exists")
StorageFull = _template(
    "StorageFull", "There is not enough disk space on the image storage media.")
StorageWriteDenied = _template(
    "StorageWriteDenied", "Permission to write image storage media denied.")
AuthBadRequest = _template(
    "AuthBadRequest", "Connect error/bad request to Auth service at URL %(url)s.")
AuthUrlNotFound = _template("AuthUrlNotFound", "Auth service at URL %(url)s not found.")
AuthorizationFailure = _template("AuthorizationFailure", "Authorization failed.")
NotAuthenticated = _template("NotAuthenticated", "You are not authenticated.")
Forbidden = _template("Forbidden", "You are not authorized to complete this action.")
Invalid = _template("Invalid", "Data supplied was not valid.")
BadStoreConfiguration = _template(
    "BadStoreConfiguration",
    "Store %(store_name)s could not be configured correctly. Reason: %(reason)s")
DriverLoadFailure = _template("DriverLoadFailure", "Driver %(driver_name)s could not be loaded.")
StoreDeleteNotSupported = _template(
    "StoreDeleteNotSupported", "Deleting images from this store is not supported.")
StoreGetNotSupported = _template(
    "StoreGetNotSupported", "Getting images from this store is not supported.")
StoreRandomGetNotSupported = _template(
    "StoreRandomGetNotSupported",
    "Getting images randomly from this store is not supported. "
    "Offset: %(offset)s, length: %(chunk_size)s",
    base=StoreGetNotSupported)
StoreAddDisabled = _template(
    "StoreAddDisabled",
    "Configuration for store failed. Adding images to this store is disabled.")
MaxRedirectsExceeded = _template(
    "MaxRedirectsExceeded", "Maximum redirects (%(redirects)s) was exceeded.")
NoServiceEndpoint = _template(
    "NoServiceEndpoint", "Response from Keystone does not contain a Glance endpoint.")
RegionAmbiguity = _template(
    "RegionAmbiguity",
    "Multiple 'image' service matches for region %(region)s. This generally means "
    "that a region is required and you have not supplied one.")
RemoteServiceUnavailable = _template(
    "RemoteServiceUnavailable", "Remote server where the image is present is unavailable.")
HasSnapshot = _template(
    "HasSnapshot", "The image cannot be deleted because it has snapshot(s).")
InUseByStore = _template(
    "InUseByStore",
    "The image cannot be deleted because it is in use through the backend store "
    "outside of Glance.")
HostNotInitialized = _template(
    "HostNotInitialized",
    "The glance cinder store host %(host)s which will used to perform nfs "
    "mount/umount operations isn't initialized.")
TimeoutError = _template(  # noqa: A001 - glance_store's name
    "TimeoutError",
    "Operation timed out after %(timeout)ds. Check storage health and connectivity.")

__all__ = [name for name, value in globals().items()
           if isinstance(value, type) and issubclass(value, Exception)]
