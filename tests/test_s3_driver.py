"""The ``s3`` driver against a real radosgw (the session ``ceph`` fixture).

Configured the real way: a glance-api.conf-style ini file loaded into
``cfg.CONF`` (tests/storeconf.py), then gsfs.multi_backend as Glance uses it.
Each test gets a fresh bucket (``s3_bucket``); a plain boto3 client
(``ceph.s3_client()``) checks what is really on the server. No mocks.
"""

import concurrent.futures
import hashlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import botocore.exceptions
import pytest
from glance_store._drivers import s3 as glance_s3
from oslo_config import cfg

from gsfs import (
    backend,
    capabilities,
    driver,
    exceptions,
    journal,
    location,
    multi_backend,
    process,
)
from gsfs.drivers import s3
from tests.servers.ceph import purge_bucket
from tests.storeconf import ini, load_stores, store_config  # noqa: F401 - the fixture
from tests.verifiers import RefuseToPublish

pytestmark = pytest.mark.ceph

MiB = 1024 * 1024
SMALL = b"hello world!" * 1000                       # 12000 bytes
BIG = os.urandom(12 * MiB + 7)                        # 3 parts of 5 MiB
MD5_EMPTY = "d41d8cd98f00b204e9800998ecf8427e"
NOT_THERE_MSG = ("The bucket %s does not exist in S3. Please set the "
                 "s3_store_create_bucket_on_put option to add bucket to S3 automatically.")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunks_of(data, size=1 * MiB):
    for i in range(0, len(data), size):
        yield data[i:i + size]


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def s3conf(ceph, s3_bucket, store_config, tmp_path):  # noqa: F811
    """Loader: configure store ``cloud`` (s3 on radosgw) from a glance-api.conf
    (the upload journal in tmp_path)."""

    def load(store_id="cloud", defaults=None, **options):
        section = {
            "store_description": "radosgw",
            "s3_store_host": ceph.rgw_endpoint,
            "s3_store_access_key": ceph.access_key,
            "s3_store_secret_key": ceph.secret_key,
            "s3_store_bucket": s3_bucket,
            "s3_store_bucket_url_format": "path",
            "s3_store_large_object_size": 5,
            "s3_store_large_object_chunk_size": 5,
            "s3_store_thread_pools": 3,
            "gsfs_s3_journal_dir": str(tmp_path / "s3-journal"),
        }
        section.update(options)
        sections = {
            "DEFAULT": {"enabled_backends": "%s:s3" % store_id},
            "glance_store": {"default_backend": store_id},
            store_id: section,
        }
        if defaults:
            sections["backend_defaults"] = defaults
        return store_config(ini(sections))

    return load


@pytest.fixture
def cloud(ceph, s3_bucket, s3conf):
    conf = s3conf()
    return SimpleNamespace(
        conf=conf, bucket=s3_bucket, client=ceph.s3_client(),
        store=multi_backend.get_store_from_store_identifier("cloud"),
        prefix="s3://%s/%s" % (ceph.rgw_endpoint[len("http://"):], s3_bucket))


def head(cloud, key):
    try:
        return cloud.client.head_object(Bucket=cloud.bucket, Key=key)
    except botocore.exceptions.ClientError as e:
        if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return None
        raise


def body(cloud, key):
    return cloud.client.get_object(Bucket=cloud.bucket, Key=key)["Body"].read()


def uploads(cloud, bucket=None):
    return cloud.client.list_multipart_uploads(Bucket=bucket or cloud.bucket).get("Uploads", [])


def add(cloud, image_id, data, size, algo="sha512"):
    return multi_backend.add_with_multihash(cloud.conf, image_id, data, size, "cloud", algo)


# ---------------------------------------------------------------- options, configuration

def test_options_are_glance_store_s3_options():
    ours = {o.name: o for o in s3.Store.OPTIONS if not o.name.startswith("gsfs_")}
    theirs = {o.name: o for o in glance_s3._S3_OPTS}
    assert list(ours) == list(theirs)
    assert [o.name for o in s3.Store.OPTIONS if o.name.startswith("gsfs_")] == [
        "gsfs_s3_journal_dir", "gsfs_s3_leftover_age_hours"]
    for name, opt in theirs.items():
        mine = ours[name]
        assert type(mine) is type(opt), name
        assert mine.default == opt.default, name
        assert mine.secret == opt.secret, name
        assert getattr(mine.type, "min", None) == getattr(opt.type, "min", None), name
        assert getattr(mine.type, "max", None) == getattr(opt.type, "max", None), name
        assert getattr(mine.type, "choices", None) == getattr(opt.type, "choices", None), name


def test_configured_store(cloud):
    store = cloud.store
    assert load_stores.last_count == 3                    # s3, s3+http, s3+https
    assert store.url_prefix == cloud.prefix
    assert "@" not in store.url_prefix
    for cap in (capabilities.BitMasks.RW_ACCESS, capabilities.BitMasks.READ_RANDOM,
                capabilities.BitMasks.DRIVER_REUSABLE, capabilities.BitMasks.RENAME_COPY):
        assert store.is_capable(cap)
    assert store.description == "radosgw"
    assert store.max_id_length == 974                     # see test_longest_id_fits_every_key
    assert store.capacity() is None
    assert set(multi_backend.get_known_schemes_for_multi_store()) == {"s3", "s3+http", "s3+https"}
    # reusable: one instance and one client
    assert multi_backend.get_store_from_store_identifier("cloud") is store
    add(cloud, "one", io.BytesIO(b"x"), 1)
    client = store._client
    add(cloud, "two", io.BytesIO(b"y"), 1)
    assert store._client is client


def test_https_host_gives_s3_https_prefix(s3conf, s3_bucket):
    s3conf(s3_store_host="https://127.0.0.1:9")
    store = multi_backend.get_store_from_store_identifier("cloud")
    assert store.url_prefix == "s3+https://127.0.0.1:9/%s" % s3_bucket
    loc = store.location_for("abc")
    assert loc.get_store_uri() == "s3+https://127.0.0.1:9/%s/abc" % s3_bucket
    assert loc.store_name == "s3+https" and loc.backend_group == "cloud"


@pytest.mark.parametrize("option,value", [
    ("s3_store_host", ""), ("s3_store_access_key", ""), ("s3_store_secret_key", ""),
    ("s3_store_bucket", ""), ("s3_store_large_object_chunk_size", 4),
    ("s3_store_large_object_chunk_size", 0), ("s3_store_thread_pools", 0),
    ("s3_store_thread_pools", -1), ("s3_store_bucket_url_format", "sideways"),
])
def test_bad_configuration_disables_add(s3conf, option, value):
    s3conf(**{option: value})
    store = multi_backend.get_store_from_store_identifier("cloud")
    assert store.url_prefix is None
    assert not store.is_capable(capabilities.BitMasks.WRITE_ACCESS)
    with pytest.raises(exceptions.StoreAddDisabled):
        multi_backend.add_with_multihash(cfg.CONF, "x", io.BytesIO(b"1"), 1, "cloud", "md5")
    with pytest.raises(exceptions.BadStoreConfiguration) as e:
        store.configure_add()
    assert "Reason:" in str(e.value)
    if "key" in option:
        assert "Could not find %s" % option in str(e.value)
    # the other writing operations are refused as well
    with pytest.raises(exceptions.StoreAddDisabled):
        store.rename(None, "b")
    with pytest.raises(exceptions.StoreAddDisabled):
        store.set_image_meta(None, {"a": "b"})
    assert store.cleanup_leftovers() == []


def test_invalid_host_is_a_configuration_error(s3conf):
    s3conf(s3_store_host="http://exa mple:80")
    store = multi_backend.get_store_from_store_identifier("cloud")
    with pytest.raises(exceptions.BadStoreConfiguration) as e:
        store.stat_image(store.location_for("x"))
    assert "exa mple" in str(e.value)


