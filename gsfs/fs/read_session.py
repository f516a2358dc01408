"""Reading an image: ranged ``store.read()`` calls with readahead.

Each open-for-read has a ReadSession holding at most two blocks: the one being
served and one fetched ahead in the background when reads are sequential. A
sequential block is ``readahead_mib`` (default 8 MiB), a random read fetches
1 MiB around what was asked, so memory per open file is at most
2 × readahead_mib. Any offset works on every driver (file: pread, s3: ranged
GET, rbd: read at the snapshot, http: Range).

While a read stream passes the whole image in order from byte 0, the blocks
are hashed (md5 + the mount's hash_algo) in the fetching thread; at the end
the checksums are stored with the image (driver metadata), so an image gsfs
did not write gets its checksums from the first full read.
"""

import logging

import trio

from gsfs import hashing

LOG = logging.getLogger("gsfs.fs")
RANDOM_BLOCK = 1024 * 1024


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
        return self.start + len(self.data)

    def covers(self, pos):
        if not self.ready.is_set():
            return self.start <= pos < self.start + self.want
        return self.error is None and self.start <= pos < self.end


class ReadSession:
    def __init__(self, fs, image):
        self.fs = fs
        self.image = image
        self.store = image.store_dir.store
        self.location = self.store.location_for(image.name)
        self.size = image.size
        self.readahead = max(fs.settings.readahead, RANDOM_BLOCK)
        self.current = None
        self.ahead = None
        self.last_end = 0
        self.hasher = None
        self.hash_pos = 0
        need_hash = not (image.meta or {}).get("checksum")
        if need_hash:
            self.hasher = hashing.ImageHasher(fs.settings.hash_algo)
        self.bytes_out = 0
        fs.downloads.add(self)

    def status(self):
        return {"path": self.image.path, "bytes": self.bytes_out, "size": self.size}

    def _fetch_sync(self, start, length):
        data = self.store.read(self.location, start, length)
        if self.hasher is not None and start == self.hash_pos and data:
            self.hasher.update(data)
            self.hash_pos += len(data)
        return data

    async def _fetch(self, block):
        try:
            block.data = await trio.to_thread.run_sync(
                self._fetch_sync, block.start, block.want, limiter=self.fs.namespace.limiter)
        except Exception as e:
            block.error = e
        finally:
            block.ready.set()

    async def _block_at(self, pos, sequential):
        for block in (self.current, self.ahead):
            if block is not None and block.covers(pos):
                await block.ready.wait()
                if block is self.ahead:
                    self.current, self.ahead = self.ahead, None
                return block
        length = self.readahead if sequential else RANDOM_BLOCK
        block = _Block(pos, min(length, self.size - pos))
        self.current = block
        await self._fetch(block)
        return block

    async def read(self, offset, length):
        if offset >= self.size or length <= 0:
            return b""
        end = min(offset + length, self.size)
        sequential = offset == self.last_end
        parts = []
        pos = offset
        while pos < end:
            block = await self._block_at(pos, sequential)
            if block.error is not None:
                error, block.error = block.error, None
                if block is self.current:
                    self.current = None
                raise error
            piece = block.data[pos - block.start:end - block.start]
            if not piece:
                break
            parts.append(piece)
            pos += len(piece)
        self.last_end = pos
        if sequential and self.current is not None and self.ahead is None \
                and self.current.end < self.size:
            start = self.current.end
            self.ahead = _Block(start, min(self.readahead, self.size - start))
            self.fs.spawn(self._fetch, "readahead %s" % self.image.path, self.ahead)
        data = b"".join(parts)
        self.bytes_out += len(data)
        if self.hasher is not None and self.hash_pos >= self.size:
            await self._store_checksums()
        return data

    async def _store_checksums(self):
        hasher, self.hasher = self.hasher, None
        await self.fs.remember_checksums(self.image, hasher.checksum, hasher.algo,
                                         hasher.hash_value)

    def close(self):
        self.current = self.ahead = None
        self.fs.downloads.discard(self)
