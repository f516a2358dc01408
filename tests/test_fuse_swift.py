"""Real gsfs mounts of the swift store (radosgw's Swift API), driven with real tools.

One mount holds two stores, ``file`` and ``swift`` (stores_conf: segments of
4 x 1,024,000 bytes above 8,192,000 bytes). cp, dd, rsync, mv, rm, ls,
qemu-img and getfattr run as subprocesses; what the container holds is
checked behind gsfs's back with python-swiftclient (the manifest, its
``X-Object-Manifest``, the ``.gsfs-segments/`` objects). No mocks.
"""

import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import threading
import time

import pytest
import swiftclient

from tests.servers.mounts import unique
from tests.test_fuse_file_http import wait_for
from tests.test_fuse_s3_rbd import (  # noqa: F401  (nothing_left_mounted: autouse fixture)
    assert_checksum_xattrs,
    digest,
    getfattr_d,
    nothing_left_mounted,
    random_file,
    run,
)

pytestmark = [pytest.mark.ceph, pytest.mark.fuse]

MiB = 1024 * 1024
SEGMENT = 4 * 1024000             # stores_conf's swift_store_large_object_chunk_size
BIG = 20 * MiB + 12345            # segmented: 6 segments
SMALL = 100 * 1024 + 7            # below the large object size: unknown size, still 1 segment
KILLED = 200 * MiB
SEGMENTS = ".gsfs-segments/"


# ---------------------------------------------------------------- the container

class Container:
    """The swift store's container on radosgw, seen behind gsfs's back."""

    def __init__(self, ceph, name):
        self.ceph = ceph
        self.name = name
        self.conn = ceph.swift_connection()

    def listing(self):
        """{object name: bytes} of every object, segments included."""
        _, objects = self.conn.get_container(self.name, full_listing=True)
        return {o["name"]: o["bytes"] for o in objects}

    def images(self):
        return {n for n in self.listing() if not n.startswith(SEGMENTS)}

    def segments(self):
        return {n: size for n, size in self.listing().items() if n.startswith(SEGMENTS)}

    def head(self, name):
        try:
            return self.conn.head_object(self.name, name)
        except swiftclient.ClientException as e:
            if e.http_status == 404:
                return None
            raise

    def read(self, name):
        return self.conn.get_object(self.name, name)[1]

    def segments_of(self, name):
        """The segment objects a manifest's X-Object-Manifest points at."""
        manifest = self.head(name)["x-object-manifest"]
        container, prefix = manifest.split("/", 1)
        assert container == self.name, manifest
        return {n: size for n, size in self.segments().items() if n.startswith(prefix)}

    def orphans(self):
        """Segment objects no image's manifest points at."""
        owned = set()
        for name in self.images():
            if "x-object-manifest" in self.head(name):
                owned.update(self.segments_of(name))
        return sorted(set(self.segments()) - owned)


@pytest.fixture
def container(ceph, swift_container):
    return Container(ceph, swift_container)


@pytest.fixture
def conf(stores_conf, container):
    return stores_conf("file", "swift", default="swift")


@pytest.fixture(scope="module")
def killed_image(tmp_path_factory):
    return random_file(tmp_path_factory.mktemp("killed") / "big.raw", KILLED)


def sync(m):
    """Upload every spooled image now (the root's user.gsfs.control)."""
    run("setfattr", "-n", "user.gsfs.control", "-v", "sync", m.mountpoint)


def remount(m):
    result = m.umount()
    assert result.returncode == 0, result.stderr + m.log_text()[-3000:]
    return m.start()


def ls_l(path):
    """``ls -l`` of a directory: {name: size} of its regular files."""
    listed = {}
    for line in run("ls", "-l", path, timeout=300).stdout.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[0].startswith("-"):
            listed[fields[-1]] = int(fields[4])
    return listed


# ---------------------------------------------------------------- tests

