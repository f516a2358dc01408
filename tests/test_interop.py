"""Interop with the real glance_store 5.7 on one shared glance-api.conf.

glance_store and gsfs run in the same process on the same global oslo
``cfg.CONF``. That works in one order only: glance_store's
``register_store_opts`` registers its option objects without catching
DuplicateOptError, and gsfs's same-named options differ (help texts), so
glance_store must register first; gsfs then ignores the duplicates and reads
glance_store's definitions, which have the same names, types and defaults for
the file driver. The ``both`` fixture does exactly that and puts CONF and both
libraries' registries back afterwards.

Covered: (a) images written by glance_store are read, sized and deleted by gsfs;
(b) the reverse; (c) add/add_with_multihash return equal tuples for the same
input, error cases raise exceptions of the same class name (and message), and
get/get_size/delete agree; plus the deliberate differences, each shown on both
sides (docs/compatibility.md).
"""

import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import glance_store
import glance_store.location
import glance_store.multi_backend
import pytest
from oslo_config import cfg

from gsfs import multi_backend as gsfs_mb
from tests.storeconf import wipe_conf

CONF = cfg.CONF
RESERVED = {"os_glance_staging_store": "file", "os_glance_tasks_store": "file"}
DATA = bytes(range(256)) * 47 + b"tail"        # 12036 bytes


def reset_libraries():
    gsfs_mb.reset()
    glance_store.location.SCHEME_TO_CLS_BACKEND_MAP.clear()
    glance_store.multi_backend._RESERVED_STORES.clear()


SHARED_CONF = """\
[DEFAULT]
debug = false
bind_port = 9292
enabled_backends = fast:file, cheap:file, thin:file, meta:file, multi:file, broken:file

[glance_store]
default_backend = fast

[keystone_authtoken]
auth_type = password
username = glance

[database]
connection = sqlite://

[fast]
store_description = Fast
weight = 100
filesystem_store_datadir = {tmp}/fast

[cheap]
weight = 5
filesystem_store_datadir = {tmp}/cheap
filesystem_store_chunk_size = 4

[thin]
filesystem_store_datadir = {tmp}/thin
filesystem_store_chunk_size = 4096
filesystem_thin_provisioning = true
filesystem_store_file_perm = 640

[meta]
filesystem_store_datadir = {tmp}/meta
filesystem_store_metadata_file = {tmp}/fs-meta.json

[multi]
filesystem_store_datadir =
filesystem_store_datadirs = {tmp}/low:100
filesystem_store_datadirs = {tmp}/high:200

[broken]
# datadirs without clearing datadir: add disabled in both
filesystem_store_datadirs = {tmp}/never:100

[os_glance_staging_store]
filesystem_store_datadir = {tmp}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {tmp}/tasks
{extra}"""

FILE_STORES = ["fast", "cheap", "thin", "meta", "multi", "os_glance_staging_store"]


def write_shared_conf(tmp_path, extra=""):
    (tmp_path / "fs-meta.json").write_text(json.dumps(
        [{"id": "share-1", "mountpoint": str(tmp_path / "meta"), "opts": ["a", "b"]}]))
    ini = tmp_path / "glance-api.conf"
    ini.write_text(SHARED_CONF.format(tmp=tmp_path, extra=extra))
    return ini


@pytest.fixture
def both(tmp_path):
    """glance_store and gsfs configured from one glance-api.conf, in this process."""
    wipe_conf()
    reset_libraries()
    ini = write_shared_conf(tmp_path)
    CONF.register_opt(cfg.DictOpt("enabled_backends"))         # as Glance does
    CONF(args=[], default_config_files=[str(ini)])
    glance_store.register_store_opts(CONF, reserved_stores=RESERVED)   # must come first
    gs_count = glance_store.create_multi_stores(CONF, reserved_stores=RESERVED)
    gsfs_mb.register_store_opts(CONF, reserved_stores=RESERVED)
    gsfs_count = gsfs_mb.create_multi_stores(CONF, reserved_stores=RESERVED)
    try:
        yield SimpleNamespace(tmp=tmp_path, ini=ini, gs_count=gs_count, gsfs_count=gsfs_count)
    finally:
        reset_libraries()
        wipe_conf()


def path_of(uri):
    assert uri.startswith("file://")
    return uri[len("file://"):]


def outcome(call, *args, **kwargs):
    """('ok', value) or ('error', exception class name, message)."""
    try:
        return ("ok", call(*args, **kwargs))
    except Exception as e:   # noqa: BLE001 - the class is what is compared
        return ("error", type(e).__name__, str(e))


def chunks(result):
    data, size = result
    return list(data), size


# ================================================================ the configuration

def test_both_load_the_same_stores(both):
    assert both.gs_count == both.gsfs_count == 16
    assert sorted(glance_store.get_known_schemes_for_multi_store()) == sorted(
        gsfs_mb.get_known_schemes_for_multi_store()) == ["file", "filesystem"]
    assert glance_store.verify_store() is None and gsfs_mb.verify_store() is None
    for store_id in FILE_STORES + ["broken", "os_glance_tasks_store"]:
        gs = glance_store.get_store_from_store_identifier(store_id)
        ours = gsfs_mb.get_store_from_store_identifier(store_id)
        assert gs.url_prefix == ours.url_prefix, store_id
        assert gs.capabilities == ours.capabilities & 0xFF, store_id
        assert glance_store.get_store_weight(store_id) == gsfs_mb.get_store_weight(store_id)
    assert outcome(glance_store.get_store_from_store_identifier, "nope") == \
        outcome(gsfs_mb.get_store_from_store_identifier, "nope")


# ================================================================ (a) glance_store → gsfs

