"""What the filesystem asks of Glance's catalog (gsfs/catalog.py), when one is configured.

* ``record(image)``: (state, record) of an image: ``listed`` (the catalog has
  a record with this id that lists this store), ``not-listed`` (no record, or
  one without this store), ``unavailable`` (the catalog cannot be asked).
  Used by the ``user.glance.name`` ... ``user.glance.catalog`` xattrs.
* ``unlink(d, name, path)``: with ``catalog_protect`` (on by default), an image
  the catalog lists in this store is deleted through Glance
  (``DELETE /v2/stores/STORE/ID``), so the record loses that location; where
  Glance refuses (the image's last copy, policy) the unlink fails with EBUSY
  or EACCES and nothing is deleted; with the catalog unreachable it fails
  with EAGAIN and nothing is deleted. Returns True if Glance deleted it.
* ``check_rename(d, name, path)``: a rename in a store would leave the
  catalog's location pointing at nothing: refused with EBUSY for a listed
  image (with ``catalog_protect``).

Every catalog call runs in a worker thread (``run``); the data path never
waits for the catalog otherwise.
"""

import errno
import logging

from gsfs import catalog as catalog_mod
from gsfs.fs import errors

LOG = logging.getLogger("gsfs.fs")

# xattr name → field of an image record
FIELDS = {
    "user.glance.name": "name",
    "user.glance.status": "status",
    "user.glance.disk_format": "disk_format",
    "user.glance.container_format": "container_format",
    "user.glance.visibility": "visibility",
    "user.glance.owner": "owner",
}
STATE = "user.glance.catalog"
NAMES = tuple(FIELDS) + (STATE,)

LISTED, NOT_LISTED, UNAVAILABLE = "listed", "not-listed", "unavailable"


class CatalogView:
    def __init__(self, catalog, run, protect=True):
        self.catalog = catalog
        self.run = run                 # async: run a blocking call in a worker thread
        self.protect = protect

    async def record(self, store_id, image_id, fresh=False):
        """(state, record or None) of image ``image_id`` in store ``store_id``."""
        try:
            records = await self.run(self.catalog.by_id, fresh)
        except catalog_mod.CatalogUnavailable:
            return UNAVAILABLE, None
        rec = records.get(image_id)
        if rec is None:
            return NOT_LISTED, None
        return (LISTED if store_id in catalog_mod.stores_of(rec) else NOT_LISTED), rec

    async def unlink(self, store_id, image_id, path):
        if not self.protect:
            return False
        try:
            rec = await self.run(self.catalog.image, image_id)
        except catalog_mod.CatalogUnavailable as e:
            raise errors.refuse(errno.EAGAIN, "unlink", path,
                                "Glance's catalog cannot be asked whether it uses this image "
                                "(%s); nothing was deleted. Try again, or mount with "
                                "-o catalog_protect=off to delete images without asking "
                                "Glance" % e, store_id) from None
        if rec is None or store_id not in catalog_mod.stores_of(rec):
            return False               # Glance does not use this copy
        try:
            await self.run(self.catalog.delete_from_store, store_id, image_id)
        except catalog_mod.CatalogUnavailable as e:
            raise errors.refuse(errno.EAGAIN, "unlink", path,
                                "Glance's catalog did not answer the delete (%s); nothing "
                                "was deleted" % e, store_id) from None
        except catalog_mod.CatalogRefused as e:
            code = errno.EACCES if e.status == 401 else errno.EBUSY
            raise errors.refuse(code, "unlink", path,
                                "Glance refused to delete its image %s (%r) from store %s: "
                                "HTTP %d %s; nothing was deleted (delete the image in Glance, "
                                "or keep this copy)" % (image_id, rec.get("name"), store_id,
                                                        e.status, e.message),
                                store_id) from None
        LOG.info("Deleted %s through Glance's catalog (image %s, %r): its record no longer "
                 "lists store %s", path, image_id, rec.get("name"), store_id)
        return True

    async def check_rename(self, store_id, image_id, path):
        if not self.protect:
            return
        state, rec = await self.record(store_id, image_id, fresh=True)
        if state == UNAVAILABLE:
            raise errors.refuse(errno.EAGAIN, "rename", path,
                                "Glance's catalog cannot be asked whether it uses this image; "
                                "nothing was renamed", store_id)
        if state == LISTED:
            raise errors.refuse(errno.EBUSY, "rename", path,
                                "Glance's image %s (%r) is at this name: renaming it would "
                                "leave Glance's location pointing at nothing" % (
                                    image_id, rec.get("name")), store_id)
