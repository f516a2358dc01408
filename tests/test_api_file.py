"""gsfs.multi_backend and the ``file`` driver, configured from a real glance-api.conf.

Covers every behaviour of the reference's §3 (the multi-backend API) and §9.1
(the filesystem driver), the deliberate gsfs differences (docs/compatibility.md)
and the driver extensions the filesystem layer uses. Real files under tmp_path,
real mounts (tmpfs, ramfs) where a filesystem property is needed; no mocks.

gsfs.multi_backend reads the process-wide oslo ``cfg.CONF``, as glance_store does.
The ``glance`` fixture (through tests/storeconf.py) puts that object and the
store registry back to their import-time state before and after each test, so
every test is independent.
"""

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from oslo_config import cfg

import gsfs
from gsfs import capabilities, driver, exceptions, multi_backend
from gsfs.drivers import filesystem
from tests.storeconf import load_stores, reset_global_state
from tests.verifiers import RefuseToPublish

CONF = cfg.CONF
RESERVED = {"os_glance_staging_store": "file", "os_glance_tasks_store": "file"}
TMP_PREFIX = ".gsfs-tmp."
DATA = b"hello world!" * 1000          # 12000 bytes
MD5_EMPTY = "d41d8cd98f00b204e9800998ecf8427e"


# ---------------------------------------------------------------- the config file

GLANCE_API_CONF = """\
[DEFAULT]
# a production-style glance-api.conf: gsfs ignores what it does not know
debug = false
bind_host = 0.0.0.0
bind_port = 9292
workers = 4
transport_url = rabbit://glance:secret@rabbit.example:5672/
enabled_backends = {enabled}

[glance_store]
{default_backend}

[keystone_authtoken]
www_authenticate_uri = http://keystone.example:5000
auth_url = http://keystone.example:5000
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = secret

[database]
connection = mysql+pymysql://glance:secret@db.example/glance

[paste_deploy]
flavor = keystone

[oslo_policy]
enforce_new_defaults = true

[fast]
store_description = Fast local disk
weight = 100
filesystem_store_datadir = {tmp}/fast

[cheap]
store_description = Slow bulk disk
weight = 10
filesystem_store_datadir = {tmp}/cheap
filesystem_store_chunk_size = 4

[cinder1]
store_description = Block storage gsfs has no driver for
cinder_catalog_info = volumev3::publicURL
cinder_store_auth_address = http://keystone.example:5000/v3
cinder_store_user_name = glance
cinder_store_password = secret
cinder_store_project_name = service

[os_glance_staging_store]
filesystem_store_datadir = {tmp}/staging

{tasks_section}
{extra}"""

TASKS_SECTION = """\
[os_glance_tasks_store]
filesystem_store_datadir = {tmp}/tasks
"""


def render_conf(tmp, enabled="fast:file, cheap:file, cinder1:cinder", extra="",
                default_backend="fast", tasks_datadir=True):
    return GLANCE_API_CONF.format(
        enabled=enabled, tmp=tmp,
        default_backend="default_backend = %s" % default_backend if default_backend else "",
        tasks_section=TASKS_SECTION.format(tmp=tmp) if tasks_datadir else "",
        extra=textwrap.dedent(extra).format(tmp=tmp))


@pytest.fixture
def glance(tmp_path):
    """A loader: write glance-api.conf, then configure the stores as Glance does
    (tests/storeconf.py; the global CONF and the store registry are reset before
    and after the test)."""
    reset_global_state()

    def load(enabled="fast:file, cheap:file, cinder1:cinder", extra="", default_backend="fast",
             reserved=RESERVED, register_enabled=True):
        load_stores(tmp_path, render_conf(tmp_path, enabled, extra, default_backend),
                    reserved_stores=reserved, filename="glance-api.conf",
                    register_enabled=register_enabled)
        return SimpleNamespace(count=load_stores.last_count, ini=tmp_path / "glance-api.conf",
                               tmp=tmp_path, fast=tmp_path / "fast", cheap=tmp_path / "cheap",
                               staging=tmp_path / "staging", tasks=tmp_path / "tasks")

    yield load
    reset_global_state()


@pytest.fixture
def stores(glance):
    return glance()


def _mount(fstype, path, options=None):
    cmd = ["mount", "-t", fstype]
    if options:
        cmd += ["-o", options]
    subprocess.run(cmd + [fstype, str(path)], check=True, capture_output=True)


def _umount(path):
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (a full filesystem on demand); always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount("tmpfs", mnt, "size=256k")
    try:
        yield mnt
    finally:
        _umount(mnt)


