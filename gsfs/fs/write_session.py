"""Writing an image: one open-for-write becomes one store ``add_image()``.

Two kinds of session, chosen at open (docs/SEMANTICS.md):

``StreamSession`` (opened write-only): the upload starts at create and streams
while the file is written. write() hands data to a bounded trio channel
(``upload_queue_mib``), which the driver's add() reads from in a worker thread
through ``UploadPipe``; when the channel is full, write() waits (backpressure),
so the memory of an open file is bounded. Writes that arrive ahead of the
stream (threads or asynchronous I/O writing one file at once) wait in a reorder window of
``reorder_window_mib``; a gap is zero-filled (a hole) only when the window is
full and nothing is being written at the stream position, at an extending
ftruncate, or at the commit. The opener's flush/fsync (or the release, if it
never wrote before a flush) ends the stream and waits for the backend: the
errno of a failed add() is returned there, and the driver has already removed
the partial image.

``SpoolSession`` (opened read-write, as qemu-img does): writes and reads go to
a local spool file (bounded by ``spool_dir`` / ``spool_max_mib``), any order,
any number of opens; ``spool_commit_delay`` seconds after the last close the
spool file is uploaded with its exact size.

What stops a commit, on both kinds (nothing is published, a replaced image
stays as it was):

* the writer's fate: at every flush, the opener's /proc/PID/stat is read
  (gsfs/process.py ``exit_state``); a writer that is being killed by a signal
  or exits non-zero closes its files in the kernel's exit path, and that close
  is not a finished copy (``abandon`` / ``closed_by``). A streamed upload asks
  again at end of data and right before the driver publishes
  (``CommitGuard.before_publish``): a writer killed while its close waits for
  the commit (Ctrl-C, ``timeout``) has a fatal signal pending by then;
* poison: after a write, truncate or fsync failed (a write the reorder window
  cannot place, a full spool, a spool I/O error), the upload is aborted and
  every later write and the close fail with that errno (``poison``);
* what the writer announced with setxattr: ``user.glance.checksum`` /
  ``user.glance.os_hash_value`` and ``user.glance.size`` are checked by
  ``CommitGuard`` after the last byte and before the driver publishes.
"""

import collections
import errno
import logging
import os
import secrets
import threading
import time

import pyfuse3
import trio

from gsfs import driver, exceptions, location, process
from gsfs.budget import BUDGET
from gsfs.fs import errors
from gsfs.fs.errors import ChecksumMismatch

LOG = logging.getLogger("gsfs.fs")
CHUNK = 1024 * 1024
_ZEROS = bytes(CHUNK)


class UploadAborted(Exception):
    """Raised inside the driver's add() to make it clean up and stop."""


class WriterFailed(UploadAborted):
    """Raised inside the driver's add() when the writer is being killed or
    exits non-zero while its close waits for the commit."""


def writer_failure(pid):
    """Why the writer ``pid`` must not commit (it is being killed or exits
    non-zero: its close is the kernel's cleanup, not a finished copy), or
    None. A pid that is gone or cannot be read tells nothing: None."""
    if not pid:
        return None
    state = process.exit_state(pid)
    return state.describe() if state.failed else None


class CommitGuard:
    """The ``verifier`` given to add(): holds what the writer announced (checksums
    set with setxattr, and ``user.glance.size``) and, through the driver's
    ImageHasher (which attaches itself), checks it at end of data."""

    def __init__(self):
        self.hasher = None
        self.expected = {}      # 'checksum' / 'os_hash_value' → lower-case hex
        self.expected_size = None
        self.writer_pid = None  # a streamed upload's opener: its fate is asked last

    def attach_hasher(self, hasher):
        self.hasher = hasher

    def update(self, chunk):
        """Called by the driver for every chunk; the hasher does the work."""

    def check_size(self, size):
        if self.expected_size is not None and self.expected_size != size:
            raise ChecksumMismatch(
                "size mismatch: user.glance.size was set to %d, the data written has %d "
                "bytes" % (self.expected_size, size))

    def check_before_publish(self, delivered):
        """At end of data, in the upload thread: raise ChecksumMismatch if the
        size or digests differ. Returns False if the driver's digests are not
        complete yet (the result is then checked after add() returns)."""
        self.check_size(delivered)
        self.before_publish()
        if not self.expected:
            return True
        if self.hasher is None or self.hasher.size != delivered:
            return False
        self.compare(self.hasher.checksum, self.hasher.hash_value)
        return True

    def before_publish(self):
        """In the upload thread, at end of data and (called by the driver
        through ImageHasher) right before the image is published: raise
        WriterFailed if the writer is being killed or exits non-zero."""
        why = writer_failure(self.writer_pid)
        if why is not None:
            raise WriterFailed("its writer " + why)

    def compare(self, checksum, hash_value):
        for key, actual in (("checksum", checksum), ("os_hash_value", hash_value)):
            want = self.expected.get(key)
            if want is not None and want != actual:
                raise ChecksumMismatch(
                    "checksum mismatch: expected %s %s, the data written has %s"
                    % (key, want, actual))