def test_backend_defaults_fill_unset_options(ceph, s3_bucket, s3conf):
    # only the host in the store's own group; everything else in [backend_defaults]
    s3conf(s3_store_access_key=None, s3_store_secret_key=None, s3_store_bucket=None,
           s3_store_thread_pools=None,
           defaults={"s3_store_access_key": ceph.access_key,
                     "s3_store_secret_key": ceph.secret_key,
                     "s3_store_bucket": s3_bucket, "s3_store_thread_pools": 2})
    store = multi_backend.get_store_from_store_identifier("cloud")
    assert store.is_capable(capabilities.BitMasks.WRITE_ACCESS)
    assert store.thread_pools == 2 and store.bucket == s3_bucket
    uri = multi_backend.add(cfg.CONF, "bd", io.BytesIO(SMALL), len(SMALL), None)[0]
    assert b"".join(multi_backend.get(uri, "cloud")[0]) == SMALL


# ---------------------------------------------------------------- add

def test_add_returns_glance_4_tuple(cloud):
    result = multi_backend.add(cloud.conf, "img4", io.BytesIO(SMALL), len(SMALL), None)
    assert result == (cloud.prefix + "/img4", len(SMALL), hashlib.md5(SMALL).hexdigest(),
                      {"store": "cloud"})
    assert body(cloud, "img4") == SMALL


