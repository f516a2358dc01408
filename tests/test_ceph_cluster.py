"""The Ceph test cluster itself: rbd as the restricted client.gsfs, S3 on radosgw, rgw restart."""

import hashlib
import os
import subprocess
import uuid

import botocore.exceptions
import pytest
import rados
import rbd

from tests.servers.ceph import purge_bucket

pytestmark = pytest.mark.ceph


def test_rbd_image_roundtrip_as_client_gsfs(ceph):
    # only conffile + rados_id: the keyring must be found through ceph.conf
    cluster = rados.Rados(conffile=ceph.conf_path, rados_id=ceph.rbd_user)
    cluster.connect(timeout=30)
    try:
        assert cluster.get_fsid() == ceph.fsid
        with cluster.open_ioctx(ceph.pool) as ioctx:
            name = "test-%s" % uuid.uuid4().hex[:12]
            size = 16 << 20
            rbd.RBD().create(ioctx, name, size, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
            try:
                assert name in rbd.RBD().list(ioctx)
                data = os.urandom(4 << 20)
                with rbd.Image(ioctx, name) as img:
                    assert img.size() == size
                    img.write(data, 0)
                    img.write(data, size - len(data))
                    img.flush()
                    img.create_snap("snap")
                    img.protect_snap("snap")
                with rbd.Image(ioctx, name, snapshot="snap", read_only=True) as img:
                    head = img.read(0, len(data))
                    tail = img.read(size - len(data), len(data))
                    hole = img.read(len(data), 1 << 20)
                assert hashlib.sha256(head).digest() == hashlib.sha256(data).digest()
                assert tail == data
                assert hole == b"\0" * (1 << 20)
                with rbd.Image(ioctx, name) as img:
                    img.unprotect_snap("snap")
                    img.remove_snap("snap")
            finally:
                rbd.RBD().remove(ioctx, name)
            assert name not in rbd.RBD().list(ioctx)
    finally:
        cluster.shutdown()


def test_client_gsfs_is_confined_to_its_pool(ceph):
    cluster = rados.Rados(conffile=ceph.conf_path, rados_id=ceph.rbd_user)
    cluster.connect(timeout=30)
    try:
        assert ceph.pool in cluster.list_pools()
        with cluster.open_ioctx(".rgw.root") as ioctx:
            with pytest.raises(rados.PermissionError):
                ioctx.write_full("gsfs-must-not-write-here", b"x")
    finally:
        cluster.shutdown()


def test_daemons_listen_on_loopback_only(ceph):
    pids = ceph.pids()
    assert set(pids) == {"mon.a", "osd.0", "rgw"}
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    seen = 0
    for line in out.splitlines():
        if any("pid=%d," % pid in line for pid in pids.values()):
            seen += 1
            assert line.split()[3].startswith("127.0.0.1:"), line
    assert seen >= 3  # mon, osd (4 messengers), rgw
    assert ceph.rgw_endpoint.startswith("http://127.0.0.1:")


def test_s3_put_get_delete(ceph, s3_bucket):
    s3 = ceph.s3_client()
    body = os.urandom(100_000)
    r = s3.put_object(Bucket=s3_bucket, Key="dir/obj", Body=body, Metadata={"owner": "gsfs"})
    assert r["ETag"].strip('"') == hashlib.md5(body).hexdigest()
    head = s3.head_object(Bucket=s3_bucket, Key="dir/obj")
    assert head["ContentLength"] == len(body)
    assert head["Metadata"] == {"owner": "gsfs"}
    assert s3.get_object(Bucket=s3_bucket, Key="dir/obj")["Body"].read() == body
    ranged = s3.get_object(Bucket=s3_bucket, Key="dir/obj", Range="bytes=10-19")
    assert ranged["Body"].read() == body[10:20]
    s3.delete_object(Bucket=s3_bucket, Key="dir/obj")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=s3_bucket, Key="dir/obj")
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_purge_bucket_aborts_multipart_uploads(ceph):
    s3 = ceph.s3_client()
    name = "gsfs-purge-%s" % uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="a", Body=b"a")
    up = s3.create_multipart_upload(Bucket=name, Key="pending")
    s3.upload_part(
        Bucket=name, Key="pending", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * (5 << 20)
    )
    purge_bucket(s3, name)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert name not in names


def test_stop_rgw_then_start_rgw_same_endpoint(ceph, s3_bucket):
    endpoint = ceph.rgw_endpoint
    s3 = ceph.s3_client(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2)
    s3.put_object(Bucket=s3_bucket, Key="before", Body=b"still here")

    ceph.stop_rgw()
    assert not ceph.rgw_running
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        s3.get_object(Bucket=s3_bucket, Key="before")

    ceph.start_rgw()
    assert ceph.rgw_running
    assert ceph.rgw_endpoint == endpoint
    assert s3.get_object(Bucket=s3_bucket, Key="before")["Body"].read() == b"still here"
    s3.put_object(Bucket=s3_bucket, Key="after", Body=b"back")
    assert s3.get_object(Bucket=s3_bucket, Key="after")["Body"].read() == b"back"


def test_stop_rgw_with_sigkill(ceph):
    s3 = ceph.s3_client(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2)
    ceph.stop_rgw(kill=True)
    try:
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            s3.list_buckets()
    finally:
        ceph.start_rgw()
    s3.list_buckets()
