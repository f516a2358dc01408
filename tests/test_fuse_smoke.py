"""A first real mount of the file store: cp in, read back, xattrs."""

import hashlib
import os
import subprocess

import pytest

pytestmark = pytest.mark.fuse


def test_cp_in_and_out_file_store(gsfs_mount, stores_conf, tmp_path):
    m = gsfs_mount(stores_conf("file"))
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    subprocess.run(["cp", str(src), str(m.path("file"))], check=True)
    out = tmp_path / "out.raw"
    subprocess.run(["cp", str(m.path("file", "src.raw")), str(out)], check=True)
    assert out.read_bytes() == src.read_bytes()
    data = src.read_bytes()
    assert os.getxattr(m.path("file", "src.raw"), "user.glance.checksum").decode() == \
        hashlib.md5(data).hexdigest()
