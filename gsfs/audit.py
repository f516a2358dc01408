"""``gsfs audit``: the images of a mount's stores checked against Glance's catalog.

    gsfs audit MOUNTPOINT [--json] [--verify] [--config-file PATH]...

What it does, in order (``run()``):

1. ``read_mount()``: the daemon's ``user.gsfs.status`` xattr at the mount's
   root (none: not a gsfs mount). It names the stores (their ids are the
   store directories; ``by-name/`` is not one), the config files the daemon
   loaded, and the images being written through the mount right now.
2. ``open_catalog()``: a fresh ``ConfigOpts`` over those config files (or
   ``--config-file``'s, which then replace the daemon's files and directory);
   only ``[gsfs_catalog]`` is read, by gsfs/catalog.py ``from_conf``. Then
   every image record, asked of Glance now (``images(fresh=True)``).
3. Per store (``audit_store()``; Glance's reserved ``os_glance_*`` stores are
   skipped), its directory is listed THROUGH THE MOUNT (os.scandir; stat
   gives size and mtime) and compared with the records:

   orphans     files no record lists in that store (no record with the id,
               or one whose ``stores`` lacks it). Each candidate is asked of
               Glance once more by id (``GET /v2/images/ID`` also finds images
               created since the listing, and hidden ones should a listing
               leave them out); one Glance is still uploading (saving,
               importing, uploading) or copying into that store
               (``os_glance_importing_to_stores``), or one being written
               through the mount, is skipped, not reported.
   missing     records listing the store whose file is not there; asked of
               Glance again and stat'ed again before being reported.
   mismatched  a file whose size differs from the record's ``size`` (always
               checked), or, with ``--verify`` (``verify()``), whose md5
               differs from ``checksum`` or whose ``os_hash_algo`` digest
               differs from ``os_hash_value``: the file is read in full
               through the mount, in 8 MiB chunks. Records not active, or
               with no checksums, are not verified (listed in "skipped").
   unreadable  a file of the store that cannot be stat'ed (EIO, EACCES...: the
               rest of the store is still audited), or with ``--verify`` read.
   checked     how many catalog images present in the store were compared.

   A store directory that cannot be listed (in full) gets an ``error`` (and
   no orphans or missing: nothing is known of it). Catalog records without
   an id are not compared (listed in "skipped").
4. ``Progress``: while ``--verify`` reads, one line on stderr refreshed in
   place with ``\\r`` (images and bytes done of the total, MiB/s, the
   current image); only when stderr is a terminal.
5. The report: ``render_text()`` (per store, then a summary line) or
   ``document()`` (``--json``: {"mountpoint", "stores": {STORE: {"orphans",
   "missing", "mismatched", "unreadable", "checked"[, "error"]}},
   "skipped", "ok"}).

Exit status: 0 nothing wrong, 1 something found, 2 the audit could not be
done (not a gsfs mount, no catalog configured, the catalog unreachable or
refusing, a store directory that cannot be listed, an answer or a state
the audit does not understand: ``gsfs: audit: WHAT FAILED: ERROR; ...``),
with one line on stderr naming the cause and the fix (never a traceback).
"""

import json
import logging
import os
import sys
import time

from gsfs import catalog as catalog_mod
from gsfs import exceptions, hashing
from gsfs.status_view import duration, size

CHUNK = 8 * 1024 * 1024
RESERVED_PREFIX = "os_glance_"
REFRESH = 0.2           # seconds between redraws of the progress line
CLEAR_EOL = "\x1b[K"


class AuditError(Exception):
    """The audit cannot be done; the message names the cause and the fix."""


# -- the mount and the catalog ---------------------------------------------------------------
def read_mount(mountpoint):
    """The daemon's status (a dict), or AuditError if ``mountpoint`` is not a gsfs mount."""
    try:
        raw = os.getxattr(mountpoint, "user.gsfs.status")
    except OSError as e:
        raise AuditError("%s is not a gsfs mount (it has no user.gsfs.status: %s); give the "
                         "mount point of a running `gsfs mount`"
                         % (mountpoint, e.strerror or e)) from None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise AuditError("the status of the gsfs mount at %s is not JSON (%s); is the daemon "
                         "a different gsfs version?" % (mountpoint, e)) from None


def config_source(status, config_files):
    """(files, directory) to read [gsfs_catalog] from: ``--config-file``'s, else the daemon's."""
    if config_files:
        return [os.path.abspath(p) for p in config_files], None
    if "config_files" not in status:
        raise AuditError("the gsfs daemon (pid %s) does not say which config files it loaded "
                         "(it predates gsfs audit); remount it, or give --config-file PATH"
                         % status.get("pid"))
    return list(status["config_files"]), status.get("config_dir")


