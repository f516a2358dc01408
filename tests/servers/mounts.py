"""Real gsfs mounts for tests: ``gsfs mount -f`` in a subprocess.

``GsfsMount.start()`` returns once the mount answers (fails fast, with the
daemon's log, if the daemon exits). ``stop()`` always leaves nothing behind:
``gsfs umount``, then ``fusermount3 -u``, then ``-z`` as a last resort, then
SIGTERM/SIGKILL of the daemon by its process id.

``gsfs_mounts_under(dir)`` / ``gsfs_daemons_under(dir)``: the mounts and the
daemons (foreground ``gsfs mount`` or background ``gsfs.cli mount``) whose
mount point is below ``dir``; tests/conftest.py checks at the end of the run
that none is left below pytest's base temp.

Fixtures:
``gsfs_mount``   factory: ``gsfs_mount(config_text, options=("allow_replace",))``
``stores_conf``  factory building a glance-api.conf with any of the stores
                 file / http / s3 / rbd, all on the real servers of this session.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
GSFS = str(VENV_BIN / "gsfs")


def gsfs_mounts_under(base):
    base = str(base)
    with open("/proc/mounts") as f:
        return [line for line in f
                if line.split()[2].startswith("fuse") and line.split()[1].startswith(base)]


def gsfs_daemons_under(base):
    out = subprocess.run(["pgrep", "-af", "gsfs mount|gsfs.cli mount"], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if str(base) in line]


def is_mounted(path):
    path = os.path.abspath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path and line.split()[2].startswith("fuse")
                   for line in f)


class GsfsMount:
    def __init__(self, workdir, config_text=None, options=(), env=None, name="mnt"):
        self.workdir = Path(workdir)
        self.mountpoint = self.workdir / name
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / ("%s.log" % name)
        self.config = None
        if config_text is not None:
            self.config = self.workdir / ("%s.conf" % name)
            self.config.write_text(config_text)
        self.options = list(options)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None

    def command(self):
        cmd = [GSFS, "mount", str(self.mountpoint), "-f", "--log-file", str(self.log)]
        if self.config is not None:
            cmd += ["--config-file", str(self.config)]
        spool = self.workdir / "spool"
        cmd += ["-o", ",".join(self.options + ["spool_dir=%s" % spool])]
        return cmd

    def start(self, timeout=60):
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("gsfs exited with %s before mounting:\n%s"
                                     % (self.proc.returncode, self.log_text()))
            if is_mounted(self.mountpoint):
                try:
                    os.getxattr(self.mountpoint, "user.gsfs.pid")
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError("gsfs did not mount within %s s:\n%s" % (timeout, self.log_text()))

    def path(self, *parts):
        return self.mountpoint.joinpath(*parts)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def umount(self, timeout=300):
        """``gsfs umount``: waits for uploads, unmounts, waits for the daemon."""
        result = subprocess.run([GSFS, "umount", str(self.mountpoint)], capture_output=True,
                                text=True, timeout=timeout)
        if self.proc is not None:
            self.proc.wait(timeout=timeout)
        return result

    def stop(self):
        """Leave nothing behind, whatever state the mount is in."""
        try:
            if is_mounted(self.mountpoint) and self.proc is not None and self.proc.poll() is None:
                try:
                    subprocess.run([GSFS, "umount", str(self.mountpoint)], timeout=120,
                                   capture_output=True)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for args in (["-u"], ["-u", "-z"]):
                if not is_mounted(self.mountpoint):
                    break
                subprocess.run(["fusermount3", *args, str(self.mountpoint)],
                               capture_output=True)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)


@pytest.fixture
def gsfs_mount(tmp_path):
    mounts = []

    def make(config_text=None, options=(), env=None, name=None):
        m = GsfsMount(tmp_path, config_text, options, env, name or "mnt%d" % len(mounts))
        mounts.append(m)
        return m.start()

    try:
        yield make
    finally:
        for m in mounts:
            m.stop()


def ini_text(sections):
    lines = []
    for section, values in sections.items():
        lines.append("[%s]" % section)
        lines += ["%s = %s" % (k, v) for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def stores_conf(tmp_path, request):
    """``stores_conf("file", "http", "s3", "rbd", "swift", default="file")`` → ini text.

    The store ids are the names given. s3 gets a fresh bucket (emptied and
    removed afterwards), swift a fresh container (v1 auth, small segments); rbd
    uses the session cluster's pool, and every image a test creates there is
    removed afterwards (fixture ``rbd_pool``).
    """

    def make(*kinds, default=None, extra=None):
        enabled, sections = [], {}
        for kind in kinds:
            enabled.append("%s:%s" % (kind, kind))
            if kind == "file":
                sections["file"] = {"filesystem_store_datadir": tmp_path / "file-store",
                                    "store_description": "local images"}
            elif kind == "http":
                server = request.getfixturevalue("http_server")
                sections["http"] = {"gsfs_http_base_url": server.base_url + "/images"}
                (server.root / "images").mkdir(exist_ok=True)
            elif kind == "s3":
                ceph = request.getfixturevalue("ceph")
                bucket = request.getfixturevalue("s3_bucket")
                sections["s3"] = {"s3_store_host": ceph.rgw_endpoint,
                                  "s3_store_access_key": ceph.access_key,
                                  "s3_store_secret_key": ceph.secret_key,
                                  "s3_store_bucket": bucket,
                                  "s3_store_bucket_url_format": "path",
                                  "s3_store_large_object_size": 16,
                                  "s3_store_large_object_chunk_size": 5,
                                  "s3_store_thread_pools": 4}
            elif kind == "swift":
                container = request.getfixturevalue("swift_container")
                sections["swift"] = {
                    "swift_store_config_file": request.getfixturevalue("swift_config_file"),
                    "swift_store_container": container,
                    "swift_store_large_object_size": 8,          # 8,192,000 bytes
                    "swift_store_large_object_chunk_size": 4,
                    "gsfs_swift_journal_dir": tmp_path / "swift-journal"}
            elif kind == "rbd":
                ceph = request.getfixturevalue("ceph")
                pool = request.getfixturevalue("rbd_pool")
                sections["rbd"] = {"rbd_store_pool": pool, "rbd_store_user": ceph.rbd_user,
                                   "rbd_store_ceph_conf": ceph.conf_path,
                                   "rbd_store_chunk_size": 4}
            else:
                raise ValueError(kind)
        text = {"DEFAULT": {"enabled_backends": ", ".join(enabled)},
                "glance_store": {"default_backend": default or kinds[0]}}
        text.update(sections)
        for section, values in (extra or {}).items():
            text.setdefault(section, {}).update(values)
        return ini_text(text)

    return make


@pytest.fixture
def rbd_pool(ceph):
    """The cluster's rbd pool, with every image a test made removed afterwards."""
    import rados
    import rbd

    cluster = rados.Rados(conffile=ceph.conf_path, rados_id=ceph.rbd_user)
    cluster.connect(timeout=30)
    try:
        with cluster.open_ioctx(ceph.pool) as ioctx:
            before = set(rbd.RBD().list(ioctx))
        yield ceph.pool
        with cluster.open_ioctx(ceph.pool) as ioctx:
            for name in set(rbd.RBD().list(ioctx)) - before:
                remove_rbd_image(ioctx, name)
    finally:
        cluster.shutdown()


def remove_rbd_image(ioctx, name):
    """Remove image ``name`` and its snapshots, if it exists. Existence is checked
    with a RADOS stat first: a failed open makes librbd 16.2 crash the process
    later (see gsfs/drivers/rbd.py)."""
    import rados
    import rbd

    try:
        ioctx.stat("rbd_id." + name)
    except rados.ObjectNotFound:
        return
    try:
        with rbd.Image(ioctx, name) as image:
            for snap in list(image.list_snaps()):
                if image.is_protected_snap(snap["name"]):
                    image.unprotect_snap(snap["name"])
                image.remove_snap(snap["name"])
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass


def unique(prefix="img"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


