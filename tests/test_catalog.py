"""Glance's catalog in the mount (gsfs/catalog.py, gsfs/fs/catalog_view.py), with a real
Glance 33 API server (tests/servers/glance.py) on the same file and s3 stores as the mount.

The mount talks to Glance with ``[gsfs_catalog] auth_type = none`` and
``endpoint_override`` (a Glance without Keystone), ``catalog_ttl = 0`` so every
question reaches Glance.
"""

import concurrent.futures
import hashlib
import json
import os
import threading
import time
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

    # an image Glance is still writing (a slow upload, status saving): not deleted
    slow_id = str(uuid.uuid4())
    r = g.session().post(g.url + "/v2/images", json={"id": slow_id, "name": "slow",
                                                     "disk_format": "raw",
                                                     "container_format": "bare"})
    assert r.status_code == 201, r.text
    chunk = os.urandom(MiB)
    go_on = threading.Event()

    class Body:
        """2 MiB of known length that stops half way until told to go on."""

        def __init__(self):
            self.sent = 0

        def __len__(self):
            return 2 * MiB - self.sent

        def read(self, n=-1):
            if self.sent == MiB:
                go_on.wait(60)
            n = min(n if n > 0 else MiB, MiB - self.sent % MiB, 2 * MiB - self.sent)
            self.sent += n
            return chunk[:n]

    def upload():
        return g.session().put(g.url + "/v2/images/%s/file" % slow_id, data=Body(),
                               headers={"Content-Type": "application/octet-stream",
                                        "X-Image-Meta-Store": "file"})

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(upload)
        try:
            wait_for(lambda: g.image(slow_id)["status"] == "saving" and
                     (tmp_path / "file-store" / slow_id).exists(), what="a saving upload")
            result = run("rm", m.path("file", slow_id), check=False)
            assert result.returncode != 0 and "Device or resource busy" in result.stderr, \
                result.stderr
            assert "Glance is writing its image %s" % slow_id in m.log_text()
        finally:
            go_on.set()
        assert done.result(timeout=60).status_code == 204
    assert g.image(slow_id)["status"] == "active"
    assert (tmp_path / "file-store" / slow_id).stat().st_size == 2 * MiB

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


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.2)


def xattr(path, name):
    try:
        return os.getxattr(path, name).decode()
    except OSError as e:
        return "errno %d" % e.errno


