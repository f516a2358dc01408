"""Is the daemon safe on a real host? Real mounts, real signals, real backends.

- SIGTERM during 1 GiB uploads (file + s3): exit 0, nothing mounted, and each
  upload either committed completely or left nothing (shutdown_timeout
  generous: they finish; 0: they are aborted cleanly);
- kill -9 during uploads (file, s3, rbd): auto_unmount frees the mountpoint,
  the next start removes the leftovers and says so in its log;
- ``gsfs status --json`` shows an upload in flight;
- READY=1 / STOPPING=1 reach a NOTIFY_SOCKET;
- ``gsfs mount`` in the background, ``gsfs umount``, bad configurations;
- SIGUSR1 logs a task dump and the mount keeps serving.
"""

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.servers.mounts import GSFS, GsfsMount, is_mounted, unique

pytestmark = [pytest.mark.fuse]

MiB = 1024 * 1024
GiB = 1024 * MiB

# Writes SIZE_MIB MiB of generated data (every MiB different) in 1 MiB writes,
# DELAY seconds between writes, then closes; prints one JSON line: bytes
# written, md5 of them, the errno of the failed write / close (null: success).
WRITER = r"""
import errno, hashlib, json, os, random, sys, time
path, size_mib, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
base = bytearray(random.Random(size_mib).randbytes(1 << 20))
md5 = hashlib.md5()
out = {"written": 0, "write_errno": None, "close_errno": None, "open_errno": None}
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
except OSError as e:
    out["open_errno"] = errno.errorcode.get(e.errno, e.errno)
    print(json.dumps(out), flush=True)
    sys.exit(0)
for i in range(size_mib):
    base[:8] = i.to_bytes(8, "little")
    try:
        n = os.write(fd, base)
    except OSError as e:
        out["write_errno"] = errno.errorcode.get(e.errno, e.errno)
        break
    md5.update(base[:n])
    out["written"] += n
    if n != len(base):
        out["write_errno"] = "short write"
        break
    if delay:
        time.sleep(delay)
try:
    os.close(fd)
except OSError as e:
    out["close_errno"] = errno.errorcode.get(e.errno, e.errno)
out["md5"] = md5.hexdigest()
print(json.dumps(out), flush=True)
"""


class Writer:
    def __init__(self, path, size_mib=1024, delay=0.0):
        self.path = str(path)
        self.size = size_mib * MiB
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, self.path, str(size_mib),
                                      str(delay)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.result = None

    def wait(self, timeout=180):
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, "writer %s failed:\n%s" % (self.path, err)
        self.result = json.loads(out.strip().splitlines()[-1])
        return self.result

    @property
    def ok(self):
        r = self.result
        return (r["open_errno"] is None and r["write_errno"] is None
                and r["close_errno"] is None and r["written"] == self.size)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def writers():
    started = []

    def make(*args, **kwargs):
        w = Writer(*args, **kwargs)
        started.append(w)
        return w

    try:
        yield make
    finally:
        for w in started:
            w.kill()


def mount_status(m):
    return json.loads(os.getxattr(m.mountpoint, "user.gsfs.status"))


def wait_uploads(m, paths, min_bytes, timeout=120, writers=()):
    """Poll the status xattr until every path is an upload with >= min_bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        uploads = {u["path"]: u for u in mount_status(m)["uploads"]}
        if all(p in uploads and uploads[p]["bytes"] >= min_bytes for p in paths):
            return uploads
        for w in writers:
            assert w.proc.poll() is None, "writer %s ended early: %s" % (
                w.path, w.proc.communicate())
        time.sleep(0.05)
    raise AssertionError("uploads %s did not reach %d bytes: %s\n%s"
                         % (paths, min_bytes, mount_status(m), m.log_text()))


def wait_log(m, text, timeout=30, start=0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in m.log_text()[start:]:
            return
        time.sleep(0.05)
    raise AssertionError("%r not in the log:\n%s" % (text, m.log_text()[start:]))


def wait_exit(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("gsfs (pid %d) still running %s s after the signal"
                             % (proc.pid, timeout)) from None


def wait_unmounted(path, timeout=10):
    """auto_unmount: the mountpoint answers again and is no mount any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.stat(path)
            os.listdir(path)
            if not is_mounted(path):
                return
            err = "still in /proc/mounts"
        except OSError as e:
            err = e
        if time.monotonic() > deadline:
            raise AssertionError("%s not usable %s s after the daemon died: %s"
                                 % (path, timeout, err))
        time.sleep(0.05)


