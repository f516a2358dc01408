"""The ``swift`` driver against radosgw's Swift API (the session ``ceph`` fixture).

Configured the real way: a glance-api.conf-style ini plus a glance-swift.conf
(reference ``ref1``, v1 auth as the ``gsfs:swift`` subuser), loaded into
``cfg.CONF`` (tests/storeconf.py), then gsfs.multi_backend as Glance uses it.
Each test gets a fresh container; a plain swiftclient connection
(``ceph.swift_connection()``) checks what is really on the server. No mocks.
"""

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import swiftclient

from gsfs import capabilities, driver, exceptions, location, logsetup, multi_backend
from gsfs.drivers import swift
from tests.storeconf import ini, store_config  # noqa: F401 - the fixture
from tests.verifiers import RefuseToPublish

pytestmark = pytest.mark.ceph

MB = swift.ONE_MB                      # glance_store's swift "MB": 1,024,000 bytes
SMALL = b"hello world!" * 1000         # 12000 bytes
BIG = os.urandom(3 * MB + 12345)       # large_object_size 2: segments of 1 MB


@pytest.fixture
def swiftconf(ceph, swift_container, swift_config_file, store_config, tmp_path):  # noqa: F811
    def load(store_id="sw", **options):
        section = {"swift_store_config_file": swift_config_file,
                   "swift_store_container": swift_container,
                   "swift_store_large_object_size": 2,
                   "swift_store_large_object_chunk_size": 1,
                   "gsfs_swift_journal_dir": tmp_path / "swift-journal"}
        section.update(options)
        return store_config(ini({"DEFAULT": {"enabled_backends": "%s:swift" % store_id},
                                 "glance_store": {"default_backend": store_id},
                                 store_id: section}))
    return load


@pytest.fixture
def sw(ceph, swift_container, swiftconf):
    conf = swiftconf()
    return SimpleNamespace(conf=conf, container=swift_container, conn=ceph.swift_connection(),
                           store=multi_backend.get_store_from_store_identifier("sw"))


def names(sw, container=None):
    _, listed = sw.conn.get_container(container or sw.container, full_listing=True)
    return sorted(o["name"] for o in listed)


def add(sw, image_id, data, size, algo="sha512"):
    return multi_backend.add_with_multihash(sw.conf, image_id, io.BytesIO(data), size, "sw", algo)