@pytest.mark.parametrize("store_id", FILE_STORES)
def test_glance_store_writes_gsfs_reads_sizes_deletes(both, store_id):
    uri = glance_store.add_with_multihash(
        CONF, "img-a", io.BytesIO(DATA), len(DATA), store_id, "sha256")[0]
    data, size = gsfs_mb.get(uri, store_id)
    assert (b"".join(data), size) == (DATA, len(DATA))
    data, size = gsfs_mb.get(uri, store_id, offset=100, chunk_size=50)
    assert (b"".join(data), size) == (DATA[100:150], 50)
    assert gsfs_mb.get_size_from_uri_and_backend(uri, store_id) == len(DATA)
    store = gsfs_mb.get_store_from_store_identifier(store_id)
    assert [i.id for i in store.list_images()] == ["img-a"]
    assert gsfs_mb.delete(uri, store_id) is None
    assert not os.path.exists(path_of(uri))
    assert outcome(lambda: glance_store.get(uri, store_id))[1] == "NotFound"


def test_glance_store_4_tuple_add_read_by_gsfs_search_mode(both):
    uri, size, md5, meta = glance_store.add(CONF, "img-a", io.BytesIO(DATA), len(DATA), None)
    assert meta == {"store": "fast"}
    data, n = gsfs_mb.get(uri, None)
    assert (b"".join(data), n) == (DATA, size)
    assert gsfs_mb.delete(uri, None) is None


# ================================================================ (b) gsfs → glance_store

@pytest.mark.parametrize("store_id", FILE_STORES)
def test_gsfs_writes_glance_store_reads_sizes_deletes(both, store_id):
    uri = gsfs_mb.add_with_multihash(
        CONF, "img-b", io.BytesIO(DATA), len(DATA), store_id, "sha512")[0]
    data, size = glance_store.get(uri, store_id)
    assert (b"".join(data), size) == (DATA, len(DATA))
    data, size = glance_store.get(uri, store_id, offset=7, chunk_size=9)
    assert (b"".join(data), size) == (DATA[7:16], 9)
    assert glance_store.get_size_from_uri_and_backend(uri, store_id) == len(DATA)
    assert glance_store.delete(uri, store_id) is None
    assert not os.path.exists(path_of(uri))
    assert outcome(lambda: gsfs_mb.get(uri, store_id))[1] == "NotFound"


def test_gsfs_empty_image_read_by_glance_store(both):
    uri = gsfs_mb.add(CONF, "empty", io.BytesIO(b""), 0, "fast")[0]
    assert chunks(glance_store.get(uri, "fast")) == ([], 0)
    assert glance_store.get_size_from_uri_and_backend(uri, "fast") == 0


# ================================================================ (c) same results

def _same_add(call_gs, call_ours, uri=None):
    """Run the glance_store add, remove its file, run the gsfs add on the same id:
    the results and the stored bytes must be equal."""
    gs = outcome(call_gs)
    assert gs[0] == "ok", gs
    gs_path = path_of(gs[1][0])
    with open(gs_path, "rb") as f:
        gs_bytes = f.read()
    gs_stat = os.stat(gs_path)
    os.unlink(gs_path)
    ours = outcome(call_ours)
    assert ours == gs
    with open(gs_path, "rb") as f:
        assert f.read() == gs_bytes
    st = os.stat(gs_path)
    assert (st.st_mode, st.st_size) == (gs_stat.st_mode, gs_stat.st_size)
    return gs[1], gs_stat, st


def gen(data, piece=1000):
    return (data[i:i + piece] for i in range(0, len(data), piece))


ADD_CASES = {
    "default-backend": dict(backend=None, size=len(DATA)),
    "cheap-4-byte-chunks": dict(backend="cheap", size=len(DATA)),
    "size-0": dict(backend="fast", size=0),
    "empty": dict(backend="fast", size=0, data=b""),
    "generator": dict(backend="fast", size=len(DATA), source="gen"),
    "metadata-file": dict(backend="meta", size=len(DATA)),
    "thin-perm": dict(backend="thin", size=0, data=b"x" + b"\0" * 100000 + b"y"),
    "datadirs": dict(backend="multi", size=len(DATA)),
    "reserved": dict(backend="os_glance_staging_store", size=len(DATA)),
    "int-id": dict(backend="fast", size=len(DATA), image_id=4242),
}


def _source(case):
    data = case.get("data", DATA)
    return (lambda: gen(data)) if case.get("source") == "gen" else (lambda: io.BytesIO(data))


@pytest.mark.parametrize("algo", ["sha512", "sha256", "md5", "sha3_256", "blake2b", "sha1"])
@pytest.mark.parametrize("case", list(ADD_CASES), ids=list(ADD_CASES))
def test_add_with_multihash_tuples_are_equal(both, case, algo):
    c = ADD_CASES[case]
    src = _source(c)
    image_id = c.get("image_id", "img-c")
    result, gs_stat, our_stat = _same_add(
        lambda: glance_store.add_with_multihash(CONF, image_id, src(), c["size"],
                                                c["backend"], algo),
        lambda: gsfs_mb.add_with_multihash(CONF, image_id, src(), c["size"],
                                           c["backend"], algo))
    data = c.get("data", DATA)
    assert result[1:4] == (len(data), hashlib.md5(data).hexdigest(),
                           hashlib.new(algo, data).hexdigest())
    if case == "thin-perm":
        assert our_stat.st_blocks <= gs_stat.st_blocks
        assert our_stat.st_mode & 0o777 == 0o640


@pytest.mark.parametrize("case", list(ADD_CASES), ids=list(ADD_CASES))
def test_add_4_tuples_are_equal(both, case):
    c = ADD_CASES[case]
    src = _source(c)
    image_id = c.get("image_id", "img-c")
    result = _same_add(
        lambda: glance_store.add(CONF, image_id, src(), c["size"], c["backend"]),
        lambda: gsfs_mb.add(CONF, image_id, src(), c["size"], c["backend"]))[0]
    assert len(result) == 4


