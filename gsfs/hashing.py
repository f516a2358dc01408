"""Checksums computed while data streams: md5 (Glance's ``checksum``) and the
multihash (``os_hash_algo`` / ``os_hash_value``).

Unlike glance_store, the algorithm is validated before any byte is written:
it must be a name hashlib knows (case-sensitive, as glance_store checks) and
must have a fixed-length digest, which rules out shake_128/shake_256 (glance_store
accepts those, writes the whole image, then fails in hexdigest()).
"""

import hashlib

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


class ImageHasher:
    """md5 + multihash + optional verifier, fed the same chunks in order."""

    def __init__(self, algo="sha512", verifier=None):
        validate_algo(algo)
        self.algo = algo
        self.md5 = new_hasher("md5")
        self.multihash = new_hasher(algo)
        self.verifier = verifier
        self.size = 0
        attach = getattr(verifier, "attach_hasher", None)
        if attach is not None:
            # gsfs's commit guard reads the digests before the image is published
            attach(self)

    def update(self, chunk):
        self.md5.update(chunk)
        self.multihash.update(chunk)
        if self.verifier is not None:
            self.verifier.update(chunk)
        self.size += len(chunk)

    @property
    def checksum(self):
        return self.md5.hexdigest()

    @property
    def hash_value(self):
        return self.multihash.hexdigest()
