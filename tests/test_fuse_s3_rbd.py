"""Real gsfs mounts of the S3 (radosgw) and RBD (Ceph) stores, driven with real tools.

Every test mounts with ``gsfs mount -f`` (tests/servers/mounts.py) on the session's
single-node Ceph cluster and runs cp, dd, rsync, mv, qemu-img, getfattr, ls, ... as
subprocesses; what they leave in the backend is checked behind gsfs's back with
boto3 and the rados/rbd bindings. No mocks.
"""

import concurrent.futures
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import botocore.exceptions
import pytest

from tests.servers.mounts import is_mounted, unique

pytestmark = [pytest.mark.ceph, pytest.mark.fuse]

MiB = 1024 * 1024
BIG = 40 * MiB + 12345          # above the 16 MiB multipart threshold of stores_conf's s3
SMALL = 200 * 1024 + 7


# ---------------------------------------------------------------- tools

def run(*cmd, check=True, timeout=300, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError("%s exited %d:\nstdout: %s\nstderr: %s"
                             % (" ".join(map(str, cmd)), proc.returncode, proc.stdout,
                                proc.stderr))
    return proc


def digest(tool, path):
    """sha256sum / md5sum / sha512sum of ``path`` (the real tool)."""
    return run(tool, path).stdout.split()[0]


def getfattr_d(path):
    """``getfattr -d`` of ``path`` as a dict (user.* names)."""
    out = run("getfattr", "-d", "--absolute-names", path).stdout
    values = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("user."):
            values[name] = value.strip('"')
    return values


def random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def assert_checksum_xattrs(path, original):
    """getfattr -d of ``path`` shows md5sum / sha512sum of ``original``."""
    attrs = getfattr_d(path)
    assert attrs.get("user.glance.checksum") == digest("md5sum", original), attrs
    assert attrs.get("user.glance.os_hash_algo") == "sha512", attrs
    assert attrs.get("user.glance.os_hash_value") == digest("sha512sum", original), attrs
    assert attrs.get("user.glance.size") == str(os.path.getsize(original)), attrs
    return attrs


# A writer that reports every failure as JSON on its last stdout line; progress lines
# ("progress <MiB>") let the test act while it is writing.
WRITER = r"""
import json, os, sys
path, mib, bad = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
block = os.urandom(1 << 20)
state = {"ok": False, "stage": "open", "errno": None, "mib": 0}

def report(error=None):
    if error is not None:
        state["errno"] = error.errno
    else:
        state["ok"] = True
    print(json.dumps(state), flush=True)
    sys.exit(0 if error is None else 1)

try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
except OSError as e:
    report(e)
try:
    state["stage"] = "write"
    for i in range(mib):
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view):]
        state["mib"] += 1
        print("progress", state["mib"], flush=True)
    if bad:
        state["stage"] = "setxattr"
        os.setxattr(path, "user.glance.checksum", b"0" * 32)
except OSError as e:
    try:
        os.close(fd)
    except OSError:
        pass
    report(e)
state["stage"] = "close"
try:
    os.close(fd)
except OSError as e:
    report(e)
report()
"""


def start_writer(path, mib, bad_checksum=False):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(mib),
                             "1" if bad_checksum else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def writer_result(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, "the writer printed no result: %r" % stdout[-500:]
    return json.loads(lines[-1])


# ---------------------------------------------------------------- backends

class Backend:
    """What the store holds, seen behind gsfs's back."""

    def __init__(self, kind, ceph, bucket=None):
        self.kind = kind
        self.ceph = ceph
        self.bucket = bucket

    # -- s3
    def _s3(self):
        return self.ceph.s3_client()

    def _rbd(self, func):
        import rados
        import rbd

        cluster = rados.Rados(conffile=self.ceph.conf_path, rados_id=self.ceph.rbd_user)
        cluster.connect(timeout=30)
        try:
            with cluster.open_ioctx(self.ceph.pool) as ioctx:
                return func(rbd, ioctx)
        finally:
            cluster.shutdown()

    def names(self):
        """Every name the backend holds (s3: object keys incl. sidecars; rbd: image
        names incl. temp names)."""
        if self.kind == "s3":
            keys = set()
            for page in self._s3().get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket):
                keys.update(o["Key"] for o in page.get("Contents", ()))
            return keys
        return set(self._rbd(lambda rbd, ioctx: rbd.RBD().list(ioctx)))

    def exists(self, name):
        if self.kind == "s3":
            try:
                self._s3().head_object(Bucket=self.bucket, Key=name)
                return True
            except botocore.exceptions.ClientError as e:
                if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                    return False
                raise
        return name in self.names()

    def read(self, name):
        if self.kind == "s3":
            return self._s3().get_object(Bucket=self.bucket, Key=name)["Body"].read()

        def read(rbd, ioctx):
            with rbd.Image(ioctx, name, read_only=True) as image:
                return image.read(0, image.size())
        return self._rbd(read)

    def multipart_uploads(self):
        if self.kind != "s3":
            return []
        resp = self._s3().list_multipart_uploads(Bucket=self.bucket)
        return [(u["Key"], u["UploadId"]) for u in resp.get("Uploads", ())]

    def leftovers(self, name):
        """Anything of ``name`` in the backend: the object, its sidecar, unfinished
        multipart uploads, rbd temp/aside images."""
        found = [n for n in self.names() if n == name or n.endswith("/" + name)
                 or n.endswith("." + name)]
        found += ["multipart upload %s of %s" % (uid, key)
                  for key, uid in self.multipart_uploads() if key == name]
        return found


# ---------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def nothing_left_mounted(tmp_path):
    """After each test (and after gsfs_mount's teardown): no mount, no daemon."""
    yield
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if str(tmp_path) in line.split()[1]]
    daemons = run("pgrep", "-af", "gsfs mount .*%s" % tmp_path, check=False).stdout
    assert not mounts, "left mounted: %s" % mounts
    assert not daemons.strip(), "gsfs daemons left: %s" % daemons