def test_driver_add_back_compat_shapes_are_equal(both):
    gs = glance_store.get_store_from_store_identifier("fast")
    ours = gsfs_mb.get_store_from_store_identifier("fast")
    n = len(DATA)
    calls = [
        lambda s, i: s.add(i, io.BytesIO(DATA), n),
        lambda s, i: s.add(i, io.BytesIO(DATA), n, {"ctx": "x"}),
        lambda s, i: s.add(i, io.BytesIO(DATA), n, context=None, verifier=None),
        lambda s, i: s.add(image_size=n, image_file=io.BytesIO(DATA), image_id=i),
        lambda s, i: s.add(i, io.BytesIO(DATA), n, "sha256"),
        lambda s, i: s.add(i, io.BytesIO(DATA), n, hashing_algo="sha384"),
        lambda s, i: s.add(i, io.BytesIO(DATA), n, "sha256", None, None),
    ]
    for k, call in enumerate(calls):
        image_id = "bc%d" % k
        _same_add(functools.partial(call, gs, image_id), functools.partial(call, ours, image_id))
    for bad in (lambda s: s.add("x", io.BytesIO(DATA)),
                lambda s: s.add("x", io.BytesIO(DATA), n, bogus=1)):
        assert outcome(bad, gs)[:2] == outcome(bad, ours)[:2] == ("error", "TypeError")


def _error_pair(setup_gs, call_gs, call_ours, cleanup=None):
    setup_gs()
    gs = outcome(call_gs)
    if cleanup:
        cleanup()
    ours = outcome(call_ours)
    return gs, ours


@pytest.mark.parametrize("size,message", [
    (10, "Size exceeds: expected 10 bytes, got 12036 bytes"),
    (20000, "Size mismatch: expected 20000 bytes, got 12036 bytes"),
])
@pytest.mark.parametrize("store_id", ["fast", "cheap", "multi"])
def test_size_errors_are_equal(both, store_id, size, message):
    if store_id == "cheap" and size == 10:
        message = "Size exceeds: expected 10 bytes, got 12 bytes"    # 4-byte chunks
    results = []
    for lib in (glance_store, gsfs_mb):
        src = io.BytesIO(DATA)
        results.append((outcome(lib.add_with_multihash, CONF, "img", src, size, store_id,
                                "sha256"), src.tell()))
        results.append((outcome(lib.add, CONF, "img", io.BytesIO(DATA), size, store_id), None))
    assert results[0] == results[2] and results[1] == results[3]
    assert results[0][0] == ("error", "Invalid", message)
    assert list(gsfs_mb.get_store_from_store_identifier(store_id).list_images()) == []
    for d in ("fast", "cheap", "high", "low"):
        if (both.tmp / d).exists():
            assert os.listdir(both.tmp / d) == []


def test_duplicate_errors_are_equal(both):
    original = gsfs_mb.add(CONF, "dup", io.BytesIO(b"original"), 8, "fast")[0]
    before = os.stat(path_of(original))
    gs = outcome(lambda: glance_store.add_with_multihash(
        CONF, "dup", io.BytesIO(DATA), len(DATA), "fast", "sha256"))
    ours = outcome(lambda: gsfs_mb.add_with_multihash(
        CONF, "dup", io.BytesIO(DATA), len(DATA), "fast", "sha256"))
    assert gs == ours == ("error", "Duplicate", "Image %s already exists" % path_of(original))
    assert outcome(lambda: glance_store.add(CONF, "dup", io.BytesIO(DATA), 0, "fast")) == \
        outcome(lambda: gsfs_mb.add(CONF, "dup", io.BytesIO(DATA), 0, "fast"))
    after = os.stat(path_of(original))
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    with open(path_of(original), "rb") as f:
        assert f.read() == b"original"
    assert os.listdir(both.tmp / "fast") == ["dup"]


@pytest.mark.parametrize("algo", ["bogus", "SHA256", "", "sha-256"])
def test_unknown_algo_errors_are_equal(both, algo):
    gs = outcome(lambda: glance_store.add_with_multihash(
        CONF, "img", io.BytesIO(DATA), len(DATA), "fast", algo))
    ours = outcome(lambda: gsfs_mb.add_with_multihash(
        CONF, "img", io.BytesIO(DATA), len(DATA), "fast", algo))
    assert gs == ours == ("error", "UnknownHashingAlgo",
                          "Unknown hashing algorithm identifier: %s" % algo)
    assert os.listdir(both.tmp / "fast") == []


@pytest.mark.parametrize("backend", ["nope", "broken"])
def test_unknown_or_disabled_store_errors_are_equal(both, backend):
    for call in (lambda lib: lib.add_with_multihash(CONF, "img", io.BytesIO(DATA), 0,
                                                    backend, "sha256"),
                 lambda lib: lib.add(CONF, "img", io.BytesIO(DATA), 0, backend)):
        gs, ours = outcome(call, glance_store), outcome(call, gsfs_mb)
        assert gs == ours
        assert gs[1] == {"nope": "UnknownScheme", "broken": "StoreAddDisabled"}[backend]


