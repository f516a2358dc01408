"""Store capabilities: the same bit masks and checks as glance_store.

gsfs adds two bits of its own above glance_store's byte (so they never clash
with a value glance_store code tests for): RENAME_NATIVE (the backend renames
an image in place, atomically) and RENAME_COPY (rename is a server-side copy
followed by a delete; the data does not cross the network again).
"""

import enum
import functools
import logging

from gsfs import exceptions

LOG = logging.getLogger(__name__)


class BitMasks(enum.IntEnum):
    NONE = 0b00000000
    ALL = 0b11111111
    READ_ACCESS = 0b00000001
    READ_OFFSET = 0b00000011
    READ_CHUNK = 0b00000101
    READ_RANDOM = 0b00000111
    WRITE_ACCESS = 0b00001000
    WRITE_OFFSET = 0b00011000
    WRITE_CHUNK = 0b00101000
    WRITE_RANDOM = 0b00111000
    RW_ACCESS = 0b00001001
    RW_OFFSET = 0b00011011
    RW_CHUNK = 0b00101101
    RW_RANDOM = 0b00111111
    DRIVER_REUSABLE = 0b01000000
    # gsfs extensions
    RENAME_NATIVE = 0b1_00000000
    RENAME_COPY = 0b10_00000000


def contains(x, y):
    return x & y == y


class StoreCapability:
    _CAPABILITIES = BitMasks.NONE

    def __init__(self):
        self._capabilities = type(self)._CAPABILITIES

    @property
    def capabilities(self):
        return self._capabilities

    def is_capable(self, *capabilities):
        caps = functools.reduce(lambda a, b: a | b, capabilities, 0)
        return contains(self._capabilities, caps)

    def set_capabilities(self, *capabilities):
        for cap in capabilities:
            self._capabilities |= cap

    def unset_capabilities(self, *capabilities):
        for cap in capabilities:
            self._capabilities &= ~cap

    def update_capabilities(self):
        """Hook for drivers whose capabilities depend on configuration."""


def check(store_op_fun):
    """Refuse get/add/delete the store is not capable of, as glance_store does."""

    @functools.wraps(store_op_fun)
    def op_checker(store, *args, **kwargs):
        get_capabilities = [
            BitMasks.READ_ACCESS,
            BitMasks.READ_OFFSET if kwargs.get("offset") else BitMasks.NONE,
            BitMasks.READ_CHUNK if kwargs.get("chunk_size") else BitMasks.NONE,
        ]
        op_cap_map = {
            "get": get_capabilities,
            "add": [BitMasks.WRITE_ACCESS],
            "delete": [BitMasks.WRITE_ACCESS],
        }
        op_exec_map = {
            "get": (exceptions.StoreRandomGetNotSupported
                    if kwargs.get("offset") or kwargs.get("chunk_size")
                    else exceptions.StoreGetNotSupported),
            "add": exceptions.StoreAddDisabled,
            "delete": exceptions.StoreDeleteNotSupported,
        }
        op = store_op_fun.__name__.lower()
        if not store.is_capable(*op_cap_map[op]):
            details = {"offset": kwargs.get("offset", 0),
                       "chunk_size": kwargs.get("chunk_size")}
            raise op_exec_map[op](**details)
        return store_op_fun(store, *args, **kwargs)

    op_checker.__name__ = "op_checker"
    return op_checker
