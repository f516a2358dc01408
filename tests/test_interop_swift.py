"""Interop with the real glance_store 5.7 swift driver, on one glance-api.conf
and one glance-swift.conf, against radosgw's Swift API.

glance_store 5.7 authenticates only with Keystone v3 (it rewrites every
reference's auth_version to 3), radosgw only with Swift v1: the reference
points both libraries at a Keystone v3 stand-in (tests/servers/keystone_standin.py)
that does radosgw's v1 auth and hands back its token and storage URL. So this
also runs gsfs's own Keystone v3 path (keystoneauth1). As in tests/test_interop.py,
both libraries share the global ``cfg.CONF``, glance_store registering first.

Sizes: glance_store's "MB" is 1,024,000 bytes; a glance_store add of known
size at or above the large object size hangs unless the size is a multiple of
the chunk size (its last segment is sent with the whole chunk's length), so
segmented cases use size 0 (unknown) or exact multiples. For the same reason
a short image of declared size is not compared: glance_store waits for the
missing bytes until the request times out (gsfs: "Size mismatch" at once,
tests/test_swift_driver.py).
"""

import hashlib
import io
import os
from types import SimpleNamespace

import glance_store
import pytest
from oslo_config import cfg

from gsfs import multi_backend as gsfs_mb
from gsfs.drivers import swift
from tests.servers import keystone_standin as ks_module
from tests.storeconf import wipe_conf
from tests.test_interop import outcome, reset_libraries

pytestmark = pytest.mark.ceph
keystone_standin = ks_module.keystone_standin        # the fixture

CONF = cfg.CONF
MB = swift.ONE_MB
SIZES = {"small": 12000, "segmented": 3 * MB}

SWIFT_CONF = """\
[DEFAULT]
enabled_backends = fast:file, sw:swift

[glance_store]
default_backend = sw

[fast]
filesystem_store_datadir = {tmp}/fast

[sw]
swift_store_config_file = {tmp}/glance-swift.conf
default_swift_reference = ref1
swift_store_container = {container}
swift_store_large_object_size = 1
swift_store_large_object_chunk_size = 1
gsfs_swift_journal_dir = {tmp}/swift-journal
"""


@pytest.fixture
def both_swift(tmp_path, ceph, swift_container, keystone_standin):
    wipe_conf()
    reset_libraries()
    (tmp_path / "glance-swift.conf").write_text(
        "[ref1]\nuser = %s\nkey = %s\nauth_address = %s\nauth_version = 3\n"
        % (ceph.swift_user, ceph.swift_key, keystone_standin.url))
    ini = tmp_path / "glance-api.conf"
    ini.write_text(SWIFT_CONF.format(tmp=tmp_path, container=swift_container))
    CONF.register_opt(cfg.DictOpt("enabled_backends"))
    CONF(args=[], default_config_files=[str(ini)])
    glance_store.register_store_opts(CONF)
    gs_count = glance_store.create_multi_stores(CONF)
    gsfs_mb.register_store_opts(CONF)
    gsfs_count = gsfs_mb.create_multi_stores(CONF)
    try:
        yield SimpleNamespace(container=swift_container, conn=ceph.swift_connection(),
                              standin=keystone_standin, gs_count=gs_count,
                              gsfs_count=gsfs_count,
                              prefix="swift+config://ref1/%s" % swift_container)
    finally:
        reset_libraries()
        wipe_conf()


def names(env):
    _, listed = env.conn.get_container(env.container, full_listing=True)
    return sorted(o["name"] for o in listed)


def test_both_load_the_same_stores(both_swift):
    assert both_swift.gs_count == both_swift.gsfs_count
    gs = glance_store.get_store_from_store_identifier("sw")
    ours = gsfs_mb.get_store_from_store_identifier("sw")
    assert gs.url_prefix == ours.url_prefix == both_swift.prefix + "/"
    assert sorted(glance_store.get_known_schemes_for_multi_store()) == sorted(
        gsfs_mb.get_known_schemes_for_multi_store())


