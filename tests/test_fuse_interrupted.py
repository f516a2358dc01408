"""A close is the truth: interrupted, failed and reordered writes on real mounts.

Real ``gsfs mount -f`` daemons on the file store, radosgw (s3) and Ceph (rbd),
driven with cp, dd, qemu-img, rsync and small Python writers; what the store
holds is checked behind gsfs's back (the datadir, ListObjectsV2 and
ListMultipartUploads, ``rbd ls``).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.servers.mounts import unique
from tests.test_fuse_s3_rbd import Backend, assert_checksum_xattrs, digest, random_file, run

pytestmark = [pytest.mark.fuse]

MiB = 1024 * 1024
BIG = 300 * MiB


class FileBackend:
    """The file store's datadir, as Backend does for s3 and rbd."""

    kind = "file"

    def __init__(self, datadir):
        self.datadir = datadir

    def names(self):
        try:
            return set(os.listdir(self.datadir))
        except FileNotFoundError:
            return set()

    def read(self, name):
        return (self.datadir / name).read_bytes()

    def multipart_uploads(self):
        return []


@pytest.fixture(params=["file", "s3", "rbd"])
def store(request):
    return request.param


@pytest.fixture
def backend(store, request, tmp_path):
    if store == "file":
        return FileBackend(tmp_path / "file-store")
    ceph = request.getfixturevalue("ceph")
    bucket = request.getfixturevalue("s3_bucket") if store == "s3" else None
    if store == "rbd":
        request.getfixturevalue("rbd_pool")
    return Backend(store, ceph, bucket)


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    return random_file(tmp_path_factory.mktemp("img") / "big.raw", BIG)


def status(m):
    return json.loads(os.getxattr(m.mountpoint, "user.gsfs.status"))


def failures(m, store):
    return status(m)["failures"].get(store, {})


def image_names(backend):
    """What a reader of the store would take for images (no gsfs sidecars)."""
    return {n for n in backend.names() if not n.startswith(".gsfs-")}


def kill_halfway(cmd, path, how):
    """Run ``cmd`` (writing ``path``) and interrupt it once ``path`` is 100 MiB
    long: ``how`` is a signal name, or "timeout" for ``timeout 0.5 CMD`` (a
    cp of BIG into the file store takes about 1.1 s here)."""
    if how == "timeout":
        proc = subprocess.run(["timeout", "0.5"] + [str(c) for c in cmd], capture_output=True)
        return proc.returncode
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if os.stat(path).st_size >= 100 * MiB:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    proc.send_signal(getattr(signal, "SIG" + how))
    return proc.wait(timeout=120)


@pytest.mark.parametrize("how", ["KILL", "TERM", "INT", "timeout"])
def test_an_interrupted_cp_publishes_nothing(store, backend, gsfs_mount, stores_conf,
                                             big_image, tmp_path, how):
    m = gsfs_mount(stores_conf(store), options=("allow_replace",))
    old = random_file(tmp_path / "old.raw", 3 * MiB + 7)
    run("cp", old, m.path(store, "Z"))
    before = image_names(backend)

    name = unique("killed")
    rc = kill_halfway(["cp", big_image, m.path(store, name)], m.path(store, name), how)
    assert rc != 0
    # with -o allow_replace, an interrupted replace leaves the old image intact
    rc = kill_halfway(["cp", big_image, m.path(store, "Z")], m.path(store, "Z"), how)
    assert rc != 0

    assert name not in os.listdir(m.path(store))
    assert not os.path.exists(m.path(store, name))
    assert image_names(backend) == before, "left in the store: %s" % (
        image_names(backend) - before)
    assert backend.multipart_uploads() == []
    if store == "file":
        assert sorted(backend.names()) == ["Z"], "temp files left: %s" % backend.names()
    run("cmp", old, m.path(store, "Z"))
    assert backend.read("Z") == old.read_bytes()
    assert failures(m, store).get("commit", 0) >= 2
    # the writer stopped the copy: a warning, not a store error (the rbd
    # driver logged "Failed to store image" at ERROR for it)
    log = m.log_text()
    assert " ERROR " not in log, log
    assert "Upload of %s/%s abandoned, nothing is published" % (store, name) in log, log
    assert log.count("Upload of %s/%s " % (store, name)) == 1, log     # logged once