@pytest.fixture(params=["s3", "rbd"])
def store(request):
    return request.param


@pytest.fixture
def backend(store, ceph, request):
    bucket = request.getfixturevalue("s3_bucket") if store == "s3" else None
    if store == "rbd":
        request.getfixturevalue("rbd_pool")     # removes what a test leaves in the pool
    return Backend(store, ceph, bucket)


@pytest.fixture
def s3_backend(ceph, s3_bucket):
    return Backend("s3", ceph, s3_bucket)


# ---------------------------------------------------------------- tests

def test_cp_in_out_checksums_survive_remount(store, backend, gsfs_mount, stores_conf,
                                             tmp_path):
    conf = stores_conf(store)
    m = gsfs_mount(conf)
    src = tmp_path / "src"
    src.mkdir()
    files = {"big.raw": random_file(src / "big.raw", BIG),
             "small.raw": random_file(src / "small.raw", SMALL)}
    for path in files.values():
        run("cp", path, m.path(store))
    out = tmp_path / "out"
    out.mkdir()
    for name, path in files.items():
        run("cp", m.path(store, name), out)
        assert digest("sha256sum", out / name) == digest("sha256sum", path)
        assert_checksum_xattrs(m.path(store, name), path)
        assert backend.exists(name)
    if store == "s3":
        assert backend.multipart_uploads() == []

    result = m.umount()
    assert result.returncode == 0, result.stderr
    assert not is_mounted(m.mountpoint)

    m2 = gsfs_mount(conf)
    assert sorted(os.listdir(m2.path(store))) == sorted(files)
    for name, path in files.items():
        assert os.path.getsize(m2.path(store, name)) == os.path.getsize(path)
        assert_checksum_xattrs(m2.path(store, name), path)
        assert digest("sha256sum", m2.path(store, name)) == digest("sha256sum", path)
    # the checksums came from the store, not from a new full read
    assert "Computing the checksums" not in m2.log_text()