@pytest.mark.parametrize("name,data,size,parts", [
    ("small-known", SMALL, len(SMALL), 0),
    ("small-unknown", SMALL, 0, 0),
    ("empty-unknown", b"", 0, 0),
    ("one-part-exactly-unknown", BIG[:5 * MiB], 0, 0),
    ("big-known", BIG, len(BIG), 3),
    ("big-unknown", BIG, 0, 3),
    ("two-parts-exactly-unknown", BIG[:10 * MiB], 0, 2),
])
def test_add_with_multihash_5_tuple(cloud, name, data, size, parts):
    for source in (io.BytesIO(data), chunks_of(data, 999_999)):
        image_id = "%s-%s" % (name, type(source).__name__)
        result = add(cloud, image_id, source, size)
        assert result == (cloud.prefix + "/" + image_id, len(data),
                          hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest(),
                          {"store": "cloud"})
        h = head(cloud, image_id)
        assert h["ContentLength"] == len(data)
        if parts:
            assert h["ETag"].endswith('-%d"' % parts)          # a multipart upload
        else:
            assert h["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()   # one PUT
        assert body(cloud, image_id) == data
    assert uploads(cloud) == []


def test_add_of_empty_image_known_checksums(cloud):
    result = add(cloud, "empty", iter([]), 0, "sha256")
    assert result[1:4] == (0, MD5_EMPTY, hashlib.sha256(b"").hexdigest())
    data, size = multi_backend.get(result[0], "cloud")
    assert size == 0 and b"".join(data) == b""


def test_add_feeds_the_verifier(cloud):
    class Verifier:
        def __init__(self):
            self.h = hashlib.sha1()

        def update(self, chunk):
            self.h.update(chunk)

    v = Verifier()
    multi_backend.add_with_multihash(cloud.conf, "verified", io.BytesIO(BIG), 0, "cloud",
                                     "md5", verifier=v)
    assert v.h.hexdigest() == hashlib.sha1(BIG).hexdigest()


def test_add_stores_checksums_as_metadata(cloud):
    add(cloud, "meta-add", io.BytesIO(SMALL), 0, "sha256")
    meta = cloud.store.get_image_meta(cloud.store.location_for("meta-add"))
    assert meta["checksum"] == hashlib.md5(SMALL).hexdigest()
    assert meta["os_hash_algo"] == "sha256"
    assert meta["os_hash_value"] == hashlib.sha256(SMALL).hexdigest()
    assert driver.parse_mtime_ns(meta["mtime"]) == cloud.store.stat_image(
        cloud.store.location_for("meta-add")).mtime_ns


@pytest.mark.parametrize("data", [SMALL, BIG], ids=["single", "multipart"])
def test_a_refusal_before_publishing_leaves_the_replaced_image(cloud, data):
    add(cloud, "rep", io.BytesIO(b"old"), 3)
    with pytest.raises(RuntimeError, match="refused before publishing"):
        cloud.store.add_image("rep", io.BytesIO(data), 0, verifier=RefuseToPublish(),
                              replace=True)
    assert body(cloud, "rep") == b"old"
    assert uploads(cloud) == []


@pytest.mark.parametrize("data", [SMALL, BIG], ids=["single", "multipart"])
def test_an_add_replaced_right_after_it_completed_stores_no_metadata(
        ceph, s3_bucket, s3conf, rgw_proxy, data, caplog):
    """A second host writes the name between this add's PUT (or
    CompleteMultipartUpload) and its HEAD: the last writer wins, and this
    add's checksums are not stored as the metadata of the other object."""
    s3conf(s3_store_host=rgw_proxy.url)
    store = multi_backend.get_store_from_store_identifier("cloud")
    other = os.urandom(len(data))
    rule = rgw_proxy.add_rule("HEAD", "stall", count=1, seconds=60, match="racekey",
                              match_not=".gsfs-")

    def second_host():
        while rule.hits == 0:
            time.sleep(0.01)
        ceph.s3_client().put_object(Bucket=s3_bucket, Key="racekey", Body=other)
        rgw_proxy.clear()           # the held HEAD goes on, and sees the other object

    writer = threading.Thread(target=second_host)
    writer.start()
    try:
        result = store.add_image("racekey", io.BytesIO(data), 0, replace=True)
    finally:
        writer.join(timeout=60)
        rgw_proxy.clear()
    assert result[2] == hashlib.md5(data).hexdigest()
    loc = store.location_for("racekey")
    assert b"".join(store.get(loc)[0]) == other
    assert "checksum" not in store.get_image_meta(loc), store.get_image_meta(loc)
    assert "was replaced by another writer right after this add" in caplog.text


@pytest.mark.parametrize("data", [SMALL, BIG], ids=["single", "multipart"])
def test_duplicate_leaves_the_original(cloud, data):
    add(cloud, "dup", io.BytesIO(data), len(data))
    with pytest.raises(exceptions.Duplicate) as e:
        add(cloud, "dup", io.BytesIO(b"other" * 3 * MiB), 0)
    assert str(e.value) == "Image dup already exists"
    assert body(cloud, "dup") == data
    assert uploads(cloud) == []


@pytest.mark.parametrize("data", [SMALL, BIG], ids=["single", "multipart"])
def test_add_image_replace(cloud, data):
    store = cloud.store
    add(cloud, "rep", io.BytesIO(b"old"), 3)
    loc = store.location_for("rep")
    store.set_image_meta(loc, {"mtime": "100.000000000", "extra": "x"})
    result = store.add_image("rep", io.BytesIO(data), 0, "sha512", replace=True)
    assert result[1:3] == (len(data), hashlib.md5(data).hexdigest())
    assert body(cloud, "rep") == data
    meta = store.get_image_meta(loc)
    assert meta["checksum"] == hashlib.md5(data).hexdigest()
    assert "extra" not in meta and meta["mtime"] != "100.000000000"   # stale metadata gone
    with pytest.raises(exceptions.Duplicate):
        store.add_image("rep", io.BytesIO(b"z"), 1)


@pytest.mark.parametrize("data,declared", [
    (SMALL, 10), (SMALL, len(SMALL) - 1),                  # one PUT, too big
    (BIG, len(BIG) - 1), (BIG, 6 * MiB),                   # multipart, too big
], ids=["single-10", "single-minus-1", "multipart-minus-1", "multipart-6MiB"])
def test_size_exceeds_leaves_nothing(cloud, data, declared):
    with pytest.raises(exceptions.Invalid) as e:
        add(cloud, "toobig", chunks_of(data), declared)
    assert str(e.value).startswith("Size exceeds: expected %d bytes, got " % declared)
    assert head(cloud, "toobig") is None
    assert uploads(cloud) == []


@pytest.mark.parametrize("data,declared", [
    (SMALL, 24000), (SMALL, 5 * MiB), (BIG, len(BIG) + 1), (BIG, 100 * MiB),
], ids=["single", "single-threshold", "multipart-plus-1", "multipart-100MiB"])
def test_size_mismatch_leaves_nothing(cloud, data, declared):
    with pytest.raises(exceptions.Invalid) as e:
        add(cloud, "tooshort", io.BytesIO(data), declared)
    assert str(e.value) == "Size mismatch: expected %d bytes, got %d bytes" % (
        declared, len(data))
    assert head(cloud, "tooshort") is None
    assert uploads(cloud) == []


@pytest.mark.parametrize("error", [OSError("disk gone"), KeyboardInterrupt()],
                         ids=["oserror", "keyboardinterrupt"])
def test_source_failure_aborts_the_upload(cloud, error):
    def source():
        yield from chunks_of(BIG)               # 12 MiB: two parts sent already
        raise error

    with pytest.raises(type(error)):
        add(cloud, "broken", source(), 0)
    assert head(cloud, "broken") is None
    assert uploads(cloud) == []


def test_bad_data_types(cloud):
    with pytest.raises(exceptions.Invalid):
        add(cloud, "bytes", SMALL, len(SMALL))
    with pytest.raises(exceptions.UnknownHashingAlgo):
        add(cloud, "algo", io.BytesIO(SMALL), len(SMALL), "SHA256")
    with pytest.raises(exceptions.Invalid):
        add(cloud, "a/b", io.BytesIO(SMALL), len(SMALL))
    with pytest.raises(exceptions.Invalid):
        add(cloud, "x" * 1001, io.BytesIO(SMALL), len(SMALL))
    assert cloud.client.list_objects_v2(Bucket=cloud.bucket).get("Contents", []) == []


def test_parallel_parts_are_bounded(cloud):
    """Backpressure: the source is never read more than (threads + 1) parts
    ahead of the parts the server has acknowledged, and parts really go in
    parallel. The server is slowed down with a botocore event hook."""
    store = cloud.store
    part = store.large_object_chunk_size
    state = {"done": 0, "active": 0, "max_active": 0, "max_ahead": 0}
    lock = threading.Lock()

    def before_part(**kwargs):
        with lock:
            state["active"] += 1
            state["max_active"] = max(state["max_active"], state["active"])
        time.sleep(0.2)

    def after_part(**kwargs):
        with lock:
            state["active"] -= 1
            state["done"] += 1

    def source(data):
        sent = 0
        for chunk in chunks_of(data):
            with lock:
                state["max_ahead"] = max(state["max_ahead"], sent - state["done"] * part)
            yield chunk
            sent += len(chunk)

    client = store._get_client()
    client.meta.events.register("before-send.s3.UploadPart", before_part)
    client.meta.events.register("after-call.s3.UploadPart", after_part)
    try:
        data = BIG * 4                # 48 MiB: 10 parts of 5 MiB
        add(cloud, "parallel", source(data), 0)
    finally:
        client.meta.events.unregister("before-send.s3.UploadPart", before_part)
        client.meta.events.unregister("after-call.s3.UploadPart", after_part)
    assert body(cloud, "parallel") == data
    assert state["done"] == 10
    assert state["max_active"] >= 2
    assert state["max_ahead"] <= (store.thread_pools + 1) * part
    assert state["max_ahead"] >= store.thread_pools * part     # it did run ahead


# ---------------------------------------------------------------- get, size, read

@pytest.fixture
def stored(cloud):
    uri = add(cloud, "data", io.BytesIO(BIG), len(BIG))[0]
    add(cloud, "hello", io.BytesIO(b"hello world"), 11)
    return SimpleNamespace(uri=uri, hello=cloud.prefix + "/hello", **vars(cloud))


def test_get_whole_image(stored):
    data, size = multi_backend.get(stored.uri, "cloud")
    assert size == len(BIG) and len(data) == len(BIG)
    assert isinstance(data, backend.Indexable)
    chunks = list(data)
    assert all(len(c) <= s3.Store.READ_CHUNKSIZE for c in chunks)
    assert b"".join(chunks) == BIG
    assert multi_backend.get_size_from_uri_and_backend(stored.uri, "cloud") == len(BIG)


@pytest.mark.parametrize("offset,chunk_size,expected,size", [
    (6, 5, b"world", 5),
    (6, None, b"world", 11),            # offset alone: the full size, as glance's file driver
    (0, 5, b"hello", 5),
    (0, 0, b"hello world", 11),         # chunk_size 0 means the whole image
    (6, 100, b"world", 100),            # past the end: short data, size = chunk_size
    (11, None, b"", 11),                # offset at EOF
    (50, 3, b"", 3),                    # offset past EOF
])
def test_get_offset_and_chunk_size(stored, offset, chunk_size, expected, size):
    data, got_size = multi_backend.get(stored.hello, "cloud", offset=offset,
                                       chunk_size=chunk_size)
    assert b"".join(data) == expected
    assert got_size == size


def test_get_ranges_across_parts(stored):
    for offset, length in [(5 * MiB - 3, 10), (0, 12 * MiB + 7), (10 * MiB, 3 * MiB)]:
        data, size = multi_backend.get(stored.uri, "cloud", offset=offset, chunk_size=length)
        assert b"".join(data) == BIG[offset:offset + length]


def test_read(stored):
    store = stored.store
    loc = store.location_for("data")
    assert store.read(loc, 0, 100) == BIG[:100]
    assert store.read(loc, 5 * MiB - 10, 20) == BIG[5 * MiB - 10:5 * MiB + 10]
    assert store.read(loc, len(BIG) - 5, 100) == BIG[-5:]          # short only at the end
    assert store.read(loc, len(BIG), 10) == b""
    assert store.read(loc, len(BIG) + 100, 10) == b""
    assert store.read(loc, 3, 0) == b""
    assert store.read(loc, 1, 8 * MiB) == BIG[1:8 * MiB + 1]


def test_stat_and_list_images(stored):
    store = stored.store
    # what is not an image: a sidecar, nested keys, an invalid id
    for key in ("dir/nested", ".gsfs-meta/x", "a..b"):
        stored.client.put_object(Bucket=stored.bucket, Key=key, Body=b"nope")
    infos = {i.id: i for i in store.list_images()}
    assert set(infos) == {"data", "hello"}
    assert infos["data"].size == len(BIG) and infos["hello"].size == 11
    st = store.stat_image(store.location_for("hello"))
    assert st == infos["hello"]
    assert abs(st.mtime - time.time()) < 120
    assert st.mtime_ns == int(st.mtime) * 10**9
    assert store.get_size(store.location_for("data")) == len(BIG)


def test_list_images_pages(cloud):
    """More than one ListObjectsV2 page (1000 keys each)."""
    keys = ["img%04d" % i for i in range(1005)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: cloud.client.put_object(Bucket=cloud.bucket, Key=k, Body=b""),
                      keys))
    assert sorted(i.id for i in cloud.store.list_images()) == keys


@pytest.mark.parametrize("call", ["get", "get_size", "delete", "stat", "read", "meta",
                                  "set_meta", "rename"])
def test_missing_image_is_not_found(cloud, call):
    store = cloud.store
    loc = store.location_for("none")
    uri = cloud.prefix + "/none"
    actions = {
        "get": lambda: multi_backend.get(uri, "cloud"),
        "get_size": lambda: multi_backend.get_size_from_uri_and_backend(uri, "cloud"),
        "delete": lambda: multi_backend.delete(uri, "cloud"),
        "stat": lambda: store.stat_image(loc),
        "read": lambda: store.read(loc, 0, 10),
        "meta": lambda: store.get_image_meta(loc),
        "set_meta": lambda: store.set_image_meta(loc, {"a": "b"}),
        "rename": lambda: store.rename(loc, "other"),
    }
    with pytest.raises(exceptions.NotFound) as e:
        actions[call]()
    assert str(e.value) == "Image none not found"


def test_missing_image_searched_without_backend(cloud):
    with pytest.raises(exceptions.NotFound) as e:
        multi_backend.get(cloud.prefix + "/none", None)
    assert str(e.value) == "Image not found in any configured backend"


