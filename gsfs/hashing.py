"""Checksums computed while data streams: md5 (Glance's ``checksum``) and the
multihash (``os_hash_algo`` / ``os_hash_value``).

Unlike glance_store, the algorithm is validated before any byte is written:
it must be a name hashlib knows (case-sensitive, as glance_store checks) and
must have a fixed-length digest, which rules out shake_128/shake_256 (glance_store
accepts those, writes the whole image, then fails in hexdigest()).
"""

import hashlib
import queue
import threading
import weakref

from gsfs import exceptions


def validate_algo(algo):
    """Raise UnknownHashingAlgo unless ``algo`` can produce a hex digest."""
    if not isinstance(algo, str) or algo not in hashlib.algorithms_available:
        raise exceptions.UnknownHashingAlgo(algo=algo)
    try:
        hasher = hashlib.new(algo)
    except (ValueError, TypeError):
        raise exceptions.UnknownHashingAlgo(algo=algo) from None
    if getattr(hasher, "digest_size", 0) == 0 or algo.startswith("shake"):
        raise exceptions.UnknownHashingAlgo(algo=algo)


def new_hasher(algo):
    if algo == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(algo, usedforsecurity=False)


# Chunks at least this big are hashed in the two hash threads; smaller ones
# inline (a thread hand-off costs more than hashing a few KiB).
THREAD_MIN_CHUNK = 64 * 1024
# Chunks queued per hash thread before update() waits: with 1 MiB chunks, the
# memory a hasher pins is at most 2 × QUEUE_CHUNKS MiB (docs/memory.md).
QUEUE_CHUNKS = 4


class _HashThread:
    """One hash object fed in order by its own thread. hashlib releases the
    GIL while it hashes a buffer larger than 2 KiB, so md5 and the multihash
    run side by side on two cores, and beside the driver's own writes."""

    def __init__(self, hasher, name):
        self.hasher = hasher
        self.queue = queue.Queue(QUEUE_CHUNKS)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            self.hasher.update(chunk)

    def put(self, chunk):
        self.queue.put(chunk)

    def finish(self):
        self.queue.put(None)
        self.thread.join()


def _stop_threads(threads):
    for t in threads:
        t.queue.put(None)


class ImageHasher:
    """md5 + multihash + optional verifier, fed the same chunks in order.

    Large chunks are hashed by two threads (one per digest), so that the
    bound of a copy is the slower hash, not the sum of both; ``update``
    returns once the chunk is queued. Reading ``checksum`` or ``hash_value``
    waits for both threads. A chunk the caller may change afterwards (a
    bytearray, a writable memoryview) is copied before it is queued.
    """

    def __init__(self, algo="sha512", verifier=None):
        validate_algo(algo)
        self.algo = algo
        self.md5 = new_hasher("md5")
        self.multihash = new_hasher(algo)
        self.verifier = verifier
        self.size = 0
        self._threads = None
        attach = getattr(verifier, "attach_hasher", None)
        if attach is not None:
            # gsfs's commit guard reads the digests before the image is published
            attach(self)

    def update(self, chunk):
        n = len(chunk)
        if n >= THREAD_MIN_CHUNK:
            if not _immutable(chunk):
                chunk = bytes(chunk)
            if self._threads is None:
                self._threads = (_HashThread(self.md5, "gsfs-md5"),
                                 _HashThread(self.multihash, "gsfs-" + self.algo))
                # an abandoned hasher (a failed upload) ends its threads too
                weakref.finalize(self, _stop_threads, self._threads)
            for t in self._threads:
                t.put(chunk)
        else:
            self._wait()
            self.md5.update(chunk)
            self.multihash.update(chunk)
        if self.verifier is not None:
            self.verifier.update(chunk)
        self.size += n

    def before_publish(self):
        """Drivers call this right before they publish the image (link or
        rename, CompleteMultipartUpload, the manifest PUT, the rbd rename): the
        verifier's last word (gsfs's CommitGuard asks the writer's fate); what
        it raises makes the add clean up like any failure."""
        check = getattr(self.verifier, "before_publish", None)
        if check is not None:
            check()

    def _wait(self):
        """Let the hash threads finish what they were given (they end)."""
        threads, self._threads = self._threads, None
        for t in threads or ():
            t.finish()

    @property
    def checksum(self):
        self._wait()
        return self.md5.hexdigest()

    @property
    def hash_value(self):
        self._wait()
        return self.multihash.hexdigest()


def _immutable(chunk):
    if isinstance(chunk, bytes):
        return True
    return isinstance(chunk, memoryview) and chunk.readonly and isinstance(chunk.obj, bytes)


def hash_stored(store, image_id, algo, chunk=8 * 1024 * 1024):
    """Read image ``image_id`` of ``store`` in full (blocking, ``chunk`` bytes at
    a time) and hash it: (ImageHasher, bytes read)."""
    hasher = ImageHasher(algo)
    loc = store.location_for(image_id)
    pos, size = 0, store.stat_image(loc).size
    while pos < size:
        data = store.read(loc, pos, min(chunk, size - pos))
        if not data:
            break
        hasher.update(data)
        pos += len(data)
    return hasher, pos
