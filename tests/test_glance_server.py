"""The real Glance API the catalog tests run against (tests/servers/glance.py): Glance 33 under
uWSGI with a file store and an s3 store on the session's radosgw. An image is created,
uploaded, read back, copied to the other store with copy-image, removed from one store and
deleted, and each step is checked in Glance's record and in the stores themselves."""

import hashlib
import os
import time

import pytest
from botocore.exceptions import ClientError

from tests.servers.glance import image_stores, venv_problem

IMAGE_ID = "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
DATA = os.urandom(3 << 20)


def s3_store_section(ceph, bucket):
    return {
        "s3_store_host": ceph.rgw_endpoint,
        "s3_store_access_key": ceph.access_key,
        "s3_store_secret_key": ceph.secret_key,
        "s3_store_bucket": bucket,
        "s3_store_create_bucket_on_put": False,
        "s3_store_bucket_url_format": "path",
        "s3_store_large_object_size": 5,
        "s3_store_large_object_chunk_size": 5,
    }


def s3_has(ceph, bucket, key):
    try:
        ceph.s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as e:
        if e.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise


@pytest.mark.ceph
def test_glance_image_on_file_and_s3_stores(ceph, s3_bucket, glance_server, tmp_path):
    datadir = tmp_path / "fs-store"
    t0 = time.monotonic()
    glance = glance_server({
        "DEFAULT": {"enabled_backends": "fs:file, cloud:s3"},
        "glance_store": {"default_backend": "fs"},
        "fs": {"filesystem_store_datadir": datadir},
        "cloud": s3_store_section(ceph, s3_bucket),
    })
    print("Glance answered after %.1f s (pid %d, %s)" % (time.monotonic() - t0, glance.pid,
                                                         glance.url))
    api = glance.url + "/v2"
    s = glance.session()

    r = s.post(api + "/images", json={"id": IMAGE_ID, "name": "gsfs-smoke",
                                      "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "queued"

    r = s.put("%s/images/%s/file" % (api, IMAGE_ID), data=DATA,
              headers={"Content-Type": "application/octet-stream", "X-Image-Meta-Store": "fs"})
    assert r.status_code == 204, r.text
    image = glance.image(IMAGE_ID, s)
    assert image["status"] == "active"
    assert image["size"] == len(DATA)
    assert image["checksum"] == hashlib.md5(DATA).hexdigest()
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
    assert image_stores(image) == {"fs"}
    assert (datadir / IMAGE_ID).read_bytes() == DATA
    assert not s3_has(ceph, s3_bucket, IMAGE_ID)

    r = s.get("%s/images/%s/file" % (api, IMAGE_ID))
    assert r.status_code == 200 and r.content == DATA

    # copy-image to the s3 store (a task: poll until the record lists both)
    r = s.post("%s/images/%s/import" % (api, IMAGE_ID),
               json={"method": {"name": "copy-image"}, "stores": ["cloud"]})
    assert r.status_code == 202, r.text
    image = glance.wait_image(
        IMAGE_ID, lambda im: image_stores(im) == {"fs", "cloud"}
        or im.get("os_glance_failed_import"), timeout=60, session=s)
    assert image_stores(image) == {"fs", "cloud"}, image
    assert not image.get("os_glance_failed_import"), image
    assert ceph.s3_client().get_object(Bucket=s3_bucket, Key=IMAGE_ID)["Body"].read() == DATA

    # one store's copy goes from the record and from the store
    r = s.delete("%s/stores/fs/%s" % (api, IMAGE_ID))
    assert r.status_code == 204, r.text
    image = glance.image(IMAGE_ID, s)
    assert image_stores(image) == {"cloud"}
    assert image["status"] == "active"
    assert not (datadir / IMAGE_ID).exists()
    r = s.get("%s/images/%s/file" % (api, IMAGE_ID))
    assert r.status_code == 200 and r.content == DATA

    # not the last one
    r = s.delete("%s/stores/cloud/%s" % (api, IMAGE_ID))
    assert r.status_code == 403, r.text
    assert s3_has(ceph, s3_bucket, IMAGE_ID)

    r = s.delete("%s/images/%s" % (api, IMAGE_ID))
    assert r.status_code == 204, r.text
    assert s.get("%s/images/%s" % (api, IMAGE_ID)).status_code == 404
    assert not s3_has(ceph, s3_bucket, IMAGE_ID)


def test_missing_glance_venv_says_make_setup(tmp_path):
    problem = venv_problem(tmp_path / "no-venv")
    assert problem is not None and "make setup" in problem