def open_catalog(files, config_dir):
    """The Catalog of [gsfs_catalog] in ``files`` (and ``config_dir``), or AuditError."""
    from keystoneauth1 import exceptions as ksa
    from oslo_config import cfg

    where = _where(files, config_dir)
    for path in files:
        if not os.path.isfile(path):
            raise AuditError("the config file %s does not exist; give the mount's config with "
                             "--config-file PATH" % path)
    conf = cfg.ConfigOpts()
    try:
        conf(args=[], default_config_files=list(files),
             default_config_dirs=[config_dir] if config_dir else [])
        catalog = catalog_mod.from_conf(conf)
    except (cfg.Error, ksa.ClientException, ValueError) as e:
        raise AuditError("cannot load [gsfs_catalog] from %s: %s; fix the group there, or give "
                         "--config-file PATH" % (where, str(e).replace("\n", " "))) from None
    if catalog is None:
        if not files and not config_dir:
            raise AuditError("no Glance catalog: the mount runs on the embedded default config, "
                             "which has no [gsfs_catalog] group; give --config-file PATH with "
                             "one (auth_type, and endpoint_override or Keystone credentials)")
        raise AuditError("no Glance catalog configured: [gsfs_catalog] in %s sets no auth_type; "
                         "add the group (auth_type = none and endpoint_override = "
                         "http://GLANCE:9292, or Keystone credentials), or give --config-file "
                         "PATH with one" % where)
    return catalog


def _where(files, config_dir):
    names = list(files) + (["%s/*.conf" % config_dir] if config_dir else [])
    return ", ".join(names) or "the embedded default config"


def list_catalog(catalog, where):
    """Every record, asked of Glance now; AuditError when it cannot be."""
    try:
        return catalog.images(fresh=True)
    except catalog_mod.CatalogUnavailable as e:
        raise AuditError("Glance's catalog at %s is unreachable (%s); start Glance, or fix "
                         "[gsfs_catalog] in %s" % (catalog.describe(), e, where)) from None
    except catalog_mod.CatalogRefused as e:
        raise AuditError("Glance's catalog at %s refused to list its images (%s); check the "
                         "credentials and policy of [gsfs_catalog] in %s"
                         % (catalog.describe(), e, where)) from None


def ask_again(catalog, image_id):
    """Glance's record of ``image_id`` now (None: it has none)."""
    try:
        return catalog.image(image_id)
    except catalog_mod.CatalogRefused:      # not an image id Glance accepts
        return None
    except catalog_mod.CatalogUnavailable as e:
        raise AuditError("Glance's catalog at %s stopped answering during the audit (%s); "
                         "run the audit again once it is back" % (catalog.describe(), e)) \
            from None


# -- one store ---------------------------------------------------------------------------------
def scan(store_path):
    """({name: (size, mtime)} of the files in a store directory of the mount,
    {name: error} of its entries that cannot be stat'ed)."""
    files, unreadable = {}, {}
    with os.scandir(store_path) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:       # deleted while listing
                continue
            except OSError as e:            # EIO, EACCES... of this entry: the rest is listed
                unreadable[entry.name] = "stat: %s" % (e.strerror or e)
                continue
            files[entry.name] = (st.st_size, st.st_mtime)
    return files, unreadable


def new_store_result():
    return {"orphans": [], "missing": [], "mismatched": [], "unreadable": [], "checked": 0}