def test_rsync_in_and_out_second_run_sends_nothing(store, backend, gsfs_mount, stores_conf,
                                                   tmp_path):
    conf = stores_conf(store)
    m = gsfs_mount(conf)
    src = tmp_path / "images"
    src.mkdir()
    sizes = {"a.raw": 1, "b.qcow2": 3 * MiB + 5, "c.img": 18 * MiB + 3, "d.iso": 0,
             "e.raw": 700 * 1024}
    for name, size in sizes.items():
        random_file(src / name, size)
    os.utime(src / "a.raw", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    dst = m.path(store)
    run("rsync", "-a", "%s/" % src, "%s/" % dst)
    assert sorted(os.listdir(dst)) == sorted(sizes)
    # rsync writes through mkstemp (O_RDWR): spooled, uploaded 2 s after close;
    # the control channel uploads them now
    run("setfattr", "-n", "user.gsfs.control", "-v", "sync", m.mountpoint)
    assert sorted(n for n in backend.names() if "/" not in n) == sorted(sizes)
    for name in sizes:
        st, st_src = os.stat(dst / name), os.stat(src / name)
        assert st.st_size == st_src.st_size
        assert st.st_mtime_ns == st_src.st_mtime_ns, name

    back = tmp_path / "back"
    run("rsync", "-a", "%s/" % dst, "%s/" % back)
    for name in sizes:
        assert digest("sha256sum", back / name) == digest("sha256sum", src / name)
        assert os.stat(back / name).st_mtime_ns == os.stat(src / name).st_mtime_ns

    again = run("rsync", "-a", "--stats", "%s/" % src, "%s/" % dst).stdout
    assert "Number of regular files transferred: 0" in again, again
    again = run("rsync", "-a", "--stats", "%s/" % dst, "%s/" % back).stdout
    assert "Number of regular files transferred: 0" in again, again

    # sizes and mtimes are the store's, not this mount's memory: a new mount agrees
    assert m.umount().returncode == 0
    m2 = gsfs_mount(conf)
    again = run("rsync", "-a", "--stats", "%s/" % src, "%s/" % m2.path(store)).stdout
    assert "Number of regular files transferred: 0" in again, again


def test_dd_sparse_cp_qemu_img(store, backend, gsfs_mount, stores_conf, tmp_path):
    m = gsfs_mount(stores_conf(store))
    d = m.path(store)

    # dd bs=1M conv=fsync
    src = random_file(tmp_path / "dd.raw", 20 * MiB + 100)
    run("dd", "if=%s" % src, "of=%s" % (d / "dd.raw"), "bs=1M", "conv=fsync", "status=none")
    assert digest("sha256sum", d / "dd.raw") == digest("sha256sum", src)
    assert backend.exists("dd.raw")

    # a sparse raw image: data, holes, and a hole at the end
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as f:
        for offset in (0, 5 * MiB + 4096, 33 * MiB):
            f.seek(offset)
            f.write(os.urandom(300 * 1024))
        f.truncate(48 * MiB)
    run("cp", "--sparse=always", sparse, d / "sparse.raw")
    run("cmp", sparse, d / "sparse.raw")
    assert os.path.getsize(d / "sparse.raw") == 48 * MiB
    assert_checksum_xattrs(d / "sparse.raw", sparse)

    # qemu-img convert into the mount (spooled: opened read-write), compare, info
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", sparse, d / "img.qcow2")
    # reading a checksum xattr uploads the spooled image at once
    attrs = getfattr_d(d / "img.qcow2")
    assert len(attrs["user.glance.checksum"]) == 32
    assert backend.exists("img.qcow2")
    assert attrs["user.glance.checksum"] == digest("md5sum", d / "img.qcow2")
    compare = run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", sparse, d / "img.qcow2",
                  check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    info = json.loads(run("qemu-img", "info", "--output=json", d / "img.qcow2").stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 48 * MiB
    # the qcow2 image as stored, read behind gsfs's back, is the same file
    out = tmp_path / "stored.qcow2"
    out.write_bytes(backend.read("img.qcow2"))
    assert digest("md5sum", out) == attrs["user.glance.checksum"]
    assert json.loads(run("qemu-img", "info", "--output=json", out).stdout)["format"] == "qcow2"


def test_mv_from_file_store_to_s3_and_rbd(ceph, gsfs_mount, stores_conf, tmp_path, request):
    backends = {"s3": Backend("s3", ceph, request.getfixturevalue("s3_bucket")),
                "rbd": Backend("rbd", ceph)}
    request.getfixturevalue("rbd_pool")
    m = gsfs_mount(stores_conf("file", "s3", "rbd"))
    datadir = tmp_path / "file-store"
    for target, size in (("s3", BIG), ("rbd", 6 * MiB + 1)):
        name = unique("mv")
        original = random_file(tmp_path / name, size)
        run("cp", original, m.path("file", name))
        assert (datadir / name).exists()
        run("mv", m.path("file", name), m.path(target, name))
        assert not m.path("file", name).exists()
        assert name not in os.listdir(m.path("file"))
        assert not (datadir / name).exists()
        assert name in os.listdir(m.path(target))
        assert backends[target].exists(name)
        assert digest("sha256sum", m.path(target, name)) == digest("sha256sum", original)
        assert_checksum_xattrs(m.path(target, name), original)


def test_rm_eexist_and_wrong_checksum(store, backend, gsfs_mount, stores_conf, tmp_path):
    m = gsfs_mount(stores_conf(store))
    d = m.path(store)

    # rm: the object / rbd image (and gsfs's metadata) is gone
    victim = random_file(tmp_path / "victim", SMALL)
    run("cp", victim, d)
    assert backend.exists("victim")
    run("rm", d / "victim")
    assert not (d / "victim").exists()
    assert not backend.exists("victim")
    assert backend.leftovers("victim") == []

    # overwrite: EEXIST, the original intact
    keep = random_file(tmp_path / "keep", 3 * MiB)
    other = random_file(tmp_path / "other", 3 * MiB)
    run("cp", keep, d / "keep")
    proc = run("cp", other, d / "keep", check=False)
    assert proc.returncode != 0
    assert "File exists" in proc.stderr, proc.stderr
    proc = run("dd", "if=%s" % other, "of=%s" % (d / "keep"), "bs=1M", "status=none",
               check=False)
    assert proc.returncode != 0 and "File exists" in proc.stderr, proc.stderr
    assert digest("sha256sum", d / "keep") == digest("sha256sum", keep)
    assert backend.read("keep") == keep.read_bytes()

    # mv within the store renames in the backend; onto an existing image: EEXIST
    run("cp", other, d / "other")
    proc = run("mv", "-T", d / "other", d / "keep", check=False)
    assert proc.returncode != 0 and "File exists" in proc.stderr, proc.stderr
    assert backend.read("keep") == keep.read_bytes()
    run("mv", d / "other", d / "moved")
    assert not backend.exists("other") and backend.leftovers("other") == []
    assert backend.read("moved") == other.read_bytes()
    assert_checksum_xattrs(d / "moved", other)
    run("rm", d / "moved")
    assert backend.leftovers("moved") == []

    # a wrong expected checksum: close fails with EIO, nothing is committed
    for name, mib in (("bad-small", 2), ("bad-big", 40)):
        writer = start_writer(d / name, mib, bad_checksum=True)
        stdout, stderr = writer.communicate(timeout=180)
        result = writer_result(stdout)
        assert result["stage"] == "close" and result["errno"] == errno.EIO, (result, stderr)
        assert result["mib"] == mib
        assert not (d / name).exists()
        assert backend.leftovers(name) == [], backend.leftovers(name)
        if store == "rbd":
            assert not [n for n in backend.names() if n.startswith("..gsfs-")]
    assert backend.multipart_uploads() == []
    assert sorted(os.listdir(d)) == ["keep"]


def test_ls_l_2000_images(ceph, s3_backend, gsfs_mount, stores_conf):
    count = 2000
    s3 = ceph.s3_client(max_pool_connections=16)
    sizes = {"img-%04d" % i: (i * 37) % 4096 for i in range(count)}

    def put(name):
        s3.put_object(Bucket=s3_backend.bucket, Key=name, Body=os.urandom(sizes[name]))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, sizes))
    m = gsfs_mount(stores_conf("s3"))
    t0 = time.monotonic()
    out = run("ls", "-l", m.path("s3"), timeout=300).stdout
    elapsed = time.monotonic() - t0
    listed = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[0].startswith("-"):
            listed[fields[-1]] = int(fields[4])
    assert len(listed) == count, "ls -l listed %d files in %.1f s" % (len(listed), elapsed)
    assert listed == sizes
    print("ls -l of %d images: %.2f s" % (count, elapsed))
    # readable by gsfs, with checksums computed from a full read
    for name in ("img-0000", "img-0001", "img-1999"):
        data = s3_backend.read(name)
        copy = m.path("s3", name)
        assert copy.read_bytes() == data
        attrs = getfattr_d(copy)
        assert attrs["user.glance.checksum"] == hashlib.md5(data).hexdigest()