@pytest.fixture
def ramfs(tmp_path):
    """A ramfs: a filesystem without user extended attributes; always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a ramfs needs root")
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    _mount("ramfs", mnt)
    try:
        yield mnt
    finally:
        _umount(mnt)


# ---------------------------------------------------------------- helpers

def temp_files(*dirs):
    return [n for d in dirs for n in os.listdir(d) if n.startswith(TMP_PREFIX)]


def slurp(iterable):
    return b"".join(iterable)


class Verifier:
    """A signature verifier stand-in: records what it is fed."""

    def __init__(self):
        self.data = b""

    def update(self, chunk):
        self.data += bytes(chunk)


def add_file(store_id, image_id, data=DATA, size=None, algo="sha256"):
    return multi_backend.add_with_multihash(
        CONF, image_id, io.BytesIO(data), len(data) if size is None else size, store_id, algo)


# ================================================================ configuration, §2/§3

def test_glance_api_conf_loads_with_one_warning_for_cinder(glance, caplog):
    caplog.set_level(logging.WARNING)
    s = glance()
    # 2 operator file stores + 2 reserved file stores, 2 schemes each: scheme
    # registrations, not stores (glance_store's documented quirk)
    assert s.count == 8
    assert sorted(multi_backend.get_known_schemes_for_multi_store()) == ["file", "filesystem"]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and "cinder" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "cinder1:cinder" in warnings[0]
    assert multi_backend.verify_store() is None
    # reserved stores are loaded but not added to enabled_backends
    assert dict(CONF.enabled_backends) == {"fast": "file", "cheap": "file", "cinder1": "cinder"}
    assert sorted(multi_backend.stores()) == sorted(
        ["fast", "cheap", "os_glance_staging_store", "os_glance_tasks_store"])
    # unrelated sections are there and untouched
    assert "[keystone_authtoken]" in s.ini.read_text()
    for d in (s.fast, s.cheap, s.staging, s.tasks):
        assert d.is_dir()


def test_count_without_reserved_stores(glance):
    s = glance(reserved=None)
    assert s.count == 4
    assert sorted(multi_backend.stores()) == ["cheap", "fast"]
    with pytest.raises(exceptions.UnknownScheme,
                       match="^Store for identifier os_glance_staging_store not found$"):
        multi_backend.get_store_from_store_identifier("os_glance_staging_store")


def test_enabled_backends_registered_by_gsfs_when_missing(glance):
    s = glance(register_enabled=False)
    assert s.count == 8
    assert CONF.enabled_backends["fast"] == "file"


def test_package_reexports_like_glance_store():
    assert gsfs.create_multi_stores is multi_backend.create_multi_stores
    assert gsfs.add_with_multihash is multi_backend.add_with_multihash
    assert gsfs.NotFound is exceptions.NotFound
    assert gsfs.Invalid is exceptions.Invalid
    assert hasattr(gsfs, "Indexable")
    assert not issubclass(exceptions.BackendException, exceptions.GlanceStoreException)


def test_get_store_from_store_identifier(stores):
    fast = multi_backend.get_store_from_store_identifier("fast")
    assert isinstance(fast, filesystem.Store)
    assert multi_backend.get_store_from_store_identifier("fast") is fast   # DRIVER_REUSABLE
    assert fast.capabilities & 0xFF == 0x4F
    assert fast.url_prefix == "file://%s/fast" % stores.tmp
    staging = multi_backend.get_store_from_store_identifier("os_glance_staging_store")
    assert staging.url_prefix == "file://%s" % stores.staging
    with pytest.raises(exceptions.UnknownScheme) as e:
        multi_backend.get_store_from_store_identifier("nope")
    assert str(e.value) == "Store for identifier nope not found"
    # an enabled store of a type gsfs lacks: its type is looked up as a scheme
    with pytest.raises(exceptions.UnknownScheme) as e:
        multi_backend.get_store_from_store_identifier("cinder1")
    assert str(e.value) == "Unknown scheme 'cinder' found in URI"


def test_verify_store_default_backend_not_set(glance):
    glance(default_backend=None)
    with pytest.raises(RuntimeError) as e:
        multi_backend.verify_store()
    assert str(e.value) == "'default_backend' config option is not set."
    # add without a backend and without a default: the lookup of None fails
    with pytest.raises(exceptions.UnknownScheme, match="^Store for identifier None not found$"):
        multi_backend.add(CONF, "x", io.BytesIO(b"x"), 1, None)


@pytest.mark.parametrize("default_backend", ["nope", "cinder1"])
def test_verify_store_unknown_default_backend(glance, default_backend):
    glance(default_backend=default_backend)
    with pytest.raises(RuntimeError) as e:
        multi_backend.verify_store()
    assert str(e.value) == "Store for identifier %s not found" % default_backend


def test_weights_and_descriptions_from_the_ini(stores):
    assert multi_backend.get_store_weight("fast") == 100
    assert multi_backend.get_store_weight("cheap") == 10
    assert multi_backend.get_store_weight("os_glance_staging_store") == 0
    assert CONF.fast.store_description == "Fast local disk"
    assert multi_backend.get_store_from_store_identifier("cheap").description == "Slow bulk disk"
    with pytest.raises(exceptions.UnknownScheme, match="^Store for identifier nope not found$"):
        multi_backend.get_store_weight("nope")
    with pytest.raises(exceptions.UnknownScheme, match="^Unknown scheme 'cinder' found in URI$"):
        multi_backend.get_store_weight("cinder1")


def test_backend_defaults_fill_unset_store_options(glance):
    s = glance(enabled="fast:file, other:file", extra="""
        [backend_defaults]
        filesystem_store_chunk_size = 3
        filesystem_store_file_perm = 600

        [other]
        filesystem_store_datadir = {tmp}/other
        filesystem_store_chunk_size = 5
        """)
    fast = multi_backend.get_store_from_store_identifier("fast")
    other = multi_backend.get_store_from_store_identifier("other")
    assert (fast.READ_CHUNKSIZE, other.READ_CHUNKSIZE) == (3, 5)   # group > backend_defaults
    assert fast.file_perm == other.file_perm == 600
    uri = add_file("fast", "img")[0]
    assert os.stat(uri[len("file://"):]).st_mode & 0o777 == 0o600
    assert (s.tmp / "other").is_dir()


# ================================================================ reserved stores

def test_reserved_store_with_explicit_datadir(stores):
    uri, size, md5, meta = multi_backend.add(
        CONF, "staged", io.BytesIO(DATA), len(DATA), "os_glance_staging_store")
    assert uri == "file://%s/staged" % stores.staging
    assert (size, md5, meta) == (len(DATA), hashlib.md5(DATA).hexdigest(),
                                 {"store": "os_glance_staging_store"})
    data, n = multi_backend.get(uri, "os_glance_staging_store")
    assert (slurp(data), n) == (DATA, len(DATA))
    # the search mode only walks enabled_backends, never the reserved stores
    with pytest.raises(exceptions.NotFound, match="^Image not found in any configured backend$"):
        multi_backend.get(uri, None)
    assert multi_backend.delete(uri, "os_glance_staging_store") is None
    assert not (stores.staging / "staged").exists()


RESERVED_DEFAULT_PROBE = r"""
import io, json, os, sys
from oslo_config import cfg
from gsfs import multi_backend
CONF = cfg.CONF
CONF(args=[], default_config_files=[sys.argv[1]])
reserved = {"os_glance_staging_store": "file", "os_glance_tasks_store": "file"}
multi_backend.register_store_opts(CONF, reserved_stores=reserved)
multi_backend.create_multi_stores(CONF, reserved_stores=reserved)
store = multi_backend.get_store_from_store_identifier("os_glance_tasks_store")
uri = multi_backend.add(CONF, "task1", io.BytesIO(b"abc"), 3, "os_glance_tasks_store")[0]
print(json.dumps({"datadir": store.datadir, "url_prefix": store.url_prefix, "uri": uri,
                  "var_lib_glance": sorted(os.listdir("/var/lib/glance"))}))
"""


def test_reserved_store_default_datadir_is_its_own(tmp_path):
    """gsfs gives an unset reserved store /var/lib/glance/<id> (glance_store falls
    back to the shared /var/lib/glance/images). Checked in a private mount
    namespace with a tmpfs over /var/lib, so the host's /var/lib is never touched."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    ini = tmp_path / "glance-api.conf"
    ini.write_text(render_conf(tmp_path, tasks_datadir=False))
    probe = tmp_path / "probe.py"
    probe.write_text(RESERVED_DEFAULT_PROBE)
    before = os.path.exists("/var/lib/glance")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=4m tmpfs /var/lib && exec "$0" "$1" "$2"',
         sys.executable, str(probe), str(ini)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["datadir"] == "/var/lib/glance/os_glance_tasks_store"
    assert out["url_prefix"] == "file:///var/lib/glance/os_glance_tasks_store"
    assert out["uri"] == "file:///var/lib/glance/os_glance_tasks_store/task1"
    assert out["var_lib_glance"] == ["os_glance_tasks_store"]     # no shared images dir
    assert os.path.exists("/var/lib/glance") == before
    assert not os.path.exists("/var/lib/glance/os_glance_tasks_store")