class Audit:
    """The findings of one run; ``stores`` and ``skipped`` become the JSON document."""

    def __init__(self, mountpoint, catalog, records, writing=()):
        self.mountpoint = mountpoint
        self.catalog = catalog
        self.writing = set(writing)     # "STORE/NAME" of images written through the mount
        self.stores = {}
        self.skipped = []
        self.records = {}
        for rec in records:
            if isinstance(rec.get("id"), str) and rec["id"]:
                self.records[rec["id"]] = rec
            else:
                self.skip(None, None, rec.get("name"),
                          "no id in the record: not compared")
        self.why = {}                   # (store, id) → why an orphan is one (text mode)
        self.to_verify = []             # (store, path, size, record)
        self.now = time.time()

    def skip(self, store, image_id, name, reason):
        self.skipped.append({"store": store, "id": image_id, "name": name, "reason": reason})

    def audit_store(self, store):
        result = self.stores[store] = new_store_result()
        store_path = os.path.join(self.mountpoint, store)
        try:
            files, unreadable = scan(store_path)
        except OSError as e:
            result["error"] = "cannot list %s: %s" % (store_path, e.strerror or e)
            return
        for name, error in sorted(unreadable.items()):
            result["unreadable"].append({"id": name,
                                         "name": self.records.get(name, {}).get("name"),
                                         "error": error})
        present = {}                    # id → (size, mtime, record)
        for name, (fsize, mtime) in sorted(files.items()):
            rec = self.records.get(name)
            if rec is None or store not in catalog_mod.stores_of(rec):
                rec = ask_again(self.catalog, name)
                if rec is not None:
                    self.records[name] = rec
            if rec is not None and store in catalog_mod.stores_of(rec):
                present[name] = (fsize, mtime, rec)
                continue
            if "%s/%s" % (store, name) in self.writing:
                self.skip(store, name, None, "being written through the mount")
            elif rec is not None and rec.get("status") in catalog_mod.WRITING:
                self.skip(store, name, rec.get("name"),
                          "Glance is still uploading it (status %s)" % rec["status"])
            elif rec is not None and catalog_mod.being_written(rec, store):
                self.skip(store, name, rec.get("name"), "Glance is copying it into this store")
            else:
                result["orphans"].append({"id": name, "size": fsize,
                                          "age_s": round(self.now - mtime, 1)})
                self.why[(store, name)] = (
                    "no catalog record" if rec is None else
                    "its record lists %s" % (", ".join(catalog_mod.stores_of(rec))
                                             or "no store"))
        for image_id, rec in sorted(self.records.items()):
            if store not in catalog_mod.stores_of(rec) or image_id in files or \
                    image_id in unreadable:
                continue
            rec = ask_again(self.catalog, image_id)
            if rec is None or store not in catalog_mod.stores_of(rec):
                continue                # deleted or moved since the listing
            try:                        # the listing may be a few seconds old
                st = os.stat(os.path.join(store_path, image_id))
                present[image_id] = (st.st_size, st.st_mtime, rec)
            except FileNotFoundError:
                result["missing"].append({"id": image_id, "name": rec.get("name")})
            except OSError as e:
                result["unreadable"].append({"id": image_id, "name": rec.get("name"),
                                             "error": "stat: %s" % (e.strerror or e)})
        for image_id, (fsize, _mtime, rec) in sorted(present.items()):
            result["checked"] += 1
            if rec.get("size") is not None and rec["size"] != fsize:
                result["mismatched"].append({"id": image_id, "name": rec.get("name"),
                                             "what": "size", "catalog": rec["size"],
                                             "found": fsize})
            else:
                self.to_verify.append((store, image_id, fsize, rec))

    # -- --verify ------------------------------------------------------------------------------
    def verifiable(self, store, image_id, rec):
        """{what: (algo, catalog value)} to compare for ``rec``, or None (skipped, said so)."""
        if rec.get("status") != "active":
            self.skip(store, image_id, rec.get("name"),
                      "status %s: checksums not compared" % rec.get("status"))
            return None
        wanted = {}
        if rec.get("checksum"):
            wanted["checksum"] = ("md5", rec["checksum"])
        algo, value = rec.get("os_hash_algo"), rec.get("os_hash_value")
        if algo and value:
            try:
                hashing.validate_algo(algo)
                wanted["os_hash_value"] = (algo, value)
            except exceptions.UnknownHashingAlgo:
                self.skip(store, image_id, rec.get("name"),
                          "os_hash_algo %s is not known here: os_hash_value not compared"
                          % algo)
        if not wanted:
            self.skip(store, image_id, rec.get("name"),
                      "no checksums in the record: not compared")
            return None
        return wanted

    def verify(self, progress):
        """Read every present catalog image through the mount; compare its checksums."""
        jobs = []
        for store, image_id, fsize, rec in self.to_verify:
            wanted = self.verifiable(store, image_id, rec)
            if wanted:
                jobs.append((store, image_id, fsize, rec, wanted))
        progress.begin(len(jobs), sum(job[2] for job in jobs))
        try:
            for store, image_id, _fsize, rec, wanted in jobs:
                progress.image("%s/%s" % (store, image_id))
                path = os.path.join(self.mountpoint, store, image_id)
                result = self.stores[store]
                try:
                    found = digests(path, {algo for algo, _ in wanted.values()}, progress.add)
                except OSError as e:
                    result["unreadable"].append({"id": image_id, "name": rec.get("name"),
                                                 "error": e.strerror or str(e)})
                    continue
                finally:
                    progress.image_done()
                for what, (algo, value) in wanted.items():
                    if found[algo] != value.lower():
                        result["mismatched"].append({"id": image_id, "name": rec.get("name"),
                                                     "what": what, "catalog": value,
                                                     "found": found[algo]})
                        break           # one entry per image: the first that differs
        finally:
            progress.end()

    # -- the result ----------------------------------------------------------------------------
    def problems(self, store):
        r = self.stores[store]
        return len(r["orphans"]) + len(r["missing"]) + len(r["mismatched"]) + \
            len(r["unreadable"])

    @property
    def incomplete(self):
        return [s for s, r in self.stores.items() if "error" in r]

    @property
    def ok(self):
        return not self.incomplete and not any(self.problems(s) for s in self.stores)

    def document(self):
        return {"mountpoint": self.mountpoint, "stores": self.stores,
                "skipped": self.skipped, "ok": self.ok}