def md5_of_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------- backends

class FileBackend:
    def __init__(self, datadir):
        self.datadir = datadir

    def names(self):
        return os.listdir(self.datadir) if os.path.isdir(self.datadir) else []

    def partials(self):
        return [n for n in self.names() if n.startswith(".gsfs-tmp.")]

    def image(self, name):
        """(size, md5) of the image, or None."""
        path = os.path.join(self.datadir, name)
        if not os.path.exists(path):
            return None
        return os.path.getsize(path), md5_of_file(path)


class S3Backend:
    def __init__(self, ceph, bucket):
        self.client = ceph.s3_client()
        self.bucket = bucket

    def partials(self):
        return self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])

    def image(self, name):
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except self.client.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        h, size = hashlib.md5(), 0
        for chunk in body.iter_chunks(4 * MiB):
            h.update(chunk)
            size += len(chunk)
        return size, h.hexdigest()


class RbdBackend:
    def __init__(self, ceph, pool):
        self.ceph = ceph
        self.pool = pool

    def _call(self, func):
        import rados

        cluster = rados.Rados(conffile=self.ceph.conf_path, rados_id=self.ceph.rbd_user)
        cluster.connect(timeout=30)
        try:
            with cluster.open_ioctx(self.pool) as ioctx:
                return func(ioctx)
        finally:
            cluster.shutdown()

    def names(self):
        import rbd

        return self._call(lambda ioctx: rbd.RBD().list(ioctx))

    def partials(self):
        from gsfs.drivers import rbd as rbd_driver
        return [n for n in self.names() if n.startswith((".gsfs-tmp", rbd_driver.TMP_PREFIX))]

    def watchers(self, name):
        import rbd

        def watchers(ioctx):
            with rbd.Image(ioctx, name, read_only=True) as image:
                return list(image.watchers_list())
        return self._call(watchers)


def check_all_or_nothing(backend, name, writer):
    """Either the writer's close succeeded and the image is complete, or the
    writer saw an error and the backend has no trace of the image."""
    image = backend.image(name)
    if writer.ok:
        assert image == (writer.size, writer.result["md5"]), (
            "close succeeded but the backend has %r" % (image,))
    else:
        assert image is None, "the writer got %s but the backend holds %r" % (
            writer.result, image)
    assert backend.partials() == []


# ------------------------------------------------------------------- SIGTERM

@pytest.mark.ceph
@pytest.mark.parametrize("timeout,expect", [("600", "complete"), ("0", "aborted"),
                                            ("1", "aborted")])