# ================================================================ add

def test_add_returns_glance_4_tuple_on_default_backend(stores):
    result = multi_backend.add(CONF, "img", io.BytesIO(DATA), len(DATA), None)
    assert result == ("file://%s/img" % stores.fast, len(DATA),
                      hashlib.md5(DATA).hexdigest(), {"store": "fast"})
    assert (stores.fast / "img").read_bytes() == DATA
    assert temp_files(stores.fast) == []


@pytest.mark.parametrize("algo", ["sha512", "sha256", "md5", "sha3_256", "blake2b"])
def test_add_with_multihash_returns_5_tuple(stores, algo):
    result = multi_backend.add_with_multihash(
        CONF, "img", io.BytesIO(DATA), len(DATA), "cheap", algo)
    assert result == ("file://%s/img" % stores.cheap, len(DATA),
                      hashlib.md5(DATA).hexdigest(), hashlib.new(algo, DATA).hexdigest(),
                      {"store": "cheap"})
    assert (stores.cheap / "img").read_bytes() == DATA


def test_add_with_multihash_default_backend_and_verifier(stores):
    verifier = Verifier()
    result = multi_backend.add_with_multihash(
        CONF, "img", iter([b"ab", b"", b"cd"]), 0, "", "sha512", verifier=verifier)
    assert result[0] == "file://%s/img" % stores.fast
    assert result[1:4] == (4, hashlib.md5(b"abcd").hexdigest(),
                           hashlib.sha512(b"abcd").hexdigest())
    assert verifier.data == b"abcd"


def test_add_from_a_real_file_object(stores, tmp_path):
    src = tmp_path / "src.img"
    src.write_bytes(DATA * 10)
    with open(src, "rb") as f:
        uri, size, md5, _mh, _meta = multi_backend.add_with_multihash(
            CONF, "big", f, 0, "fast", "sha256")
    assert (size, md5) == (len(DATA) * 10, hashlib.md5(DATA * 10).hexdigest())
    assert (stores.fast / "big").read_bytes() == DATA * 10


def test_integer_image_id_is_stored_as_its_str(stores):
    uri = multi_backend.add(CONF, 1234, io.BytesIO(b"x"), 1, "fast")[0]
    assert uri == "file://%s/1234" % stores.fast


def test_driver_add_back_compat_rules(stores):
    store = multi_backend.get_store_from_store_identifier("fast")
    md5 = hashlib.md5(DATA).hexdigest()
    sha = hashlib.sha256(DATA).hexdigest()

    def src():
        return io.BytesIO(DATA)

    def uri(image_id):
        return "file://%s/%s" % (stores.fast, image_id)

    n = len(DATA)
    meta = {"store": "fast"}
    # positional id, file, size (+ non-str context) → md5 inserted, 4-tuple
    assert store.add("a", src(), n) == (uri("a"), n, md5, meta)
    assert store.add("b", src(), n, {"user": "ctx"}) == (uri("b"), n, md5, meta)
    assert store.add("c", src(), n, context=None, verifier=None) == (uri("c"), n, md5, meta)
    # all keywords without hashing_algo, any order → 4-tuple
    assert store.add(image_size=n, image_file=src(), image_id="d") == (uri("d"), n, md5, meta)
    # a str in position 4, hashing_algo by keyword, or 7 arguments → 5-tuple
    assert store.add("e", src(), n, "sha256") == (uri("e"), n, md5, sha, meta)
    assert store.add("f", src(), n, hashing_algo="sha256") == (uri("f"), n, md5, sha, meta)
    assert store.add("g", src(), n, "sha256", None, None) == (uri("g"), n, md5, sha, meta)
    # too few arguments or an unknown keyword → TypeError, nothing written
    with pytest.raises(TypeError):
        store.add("h", src())
    with pytest.raises(TypeError):
        store.add("i", src(), n, bogus=1)
    assert sorted(os.listdir(stores.fast)) == list("abcdefg")
    assert store.add.__name__ == "op_checker"      # as in glance_store


def test_store_add_to_backend_wrappers(stores):
    store = multi_backend.get_store_from_store_identifier("cheap")
    r4 = multi_backend.store_add_to_backend("w4", io.BytesIO(b"abc"), 3, store)
    assert r4 == ("file://%s/w4" % stores.cheap, 3, hashlib.md5(b"abc").hexdigest(),
                  {"store": "cheap"})
    r5 = multi_backend.store_add_to_backend_with_multihash(
        "w5", io.BytesIO(b"abc"), 3, "sha384", store)
    assert r5[3] == hashlib.sha384(b"abc").hexdigest()


def test_duplicate_leaves_the_original_intact(stores):
    uri = add_file("fast", "img")[0]
    path = stores.fast / "img"
    os.utime(path, (1_000_000_000, 1_000_000_000))
    before = os.stat(path)
    for call in (lambda: add_file("fast", "img", b"other data"),
                 lambda: multi_backend.add(CONF, "img", io.BytesIO(b"zz"), 0, "fast")):
        with pytest.raises(exceptions.Duplicate) as e:
            call()
        assert str(e.value) == "Image %s already exists" % path
    after = os.stat(path)
    assert path.read_bytes() == DATA
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (
        before.st_mtime_ns, before.st_ino, before.st_size)
    assert temp_files(stores.fast) == []
    assert uri == "file://%s" % path


def test_size_zero_means_unknown(stores):
    uri, size, md5, _mh, _meta = add_file("fast", "img", size=0)
    assert (size, md5) == (len(DATA), hashlib.md5(DATA).hexdigest())
    # an empty image
    uri, size, md5, mh, _meta = add_file("fast", "empty", b"", size=0)
    assert (size, md5, mh) == (0, MD5_EMPTY, hashlib.sha256(b"").hexdigest())
    data, n = multi_backend.get(uri, "fast")
    assert (list(data), n) == ([], 0)
    assert os.path.getsize(stores.fast / "empty") == 0


def test_size_exceeds_removes_the_partial_file(stores):
    src = io.BytesIO(b"0123456789" * 2)          # 20 bytes, store chunk = 4 bytes
    with pytest.raises(exceptions.Invalid) as e:
        multi_backend.add_with_multihash(CONF, "img", src, 10, "cheap", "sha256")
    # refused before the chunk crossing the declared size is written
    assert str(e.value) == "Size exceeds: expected 10 bytes, got 12 bytes"
    assert src.tell() == 12
    assert os.listdir(stores.cheap) == []


