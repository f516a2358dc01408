"""The one error funnel: every failure of a FUSE request becomes one errno here.

``funnel`` wraps every pyfuse3 handler of ``Operations`` (operations.py applies
it to each name in ``HANDLERS``). Whatever a handler raises leaves it as a
``pyfuse3.FUSEError``, so no request can end the daemon (pyfuse3 stops its
main loop on any other exception):

* ``FUSEError`` (a refusal, already logged by ``refuse``, or an errno a session
  already reported): passed on, counted;
* gsfs/glance_store exceptions, ``BackendException``, ``OSError``: mapped by
  ``errno_of`` (``_ERRNO_MAP``, then ``OSError.errno``), one log line naming
  the operation, the path, the store and the cause, counted;
* anything else (a bug): ``EIO``, logged once with its traceback, counted.

Background work (uploads, the spool's delayed commit, readahead) is started
through ``Operations.spawn``, which reports its failures with ``report`` the
same way instead of letting them cancel the daemon's nursery.

``Failures`` holds the counts per store and operation, for ``gsfs status``
and the metrics; the funnel also counts and times every request in the
mount's ``Metrics`` (gsfs/fs/metrics.py).
"""

import errno
import functools
import logging
import time

import pyfuse3

from gsfs import exceptions

LOG = logging.getLogger("gsfs.fs")


class ChecksumMismatch(exceptions.Invalid):
    """The data written does not have the checksum (or size) the writer announced."""


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

# Expected exceptions: mapped and logged in one line, without a traceback.
KNOWN = (exceptions.GlanceStoreException, exceptions.BackendException, OSError)

# Answers that are not failures: a name that does not exist, an attribute not set.
NORMAL = {("lookup", errno.ENOENT), ("getxattr", errno.ENODATA),
          ("getxattr", errno.ENOTSUP), ("rename", errno.EXDEV)}


def errno_of(exc):
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    for cls, code in _ERRNO_MAP:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


class Failures:
    """Failed requests and background jobs, per store and operation."""

    def __init__(self):
        self.counts = {}            # (store or "-", op) → n

    def count(self, store, op):
        key = (store or "-", op)
        self.counts[key] = self.counts.get(key, 0) + 1

    def per_store(self):
        out = {}
        for (store, op), n in sorted(self.counts.items()):
            out.setdefault(store, {})[op] = n
        return out



def _name(code):
    return errno.errorcode.get(code, str(code))


def report(exc, op, path, store=None, failures=None):
    """Log one line for a failure (with the traceback if it is not an expected
    kind), count it, and return its errno."""
    code = errno_of(exc)
    if failures is not None:
        failures.count(store, op)
    if isinstance(exc, pyfuse3.FUSEError):
        return code
    if isinstance(exc, KNOWN):
        LOG.error("%s %s failed: %s (store %s): %s: %s", op, path, _name(code),
                  store or "-", type(exc).__name__, exc)
    else:
        LOG.error("%s %s failed: %s (store %s): unexpected %s: %s", op, path, _name(code),
                  store or "-", type(exc).__name__, exc, exc_info=exc)
    return code


def refuse(code, op, path, why, store=None, level=logging.WARNING):
    """Log why a syscall is refused (and what to do) and return the FUSEError."""
    LOG.log(level, "%s %s refused: %s (store %s): %s", op, path, _name(code),
            store or "-", why)
    return pyfuse3.FUSEError(code)


def funnel(op, method):
    """Wrap handler ``method`` of Operations: every exception becomes one errno.
    ``self.describe(op, args)`` names the path and store for the log line;
    every request is counted and timed in ``self.metrics`` (gsfs/fs/metrics.py)."""

    @functools.wraps(method)
    async def handler(self, *args):
        t0 = time.perf_counter()
        path, store = self.describe(op, args)
        code = None
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError as e:
            if (op, e.errno) not in NORMAL:
                code = e.errno
                self.failures.count(store, op)
            raise
        except Exception as e:  # noqa: BLE001 - nothing may end the daemon
            code = report(e, op, path, store, self.failures)
            raise pyfuse3.FUSEError(code) from None
        finally:
            self.metrics.request(op, store, time.perf_counter() - t0, code)

    return handler