def chunks_of(data, size=256 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


# ---------------------------------------------------------------- options and configuration

def test_options_are_glance_store_swift_options():
    from glance_store._drivers.swift import store as glance_swift
    theirs = {o.dest: o for o in glance_swift.Store.OPTIONS}
    ours = {o.dest: o for o in swift.OPTIONS if not o.dest.startswith("gsfs_")}
    assert set(theirs) == set(ours)
    for name, opt in theirs.items():
        assert type(ours[name]) is type(opt), name
        if name != "swift_store_auth_version":     # gsfs also speaks v1 and v2
            assert ours[name].default == opt.default, name
    assert swift.ONE_MB == 1024 * 1000


def test_configured_store(sw, ceph):
    assert sw.store.get_schemes() == ("swift+https", "swift", "swift+http", "swift+config")
    assert sw.store.url_prefix == "swift+config://ref1/%s/" % sw.container
    assert sw.store.is_capable(capabilities.BitMasks.RW_ACCESS)
    assert sw.store.is_capable(capabilities.BitMasks.READ_RANDOM)
    assert sw.store.is_capable(capabilities.BitMasks.RENAME_COPY)
    assert ceph.swift_key not in repr(sw.store._default_reference())


def test_multi_tenant_is_refused_at_load(swiftconf, caplog):
    swiftconf(swift_store_multi_tenant=True)
    with pytest.raises(exceptions.UnknownScheme):
        multi_backend.get_store_from_store_identifier("sw")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("swift_store_multi_tenant" in w and "not available" in w for w in warnings), \
        warnings


def test_missing_reference_disables_add(swiftconf):
    swiftconf(default_swift_reference="nope")
    store = multi_backend.get_store_from_store_identifier("sw")
    assert not store.is_capable(capabilities.BitMasks.WRITE_ACCESS)


def test_legacy_in_group_credentials(ceph, swift_container, store_config):  # noqa: F811
    conf = store_config(ini({
        "DEFAULT": {"enabled_backends": "sw:swift"}, "glance_store": {"default_backend": "sw"},
        "sw": {"swift_store_auth_address": ceph.swift_auth, "swift_store_user": ceph.swift_user,
               "swift_store_key": ceph.swift_key, "swift_store_auth_version": "1",
               "swift_store_container": swift_container}}))
    loc, size, checksum, _ = multi_backend.add(conf, "img", io.BytesIO(SMALL), len(SMALL), "sw")
    # no config file: glance_store's credentialed form, the ':' of tenant:user quoted
    host = ceph.swift_auth[len("http://"):]
    assert loc == "swift+http://gsfs%%3Aswift:%s@%s/%s/img" % (ceph.swift_key, host,
                                                               swift_container)
    data, n = multi_backend.get(loc, "sw")
    assert b"".join(data) == SMALL and n == len(SMALL)
    store = multi_backend.get_store_from_store_identifier("sw")
    safe = store.location_for("img").store_location.safe_uri()
    assert ceph.swift_key not in safe and safe.endswith("/%s/img" % swift_container)
    # what user.glance.location and the commit log line show
    assert location.redact_uri(loc, mask=None) == safe
    assert logsetup.redact("added %s" % loc).count(ceph.swift_key) == 0


def test_missing_container_without_create_on_put(ceph, swiftconf):
    conf = swiftconf(swift_store_container="gsfs-nothere")
    with pytest.raises(exceptions.BackendException) as info:
        multi_backend.add(conf, "img", io.BytesIO(SMALL), len(SMALL), "sw")
    assert "swift_store_create_container_on_put" in str(info.value)
    # the listing says the same (it was empty, so ls showed an empty store)
    store = multi_backend.get_store_from_store_identifier("sw")
    with pytest.raises(exceptions.BackendException) as info:
        store.list_images()
    assert "The container gsfs-nothere does not exist" in str(info.value)


def test_container_created_on_put(ceph, swiftconf):
    conf = swiftconf(swift_store_container="gsfs-created-%d" % os.getpid(),
                     swift_store_create_container_on_put=True)
    # before the first add, the store is empty, not an error
    assert multi_backend.get_store_from_store_identifier("sw").list_images() == []
    try:
        multi_backend.add(conf, "img", io.BytesIO(SMALL), len(SMALL), "sw")
        _, listed = ceph.swift_connection().get_container("gsfs-created-%d" % os.getpid())
        assert [o["name"] for o in listed] == ["img"]
    finally:
        from tests.servers.ceph import purge_bucket
        purge_bucket(ceph.s3_client(), "gsfs-created-%d" % os.getpid())


def test_wrong_key_is_forbidden(ceph, swiftconf, tmp_path):
    bad = tmp_path / "bad-swift.conf"
    bad.write_text("[ref1]\nuser = %s\nkey = wrong\nauth_address = %s\nauth_version = 1\n"
                   % (ceph.swift_user, ceph.swift_auth))
    swiftconf(swift_store_config_file=bad)
    store = multi_backend.get_store_from_store_identifier("sw")
    with pytest.raises(exceptions.Forbidden) as info:
        store.list_images()
    assert "wrong" not in str(info.value)


# ---------------------------------------------------------------- add

def test_add_returns_glance_4_tuple(sw):
    loc, size, checksum, meta = multi_backend.add(sw.conf, "img", io.BytesIO(SMALL),
                                                   len(SMALL), "sw")
    assert loc == "swift+config://ref1/%s/img" % sw.container
    assert (size, checksum, meta) == (len(SMALL), hashlib.md5(SMALL).hexdigest(), {"store": "sw"})
    assert names(sw) == ["img"]                         # one PUT: below the threshold


@pytest.mark.parametrize("data, size, segments", [
    (SMALL, len(SMALL), 0),          # one PUT
    (SMALL, 0, 1),                   # unknown size: segments + manifest, as glance_store
    (BIG, len(BIG), 4),              # at/above large_object_size
    (BIG, 0, 4),
    (b"", 0, 0),                     # empty: a plain empty object
])
def test_add_with_multihash_5_tuple(sw, data, size, segments):
    loc, n, checksum, multihash, meta = add(sw, "img", data, size)
    assert (n, checksum, multihash) == (len(data), hashlib.md5(data).hexdigest(),
                                        hashlib.sha512(data).hexdigest())
    got = [x for x in names(sw) if x.startswith(swift.SEGMENTS_PREFIX)]
    assert len(got) == segments
    head = sw.conn.head_object(sw.container, "img")
    assert int(head["content-length"]) == len(data)
    assert head["x-object-meta-gsfs-checksum"] == checksum
    assert bool(head.get("x-object-manifest")) == bool(segments)
    _, body = sw.conn.get_object(sw.container, "img")
    assert body == data


def test_segments_are_at_most_the_chunk_size(sw):
    add(sw, "img", BIG, 0)
    _, listed = sw.conn.get_container(sw.container, prefix=swift.SEGMENTS_PREFIX)
    sizes = [o["bytes"] for o in listed]
    assert sizes[:-1] == [MB] * (len(sizes) - 1) and sum(sizes) == len(BIG)


def test_add_from_an_iterable_of_chunks(sw):
    store = sw.store
    _, n, checksum, _, _ = store.add("img", chunks_of(BIG, 333333), 0, "sha256")
    assert (n, checksum) == (len(BIG), hashlib.md5(BIG).hexdigest())
    assert b"".join(store.get(store.location_for("img"))[0]) == BIG


def test_duplicate_leaves_the_original(sw):
    add(sw, "img", SMALL, len(SMALL))
    before = names(sw)
    for size in (len(BIG), 0):
        with pytest.raises(exceptions.Duplicate):
            add(sw, "img", BIG, size)
    assert names(sw) == before
    assert sw.conn.get_object(sw.container, "img")[1] == SMALL


@pytest.mark.parametrize("first, second", [(SMALL, BIG), (BIG, SMALL), (BIG, BIG[::-1])])
def test_add_image_replace(sw, first, second):
    store = sw.store
    store.add_image("img", io.BytesIO(first), 0)
    store.add_image("img", io.BytesIO(second), 0, replace=True)
    assert sw.conn.get_object(sw.container, "img")[1] == second
    # the replaced image's segments are gone, the new one's are there
    segs = [x for x in names(sw) if x.startswith(swift.SEGMENTS_PREFIX)]
    assert len(segs) == (0 if len(second) < 1 else -(-len(second) // MB))


def test_checksums_posted_onto_another_writers_object_are_ignored(sw):
    """The race of two hosts on one name: B's PUT lands between A's PUT and
    the POST of A's checksums, so the object holds B's bytes under A's
    checksums. The object's ETag (the md5 of its bytes) tells them apart."""
    store = sw.store
    store.add_image("img", io.BytesIO(SMALL), len(SMALL))      # one whole PUT
    loc = store.location_for("img")
    mine = {k: v for k, v in sw.conn.head_object(sw.container, "img").items()
            if k.startswith("x-object-meta-gsfs-")}
    assert mine["x-object-meta-gsfs-checksum"] == hashlib.md5(SMALL).hexdigest()
    other = SMALL[::-1]
    sw.conn.put_object(sw.container, "img", other)               # host B
    sw.conn.post_object(sw.container, "img", headers=mine)       # host A's late POST
    assert b"".join(store.get(loc)[0]) == other
    meta = store.get_image_meta(loc)
    assert "checksum" not in meta and "os_hash_value" not in meta, meta
    # its own checksums are served again once they are right
    store.set_image_meta(loc, {"checksum": hashlib.md5(other).hexdigest()})
    assert store.get_image_meta(loc)["checksum"] == hashlib.md5(other).hexdigest()


def test_a_refusal_before_publishing_leaves_the_replaced_image(sw):
    """Segmented: refused before the manifest PUT (a whole PUT is refused by
    gsfs's commit guard at end of data, before its last byte is sent)."""
    sw.store.add_image("img", io.BytesIO(SMALL), 0)
    before = names(sw)
    with pytest.raises(RuntimeError, match="refused before publishing"):
        sw.store.add_image("img", io.BytesIO(BIG), 0, verifier=RefuseToPublish(), replace=True)
    assert sw.conn.get_object(sw.container, "img")[1] == SMALL
    assert names(sw) == before


@pytest.mark.parametrize("data, declared", [(SMALL, len(SMALL) - 1), (BIG, len(BIG) - 1),
                                            (BIG, 2 * MB)])
def test_size_exceeds_leaves_nothing(sw, data, declared):
    with pytest.raises(exceptions.Invalid, match="Size exceeds"):
        add(sw, "img", data, declared)
    assert names(sw) == []


@pytest.mark.parametrize("data, declared", [(SMALL, len(SMALL) + 1), (BIG, len(BIG) + 1),
                                            (SMALL, 5 * MB)])
def test_size_mismatch_leaves_nothing(sw, data, declared):
    with pytest.raises(exceptions.Invalid, match="Size mismatch"):
        add(sw, "img", data, declared)
    assert names(sw) == []


def test_source_failure_leaves_nothing(sw):
    def failing():
        yield BIG[:MB + 5]
        yield BIG[MB + 5:2 * MB + 9]
        raise OSError(5, "the source failed")

    with pytest.raises(OSError, match="the source failed"):
        sw.store.add_image("img", failing(), 0)
    assert names(sw) == []


def test_bad_data_types(sw):
    with pytest.raises(exceptions.Invalid):
        sw.store.add_image("img", SMALL, len(SMALL))
    with pytest.raises(exceptions.Invalid):
        sw.store.add_image("img", ["text"], 0)
    assert names(sw) == []


# ---------------------------------------------------------------- get, read, stat, list

@pytest.fixture(params=["whole", "segmented"])
def stored(request, sw):
    size = len(BIG) if request.param == "whole" else 0
    sw.store.large_object_size = 100 * MB if request.param == "whole" else 2 * MB
    add(sw, "img", BIG, size)
    sw.loc = sw.store.location_for("img")
    return sw


def test_get_whole_image(stored):
    data, size = multi_backend.get("swift+config://ref1/%s/img" % stored.container, "sw")
    assert size == len(BIG)
    assert b"".join(data) == BIG


@pytest.mark.parametrize("offset, chunk_size", [
    (0, 10), (MB - 5, 10), (2 * MB - 1, MB + 2), (len(BIG) - 3, None), (5, None)])
def test_get_offset_and_chunk_size(stored, offset, chunk_size):
    data, size = stored.store.get(stored.loc, offset=offset, chunk_size=chunk_size)
    want = BIG[offset:offset + chunk_size] if chunk_size else BIG[offset:]
    assert b"".join(data) == want
    assert size == (chunk_size or len(BIG))


def test_random_reads_across_segments(stored):
    store = stored.store
    rng = __import__("random").Random(7)
    for _ in range(30):
        offset = rng.randrange(len(BIG))
        length = rng.randrange(1, 2 * MB)
        assert store.read(stored.loc, offset, length) == BIG[offset:offset + length]
    assert store.read(stored.loc, len(BIG), 10) == b""
    assert store.read(stored.loc, len(BIG) + 100, 10) == b""
    assert store.read(stored.loc, 0, 0) == b""
    with pytest.raises(exceptions.Invalid):
        store.read(stored.loc, -1, 5)


def test_stat_and_list_images(stored):
    info = stored.store.stat_image(stored.loc)
    assert (info.id, info.size) == ("img", len(BIG))
    listed = list(stored.store.list_images())
    assert [(i.id, i.size) for i in listed] == [("img", len(BIG))]
    assert listed[0].version == info.version
    assert multi_backend.get_size_from_uri_and_backend(
        "swift+config://ref1/%s/img" % stored.container, "sw") == len(BIG)


@pytest.mark.parametrize("call", ["get", "get_size", "delete", "stat", "read", "meta"])
def test_missing_image_is_not_found(sw, call):
    uri = "swift+config://ref1/%s/nothere" % sw.container
    loc = sw.store.location_for("nothere")
    with pytest.raises(exceptions.NotFound):
        if call == "get":
            multi_backend.get(uri, "sw")
        elif call == "get_size":
            multi_backend.get_size_from_uri_and_backend(uri, "sw")
        elif call == "delete":
            multi_backend.delete(uri, "sw")
        elif call == "stat":
            sw.store.stat_image(loc)
        elif call == "read":
            sw.store.read(loc, 0, 10)
        else:
            sw.store.get_image_meta(loc)


def test_listing_pages_and_hides_segments(sw):
    for i in range(1203):       # radosgw pages listings by 1000
        sw.conn.put_object(sw.container, "many-%04d" % i, b"x")
    add(sw, "seg", BIG, 0)
    listed = {i.id: i.size for i in sw.store.list_images()}
    assert len(listed) == 1204 and listed["seg"] == len(BIG)
    assert not any(n.startswith(".gsfs") for n in listed)


def test_images_written_by_glance_store_layout(sw):
    """glance_store's DLO: ID-00001... next to a zero-byte manifest ID; an
    image named ID-2 next to it is another image, not a segment."""
    uid = "6f1e0b52-1c2d-4e3f-9a8b-7c6d5e4f3a2b"
    for n, part in enumerate((BIG[:MB], BIG[MB:2 * MB], BIG[2 * MB:]), 1):
        sw.conn.put_object(sw.container, "%s-%05d" % (uid, n), part)
    sw.conn.put_object(sw.container, uid, b"", headers={
        "X-Object-Manifest": "%s/%s-" % (sw.container, uid)})
    sw.conn.put_object(sw.container, uid + "-2", SMALL)
    sw.conn.put_object(sw.container, "other-00001", SMALL)   # no image "other": an image
    listed = {i.id: i.size for i in sw.store.list_images()}
    assert listed == {uid: len(BIG), uid + "-2": len(SMALL), "other-00001": len(SMALL)}
    loc = sw.store.location_for(uid)
    assert sw.store.read(loc, MB - 2, 4) == BIG[MB - 2:MB + 2]
    # rename copies glance_store's segments under a gsfs prefix: a later image of
    # the old name cannot be taken into the renamed one
    sw.store.rename(loc, "moved")
    assert sw.conn.get_object(sw.container, "moved")[1] == BIG
    assert not any(n.startswith(uid + "-0") for n in names(sw))
    sw.store.delete(sw.store.location_for("moved"))
    assert names(sw) == sorted([uid + "-2", "other-00001"])


def test_delete_of_a_glance_dlo_spares_images_sharing_its_prefix(sw):
    uid = "img"
    sw.conn.put_object(sw.container, uid + "-00001", SMALL)
    sw.conn.put_object(sw.container, uid, b"", headers={
        "X-Object-Manifest": "%s/%s-" % (sw.container, uid)})
    sw.conn.put_object(sw.container, uid + "-copy", b"another image")
    sw.store.delete(sw.store.location_for(uid))
    assert names(sw) == [uid + "-copy"]


# ---------------------------------------------------------------- metadata, rename, delete

def test_image_metadata(sw):
    add(sw, "img", BIG, 0)
    loc = sw.store.location_for("img")
    meta = sw.store.get_image_meta(loc)
    assert meta["checksum"] == hashlib.md5(BIG).hexdigest()
    assert meta["os_hash_value"] == hashlib.sha512(BIG).hexdigest()
    sw.store.set_image_meta(loc, {"mtime": "1700000000.123456789"})
    meta = sw.store.get_image_meta(loc)
    assert meta["mtime"] == "1700000000.123456789"
    assert meta["checksum"] == hashlib.md5(BIG).hexdigest()       # kept by the POST
    head = sw.conn.head_object(sw.container, "img")
    assert head.get("x-object-manifest")                          # still a manifest
    assert sw.conn.get_object(sw.container, "img")[1] == BIG
    listed = list(sw.store.list_images())
    assert listed[0].mtime_ns == 1700000000123456789 and listed[0].size == len(BIG)
    assert sw.store.stat_image(loc).mtime_ns == 1700000000123456789


def test_metadata_of_an_image_written_by_another_client(sw):
    sw.conn.put_object(sw.container, "img", SMALL, headers={"X-Object-Meta-Other": "kept"})
    loc = sw.store.location_for("img")
    assert "checksum" not in sw.store.get_image_meta(loc)
    sw.store.set_image_meta(loc, {"checksum": "c" * 32, "mtime": "5.000000001"})
    head = sw.conn.head_object(sw.container, "img")
    assert head["x-object-meta-other"] == "kept"
    assert head["x-object-meta-gsfs-checksum"] == "c" * 32
    assert sw.store.stat_image(loc).mtime_ns == 5000000001


@pytest.mark.parametrize("data, size", [(SMALL, len(SMALL)), (BIG, 0)])
def test_rename(sw, data, size):
    add(sw, "img", data, size)
    sw.store.set_image_meta(sw.store.location_for("img"), {"mtime": "77.5"})
    before = names(sw)
    new = sw.store.rename(sw.store.location_for("img"), "new")
    assert new == "swift+config://ref1/%s/new" % sw.container
    assert names(sw) == sorted(n if n != "img" else "new" for n in before)
    loc = sw.store.location_for("new")
    assert b"".join(sw.store.get(loc)[0]) == data
    meta = sw.store.get_image_meta(loc)
    assert meta["checksum"] == hashlib.md5(data).hexdigest() and meta["mtime"] == "77.500000000"
    sw.store.delete(loc)
    assert names(sw) == []


def test_rename_onto_existing(sw):
    add(sw, "a", SMALL, 0)
    add(sw, "b", BIG, 0)
    with pytest.raises(exceptions.Duplicate):
        sw.store.rename(sw.store.location_for("a"), "b")
    sw.store.rename(sw.store.location_for("a"), "b", replace=True)
    assert sw.conn.get_object(sw.container, "b")[1] == SMALL
    assert len([n for n in names(sw) if n.startswith(swift.SEGMENTS_PREFIX)]) == 1


def test_delete_removes_manifest_and_segments(sw):
    add(sw, "img", BIG, 0)
    loc, *_ = add(sw, "small", SMALL, len(SMALL))
    multi_backend.delete("swift+config://ref1/%s/img" % sw.container, "sw")
    multi_backend.delete(loc, "sw")
    assert names(sw) == []


# ---------------------------------------------------------------- many containers

def test_multiple_containers_seed(ceph, swift_container, swiftconf):
    conf = swiftconf(swift_store_multiple_containers_seed=3,
                     swift_store_create_container_on_put=True)
    store = multi_backend.get_store_from_store_identifier("sw")
    uid = "3A1b-c2d4-0000-0000-000000000000"
    try:
        loc, *_ = multi_backend.add(conf, uid, io.BytesIO(SMALL), len(SMALL), "sw")
        assert loc == "swift+config://ref1/%s_3a1/%s" % (swift_container, uid)
        assert [i.id for i in store.list_images()] == [uid]
        store.rename(store.location_for(uid), "ffff")
        assert [i.id for i in store.list_images()] == ["ffff"]
        assert ceph.swift_connection().get_object(swift_container + "_fff", "ffff")[1] == SMALL
    finally:
        from tests.servers.ceph import purge_bucket
        for c in (swift_container + "_3a1", swift_container + "_fff"):
            try:
                purge_bucket(ceph.s3_client(), c)
            except Exception:  # noqa: BLE001 - it may not exist
                pass


# ---------------------------------------------------------------- leftovers

UPLOADER = r"""
import io, sys, time
sys.path.insert(0, %(root)r)
from tests.storeconf import load_stores
import pathlib
from gsfs import multi_backend
conf = load_stores(pathlib.Path(%(dir)r), open(%(conf)r).read(), filename="uploader.conf")
store = multi_backend.get_store_from_store_identifier("sw")

def slow():
    yield b"x" * (3 * 1024000)
    print("segments written", flush=True)
    time.sleep(3600)

store.add_image("dying", slow(), 0)
"""


def test_cleanup_removes_only_a_dead_uploaders_segments(sw, swiftconf, tmp_path):
    conf_path = next(tmp_path.glob("glance-api-*.conf"))
    script = UPLOADER % {"root": os.getcwd(), "dir": str(tmp_path), "conf": str(conf_path)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "segments written"
        deadline = time.monotonic() + 20
        while len(names(sw)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        written = names(sw)
        assert len(written) >= 3 and all(n.startswith(swift.SEGMENTS_PREFIX) for n in written)
        assert sw.store.cleanup_leftovers() == []          # its process is alive: kept
        assert names(sw) == written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # a foreign upload in flight (no journal entry): never touched
    sw.conn.put_object(sw.container, swift.SEGMENTS_PREFIX + "other-host/00000001", b"x")
    done = sw.store.cleanup_leftovers()
    assert len(done) == 1 and "dying" in done[0], done
    assert names(sw) == [swift.SEGMENTS_PREFIX + "other-host/00000001"]
    assert sw.store.cleanup_leftovers() == []


# ---------------------------------------------------------------- locations

@pytest.mark.parametrize("uri", [
    "swift+http://acct%3Auser:key@127.0.0.1:8080/auth/1.0/glance/img",
    "swift+https://user:key@auth.example/v3/glance/img",
    "swift://account:user:pass@auth.example/v2.0/c/obj",
])
def test_credentialed_uri_parsing_matches_glance_store(uri):
    from glance_store._drivers.swift import store as glance_swift
    theirs = glance_swift.StoreLocation({}, None)
    theirs.parse_uri(uri)
    ours = swift.StoreLocation({}, None)
    ours.parse_uri(uri)
    assert (ours.scheme, ours.user, ours.key, ours.container, ours.obj) == (
        theirs.scheme, theirs.user, theirs.key, theirs.container, theirs.obj)
    assert ours.auth_url == theirs.swift_url
    assert ours.get_uri() == theirs.get_uri()
    assert "key" not in ours.safe_uri() and "pass" not in ours.safe_uri()


@pytest.mark.parametrize("uri", [
    "swift://user:pass@http://authurl.com/v1/container/obj",
    "swift+http://host/onlyone",
    "s3://host/bucket/key",
])
def test_malformed_uris(uri):
    with pytest.raises(exceptions.BadStoreUri):
        swift.StoreLocation({}, None).parse_uri(uri)


def test_unknown_reference_is_a_bad_uri(sw):
    with pytest.raises(exceptions.BadStoreUri):
        multi_backend.get("swift+config://nope/%s/img" % sw.container, "sw")


def test_longest_id(sw):
    longest = "i" * sw.store.max_id_length
    add(sw, longest, SMALL, 0)
    assert [i.id for i in sw.store.list_images()] == [longest]
    with pytest.raises(exceptions.Invalid):
        add(sw, longest + "i", SMALL, 0)


def test_container_for_matches_glance_store(sw):
    for seed, uid, want in ((0, "abc", "glance"), (3, "3A1b-xx", "glance_3a1"),
                            (3, "3-a1b", "glance_3-a1"), (1, "-abc", "glance_-a")):
        sw.store._opt["swift_store_multiple_containers_seed"] = seed
        sw.store.container = "glance"
        assert sw.store.container_for(uid) == want
    sw.store._opt = None
    assert driver.validate_image_id("ok") == "ok"


def test_error_mapping():
    def client_error(status):
        return swiftclient.ClientException("x", http_status=status, http_reason="R")
    cases = [(404, False, exceptions.NotFound), (401, False, exceptions.Forbidden),
             (403, True, exceptions.StorageWriteDenied), (413, True, exceptions.StorageFull),
             (507, True, exceptions.StorageFull), (412, True, exceptions.Duplicate),
             (503, False, exceptions.RemoteServiceUnavailable),
             (500, False, exceptions.BackendException)]
    for status, write, cls in cases:
        err = swift._swift_error(client_error(status), "op", "c", "o", write)
        assert type(err) is cls, (status, err)
    import requests
    err = swift._swift_error(requests.exceptions.ConnectionError("refused"), "op", "c", "o")
    assert isinstance(err, exceptions.RemoteServiceUnavailable)