def test_size_exceeds_reports_the_whole_first_chunk(stores):
    with pytest.raises(exceptions.Invalid,
                       match="^Size exceeds: expected 10 bytes, got 12000 bytes$"):
        multi_backend.add(CONF, "img", io.BytesIO(DATA), 10, "fast")
    assert os.listdir(stores.fast) == []


def test_size_mismatch_removes_the_partial_file(stores):
    src = io.BytesIO(DATA)
    with pytest.raises(exceptions.Invalid) as e:
        multi_backend.add_with_multihash(CONF, "img", src, 24000, "fast", "sha256")
    assert str(e.value) == "Size mismatch: expected 24000 bytes, got 12000 bytes"
    assert src.tell() == len(DATA)
    assert os.listdir(stores.fast) == []


@pytest.mark.parametrize("size", [512 * 1024, 0], ids=["known-size", "size-0"])
def test_storage_full_on_a_full_filesystem(glance, small_tmpfs, size):
    glance(enabled="fast:file, full:file",
           extra="[full]\nfilesystem_store_datadir = %s\n" % small_tmpfs)
    data = os.urandom(512 * 1024)
    with pytest.raises(exceptions.StorageFull):
        multi_backend.add_with_multihash(CONF, "big", io.BytesIO(data), size, "full", "sha256")
    assert os.listdir(small_tmpfs) == []
    # the space is back: a small image fits
    assert add_file("full", "small", b"abc")[1] == 3
    assert os.listdir(small_tmpfs) == ["small"]