def digests(path, algos, add):
    """{algo: hex digest} of the file at ``path``, read in CHUNK-sized reads;
    ``add(n)`` after each read."""
    hashers = {algo: hashing.new_hasher(algo) for algo in algos}
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            for h in hashers.values():
                h.update(view[:n])
            add(n)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


# -- the progress line -----------------------------------------------------------------------
class Progress:
    """One line on ``stream``, redrawn with ``\\r``; silent unless it is a terminal."""

    def __init__(self, stream, clock=time.monotonic):
        self.stream = stream
        self.clock = clock
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.images = self.bytes = self.images_done = self.bytes_done = 0
        self.current = ""
        self.started = self.drawn_at = None

    def begin(self, images, nbytes):
        self.images, self.bytes = images, nbytes
        self.started = self.clock()

    def image(self, label):
        self.current = label
        self.draw(force=True)

    def add(self, n):
        self.bytes_done += n
        self.draw()

    def image_done(self):
        self.images_done += 1

    def line(self):
        elapsed = max(self.clock() - (self.started or self.clock()), 1e-6)
        rate = self.bytes_done / elapsed / (1024 * 1024)
        return "verifying %d/%d images, %s of %s, %.1f MiB/s: %s" % (
            self.images_done, self.images, size(self.bytes_done), size(self.bytes), rate,
            self.current)

    def draw(self, force=False):
        if not self.enabled:
            return
        now = self.clock()
        if not force and self.drawn_at is not None and now - self.drawn_at < REFRESH:
            return
        self.drawn_at = now
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            width = 0
        width = width if width > 0 else 80      # a pty nobody sized says 0
        line = self.line()
        if len(line) > width - 1:
            line = line[:max(width - 4, 20)] + "..."
        self.stream.write("\r" + line + CLEAR_EOL)
        self.stream.flush()

    def end(self):
        if self.enabled and self.drawn_at is not None:
            self.stream.write("\r" + CLEAR_EOL)
            self.stream.flush()


# -- text ----------------------------------------------------------------------------------------
def _short(value, n=16):
    value = str(value)
    return value if len(value) <= n + 3 else value[:n] + "..."


def _name(entry):
    return '"%s"' % entry["name"] if entry.get("name") else "(no name)"


def render_text(audit, verify, catalog_label):
    lines = ["gsfs audit of %s against Glance's catalog at %s (%d images listed)%s"
             % (audit.mountpoint, catalog_label, len(audit.records),
                "" if verify else "; sizes only, --verify also compares checksums")]
    for store, r in audit.stores.items():
        if "error" in r:
            lines.append("%s: NOT AUDITED: %s" % (store, r["error"]))
            continue
        count = audit.problems(store)
        lines.append("%s: %s (%d catalog image%s checked)"
                     % (store, "ok" if not count else "%d problem%s" % (count, _s(count)),
                        r["checked"], _s(r["checked"])))
        for o in r["orphans"]:
            lines.append("  orphan      %s  %s, %s old: %s"
                         % (o["id"], size(o["size"]), duration(o["age_s"]),
                            audit.why.get((store, o["id"]), "not in the catalog")))
        for m in r["missing"]:
            lines.append("  missing     %s  %s: the catalog lists it here; the store has no "
                         "file" % (m["id"], _name(m)))
        for m in r["mismatched"]:
            if m["what"] == "size":
                detail = "size: catalog %s bytes, file %d bytes" % (m["catalog"], m["found"])
            else:
                detail = "%s: catalog %s, read %s" % (m["what"], _short(m["catalog"]),
                                                      _short(m["found"]))
            lines.append("  mismatched  %s  %s: %s" % (m["id"], _name(m), detail))
        for u in r["unreadable"]:
            lines.append("  unreadable  %s  %s: %s" % (u["id"], _name(u), u["error"]))
    if audit.skipped:
        lines.append("skipped (%d):" % len(audit.skipped))
        for s in audit.skipped:
            if s["id"]:
                what = "%s/%s  %s" % (s["store"], s["id"], _name(s))
            else:
                what = s["store"] or "catalog record %s" % _name(s)
            lines.append("  %s: %s" % (what, s["reason"]))
    lines.append(summary(audit))
    return "\n".join(lines) + "\n"


