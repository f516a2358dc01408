"""Writing an image: one open-for-write becomes one store ``add_image()``.

Two kinds of session, chosen at open (docs/SEMANTICS.md):

``StreamSession`` (opened write-only): the upload starts at create and streams
while the file is written. write() hands data to a bounded trio channel
(``upload_queue_mib``), which the driver's add() reads from in a worker thread
through ``UploadPipe``; when the channel is full, write() waits (backpressure),
so the memory of an open file is bounded. Forward gaps and an extending
ftruncate are zero-filled; a write behind the current end is refused (EINVAL).
The opener's flush/fsync (or the release, if it never wrote before a flush)
ends the stream and waits for the backend: the errno of a failed add() is
returned there, and the driver has already removed the partial image.

``SpoolSession`` (opened read-write, as qemu-img does): writes and reads go to
a local spool file (bounded by ``spool_dir`` / ``spool_max_mib``), any order,
any number of opens; ``spool_commit_delay`` seconds after the last close the
spool file is uploaded with its exact size.

Expected checksums set with setxattr (user.glance.checksum /
user.glance.os_hash_value) are checked by ``CommitGuard`` after the last byte
and before the driver publishes the image; a mismatch aborts the add, so
nothing is committed.
"""

import errno
import logging
import os
import secrets
import time

import pyfuse3
import trio

from gsfs import driver, exceptions
from gsfs.fs import errors
from gsfs.fs.errors import ChecksumMismatch

LOG = logging.getLogger("gsfs.fs")
CHUNK = 1024 * 1024
_ZEROS = bytes(CHUNK)


class UploadAborted(Exception):
    """Raised inside the driver's add() to make it clean up and stop."""


class CommitGuard:
    """The ``verifier`` given to add(): holds the expected checksums and, through
    the driver's ImageHasher (which attaches itself), checks them at end of data."""

    def __init__(self):
        self.hasher = None
        self.expected = {}      # 'checksum' / 'os_hash_value' → lower-case hex

    def attach_hasher(self, hasher):
        self.hasher = hasher

    def update(self, chunk):
        """Called by the driver for every chunk; the hasher does the work."""

    def check_before_publish(self, delivered):
        """At end of data, in the upload thread: raise ChecksumMismatch if the
        digests differ. Returns False if the driver's digests are not complete
        yet (the result is then checked after add() returns)."""
        if not self.expected:
            return True
        if self.hasher is None or self.hasher.size != delivered:
            return False
        self.compare(self.hasher.checksum, self.hasher.hash_value)
        return True

    def compare(self, checksum, hash_value):
        for key, actual in (("checksum", checksum), ("os_hash_value", hash_value)):
            want = self.expected.get(key)
            if want is not None and want != actual:
                raise ChecksumMismatch(
                    "checksum mismatch: expected %s %s, the data written has %s"
                    % (key, want, actual))


class UploadPipe:
    """The file-like object the driver's add() reads, in its worker thread."""

    def __init__(self, receive_channel, guard):
        self.recv = receive_channel
        self.guard = guard
        self.buf = b""
        self.delivered = 0
        self.eof = False
        self.aborted = None     # a reason string once aborted

    def read(self, n=-1):
        if self.aborted:
            raise UploadAborted(self.aborted)
        if not self.buf:
            if self.eof:
                return b""
            try:
                self.buf = trio.from_thread.run(self.recv.receive)
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if self.aborted:
                    raise UploadAborted(self.aborted) from None
                self.eof = True
                self.guard.check_before_publish(self.delivered)
                return b""
            if self.aborted:
                raise UploadAborted(self.aborted)
        if n is None or n < 0 or n >= len(self.buf):
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        self.delivered += len(out)
        return out