def test_get_and_delete_results_are_equal(both):
    uri = glance_store.add(CONF, "img", io.BytesIO(DATA[:23]), 23, "cheap")[0]
    for kwargs in ({}, {"offset": 6}, {"offset": 6, "chunk_size": 5}, {"chunk_size": 9},
                   {"offset": 20, "chunk_size": 100}, {"offset": 23}, {"offset": 99},
                   {"offset": 99, "chunk_size": 2}):
        assert chunks(glance_store.get(uri, "cheap", **kwargs)) == \
            chunks(gsfs_mb.get(uri, "cheap", **kwargs)), kwargs
        # search mode: glance_store serves the URI through the first file store
        # (fast, 64 KiB chunks), gsfs through the one whose datadir holds it (cheap,
        # 4-byte chunks): same bytes and size, different chunking
        gs_data, gs_size = glance_store.get(uri, None, **kwargs)
        our_data, our_size = gsfs_mb.get(uri, None, **kwargs)
        assert (b"".join(gs_data), gs_size) == (b"".join(our_data), our_size), kwargs
    assert glance_store.get_size_from_uri_and_backend(uri, "cheap") == \
        gsfs_mb.get_size_from_uri_and_backend(uri, "cheap") == 23
    assert glance_store.set_acls_for_multi_store(uri, "cheap") is None
    assert gsfs_mb.set_acls_for_multi_store(uri, "cheap") is None
    missing = "file://%s/cheap/missing" % both.tmp
    for target, backend in ((missing, "cheap"), ("ftp://host/img", "cheap"),
                            ("file://", "cheap"), (uri, "nope"), (missing, None),
                            ("s3://host/bucket/key", "cheap"), ("ftp://host/img", None)):
        for op in ("get", "delete", "get_size_from_uri_and_backend"):
            if op == "get_size_from_uri_and_backend" and not backend:
                continue     # no search mode for get_size
            gs = outcome(getattr(glance_store, op), target, backend)
            ours = outcome(getattr(gsfs_mb, op), target, backend)
            assert gs == ours, (op, target, backend)
            assert gs[0] == "error"
    assert glance_store.delete(uri, "cheap") is None
    gs = outcome(lambda: glance_store.delete(uri, "cheap"))
    assert gs == outcome(lambda: gsfs_mb.delete(uri, "cheap"))
    assert gs[:2] == ("error", "NotFound")


def test_check_location_metadata_is_equal(both):
    for value in ({"a": ["x", 1]}, {"a": b"x"}, {"a": {"b": None}}, [["x", 2.0]], "s", {},
                  {"a": ("t",)}):
        assert outcome(glance_store.check_location_metadata, value) == \
            outcome(gsfs_mb.check_location_metadata, value)


# ================================================================ deliberate differences

def test_difference_chunk_size_zero(both):
    """get(chunk_size=0): both return the file size, glance_store yields no data
    (its ChunkedFile reads min(chunk, 0) bytes), gsfs the whole file."""
    uri = gsfs_mb.add(CONF, "img", io.BytesIO(DATA[:10]), 10, "cheap")[0]
    assert chunks(glance_store.get(uri, "cheap", chunk_size=0)) == ([], 10)
    data, size = gsfs_mb.get(uri, "cheap", chunk_size=0)
    assert (b"".join(data), size) == (DATA[:10], 10)


def test_difference_shake_algorithms(both):
    """glance_store accepts shake_*, writes the file, then fails in hexdigest()
    and leaves the file; gsfs refuses before reading any byte."""
    src = io.BytesIO(DATA)
    gs = outcome(lambda: glance_store.add_with_multihash(
        CONF, "img", src, len(DATA), "fast", "shake_128"))
    assert gs[:2] == ("error", "TypeError")
    assert os.listdir(both.tmp / "fast") == ["img"]            # left behind
    os.unlink(both.tmp / "fast" / "img")
    src = io.BytesIO(DATA)
    ours = outcome(lambda: gsfs_mb.add_with_multihash(
        CONF, "img", src, len(DATA), "fast", "shake_128"))
    assert ours == ("error", "UnknownHashingAlgo",
                    "Unknown hashing algorithm identifier: shake_128")
    assert src.tell() == 0 and os.listdir(both.tmp / "fast") == []


@pytest.mark.parametrize("data", [b"a bytes object", "a str"], ids=["bytes", "str"])
def test_difference_non_bytes_data(both, data):
    gs = outcome(lambda: glance_store.add_with_multihash(
        CONF, "img", data, 0, "fast", "sha256"))
    assert gs[:2] == ("error", "TypeError")
    ours = outcome(lambda: gsfs_mb.add_with_multihash(CONF, "img", data, 0, "fast", "sha256"))
    assert ours[:2] == ("error", "Invalid")
    assert os.listdir(both.tmp / "fast") == []


def test_difference_image_id_with_a_slash(both):
    gs = outcome(lambda: glance_store.add(CONF, "a/b", io.BytesIO(b"x"), 1, "fast"))
    assert gs[:2] == ("error", "FileNotFoundError")
    ours = outcome(lambda: gsfs_mb.add(CONF, "a/b", io.BytesIO(b"x"), 1, "fast"))
    assert ours[:2] == ("error", "Invalid")


def test_difference_reads_confined_to_the_datadirs(both):
    uri = glance_store.add(CONF, "img", io.BytesIO(b"in fast"), 7, "fast")[0]
    # glance_store serves any file:// path through any file store
    assert b"".join(glance_store.get(uri, "cheap")[0]) == b"in fast"
    assert outcome(lambda: gsfs_mb.get(uri, "cheap"))[:2] == ("error", "NotFound")
    assert outcome(lambda: gsfs_mb.delete(uri, "cheap"))[:2] == ("error", "NotFound")
    assert os.path.exists(path_of(uri))


