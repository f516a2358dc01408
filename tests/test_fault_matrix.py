"""Faults in front of real servers, on real mounts: every syscall ends with an
errno (or the right answer) within a stated bound, nothing partial is
published, and the daemon that started the test is the one that ends it.

The faults are injected by tests/servers/faultproxy.py between gsfs and
radosgw (s3) or the test HTTP server (http), and in the real file system
(a symlink loop, a directory and a fifo in a file store's datadir), and by
killing radosgw.

Bounds (docs/SEMANTICS.md, "Failures of the store"): an error answer or a
reset connection fails the syscall within ERROR_BOUND seconds (the s3
client makes 3 attempts with backoff); a slow answer within the client's
timeouts only delays it.
"""

import errno
import os
import subprocess
import time

import pytest

from tests.test_fuse_s3_rbd import Backend, random_file, run

pytestmark = [pytest.mark.fuse]

MiB = 1024 * 1024
ERROR_BOUND = 30.0
STALL = 1.0         # a stalled answer: clearly late, well within every client timeout
FAULTS = ["500", "503", "reset", "truncate", "stall"]


def daemon_pid(m):
    return int(os.getxattr(m.mountpoint, "user.gsfs.pid"))


def timed(func, *args):
    """(result or OSError, seconds)."""
    t0 = time.monotonic()
    try:
        result = func(*args)
    except OSError as e:
        result = e
    return result, time.monotonic() - t0


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def assert_outcome(fault, result, seconds, correct):
    """500/503/reset: an errno; truncate: an errno or the right answer; stall:
    the right answer, STALL seconds late at least. Always within the bound."""
    assert seconds < ERROR_BOUND + (STALL if fault == "stall" else 0), seconds
    if fault in ("500", "503", "reset"):
        assert isinstance(result, OSError), result
        assert result.errno in (errno.EIO, errno.ENOENT, errno.EAGAIN), result
    elif fault == "stall":
        assert not isinstance(result, OSError), result
        assert correct(result), result
        assert seconds >= STALL * 0.9
    elif not isinstance(result, OSError):
        assert correct(result), result


@pytest.fixture
def s3_through_proxy(ceph, s3_bucket, rgw_proxy, gsfs_mount, stores_conf, tmp_path):
    conf = stores_conf("s3", extra={"s3": {"s3_store_host": rgw_proxy.url}})
    m = gsfs_mount(conf, options=("cache_ttl=0.2",))
    backend = Backend("s3", ceph, s3_bucket)
    src = random_file(tmp_path / "present.raw", 3 * MiB + 5)
    run("cp", src, m.path("s3", "present"))
    return m, backend, rgw_proxy, src


def fresh_name_lookup(m, name):
    """A stat the kernel and gsfs have not cached: the store is asked."""
    time.sleep(1.3)     # the kernel's 1 s entry cache and cache_ttl
    return os.stat(m.path("s3", name))


@pytest.mark.ceph
@pytest.mark.parametrize("fault", FAULTS)
def test_s3_faults_on_every_operation(s3_through_proxy, fault, tmp_path):
    m, backend, proxy, src = s3_through_proxy
    pid = daemon_pid(m)
    seconds = STALL if fault == "stall" else None
    size = os.path.getsize(src)

    # lookup → HeadObject
    proxy.add_rule("HEAD", fault, count=None, seconds=seconds, match="present")
    result, took = timed(fresh_name_lookup, m, "present")
    proxy.clear()
    assert_outcome(fault, result, took - 1.3, lambda st: st.st_size == size)

    # readdir → ListObjectsV2
    time.sleep(1.3)
    proxy.add_rule("LIST", fault, count=None, seconds=seconds)
    result, took = timed(os.listdir, m.path("s3"))
    proxy.clear()
    assert_outcome(fault, result, took, lambda names: names == ["present"])

    # read → ranged GetObject
    proxy.add_rule("RANGED_GET", fault, count=None, seconds=seconds, match="present")
    proxy.add_rule("GET", fault, count=None, seconds=seconds, match="present")
    result, took = timed(read_all, m.path("s3", "present"))
    proxy.clear()
    assert_outcome(fault, result, took, lambda data: data == src.read_bytes())

    # write → UploadPart (40 MiB: multipart) and commit → CompleteMultipartUpload / PutObject
    big = random_file(tmp_path / "big.raw", 40 * MiB)
    small = random_file(tmp_path / "small.raw", 2 * MiB)
    for op, name, image in (("UPLOAD_PART", "w-part", big),
                            ("COMPLETE_MULTIPART", "w-complete", big),
                            ("PUT", "w-put", small)):
        if fault == "truncate" and op != "COMPLETE_MULTIPART":
            continue     # the answers of PUT and UploadPart have no body to cut
        proxy.add_rule(op, fault, count=None, seconds=seconds, match=name,
                       match_not=".gsfs-")
        t0 = time.monotonic()
        proc = subprocess.run(["cp", str(image), str(m.path("s3", name))],
                              capture_output=True, text=True)
        took = time.monotonic() - t0
        proxy.clear()
        assert took < ERROR_BOUND + 10 * (STALL if fault == "stall" else 0), (op, took)
        if proc.returncode == 0:
            assert fault in ("stall", "truncate"), (op, proc.stderr)
            assert backend.read(name) == image.read_bytes()
        else:
            assert fault != "stall", (op, proc.stderr)
            assert "Input/output error" in proc.stderr, proc.stderr
            assert not backend.exists(name), op
            assert name not in os.listdir(m.path("s3"))
        assert [u for u in backend.multipart_uploads() if u[0] == name] == [], op

    assert daemon_pid(m) == pid and m.proc.poll() is None