class _Session:
    """What both kinds share: the commit that publishes the image, its result
    and error, and the bookkeeping the status channel reports."""

    kind = None

    def __init__(self, fs, image, replace):
        self.fs = fs
        self.image = image
        self.replace = replace
        self.size = 0
        self.guard = CommitGuard()
        self.done = trio.Event()
        self.errno = None
        self.error = None
        self.started = time.time()
        self.uploaded_bytes = 0     # what has gone to the backend (for status)

    @property
    def store(self):
        return self.image.store_dir.store

    def status(self):
        elapsed = max(time.time() - self.started, 1e-6)
        return {"path": self.image.path, "kind": self.kind, "bytes": self.size,
                "uploaded": self.uploaded_bytes,
                "rate_bytes_per_s": int(self.uploaded_bytes / elapsed),
                "seconds": round(elapsed, 1)}

    def _add(self, data, size):
        """In the upload thread: add the image, check it, store its metadata."""
        store = self.store
        algo = self.fs.settings.hash_algo
        uri, nbytes, checksum, hash_value, _meta = store.add_image(
            self.image.name, data, size, algo, verifier=self.guard, replace=self.replace)
        loc = store.location_for(self.image.name)
        try:
            self.guard.compare(checksum, hash_value)
        except ChecksumMismatch:
            # the driver's digests were not complete at end of data: undo the add
            try:
                store.delete(loc)
            except exceptions.GlanceStoreException as e:
                LOG.error("Could not remove %s after a checksum mismatch: %s",
                          self.image.path, e)
            raise
        meta = {"checksum": checksum, "os_hash_algo": algo, "os_hash_value": hash_value}
        if self.image.pending_mtime_ns is not None:
            meta["mtime"] = driver.format_mtime_ns(self.image.pending_mtime_ns)
        try:
            store.set_image_meta(loc, meta)
        except (exceptions.GlanceStoreException, exceptions.BackendException,
                NotImplementedError) as e:
            LOG.warning("Image %s is committed but its checksums could not be stored: %s",
                        self.image.path, e)
        return uri, nbytes, meta

    def _finish(self, result):
        uri, nbytes, meta = result
        image = self.image
        image.committed = True
        image.session = None
        image.size = nbytes
        image.meta = dict(meta)
        image.mtime_ns = image.pending_mtime_ns or time.time_ns()
        image.pending_mtime_ns = None
        image.checked_at = time.monotonic()
        self.fs.stats.count(image.store_dir.store_id, "bytes_in", nbytes)
        LOG.info("Committed %s: %d bytes at %s", image.path, nbytes, _safe_uri(uri))

    def _fail(self, exc):
        self.error = exc
        if isinstance(exc, UploadAborted):
            LOG.info("Upload of %s aborted: %s", self.image.path, exc)
            self.errno = errno.EIO
        else:
            err = errors.to_fuse_error(exc, "upload", self.image.path,
                                       self.image.store_dir.store_id)
            self.errno = err.errno
            self.fs.stats.count(self.image.store_dir.store_id, "errors", 1)
        if self.image.session is self:
            self.image.session = None
            self.fs.namespace.drop(self.image)

    async def _forget_name(self):
        """After a failed upload, before the waiters are told: the kernel cached
        the name at create (entry_timeout), so stat/open(O_EXCL) of the name would
        still find the image that was never committed. invalidate_entry blocks
        until related requests (an unlink waiting for this session...) are done:
        it runs in a thread, abandoned after the entry timeout (the kernel has
        forgotten the name by then anyway). Not after an abort: unlink and
        shutdown abort, and the kernel's unlink forgets the name itself."""
        if isinstance(self.error, UploadAborted) or \
                self.image.store_dir.entries.get(self.image.name) is self.image:
            return
        parent, name = self.image.store_dir.ino, os.fsencode(self.image.name)

        def invalidate():
            try:
                pyfuse3.invalidate_entry(parent, name)
            except OSError as e:  # ENOENT: the kernel did not know the name
                LOG.debug("invalidate_entry %s: %s", self.image.path, e)

        with trio.move_on_after(1.0):
            await trio.to_thread.run_sync(invalidate, abandon_on_cancel=True)

    def raise_if_failed(self):
        if self.errno is not None:
            raise pyfuse3.FUSEError(self.errno)