# ---------------------------------------------------------------- delete

def test_delete_returns_the_boto_response(cloud):
    uri = add(cloud, "gone", io.BytesIO(SMALL), 0)[0]
    assert head(cloud, s3.META_PREFIX + "gone") is not None
    resp = multi_backend.delete(uri, "cloud")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert head(cloud, "gone") is None
    assert head(cloud, s3.META_PREFIX + "gone") is None          # sidecar removed too
    with pytest.raises(exceptions.NotFound):
        multi_backend.delete(uri, "cloud")


# ---------------------------------------------------------------- URIs, schemes, lookups

def test_unknown_store_and_scheme(cloud):
    with pytest.raises(exceptions.UnknownScheme) as e:
        multi_backend.add_with_multihash(cloud.conf, "x", io.BytesIO(b"1"), 1, "nope", "md5")
    assert str(e.value) == "Store for identifier nope not found"
    with pytest.raises(exceptions.UnknownScheme) as e:
        multi_backend.get("ftp://host/bucket/key", "cloud")
    assert str(e.value) == "Unknown scheme 'ftp' found in URI"
    with pytest.raises(exceptions.UnknownScheme) as e:
        multi_backend.get(cloud.prefix + "/x", "other")
    assert str(e.value) == "Unknown scheme 'other' found in URI"


@pytest.mark.parametrize("uri", [
    "s3://bucket/key", "s3://host/bucket/", "s3://https://host/bucket/key", "s3:///bucket/key",
])
def test_malformed_uris(cloud, uri):
    with pytest.raises(exceptions.BadStoreUri):
        multi_backend.get(uri, "cloud")


def test_old_credentialed_uri_parses_and_reads(cloud, ceph):
    add(cloud, "old", io.BytesIO(SMALL), len(SMALL))
    hostport = ceph.rgw_endpoint[len("http://"):]
    for creds in ("AKIAOLD:SECRET", "AKIAOLD:se/cr+et", ceph.access_key + ":" + ceph.secret_key):
        for scheme in ("s3", "s3+http"):
            uri = "%s://%s@%s/%s/old" % (scheme, creds, hostport, cloud.bucket)
            loc = location.get_location_from_uri_and_backend(uri, "cloud")
            sl = loc.store_location
            assert (sl.bucket, sl.key, sl.s3serviceurl) == (cloud.bucket, "old", hostport)
            assert "@" not in loc.get_store_uri()
            assert "SECRET" not in loc.get_store_uri()
            data, size = multi_backend.get(uri, "cloud")      # the configured keys are used
            assert size == len(SMALL) and b"".join(data) == SMALL


@pytest.mark.parametrize("uri", [
    "s3://host.example/bucket/img",
    "s3+https://host.example:8080/bucket/img",
    "s3+http://10.0.0.1:7480/b/k",
    "s3://host.example/a/b/bucket/img",
    "s3://host.example/bucket/img@2",
])
def test_uri_parsing_matches_glance_store(uri):
    theirs = glance_s3.StoreLocation({}, None)
    theirs.parse_uri(uri)
    ours = s3.StoreLocation({}, None)
    ours.parse_uri(uri)
    assert (ours.scheme, ours.s3serviceurl, ours.bucket, ours.key) == (
        theirs.scheme, theirs.s3serviceurl, theirs.bucket, theirs.key)
    assert ours.get_uri() == theirs.get_uri() == uri


def test_locations_from_specs_match_glance_store():
    for host in ("127.0.0.1:9", "http://127.0.0.1:9", "https://s3.example/"):
        specs = {"scheme": "s3", "bucket": "b", "key": "k", "s3serviceurl": host}
        assert (s3.StoreLocation(specs, None).get_uri()
                == glance_s3.StoreLocation(specs, None).get_uri())


def test_aws_region_derivation_matches_glance_store():
    for host in ("s3-eu-west-1.amazonaws.com", "https://s3-us-west-2.amazonaws.com:443/",
                 "s3-cn-north-1.amazonaws.com.cn", "s3.amazonaws.com", "127.0.0.1:7480",
                 "http://rgw.example"):
        assert s3.get_s3_location(host) == glance_s3.get_s3_location(host), host


# ---------------------------------------------------------------- metadata

def test_image_metadata_sidecar(cloud):
    store = cloud.store
    add(cloud, "m", io.BytesIO(SMALL), len(SMALL))
    loc = store.location_for("m")
    store.set_image_meta(loc, {"mtime": driver.format_mtime_ns(1_700_000_000_123_456_789),
                               "note": "a"})
    store.set_image_meta(loc, {"note": "b", "other": "c"})          # merged
    meta = store.get_image_meta(loc)
    assert meta["mtime"] == "1700000000.123456789"
    assert (meta["note"], meta["other"]) == ("b", "c")
    assert meta["checksum"] == hashlib.md5(SMALL).hexdigest()
    assert head(cloud, s3.META_PREFIX + "m")["ContentLength"] > 0
    assert [i.id for i in store.list_images()] == ["m"]             # the sidecar is no image
    with pytest.raises(exceptions.Invalid):
        store.set_image_meta(loc, {"n": 1})
    store.delete(loc)
    assert head(cloud, s3.META_PREFIX + "m") is None


def test_stale_sidecar_is_ignored(cloud):
    """glance_store deletes an image (the sidecar stays) and adds a new one of
    the same id: the old checksums must not be served for the new image."""
    store = cloud.store
    add(cloud, "again", io.BytesIO(b"old contents"), 0)
    loc = store.location_for("again")
    store.set_image_meta(loc, {"mtime": "1500000000.000000000"})
    cloud.client.delete_object(Bucket=cloud.bucket, Key="again")          # as glance_store
    time.sleep(1.1)
    cloud.client.put_object(Bucket=cloud.bucket, Key="again", Body=b"old contents")
    meta = store.get_image_meta(loc)
    assert list(meta) == ["mtime"] and meta["mtime"] != "1500000000.000000000"
    store.set_image_meta(loc, {"note": "new"})          # starts afresh too
    assert set(store.get_image_meta(loc)) == {"mtime", "note"}
    assert not any(k.startswith("_") for k in store.get_image_meta(loc))


def test_metadata_of_an_image_written_by_glance_store(cloud):
    # an object without a sidecar (as glance_store writes them): only the mtime
    cloud.client.put_object(Bucket=cloud.bucket, Key="glance", Body=b"x")
    meta = cloud.store.get_image_meta(cloud.store.location_for("glance"))
    assert list(meta) == ["mtime"]


# ---------------------------------------------------------------- rename

def test_rename(cloud):
    store = cloud.store
    add(cloud, "src", io.BytesIO(BIG), 0)
    loc = store.location_for("src")
    store.set_image_meta(loc, {"mtime": "1600000000.000000000"})
    new = store.rename(loc, "dst")
    assert isinstance(new, location.Location)
    assert new.get_store_uri() == cloud.prefix + "/dst"
    assert body(cloud, "dst") == BIG
    assert head(cloud, "src") is None and head(cloud, s3.META_PREFIX + "src") is None
    meta = store.get_image_meta(new)
    assert meta["mtime"] == "1600000000.000000000"
    assert meta["checksum"] == hashlib.md5(BIG).hexdigest()
    with pytest.raises(exceptions.NotFound):
        store.stat_image(loc)


def test_rename_keeps_the_mtime(cloud):
    store = cloud.store
    add(cloud, "t1", io.BytesIO(SMALL), 0)
    before = store.stat_image(store.location_for("t1")).mtime_ns
    time.sleep(1.1)
    new = store.rename(store.location_for("t1"), "t2")
    assert driver.parse_mtime_ns(store.get_image_meta(new)["mtime"]) == before