def test_sigterm_during_1gib_uploads(gsfs_mount, stores_conf, writers, tmp_path, ceph,
                                     s3_bucket, timeout, expect):
    m = gsfs_mount(stores_conf("file", "s3"), options=["shutdown_timeout=%s" % timeout])
    backends = {"file": FileBackend(str(tmp_path / "file-store")),
                "s3": S3Backend(ceph, s3_bucket)}
    name = unique()
    ws = {store: writers(m.path(store, name)) for store in backends}
    wait_uploads(m, ["%s/%s" % (s, name) for s in backends], 64 * MiB, writers=ws.values())
    log_start = len(m.log_text())
    m.proc.send_signal(signal.SIGTERM)
    wait_log(m, "SIGTERM: no new writers", start=log_start)
    if expect == "complete":
        # no new writer once stopping: EROFS at create
        with pytest.raises(OSError) as e:
            os.open(m.path("file", unique("late")), os.O_WRONLY | os.O_CREAT)
        assert e.value.errno == errno.EROFS
    assert wait_exit(m.proc, 150 if expect == "complete" else 30) == 0, m.log_text()
    assert not is_mounted(m.mountpoint)
    for store, backend in backends.items():
        w = ws[store]
        w.wait(timeout=60)
        if expect == "complete":
            assert w.ok, (store, w.result, m.log_text()[log_start:])
        else:
            assert not w.ok, (store, w.result)
            assert w.result["written"] < w.size
        check_all_or_nothing(backend, name, w)
    if expect == "aborted":
        assert "Aborting the upload of file/%s" % name in m.log_text()


# ------------------------------------------------------------------- kill -9

@pytest.mark.ceph
def test_kill_9_during_uploads_then_restart_cleans(gsfs_mount, stores_conf, writers, tmp_path,
                                                    ceph, s3_bucket, rbd_pool):
    conf = stores_conf("file", "s3", "rbd")
    m = gsfs_mount(conf)
    backends = {"file": FileBackend(str(tmp_path / "file-store")),
                "s3": S3Backend(ceph, s3_bucket),
                "rbd": RbdBackend(ceph, rbd_pool)}
    name = unique()
    ws = {store: writers(m.path(store, name)) for store in backends}
    # s3: past the 16 MiB multipart threshold, so a multipart upload is open
    wait_uploads(m, ["%s/%s" % (s, name) for s in backends], 48 * MiB, writers=ws.values())
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=30)
    wait_unmounted(m.mountpoint)
    for store, w in ws.items():
        w.wait(timeout=60)
        assert not w.ok, (store, w.result)
    # the crash left partial uploads behind (what the next start must clean)
    left = {store: b.partials() for store, b in backends.items()}
    assert all(left.values()), left

    # restart at once, on the same mountpoint: file and s3 leftovers are removed.
    # The rbd temp image still has the killed client's watch (it lasts until the
    # OSD's osd_client_watch_timeout, 30 s): this start skips it, and says so.
    log_start = len(m.log_text())
    m2 = gsfs_mount(conf, name=m.mountpoint.name)
    log = m2.log_text()[log_start:]
    assert "Cleaned a leftover" in log, log
    assert "file store file: removed unfinished upload" in log and ".gsfs-tmp." in log, log
    assert "aborted the unfinished multipart upload" in log, log
    assert ("rbd store rbd: removed unfinished upload" in log
            or "rbd store rbd: skipped %s/%s: still open" % (rbd_pool, left["rbd"][0]) in log), log
    assert backends["file"].partials() == [] and backends["s3"].partials() == []
    assert backends["file"].image(name) is None
    assert backends["s3"].image(name) is None
    assert sorted(os.listdir(m2.mountpoint)) == ["file", "rbd", "s3"]
    m2.stop()
    assert not is_mounted(m2.mountpoint)

    # once the dead client's watch has expired, the next start removes the rbd leftover
    rbd_left = backends["rbd"].partials()
    deadline = time.monotonic() + 90
    while any(backends["rbd"].watchers(n) for n in rbd_left):
        assert time.monotonic() < deadline, "the killed daemon's rbd watch never expired"
        time.sleep(1)
    log_start = len(m2.log_text())
    m3 = gsfs_mount(conf, name=m.mountpoint.name)
    log = m3.log_text()[log_start:]
    for n in rbd_left:
        assert "rbd store rbd: removed unfinished upload %s/%s" % (rbd_pool, n) in log, log
    assert backends["rbd"].partials() == []
    assert name not in backends["rbd"].names()
    for b in backends.values():
        assert b.partials() == []
    m3.stop()
    assert not is_mounted(m3.mountpoint)