class StreamSession(_Session):
    kind = "stream"

    def __init__(self, fs, image, replace):
        super().__init__(fs, image, replace)
        chunks = max(1, fs.settings.upload_queue // CHUNK)
        self.send, receive = trio.open_memory_channel(chunks)
        self.pipe = UploadPipe(receive, self.guard)
        self.wrote = False
        self.closing = False

    def start(self):
        self.fs.uploads.add(self)
        self.fs.nursery.start_soon(self._run)

    async def _run(self):
        try:
            result = await trio.to_thread.run_sync(
                self._add, self.pipe, 0, limiter=self.fs.upload_limiter)
        except Exception as e:  # every failure is reported at flush, with its errno
            self._fail(e)
            await self._forget_name()
        else:
            self._finish(result)
        finally:
            self.pipe.recv.close()
            self.fs.uploads.discard(self)
            self.done.set()

    async def write(self, offset, data):
        self.raise_if_failed()
        if self.closing:
            raise errors.refuse(errno.EBADF, "write", self.image.path,
                                "the image was already committed by flush/fsync; "
                                "reopen is not possible for an immutable image")
        if offset < self.size:
            raise errors.refuse(
                errno.EINVAL, "write", self.image.path,
                "out-of-order write at offset %d after %d bytes were streamed; files "
                "opened write-only are uploaded as they are written. Open the file "
                "read-write (spooled) or copy with cp/dd/rsync" % (offset, self.size),
                self.image.store_dir.store_id)
        if offset > self.size:
            await self._zero_fill(offset - self.size)
        await self._send(data)
        self.wrote = True
        return len(data)

    async def _zero_fill(self, length):
        while length > 0:
            n = min(length, CHUNK)
            await self._send(_ZEROS[:n])
            length -= n

    async def _send(self, data):
        try:
            await self.send.send(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.done.wait()
            self.raise_if_failed()
            raise pyfuse3.FUSEError(errno.EIO) from None
        self.size += len(data)
        self.uploaded_bytes = self.pipe.delivered

    async def truncate(self, size):
        if size == self.size:
            return
        if size > self.size:
            await self._zero_fill(size - self.size)
            self.wrote = True   # data now: the opener's flush commits (cp of an all-hole file)
            return
        raise errors.refuse(errno.EINVAL, "truncate", self.image.path,
                            "cannot shrink a streaming upload from %d to %d bytes"
                            % (self.size, size), self.image.store_dir.store_id)

    async def commit(self):
        """End the stream and wait until the backend has the image (or failed)."""
        if not self.closing:
            self.closing = True
            await self.send.aclose()
        await self.done.wait()
        self.raise_if_failed()

    async def abort(self, reason):
        if self.done.is_set():
            return
        self.pipe.aborted = reason
        self.closing = True
        await self.send.aclose()
        await self.done.wait()


class SpoolSession(_Session):
    kind = "spool"

    def __init__(self, fs, image, replace):
        super().__init__(fs, image, replace)
        spool_dir = fs.settings.spool_dir
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(spool_dir, "%d.%s.spool" % (os.getpid(), secrets.token_hex(6)))
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.handles = 0
        self.committing = False
        self.commit_scope = None
        fs.spools.add(self)

    async def _run(self, func, *args):
        return await trio.to_thread.run_sync(func, *args, limiter=self.fs.namespace.limiter)

    def _grow(self, new_size):
        growth = new_size - self.size
        if growth > 0 and self.fs.spool_used + growth > self.fs.settings.spool_max:
            raise errors.refuse(
                errno.ENOSPC, "write", self.image.path,
                "the spool is full: %d of %d bytes in use (raise spool_max_mib or free "
                "space in %s)" % (self.fs.spool_used, self.fs.settings.spool_max,
                                  self.fs.settings.spool_dir),
                self.image.store_dir.store_id)
        self.fs.spool_used += growth
        self.size = max(self.size, new_size) if growth > 0 else new_size

    async def write(self, offset, data):
        self._check_writable()
        end = offset + len(data)
        if end > self.size:
            self._grow(end)
        try:
            await self._run(os.pwrite, self.fd, data, offset)
        except OSError as e:
            raise errors.to_fuse_error(e, "write (spool)", self.image.path,
                                       self.image.store_dir.store_id) from e
        return len(data)

    async def read(self, offset, length):
        return await self._run(os.pread, self.fd, length, offset)

    async def truncate(self, size):
        self._check_writable()
        if size > self.size:
            self._grow(size)
        else:
            self.fs.spool_used -= self.size - size
            self.size = size
        await self._run(os.ftruncate, self.fd, size)

    async def fsync(self):
        await self._run(os.fsync, self.fd)

    def _check_writable(self):
        if self.committing:
            raise errors.refuse(errno.EBUSY, "write", self.image.path,
                                "the image is being uploaded", self.image.store_dir.store_id)

    def opened(self):
        self.handles += 1
        if self.commit_scope is not None:
            self.commit_scope.cancel()
            self.commit_scope = None

    def released(self):
        self.handles -= 1
        if self.handles == 0 and not self.committing:
            self.fs.nursery.start_soon(self._commit_later)

    async def _commit_later(self):
        with trio.CancelScope() as scope:
            self.commit_scope = scope
            await trio.sleep(self.fs.settings.spool_commit_delay)
            self.commit_scope = None
            if self.handles == 0:
                await self.commit()

    async def commit(self):
        """Upload the spool file now (the last close + delay, unmount, or a
        checksum xattr read). Waits for an upload already under way."""
        if self.committing:
            await self.done.wait()
            self.raise_if_failed()
            return
        self.committing = True
        if self.commit_scope is not None:
            self.commit_scope.cancel()
        self.fs.uploads.add(self)
        try:
            result = await trio.to_thread.run_sync(self._upload, limiter=self.fs.upload_limiter)
        except Exception as e:
            self._fail(e)
            await self._forget_name()
        else:
            self._finish(result)
        finally:
            self.fs.uploads.discard(self)
            self._discard()
            self.done.set()
        self.raise_if_failed()

    def _upload(self):
        with open(self.path, "rb") as f:
            reader = _CountingReader(f, self)
            return self._add(reader, self.size)

    async def abort(self, reason):
        if self.committing:
            await self.done.wait()
            return
        self.committing = True
        LOG.info("Spooled image %s discarded: %s", self.image.path, reason)
        self._discard()
        self.errno = errno.EIO
        self.done.set()

    def _discard(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.fs.spool_used -= self.size
            self.fs.spools.discard(self)


class _CountingReader:
    def __init__(self, f, session):
        self.f = f
        self.session = session

    def read(self, n=-1):
        data = self.f.read(n)
        self.session.uploaded_bytes += len(data)
        return data


def _safe_uri(uri):
    """A location for the log: never with credentials."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return "%s://%s" % (scheme, rest.rsplit("@", 1)[1])
    return uri