def test_s3_backend_goes_away_mid_write(ceph, s3_backend, gsfs_mount, stores_conf, tmp_path):
    """radosgw stops while a 400 MiB image is written: the writer gets an errno in
    bounded time, and nothing of the image is left once radosgw is back.

    (rbd: not tested. Making the pool unreachable means stopping the OSD or the
    mon of the session cluster that every other test shares; librados then blocks
    with no timeout unless rados_connect_timeout is set.)"""
    m = gsfs_mount(stores_conf("s3"))
    name = "falls-over"
    writer = start_writer(m.path("s3", name), 400)
    lines = []
    reached = threading.Event()

    def follow():
        for line in writer.stdout:
            lines.append(line)
            if line.startswith("progress") and int(line.split()[1]) >= 40:
                reached.set()
        reached.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        assert reached.wait(120), "the writer did not get to 40 MiB"
        assert writer.poll() is None, "the writer finished before radosgw was stopped"
        t0 = time.monotonic()
        ceph.stop_rgw()
        stopped = time.monotonic()
        try:
            writer.wait(timeout=150)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
            pytest.fail("the writer hung for > 150 s after radosgw stopped:\n%s"
                        % m.log_text()[-4000:])
        failed_after = time.monotonic() - t0
        after_stop = time.monotonic() - stopped
        time.sleep(3)       # radosgw stays away a little: gsfs's first abort retries fail
    finally:
        if not ceph.rgw_running:
            ceph.start_rgw()
    reader.join(10)
    result = writer_result("".join(lines))
    print("writer failed %.1f s after stop_rgw was called (%.1f s after it returned): %s"
          % (failed_after, after_stop, result))
    assert not result["ok"], result
    assert result["errno"] in (errno.EIO, errno.ECONNREFUSED, errno.EHOSTUNREACH,
                               errno.ETIMEDOUT, errno.ENOSPC), result
    assert result["mib"] < 400 or result["stage"] == "close", result
    assert failed_after < 120, failed_after
    assert not (m.path("s3", name)).exists()
    # radosgw is back: no object, no sidecar, and no unfinished multipart upload
    deadline = time.monotonic() + 30
    while s3_backend.leftovers(name) and time.monotonic() < deadline:
        time.sleep(1)
    assert s3_backend.leftovers(name) == [], (s3_backend.leftovers(name),
                                              m.log_text()[-3000:])