def test_cp_in_out_checksums_survive_remount(container, gsfs_mount, conf, tmp_path):
    m = gsfs_mount(conf)
    src = tmp_path / "src"
    src.mkdir()
    files = {"big.raw": random_file(src / "big.raw", BIG),
             "small.raw": random_file(src / "small.raw", SMALL)}
    for path in files.values():
        run("cp", path, m.path("swift"))
    out = tmp_path / "out"
    out.mkdir()
    attrs = {}
    for name, path in files.items():
        run("cp", m.path("swift", name), out)
        assert digest("sha256sum", out / name) == digest("sha256sum", path)
        attrs[name] = assert_checksum_xattrs(m.path("swift", name), path)
    assert container.images() == set(files)

    # on radosgw: the big one is a DLO manifest over gsfs's segments, each at most
    # one segment long, together the image
    head = container.head("big.raw")
    assert head.get("x-object-manifest", "").startswith(
        "%s/%s" % (container.name, SEGMENTS)), head
    assert int(head["content-length"]) == BIG
    assert head["x-object-meta-gsfs-checksum"] == digest("md5sum", files["big.raw"])
    segments = container.segments_of("big.raw")
    assert sorted(segments.values(), reverse=True) == \
        [SEGMENT] * (BIG // SEGMENT) + [BIG % SEGMENT], segments
    assert hashlib.md5(container.read("big.raw")).hexdigest() == \
        digest("md5sum", files["big.raw"])
    head = container.head("small.raw")
    assert int(head["content-length"]) == SMALL
    assert container.read("small.raw") == files["small.raw"].read_bytes()

    logged = len(m.log_text())
    remount(m)
    assert sorted(os.listdir(m.path("swift"))) == sorted(files)
    for name, path in files.items():
        assert os.path.getsize(m.path("swift", name)) == os.path.getsize(path)
        assert getfattr_d(m.path("swift", name)) == attrs[name]
        assert digest("sha256sum", m.path("swift", name)) == digest("sha256sum", path)
    # the checksums came from the object's metadata, not from a new full read
    assert "Computing the checksums" not in m.log_text()[logged:]


def test_rsync_twice_sends_nothing_also_after_remount(container, gsfs_mount, conf,
                                                      tmp_path):
    m = gsfs_mount(conf)
    src = tmp_path / "images"
    src.mkdir()
    sizes = {"a.raw": 1, "b.qcow2": 700 * 1024, "c.img": 9 * MiB + 3}     # c: segmented
    for name, size in sizes.items():
        random_file(src / name, size)
    os.utime(src / "a.raw", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    dst = m.path("swift")
    first = run("rsync", "-a", "--stats", "%s/" % src, "%s/" % dst).stdout
    assert "Number of regular files transferred: 3" in first, first
    sync(m)
    # rsync's temporary names were renamed away: only the three images
    assert container.images() == set(sizes)
    assert "x-object-manifest" in container.head("c.img")
    assert len(container.segments_of("c.img")) == 3
    assert container.orphans() == []
    for name in sizes:
        st, st_src = os.stat(dst / name), os.stat(src / name)
        assert st.st_size == st_src.st_size
        assert st.st_mtime_ns == st_src.st_mtime_ns, name
        assert container.read(name) == (src / name).read_bytes()

    again = run("rsync", "-a", "--stats", "%s/" % src, "%s/" % dst).stdout
    assert "Number of regular files transferred: 0" in again, again

    # sizes and mtimes are the store's, not this mount's memory
    remount(m)
    again = run("rsync", "-a", "--stats", "%s/" % src, "%s/" % dst).stdout
    assert "Number of regular files transferred: 0" in again, again
    assert container.images() == set(sizes)


def test_dd_oflag_direct(container, gsfs_mount, conf, tmp_path):
    m = gsfs_mount(conf)
    src = random_file(tmp_path / "src.raw", 17 * MiB + 4096)
    run("dd", "if=%s" % src, "of=%s" % m.path("swift", "x"), "bs=1M", "oflag=direct",
        "status=none")
    run("cmp", src, m.path("swift", "x"))
    assert_checksum_xattrs(m.path("swift", "x"), src)
    assert container.read("x") == src.read_bytes()
    assert "x-object-manifest" in container.head("x")


def test_qemu_img_cp_and_convert_into_the_mount(container, gsfs_mount, conf, tmp_path):
    m = gsfs_mount(conf)
    d = m.path("swift")
    local = tmp_path / "q"
    run("qemu-img", "create", "-f", "qcow2", local, "64M")
    run("cp", local, d / "q")
    info = run("qemu-img", "info", d / "q").stdout
    assert "file format: qcow2" in info, info
    assert "virtual size: 64 MiB (67108864 bytes)" in info, info
    run("cmp", local, d / "q")

    # convert writes the target read-write (spooled), then it is uploaded
    raw = tmp_path / "data.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
        for offset in (0, 9 * MiB + 512, 40 * MiB):
            f.seek(offset)
            f.write(os.urandom(3 * MiB))
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, d / "conv.qcow2")
    info = json.loads(run("qemu-img", "info", "--output=json", d / "conv.qcow2").stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * MiB, info
    # reading a checksum xattr uploads the spooled image at once
    attrs = getfattr_d(d / "conv.qcow2")
    assert attrs["user.glance.checksum"] == digest("md5sum", d / "conv.qcow2")
    compare = run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, d / "conv.qcow2",
                  check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    # the image as stored on radosgw is that qcow2 file
    stored = tmp_path / "stored.qcow2"
    stored.write_bytes(container.read("conv.qcow2"))
    assert digest("md5sum", stored) == attrs["user.glance.checksum"]
    info = json.loads(run("qemu-img", "info", "--output=json", stored).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * MiB, info
    assert container.images() == {"q", "conv.qcow2"}


def test_mv_from_the_file_store_to_swift(container, gsfs_mount, conf, tmp_path):
    m = gsfs_mount(conf)
    datadir = tmp_path / "file-store"
    for size in (BIG, SMALL):
        name = unique("mv")
        original = random_file(tmp_path / name, size)
        run("cp", original, m.path("file", name))
        assert (datadir / name).exists()
        run("mv", m.path("file", name), m.path("swift", name))
        assert not m.path("file", name).exists()
        assert name not in os.listdir(m.path("file"))
        assert not (datadir / name).exists()
        assert name in os.listdir(m.path("swift"))
        attrs = getfattr_d(m.path("swift", name))
        assert attrs["user.glance.checksum"] == digest("md5sum", original), attrs
        assert_checksum_xattrs(m.path("swift", name), original)
        assert container.read(name) == original.read_bytes()


def test_ls_l_2000_images_hides_segments(ceph, container, gsfs_mount, conf, tmp_path):
    count = 2000
    m = gsfs_mount(conf)
    big = random_file(tmp_path / "big.raw", BIG)
    run("cp", big, m.path("swift", "big.raw"))           # leaves .gsfs-segments/ objects
    assert len(container.segments()) == 6
    listed_at = time.monotonic()
    assert ls_l(m.path("swift")) == {"big.raw": BIG}     # this listing is now cached

    sizes = {"img-%04d" % i: (i * 37) % 4096 for i in range(count)}
    local = threading.local()

    def put(name):
        if not hasattr(local, "conn"):
            local.conn = ceph.swift_connection()
        local.conn.put_object(container.name, name, os.urandom(sizes[name]))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, sizes))
    # past the mount's listing cache (cache_ttl: 5 s)
    time.sleep(max(0.0, listed_at + 5.5 - time.monotonic()))
    t0 = time.monotonic()
    listed = ls_l(m.path("swift"))
    elapsed = time.monotonic() - t0
    print("ls -l of %d images: %.2f s" % (count + 1, elapsed))
    assert len(listed) == count + 1, "ls -l listed %d files" % len(listed)
    assert listed == dict(sizes, **{"big.raw": BIG})
    everything = run("ls", "-a", m.path("swift")).stdout.split()
    assert not [n for n in everything if n.startswith(".gsfs")], everything[:10]
    assert not os.path.exists(m.path("swift", ".gsfs-segments"))
    for name in ("img-0000", "img-0001", "img-1999"):
        data = container.read(name)
        assert m.path("swift", name).read_bytes() == data
        assert getfattr_d(m.path("swift", name))["user.glance.checksum"] == \
            hashlib.md5(data).hexdigest()


def test_rm_removes_the_manifest_and_its_segments(container, gsfs_mount, conf, tmp_path):
    m = gsfs_mount(conf)
    keep = random_file(tmp_path / "keep", BIG)
    victim = random_file(tmp_path / "victim", BIG + 3 * SEGMENT)
    run("cp", keep, m.path("swift", "keep"))
    run("cp", victim, m.path("swift", "victim"))
    keep_segments = container.segments_of("keep")
    victim_segments = container.segments_of("victim")
    assert len(victim_segments) == 9 and not set(victim_segments) & set(keep_segments)
    assert container.listing().keys() == {"keep", "victim"} | set(keep_segments) | set(
        victim_segments)

    run("rm", m.path("swift", "victim"))
    assert not m.path("swift", "victim").exists()
    assert "victim" not in os.listdir(m.path("swift"))
    # the manifest and its 9 segments are gone; the other image is untouched
    assert container.listing() == dict(keep_segments, keep=0), container.listing()
    run("cmp", keep, m.path("swift", "keep"))


def test_cp_onto_an_existing_name_is_refused(container, gsfs_mount, conf, tmp_path):
    m = gsfs_mount(conf)
    for name, size in (("seg", BIG), ("plain", SMALL)):
        original = random_file(tmp_path / name, size)
        other = random_file(tmp_path / ("other-" + name), size)
        run("cp", original, m.path("swift", name))
        before = container.listing()
        proc = run("cp", other, m.path("swift", name), check=False)
        assert proc.returncode != 0
        assert "File exists" in proc.stderr, proc.stderr
        run("cmp", original, m.path("swift", name))
        assert container.read(name) == original.read_bytes()
        assert_checksum_xattrs(m.path("swift", name), original)
        assert container.listing() == before       # no segment of the refused copy


class SegmentWatch:
    """Polls the container while a copy runs: the most segment objects beyond
    ``before`` seen at once (so a test knows the upload had written some)."""

    def __init__(self, ceph, container, before):
        self.container = Container(ceph, container.name)     # its own connection
        self.before = set(before)
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self.stop.is_set():
            new = set(self.container.segments()) - self.before
            self.most = max(self.most, len(new))
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def interrupt(how, source, target):
    """``cp source target`` killed with SIGKILL ~1 s after ``target`` appears,
    or run as ``timeout -s INT 1 cp`` (Ctrl-C). Returns cp's exit status."""
    if how == "INT":
        proc = run("timeout", "-s", "INT", "1", "cp", source, target, check=False)
        assert proc.returncode == 124, (proc.returncode, proc.stderr)
        return proc.returncode
    proc = subprocess.Popen(["cp", str(source), str(target)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: os.path.exists(target), timeout=30)
        time.sleep(1)
        assert proc.poll() is None, "cp finished before it was killed"
        written = os.stat(target).st_size
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 0 < written < KILLED, written
    assert rc == -signal.SIGKILL
    return rc


@pytest.mark.parametrize("how", ["KILL", "INT"])
def test_an_interrupted_cp_publishes_nothing(ceph, container, gsfs_mount, conf,
                                             killed_image, tmp_path, how):
    m = gsfs_mount(conf)
    old = random_file(tmp_path / "old.raw", BIG)
    run("cp", old, m.path("swift", "old.raw"))
    before = container.listing()

    name = unique("killed")
    with SegmentWatch(ceph, container, before) as watch:
        interrupt(how, killed_image, m.path("swift", name))
        assert wait_for(lambda: "abandoned" in m.log_text(), timeout=30), \
            m.log_text()[-3000:]
        # the upload thread deletes the segments it wrote once it sees the abort
        assert wait_for(lambda: container.listing() == before, timeout=60), (
            "left in the container: %s\n%s" % (
                sorted(set(container.listing()) - set(before)), m.log_text()[-3000:]))
    assert watch.most > 0, "no segment was seen: the interrupted upload wrote nothing"
    assert name not in os.listdir(m.path("swift"))
    assert not os.path.exists(m.path("swift", name))
    assert container.head(name) is None
    assert container.images() == {"old.raw"}
    assert container.orphans() == []
    run("cmp", old, m.path("swift", "old.raw"))
    # the upload ended: its journal entry is gone (nothing for cleanup_leftovers)
    assert wait_for(lambda: not list((tmp_path / "swift-journal").glob("*.json")),
                    timeout=10), os.listdir(tmp_path / "swift-journal")
    # and it stays so: nothing published late
    time.sleep(1)
    assert container.listing() == before
    print("%s: up to %d segments of the interrupted upload seen, all removed"
          % (how, watch.most))
