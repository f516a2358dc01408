"""Faults between gsfs and radosgw's Swift API, on a real mount: every syscall
ends with an errno (or the right answer) within the bound of
tests/test_fault_matrix.py, nothing partial is published, no segment is left,
and the daemon survives.

The swift store logs in through the fault proxy (its auth address is the
proxy's), so radosgw's storage URL, built from the Host header, is the proxy's
too and every request passes it. The proxy classifies Swift requests with its
S3 rules: ``HEAD``, ``GET``/``RANGED_GET`` and ``PUT`` of ``/swift/v1/C/O``;
a container listing is a ``GET`` of ``/swift/v1/C``.
"""

import os
import subprocess
import time

import pytest

from tests.test_fault_matrix import (
    ERROR_BOUND,
    FAULTS,
    STALL,
    assert_outcome,
    daemon_pid,
    read_all,
    timed,
)
from tests.test_fuse_s3_rbd import random_file, run

pytestmark = [pytest.mark.fuse, pytest.mark.ceph]

MB = 1024000


@pytest.fixture
def swift_through_proxy(ceph, swift_container, rgw_proxy, gsfs_mount, stores_conf, tmp_path):
    ref = tmp_path / "proxied-swift.conf"
    ref.write_text("[ref1]\nuser = %s\nkey = %s\nauth_address = %s/auth/1.0\nauth_version = 1\n"
                   % (ceph.swift_user, ceph.swift_key, rgw_proxy.url))
    conf = stores_conf("swift", extra={"swift": {"swift_store_config_file": ref}})
    m = gsfs_mount(conf, options=("cache_ttl=0.2",))
    src = random_file(tmp_path / "present.raw", 3 * MB + 5)
    run("cp", src, m.path("swift", "present"))
    return m, ceph.swift_connection(), swift_container, rgw_proxy, src


def container_names(conn, container):
    _, listed = conn.get_container(container, full_listing=True)
    return sorted(o["name"] for o in listed)


@pytest.mark.parametrize("fault", FAULTS)
def test_swift_faults_on_every_operation(swift_through_proxy, fault, tmp_path):
    m, conn, container, proxy, src = swift_through_proxy
    pid = daemon_pid(m)
    seconds = STALL if fault == "stall" else None
    size = os.path.getsize(src)
    assert any(target.startswith("/swift/v1/") for _, _, target, _ in proxy.requests)
    before = container_names(conn, container)

    # lookup → HEAD of the object
    proxy.add_rule("HEAD", fault, count=None, seconds=seconds, match="/present")
    time.sleep(1.3)       # past the kernel's entry cache and cache_ttl
    result, took = timed(os.stat, m.path("swift", "present"))
    proxy.clear()
    assert_outcome(fault, result, took, lambda st: st.st_size == size)

    # readdir → GET of the container (a listing)
    time.sleep(1.3)
    proxy.add_rule("GET", fault, count=None, seconds=seconds, match=container,
                   match_not=container + "/")
    result, took = timed(os.listdir, m.path("swift"))
    proxy.clear()
    assert_outcome(fault, result, took, lambda names: names == ["present"])

    # read → ranged GETs of the manifest
    proxy.add_rule("RANGED_GET", fault, count=None, seconds=seconds, match="/present")
    proxy.add_rule("GET", fault, count=None, seconds=seconds, match="/present")
    result, took = timed(read_all, m.path("swift", "present"))
    proxy.clear()
    assert_outcome(fault, result, took, lambda data: data == src.read_bytes())

    # write → a segment PUT, and commit → the manifest PUT (10 MB: 3 segments)
    big = random_file(tmp_path / "big.raw", 10 * MB)
    if fault != "truncate":          # a PUT's answer has no body to cut
        for what, name, match in (("segment", "w-seg", "/.gsfs-segments/"),
                                  ("manifest", "w-man", "/w-man")):
            proxy.add_rule("PUT", fault, count=None, seconds=seconds, match=match)
            t0 = time.monotonic()
            proc = subprocess.run(["cp", str(big), str(m.path("swift", name))],
                                  capture_output=True, text=True)
            took = time.monotonic() - t0
            proxy.clear()
            assert took < ERROR_BOUND + 10 * (STALL if fault == "stall" else 0), (what, took)
            if fault == "stall":
                assert proc.returncode == 0, proc.stderr
                assert conn.get_object(container, name)[1] == big.read_bytes()
                conn.delete_object(container, name)
                before_segments = [n for n in before if n.startswith(".gsfs-segments/")]
                for seg in container_names(conn, container):
                    if seg.startswith(".gsfs-segments/") and seg not in before_segments:
                        conn.delete_object(container, seg)
            else:
                assert proc.returncode != 0 and "Input/output error" in proc.stderr, \
                    (what, proc.stderr)
                assert name not in os.listdir(m.path("swift")), what
            # nothing published, no segment left when cp has returned
            assert container_names(conn, container) == before, what

    assert daemon_pid(m) == pid and m.proc.poll() is None