# ------------------------------------------------------------------- gsfs status

def test_status_json_shows_upload_in_flight(gsfs_mount, stores_conf, writers, tmp_path):
    m = gsfs_mount(stores_conf("file"))
    name = unique()
    w = writers(m.path("file", name), size_mib=300, delay=0.01)

    def status():
        r = subprocess.run([GSFS, "status", "--json", str(m.mountpoint)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    deadline = time.monotonic() + 60
    while True:
        first = status()["uploads"]
        if first and first[0]["bytes"] > 0:
            break
        assert time.monotonic() < deadline, "no upload in status"
        assert w.proc.poll() is None, w.proc.communicate()
        time.sleep(0.05)
    assert first[0]["path"] == "file/%s" % name
    assert first[0]["kind"] == "stream"
    time.sleep(0.3)
    second = status()["uploads"]
    assert second and second[0]["path"] == "file/%s" % name
    assert second[0]["bytes"] > first[0]["bytes"], (first, second)
    assert w.wait()["close_errno"] is None and w.ok
    assert status()["uploads"] == []
    assert FileBackend(str(tmp_path / "file-store")).image(name) == (w.size, w.result["md5"])


# ------------------------------------------------------------------- sd_notify

def test_ready_and_stopping_reach_notify_socket(stores_conf, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    m = GsfsMount(tmp_path, stores_conf("file"), env={"NOTIFY_SOCKET": sock_path})
    try:
        # GsfsMount.start() would wait for the mount itself: start by hand
        m.proc = subprocess.Popen(m.command(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                  env=m.env, start_new_session=True)
        datagrams = []
        while not any("READY=1" in d.splitlines() for d in datagrams):
            try:
                datagrams.append(sock.recv(4096).decode())
            except TimeoutError:
                raise AssertionError("no READY=1 (got %r):\n%s" % (datagrams, m.log_text()))\
                    from None
        # at READY=1 the mount answers
        assert is_mounted(m.mountpoint)
        assert os.listdir(m.mountpoint) == ["file"]
        assert any(line.startswith("STATUS=Mounted at") for d in datagrams
                   for line in d.splitlines())
        m.proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in d.splitlines() for d in datagrams):
            try:
                datagrams.append(sock.recv(4096).decode())
            except TimeoutError:
                raise AssertionError("no STOPPING=1 (got %r):\n%s"
                                     % (datagrams, m.log_text())) from None
        assert wait_exit(m.proc, 30) == 0
        assert not is_mounted(m.mountpoint)
    finally:
        m.stop()
        sock.close()


# ------------------------------------------------------------------- background mount

def _pid_running(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def test_background_mount_and_umount(stores_conf, tmp_path):
    mnt = tmp_path / "bg"
    mnt.mkdir()
    conf = tmp_path / "bg.conf"
    conf.write_text(stores_conf("file"))
    log = tmp_path / "bg.log"
    cmd = [GSFS, "mount", "--config-file", str(conf), "--log-file", str(log), str(mnt),
           "-o", "spool_dir=%s" % (tmp_path / "spool")]
    pid = None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert is_mounted(mnt)
        assert "mounted file at %s" % mnt in r.stdout, r.stdout
        pid = int(os.getxattr(mnt, "user.gsfs.pid"))
        assert "pid %d" % pid in r.stdout
        assert _pid_running(pid)
        (mnt / "file" / "hello").write_bytes(b"hello")
        r = subprocess.run([GSFS, "umount", str(mnt)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert not is_mounted(mnt)
        assert not _pid_running(pid)
        assert (tmp_path / "file-store" / "hello").read_bytes() == b"hello"
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if pid is not None and _pid_running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
@pytest.mark.parametrize("case", ["missing-config", "unknown-store-type"])
def test_bad_config_fails_clearly(tmp_path, case, foreground):
    mnt = tmp_path / "bad"
    mnt.mkdir()
    conf = tmp_path / "bad.conf"
    if case == "unknown-store-type":
        conf.write_text("[DEFAULT]\nenabled_backends = weird:nosuchtype\n\n"
                        "[glance_store]\ndefault_backend = weird\n")
        expected = "none of the configured stores could be loaded"
    else:
        expected = "config file %s does not exist" % conf
    cmd = [GSFS, "mount", "--config-file", str(conf), "--log-file", str(tmp_path / "bad.log"),
           str(mnt), "-o", "spool_dir=%s" % (tmp_path / "spool")]
    if foreground:
        cmd.append("-f")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            raise AssertionError("a bad config left %s mounted" % mnt)
    assert r.returncode != 0
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert os.listdir(mnt) == []


# ------------------------------------------------------------------- SIGUSR1

def test_sigusr1_dumps_tasks_and_keeps_serving(gsfs_mount, stores_conf, writers, tmp_path):
    m = gsfs_mount(stores_conf("file"))
    busy = unique()
    w = writers(m.path("file", busy), size_mib=200, delay=0.01)
    wait_uploads(m, ["file/%s" % busy], 1, writers=[w])
    m.proc.send_signal(signal.SIGUSR1)
    wait_log(m, "gsfs task dump")
    assert m.proc.poll() is None
    log = m.log_text()
    assert "task " in log.split("gsfs task dump", 1)[1]
    # keeps serving: the upload under way finishes, a new image round-trips
    assert w.wait()["close_errno"] is None and w.ok, w.result
    name = unique()
    m.path("file", name).write_bytes(b"still here")
    assert m.path("file", name).read_bytes() == b"still here"
    r = m.umount()
    assert r.returncode == 0, r.stderr
    assert m.proc.returncode == 0


def test_background_failure_shows_only_this_runs_log(tmp_path):
    """The log is appended to: a failed mount must not quote an earlier run's error."""
    mnt = tmp_path / "bad"
    mnt.mkdir()
    log = tmp_path / "shared.log"
    missing = tmp_path / "missing.conf"
    conf = tmp_path / "weird.conf"
    conf.write_text("[DEFAULT]\nenabled_backends = weird:nosuchtype\n")
    results = []
    for config in (missing, conf):
        results.append(subprocess.run(
            [GSFS, "mount", "--config-file", str(config), "--log-file", str(log), str(mnt)],
            capture_output=True, text=True, timeout=120))
    assert not is_mounted(mnt)
    assert [r.returncode for r in results] == [1, 1]
    assert "does not exist" in results[0].stderr
    assert "none of the configured stores could be loaded" in results[1].stderr
    assert "does not exist" not in results[1].stderr, results[1].stderr


def test_metrics_file_counts_bytes_per_store(gsfs_mount, stores_conf, tmp_path):
    """-o metrics_file=PATH: Prometheus text, rewritten every few seconds, whose
    byte counters follow what went in and out of each store."""
    metrics = tmp_path / "gsfs.prom"
    m = gsfs_mount(stores_conf("file"), options=["metrics_file=%s" % metrics])
    data = os.urandom(3 * 1024 * 1024 + 5)
    with open(m.path("file", "counted"), "wb") as f:
        f.write(data)
    with open(m.path("file", "counted"), "rb") as f:
        assert f.read() == data
    from tests.test_metrics import value

    def counted(text):
        return (value(text, "gsfs_store_bytes_total", store="file", direction="in"),
                value(text, "gsfs_store_bytes_total", store="file", direction="out"))

    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        text = metrics.read_text() if metrics.exists() else ""
        if counted(text) == (len(data), len(data)):
            break
        time.sleep(0.5)
    assert counted(text) == (len(data), len(data)), text
    assert "# TYPE gsfs_store_bytes_total counter" in text
    assert 'gsfs_uploads_in_flight{store="file"} 0.0' in text