def test_difference_duplicate_across_datadirs(both):
    """With several datadirs glance_store checks only the chosen one; gsfs refuses
    an id that exists in any of the store's datadirs."""
    (both.tmp / "low" / "img").write_bytes(b"low")
    gs = outcome(lambda: glance_store.add(CONF, "img", io.BytesIO(b"x"), 1, "multi"))
    assert gs[0] == "ok" and gs[1][0] == "file://%s/high/img" % both.tmp
    os.unlink(both.tmp / "high" / "img")
    ours = outcome(lambda: gsfs_mb.add(CONF, "img", io.BytesIO(b"x"), 1, "multi"))
    assert ours == ("error", "Duplicate", "Image %s/low/img already exists" % both.tmp)


RESERVED_PROBE = r"""
import io, json, os, sys
from oslo_config import cfg
CONF = cfg.CONF
CONF.register_opt(cfg.DictOpt("enabled_backends"))
CONF(args=[], default_config_files=[sys.argv[1]])
reserved = {"os_glance_staging_store": "file", "os_glance_tasks_store": "file"}
lib = sys.argv[2]
if lib == "glance_store":
    import glance_store as m
else:
    from gsfs import multi_backend as m
m.register_store_opts(CONF, reserved_stores=reserved)
m.create_multi_stores(CONF, reserved_stores=reserved)
uri = m.add(CONF, "task1", io.BytesIO(b"abc"), 3, "os_glance_tasks_store")[0]
print(json.dumps({"uri": uri, "listing": sorted(os.listdir("/var/lib/glance"))}))
"""


def test_difference_reserved_store_default_datadir(tmp_path):
    """Unset datadir of a reserved store: glance_store uses the shared
    /var/lib/glance/images, gsfs /var/lib/glance/<id>. Run in a private mount
    namespace with a tmpfs over /var/lib: the host's /var/lib is not touched."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1)")
    ini = write_shared_conf(tmp_path)
    text = ini.read_text()
    ini.write_text(text.replace("[os_glance_tasks_store]\nfilesystem_store_datadir = %s/tasks\n"
                                % tmp_path, ""))
    probe = tmp_path / "probe.py"
    probe.write_text(RESERVED_PROBE)
    before = os.path.exists("/var/lib/glance")
    out = {}
    for lib in ("glance_store", "gsfs"):
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o size=4m tmpfs /var/lib && exec "$0" "$1" "$2" "$3"',
             sys.executable, str(probe), str(ini), lib],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[lib] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["glance_store"] == {"uri": "file:///var/lib/glance/images/task1",
                                   "listing": ["images"]}
    assert out["gsfs"] == {"uri": "file:///var/lib/glance/os_glance_tasks_store/task1",
                           "listing": ["os_glance_tasks_store"]}
    assert os.path.exists("/var/lib/glance") == before


# ================================================================ s3 (radosgw)

MiB = 1024 * 1024

S3_CONF = """\
[DEFAULT]
enabled_backends = fast:file, cloud:s3

[glance_store]
default_backend = cloud

[fast]
filesystem_store_datadir = {tmp}/fast

