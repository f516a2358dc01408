"""Extended attributes: Glance's image fields, the stores' properties, control.

On an image (read-only, except what a writer announces on a file being written:
the checksums and the size, checked before the image is published):
    user.glance.checksum        md5 hex (Glance's ``checksum``)
    user.glance.os_hash_algo    e.g. sha512
    user.glance.os_hash_value   the multihash hex
    user.glance.size            bytes
    user.glance.store           the store identifier
    user.glance.location        the location URI (never with credentials)
    user.glance.name, .status, .disk_format, .container_format, .visibility,
    .owner, .catalog            with Glance's catalog configured: the image's record
                                (catalog: listed / not-listed / unavailable;
                                gsfs/fs/catalog_view.py); set: accepted and ignored
    user.glance.catalog_verified  a full read's checksums against the record: match,
                                mismatch, not-read, no-checksum (or the .catalog state)
On a store directory: user.glance.store_type, user.glance.store_description,
user.glance.weight, user.gsfs.read_only.
On the root: user.glance.default_backend, and the control channel
user.gsfs.status (JSON), user.gsfs.pid, user.gsfs.control (setxattr: "sync").

security.* and system.* are refused at once (ENOTSUP) without any I/O: gsfs
keeps no security labels, capabilities or ACLs. The kernel asks for
security.capability before every write(2); ls -l asks for security.selinux and
system.posix_acl_access, and remembers ENOTSUP per device (ENODATA it would
ask again for every file: 20,000 requests for a listing of 10,000 images).
"""

import errno
import json
import logging
import os

import pyfuse3

from gsfs import config, location
from gsfs.fs import catalog_view, errors
from gsfs.fs.namespace import ByNameDir, Link, StoreDir

LOG = logging.getLogger("gsfs.fs")

CHECKSUM = "user.glance.checksum"
HASH_ALGO = "user.glance.os_hash_algo"
HASH_VALUE = "user.glance.os_hash_value"
SIZE = "user.glance.size"
STORE = "user.glance.store"
LOCATION = "user.glance.location"
IMAGE_NAMES = (CHECKSUM, HASH_ALGO, HASH_VALUE, SIZE, STORE, LOCATION)
# accepted and ignored on a file being written, so cp -a / mv of an image exit 0
INFORMATIONAL = (HASH_ALGO, STORE, LOCATION)
EXPECTED = {CHECKSUM: "checksum", HASH_VALUE: "os_hash_value"}

DIR_NAMES = ("user.glance.store_type", "user.glance.store_description",
             "user.glance.weight", "user.gsfs.read_only")
ROOT_NAMES = ("user.glance.default_backend", "user.gsfs.status", "user.gsfs.pid")
CONTROL = "user.gsfs.control"


def is_fast_refusal(name):
    """security.* / system.*: ENOTSUP at once (no I/O, no await)."""
    return name.startswith(b"security.") or name.startswith(b"system.")


def names(node, catalog=False):
    """The xattr names of ``node``; an image's include the catalog's (``catalog``:
    Glance's catalog is configured, gsfs/fs/catalog_view.py)."""
    if node is None:
        return ROOT_NAMES
    if isinstance(node, StoreDir):
        return DIR_NAMES
    if isinstance(node, (ByNameDir, Link)):
        return ()
    return IMAGE_NAMES + catalog_view.NAMES if catalog else IMAGE_NAMES


async def get(fs, node, name):
    """The value of xattr ``name`` (str) of ``node`` (None = root)."""
    if node is None:
        return _root_value(fs, name)
    if isinstance(node, StoreDir):
        return _dir_value(node, name)
    if isinstance(node, (ByNameDir, Link)):
        raise pyfuse3.FUSEError(errno.ENODATA)
    return await _image_value(fs, node, name)


def _root_value(fs, name):
    if name == "user.glance.default_backend":
        return config.CONF.glance_store.default_backend or ""
    if name == "user.gsfs.status":
        return json.dumps(fs.status(), sort_keys=True)
    if name == "user.gsfs.pid":
        return str(os.getpid())
    raise pyfuse3.FUSEError(errno.ENODATA)


def _dir_value(d, name):
    store = d.store
    if name == "user.glance.store_type":
        return store.STORE_TYPE
    if name == "user.glance.store_description":
        return store.description or ""
    if name == "user.glance.weight":
        return str(store.weight)
    if name == "user.gsfs.read_only":
        return "1" if d.read_only else "0"
    raise pyfuse3.FUSEError(errno.ENODATA)


async def _image_value(fs, image, name):
    if name in catalog_view.NAMES:
        return await _catalog_value(fs, image, name)
    if name == SIZE:
        return str(image.session.size if image.session else image.size)
    if name == STORE:
        return image.store_dir.store_id
    if name == LOCATION:
        if image.pending:
            raise pyfuse3.FUSEError(errno.ENODATA)
        uri = image.store_dir.store.location_for(image.name).get_store_uri()
        return location.redact_uri(uri, mask=None)
    key = {CHECKSUM: "checksum", HASH_ALGO: "os_hash_algo", HASH_VALUE: "os_hash_value"}.get(name)
    if key is None:
        raise pyfuse3.FUSEError(errno.ENODATA)
    meta = await fs.checksums(image)
    value = meta.get(key)
    if not value:
        raise pyfuse3.FUSEError(errno.ENODATA)
    return value


async def _catalog_value(fs, image, name):
    """user.glance.name ... from Glance's record; user.glance.catalog: listed,
    not-listed or unavailable."""
    if fs.catalog is None:
        raise pyfuse3.FUSEError(errno.ENODATA)
    if name == catalog_view.VERIFIED:
        return await fs.catalog.verdict(image)
    state, record = await fs.catalog.record(image.store_dir.store_id, image.name)
    if name == catalog_view.STATE:
        return state
    value = (record or {}).get(catalog_view.FIELDS[name])
    if value is None or value == "":
        raise pyfuse3.FUSEError(errno.ENODATA)
    return str(value)


def forget_expected(guard, name):
    """removexattr of an announced value on a file being written."""
    if name == SIZE:
        guard.expected_size = None
    elif name in EXPECTED:
        guard.expected.pop(EXPECTED[name], None)


def set_on_image(image, name, value):
    """setxattr on an image. Expected checksums and size are recorded on a
    file being written and checked before commit; informational names are
    accepted and ignored; anything else is refused with ENOTSUP."""
    if name == SIZE:
        try:
            want = int(value.strip())
        except ValueError:
            raise errors.refuse(errno.EINVAL, "setxattr", image.path, "%s must be a number "
                                "of bytes, not %r" % (name, value),
                                image.store_dir.store_id) from None
        if image.session is not None:
            image.session.guard.expected_size = want
            return
        if want == image.size:
            return
        raise errors.refuse(errno.EEXIST, "setxattr", image.path, "%s of a committed image "
                            "cannot change (it is %d)" % (name, image.size),
                            image.store_dir.store_id)
    if name in EXPECTED:
        key = EXPECTED[name]
        want = value.strip().lower()
        if image.session is not None:
            image.session.guard.expected[key] = want
            return
        current = (image.meta or {}).get(key)
        if current == want:
            return
        raise errors.refuse(errno.EEXIST if current else errno.EACCES, "setxattr", image.path,
                            "%s of a committed image cannot change (it is %s)"
                            % (name, current or "not known yet"), image.store_dir.store_id)
    if name in INFORMATIONAL or name in catalog_view.NAMES:
        return
    raise errors.refuse(errno.ENOTSUP, "setxattr", image.path,
                        "gsfs stores only the user.glance.* checksum attributes",
                        image.store_dir.store_id, level=logging.DEBUG)

