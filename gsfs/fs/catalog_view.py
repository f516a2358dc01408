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
* ``links(mounted)``: by-name/'s symlinks, {name: ``../STORE/ID``}, one per
  catalog image with data in a mounted store (the first of its stores that
  is mounted); a name that several images share gets ``.ID`` appended on
  each of them; the catalog unreachable, the last answer stays.
* ``check_rename(d, name, path)``: a rename in a store would leave the
  catalog's location pointing at nothing: refused with EBUSY for a listed
  image (with ``catalog_protect``).
* ``move(src, dst, name, new, path)``: ``mv STORE_A/ID STORE_B/`` of an image
  the catalog lists in STORE_A. Glance copies it (its copy-image import,
  polled until the record lists STORE_B), gsfs reads the new copy in full
  and compares size, md5 and the multihash with the record, and only then
  asks Glance to delete STORE_A's copy (DELETE /v2/stores/STORE_A/ID). Any
  failure before that delete keeps the source and the record as they were
  (a copy that does not verify is deleted through Glance again). Returns
  False for an image the catalog does not list there (the caller answers
  EXDEV and mv copies and unlinks as usual).
* ``verdict(image, checksum, algo, value)``: a full read's checksums compared
  with the record (``user.glance.catalog_verified``: match, mismatch,
  not-read, not-listed, no-checksum, unavailable); a mismatch is logged.

Every catalog call runs in a worker thread (``run``); the data path never
waits for the catalog otherwise.
"""

import collections
import errno
import logging
import os
import time

import trio

from gsfs import catalog as catalog_mod
from gsfs import exceptions, hashing
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
VERIFIED = "user.glance.catalog_verified"
NAMES = tuple(FIELDS) + (STATE, VERIFIED)
MATCH, MISMATCH, NOT_READ, NO_CHECKSUM = "match", "mismatch", "not-read", "no-checksum"
POLL_MAX = 2.0             # seconds between two looks at a copy-image import
START_GRACE = 60.0         # seconds a copy may take to show in the record

LISTED, NOT_LISTED, UNAVAILABLE = "listed", "not-listed", "unavailable"
NAME_MAX = 255


def _link_name(record):
    """A record's name as one path component (its id when it has none)."""
    name = (record.get("name") or "").replace("/", "_").replace("\0", "")
    if name in ("", ".", ".."):
        return record["id"]
    return name


def _fit(name, suffix=""):
    """``name`` + ``suffix`` cut to NAME_MAX bytes (the name is cut, not the suffix)."""
    room = NAME_MAX - len(os.fsencode(suffix))
    raw = os.fsencode(name)
    if len(raw) > room:
        name = raw[:room].decode("utf-8", "ignore")
    return name + suffix


def link_targets(records, mounted):
    """{link name: "../STORE/ID"} for the records with data in a mounted store."""
    chosen = []
    for rec in records:
        stores = [s for s in catalog_mod.stores_of(rec) if s in mounted]
        if stores and rec.get("id"):
            chosen.append((_fit(_link_name(rec)), _link_name(rec), rec["id"], stores[0]))
    # names are counted as shown (cut to NAME_MAX), so two long names that
    # differ only past the cut both get their id
    counts = collections.Counter(shown for shown, _, _, _ in chosen)
    targets = {}
    for shown, name, image_id, store_id in chosen:
        if counts[shown] > 1 and name != image_id:
            shown = _fit(name, "." + image_id)
        targets[shown] = "../%s/%s" % (store_id, image_id)
    return targets