@pytest.mark.ceph
def test_radosgw_killed(ceph, s3_through_proxy):
    m, backend, _proxy, _src = s3_through_proxy
    pid = daemon_pid(m)
    ceph.stop_rgw(kill=True)
    try:
        for func in (lambda: fresh_name_lookup(m, "present"),
                     lambda: os.listdir(m.path("s3")),
                     lambda: open(m.path("s3", "new"), "wb").write(b"x" * 10) and None):
            result, took = timed(func)
            assert took < ERROR_BOUND + 1.3, took
            if isinstance(result, OSError):
                assert result.errno in (errno.EIO, errno.ENOENT), result
        proc = subprocess.run(["cp", "/etc/hostname", str(m.path("s3", "during"))],
                              capture_output=True, text=True, timeout=ERROR_BOUND * 2)
        assert proc.returncode != 0
    finally:
        ceph.start_rgw()
    assert not backend.exists("during")
    assert daemon_pid(m) == pid and m.proc.poll() is None


@pytest.mark.parametrize("fault", ["500", "503", "reset", "truncate", "stall"])
def test_http_store_faults(http_server, http_proxy, gsfs_mount, stores_conf, tmp_path,
                           fault):
    images = http_server.root / "images"
    images.mkdir(exist_ok=True)
    data = os.urandom(2 * MiB + 3)
    (images / "web.img").write_bytes(data)
    conf = stores_conf("http", extra={"http": {
        "gsfs_http_base_url": http_proxy.url + "/images"}})
    m = gsfs_mount(conf, options=("cache_ttl=0.2",))
    pid = daemon_pid(m)
    seconds = STALL if fault == "stall" else None

    time.sleep(1.3)
    http_proxy.add_rule("LIST", fault, count=None, seconds=seconds)
    result, took = timed(os.listdir, m.path("http"))
    http_proxy.clear()
    assert_outcome(fault, result, took, lambda names: names == ["web.img"])

    os.stat(m.path("http", "web.img"))
    for op in ("RANGED_GET", "GET"):
        http_proxy.add_rule(op, fault, count=None, seconds=seconds, match="web.img")
    result, took = timed(read_all, m.path("http", "web.img"))
    http_proxy.clear()
    assert_outcome(fault, result, took, lambda got: got == data)
    assert daemon_pid(m) == pid and m.proc.poll() is None


def test_file_store_datadir_faults(gsfs_mount, stores_conf, tmp_path):
    """A symlink loop, a directory and a fifo in the datadir, then the datadir
    replaced by a regular file: errnos, never a crash."""
    conf = stores_conf("file")
    datadir = tmp_path / "file-store"
    m = gsfs_mount(conf, options=("cache_ttl=0.2",))
    pid = daemon_pid(m)
    run("cp", "/etc/hostname", m.path("file", "good"))
    os.symlink("loop", datadir / "loop")
    os.mkdir(datadir / "adir")
    os.mkfifo(datadir / "afifo")
    time.sleep(1.3)
    names = os.listdir(m.path("file"))
    assert "good" in names and "adir" not in names and "afifo" not in names, names
    for name, codes in (("loop", (errno.EIO, errno.ELOOP)), ("adir", (errno.ENOENT,)),
                        ("afifo", (errno.ENOENT,))):
        with pytest.raises(OSError) as info:
            os.stat(m.path("file", name))
        assert info.value.errno in codes, (name, info.value)
    assert os.path.getsize(m.path("file", "good")) > 0

    os.rename(datadir, tmp_path / "moved")
    (tmp_path / "file-store").write_text("not a directory")
    time.sleep(1.3)
    result, took = timed(os.listdir, m.path("file"))
    assert isinstance(result, OSError) and took < ERROR_BOUND, result
    proc = subprocess.run(["cp", "/etc/hostname", str(m.path("file", "new"))],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    os.unlink(tmp_path / "file-store")
    os.rename(tmp_path / "moved", datadir)
    assert daemon_pid(m) == pid and m.proc.poll() is None
