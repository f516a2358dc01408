"""Glance's catalog in the mount (gsfs/catalog.py, gsfs/fs/catalog_view.py), with a real
Glance 33 API server (tests/servers/glance.py) on the same file and s3 stores as the mount.

The mount talks to Glance with ``[gsfs_catalog] auth_type = none`` and
``endpoint_override`` (a Glance without Keystone), ``catalog_ttl = 0`` so every
question reaches Glance.
"""

import hashlib
import os
import uuid

import pytest

from tests.test_fuse_file_http import getfattr_d, run

pytestmark = [pytest.mark.fuse, pytest.mark.ceph]

MiB = 1024 * 1024


def catalog_conf(stores_text, url, **extra):
    lines = ["", "[gsfs_catalog]", "auth_type = none", "endpoint_override = %s" % url,
             "catalog_ttl = 0"] + ["%s = %s" % kv for kv in extra.items()]
    return stores_text + "\n".join(lines) + "\n"


def glance_image(g, data, name, store):
    """An image created and uploaded through Glance's API into ``store``."""
    s = g.session()
    image_id = str(uuid.uuid4())
    r = s.post(g.url + "/v2/images", json={"id": image_id, "name": name,
                                           "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    r = s.put(g.url + "/v2/images/%s/file" % image_id, data=data,
              headers={"Content-Type": "application/octet-stream",
                       "X-Image-Meta-Store": store})
    assert r.status_code == 204, r.text
    record = g.image(image_id)
    assert record["status"] == "active" and record["stores"] == store, record
    return image_id, record


def test_catalog_fields_and_checksums_in_the_mount(glance_server, gsfs_mount, stores_conf,
                                                    tmp_path):
    text = stores_conf("file", "s3", default="file")
    g = glance_server(text)
    data = os.urandom(3 * MiB + 5)
    image_id, record = glance_image(g, data, "cirros-test", "file")
    m = gsfs_mount(catalog_conf(text, g.url))
    attrs = getfattr_d(m.path("file", image_id))
    assert attrs["user.glance.name"] == "cirros-test"
    assert attrs["user.glance.status"] == "active"
    assert attrs["user.glance.disk_format"] == "raw"
    assert attrs["user.glance.container_format"] == "bare"
    assert attrs["user.glance.catalog"] == "listed"
    # checksums computed by gsfs's full read equal the catalog's
    assert attrs["user.glance.checksum"] == record["checksum"] == hashlib.md5(data).hexdigest()
    assert attrs["user.glance.os_hash_value"] == record["os_hash_value"]
    # an image Glance does not know: not listed, and a plain rm deletes it
    src = tmp_path / "other.raw"
    src.write_bytes(b"x" * 1000)
    other = str(uuid.uuid4())
    run("cp", src, m.path("file", other))
    assert getfattr_d(m.path("file", other))["user.glance.catalog"] == "not-listed"
    run("rm", m.path("file", other))
    assert other not in os.listdir(m.path("file"))
    # renaming Glance's image would leave its location pointing at nothing
    result = run("mv", m.path("file", image_id), m.path("file", image_id + "-x"), check=False)
    assert result.returncode != 0 and "Device or resource busy" in result.stderr, result.stderr
    assert image_id in os.listdir(m.path("file"))
    assert g.image(image_id)["stores"] == "file"


def test_rm_goes_through_glance_and_fails_safe(glance_server, gsfs_mount, stores_conf,
                                               ceph, s3_bucket, tmp_path):
    text = stores_conf("file", "s3", default="file")
    g = glance_server(text)
    data = os.urandom(2 * MiB + 7)
    image_id, _ = glance_image(g, data, "two-copies", "file")
    r = g.session().post(g.url + "/v2/images/%s/import" % image_id,
                         json={"method": {"name": "copy-image"}, "stores": ["s3"]})
    assert r.status_code == 202, r.text
    g.wait_image(image_id, lambda rec: set(rec["stores"].split(",")) == {"file", "s3"})
    m = gsfs_mount(catalog_conf(text, g.url))
    s3 = ceph.s3_client()

    # one of two copies: Glance deletes it and its record keeps the other
    run("rm", m.path("file", image_id))
    assert g.image(image_id)["stores"] == "s3"
    assert not (tmp_path / "file-store" / image_id).exists()
    assert "through Glance's catalog" in m.log_text()

    # the last copy: Glance refuses, nothing is deleted
    result = run("rm", m.path("s3", image_id), check=False)
    assert result.returncode != 0 and "Device or resource busy" in result.stderr, result.stderr
    assert s3.head_object(Bucket=s3_bucket, Key=image_id)["ContentLength"] == len(data)
    assert g.image(image_id)["stores"] == "s3"
    assert "Glance refused to delete" in m.log_text()

    # the catalog unreachable: rm fails safe, the xattr says so
    g.stop()
    assert getfattr_d(m.path("s3", image_id))["user.glance.catalog"] == "unavailable"
    result = run("rm", m.path("s3", image_id), check=False)
    assert result.returncode != 0 and "Resource temporarily unavailable" in result.stderr, \
        result.stderr
    assert s3.head_object(Bucket=s3_bucket, Key=image_id)["ContentLength"] == len(data)
    # reads go on from the store
    assert run("md5sum", m.path("s3", image_id)).stdout.split()[0] == \
        hashlib.md5(data).hexdigest()
    m.stop()

    # catalog_protect=off: a plain delete
    m = gsfs_mount(catalog_conf(text, g.url), options=("catalog_protect=off",))
    run("rm", m.path("s3", image_id))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert image_id not in keys, keys
    assert image_id not in os.listdir(m.path("s3"))