def summary(audit):
    stores = list(audit.stores)
    kinds = {k: sum(len(audit.stores[s].get(k, ())) for s in stores)
             for k in ("orphans", "missing", "mismatched", "unreadable")}
    total = sum(kinds.values())
    checked = sum(r["checked"] for r in audit.stores.values())
    if audit.ok:
        return "summary: ok: %d store%s, %d catalog image%s checked, nothing wrong" % (
            len(stores), _s(len(stores)), checked, _s(checked))
    parts = ["%d %s" % (n, "orphan" if k == "orphans" and n == 1 else k)
             for k, n in kinds.items() if n]
    bad = sum(1 for s in stores if audit.problems(s))
    text = "summary: %d problem%s (%s) in %d of %d store%s" % (
        total, _s(total), ", ".join(parts) or "none found", bad, len(stores), _s(len(stores)))
    if audit.incomplete:
        text += "; not audited: %s" % ", ".join(audit.incomplete)
    return text


def _s(n):
    return "" if n == 1 else "s"


# -- the command ---------------------------------------------------------------------------------
def run(mountpoint, config_files=(), verify=False, progress=None):
    """The audit of ``mountpoint``; (Audit, catalog label). AuditError when it cannot be done,
    also for any other exception (an answer or a state not understood): ``unexpected()``."""
    doing, where = "reading the status of the gsfs mount at %s" % mountpoint, None
    try:
        status = read_mount(mountpoint)
        writing = [u.get("path") for u in status.get("uploads", []) +
                   status.get("pending_spooled", [])]
        stores = sorted(s["id"] for s in status.get("stores", []))
        doing = "loading [gsfs_catalog]"
        files, config_dir = config_source(status, config_files)
        where = _where(files, config_dir)
        catalog = open_catalog(files, config_dir)
        doing = "listing the images of Glance's catalog at %s" % catalog.describe()
        audit = Audit(mountpoint, catalog, list_catalog(catalog, where), writing)
        for store in stores:
            if store.startswith(RESERVED_PREFIX):
                audit.skip(store, None, None, "Glance's reserved store: not audited")
                continue
            doing = "auditing store %s" % store
            audit.audit_store(store)
        if verify:
            doing = "verifying the images' checksums"
            audit.verify(progress or Progress(None))
        return audit, catalog.describe()
    except AuditError:
        raise
    except Exception as e:  # noqa: BLE001 - exit 2 with one line, not 1 with a traceback
        raise AuditError(unexpected(doing, e, where)) from None


def unexpected(doing, e, where=None):
    """The line for an exception the audit does not expect, raised while ``doing``."""
    error = type(e).__name__ + (": %s" % " ".join(str(e).split()) if str(e) else "")
    return ("%s: %s; check that [gsfs_catalog]%s points at Glance's Image API and that the "
            "mount runs this gsfs version; if both do, report this line as a gsfs bug"
            % (doing, error, " in %s" % where if where else ""))


def main(args, out=sys.stdout, err=sys.stderr):
    """``gsfs audit`` (``args`` from the cli's parser). Returns the exit status."""
    # the catalog's own warnings (meant for the daemon's log) would repeat our error line
    quiet = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(quiet)
    try:
        mountpoint = os.path.abspath(args.mountpoint)
        try:
            audit, label = run(mountpoint, args.config_file, args.verify, Progress(err))
        except AuditError as e:
            print("gsfs: audit: %s" % e, file=err)
            return 2
    finally:
        root.removeHandler(quiet)
    try:
        if args.json:
            report = json.dumps(audit.document(), indent=2) + "\n"
        else:
            report = render_text(audit, args.verify, label)
    except Exception as e:  # noqa: BLE001 - as in run()
        print("gsfs: audit: %s" % unexpected("writing the report", e), file=err)
        return 2
    out.write(report)
    out.flush()
    for store in audit.incomplete:
        print("gsfs: audit: store %s was not audited (%s); check it with `gsfs status %s` and "
              "the mount's log, then run the audit again"
              % (store, audit.stores[store]["error"], mountpoint), file=err)
    if audit.incomplete:
        return 2
    return 0 if audit.ok else 1