def test_rename_onto_existing(cloud):
    store = cloud.store
    add(cloud, "a", io.BytesIO(b"aaa"), 3)
    add(cloud, "b", io.BytesIO(b"bbb"), 3)
    with pytest.raises(exceptions.Duplicate):
        store.rename(store.location_for("a"), "b")
    assert body(cloud, "a") == b"aaa" and body(cloud, "b") == b"bbb"
    store.rename(store.location_for("a"), "b", replace=True)
    assert body(cloud, "b") == b"aaa" and head(cloud, "a") is None
    assert store.get_image_meta(store.location_for("b"))["checksum"] == hashlib.md5(
        b"aaa").hexdigest()
    with pytest.raises(exceptions.Invalid):
        store.rename(store.location_for("b"), "x/y")


def test_rename_multipart_copy(cloud):
    """Objects above MULTIPART_COPY_THRESHOLD (5 GiB) are copied with
    UploadPartCopy; lowered on this instance to exercise it with 12 MiB."""
    store = cloud.store
    store.MULTIPART_COPY_THRESHOLD = 8 * MiB
    store.MULTIPART_COPY_PART_SIZE = 5 * MiB
    add(cloud, "bigsrc", io.BytesIO(BIG), 0)
    store.rename(store.location_for("bigsrc"), "bigdst")
    assert head(cloud, "bigdst")["ETag"].endswith('-3"')
    assert body(cloud, "bigdst") == BIG
    assert head(cloud, "bigsrc") is None
    assert uploads(cloud) == []


# ---------------------------------------------------------------- cleanup

def test_cleanup_leftovers(cloud, s3conf):
    dangling = cloud.client.create_multipart_upload(Bucket=cloud.bucket, Key="dangling")
    cloud.client.upload_part(Bucket=cloud.bucket, Key="dangling", PartNumber=1,
                             UploadId=dangling["UploadId"], Body=b"x" * 100)
    other = cloud.client.create_multipart_upload(Bucket=cloud.bucket, Key="not/an/image")
    cloud.client.put_object(Bucket=cloud.bucket, Key=s3.META_PREFIX + "orphan", Body=b"{}")
    add(cloud, "kept", io.BytesIO(SMALL), 0)
    time.sleep(1)           # "dangling" is not journaled: aborted once older than 0.36 s
    s3conf(gsfs_s3_leftover_age_hours=0.0001)
    store = multi_backend.get_store_from_store_identifier("cloud")
    done = store.cleanup_leftovers()
    assert len(done) == 3
    assert any(dangling["UploadId"] in d and "dangling" in d for d in done)
    assert any(s3.META_PREFIX + "orphan" in d for d in done)
    assert "wrote the mtime index of 1 image(s) in s3://%s from their metadata sidecars" % (
        cloud.bucket) in done                          # "kept": added, no set_image_meta
    assert [u["Key"] for u in uploads(cloud)] == ["not/an/image"]
    assert head(cloud, s3.META_PREFIX + "kept") is not None
    assert store.cleanup_leftovers() == []
    cloud.client.abort_multipart_upload(Bucket=cloud.bucket, Key="not/an/image",
                                         UploadId=other["UploadId"])


# ---------------------------------------------------------------- mtime index, version

def index_keys(cloud, image_id=None):
    """The mtime index keys in the bucket (of one image)."""
    prefix = s3.MTIME_PREFIX + ("" if image_id is None else image_id + "/")
    pages = cloud.client.get_paginator("list_objects_v2").paginate(
        Bucket=cloud.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))


def remount(s3conf):
    """A new driver instance for the same bucket, as after a remount."""
    before = multi_backend.get_store_from_store_identifier("cloud")
    s3conf()
    store = multi_backend.get_store_from_store_identifier("cloud")
    assert store is not before
    return store


def count_requests(store):
    """The operation names of the HTTP requests ``store``'s client sends from now on."""
    sent = []

    def before_send(event_name, **kwargs):
        sent.append(event_name.rsplit(".", 1)[-1])

    store._get_client().meta.events.register("before-send.s3", before_send)
    return sent


def object_tag(cloud, key):
    return s3._object_tag(head(cloud, key))


def test_list_images_shows_the_stored_mtime_after_a_remount(cloud, s3conf):
    add(cloud, "touched", io.BytesIO(SMALL), 0)
    add(cloud, "plain", io.BytesIO(BIG), len(BIG))            # multipart: an ETag "...-3"
    loc = cloud.store.location_for("touched")
    cloud.store.set_image_meta(loc, {"mtime": "1600000000.123456789", "note": "x"})
    assert index_keys(cloud, "touched") == [s3._index_key(
        "touched", 1_600_000_000_123_456_789, object_tag(cloud, "touched"))]
    store = remount(s3conf)
    infos = {i.id: i for i in store.list_images()}
    assert set(infos) == {"touched", "plain"}            # the index keys are no images
    assert infos["touched"].mtime_ns == 1_600_000_000_123_456_789
    assert infos["touched"].mtime == 1_600_000_000.123456789
    plain_lm = s3._mtime_ns(head(cloud, "plain")["LastModified"])
    assert infos["plain"].mtime_ns == plain_lm           # no stored mtime: LastModified
    for image_id, info in infos.items():
        assert info.version == object_tag(cloud, image_id)
        assert store.stat_image(store.location_for(image_id)) == info    # stat agrees
    assert store.get_image_meta(store.location_for("touched"))["mtime"] == \
        "1600000000.123456789"


def test_set_image_meta_replaces_the_index_key(cloud):
    store = cloud.store
    add(cloud, "m", io.BytesIO(SMALL), 0)
    loc = store.location_for("m")
    tag = object_tag(cloud, "m")
    assert index_keys(cloud) == []          # add leaves the image and its sidecar only
    # not an index key (no "<ns>.<hash>"): never touched by gsfs
    foreign = s3.MTIME_PREFIX + "m/README"
    cloud.client.put_object(Bucket=cloud.bucket, Key=foreign, Body=b"not gsfs's")
    # no mtime in the metadata: the index says LastModified, as get_image_meta
    store.set_image_meta(loc, {"note": "n"})
    assert index_keys(cloud) == sorted([foreign, s3._index_key(
        "m", s3._mtime_ns(head(cloud, "m")["LastModified"]), tag)])
    cloud.client.delete_object(Bucket=cloud.bucket, Key=foreign)
    store.set_image_meta(loc, {"mtime": "1000.5"})
    assert index_keys(cloud) == [s3._index_key("m", 1000_500_000_000, tag)]
    assert store.get_image_meta(loc)["mtime"] == "1000.500000000"        # normalized
    store.set_image_meta(loc, {"note": "the mtime stays"})
    assert index_keys(cloud) == [s3._index_key("m", 1000_500_000_000, tag)]
    store.set_image_meta(loc, {"mtime": "-1.25"})                         # before 1970
    assert index_keys(cloud) == [s3._index_key("m", -1_250_000_000, tag)]
    assert {i.id: i.mtime_ns for i in store.list_images()} == {"m": -1_250_000_000}
    for bad in ("yesterday", "1e400", str(2 ** 64)):
        with pytest.raises(exceptions.Invalid):
            store.set_image_meta(loc, {"mtime": bad})
    assert index_keys(cloud) == [s3._index_key("m", -1_250_000_000, tag)]


def test_version_changes_with_the_object_not_with_metadata(cloud):
    store = cloud.store
    add(cloud, "v", io.BytesIO(b"first"), 5)
    loc = store.location_for("v")
    version = store.stat_image(loc).version
    assert version and [i.version for i in store.list_images()] == [version]
    store.set_image_meta(loc, {"mtime": "1234.0", "note": "n"})
    store.set_image_meta(loc, {"checksum": "c0ffee"})
    assert store.stat_image(loc).version == version
    assert [i.version for i in store.list_images()] == [version]
    cloud.client.put_object(Bucket=cloud.bucket, Key="v", Body=b"other")    # same size
    assert store.stat_image(loc).version != version
    assert [i.version for i in store.list_images()] == [store.stat_image(loc).version]