class UploadPipe:
    """The bounded queue between write() (trio) and the driver's add(), which
    reads it like a file in its worker thread.

    The reader blocks on a threading.Condition, so a chunk costs no trio
    round trip; a writer that finds ``limit`` bytes queued sleeps on a trio
    Event that the reader sets once the queue has drained to half (queued
    with the trio token, not waited for). read(n) hands out the written
    buffers themselves, or zero-copy memoryview slices of them when the
    driver asks for less.
    """

    # drivers that read in small chunks (the file driver: 64 KiB) read this
    # much at once from the queue: whole written buffers
    preferred_read_size = CHUNK

    def __init__(self, limit, guard):
        self.cond = threading.Condition()
        self.items = collections.deque()
        self.queued = 0
        self.limit = limit
        self.closed = False         # end of data: commit, or an abort
        self.reader_gone = False    # the upload ended
        self.space = None           # the Event a writer waits on for room
        self.token = trio.lowlevel.current_trio_token()
        self.guard = guard
        self.buf = None
        self.pos = 0
        self.delivered = 0
        self.eof = False
        self.aborted = None     # a reason string once aborted

    # -- the trio side ---------------------------------------------------------
    async def send(self, data):
        while True:
            with self.cond:
                if self.reader_gone:
                    raise trio.BrokenResourceError
                if self.closed:
                    raise trio.ClosedResourceError
                if self.queued < self.limit:
                    if not self.items:
                        # an empty queue always takes one: its upload goes on
                        BUDGET.force(len(data))
                        drawn = True
                    else:
                        drawn = BUDGET.try_draw(len(data))
                    if drawn:
                        self.items.append(data)
                        self.queued += len(data)
                        self.cond.notify()
                        return
                    # the process budget is spent: wait until bytes are given back
                    event = trio.Event()
                    if not BUDGET.wait_for(len(data), self.token, event):
                        continue
                else:
                    if self.space is None:
                        self.space = trio.Event()
                    event = self.space
            await event.wait()

    def _wake_writer(self):
        event, self.space = self.space, None
        if event is not None:
            event.set()

    def close(self):
        """No more data (set ``aborted`` first to make the reader fail)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            self._wake_writer()

    def reader_done(self):
        """The upload ended: writers fail from now on, queued data is dropped."""
        with self.cond:
            self.reader_gone = True
            self.items.clear()
            queued, self.queued = self.queued, 0
            self._wake_writer()
        BUDGET.give(queued)

    # -- the driver's side (its worker thread) -----------------------------------
    def read(self, n=-1):
        if self.aborted:
            raise UploadAborted(self.aborted)
        if self.buf is None:
            if self.eof:
                return b""
            wake = None
            with self.cond:
                while not self.items and not self.closed:
                    self.cond.wait()
                if self.aborted:
                    raise UploadAborted(self.aborted)
                if not self.items:
                    self.eof = True
                else:
                    self.buf, self.pos = self.items.popleft(), 0
                    self.queued -= len(self.buf)
                    if self.space is not None and self.queued <= self.limit // 2:
                        wake, self.space = self.space, None
            if self.buf is not None:
                BUDGET.give(len(self.buf))
            if wake is not None:
                # queued for the trio loop, not waited for: the reader goes on
                # with the chunk it holds (py-spy: the wait was 18% of its samples)
                self.token.run_sync_soon(wake.set)
            if self.eof:
                self.guard.check_before_publish(self.delivered)
                return b""
        buf, pos = self.buf, self.pos
        left = len(buf) - pos
        if n is None or n < 0 or n >= left:
            out = buf if pos == 0 else memoryview(buf)[pos:]
            self.buf = None
        else:
            out = memoryview(buf)[pos:pos + n]
            self.pos += n
        self.delivered += len(out)
        return out


class _Session:
    """What both kinds share: the commit that publishes the image, its result
    and error, the writers' fate, and the bookkeeping the status channel reports."""

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
        self.poisoned = None        # why the upload may not publish (a failed write...)
        self.forget_name = True     # after a failure, make the kernel forget the name
        self.started = time.time()
        self.uploaded_bytes = 0     # what the driver has taken to send (for status)
        self.first_byte_at = None   # time.monotonic() of the first byte sent to the store
        self.first_bytes = 0        # what had been taken by then (one chunk or so)
        self.commit_started = None  # ... of the close (stream) or the spool upload's start

    @property
    def store(self):
        return self.image.store_dir.store

    @property
    def store_id(self):
        return self.image.store_dir.store_id

    def status(self):
        """For ``gsfs status``: the rate counts from the first byte sent to the
        store, so time spent spooling or waiting for the commit delay is not in it."""
        elapsed = max(time.time() - self.started, 1e-6)
        sending = 0.0 if self.first_byte_at is None else time.monotonic() - self.first_byte_at
        rate = (self.uploaded_bytes - self.first_bytes) / sending if sending > 0 else 0
        return {"path": self.image.path, "kind": self.kind, "bytes": self.size,
                "expected_bytes": self.guard.expected_size,
                "uploaded": self.uploaded_bytes,
                "rate_bytes_per_s": int(rate),
                "sending_seconds": round(sending, 1),
                "seconds": round(elapsed, 1)}

    def _sent(self, total):
        """``total`` bytes have gone to the store so far."""
        if total and self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
            self.first_bytes = total
        self.uploaded_bytes = total

    def _add(self, data, size):
        """In the upload thread: add the image, check it, store its metadata."""
        store = self.store
        algo = self.fs.settings.hash_algo
        uri, nbytes, checksum, hash_value, _meta = store.add_image(
            self.image.name, data, size, algo, verifier=self.guard, replace=self.replace)
        loc = store.location_for(self.image.name)
        try:
            self.guard.check_size(nbytes)
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

    async def _store_late_mtime(self, result):
        """A utimens that came while the driver was adding, after the metadata
        was written (rsync sets the mtime of its temporary file right after
        closing it, while the commit of an empty file runs), is stored now:
        else the store keeps the upload time and a remount shows that."""
        meta = result[2]
        ns = self.image.pending_mtime_ns
        if ns is None:
            return
        text = driver.format_mtime_ns(ns)
        if meta.get("mtime") == text:
            return
        store = self.store
        try:
            await self.fs.namespace.run(
                lambda: store.set_image_meta(store.location_for(self.image.name),
                                             {"mtime": text}))
        except (exceptions.GlanceStoreException, exceptions.BackendException,
                NotImplementedError) as e:
            LOG.warning("Image %s is committed but its modification time could not be "
                        "stored: %s", self.image.path, e)
            return
        meta["mtime"] = text

    def _finish(self, result):
        uri, nbytes, meta = result
        image = self.image
        image.committed = True
        image.session = None
        image.size = nbytes
        image.meta = dict(meta)
        image.version = None        # unknown until the store is asked again
        image.mtime_ns = image.pending_mtime_ns or time.time_ns()
        image.pending_mtime_ns = None
        image.checked_at = time.monotonic()
        self.fs.stats.count(self.store_id, "uploads")
        self.fs.metrics.upload_committed(self.store_id, self.first_byte_at, self.commit_started)
        LOG.info("Committed %s: %d bytes at %s", image.path, nbytes,
                 location.redact_uri(uri, mask=None))

    def _fail(self, exc):
        self.error = exc
        if isinstance(exc, WriterFailed):
            code = errno.EIO
            LOG.warning("Upload of %s abandoned, nothing is published: %s", self.image.path,
                        exc)
            self.fs.failures.count(self.store_id, "commit")
        elif isinstance(exc, UploadAborted):
            code = self.errno or errno.EIO
            if self.errno is None:      # abandon() and poison() logged their cause
                LOG.info("Upload of %s aborted, nothing was published: %s", self.image.path,
                         exc)
        else:
            code = errors.report(exc, "upload", self.image.path, self.store_id,
                                 self.fs.failures)
        if self.errno is None:
            self.errno = code
        self.fs.stats.count(self.store_id, "failed_uploads")
        if self.image.session is self:
            self.image.session = None
            self.fs.namespace.drop(self.image)

    async def _forget_name(self):
        """After a failed upload, before the waiters are told: the kernel cached
        the name at create (entry_timeout), so stat/open(O_EXCL) of the name would
        still find the image that was never committed. invalidate_entry blocks
        until related requests (an unlink waiting for this session...) are done:
        it runs in a thread, abandoned after the entry timeout (the kernel has
        forgotten the name by then anyway). Not after an unlink or a shutdown
        (``forget_name`` False): the kernel's unlink forgets the name itself."""
        if not self.forget_name or \
                self.image.store_dir.entries.get(self.image.name) is self.image:
            return
        parent, name = self.image.store_dir.ino, os.fsencode(self.image.name)

        def invalidate():
            try:
                pyfuse3.invalidate_entry(parent, name)
            except Exception as e:  # noqa: BLE001 - ENOENT: the kernel did not know it
                LOG.debug("invalidate_entry %s: %s", self.image.path, e)

        with trio.move_on_after(1.0):
            await trio.to_thread.run_sync(invalidate, abandon_on_cancel=True)

    def raise_if_failed(self):
        if self.errno is not None:
            raise pyfuse3.FUSEError(self.errno)