def test_add_to_a_store_without_write_access(glance, tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    glance(enabled="fast:file, broken:file",
           extra="[broken]\nfilesystem_store_datadir = {tmp}/not-a-dir/images\n")
    store = multi_backend.get_store_from_store_identifier("broken")
    assert not store.is_capable(capabilities.BitMasks.WRITE_ACCESS)
    assert store.url_prefix is None
    with pytest.raises(exceptions.StoreAddDisabled) as e:
        multi_backend.add(CONF, "img", io.BytesIO(b"x"), 1, "broken")
    assert str(e.value) == ("Configuration for store failed. "
                            "Adding images to this store is disabled.")
    with pytest.raises(exceptions.StoreAddDisabled):
        store.add_image("img", io.BytesIO(b"x"), 1)


def test_unknown_backend_on_add(stores):
    with pytest.raises(exceptions.UnknownScheme, match="^Store for identifier nope not found$"):
        add_file("nope", "img")
    with pytest.raises(exceptions.UnknownScheme, match="^Unknown scheme 'cinder' found in URI$"):
        add_file("cinder1", "img")


# ---------------------------------------------------------------- gsfs validation on add

@pytest.mark.parametrize("image_id", [
    "a/b", "../escape", "..", ".", "a\0b", "x" * 256, ".gsfs-tmp.host.1.abcd.img",
    ".gsfs-meta.img.json", ""])
def test_invalid_image_ids_are_refused_and_nothing_is_written(stores, image_id):
    src = io.BytesIO(b"data")
    with pytest.raises(exceptions.Invalid, match="^Invalid image id"):
        multi_backend.add_with_multihash(CONF, image_id, src, 4, "fast", "sha256")
    with pytest.raises(exceptions.Invalid, match="^Invalid image id"):
        multi_backend.add(CONF, image_id, src, 4, "fast")
    assert src.tell() == 0
    assert os.listdir(stores.fast) == []
    assert not (stores.tmp / "escape").exists()


def test_longest_valid_image_id(stores):
    image_id = "x" * 255
    assert add_file("fast", image_id, b"ok")[0].endswith("/" + image_id)


@pytest.mark.parametrize("data", [
    b"raw bytes object", bytearray(b"raw"), "a str", iter(["str", "chunks"]), [b"ok", "str"],
    12345], ids=["bytes", "bytearray", "str", "iter-of-str", "mixed-list", "int"])
def test_non_bytes_data_is_invalid(stores, data):
    with pytest.raises(exceptions.Invalid):
        multi_backend.add_with_multihash(CONF, "img", data, 0, "fast", "sha256")
    assert os.listdir(stores.fast) == []


def test_iterable_of_bytes_chunks_is_accepted(stores):
    chunks = [b"ab", bytearray(b"cd"), memoryview(b"ef")]
    uri, size, md5, _mh, _meta = multi_backend.add_with_multihash(
        CONF, "img", (c for c in chunks), 6, "fast", "sha256")
    assert (size, md5) == (6, hashlib.md5(b"abcdef").hexdigest())
    assert (stores.fast / "img").read_bytes() == b"abcdef"


@pytest.mark.parametrize("algo", ["bogus", "SHA256", "shake_128", "shake_256", "", None])
def test_unknown_hashing_algo_is_refused_before_anything_is_written(stores, algo):
    src = io.BytesIO(DATA)
    with pytest.raises(exceptions.UnknownHashingAlgo) as e:
        multi_backend.add_with_multihash(CONF, "img", src, len(DATA), "fast", algo)
    assert str(e.value) == "Unknown hashing algorithm identifier: %s" % algo
    store = multi_backend.get_store_from_store_identifier("fast")
    if algo:   # a str in position 4 selects the 5-tuple path of add()
        with pytest.raises(exceptions.UnknownHashingAlgo):
            store.add("img", src, len(DATA), algo)
    with pytest.raises(exceptions.UnknownHashingAlgo):
        store.add("img", src, len(DATA), hashing_algo=algo)
    with pytest.raises(exceptions.UnknownHashingAlgo):
        store.add_image("img", src, len(DATA), algo)
    assert src.tell() == 0
    assert os.listdir(stores.fast) == []


# ================================================================ get / size / delete

@pytest.fixture
def image(stores):
    data = b"hello world!"                     # in cheap: 4-byte read chunks
    uri = add_file("cheap", "img", data)[0]
    return SimpleNamespace(uri=uri, data=data, stores=stores)


def test_get_whole_image_in_store_chunks(image):
    data, size = multi_backend.get(image.uri, "cheap")
    assert isinstance(data, filesystem.ChunkedFile)
    assert (list(data), size) == ([b"hell", b"o wo", b"rld!"], 12)
    assert multi_backend.get_size_from_uri_and_backend(image.uri, "cheap") == 12


@pytest.mark.parametrize("offset,chunk_size,chunks,size", [
    (6, 5, [b"worl", b"d"], 5),             # chunk_size = total bytes, the returned size
    (6, None, [b"worl", b"d!"], 12),        # offset alone: the full file size
    (0, 0, [b"hell", b"o wo", b"rld!"], 12),  # chunk_size 0 is falsy: whole file
    (2, 7, [b"llo ", b"wor"], 7),
    (10, 100, [b"d!"], 100),                # chunk_size past the end is still returned
    (12, None, [], 12),                     # offset at EOF
    (50, 3, [], 3),                         # offset past EOF yields nothing
    (50, None, [], 12),
])
def test_get_with_offset_and_chunk_size(image, offset, chunk_size, chunks, size):
    data, n = multi_backend.get(image.uri, "cheap", offset=offset, chunk_size=chunk_size)
    assert (list(data), n) == (chunks, size)
    assert slurp(chunks) == image.data[offset:offset + chunk_size if chunk_size else None]


def test_get_errors(image):
    missing = "file://%s/missing" % image.stores.cheap
    with pytest.raises(exceptions.NotFound) as e:
        multi_backend.get(missing, "cheap")
    assert str(e.value) == "Image %s/missing not found" % image.stores.cheap
    with pytest.raises(exceptions.NotFound):
        multi_backend.get_size_from_uri_and_backend(missing, "cheap")
    with pytest.raises(exceptions.UnknownScheme, match="^Unknown scheme 'ftp' found in URI$"):
        multi_backend.get("ftp://host/img", "cheap")
    with pytest.raises(exceptions.UnknownScheme, match="^Unknown scheme 's3' found in URI$"):
        multi_backend.get("s3://host/bucket/img", "cheap")
    with pytest.raises(exceptions.BadStoreUri, match="^No path specified in URI$"):
        multi_backend.get("file://", "cheap")
    with pytest.raises(exceptions.BadStoreUri, match="^No path specified in URI$"):
        multi_backend.get_size_from_uri_and_backend("file://", "cheap")
    # a registered scheme through a store id that does not serve it
    for backend in ("cinder1", "nope"):
        with pytest.raises(exceptions.UnknownScheme) as e:
            multi_backend.get(image.uri, backend)
        assert str(e.value) == "Unknown scheme '%s' found in URI" % backend
        with pytest.raises(exceptions.UnknownScheme):
            multi_backend.delete(image.uri, backend)


def test_filesystem_scheme_is_accepted(image):
    uri = "filesystem://%s/img" % image.stores.cheap
    data, n = multi_backend.get(uri, "cheap")
    assert (slurp(data), n) == (image.data, 12)
    assert multi_backend.get_size_from_uri_and_backend(uri, "cheap") == 12


def test_search_mode_get_and_delete(image):
    data, n = multi_backend.get(image.uri, None)      # fast is tried first: not there
    assert (slurp(data), n) == (image.data, 12)
    data, n = multi_backend.get(image.uri, None, offset=6, chunk_size=5)
    assert (slurp(data), n) == (b"world", 5)
    assert multi_backend.delete(image.uri, None) is None
    assert not (image.stores.cheap / "img").exists()
    for call in (lambda: multi_backend.get(image.uri, None),
                 lambda: multi_backend.delete(image.uri, None),
                 lambda: multi_backend.get("ftp://host/img", None)):
        with pytest.raises(exceptions.NotFound) as e:
            call()
        assert str(e.value) == "Image not found in any configured backend"


def test_delete_twice(image):
    assert multi_backend.delete(image.uri, "cheap") is None
    with pytest.raises(exceptions.NotFound) as e:
        multi_backend.delete(image.uri, "cheap")
    assert str(e.value) == "Image %s/img not found" % image.stores.cheap


def test_set_acls_for_multi_store_is_a_no_op(image):
    assert multi_backend.set_acls_for_multi_store(image.uri, "cheap") is None
    assert multi_backend.set_acls_for_multi_store(
        image.uri, "cheap", public=True, read_tenants=["a"], write_tenants=["b"]) is None
    with pytest.raises(exceptions.UnknownScheme):
        multi_backend.set_acls_for_multi_store(image.uri, "nope")


def test_reads_are_confined_to_the_store_datadirs(image, tmp_path):
    """glance_store serves any file:// path through any file store; gsfs only
    paths inside the store's own data directories."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    for uri in ("file://%s" % outside, "file:///etc/passwd",
                "file://%s/../outside" % image.stores.cheap,
                image.uri):                  # lives in cheap, read through fast
        for call in (multi_backend.get, multi_backend.get_size_from_uri_and_backend,
                     multi_backend.delete):
            with pytest.raises(exceptions.NotFound):
                call(uri, "fast")
    assert outside.read_bytes() == b"secret"
    assert (image.stores.cheap / "img").read_bytes() == image.data
    with pytest.raises(exceptions.NotFound):
        multi_backend.get("file://%s" % outside, None)


# ================================================================ metadata checks

@pytest.mark.parametrize("value", [
    {}, "bare string", {"a": "b"}, {"a": ["x", "y"]}, {"a": {"b": ["c", {"d": "e"}]}}, [],
    ["x"]])
def test_check_location_metadata_accepts(value):
    assert multi_backend.check_location_metadata(value) is None


@pytest.mark.parametrize("value,key,type_name", [
    ({"a": ["x", 1]}, "a[1]", "int"),
    ({"a": b"bytes"}, "a", "bytes"),
    ({"a": None}, "a", "NoneType"),
    ({"a": ("t",)}, "a", "tuple"),
    ({"k": {"n": True}}, "n", "bool"),
    ({"f": 1.5}, "f", "float"),
    ([["x", 2]], "[0][1]", "int"),
    (7, "", "int"),
])
def test_check_location_metadata_rejects(value, key, type_name):
    with pytest.raises(exceptions.BackendException) as e:
        multi_backend.check_location_metadata(value)
    assert str(e.value) == ("The image metadata key %s has an invalid type of <class '%s'>. "
                            "Only dict, list, and unicode are supported." % (key, type_name))


def test_check_metadata_messages(stores):
    store = multi_backend.get_store_from_store_identifier("fast")
    multi_backend._check_metadata(store, {"store": "fast"})
    with pytest.raises(exceptions.BackendException) as e:
        multi_backend._check_metadata(store, [])
    assert str(e.value) == ("The storage driver %s returned invalid  metadata []. "
                            "This must be a dictionary type" % store)
    bad = {"a": ["x", 1]}
    with pytest.raises(exceptions.BackendException) as e:
        multi_backend._check_metadata(store, bad)
    assert str(e.value) == (
        "A bad metadata structure was returned from the %s storage driver: %s.  "
        "The image metadata key a[1] has an invalid type of <class 'int'>. "
        "Only dict, list, and unicode are supported.." % (store, bad))


# ================================================================ filesystem options, §9.1

def test_datadirs_with_priorities(glance):
    s = glance(enabled="fast:file, multi:file", extra="""
        [multi]
        filesystem_store_datadir =
        filesystem_store_datadirs = {tmp}/low:100
        filesystem_store_datadirs = {tmp}/high:200
        filesystem_store_datadirs = {tmp}/none
        """)
    store = multi_backend.get_store_from_store_identifier("multi")
    assert store.is_capable(capabilities.BitMasks.WRITE_ACCESS)
    assert store.priority_list == [200, 100, 0]
    assert store.url_prefix == "file://%s/high" % s.tmp
    uri = add_file("multi", "img")[0]
    assert uri == "file://%s/high/img" % s.tmp
    # an image in a lower-priority datadir is served and counts as a duplicate
    (s.tmp / "low" / "old").write_bytes(b"old")
    data, n = multi_backend.get("file://%s/low/old" % s.tmp, "multi")
    assert (slurp(data), n) == (b"old", 3)
    with pytest.raises(exceptions.Duplicate):
        add_file("multi", "old")
    assert sorted(os.listdir(s.tmp / "high")) == ["img"]
    assert sorted(i.id for i in store.list_images()) == ["img", "old"]


def test_datadirs_with_conflicting_priorities_disable_add(glance):
    glance(enabled="fast:file, multi:file", extra="""
        [multi]
        filesystem_store_datadir =
        filesystem_store_datadirs = {tmp}/a:100
        filesystem_store_datadirs = {tmp}/a:200
        """)
    with pytest.raises(exceptions.StoreAddDisabled):
        add_file("multi", "img")


def test_datadirs_without_clearing_datadir_disable_add(glance):
    s = glance(enabled="fast:file, multi:file", extra="""
        [multi]
        filesystem_store_datadirs = {tmp}/low:100
        """)
    store = multi_backend.get_store_from_store_identifier("multi")
    assert not store.is_capable(capabilities.BitMasks.WRITE_ACCESS)
    assert store.url_prefix is None
    with pytest.raises(exceptions.StoreAddDisabled):
        add_file("multi", "img")
    # the backend_defaults datadir was never created
    assert not (s.tmp / "low").exists()


def test_uncreatable_datadir_disables_add(glance, tmp_path):
    (tmp_path / "file").write_text("")
    glance(enabled="fast:file, bad:file",
           extra="[bad]\nfilesystem_store_datadir = {tmp}/file/images\n")
    with pytest.raises(exceptions.StoreAddDisabled):
        add_file("bad", "img")
    with pytest.raises(exceptions.StoreAddDisabled):
        multi_backend.add(CONF, "img", io.BytesIO(b"x"), 1, "bad")
    assert add_file("fast", "img")[1] == len(DATA)    # the other stores still work


def test_file_perm_is_applied(glance):
    s = glance(enabled="fast:file, perm:file", extra="""
        [perm]
        filesystem_store_datadir = {tmp}/perm
        filesystem_store_file_perm = 640
        """)
    os.chmod(s.tmp / "perm", 0o700)
    store = multi_backend.get_store_from_store_identifier("perm")
    store.configure()                    # re-run: the datadir gains g+x for a group perm
    assert os.stat(s.tmp / "perm").st_mode & 0o777 == 0o710
    uri = add_file("perm", "img")[0]
    assert os.stat(uri[len("file://"):]).st_mode & 0o777 == 0o640


def test_file_perm_without_owner_read_disables_add(glance):
    glance(enabled="fast:file, perm:file", extra="""
        [perm]
        filesystem_store_datadir = {tmp}/perm
        filesystem_store_file_perm = 7
        """)
    with pytest.raises(exceptions.StoreAddDisabled):
        add_file("perm", "img")


def test_thin_provisioning_leaves_holes(glance):
    s = glance(enabled="fast:file, thin:file", extra="""
        [thin]
        filesystem_store_datadir = {tmp}/thin
        filesystem_store_chunk_size = 4096
        filesystem_thin_provisioning = true
        """)
    data = b"AB" + b"\0" * (1024 * 1024) + b"CD"
    uri, size, md5, _mh, _meta = add_file("thin", "img", data)
    assert (size, md5) == (len(data), hashlib.md5(data).hexdigest())
    st = os.stat(s.tmp / "thin" / "img")
    assert st.st_size == len(data)
    assert st.st_blocks * 512 <= 64 * 1024          # 1 MiB of zeros not allocated
    assert (s.tmp / "thin" / "img").read_bytes() == data
    data_iter, n = multi_backend.get(uri, "thin", offset=1, chunk_size=3)
    assert (slurp(data_iter), n) == (b"B\0\0", 3)
    # an image ending in zeros keeps its length
    tail = b"xy" + b"\0" * 10000
    assert add_file("thin", "tail", tail, size=0)[1] == len(tail)
    assert os.path.getsize(s.tmp / "thin" / "tail") == len(tail)


def _cached_bytes(path):
    """How much of a file the page cache holds (util-linux's fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


@pytest.mark.parametrize("size", [5 * 1024 * 1024 + 123, 4096, 3], ids=["5MiB+123", "4KiB", "3B"])
def test_an_image_is_written_with_direct_io(stores, size):
    """An image leaves nothing in the page cache (written with O_DIRECT from an
    aligned block, the last one padded and the file truncated to its size);
    written through the page cache, a 5 MiB image stays there whole."""
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(stores.fast)],
                            capture_output=True, text=True).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        pytest.skip("the test directory is on %s: every file lives in memory" % fstype)
    data = os.urandom(size)
    uri, n, md5, _mh, _meta = add_file("fast", "img", data)
    path = stores.fast / "img"
    assert _cached_bytes(path) <= 4096          # at most the tail block, zeroed by the truncate
    assert (n, os.path.getsize(path)) == (size, size)
    assert (md5, path.read_bytes()) == (hashlib.md5(data).hexdigest(), data)
    assert temp_files(stores.fast) == []