def test_stale_mtime_index_is_ignored(cloud, s3conf):
    """The object is overwritten behind gsfs's back (glance_store, boto3):
    the index key of the old object must not give the new one its mtime."""
    add(cloud, "again", io.BytesIO(b"old contents"), 0)
    cloud.store.set_image_meta(cloud.store.location_for("again"),
                               {"mtime": "1500000000.000000000"})
    old = cloud.store.stat_image(cloud.store.location_for("again"))
    stale = index_keys(cloud, "again")
    time.sleep(1.1)
    cloud.client.put_object(Bucket=cloud.bucket, Key="again", Body=b"new contents")
    store = remount(s3conf)
    loc = store.location_for("again")
    info = {i.id: i for i in store.list_images()}["again"]
    assert info.mtime_ns == s3._mtime_ns(head(cloud, "again")["LastModified"])
    assert info.mtime_ns != 1_500_000_000 * 10**9
    assert info.version != old.version
    assert store.stat_image(loc) == info
    assert index_keys(cloud, "again") == stale         # still there, but ignored
    store.set_image_meta(loc, {"mtime": "1700000000.000000000"})        # starts afresh
    assert index_keys(cloud, "again") == [s3._index_key(
        "again", 1_700_000_000 * 10**9, object_tag(cloud, "again"))]
    assert [i.mtime_ns for i in store.list_images()] == [1_700_000_000 * 10**9]


def test_rename_carries_the_indexed_mtime(cloud, s3conf):
    add(cloud, "src", io.BytesIO(SMALL), 0)
    add(cloud, "dst", io.BytesIO(b"replaced"), 0)
    cloud.store.set_image_meta(cloud.store.location_for("src"), {"mtime": "1600000000.5"})
    cloud.store.rename(cloud.store.location_for("src"), "dst", replace=True)
    assert index_keys(cloud, "src") == []
    assert index_keys(cloud) == [s3._index_key("dst", 1_600_000_000_500_000_000,
                                               object_tag(cloud, "dst"))]
    store = remount(s3conf)
    assert [(i.id, i.mtime_ns) for i in store.list_images()] == [
        ("dst", 1_600_000_000_500_000_000)]
    assert store.stat_image(store.location_for("dst")).mtime_ns == 1_600_000_000_500_000_000


def test_delete_removes_the_mtime_index(cloud):
    uri = add(cloud, "gone", io.BytesIO(SMALL), 0)[0]
    cloud.store.set_image_meta(cloud.store.location_for("gone"), {"mtime": "1.0"})
    assert len(index_keys(cloud, "gone")) == 1
    multi_backend.delete(uri, "cloud")
    assert index_keys(cloud) == []


def test_cleanup_removes_only_index_keys_without_image(cloud, s3conf):
    add(cloud, "kept", io.BytesIO(SMALL), 0)
    cloud.store.set_image_meta(cloud.store.location_for("kept"), {"mtime": "3.0"})
    kept = index_keys(cloud, "kept")
    assert len(kept) == 1
    # an image deleted through glance_store: its sidecar and index key stay behind
    add(cloud, "ghost", io.BytesIO(b"boo"), 0)
    cloud.store.set_image_meta(cloud.store.location_for("ghost"), {"mtime": "5.0"})
    ghost = index_keys(cloud, "ghost")
    cloud.client.delete_object(Bucket=cloud.bucket, Key="ghost")
    # the key of an older object of an existing image (ignored, but its image
    # exists: not cleanup's business), and keys that are not gsfs's
    stale = s3._index_key("kept", 42, "an older object 1")
    foreign = [s3.MTIME_PREFIX + "no-leaf", s3.MTIME_PREFIX + "kept/not-an-index-key"]
    for key in [stale] + foreign:
        cloud.client.put_object(Bucket=cloud.bucket, Key=key, Body=b"")
    store = remount(s3conf)
    done = store.cleanup_leftovers()
    assert sorted(done) == sorted(
        ["removed s3://%s/%s: metadata of a missing image" % (cloud.bucket,
                                                              s3.META_PREFIX + "ghost")]
        + ["removed s3://%s/%s: mtime index of a missing image" % (cloud.bucket, k)
           for k in ghost])
    assert index_keys(cloud) == sorted(kept + [stale] + foreign)
    assert store.cleanup_leftovers() == []
    assert [(i.id, i.version) for i in store.list_images()] == [
        ("kept", object_tag(cloud, "kept"))]


def test_cleanup_indexes_sidecars_from_before_the_index(cloud, s3conf):
    add(cloud, "old", io.BytesIO(SMALL), 0)
    add(cloud, "no-mtime", io.BytesIO(b"x"), 0)
    add(cloud, "replaced", io.BytesIO(b"y"), 0)
    cloud.store.set_image_meta(cloud.store.location_for("old"), {"mtime": "1400000000.25"})
    cloud.store.set_image_meta(cloud.store.location_for("replaced"), {"mtime": "7.0"})
    for key in index_keys(cloud):                  # as an earlier gsfs left them
        cloud.client.delete_object(Bucket=cloud.bucket, Key=key)
    time.sleep(1.1)
    cloud.client.put_object(Bucket=cloud.bucket, Key="replaced", Body=b"z")   # stale sidecar
    store = remount(s3conf)
    lm = {k: s3._mtime_ns(head(cloud, k)["LastModified"]) for k in ("old", "no-mtime",
                                                                   "replaced")}
    assert {i.id: i.mtime_ns for i in store.list_images()} == lm
    assert store.cleanup_leftovers() == [
        "wrote the mtime index of 2 image(s) in s3://%s from their metadata sidecars"
        % cloud.bucket]
    assert {i.id: i.mtime_ns for i in store.list_images()} == dict(
        lm, old=1_400_000_000_250_000_000)
    assert index_keys(cloud, "replaced") == []
    sent = count_requests(store)
    assert store.cleanup_leftovers() == []
    # only the stale sidecar is read again: the others have their index now
    assert sent.count("GetObject") == 1


def test_list_images_needs_two_listings_per_1000_images(cloud, s3conf):
    """1005 images, each with an index key: 2 + 2 ListObjectsV2, nothing else."""
    keys = ["img%04d" % i for i in range(1005)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: cloud.client.put_object(Bucket=cloud.bucket, Key=k,
                                                        Body=k.encode()), keys))
        pages = cloud.client.get_paginator("list_objects_v2").paginate(Bucket=cloud.bucket)
        objects = [o for page in pages for o in page["Contents"]]
        assert len(objects) == len(keys)
        # what set_image_meta would have written, for each image: mtime = i seconds
        list(pool.map(lambda o: cloud.client.put_object(
            Bucket=cloud.bucket, Body=b"", Key=s3._index_key(
                o["Key"], int(o["Key"][3:]) * 10**9, s3._object_tag(o))), objects))
    store = remount(s3conf)
    sent = count_requests(store)
    infos = store.list_images()
    assert sent == ["ListObjectsV2"] * 4
    assert [(i.id, i.mtime_ns) for i in sorted(infos)] == [
        (k, int(k[3:]) * 10**9) for k in keys]
    assert all(i.version == s3._object_tag(o) for i, o in zip(sorted(infos), objects,
                                                             strict=True))


def test_longest_id_fits_every_key(cloud):
    """max_id_length (974 bytes) leaves room for the longest index key."""
    store = cloud.store
    for image_id in ("a" * 974, "\u00e9" * 487):
        assert len(image_id.encode()) == store.max_id_length
        key = s3._index_key(image_id, -2 ** 63, "any tag")
        assert len(key.encode()) == s3.MAX_KEY_BYTES
        add(cloud, image_id, io.BytesIO(b"long"), 4)
        store.set_image_meta(store.location_for(image_id), {"mtime": "-9223372036.854775808"})
        assert index_keys(cloud, image_id) == [
            s3._index_key(image_id, -2 ** 63, object_tag(cloud, image_id))]
        assert {i.id: i.mtime_ns for i in store.list_images()}[image_id] == -2 ** 63
        store.delete(store.location_for(image_id))
    with pytest.raises(exceptions.Invalid):
        store.location_for("a" * 975)