@pytest.mark.parametrize("kind", list(SIZES))
@pytest.mark.parametrize("declared", ["known", "zero"])
def test_glance_store_writes_gsfs_reads_lists_sizes_deletes(both_swift, kind, declared):
    data = os.urandom(SIZES[kind])
    size = len(data) if declared == "known" else 0
    uri = glance_store.add_with_multihash(CONF, "img-a", io.BytesIO(data), size, "sw",
                                          "sha256")[0]
    assert uri == "%s/img-a" % both_swift.prefix
    got, n = gsfs_mb.get(uri, "sw")
    assert (b"".join(got), n) == (data, len(data))
    got, n = gsfs_mb.get(uri, "sw", offset=MB - 1, chunk_size=3)
    assert (b"".join(got), n) == (data[MB - 1:MB + 2], 3)
    assert gsfs_mb.get_size_from_uri_and_backend(uri, "sw") == len(data)
    store = gsfs_mb.get_store_from_store_identifier("sw")
    # glance_store's segments img-a-00001... are not images; the manifest has their size
    assert [(i.id, i.size) for i in store.list_images()] == [("img-a", len(data))]
    # checksums gsfs adds to a glance_store image keep it readable by glance_store
    store.set_image_meta(store.location_for("img-a"),
                         {"checksum": hashlib.md5(data).hexdigest(), "mtime": "12.5"})
    got, n = glance_store.get(uri, "sw")
    assert (b"".join(got), n) == (data, len(data))
    gsfs_mb.delete(uri, "sw")
    assert names(both_swift) == []
    assert outcome(glance_store.get, uri, "sw")[:2] == ("error", "NotFound")
    assert both_swift.standin.requests["/v3/auth/tokens"] >= 2      # both authenticated


@pytest.mark.parametrize("kind", list(SIZES))
@pytest.mark.parametrize("declared", ["known", "zero"])
def test_gsfs_writes_glance_store_reads_sizes_deletes(both_swift, kind, declared):
    data = os.urandom(SIZES[kind] + 7)       # gsfs's segments need no exact multiple
    size = len(data) if declared == "known" else 0
    uri = gsfs_mb.add_with_multihash(CONF, "img-b", io.BytesIO(data), size, "sw",
                                     "sha512")[0]
    assert uri == "%s/img-b" % both_swift.prefix
    got, n = glance_store.get(uri, "sw")
    assert (b"".join(got), n) == (data, len(data))
    assert glance_store.get_size_from_uri_and_backend(uri, "sw") == len(data)
    glance_store.delete(uri, "sw")
    # glance_store deletes the manifest's segments too: nothing is left
    assert names(both_swift) == []
    assert outcome(gsfs_mb.get, uri, "sw")[:2] == ("error", "NotFound")


@pytest.mark.parametrize("kind", list(SIZES) + ["empty"])
@pytest.mark.parametrize("declared", ["known", "zero"])
def test_add_with_multihash_tuples_are_equal(both_swift, kind, declared):
    data = b"" if kind == "empty" else os.urandom(SIZES[kind])
    size = len(data) if declared == "known" else 0
    results = []
    for lib in (glance_store, gsfs_mb):
        results.append(outcome(lib.add_with_multihash, CONF, "img-c", io.BytesIO(data), size,
                               "sw", "sha256"))
        assert both_swift.conn.get_object(both_swift.container, "img-c")[1] == data
        lib.delete("%s/img-c" % both_swift.prefix, "sw")
        assert names(both_swift) == []
    assert results[0] == results[1]
    assert results[0] == ("ok", ("%s/img-c" % both_swift.prefix, len(data),
                                 hashlib.md5(data).hexdigest(),
                                 hashlib.sha256(data).hexdigest(), {"store": "sw"}))


def test_difference_duplicate(both_swift):
    """glance_store's single PUT overwrites an existing image without a word;
    gsfs refuses with Duplicate and the image stays (compatibility.md)."""
    gsfs_mb.add_with_multihash(CONF, "img-e", io.BytesIO(b"first"), 5, "sw", "sha256")
    assert outcome(gsfs_mb.add_with_multihash, CONF, "img-e", io.BytesIO(b"other"), 5, "sw",
                   "sha256")[:2] == ("error", "Duplicate")
    assert both_swift.conn.get_object(both_swift.container, "img-e")[1] == b"first"
    assert outcome(glance_store.add_with_multihash, CONF, "img-e", io.BytesIO(b"other"), 5,
                   "sw", "sha256")[0] == "ok"
    assert both_swift.conn.get_object(both_swift.container, "img-e")[1] == b"other"