def test_by_name_links_and_catalog_verified(glance_server, gsfs_mount, stores_conf, tmp_path):
    text = stores_conf("file", default="file")
    g = glance_server(text)
    qcow = tmp_path / "cirros.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", qcow, "64M")
    cirros, _ = glance_image(g, qcow.read_bytes(), "cirros", "file")
    dup1, _ = glance_image(g, os.urandom(1000), "dup", "file")
    dup2, _ = glance_image(g, os.urandom(1001), "dup", "file")
    bad_data = os.urandom(2 * MiB)
    bad, _ = glance_image(g, bad_data, "bad/name", "file")
    hidden, _ = glance_image(g, os.urandom(999), "hidden-one", "file")
    r = g.session().patch(g.url + "/v2/images/%s" % hidden,
                          json=[{"op": "replace", "path": "/os_hidden", "value": True}],
                          headers={"Content-Type":
                                   "application/openstack-images-v2.1-json-patch"})
    assert r.status_code == 200, r.text
    r = g.session().post(g.url + "/v2/images", json={"name": "queued-only",
                                                     "disk_format": "raw",
                                                     "container_format": "bare"})
    assert r.status_code == 201, r.text
    # the data of "bad" changed behind Glance's back (same size)
    with open(tmp_path / "file-store" / bad, "r+b") as f:
        f.seek(MiB)
        f.write(b"\0" * 4096)
    m = gsfs_mount(catalog_conf(text, g.url))
    by_name = m.path("by-name")

    assert "by-name" in os.listdir(m.path())
    links = sorted(os.listdir(by_name))
    # Glance's hidden images (left out of its default listing) are there too
    assert links == sorted(["cirros", "dup." + dup1, "dup." + dup2, "bad_name",
                            "hidden-one"]), links
    assert getfattr_d(m.path("file", hidden))["user.glance.catalog"] == "listed"
    assert os.readlink(os.path.join(by_name, "cirros")) == "../file/" + cirros
    listing = run("ls", "-l", by_name).stdout
    assert "cirros -> ../file/%s" % cirros in listing, listing
    info = json.loads(run("qemu-img", "info", "--output=json",
                          os.path.join(by_name, "cirros")).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * MiB, info
    # read-only: nothing is created, removed or renamed there
    for cmd in (("touch", os.path.join(by_name, "new")),
                ("rm", os.path.join(by_name, "cirros")),
                ("mv", os.path.join(by_name, "cirros"), os.path.join(by_name, "c2"))):
        result = run(*cmd, check=False)
        assert result.returncode != 0 and "Read-only file system" in result.stderr, \
            (cmd, result.stderr)
    assert cirros in os.listdir(m.path("file"))

    # a full read's checksums against the record
    image = m.path("file", dup1)
    assert xattr(image, "user.glance.catalog_verified") == "not-read"
    run("md5sum", image)
    wait_for(lambda: xattr(image, "user.glance.catalog_verified") == "match",
             what="catalog_verified=match")
    run("md5sum", m.path("file", bad))
    wait_for(lambda: xattr(m.path("file", bad), "user.glance.catalog_verified") == "mismatch",
             what="catalog_verified=mismatch")
    log = m.log_text()
    assert "file/%s differs from Glance's record" % bad in log, log[-3000:]
    assert "file/%s differs" % dup1 not in log

    # a record that changes shows at the next listing (catalog_ttl = 0)
    r = g.session().delete(g.url + "/v2/images/%s" % dup2)
    assert r.status_code == 204, r.text
    assert sorted(os.listdir(by_name)) == sorted(["cirros", "dup", "bad_name", "hidden-one"])
    assert os.readlink(os.path.join(by_name, "dup")) == "../file/" + dup1


def test_mv_between_stores_through_glance(glance_server, gsfs_mount, stores_conf, ceph,
                                          s3_bucket, rbd_pool, swift_container, tmp_path):
    text = stores_conf("file", "s3", "rbd", "swift", default="file")
    # Glance knows file, s3 and rbd; the mount has swift as well
    g = glance_server(text, enabled_backends="file:file, s3:s3, rbd:rbd")
    images = {}
    for name in ("to-s3", "to-rbd", "to-swift"):
        data = os.urandom(3 * MiB + 11)
        images[name] = (glance_image(g, data, name, "file")[0], data)
    m = gsfs_mount(catalog_conf(text, g.url))

    # an image open through the mount does not move
    with open(m.path("file", images["to-s3"][0]), "rb") as f:
        result = run("mv", m.path("file", images["to-s3"][0]), str(m.path("s3")) + "/",
                     check=False)
        assert f.read(10) == images["to-s3"][1][:10]
    assert result.returncode != 0 and "Device or resource busy" in result.stderr, result.stderr
    assert g.image(images["to-s3"][0])["stores"] == "file"

    for name, store in (("to-s3", "s3"), ("to-rbd", "rbd")):
        image_id, data = images[name]
        run("mv", m.path("file", image_id), str(m.path(store)) + "/")
        record = g.image(image_id)
        assert record["stores"] == store, record
        r = g.session().get(g.url + "/v2/images/%s/file" % image_id)
        assert r.status_code == 200 and r.content == data, (r.status_code, len(r.content))
        assert not (tmp_path / "file-store" / image_id).exists()
        assert image_id in os.listdir(m.path(store))
        assert image_id not in os.listdir(m.path("file"))
        assert run("md5sum", m.path(store, image_id)).stdout.split()[0] == \
            hashlib.md5(data).hexdigest()
    assert "verified in full, then deleted from file" in m.log_text()

    # a store Glance does not have: Glance refuses the copy, nothing changes
    image_id, data = images["to-swift"]
    result = run("mv", m.path("file", image_id), str(m.path("swift")) + "/", check=False)
    assert result.returncode != 0 and "Device or resource busy" in result.stderr, result.stderr
    assert g.image(image_id)["stores"] == "file"
    assert (tmp_path / "file-store" / image_id).read_bytes() == data
    assert image_id not in os.listdir(m.path("swift"))
    assert "Glance refused to copy image %s" % image_id in m.log_text()
    # under another name: refused before anything is copied
    result = run("mv", m.path("file", image_id), m.path("s3", "renamed"), check=False)
    assert result.returncode != 0 and "Device or resource busy" in result.stderr, result.stderr
    assert g.image(image_id)["stores"] == "file"
    assert "renamed" not in os.listdir(m.path("s3"))

    # an image Glance does not know moves as before (copy, then unlink)
    src = tmp_path / "plain.raw"
    src.write_bytes(os.urandom(100000))
    plain = str(uuid.uuid4())
    run("cp", src, m.path("file", plain))
    run("mv", m.path("file", plain), str(m.path("s3")) + "/")
    assert plain in os.listdir(m.path("s3")) and plain not in os.listdir(m.path("file"))
