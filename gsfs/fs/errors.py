"""The one place where a store exception becomes an errno.

Every handler that calls into a driver goes through ``to_errno``; the log line
names the operation, the path, the store and the backend's message, so an
operator can tell from the log alone what failed and why.
"""

import errno
import logging

import pyfuse3

from gsfs import exceptions

LOG = logging.getLogger("gsfs.fs")

class ChecksumMismatch(exceptions.Invalid):
    """The data written does not have the checksum the writer announced."""


# Most specific class first: the first isinstance match wins.
_ERRNO_MAP = (
    (ChecksumMismatch, errno.EIO),
    (exceptions.Duplicate, errno.EEXIST),
    (exceptions.StorageFull, errno.ENOSPC),
    (exceptions.StorageWriteDenied, errno.EACCES),
    (exceptions.Forbidden, errno.EACCES),
    (exceptions.StoreAddDisabled, errno.EROFS),
    (exceptions.StoreDeleteNotSupported, errno.EROFS),
    (exceptions.NotFound, errno.ENOENT),
    (exceptions.Invalid, errno.EINVAL),
    (exceptions.UnknownHashingAlgo, errno.EINVAL),
    (exceptions.InUseByStore, errno.EBUSY),
    (exceptions.HasSnapshot, errno.EBUSY),
)


class FSError(pyfuse3.FUSEError):
    """A FUSEError that remembers why, for the log line."""


def errno_of(exc):
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    for cls, code in _ERRNO_MAP:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def to_fuse_error(exc, op, path, store=None, level=logging.ERROR):
    """Log one line for a failed operation and return the FUSEError to raise."""
    code = errno_of(exc)
    LOG.log(level, "%s %s failed: %s (store %s): %s: %s", op, path, errno.errorcode.get(
        code, code), store or "-", type(exc).__name__, exc)
    return pyfuse3.FUSEError(code)


def refuse(code, op, path, why, store=None, level=logging.WARNING):
    """Log why a syscall is refused (and what to do) and return the FUSEError."""
    LOG.log(level, "%s %s refused: %s (store %s): %s", op, path,
            errno.errorcode.get(code, code), store or "-", why)
    return pyfuse3.FUSEError(code)