class StreamSession(_Session):
    """A write-only file streamed to the store while it is written.

    ``pos`` is where the stream has got to (every byte before it is claimed,
    in order, for the upload queue); writes ahead of it wait in ``window``
    (offset → bytes, at most ``reorder_window`` bytes) until the bytes before
    them arrive: writers with several writes in flight at once (threads
    calling pwrite, asynchronous I/O) reach gsfs in any order. (The file is
    opened with direct I/O, so the kernel passes each write(2) of a single
    writer on in order, dd oflag=direct too.) A gap is a
    hole, zero-filled, only when the window is full and no write at the
    stream position is under way, at an extending truncate, or at the commit.
    Claims are made without awaiting and sent under a fair lock, so the queue
    gets the bytes in file order."""

    kind = "stream"

    def __init__(self, fs, image, replace):
        super().__init__(fs, image, replace)
        self.pipe = UploadPipe(fs.settings.upload_queue, self.guard)
        self.wrote = False
        self.closing = False
        self.pos = 0
        self.window = {}
        self.window_bytes = 0
        self.window_max = fs.settings.reorder_window
        self.feeding = 0            # tasks sending (or about to send) at the stream
        self.send_lock = trio.Lock()
        self.progress = trio.Event()

    def start(self):
        self.fs.uploads.add(self)
        self.fs.spawn(self._run, "upload %s" % self.image.path)

    async def _run(self):
        try:
            result = await trio.to_thread.run_sync(
                self._add, self.pipe, 0, limiter=self.fs.upload_limiter)
        except Exception as e:  # every failure is reported at flush, with its errno
            self._fail(e)
            await self._forget_name()
        else:
            await self._store_late_mtime(result)
            self._finish(result)
        finally:
            self.pipe.reader_done()
            self.fs.uploads.discard(self)
            self.done.set()
            self._moved()

    # -- writing -------------------------------------------------------------
    async def write(self, offset, data):
        self.raise_if_failed()
        if self.closing:
            raise errors.refuse(errno.EBADF, "write", self.image.path,
                                "the image was already committed by flush/fsync; "
                                "reopen is not possible for an immutable image")
        data = bytes(data)
        self.wrote = True
        while True:
            self.raise_if_failed()
            if offset < self.pos or self._overlaps_window(offset, len(data)):
                raise self.poison(
                    errno.EINVAL, "write at offset %d of %d bytes overlaps bytes already "
                    "written (%d streamed, %d waiting in the reorder window); files opened "
                    "write-only are uploaded as they are written, once. Open the file "
                    "read-write (spooled) to rewrite parts of it"
                    % (offset, len(data), self.pos, self.window_bytes))
            if offset == self.pos:
                await self._claim_and_send([data])
                return len(data)
            if self.window_bytes + len(data) <= self.window_max:
                self.window[offset] = data
                self.window_bytes += len(data)
                self.size = max(self.size, offset + len(data))
                return len(data)
            if self.feeding == 0:
                # the window is full and nothing can fill the gap: it is a hole
                await self._fill_hole()
            else:
                await self.progress.wait()

    def _overlaps_window(self, offset, length):
        end = offset + length
        return any(o < end and offset < o + len(d) for o, d in self.window.items())

    async def _fill_hole(self):
        """Zero-fill from the stream position up to the window's first piece."""
        gap = min(self.window) - self.pos
        LOG.debug("%s: a hole of %d bytes at offset %d", self.image.path, gap, self.pos)
        await self._claim_and_send([gap])

    async def _claim_and_send(self, pieces):
        """Claim ``pieces`` (contiguous from pos: bytes, or an int for that many
        zero bytes), then every window piece that has become contiguous, and
        send them in order."""
        claimed = []
        for piece in pieces:
            claimed.append(piece)
            self.pos += piece if isinstance(piece, int) else len(piece)
        while self.pos in self.window:
            piece = self.window.pop(self.pos)
            claimed.append((piece,))               # a tuple: from the window
            self.pos += len(piece)
        self.size = max(self.size, self.pos)
        self.feeding += 1
        try:
            async with self.send_lock:
                for item in claimed:
                    if isinstance(item, int):
                        await self._zero_fill(item)
                    elif isinstance(item, tuple):
                        await self._send(item[0])
                        self.window_bytes -= len(item[0])
                    else:
                        await self._send(item)
                    self._moved()
        finally:
            self.feeding -= 1
            self._moved()

    def _moved(self):
        self.progress.set()
        self.progress = trio.Event()

    async def _zero_fill(self, length):
        while length > 0:
            n = min(length, CHUNK)
            await self._send(_ZEROS[:n])
            length -= n

    async def _send(self, data):
        try:
            await self.pipe.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.done.wait()
            self.raise_if_failed()
            raise pyfuse3.FUSEError(errno.EIO) from None
        self._sent(self.pipe.delivered)

    async def _drain_window(self):
        while self.window:
            await self._fill_hole()
        while self.feeding:
            await self.progress.wait()

    async def truncate(self, size):
        self.raise_if_failed()
        if size >= self.size:
            await self._drain_window()
            if size > self.pos:
                await self._claim_and_send([size - self.pos])
            # data now: the opener's flush commits (cp of an all-hole file)
            self.wrote = True
            return
        raise self.poison(errno.EINVAL, "cannot shrink a streaming upload from %d to "
                                "%d bytes" % (self.size, size))

    # -- ending ---------------------------------------------------------------
    def poison(self, code, reason):
        """A write, truncate or fsync failed: the upload is aborted (the driver
        removes what it wrote), later writes and the close fail with ``code``,
        nothing is published. Returns the FUSEError to raise."""
        err = errors.refuse(code, "write", self.image.path,
                            reason + "; the upload is abandoned and nothing is published",
                            self.store_id)
        if self.errno is None and not self.done.is_set():
            self.errno = code
            self.poisoned = reason
            self._halt(reason)
        return err

    async def commit(self):
        """End the stream and wait until the backend has the image (or failed)."""
        if not self.closing:
            self.raise_if_failed()
            await self._drain_window()
            if self.guard.expected_size is not None and self.guard.expected_size != self.size:
                err = self.poison(
                    errno.EIO, "size mismatch: user.glance.size was set to %d, %d bytes were "
                    "written" % (self.guard.expected_size, self.size))
                await self.done.wait()      # the driver has removed what it wrote
                raise err
            self.closing = True
            self.commit_started = time.monotonic()
            self.pipe.close()
        await self.done.wait()
        self.raise_if_failed()

    async def abandon_if_writer_failed(self, pid):
        """At the opener's flush or release: abandon the upload if the opener
        ``pid`` is being killed or exits non-zero. True if it was abandoned."""
        why = writer_failure(pid)
        if why is None:
            return False
        await self.abandon("its writer " + why)
        return True

    async def abandon(self, reason):
        """The writer is dying: publish nothing, leave a replaced image intact."""
        if self.done.is_set() or self.errno is not None:
            return
        LOG.warning("Upload of %s abandoned, nothing is published: %s", self.image.path,
                    reason)
        self.fs.failures.count(self.store_id, "commit")
        self.errno = errno.EIO
        await self._stop(reason)

    async def abort(self, reason):
        """Unlink or shutdown: stop the upload, publish nothing."""
        if self.done.is_set():
            return
        self.forget_name = False
        await self._stop(reason)

    async def _stop(self, reason):
        self._halt(reason)
        await self.done.wait()

    def _halt(self, reason):
        """End the stream so that the driver's next read raises UploadAborted."""
        self.pipe.aborted = reason
        self.closing = True
        self.window.clear()
        self.pipe.close()


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
            raise self.poison(
                errno.ENOSPC, "write", "the spool is full: %d of %d bytes in use (raise "
                "spool_max_mib or free space in %s)" % (
                    self.fs.spool_used, self.fs.settings.spool_max, self.fs.settings.spool_dir))
        self.fs.spool_used += growth
        self.size = max(self.size, new_size) if growth > 0 else new_size

    def poison(self, code, op, reason):
        """A write, truncate or fsync of the spool failed, or a writer died: the
        spooled image will never be uploaded; writes and closes fail with
        ``code``; the spool is removed at the last close. Returns the FUSEError."""
        err = errors.refuse(code, op, self.image.path,
                            reason + "; the spooled image is discarded, nothing is published",
                            self.store_id)
        if self.poisoned is None:
            self.poisoned = reason
            self.errno = code
        return err

    async def _spool_io(self, op, func, *args):
        try:
            return await self._run(func, *args)
        except OSError as e:
            raise self.poison(e.errno or errno.EIO, op, "the spool file %s: %s"
                              % (self.path, e)) from None

    async def write(self, offset, data):
        self._check_writable()
        end = offset + len(data)
        if end > self.size:
            self._grow(end)
        await self._spool_io("write (spool)", os.pwrite, self.fd, data, offset)
        return len(data)

    async def read(self, offset, length):
        if self.fd is None:
            raise pyfuse3.FUSEError(self.errno or errno.EIO)
        return await self._run(os.pread, self.fd, length, offset)

    async def truncate(self, size):
        self._check_writable()
        if size > self.size:
            self._grow(size)
        else:
            self.fs.spool_used -= self.size - size
            self.size = size
        await self._spool_io("truncate (spool)", os.ftruncate, self.fd, size)

    async def fsync(self):
        self.raise_if_failed()
        await self._spool_io("fsync (spool)", os.fsync, self.fd)

    def _check_writable(self):
        self.raise_if_failed()
        if self.committing:
            raise errors.refuse(errno.EBUSY, "write", self.image.path,
                                "the image is being uploaded", self.store_id)

    def closed_by(self, pid):
        """The flush of one of its handles: a writer that dies poisons the
        image; a poisoned image's close returns the error."""
        why = writer_failure(pid)
        if why is not None and not self.committing:
            self.poison(errno.EIO, "close", "its writer " + why)
        self.raise_if_failed()

    def opened(self):
        self.handles += 1
        if self.commit_scope is not None:
            self.commit_scope.cancel()
            self.commit_scope = None

    def released(self):
        self.handles -= 1
        if self.handles == 0 and not self.committing:
            if self.poisoned is not None:
                self._discard_poisoned()
            else:
                self.fs.spawn(self._commit_later, "upload %s" % self.image.path)

    def _discard_poisoned(self):
        self.committing = True
        LOG.warning("Spooled image %s discarded, nothing was published: %s",
                    self.image.path, self.poisoned)
        self.fs.failures.count(self.store_id, "upload")
        self.fs.stats.count(self.store_id, "failed_uploads")
        self._discard()
        if self.image.session is self:
            self.image.session = None
            self.fs.namespace.drop(self.image)
        self.done.set()

    async def _commit_later(self):
        with trio.CancelScope() as scope:
            self.commit_scope = scope
            await trio.sleep(self.fs.settings.spool_commit_delay)
            self.commit_scope = None
            if self.handles == 0:
                try:
                    await self.commit()
                except pyfuse3.FUSEError:
                    pass  # logged and counted by the session

    async def commit(self):
        """Upload the spool file now (the last close + delay, unmount, or a
        checksum xattr read). Waits for an upload already under way."""
        if self.committing:
            await self.done.wait()
            self.raise_if_failed()
            return
        if self.poisoned is not None:
            self._discard_poisoned()
            self.raise_if_failed()
        self.committing = True
        self.commit_started = time.monotonic()
        if self.commit_scope is not None:
            self.commit_scope.cancel()
        self.fs.uploads.add(self)
        try:
            result = await trio.to_thread.run_sync(self._upload, limiter=self.fs.upload_limiter)
        except Exception as e:
            self._fail(e)
            await self._forget_name()
        else:
            await self._store_late_mtime(result)
            self._finish(result)
        finally:
            self.fs.uploads.discard(self)
            self._discard()
            self.done.set()
        self.raise_if_failed()

    def _upload(self):
        self.guard.check_size(self.size)   # before a byte goes to the store
        with open(self.path, "rb") as f:
            reader = _CountingReader(f, self)
            return self._add(reader, self.size)

    async def abort(self, reason):
        if self.committing:
            await self.done.wait()
            return
        self.committing = True
        self.forget_name = False
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
        self.session._sent(self.session.uploaded_bytes + len(data))
        if not data:    # end of data: check what was announced before publishing
            self.session.guard.check_before_publish(self.session.uploaded_bytes)
        return data