def test_a_filesystem_without_direct_io_takes_images(glance, ramfs):
    """ramfs refuses O_DIRECT: the image goes through the page cache instead."""
    glance(enabled="fast:file, ram:file", extra="[ram]\nfilesystem_store_datadir = %s\n" % ramfs)
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert add_file("ram", "img", data)[1:3] == (len(data), hashlib.md5(data).hexdigest())
    assert (ramfs / "img").read_bytes() == data
    assert temp_files(ramfs) == []


def test_metadata_file_entries_are_returned(glance, tmp_path):
    meta_file = tmp_path / "fs-meta.json"
    meta_file.write_text(json.dumps([
        {"id": "other-mount", "mountpoint": "/nowhere"},
        {"id": "nfs-share", "mountpoint": str(tmp_path / "meta"), "share": ["a", "b"]},
    ]))
    glance(enabled="fast:file, meta:file", extra="""
        [meta]
        filesystem_store_datadir = {tmp}/meta
        filesystem_store_metadata_file = {tmp}/fs-meta.json
        """)
    expected = {"id": "nfs-share", "mountpoint": str(tmp_path / "meta"),
                "share": ["a", "b"], "store": "meta"}
    assert add_file("meta", "img1")[4] == expected
    assert multi_backend.add(CONF, "img2", io.BytesIO(b"x"), 1, "meta")[3] == expected
    # a single object is accepted as well
    meta_file.write_text(json.dumps({"id": "one", "mountpoint": "/"}))
    multi_backend.get_store_from_store_identifier("meta").configure()
    assert add_file("meta", "img3")[4] == {"id": "one", "mountpoint": "/", "store": "meta"}