def test_index_keys_parse_back():
    tag = "d41d8cd98f00b204e9800998ecf8427e-3 1700000000"
    for image_id, ns in (("x", 0), ("a.b c", -5), ("\u00e9t\u00e9", 2 ** 63 - 1)):
        key = s3._index_key(image_id, ns, tag)
        assert s3._parse_index_key(key) == (image_id, ns, s3._tag_hash(tag))
    for key in (".gsfs-mtime/x", ".gsfs-mtime//1.%s" % ("0" * 16), ".gsfs-mtime/x/1.abc",
                ".gsfs-mtime/x/+1.%s" % ("0" * 16), ".gsfs-mtime/x/1_0.%s" % ("0" * 16),
                ".gsfs-mtime/x/y/1.%s" % ("0" * 16), ".gsfs-meta/x",
                ".gsfs-mtime/x/%d.%s" % (2 ** 63, "0" * 16)):
        assert s3._parse_index_key(key) is None, key


# ---------------------------------------------------------------- buckets, failures

def test_missing_bucket_without_create_on_put(s3conf):
    name = "gsfs-missing-%s" % uuid.uuid4().hex[:12]
    conf = s3conf(s3_store_bucket=name)
    with pytest.raises(exceptions.BackendException) as e:
        multi_backend.add_with_multihash(conf, "x", io.BytesIO(b"1"), 1, "cloud", "md5")
    assert str(e.value) == NOT_THERE_MSG % name
    store = multi_backend.get_store_from_store_identifier("cloud")
    with pytest.raises(exceptions.BackendException):
        store.list_images()


def test_missing_bucket_created_on_put(ceph, s3conf):
    name = "gsfs-created-%s" % uuid.uuid4().hex[:12]
    conf = s3conf(s3_store_bucket=name, s3_store_create_bucket_on_put=True)
    store = multi_backend.get_store_from_store_identifier("cloud")
    try:
        assert store.list_images() == []
        assert store.cleanup_leftovers() == []
        multi_backend.add_with_multihash(conf, "x", io.BytesIO(SMALL), 0, "cloud", "md5")
        assert [i.id for i in store.list_images()] == ["x"]
    finally:
        purge_bucket(ceph.s3_client(), name)


def test_dead_endpoint_is_remote_service_unavailable(s3conf):
    conf = s3conf(s3_store_host="http://127.0.0.1:%d" % free_port())
    store = multi_backend.get_store_from_store_identifier("cloud")
    calls = [
        lambda: multi_backend.add_with_multihash(conf, "x", io.BytesIO(b"1"), 1, "cloud", "md5"),
        lambda: multi_backend.get(store.url_prefix + "/x", "cloud"),
        lambda: store.list_images(),
        lambda: store.read(store.location_for("x"), 0, 1),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(exceptions.RemoteServiceUnavailable) as e:
            call()
        assert time.monotonic() - start < 30
        assert "127.0.0.1" in str(e.value)


def test_wrong_credentials(s3conf, cloud):
    add(cloud, "secret", io.BytesIO(b"1"), 1)
    conf = s3conf(s3_store_secret_key="not-the-secret")
    store = multi_backend.get_store_from_store_identifier("cloud")
    with pytest.raises(exceptions.StorageWriteDenied) as e:
        multi_backend.add_with_multihash(conf, "x", io.BytesIO(b"1"), 1, "cloud", "md5")
    assert cloud.bucket in str(e.value) and "not-the-secret" not in str(e.value)
    with pytest.raises(exceptions.Forbidden) as e:
        store.read(store.location_for("secret"), 0, 1)
    assert "not-the-secret" not in str(e.value)


def test_virtual_addressing_needs_a_dns_bucket_name(s3conf):
    s3conf(s3_store_bucket="Not_DNS", s3_store_bucket_url_format="virtual")
    store = multi_backend.get_store_from_store_identifier("cloud")
    with pytest.raises(exceptions.BadStoreConfiguration):
        store.stat_image(store.location_for("x"))


def test_radosgw_down_during_upload_then_cleanup(ceph, cloud):
    """radosgw dies mid-upload: RemoteServiceUnavailable; the abort cannot
    reach it, so cleanup_leftovers() removes the upload once it is back."""
    def source():
        yield from chunks_of(BIG)
        ceph.stop_rgw()
        yield from chunks_of(BIG)

    try:
        with pytest.raises(exceptions.RemoteServiceUnavailable):
            add(cloud, "interrupted", source(), 0)
    finally:
        ceph.start_rgw()
    pending = [u["Key"] for u in uploads(cloud)]
    if pending:                    # the abort could not be sent while it was down
        assert pending == ["interrupted"]
    cloud.store.cleanup_leftovers()
    assert uploads(cloud) == []
    assert head(cloud, "interrupted") is None


# ---------------------------------------------------------------- pure units

@pytest.mark.parametrize("base_mib", [5, 10, 16, 64, 100])
def test_unknown_size_parts_reach_5_tib(base_mib):
    base = base_mib * MiB
    interval = s3.growth_interval(base, s3.Store.GROWTH_INTERVALS)
    assert s3.unknown_size_capacity(base, interval) >= 5 * 1024**4
    sizes = [min(s3.MAX_PART_SIZE, base << ((n - 1) // interval)) for n in range(1, 10001)]
    assert sizes == sorted(sizes) and sizes[0] == base and max(sizes) <= 5 * 1024**3
    # 2 GiB never leaves the first part size
    assert sum(sizes[:interval]) >= 2 * 1024**3


def _taken_in_thread(pool, size):
    got = []
    t = threading.Thread(target=lambda: got.append(pool.take(size)))
    t.start()
    t.join(0.3)
    return t, got


def test_part_buffers_block_when_the_budget_is_in_use():
    pool = s3._PartBuffers(20)
    a, b = pool.take(10), pool.take(10)
    t, got = _taken_in_thread(pool, 10)
    assert t.is_alive() and not got           # blocked: the budget is in use
    pool.give(a)
    t.join(5)
    assert got and got[0] is a                # the same memory is reused
    pool.give(b)
    pool.give(got[0])


def test_larger_parts_mean_fewer_in_flight():
    """Growing parts (unknown size) keep memory at the budget: a 15-byte part
    waits while 10 are in use, and one part larger than the budget is allowed
    alone."""
    pool = s3._PartBuffers(20)
    a = pool.take(10)
    t, got = _taken_in_thread(pool, 15)
    assert t.is_alive() and not got           # 10 + 15 > 20
    pool.give(a)
    t.join(5)
    assert got and len(got[0]) == 15
    t2, got2 = _taken_in_thread(pool, 30)
    assert t2.is_alive() and not got2         # waits for the 15 to come back
    pool.give(got[0])
    t2.join(5)
    assert got2 and len(got2[0]) == 30        # alone, it may exceed the budget
    pool.give(got2[0])


def _client_error(code, status):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "msg"},
         "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize("exc,write,expected", [
    (_client_error("NoSuchKey", 404), False, exceptions.NotFound),
    (_client_error("404", 404), False, exceptions.NotFound),
    (_client_error("AccessDenied", 403), False, exceptions.Forbidden),
    (_client_error("AccessDenied", 403), True, exceptions.StorageWriteDenied),
    (_client_error("QuotaExceeded", 403), True, exceptions.StorageFull),
    (_client_error("EntityTooLarge", 400), True, exceptions.StorageFull),
    (_client_error("InsufficientStorage", 507), True, exceptions.StorageFull),
    (_client_error("SlowDown", 503), False, exceptions.RemoteServiceUnavailable),
    (_client_error("NoSuchUpload", 404), True, exceptions.BackendException),
    (_client_error("InternalError", 500), False, exceptions.BackendException),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://h"), False,
     exceptions.RemoteServiceUnavailable),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="http://h"), False,
     exceptions.RemoteServiceUnavailable),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://h"), False,
     exceptions.RemoteServiceUnavailable),
    (botocore.exceptions.InvalidDNSNameError(bucket_name="B_"), False,
     exceptions.BadStoreConfiguration),
    (botocore.exceptions.NoCredentialsError(), False, exceptions.BadStoreConfiguration),
])
def test_error_mapping(exc, write, expected):
    mapped = s3._s3_error(exc, "get", "bkt", "key1", write=write)
    assert type(mapped) is expected
    if expected is exceptions.NotFound:
        assert str(mapped) == "Image key1 not found"
    else:
        assert "bkt" in str(mapped)
    assert s3._s3_error(ValueError("x"), "get", "bkt", "key1") is None