[cloud]
s3_store_host = {endpoint}
s3_store_access_key = {access_key}
s3_store_secret_key = {secret_key}
s3_store_bucket = {bucket}
s3_store_bucket_url_format = path
s3_store_create_bucket_on_put = false
s3_store_large_object_size = 5
s3_store_large_object_chunk_size = 5
s3_store_thread_pools = 4
"""


@pytest.fixture
def both_s3(tmp_path, ceph, s3_bucket):
    """glance_store and gsfs on one glance-api.conf with an s3 store on radosgw."""
    wipe_conf()
    reset_libraries()
    ini = tmp_path / "glance-api.conf"
    ini.write_text(S3_CONF.format(tmp=tmp_path, endpoint=ceph.rgw_endpoint, bucket=s3_bucket,
                                  access_key=ceph.access_key, secret_key=ceph.secret_key))
    CONF.register_opt(cfg.DictOpt("enabled_backends"))
    CONF(args=[], default_config_files=[str(ini)])
    glance_store.register_store_opts(CONF)
    gs_count = glance_store.create_multi_stores(CONF)
    gsfs_mb.register_store_opts(CONF)
    gsfs_count = gsfs_mb.create_multi_stores(CONF)
    host = ceph.rgw_endpoint.split("://", 1)[-1].rstrip("/")
    try:
        yield SimpleNamespace(tmp=tmp_path, bucket=s3_bucket, s3=ceph.s3_client(),
                              prefix="s3://%s/%s" % (host, s3_bucket),
                              gs_count=gs_count, gsfs_count=gsfs_count)
    finally:
        reset_libraries()
        wipe_conf()


def s3_keys(env):
    resp = env.s3.list_objects_v2(Bucket=env.bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def s3_uploads(env):
    return env.s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", [])


S3_SIZES = {"small": 1000, "multipart": 12 * MiB + 3}


@pytest.mark.ceph
def test_s3_both_load_the_same_stores(both_s3):
    assert both_s3.gs_count == both_s3.gsfs_count == 5
    gs = glance_store.get_store_from_store_identifier("cloud")
    ours = gsfs_mb.get_store_from_store_identifier("cloud")
    assert gs.url_prefix == ours.url_prefix == both_s3.prefix
    assert sorted(glance_store.get_known_schemes_for_multi_store()) == sorted(
        gsfs_mb.get_known_schemes_for_multi_store())


@pytest.mark.ceph
@pytest.mark.parametrize("kind", list(S3_SIZES))
def test_s3_glance_store_writes_gsfs_reads_sizes_deletes(both_s3, kind):
    data = os.urandom(S3_SIZES[kind])
    uri = glance_store.add_with_multihash(
        CONF, "img-a", io.BytesIO(data), len(data), "cloud", "sha256")[0]
    assert uri == "%s/img-a" % both_s3.prefix
    got, size = gsfs_mb.get(uri, "cloud")
    assert (b"".join(got), size) == (data, len(data))
    got, size = gsfs_mb.get(uri, "cloud", offset=999, chunk_size=1)
    assert (b"".join(got), size) == (data[999:1000], 1)
    assert gsfs_mb.get_size_from_uri_and_backend(uri, "cloud") == len(data)
    gsfs_mb.delete(uri, "cloud")
    assert s3_keys(both_s3) == []
    assert outcome(glance_store.get, uri, "cloud")[:2] == ("error", "NotFound")


@pytest.mark.ceph
@pytest.mark.parametrize("kind", list(S3_SIZES))
@pytest.mark.parametrize("declared", ["known", "zero"])
def test_s3_gsfs_writes_glance_store_reads_sizes_deletes(both_s3, kind, declared):
    data = os.urandom(S3_SIZES[kind])
    size = len(data) if declared == "known" else 0
    uri = gsfs_mb.add_with_multihash(CONF, "img-b", io.BytesIO(data), size, "cloud",
                                     "sha512")[0]
    got, n = glance_store.get(uri, "cloud")
    assert (b"".join(got), n) == (data, len(data))
    assert glance_store.get_size_from_uri_and_backend(uri, "cloud") == len(data)
    glance_store.delete(uri, "cloud")
    # glance_store knows nothing of gsfs's metadata sidecar: it stays behind
    assert s3_keys(both_s3) == [".gsfs-meta/img-b"]
    assert outcome(gsfs_mb.get, uri, "cloud")[:2] == ("error", "NotFound")
    # until gsfs's next leftover pass (the daemon's, at start and every hour)
    done = gsfs_mb.get_store_from_store_identifier("cloud").cleanup_leftovers()
    assert any(".gsfs-meta/img-b" in line for line in done), done
    assert s3_keys(both_s3) == []


@pytest.mark.ceph
@pytest.mark.parametrize("kind", list(S3_SIZES) + ["empty"])
@pytest.mark.parametrize("declared", ["known", "zero"])
def test_s3_add_with_multihash_tuples_are_equal(both_s3, kind, declared):
    data = b"" if kind == "empty" else os.urandom(S3_SIZES[kind])
    size = len(data) if declared == "known" else 0
    results = []
    for lib in (glance_store, gsfs_mb):
        results.append(outcome(lib.add_with_multihash, CONF, "img-c", io.BytesIO(data), size,
                               "cloud", "sha256"))
        assert s3_keys(both_s3) in (["img-c"], [".gsfs-meta/img-c", "img-c"])
        obj = both_s3.s3.get_object(Bucket=both_s3.bucket, Key="img-c")
        assert obj["Body"].read() == data
        both_s3.s3.delete_object(Bucket=both_s3.bucket, Key="img-c")
        both_s3.s3.delete_object(Bucket=both_s3.bucket, Key=".gsfs-meta/img-c")
    assert results[0] == results[1]
    assert results[0] == ("ok", ("%s/img-c" % both_s3.prefix, len(data),
                                 hashlib.md5(data).hexdigest(),
                                 hashlib.sha256(data).hexdigest(), {"store": "cloud"}))
    assert s3_uploads(both_s3) == []


@pytest.mark.ceph
def test_s3_error_cases_are_equal(both_s3):
    data = os.urandom(6 * MiB)
    gsfs_mb.add_with_multihash(CONF, "dup", io.BytesIO(b"original"), 8, "cloud", "sha256")
    cases = {
        "duplicate": ("dup", data, len(data), "cloud", "sha256"),
        "size-exceeds-single": ("a", data[:1000], 10, "cloud", "sha256"),
        "size-mismatch-single": ("b", data[:1000], 2000, "cloud", "sha256"),
        "size-exceeds-multipart": ("c", data, 5 * MiB + 1, "cloud", "sha256"),
        "size-mismatch-multipart": ("d", data, 7 * MiB, "cloud", "sha256"),
        "unknown-algo": ("e", data, len(data), "cloud", "bogus"),
        "upper-case-algo": ("e", data, len(data), "cloud", "SHA256"),
        "unknown-store": ("f", data, len(data), "nope", "sha256"),
    }
    for name, (image_id, payload, size, backend, algo) in cases.items():
        gs = outcome(glance_store.add_with_multihash, CONF, image_id, io.BytesIO(payload),
                     size, backend, algo)
        ours = outcome(gsfs_mb.add_with_multihash, CONF, image_id, io.BytesIO(payload),
                       size, backend, algo)
        assert gs[0] == ours[0] == "error", name
        assert gs[1] == ours[1], (name, gs, ours)
        if name in ("duplicate", "unknown-algo", "upper-case-algo", "unknown-store"):
            assert gs == ours, name
        if name.endswith("single"):
            assert gs == ours, name
        # multipart overflow: glance_store reads on and reports "Size mismatch: expected
        # 5242881 bytes, got 6291456 bytes"; gsfs stops at the first part that crosses
        # the declared size and says "Size exceeds" (same class, Invalid)
    assert [k for k in s3_keys(both_s3) if not k.startswith(".gsfs-meta/")] == ["dup"]
    assert both_s3.s3.get_object(Bucket=both_s3.bucket, Key="dup")["Body"].read() == b"original"
    assert s3_uploads(both_s3) == []
    missing = "%s/none" % both_s3.prefix
    for op in ("get", "get_size_from_uri_and_backend", "delete"):
        gs = outcome(getattr(glance_store, op), missing, "cloud")
        ours = outcome(getattr(gsfs_mb, op), missing, "cloud")
        assert gs[:2] == ours[:2] == ("error", "NotFound"), op
    assert outcome(glance_store.get, missing, None) == outcome(gsfs_mb.get, missing, None)


@pytest.mark.ceph
def test_s3_differences(both_s3):
    """add() (4-tuple path): glance_store's s3 driver needs hashing_algo (TypeError),
    gsfs's works; get with an offset: StoreRandomGetNotSupported vs served."""
    data = os.urandom(3000)
    gs = outcome(glance_store.add, CONF, "img", io.BytesIO(data), len(data), "cloud")
    assert gs[:2] == ("error", "TypeError")
    assert s3_keys(both_s3) == []
    assert s3_keys(both_s3) == []
    ours = gsfs_mb.add(CONF, "img", io.BytesIO(data), len(data), "cloud")
    assert ours == ("%s/img" % both_s3.prefix, len(data), hashlib.md5(data).hexdigest(),
                    {"store": "cloud"})
    uri = ours[0]
    assert outcome(glance_store.get, uri, "cloud", offset=10)[:2] == (
        "error", "StoreRandomGetNotSupported")
    got, n = gsfs_mb.get(uri, "cloud", offset=10, chunk_size=20)
    assert (b"".join(got), n) == (data[10:30], 20)
    # both accept the credentialed URI form of older releases
    host = both_s3.prefix[len("s3://"):]
    old = "s3://%s:%s@%s/img" % ("AK", "SK", host)
    assert outcome(gsfs_mb.get_size_from_uri_and_backend, old, "cloud") == ("ok", len(data))