@pytest.mark.parametrize("content", [
    "not json", json.dumps([{"id": "x"}]), json.dumps([{"id": "x", "mountpoint": "/",
                                                        "bad": 1}]), json.dumps(3)])
def test_invalid_metadata_file_disables_add(glance, tmp_path, content):
    (tmp_path / "fs-meta.json").write_text(content)
    glance(enabled="fast:file, meta:file", extra="""
        [meta]
        filesystem_store_datadir = {tmp}/meta
        filesystem_store_metadata_file = {tmp}/fs-meta.json
        """)
    with pytest.raises(exceptions.StoreAddDisabled):
        add_file("meta", "img")


# ================================================================ gsfs driver extensions

@pytest.fixture
def fast(stores):
    return multi_backend.get_store_from_store_identifier("fast")


def test_location_for_and_list_images_skip_hidden_files(stores, fast):
    add_file("fast", "b-img", b"bbb")
    add_file("fast", "a-img", b"a")
    (stores.fast / ".gsfs-tmp.host.1.abcd.c-img").write_bytes(b"partial")
    (stores.fast / ".gsfs-meta.a-img.json").write_text("{}")
    (stores.fast / "subdir").mkdir()
    os.symlink("/etc/passwd", stores.fast / "link")
    images = sorted(fast.list_images())
    assert [(i.id, i.size) for i in images] == [("a-img", 1), ("b-img", 3)]
    assert all(isinstance(i.mtime, float) for i in images)
    loc = fast.location_for("a-img")
    assert loc.get_store_uri() == "file://%s/a-img" % stores.fast
    assert fast.location_for("new").get_store_uri() == "file://%s/new" % stores.fast
    with pytest.raises(exceptions.Invalid):
        fast.location_for("../x")


def test_stat_image_and_read_at_offsets(stores, fast):
    add_file("fast", "img", b"0123456789")
    loc = fast.location_for("img")
    info = fast.stat_image(loc)
    assert (info.id, info.size) == ("img", 10)
    assert info.mtime == os.stat(stores.fast / "img").st_mtime
    assert fast.read(loc, 0, 4) == b"0123"
    assert fast.read(loc, 7, 100) == b"789"
    assert fast.read(loc, 10, 5) == b""
    assert fast.read(loc, 3, 0) == b""
    assert fast.get_size(loc) == 10
    missing = fast.location_for("missing")
    for call in (lambda: fast.stat_image(missing), lambda: fast.read(missing, 0, 1)):
        with pytest.raises(exceptions.NotFound):
            call()
    data, n = fast.ranged_get(loc, 2, 5)
    assert (slurp(data), n) == (b"23456", 5)


def test_version_follows_the_file_not_its_metadata(stores, fast):
    add_file("fast", "img", DATA)
    loc = fast.location_for("img")
    st = os.stat(stores.fast / "img")
    version = fast.stat_image(loc).version
    write_id = os.getxattr(stores.fast / "img", filesystem.VERSION_XATTR).decode()
    assert version == "%d:%d:%d:%s" % (st.st_dev, st.st_ino, st.st_size, write_id)
    assert [i.version for i in fast.list_images()] == [version]
    fast.set_image_meta(loc, {"mtime": "1000000000.5", "checksum": "abc"})   # utime, xattrs
    assert fast.stat_image(loc).version == version
    assert [i.version for i in fast.list_images()] == [version]
    assert filesystem.VERSION_XATTR[len("user."):] not in fast.get_image_meta(loc)
    loc = fast.rename(loc, "moved")                       # the same bytes: the same version
    assert fast.stat_image(loc).version == version
    # deleted and added again with the same id and size: ext4 reuses the freed
    # inode, the write id tells the two files apart
    multi_backend.delete(loc.get_store_uri(), "fast")
    add_file("fast", "moved", DATA)
    again = fast.stat_image(loc).version
    assert again != version
    assert [i.version for i in fast.list_images()] == [again]
    fast.add_image("moved", io.BytesIO(DATA), len(DATA), replace=True)
    assert fast.stat_image(loc).version not in (version, again)
    # a file gsfs did not write: inode and size only
    (stores.fast / "foreign").write_bytes(b"xyz")
    st = os.stat(stores.fast / "foreign")
    assert fast.stat_image(fast.location_for("foreign")).version == "%d:%d:3" % (
        st.st_dev, st.st_ino)


def _meta_roundtrip(store, loc, path):
    store.set_image_meta(loc, {"checksum": "abc", "os_hash_algo": "sha512",
                               "os_hash_value": "f00", "mtime": "1000000000.5"})
    meta = store.get_image_meta(loc)
    assert meta["checksum"] == "abc"
    assert meta["os_hash_algo"] == "sha512"
    assert meta["os_hash_value"] == "f00"
    assert float(meta["mtime"]) == 1000000000.5
    assert os.stat(path).st_mtime == 1000000000.5           # set through utime
    store.set_image_meta(loc, {"checksum": "def"})          # merged
    meta = store.get_image_meta(loc)
    assert (meta["checksum"], meta["os_hash_value"]) == ("def", "f00")


def test_image_meta_in_xattrs(stores, fast):
    add_file("fast", "img")
    loc = fast.location_for("img")
    _meta_roundtrip(fast, loc, stores.fast / "img")
    assert "user.gsfs.checksum" in os.listxattr(stores.fast / "img")
    assert os.listdir(stores.fast) == ["img"]
    with pytest.raises(exceptions.NotFound):
        fast.get_image_meta(fast.location_for("missing"))