class CatalogView:
    def __init__(self, catalog, run, protect=True):
        self.catalog = catalog
        self.run = run                 # async: run a blocking call in a worker thread
        self.protect = protect
        self._targets = {}             # by-name/'s last answer, kept while Glance is down
        self._linked = None            # the listing _targets were made from
        self.verdicts = {}             # (store, id, size, version) → match / mismatch

    async def links(self, mounted):
        """by-name/'s {name: target} now (the catalog's listing, cached for ttl)."""
        try:
            records = await self.run(self.catalog.images)
        except catalog_mod.CatalogUnavailable:
            return self._targets
        if records is not self._linked:    # a new listing: worked out once
            self._targets = link_targets(records, mounted)
            self._linked = records
        return self._targets

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
        rec = await self._ask(image_id, "unlink", path, store_id)
        if rec is not None and catalog_mod.being_written(rec, store_id):
            raise errors.refuse(errno.EBUSY, "unlink", path,
                                "Glance is writing its image %s (%r) (status %s, importing to "
                                "%s); nothing was deleted: try again when it is done" % (
                                    image_id, rec.get("name"), rec.get("status"),
                                    rec.get("os_glance_importing_to_stores") or "-"),
                                store_id)
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

    # -- a full read's checksums against the record -----------------------------------
    async def verdict(self, image):
        """user.glance.catalog_verified of ``image``."""
        state, rec = await self.record(image.store_dir.store_id, image.name)
        if state != LISTED:
            return state
        if not _has_checksums(rec):
            return NO_CHECKSUM
        key = self._verdict_key(image)
        return self.verdicts.get(key, NOT_READ)

    def _verdict_key(self, image):
        return (image.store_dir.store_id, image.name, image.size, image.version)

    def wants_verdict(self, image):
        """Is a full read of ``image`` worth hashing for the catalog's sake? Asks
        no one: the cached listing decides (no listing yet: yes)."""
        if self._verdict_key(image) in self.verdicts:
            return False
        rec = self.catalog.cached(image.name)
        return rec is not False and (rec is None or image.store_dir.store_id in
                                     catalog_mod.stores_of(rec))

    async def judge(self, image, size, checksum, algo, hash_value):
        """Compare a full read's checksums with the record; remember and log."""
        state, rec = await self.record(image.store_dir.store_id, image.name)
        if state != LISTED or not _has_checksums(rec):
            return
        found = compare(rec, size, checksum, algo, hash_value)
        key, verdict = self._verdict_key(image), MISMATCH if found else MATCH
        if self.verdicts.get(key) == verdict:
            return                     # two reads ended at once: said once
        self.verdicts[key] = verdict
        if found:
            LOG.warning("%s differs from Glance's record of image %s (%r): %s. The data in "
                        "the store is not what Glance recorded: run gsfs audit --verify, and "
                        "restore the image from another copy", image.path, image.name,
                        rec.get("name"), _said(found))
        else:
            LOG.info("%s: a full read matches Glance's checksums", image.path)

    # -- mv between stores ----------------------------------------------------------------
    async def move(self, src, dst, image_id, new, path, busy=None):
        """``busy``: why the image cannot move now (open, being written), or None."""
        if not self.protect:
            return False
        rec = await self._ask(image_id, "rename", path, src.store_id)
        if rec is None or src.store_id not in catalog_mod.stores_of(rec):
            return False
        name = rec.get("name")
        to = dst.store_id

        def refuse(code, why):
            return errors.refuse(code, "rename", path, "Glance's image %s (%r): %s" % (
                image_id, name, why), src.store_id)

        if new != image_id:
            raise refuse(errno.EBUSY, "Glance keeps an image under its id in every store; "
                         "move it as %s/%s (mv %s %s/)" % (to, image_id, path, to))
        if busy:
            raise refuse(errno.EBUSY, "%s; nothing was moved" % busy)
        if rec.get("status") != "active" or catalog_mod.being_written(rec, to):
            raise refuse(errno.EBUSY, "its status is %s (importing to %s); Glance copies "
                         "only active images, one copy at a time" % (
                             rec.get("status"),
                             rec.get("os_glance_importing_to_stores") or "-"))
        if not _has_checksums(rec):
            raise refuse(errno.EBUSY, "Glance's record has no checksum to verify a copy "
                         "against, so the copy in %s is kept; copy it with Glance "
                         "(copy-image) and check it yourself" % src.store_id)
        try:
            hashing.validate_algo(rec.get("os_hash_algo") or "sha512")
        except exceptions.UnknownHashingAlgo:
            raise refuse(errno.EBUSY, "its os_hash_algo %r is not known here, so a copy "
                         "cannot be verified" % rec.get("os_hash_algo")) from None
        copied = False
        if to not in catalog_mod.stores_of(rec):
            if await self._exists(dst, image_id):
                raise refuse(errno.EEXIST, "%s/%s exists and Glance does not list it; "
                             "remove it (or check it with gsfs audit) first" % (to, image_id))
            rec = await self._copy(rec, to, path, src.store_id)
            copied = True
        try:
            found = await self.run(differences, dst.store, image_id, rec)
        except Exception as e:  # noqa: BLE001 - any failure of the read keeps the source
            found = [("read", "the whole image", "%s: %s" % (type(e).__name__, e))]
        if found:
            undo = await self._delete(to, image_id) if copied else ""
            raise refuse(errno.EIO, "the copy in %s does not verify against Glance's record "
                         "(%s); the copy in %s was kept%s" % (to, _said(found), src.store_id,
                                                               undo))
        try:
            await self.run(self.catalog.delete_from_store, src.store_id, image_id)
        except (catalog_mod.CatalogUnavailable, catalog_mod.CatalogRefused) as e:
            raise refuse(errno.EBUSY, "copied to %s and verified, but Glance did not delete "
                         "the copy in %s (%s): the record now lists both stores; rm %s to "
                         "finish the move" % (to, src.store_id, e, path)) from None
        LOG.info("Moved %s to %s through Glance's catalog (image %s, %r): copied by Glance, "
                 "verified in full, then deleted from %s", path, to, image_id, name,
                 src.store_id)
        return True

    async def _ask(self, image_id, op, path, store_id):
        try:
            return await self.run(self.catalog.image, image_id)
        except catalog_mod.CatalogUnavailable as e:
            raise errors.refuse(errno.EAGAIN, op, path,
                                "Glance's catalog cannot be asked whether it uses this image "
                                "(%s); nothing was changed. Try again, or mount with "
                                "-o catalog_protect=off to work without asking Glance" % e,
                                store_id) from None

    async def _exists(self, d, image_id):
        store = d.store
        try:
            await self.run(lambda: store.stat_image(store.location_for(image_id)))
        except exceptions.NotFound:
            return False
        return True

    async def _copy(self, rec, to, path, store_id):
        """Glance's copy-image into ``to``; the record once it lists ``to``."""
        image_id, name = rec["id"], rec.get("name")
        failed_before = to in catalog_mod.listed(rec.get("os_glance_failed_import"))
        try:
            await self.run(self.catalog.copy_image, image_id, to)
        except catalog_mod.CatalogUnavailable as e:
            raise errors.refuse(errno.EAGAIN, "rename", path, "Glance's catalog did not "
                                "answer the copy (%s); nothing was changed" % e,
                                store_id) from None
        except catalog_mod.CatalogRefused as e:
            code = errno.EACCES if e.status in (401, 403) else errno.EBUSY
            raise errors.refuse(code, "rename", path,
                                "Glance refused to copy image %s (%r) to store %s: HTTP %d %s; "
                                "nothing was changed. mv between stores uses Glance's "
                                "copy-image import: it needs copy-image in Glance's "
                                "enabled_import_methods, store %s in Glance's "
                                "enabled_backends, a staging store, and a caller allowed to "
                                "copy (admin by default)" % (image_id, name, to, e.status,
                                                             e.message, to),
                                store_id) from None
        started = time.monotonic()
        wait = 0.2
        while True:
            await trio.sleep(wait)
            wait = min(wait * 2, POLL_MAX)
            elapsed = time.monotonic() - started
            try:
                now = await self.run(self.catalog.image, image_id)
                state = catalog_mod.copy_state(now, to) if now else None
            except catalog_mod.CatalogUnavailable:
                state = catalog_mod.COPYING    # asked again; the deadline still holds
            if state == catalog_mod.COPIED:
                return now
            if state == catalog_mod.COPY_FAILED and failed_before and elapsed < START_GRACE:
                state = catalog_mod.COPY_UNKNOWN   # an earlier failure, not cleared yet
            if state == catalog_mod.COPY_UNKNOWN and elapsed > START_GRACE:
                state = catalog_mod.COPY_FAILED
            if state is None:
                why = "ended: the image was deleted from Glance meanwhile"
            elif state == catalog_mod.COPY_FAILED:
                why = ("failed (see Glance's log: os_glance_failed_import lists the store)")
            elif elapsed > self.catalog.copy_timeout:
                why = "did not finish in %.0f s (catalog_copy_timeout)" % elapsed
            else:
                continue
            raise errors.refuse(errno.EIO, "rename", path,
                                "Glance's copy of image %s (%r) to store %s %s; the copy "
                                "in %s was kept" % (image_id, name, to, why, store_id),
                                store_id)

    async def _delete(self, store_id, image_id):
        try:
            await self.run(self.catalog.delete_from_store, store_id, image_id)
        except (catalog_mod.CatalogUnavailable, catalog_mod.CatalogRefused) as e:
            return "; deleting the bad copy in %s failed too (%s)" % (store_id, e)
        return "; the bad copy in %s was deleted through Glance" % store_id

    async def check_rename(self, store_id, image_id, path, target=None):
        """A rename in one store of ``image_id`` (over ``target``, when it
        replaces one): refused for an image Glance uses here (asked now)."""
        if not self.protect:
            return
        for name, what in ((image_id, "renaming it would leave Glance's location "
                            "pointing at nothing"),
                           (target, "replacing it would change the data under Glance's "
                            "checksums")):
            if name is None:
                continue
            rec = await self._ask(name, "rename", path, store_id)
            if rec is not None and (store_id in catalog_mod.stores_of(rec) or
                                    catalog_mod.being_written(rec, store_id)):
                raise errors.refuse(errno.EBUSY, "rename", path,
                                    "Glance's image %s (%r) is at %s/%s: %s" % (
                                        name, rec.get("name"), store_id, name, what),
                                    store_id)

def differences(store, image_id, record):
    """Read an image in full from ``store`` (blocking) and compare it with the
    catalog's record: a list of (what, catalog's, found), empty when equal."""
    algo = record.get("os_hash_algo") or "sha512"
    hasher, pos = hashing.hash_stored(store, image_id, algo)
    return compare(record, pos, hasher.checksum, algo, hasher.hash_value)


def compare(record, size, checksum, algo, hash_value):
    found = []
    if record.get("size") is not None and record["size"] != size:
        found.append(("size", record["size"], size))
    if record.get("checksum") and checksum and record["checksum"] != checksum:
        found.append(("checksum", record["checksum"], checksum))
    if record.get("os_hash_value") and hash_value and \
            record.get("os_hash_algo") == algo and record["os_hash_value"] != hash_value:
        found.append(("os_hash_value", record["os_hash_value"], hash_value))
    return found


def _has_checksums(record):
    return bool(record.get("checksum") or record.get("os_hash_value"))


def _said(found):
    return "; ".join("%s: Glance has %s, the data gives %s" % f for f in found)
