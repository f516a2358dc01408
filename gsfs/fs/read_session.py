"""Reading an image: ranged ``store.read()`` calls, prefetched in parallel.

Each open-for-read has a ReadSession with a prefetch window: a run of blocks
ahead of the reader, fetched in worker threads at the same time (mountpoint-s3's
prefetcher is the model). A read that is not where the last one ended (a
random read) drops the window and fetches one 1 MiB block at that offset.
While reads go on in order, the window fills up again, each new block twice
as large as the one before (1, 2, 4, then 8 MiB), up to ``readahead_mib``
bytes in all (default 32 MiB: four 8 MiB ranged reads in flight). So the
memory of an open file is at most ``readahead_mib`` plus the block the
request being served lies in (a reply is a view of its block, not a copy),
whatever the image size. The windows draw on the daemon's memory budget
(gsfs/budget.py) with the uploads: a block a read needs is always fetched,
the blocks ahead of the reader only while the budget has room. Any offset
works on every driver (file: pread, s3: ranged GET, rbd: read at the
snapshot, http: Range).

While the whole image is fetched in order from byte 0, the blocks are hashed
(md5 + the mount's hash_algo) in order by whichever fetch thread completes
the run; at the end the checksums are stored with the image (driver
metadata), so an image gsfs did not write gets its checksums from the first
full read. With Glance's catalog configured, a full read of an image the
catalog lists is hashed even when checksums are stored, and compared with
the record in the background (CatalogView.judge: user.glance.catalog_verified).
"""

import collections
import logging
import threading

import trio

from gsfs import hashing
from gsfs.budget import BUDGET

LOG = logging.getLogger("gsfs.fs")
RANDOM_BLOCK = 1024 * 1024          # a read out of order fetches this much
FIRST_BLOCK = 1024 * 1024           # the first block of a sequential window
MAX_BLOCK = 8 * 1024 * 1024         # blocks grow up to this


def _slice(data, start, stop):
    """data[start:stop] without copying it: pyfuse3 replies from any buffer.
    Copying each 1 MiB reply out of its block cost the trio thread 0.15-0.2
    of its 0.45 user CPU-s per GiB read (s3 copy-out, three interleaved pairs)."""
    if start == 0 and stop >= len(data):
        return data
    return memoryview(data)[start:stop]


class _Block:
    __slots__ = ("start", "want", "data", "ready", "error")

    def __init__(self, start, want):
        self.start = start
        self.want = want
        self.data = b""
        self.ready = trio.Event()
        self.error = None

    @property
    def end(self):
        return self.start + self.want

    def covers(self, pos):
        return self.start <= pos < self.start + self.want


