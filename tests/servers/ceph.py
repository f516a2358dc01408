"""A real single-node Ceph cluster (mon + osd + radosgw on 127.0.0.1) for the tests.

Drives ``tests/servers/ceph.sh``; see that script for what the cluster looks like.

    cluster = CephCluster().start(tmpdir)
    rados.Rados(conffile=cluster.conf_path, rados_id=cluster.rbd_user)   # pool cluster.pool
    cluster.s3_client()                                                  # boto3 on radosgw
    cluster.stop_rgw(); cluster.start_rgw()                              # same endpoint again
    cluster.stop()
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.servers import stop_at_exit

SCRIPT = Path(__file__).with_name("ceph.sh")

#: programs the script needs; all come from `make setup` (Debian packages)
REQUIRED_PROGRAMS = (
    "ceph-mon",
    "ceph-osd",
    "ceph",
    "ceph-authtool",
    "monmaptool",
    "rbd",
    "radosgw",
    "radosgw-admin",
    "curl",
    "uuidgen",
)

UP_TIMEOUT = 300  # seconds for `ceph.sh up` (takes ~8 s here)
DOWN_TIMEOUT = 120
MAX_BASE_LEN = 55  # ceph.sh refuses cluster dirs longer than 60 characters

_live: set[CephCluster] = set()
_live_lock = threading.Lock()


def missing_programs() -> list[str]:
    """The programs the cluster needs that are not on PATH."""
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]


class CephClusterError(RuntimeError):
    pass


class CephCluster:
    pool = "images"
    rbd_user = "gsfs"

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.conf_path: str | None = None
        self.fsid: str | None = None
        self.rgw_endpoint: str | None = None
        self._s3_clients: dict = {}     # endpoint → the default boto3 client (thread-safe)
        self.access_key: str | None = None
        self.secret_key: str | None = None
        self.rgw_running = False
        self.env: dict[str, str] = {}
        self._own_base: Path | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self, tmpdir: str | os.PathLike) -> CephCluster:
        """Create and start a cluster in ``tmpdir/c`` (``tmpdir`` should exist and be short)."""
        if self.dir is not None:
            raise CephClusterError("cluster already started")
        missing = missing_programs()
        if missing:
            raise CephClusterError(
                "Ceph programs missing: %s. Run `make setup` (it installs ceph-mon, ceph-osd, "
                "ceph-common, radosgw, ...)." % ", ".join(missing)
            )
        base = Path(tmpdir).resolve()
        if len(str(base)) > MAX_BASE_LEN:
            # unix socket paths (admin sockets in DIR/run) are limited to 107 bytes
            base = Path(tempfile.mkdtemp(prefix="gsfs-ceph-", dir="/tmp"))
            self._own_base = base
        self.dir = base / "c"
        with _live_lock:
            _live.add(self)
        env = dict(os.environ, CEPH_OWNER_PID=str(os.getpid()))
        try:
            proc = subprocess.run(
                ["bash", str(SCRIPT), "up", str(self.dir)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=UP_TIMEOUT,
                env=env,
            )
        except BaseException:
            # timeout, KeyboardInterrupt, ...: whatever was started must go
            self.stop()
            raise
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            self.stop()
            raise CephClusterError(
                "`ceph.sh up %s` failed with exit code %d:\n%s"
                % (self.dir, proc.returncode, proc.stderr[-6000:])
            )
        self.env = _parse_assignments(proc.stdout)
        try:
            self.conf_path = self.env["CEPH_CONF"]
            self.fsid = self.env["CEPH_FSID"]
            self.rgw_endpoint = self.env["RGW_ENDPOINT"]
            self.access_key = self.env["RGW_ACCESS_KEY"]
            self.secret_key = self.env["RGW_SECRET_KEY"]
            self.swift_auth = self.env["SWIFT_AUTH"]
            self.swift_user = self.env["SWIFT_USER"]
            self.swift_key = self.env["SWIFT_KEY"]
        except KeyError as e:
            self.stop()
            raise CephClusterError("`ceph.sh up` printed no %s:\n%s" % (e, proc.stdout)) from None
        self.rgw_running = True
        return self

    def stop(self) -> None:
        """Stop every daemon and remove the cluster directory. Safe to call repeatedly."""
        with _live_lock:
            _live.discard(self)
        self.rgw_running = False
        if self.dir is None:
            return
        proc = None
        if self.dir.exists():
            proc = self._run("down", timeout=DOWN_TIMEOUT, check=False)
        if self._own_base is not None:
            shutil.rmtree(self._own_base, ignore_errors=True)
        if proc is not None and proc.returncode != 0:
            raise CephClusterError("`ceph.sh down %s` failed:\n%s" % (self.dir, proc.stderr))

    def stop_rgw(self, kill: bool = False) -> None:
        """Stop radosgw (SIGTERM, or SIGKILL with kill=True); the endpoint then refuses."""
        self._run("stop-rgw", "KILL" if kill else "TERM")
        self.rgw_running = False

    def start_rgw(self) -> None:
        """Start radosgw again on the same endpoint and wait until it answers."""
        self._run("start-rgw", timeout=UP_TIMEOUT)
        self.rgw_running = True

    # -- helpers -------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """Recorded daemon PIDs by name (mon.a, osd.0, rgw)."""
        out = {}
        for name in ("mon.a", "osd.0", "rgw"):
            try:
                out[name] = int((self.dir / "run" / f"{name}.pid").read_text())
            except (OSError, ValueError, TypeError):
                pass
        return out

    def s3_client(self, endpoint_url=None, **config):
        """A boto3 S3 client for radosgw (path style, us-east-1, checksums only when required).

        Keyword arguments override/extend the botocore Config, e.g. retries={"max_attempts": 1};
        ``endpoint_url`` talks to another address (a fault proxy in front of radosgw).
        """
        import boto3
        from botocore.config import Config

        opts = dict(
            region_name="us-east-1",
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            proxies={},
        )
        opts.update(config)
        key = endpoint_url or self.rgw_endpoint
        if not config and key in self._s3_clients:
            return self._s3_clients[key]     # creating a client costs 0.2-0.3 s
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or self.rgw_endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**opts),
        )
        if not config:
            self._s3_clients[key] = client
        return client

    def swift_connection(self, authurl=None, **kwargs):
        """A python-swiftclient Connection to radosgw's Swift API (v1 auth as
        the ``gsfs:swift`` subuser); ``authurl`` goes elsewhere (a fault proxy)."""
        import swiftclient

        opts = dict(auth_version="1", retries=1, timeout=60)
        opts.update(kwargs)
        return swiftclient.Connection(authurl=authurl or self.swift_auth,
                                      user=self.swift_user, key=self.swift_key, **opts)

    def _run(self, *args: str, timeout: float = 60, check: bool = True):
        if self.dir is None:
            raise CephClusterError("cluster not started")
        proc = subprocess.run(
            ["bash", str(SCRIPT), args[0], str(self.dir), *args[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        sys.stderr.write(proc.stderr)
        if check and proc.returncode != 0:
            raise CephClusterError(
                "`ceph.sh %s` failed with exit code %d:\n%s"
                % (" ".join(args), proc.returncode, proc.stderr[-6000:])
            )
        return proc

    def __repr__(self) -> str:
        return "<CephCluster %s rgw=%s>" % (self.dir, self.rgw_endpoint)


def _parse_assignments(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isidentifier():
            words = shlex.split(value)
            out[name] = words[0] if words else ""
    return out


def purge_bucket(s3, bucket: str, delete: bool = True) -> None:
    """Abort pending multipart uploads, delete every object (and version), delete the
    bucket (``delete``; an emptied bucket costs nothing in a cluster that is thrown away)."""
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for up in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    if delete:
        s3.delete_bucket(Bucket=bucket)


stop_at_exit(_live, _live_lock)
