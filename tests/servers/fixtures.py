"""pytest fixtures for the real Ceph cluster (rbd pool + radosgw S3).

Load with ``pytest_plugins = ["tests.servers.fixtures"]`` (tests/conftest.py does).

- ``ceph`` (session): a started :class:`tests.servers.ceph.CephCluster`; stopped at the end
  of the session, on failure and on interruption (SIGTERM is turned into KeyboardInterrupt
  while it runs so pytest tears it down; an atexit hook and a watchdog in ceph.sh remain as
  last resorts). Missing Ceph programs FAIL the tests (never skip): run ``make setup``.
- ``swift_container`` (function): a fresh container on radosgw's Swift API; emptied
  afterwards (and left, as for s3_bucket). ``swift_config_file``: a glance-swift.conf
  for it (reference ref1).
- ``s3_bucket`` (function): the name of a fresh, uniquely named bucket on radosgw; emptied
  (objects, versions, pending multipart uploads) afterwards, and left empty: deleting it
  costs time (20 s once radosgw was restarted) and the cluster goes at the session's end.
  Use ``ceph.s3_client()`` for a client.
"""

from __future__ import annotations

import signal
import threading
import uuid

import pytest

from tests.servers.ceph import CephCluster, missing_programs, purge_bucket


def _sigterm_to_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


@pytest.fixture(scope="session")
def ceph(tmp_path_factory):
    missing = missing_programs()
    if missing:
        pytest.fail(
            "the Ceph test cluster cannot start: %s not found on PATH. "
            "Run `make setup` (installs ceph-mon, ceph-osd, ceph-common, radosgw and the "
            "rados/rbd Python bindings)." % ", ".join(missing),
            pytrace=False,
        )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)
    cluster = CephCluster()
    try:
        cluster.start(tmp_path_factory.mktemp("ceph"))
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def s3_bucket(ceph):
    s3 = ceph.s3_client()
    name = "gsfs-test-%s" % uuid.uuid4().hex[:20]
    s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        if not ceph.rgw_running:  # a test stopped radosgw and did not bring it back
            ceph.start_rgw()
        purge_bucket(ceph.s3_client(), name, delete=False)


@pytest.fixture
def swift_container(ceph):
    """A fresh container on radosgw's Swift API (the same namespace as S3
    buckets: it is emptied through S3 afterwards)."""
    name = "gsfs-swift-%s" % uuid.uuid4().hex[:20]
    ceph.swift_connection().put_container(name)
    try:
        yield name
    finally:
        if not ceph.rgw_running:
            ceph.start_rgw()
        purge_bucket(ceph.s3_client(), name, delete=False)


@pytest.fixture
def swift_config_file(ceph, tmp_path):
    """A glance-swift.conf with reference ``ref1`` for the gsfs:swift subuser (v1 auth)."""
    path = tmp_path / "glance-swift.conf"
    path.write_text("[ref1]\nuser = %s\nkey = %s\nauth_address = %s\nauth_version = 1\n"
                    % (ceph.swift_user, ceph.swift_key, ceph.swift_auth))
    return path