def test_rename_moves_data_and_metadata(stores, fast):
    add_file("fast", "old", b"payload")
    add_file("fast", "taken", b"other")
    loc = fast.location_for("old")
    fast.set_image_meta(loc, {"checksum": "abc"})
    with pytest.raises(exceptions.Duplicate):
        fast.rename(loc, "taken")
    assert (stores.fast / "old").read_bytes() == b"payload"
    assert (stores.fast / "taken").read_bytes() == b"other"
    new = fast.rename(loc, "new")
    assert new.get_store_uri() == "file://%s/new" % stores.fast
    assert sorted(os.listdir(stores.fast)) == ["new", "taken"]
    assert (stores.fast / "new").read_bytes() == b"payload"
    assert fast.get_image_meta(new)["checksum"] == "abc"
    # replace=True overwrites the target
    fast.rename(new, "taken", replace=True)
    assert sorted(os.listdir(stores.fast)) == ["taken"]
    assert (stores.fast / "taken").read_bytes() == b"payload"
    with pytest.raises(exceptions.NotFound):
        fast.rename(fast.location_for("missing"), "x")
    with pytest.raises(exceptions.Invalid):
        fast.rename(fast.location_for("taken"), "a/b")


def test_image_meta_and_rename_without_xattrs(glance, ramfs):
    """Where the filesystem has no user xattrs, metadata goes to a hidden sidecar
    file that moves with rename and goes with delete."""
    glance(enabled="fast:file, ram:file", extra="[ram]\nfilesystem_store_datadir = %s\n" % ramfs)
    store = multi_backend.get_store_from_store_identifier("ram")
    uri = add_file("ram", "img", b"data")[0]
    loc = store.location_for("img")
    st = os.stat(ramfs / "img")
    version = "%d:%d:%d" % (st.st_dev, st.st_ino, st.st_size)   # no xattr, no write id
    assert store.stat_image(loc).version == version
    _meta_roundtrip(store, loc, ramfs / "img")
    assert store.stat_image(loc).version == version
    assert [i.version for i in store.list_images()] == [version]
    assert sorted(os.listdir(ramfs)) == [".gsfs-meta.img.json", "img"]
    assert [i.id for i in store.list_images()] == ["img"]
    new = store.rename(loc, "renamed")
    assert sorted(os.listdir(ramfs)) == [".gsfs-meta.renamed.json", "renamed"]
    assert store.get_image_meta(new)["checksum"] == "def"
    multi_backend.delete(new.get_store_uri(), "ram")
    assert os.listdir(ramfs) == []
    assert uri == "file://%s/img" % ramfs


def test_capacity(glance, small_tmpfs):
    glance(enabled="fast:file, small:file",
           extra="[small]\nfilesystem_store_datadir = %s\n" % small_tmpfs)
    store = multi_backend.get_store_from_store_identifier("small")
    total, free = store.capacity()
    assert total == 256 * 1024
    assert 0 < free <= total
    add_file("small", "img", os.urandom(64 * 1024))
    assert store.capacity()[1] <= free - 64 * 1024
    fast_total, fast_free = multi_backend.get_store_from_store_identifier("fast").capacity()
    assert fast_total > fast_free > 0


def test_cleanup_leftovers_removes_only_dead_writers_temp_files(stores, fast):
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        names = {
            "dead": "%s%s.%d.abcd1234.img1" % (TMP_PREFIX, host, dead.pid),
            "alive": "%s%s.%d.abcd1234.img2" % (TMP_PREFIX, host, alive.pid),
            "self": "%s%s.%d.abcd1234.img3" % (TMP_PREFIX, host, os.getpid()),
            "other-host": "%sother-host.invalid.%d.abcd1234.img4" % (TMP_PREFIX, dead.pid),
        }
        for name in names.values():
            (stores.fast / name).write_bytes(b"partial")
        add_file("fast", "img", b"done")
        removed = fast.cleanup_leftovers()
        assert len(removed) == 1 and names["dead"] in removed[0]
        assert sorted(os.listdir(stores.fast)) == sorted(
            ["img", names["alive"], names["self"], names["other-host"]])
        assert fast.cleanup_leftovers() == []
    finally:
        alive.kill()
        alive.wait()


def test_add_image_replace_is_atomic(stores, fast):
    add_file("fast", "img", b"version one")
    path = stores.fast / "img"
    with pytest.raises(exceptions.Duplicate):
        fast.add_image("img", io.BytesIO(b"version two"), 11)
    # a failed replace (size mismatch) leaves the old image intact
    with pytest.raises(exceptions.Invalid, match="^Size mismatch"):
        fast.add_image("img", io.BytesIO(b"version two"), 99, replace=True)
    assert path.read_bytes() == b"version one"
    assert temp_files(stores.fast) == []
    ino = os.stat(path).st_ino
    result = fast.add_image("img", io.BytesIO(b"version two"), 11, "sha256", replace=True)
    assert result == ("file://%s" % path, 11, hashlib.md5(b"version two").hexdigest(),
                      hashlib.sha256(b"version two").hexdigest(), {"store": "fast"})
    assert path.read_bytes() == b"version two"
    assert os.stat(path).st_ino != ino                      # a new file renamed over it
    assert os.listdir(stores.fast) == ["img"]
    # replace=True also creates
    assert fast.add_image("new", io.BytesIO(b"n"), 1, replace=True)[1] == 1


def test_a_refusal_before_publishing_leaves_the_replaced_image(stores, fast):
    add_file("fast", "img", b"version one")
    with pytest.raises(RuntimeError, match="refused before publishing"):
        fast.add_image("img", io.BytesIO(b"version two"), 11, verifier=RefuseToPublish(),
                       replace=True)
    assert (stores.fast / "img").read_bytes() == b"version one"
    assert temp_files(stores.fast) == []


def test_a_reader_never_sees_a_partial_image(stores, fast):
    """While data streams in, the image id does not exist yet (temp + publish)."""
    seen = []

    def source():
        for _ in range(3):
            seen.append(sorted(os.listdir(stores.fast)))
            yield b"x" * 10
            time.sleep(0.01)

    fast.add_image("img", source(), 30)
    assert all("img" not in listing for listing in seen)
    assert all(any(n.startswith(TMP_PREFIX) for n in listing) for listing in seen[1:])
    assert os.listdir(stores.fast) == ["img"]


def test_size_checker_and_chunkreadable_contract():
    checker = driver.SizeChecker(0)
    checker.add(10)
    checker.finish()                       # 0: unknown, never checked
    checker = driver.SizeChecker(5)
    with pytest.raises(exceptions.Invalid, match="^Size exceeds: expected 5 bytes, got 6 bytes$"):
        checker.add(6)
    assert list(driver.chunkreadable(io.BytesIO(b"abcde"), 2)) == [b"ab", b"cd", b"e"]
    with pytest.raises(exceptions.Invalid):
        driver.chunkreadable(b"abc", 2)