@pytest.mark.ceph
def test_s3_metadata_of_an_image_replaced_through_glance_store(both_s3):
    old, new = b"old contents", b"new contents!"
    uri = gsfs_mb.add_with_multihash(CONF, "img", io.BytesIO(old), len(old), "cloud",
                                     "sha256")[0]
    store = gsfs_mb.get_store_from_store_identifier("cloud")
    assert store.get_image_meta(store.location_for("img")).get("checksum") == \
        hashlib.md5(old).hexdigest()
    glance_store.delete(uri, "cloud")
    glance_store.add_with_multihash(CONF, "img", io.BytesIO(new), len(new), "cloud", "sha256")
    meta = store.get_image_meta(store.location_for("img"))
    assert meta.get("checksum") in (None, hashlib.md5(new).hexdigest())


# ================================================================ rbd (Ceph pool)

RBD_CONF = """\
[DEFAULT]
enabled_backends = fast:file, ceph:rbd

[glance_store]
default_backend = ceph

[fast]
filesystem_store_datadir = {tmp}/fast

[ceph]
rbd_store_pool = {pool}
rbd_store_user = {user}
rbd_store_ceph_conf = {conf}
rbd_store_chunk_size = 1
rados_connect_timeout = 30
"""


@pytest.fixture
def both_rbd(tmp_path, ceph):
    """glance_store and gsfs on one glance-api.conf with an rbd store on the cluster."""
    import rados
    import rbd
    wipe_conf()
    reset_libraries()
    ini = tmp_path / "glance-api.conf"
    ini.write_text(RBD_CONF.format(tmp=tmp_path, pool=ceph.pool, user=ceph.rbd_user,
                                   conf=ceph.conf_path))
    CONF.register_opt(cfg.DictOpt("enabled_backends"))
    CONF(args=[], default_config_files=[str(ini)])
    glance_store.register_store_opts(CONF)
    gs_count = glance_store.create_multi_stores(CONF)
    gsfs_mb.register_store_opts(CONF)
    gsfs_count = gsfs_mb.create_multi_stores(CONF)
    tag = os.urandom(4).hex()

    def images():
        """This test's images (ids containing its tag) and any gsfs temp image."""
        with rados.Rados(conffile=ceph.conf_path, rados_id=ceph.rbd_user) as cluster:
            with cluster.open_ioctx(ceph.pool) as ioctx:
                return sorted(n for n in rbd.RBD().list(ioctx) if tag in n)

    try:
        yield SimpleNamespace(tmp=tmp_path, fsid=ceph.fsid, pool=ceph.pool, tag=tag,
                              prefix="rbd://%s/%s/" % (ceph.fsid, ceph.pool), images=images,
                              gs_count=gs_count, gsfs_count=gsfs_count)
    finally:
        for name in images():
            outcome(glance_store.delete, "rbd://%s/%s/%s/snap" % (ceph.fsid, ceph.pool, name),
                    "ceph")
        reset_libraries()
        wipe_conf()


RBD_SIZES = {"small": 1000, "chunks": 3 * MiB + 5}


@pytest.mark.ceph
def test_rbd_glance_store_loads_with_write_access(both_rbd):
    """glance_store's rbd driver loads in the venv (rados/rbd bindings present)."""
    assert both_rbd.gs_count == both_rbd.gsfs_count == 3
    gs = glance_store.get_store_from_store_identifier("ceph")
    ours = gsfs_mb.get_store_from_store_identifier("ceph")
    assert gs.is_capable(glance_store.capabilities.BitMasks.WRITE_ACCESS)
    assert gs.url_prefix == ours.url_prefix == both_rbd.prefix


@pytest.mark.ceph
@pytest.mark.parametrize("kind", list(RBD_SIZES))
def test_rbd_glance_store_writes_gsfs_reads_sizes_deletes(both_rbd, kind):
    data = os.urandom(RBD_SIZES[kind])
    image_id = "img-a-%s" % both_rbd.tag
    uri = glance_store.add_with_multihash(
        CONF, image_id, io.BytesIO(data), len(data), "ceph", "sha256")[0]
    assert uri == "%s%s/snap" % (both_rbd.prefix, image_id)
    got, size = gsfs_mb.get(uri, "ceph")
    assert (b"".join(got), size) == (data, len(data))
    got, size = gsfs_mb.get(uri, "ceph", offset=len(data) - 3, chunk_size=2)
    assert (b"".join(got), size) == (data[-3:-1], 2)
    assert gsfs_mb.get_size_from_uri_and_backend(uri, "ceph") == len(data)
    assert gsfs_mb.delete(uri, "ceph") is None
    assert both_rbd.images() == []
    assert outcome(glance_store.get_size_from_uri_and_backend, uri, "ceph")[:2] == (
        "error", "NotFound")