@pytest.mark.ceph
@pytest.mark.parametrize("tool, sig", [("cp", "TERM"), ("cp", "KILL"), ("dd", "INT")])
def test_a_writer_killed_while_its_close_waits_publishes_nothing(
        ceph, s3_bucket, rgw_proxy, gsfs_mount, stores_conf, tmp_path, tool, sig):
    """cp has written every byte and waits in close() for the commit when it
    is killed (Ctrl-C or ``timeout`` at the end of a copy): the replace is not
    published. The proxy holds every part upload 3 s, so the kill lands
    between the end of data and the CompleteMultipartUpload. dd catches
    SIGINT (to print its statistics): it is not being killed while it waits,
    its close completes and publishes, and dd exits 0 (SEMANTICS.md)."""
    conf = stores_conf("s3", extra={"s3": {"s3_store_host": rgw_proxy.url}})
    m = gsfs_mount(conf, options=("allow_replace",))
    backend = Backend("s3", ceph, s3_bucket)
    old = random_file(tmp_path / "old.raw", 3 * MiB + 7)
    run("cp", old, m.path("s3", "Z"))
    new = random_file(tmp_path / "new.raw", 12 * MiB)    # parts of 5, 5 and 2 MiB
    rule = rgw_proxy.add_rule("UPLOAD_PART", "stall", count=None, seconds=3)
    target = m.path("s3", "Z")
    cmd = ["cp", new, target] if tool == "cp" else ["dd", "if=%s" % new, "of=%s" % target,
                                                      "bs=1M", "status=none"]
    proc = subprocess.Popen([str(c) for c in cmd], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while rule.hits < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)            # the last part goes at end of data: the writer is in close()
    assert rule.hits == 3 and proc.poll() is None, (rule.hits, proc.returncode)
    proc.send_signal(getattr(signal, "SIG" + sig))
    rc = proc.wait(timeout=60)
    rgw_proxy.clear()

    assert backend.multipart_uploads() == []
    log = m.log_text()
    if tool == "dd":
        assert rc == 0          # coreutils 9.1's dd: the copy is done, it exits 0
        run("cmp", new, target)
        assert backend.read("Z") == new.read_bytes()
        assert "Committed s3/Z: %d bytes" % new.stat().st_size in log
        return
    assert rc == -getattr(signal, "SIG" + sig)
    run("cmp", old, target)
    assert backend.read("Z") == old.read_bytes()
    assert failures(m, "s3").get("commit", 0) == 1
    assert "Upload of s3/Z abandoned, nothing is published: its writer cp (pid %d) is being " \
           "killed (signal 9 is pending)" % proc.pid in log, log[-3000:]
    assert "Committed s3/Z: %d bytes" % new.stat().st_size not in log


def test_a_writer_that_exits_without_closing(store, backend, gsfs_mount, stores_conf):
    """exit 0 without close(): the kernel's close commits; exit 3: nothing."""
    m = gsfs_mount(stores_conf(store))
    code = ("import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
            "os.write(fd, b'x' * 3000000)\nos._exit(int(sys.argv[2]))\n")
    for name, status_code in (("exit0", 0), ("exit3", 3)):
        proc = subprocess.run([sys.executable, "-c", code, m.path(store, name),
                               str(status_code)])
        assert proc.returncode == status_code
    assert sorted(os.listdir(m.path(store))) == ["exit0"]
    assert image_names(backend) == {"exit0"}
    assert os.path.getsize(m.path(store, "exit0")) == 3000000


@pytest.mark.parametrize("bs", ["1M", "4M", "16M"])
def test_dd_oflag_direct(store, backend, gsfs_mount, stores_conf, tmp_path, bs):
    """O_DIRECT writes of any size (gsfs opens the file with direct I/O, so
    the kernel passes them on in order)."""
    m = gsfs_mount(stores_conf(store))
    src = random_file(tmp_path / "src.raw", 40 * MiB + 4096)
    for conv in ([], ["conv=fsync"]):
        name = unique("dd")
        proc = run("dd", "if=%s" % src, "of=%s" % m.path(store, name), "bs=" + bs,
                   "oflag=direct", "status=none", *conv)
        assert proc.returncode == 0
        run("cmp", src, m.path(store, name))
        assert_checksum_xattrs(m.path(store, name), src)
        assert backend.read(name) == src.read_bytes()


def test_threads_writing_one_file_at_once(store, backend, gsfs_mount, stores_conf, tmp_path):
    """16 threads pwrite 1 MiB each into one O_DIRECT file at once: their
    writes reach gsfs in any order and the reorder window streams them."""
    m = gsfs_mount(stores_conf(store))
    src = random_file(tmp_path / "src.raw", 16 * MiB)
    code = ("import mmap, os, sys, threading\n"
            "src = open(sys.argv[1], 'rb').read()\n"
            "fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)\n"
            "def part(i):\n"
            "    buf = mmap.mmap(-1, 1 << 20)\n"
            "    buf[:] = src[i << 20:(i + 1) << 20]\n"
            "    assert os.pwrite(fd, buf, i << 20) == 1 << 20\n"
            "threads = [threading.Thread(target=part, args=(i,)) for i in range(16)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n"
            "os.close(fd)\n")
    run(sys.executable, "-c", code, src, m.path(store, "threads"))
    run("cmp", src, m.path(store, "threads"))
    assert_checksum_xattrs(m.path(store, "threads"), src)
    assert backend.read("threads") == src.read_bytes()


def test_cp_sparse_always_still_equal(store, backend, gsfs_mount, stores_conf, tmp_path):
    m = gsfs_mount(stores_conf(store))
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as f:
        f.truncate(60 * MiB)
        for offset in (3 * MiB, 29 * MiB + 17, 50 * MiB):
            f.seek(offset)
            f.write(os.urandom(2 * MiB))
    run("cp", "--sparse=always", sparse, m.path(store, "sparse"))
    run("cmp", sparse, m.path(store, "sparse"))
    assert_checksum_xattrs(m.path(store, "sparse"), sparse)