# ---------------------------------------------------------------- shared bucket: the journal

# Starts a multipart upload of unknown size on store "cloud" of the config file
# argv[1], prints "uploading" once the upload exists (6 MiB > one 5 MiB part),
# then hangs until killed.
UPLOADER = r"""
import sys, time
from oslo_config import cfg
from gsfs import multi_backend
cfg.CONF.register_opt(cfg.DictOpt("enabled_backends"))
cfg.CONF(args=[], default_config_files=[sys.argv[1]])
multi_backend.register_store_opts(cfg.CONF)
multi_backend.create_multi_stores(cfg.CONF)

def source():
    yield b"x" * (6 * 1024 * 1024)
    print("uploading", flush=True)
    time.sleep(600)
    yield b""

multi_backend.add_with_multihash(cfg.CONF, sys.argv[2], source(), 0, "cloud", "md5")
"""


@pytest.fixture
def uploader():
    """Start UPLOADER in a real subprocess; every one is killed and reaped afterwards."""
    started = []

    def start(conf, image_id):
        proc = subprocess.Popen(
            [sys.executable, "-c", UPLOADER, conf.config_file[0], image_id],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        started.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "uploading":
            proc.kill()
            raise AssertionError("the uploader did not start: %s" % proc.communicate()[1])
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def journal_entries(tmp_path):
    directory = tmp_path / "s3-journal"
    if not directory.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(directory.iterdir())]


def wait_zombie(pid):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                return
        time.sleep(0.02)
    raise AssertionError("process %d did not die" % pid)


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_cleanup_aborts_the_upload_of_a_killed_process(cloud, s3conf, uploader, tmp_path,
                                                       reaped):
    proc = uploader(cloud.conf, "crashed")
    [upload] = uploads(cloud)
    [entry] = journal_entries(tmp_path)
    assert {k: entry[k] for k in ("bucket", "key", "upload_id", "host", "pid")} == {
        "bucket": cloud.bucket, "key": "crashed", "upload_id": upload["UploadId"],
        "host": socket.gethostname(), "pid": proc.pid}
    assert entry["started"]
    proc.send_signal(signal.SIGKILL)
    if reaped:
        proc.wait(timeout=30)
    else:
        wait_zombie(proc.pid)                     # killed, not reaped yet: still dead
    s3conf()                                      # a new store, as after a restart
    store = multi_backend.get_store_from_store_identifier("cloud")
    done = store.cleanup_leftovers()
    assert len(done) == 1, done
    assert "aborted the unfinished multipart upload %s of s3://%s/crashed" % (
        upload["UploadId"], cloud.bucket) in done[0]
    assert "process %d is gone" % proc.pid in done[0]
    assert uploads(cloud) == []
    assert journal_entries(tmp_path) == []
    assert store.cleanup_leftovers() == []


def test_cleanup_leaves_the_upload_of_a_live_process(cloud, s3conf, uploader, tmp_path):
    proc = uploader(cloud.conf, "running")
    [upload] = uploads(cloud)
    s3conf(gsfs_s3_leftover_age_hours=0.0001)     # the age is for foreign uploads only
    time.sleep(1)
    store = multi_backend.get_store_from_store_identifier("cloud")
    assert store.cleanup_leftovers() == []
    assert [u["UploadId"] for u in uploads(cloud)] == [upload["UploadId"]]
    assert [e["upload_id"] for e in journal_entries(tmp_path)] == [upload["UploadId"]]
    # once it is killed, the next cleanup takes it
    proc.kill()
    proc.wait(timeout=30)
    assert len(store.cleanup_leftovers()) == 1
    assert uploads(cloud) == [] and journal_entries(tmp_path) == []


def test_cleanup_aborts_foreign_uploads_only_when_old(cloud, s3conf, tmp_path):
    """An upload without a journal entry (Glance's, another host's): left alone
    with the default age (24 h) and with age 0 (never); aborted when older."""
    foreign = cloud.client.create_multipart_upload(Bucket=cloud.bucket, Key="glances")
    assert cloud.store.cleanup_leftovers() == []
    time.sleep(1)
    s3conf(gsfs_s3_leftover_age_hours=0)
    assert multi_backend.get_store_from_store_identifier("cloud").cleanup_leftovers() == []
    assert [u["UploadId"] for u in uploads(cloud)] == [foreign["UploadId"]]
    s3conf(gsfs_s3_leftover_age_hours=0.0001)     # 0.36 s
    done = multi_backend.get_store_from_store_identifier("cloud").cleanup_leftovers()
    assert len(done) == 1
    assert foreign["UploadId"] in done[0] and "not started by this host" in done[0]
    assert uploads(cloud) == []


def test_cleanup_treats_another_hosts_entry_as_foreign(cloud, s3conf, tmp_path):
    """A journal entry of another host (a shared journal dir): its pid means
    nothing here, so only the age counts; an entry whose upload is gone goes."""
    other = cloud.client.create_multipart_upload(Bucket=cloud.bucket, Key="elsewhere")
    store = cloud.store
    endpoint = store._get_client().meta.endpoint_url
    for upload_id in (other["UploadId"], "no-such-upload"):
        store.journal.add(store._journal_name(cloud.bucket, "elsewhere", upload_id), {
            "endpoint": endpoint, "bucket": cloud.bucket, "key": "elsewhere",
            "upload_id": upload_id, "host": "another-host", "pid": 1 << 30})
    done = store.cleanup_leftovers()
    assert len(done) == 1 and "no-such-upload" in done[0] and "no longer exists" in done[0]
    assert [u["UploadId"] for u in uploads(cloud)] == [other["UploadId"]]
    time.sleep(1)
    s3conf(gsfs_s3_leftover_age_hours=0.0001)
    done = multi_backend.get_store_from_store_identifier("cloud").cleanup_leftovers()
    assert len(done) == 1 and "not started by this host" in done[0]
    assert uploads(cloud) == [] and journal_entries(tmp_path) == []


def test_journal_entries_end_with_their_upload(cloud, s3conf, tmp_path):
    """The journal directory is created on demand; completed and failed
    uploads leave no entry."""
    deep = tmp_path / "a" / "b" / "journal"
    conf = s3conf(gsfs_s3_journal_dir=str(deep))
    assert not deep.exists()
    multi_backend.add_with_multihash(conf, "done", chunks_of(BIG), 0, "cloud", "md5")
    assert deep.is_dir() and list(deep.iterdir()) == []

    def failing():
        yield BIG
        raise OSError("source gone")

    with pytest.raises(OSError):
        multi_backend.add_with_multihash(conf, "failed", failing(), 0, "cloud", "md5")
    assert list(deep.iterdir()) == [] and uploads(cloud) == []


def test_default_journal_dir(monkeypatch):
    opts = {o.name: o for o in s3.OPTIONS}
    assert opts["gsfs_s3_journal_dir"].default == journal.default_dir("s3-journal")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert journal.default_dir("s3-journal") == "/var/lib/gsfs/s3-journal"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert journal.default_dir("s3-journal") == "/srv/state/gsfs/s3-journal"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert journal.default_dir("s3-journal") == "/home/u/.local/state/gsfs/s3-journal"


def test_process_tag_tells_dead_zombie_and_reused_pids():
    assert process.process_alive(os.getpid(), process.process_tag(os.getpid()))
    assert not process.process_alive(os.getpid(), "another-boot:1")    # pid reused
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tag = process.process_tag(proc.pid)
        assert tag and process.process_alive(proc.pid, tag)
        proc.kill()
        wait_zombie(proc.pid)
        assert process.process_tag(proc.pid) is None
    finally:
        proc.kill()
        proc.wait()
    assert not process.process_alive(proc.pid, tag)