@pytest.mark.ceph
@pytest.mark.parametrize("kind", list(RBD_SIZES))
@pytest.mark.parametrize("declared", ["known", "zero"])
def test_rbd_gsfs_writes_glance_store_reads_sizes_deletes(both_rbd, kind, declared):
    data = os.urandom(RBD_SIZES[kind])
    image_id = "img-b-%s" % both_rbd.tag
    size = len(data) if declared == "known" else 0
    uri = gsfs_mb.add_with_multihash(CONF, image_id, io.BytesIO(data), size, "ceph",
                                     "sha512")[0]
    assert both_rbd.images() == [image_id]                   # no temp image left
    got, n = glance_store.get(uri, "ceph")
    assert (b"".join(got), n) == (data, len(data))
    assert glance_store.get_size_from_uri_and_backend(uri, "ceph") == len(data)
    assert glance_store.delete(uri, "ceph") is None
    assert both_rbd.images() == []
    assert outcome(gsfs_mb.get, uri, "ceph")[:2] == ("error", "NotFound")


@pytest.mark.ceph
@pytest.mark.parametrize("kind", list(RBD_SIZES) + ["empty"])
@pytest.mark.parametrize("declared", ["known", "zero"])
def test_rbd_add_tuples_are_equal(both_rbd, kind, declared):
    data = b"" if kind == "empty" else os.urandom(RBD_SIZES[kind])
    size = len(data) if declared == "known" else 0
    image_id = "img-c-%s" % both_rbd.tag
    results = []
    for lib in (glance_store, gsfs_mb):
        results.append(outcome(lib.add_with_multihash, CONF, image_id, io.BytesIO(data), size,
                               "ceph", "sha256"))
        assert results[-1][0] == "ok", results[-1]
        uri = results[-1][1][0]
        got, n = glance_store.get(uri, "ceph")
        assert (b"".join(got), n) == (data, len(data))
        assert glance_store.delete(uri, "ceph") is None
    assert results[0] == results[1]
    assert results[0][1] == ("%s%s/snap" % (both_rbd.prefix, image_id), len(data),
                             hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest(),
                             {"store": "ceph"})
    # the 4-tuple path (back_compat_add on both rbd drivers)
    results = []
    for lib in (glance_store, gsfs_mb):
        results.append(outcome(lib.add, CONF, image_id, io.BytesIO(data), size, "ceph"))
        assert glance_store.delete(results[-1][1][0], "ceph") is None
    assert results[0] == results[1] and len(results[0][1]) == 4
    assert both_rbd.images() == []


@pytest.mark.ceph
def test_rbd_error_cases_are_equal(both_rbd):
    data = os.urandom(2 * MiB + 7)
    dup = "dup-%s" % both_rbd.tag
    gsfs_mb.add_with_multihash(CONF, dup, io.BytesIO(b"original"), 8, "ceph", "sha256")
    cases = {
        "duplicate": (dup, len(data), "ceph", "sha256"),
        "size-exceeds": ("a-%s" % both_rbd.tag, MiB, "ceph", "sha256"),
        "size-mismatch": ("b-%s" % both_rbd.tag, 3 * MiB, "ceph", "sha256"),
        "unknown-algo": ("c-%s" % both_rbd.tag, len(data), "ceph", "bogus"),
        "unknown-store": ("d-%s" % both_rbd.tag, len(data), "nope", "sha256"),
    }
    for name, (image_id, size, backend, algo) in cases.items():
        gs = outcome(glance_store.add_with_multihash, CONF, image_id, io.BytesIO(data),
                     size, backend, algo)
        ours = outcome(gsfs_mb.add_with_multihash, CONF, image_id, io.BytesIO(data),
                       size, backend, algo)
        assert gs[0] == ours[0] == "error", (name, gs, ours)
        assert gs == ours, name
    assert both_rbd.images() == [dup]
    got, n = glance_store.get("%s%s/snap" % (both_rbd.prefix, dup), "ceph")
    assert (b"".join(got), n) == (b"original", 8)
    missing = "%smissing-%s/snap" % (both_rbd.prefix, both_rbd.tag)
    for op in ("get_size_from_uri_and_backend", "delete"):
        gs = outcome(getattr(glance_store, op), missing, "ceph")
        ours = outcome(getattr(gsfs_mb, op), missing, "ceph")
        assert gs[:2] == ours[:2] == ("error", "NotFound"), (op, gs, ours)


@pytest.mark.ceph
def test_rbd_differences(both_rbd):
    """get with offset/chunk_size: glance_store refuses, gsfs serves it."""
    data = os.urandom(5000)
    image_id = "img-d-%s" % both_rbd.tag
    uri = glance_store.add_with_multihash(CONF, image_id, io.BytesIO(data), len(data), "ceph",
                                          "sha256")[0]
    assert outcome(glance_store.get, uri, "ceph", offset=10)[:2] == (
        "error", "StoreRandomGetNotSupported")
    got, n = gsfs_mb.get(uri, "ceph", offset=10, chunk_size=20)
    assert (b"".join(got), n) == (data[10:30], 20)
    # gsfs keeps one instance per store id; glance_store builds a new one per lookup
    assert gsfs_mb.get_store_from_store_identifier("ceph") is \
        gsfs_mb.get_store_from_store_identifier("ceph")
    assert glance_store.get_store_from_store_identifier("ceph") is not \
        glance_store.get_store_from_store_identifier("ceph")