def test_parallel_s3_copies_stay_within_the_memory_budget(ceph, s3_bucket, gsfs_mount,
                                                          stores_conf, tmp_path):
    """4 cp at once into s3 with parts of 16 MiB and -o memory_mib=32 (room for
    two parts): each image arrives whole, and the budget never held more than
    memory_mib + one part (taken when no upload holds any) + one write per
    upload queue (docs/memory.md). Before, every upload that held no part
    took one over the budget: 32 + 4 x 16 MiB."""
    conf = stores_conf("s3", extra={"s3": {"s3_store_large_object_chunk_size": 16}})
    m = gsfs_mount(conf, options=["memory_mib=32"])
    sources = []
    for i in range(4):
        src = tmp_path / ("src%d.raw" % i)
        src.write_bytes(os.urandom(40 * MiB + i))
        sources.append(src)
    procs = [subprocess.Popen(["cp", str(src), str(m.path("s3", "par%d" % i))])
             for i, src in enumerate(sources)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    for i, src in enumerate(sources):
        want = hashlib.md5(src.read_bytes()).hexdigest()
        assert os.getxattr(m.path("s3", "par%d" % i), "user.glance.checksum").decode() == want
    memory = json.loads(os.getxattr(m.mountpoint, "user.gsfs.status"))["memory"]
    assert memory["budget_bytes"] == 32 * MiB
    assert memory["used_bytes"] == 0, memory
    assert 16 * MiB <= memory["peak_bytes"] <= (32 + 16 + 4) * MiB, memory