class ReadSession:
    def __init__(self, fs, image):
        self.fs = fs
        self.image = image
        self.store = image.store_dir.store
        self.location = self.store.location_for(image.name)
        self.size = image.size
        self.window_limit = max(fs.settings.readahead, RANDOM_BLOCK)
        self.window = collections.deque()   # blocks in file order, contiguous
        self.next_start = 0                 # where the window's next block starts
        self.block_size = FIRST_BLOCK
        self.last_end = 0
        self.hasher = None
        self.hash_pos = 0
        self.hash_lock = threading.Lock()
        self.unhashed = {}                  # start → data fetched ahead of hash_pos
        if not (image.meta or {}).get("checksum") or (
                fs.catalog is not None and fs.catalog.wants_verdict(image)):
            self.hasher = hashing.ImageHasher(fs.settings.hash_algo)
        self.bytes_out = 0
        fs.downloads.add(self)

    def status(self):
        return {"path": self.image.path, "bytes": self.bytes_out, "size": self.size,
                "window": sum(b.want for b in self.window)}

    # -- fetching (worker threads) -----------------------------------------------
    def _fetch_sync(self, block):
        data = self.store.read(self.location, block.start, block.want)
        if self.hasher is not None and data:
            self._hash_in_order(block.start, data)
        return data

    def _hash_in_order(self, start, data):
        """Hash the bytes from hash_pos on, in order; blocks that arrive ahead
        wait (within the window) for the ones before them."""
        with self.hash_lock:
            hasher = self.hasher
            if hasher is None or start < self.hash_pos or \
                    start > self.hash_pos + self.window_limit:
                return      # not part of a read in order from byte 0
            self.unhashed[start] = data
            while self.hash_pos in self.unhashed:
                chunk = self.unhashed.pop(self.hash_pos)
                hasher.update(chunk)
                self.hash_pos += len(chunk)

    async def _fetch(self, block):
        try:
            block.data = await trio.to_thread.run_sync(
                self._fetch_sync, block, limiter=self.fs.namespace.limiter)
        except Exception as e:  # noqa: BLE001 - raised to the reader that needs it
            block.error = e
        finally:
            block.ready.set()

    def _append(self, size, needed=True):
        """Fetch the block at next_start. Its bytes are drawn from the daemon's
        budget: always for a block the reader needs (or the window's only
        one), only if they fit for one ahead of it (then None)."""
        want = min(size, self.size - self.next_start)
        if needed:
            BUDGET.force(want)
        elif not BUDGET.try_draw(want):
            return None
        block = _Block(self.next_start, want)
        self.window.append(block)
        self.next_start = block.end
        self.fs.spawn(self._fetch, "read %s" % self.image.path, block)
        return block

    def _fill(self):
        """Keep up to ``window_limit`` bytes fetched or in flight ahead of the
        reader, as far as the daemon's budget has room."""
        held = sum(b.want for b in self.window)
        while self.next_start < self.size and held + self.block_size <= self.window_limit:
            block = self._append(self.block_size, needed=not self.window)
            if block is None:       # the daemon's budget is spent: try at the next read
                return
            held += block.want
            self.block_size = min(self.block_size * 2, MAX_BLOCK)

    def _drop_window(self, upto=None):
        """Forget the window's blocks that end at or before ``upto`` (all of
        them: None) and give their bytes back to the budget."""
        freed = 0
        while self.window and (upto is None or self.window[0].end <= upto):
            freed += self.window.popleft().want
        BUDGET.give(freed)

    def _restart_at(self, offset):
        """A read outside the window: forget it (fetches in flight finish into
        blocks nobody holds) and start again at ``offset``."""
        self._drop_window()
        self.next_start = offset
        self.block_size = FIRST_BLOCK

    # -- serving (trio) -------------------------------------------------------------
    async def read(self, offset, length):
        if offset >= self.size or length <= 0:
            return b""
        end = min(offset + length, self.size)
        # in the window, or right after it: the reader goes on in order (the
        # kernel's readahead sends several such reads at once); anywhere else
        # is a random read
        in_order = offset == self.next_start or bool(
            self.window and self.window[0].start <= offset < self.next_start)
        if not in_order:
            self._restart_at(offset)
        parts = []
        pos = offset
        while pos < end:
            block = next((b for b in self.window if b.covers(pos)), None)
            if block is None:
                if pos == self.next_start:
                    block = self._append(self.block_size if in_order else RANDOM_BLOCK)
                else:   # dropped meanwhile by a read further on: fetch it alone
                    block = _Block(pos, min(RANDOM_BLOCK, self.size - pos))
                    await self._fetch(block)
            await block.ready.wait()
            if block.error is not None:
                error = block.error
                self._restart_at(pos)
                raise error
            piece = _slice(block.data, pos - block.start, end - block.start)
            if not piece:
                break
            parts.append(piece)
            pos += len(piece)
        self.last_end = pos
        self._drop_window(pos)
        if in_order:
            self._fill()
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.bytes_out += len(data)
        if self.hasher is not None and self.hash_pos >= self.size:
            await self._store_checksums()
        return data

    async def _store_checksums(self):
        with self.hash_lock:
            hasher, self.hasher = self.hasher, None
        if hasher is None:
            return
        checksum, hash_value = await trio.to_thread.run_sync(
            lambda: (hasher.checksum, hasher.hash_value), limiter=self.fs.namespace.limiter)
        if not (self.image.meta or {}).get("checksum"):
            await self.fs.remember_checksums(self.image, checksum, hasher.algo, hash_value)
        elif self.fs.catalog is not None:
            self.fs.spawn(self.fs.catalog.judge, "catalog verify", self.image, self.hash_pos,
                          checksum, hasher.algo, hash_value)

    def close(self):
        self._drop_window()
        self.unhashed.clear()
        self.fs.downloads.discard(self)