WRITE_BEHIND = r"""
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"a" * 2000000)
codes = []
for op in (lambda: os.pwrite(fd, b"b" * 10, 100), lambda: os.write(fd, b"c"),
           lambda: os.close(fd)):
    try:
        op()
        codes.append(0)
    except OSError as e:
        codes.append(e.errno)
print(" ".join(errno.errorcode.get(c, str(c)) for c in codes))
"""


def test_refused_writes_full_spools_and_wrong_sizes_publish_nothing(
        store, backend, gsfs_mount, stores_conf, tmp_path):
    m = gsfs_mount(stores_conf(store), options=("spool_max_mib=8",))
    d = m.path(store)
    # a write behind the stream: refused, and the upload is poisoned
    out = run(sys.executable, "-c", WRITE_BEHIND, d / "behind").stdout.split()
    assert out == ["EINVAL", "EINVAL", "EINVAL"], out

    # a spool that fills up: qemu-img fails, and 3 s later nothing was uploaded
    src = random_file(tmp_path / "src.raw", 20 * MiB)
    proc = run("qemu-img", "convert", "-O", "qcow2", src, d / "q.qcow2", check=False)
    assert proc.returncode != 0 and "No space left on device" in proc.stderr, proc.stderr
    time.sleep(3)
    run("setfattr", "-n", "user.gsfs.control", "-v", "sync", m.mountpoint)

    # a wrong announced size: the close fails with EIO
    small = random_file(tmp_path / "small.raw", 100000)
    wrong = ("import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
             "os.write(fd, open(sys.argv[2], 'rb').read())\n"
             "os.setxattr(sys.argv[1], 'user.glance.size', b'100001')\n"
             "try:\n    os.close(fd)\nexcept OSError as e:\n    print(e.errno)\n")
    assert run(sys.executable, "-c", wrong, d / "sized", small).stdout.split() == ["5"]

    assert os.listdir(d) == []
    assert image_names(backend) == set()
    assert backend.multipart_uploads() == []
    counted = failures(m, store)
    assert counted.get("write", 0) >= 2 and counted.get("upload", 0) >= 1, counted
    assert os.listdir(tmp_path / "spool") == []


def full_iso(path):
    """``ls -l --time-style=full-iso`` without the header line, modes and owners."""
    lines = run("ls", "-l", "--time-style=full-iso", path).stdout.splitlines()[1:]
    return sorted(" ".join(line.split()[4:]) for line in lines)


def test_rsync_after_a_remount_sends_nothing(store, backend, gsfs_mount, stores_conf,
                                             tmp_path):
    conf = stores_conf(store)
    src = tmp_path / "images"
    src.mkdir()
    for i, size in enumerate((5 * MiB + 1, 17 * MiB + 3, 1000)):
        random_file(src / ("img%d.raw" % i), size)
        ns = 1_600_000_000_000_000_000 + i * 1_111_111_111
        os.utime(src / ("img%d.raw" % i), ns=(ns, ns))
    m = gsfs_mount(conf, name="first")
    run("rsync", "-a", "%s/" % src, "%s/" % m.path(store))
    assert m.umount().returncode == 0

    m2 = gsfs_mount(conf, name="second")
    assert full_iso(m2.path(store)) == full_iso(src)
    again = run("rsync", "-a", "--stats", "%s/" % src, "%s/" % m2.path(store))
    assert "Number of regular files transferred: 0" in again.stdout, again.stdout
    assert full_iso(m2.path(store)) == full_iso(src)


@pytest.mark.ceph
def test_two_mounts_racing_on_one_new_s3_name(ceph, s3_bucket, gsfs_mount, stores_conf,
                                              tmp_path):
    """radosgw has no conditional PUT: both closes may succeed and the last
    one wins. Within cache_ttl, each mount serves the md5 of the bytes it serves."""
    conf = stores_conf("s3")
    a = gsfs_mount(conf, options=("cache_ttl=1",), name="hostA")
    b = gsfs_mount(conf, options=("cache_ttl=1",), name="hostB")
    srcs = [random_file(tmp_path / ("src%d" % i), 20 * MiB) for i in range(2)]
    procs = [subprocess.Popen(["cp", srcs[0], a.path("s3", "race")], stderr=subprocess.PIPE),
             subprocess.Popen(["cp", srcs[1], b.path("s3", "race")], stderr=subprocess.PIPE)]
    for p in procs:
        p.wait(timeout=300)
    assert any(p.returncode == 0 for p in procs)
    time.sleep(2.5)     # cache_ttl + the kernel's 1 s attribute cache
    for m in (a, b):
        path = m.path("s3", "race")
        served = hashlib.md5(path.read_bytes()).hexdigest()
        assert os.getxattr(path, "user.glance.checksum").decode() == served
        assert served in (digest("md5sum", srcs[0]), digest("md5sum", srcs[1]))
