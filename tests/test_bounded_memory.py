"""Memory bounds of the drivers' add paths (docs/memory.md), measured for real.

Each test runs the add in a SUBPROCESS (a fresh interpreter, so its peak RSS,
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is the add's and nobody
else's), with image data generated on the fly: the image itself never exists
in memory. The subprocess first measures a baseline (interpreter, gsfs, the
driver library and its client, one tiny add), then adds the big image and
reports its peak; the bound is baseline + the driver's documented buffers +
a fixed allowance.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.mounts import remove_rbd_image

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB
SLACK = 64 * MiB          # allocator and library noise on top of the documented buffers


def run_measurement(script, params, timeout=1200):
    """Run ``script`` in a fresh interpreter with ``params`` (JSON on argv[1]);
    its last stdout line is a JSON report.

    The interpreter is started by an intermediate shell that forks it (not
    exec): on Linux ru_maxrss survives execve, so a child exec'd straight from
    a big pytest process reports the PARENT's peak as its own (measured: parent
    at 500 MiB, child's ru_maxrss 511 MiB, its VmHWM 11 MiB) and the bound
    would pass without measuring anything. Through the shell's fork the
    child's ru_maxrss is its own."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        ["sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", script, json.dumps(params)],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- S3 add

# What every add measurement script starts with: its parameters (argv[1], JSON)
# its peak RSS as getrusage and /proc see it; and generated image data.
CHILD_PRELUDE = r'''
import hashlib, json, random, resource, sys, tempfile, time
from pathlib import Path

from tests.storeconf import ini, load_stores
from gsfs import multi_backend

p = json.loads(sys.argv[1])
MiB = 1024 * 1024


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_hwm():
    with open("/proc/self/status") as f:
        return [int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM")][0]


def generated(total, md5):
    """``total`` bytes in 1 MiB chunks: one pseudo-random block, its first
    8 bytes replaced by the chunk counter. Only one chunk exists at a time."""
    block = random.Random(20261125).randbytes(MiB)
    for i in range(total // MiB):
        chunk = i.to_bytes(8, "little") + block[8:]
        md5.update(chunk)
        yield chunk
'''


S3_ADD_SCRIPT = CHILD_PRELUDE + r'''
conf = load_stores(Path(tempfile.mkdtemp()), ini({
    "DEFAULT": {"enabled_backends": "cloud:s3"},
    "glance_store": {"default_backend": "cloud"},
    "cloud": {
        "s3_store_host": p["endpoint"],
        "s3_store_access_key": p["access_key"],
        "s3_store_secret_key": p["secret_key"],
        "s3_store_bucket": p["bucket"],
        "s3_store_bucket_url_format": "path",
        "s3_store_large_object_size": p["large_object_mib"],
        "s3_store_large_object_chunk_size": p["part_mib"],
        "s3_store_thread_pools": p["threads"],
    },
}))

# baseline: everything but the part buffers (a known-size tiny image is one PUT)
multi_backend.add_with_multihash(conf, "baseline", iter([b"x" * 1024]), 1024, "cloud",
                                 "sha512")
baseline = peak_rss()

md5 = hashlib.md5()
start = time.monotonic()
uri, size, checksum, multihash, meta = multi_backend.add_with_multihash(
    conf, p["image_id"], generated(p["size"], md5), 0, "cloud", "sha512")
seconds = time.monotonic() - start
print(json.dumps({
    "uri": uri, "size": size, "checksum_ok": checksum == md5.hexdigest(),
    "multihash_len": len(multihash), "meta": meta, "seconds": seconds,
    "baseline_rss": baseline, "peak_rss": peak_rss(),
}))
'''


@pytest.mark.ceph
def test_s3_2gib_unknown_size_bounded_rss(ceph, s3_bucket):
    """2 GiB of unknown size (0) through add_with_multihash on radosgw: peak RSS
    stays below baseline + (threads + 1) x part size + 64 MiB (docs/memory.md)."""
    threads, part_mib, size = 10, 10, 2 * GiB           # glance_store's defaults
    params = {
        "endpoint": ceph.rgw_endpoint, "access_key": ceph.access_key,
        "secret_key": ceph.secret_key, "bucket": s3_bucket,
        "threads": threads, "part_mib": part_mib, "large_object_mib": 100,
        "size": size, "image_id": "big-unknown-size",
    }
    report = run_measurement(S3_ADD_SCRIPT, params)
    parts = (threads + 1) * part_mib * MiB
    bound = report["baseline_rss"] + parts + SLACK
    sys.stderr.write(
        "S3 add of 2 GiB, size unknown: %.1f s (%.0f MiB/s); RSS baseline %.1f MiB, "
        "peak %.1f MiB (+%.1f MiB), bound %.1f MiB (baseline + %d parts x %d MiB + %d MiB)\n"
        % (report["seconds"], size / MiB / report["seconds"], report["baseline_rss"] / MiB,
           report["peak_rss"] / MiB, (report["peak_rss"] - report["baseline_rss"]) / MiB,
           bound / MiB, threads + 1, part_mib, SLACK // MiB))
    assert report["size"] == size
    assert report["checksum_ok"] and report["multihash_len"] == 128
    assert report["meta"] == {"store": "cloud"}
    assert report["uri"].endswith("/%s/big-unknown-size" % s3_bucket)
    assert report["peak_rss"] < bound, report

    s3 = ceph.s3_client()
    head = s3.head_object(Bucket=s3_bucket, Key="big-unknown-size")
    assert head["ContentLength"] == size
    assert head["ETag"].endswith('-%d"' % (size // (part_mib * MiB) + 1))   # 205 parts
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    s3.delete_object(Bucket=s3_bucket, Key="big-unknown-size")


# ---------------------------------------------------------------- RBD add

RBD_ADD_SCRIPT = CHILD_PRELUDE + r'''

class Generated:
    """A file-like source of ``total`` bytes made on demand: 1 MiB pieces of one
    pseudo-random block, each starting with its counter. ``read(n)`` builds just
    the n bytes asked for (the driver asks for rbd_store_chunk_size)."""

    def __init__(self, total):
        self.block = random.Random(20261125).randbytes(MiB)
        self.total = total
        self.pos = 0
        self.md5 = hashlib.md5()

    def read(self, n):
        n = min(n, self.total - self.pos)
        out = bytearray()
        while len(out) < n:
            i, off = divmod(self.pos + len(out), MiB)
            piece = i.to_bytes(8, "little") + self.block[8:]
            out += piece[off:off + n - len(out)]
        self.pos += n
        data = bytes(out)
        del out
        self.md5.update(data)
        return data


conf = load_stores(Path(tempfile.mkdtemp()), ini({
    "DEFAULT": {"enabled_backends": "ceph:rbd"},
    "glance_store": {"default_backend": "ceph"},
    "ceph": {
        "rbd_store_pool": p["pool"],
        "rbd_store_user": p["user"],
        "rbd_store_ceph_conf": p["conf"],
        "rbd_store_chunk_size": p["chunk_mib"],
    },
}))

# baseline: connection, librados/librbd threads and caches, one tiny add + delete
uri, *_ = multi_backend.add_with_multihash(conf, p["image_id"] + "-baseline",
                                           Generated(MiB), 0, "ceph", "sha512")
multi_backend.delete(uri, "ceph")
baseline = peak_rss()

src = Generated(p["size"])
start = time.monotonic()
uri, size, checksum, multihash, meta = multi_backend.add_with_multihash(
    conf, p["image_id"], src, 0, "ceph", "sha512")
seconds = time.monotonic() - start
print(json.dumps({
    "uri": uri, "size": size, "checksum_ok": checksum == src.md5.hexdigest(),
    "multihash_len": len(multihash), "meta": meta, "seconds": seconds,
    "baseline_rss": baseline, "peak_rss": peak_rss(), "vm_hwm": vm_hwm(),
}))
'''

RBD_CACHE = 32 * MiB      # librbd's rbd_cache_size default (writes in flight are held there)


@pytest.mark.ceph
def test_rbd_2gib_unknown_size_bounded_rss(ceph):
    """2 GiB of unknown size (0) through add_with_multihash to RBD: peak RSS stays
    below baseline + 3 x chunk + librbd's 32 MiB cache + 64 MiB (docs/memory.md)."""
    import rados
    import rbd

    chunk_mib, size = 8, 2 * GiB                        # glance_store's default chunk
    image_id = "big-unknown-size-%d" % os.getpid()
    params = {"pool": ceph.pool, "user": ceph.rbd_user, "conf": ceph.conf_path,
              "chunk_mib": chunk_mib, "size": size, "image_id": image_id}
    client = rados.Rados(conffile=ceph.conf_path, rados_id=ceph.rbd_user)
    client.connect()
    try:
        with client.open_ioctx(ceph.pool) as ioctx:
            try:
                report = run_measurement(RBD_ADD_SCRIPT, params)
                # the peak is the child's own: getrusage agrees with its VmHWM
                assert abs(report["peak_rss"] - report["vm_hwm"]) < 8 * MiB, report
                chunk = chunk_mib * MiB
                bound = report["baseline_rss"] + 3 * chunk + RBD_CACHE + SLACK
                sys.stderr.write(
                    "RBD add of 2 GiB, size unknown: %.1f s (%.0f MiB/s); RSS baseline "
                    "%.1f MiB, peak %.1f MiB (+%.1f MiB), bound %.1f MiB (baseline + 3 x %d "
                    "MiB chunk + %d MiB rbd cache + %d MiB)\n"
                    % (report["seconds"], size / MiB / report["seconds"],
                       report["baseline_rss"] / MiB, report["peak_rss"] / MiB,
                       (report["peak_rss"] - report["baseline_rss"]) / MiB, bound / MiB,
                       chunk_mib, RBD_CACHE // MiB, SLACK // MiB))
                assert report["size"] == size
                assert report["checksum_ok"] and report["multihash_len"] == 128
                assert report["meta"] == {"store": "ceph"}
                assert report["uri"] == "rbd://%s/%s/%s/snap" % (ceph.fsid, ceph.pool,
                                                                  image_id)
                assert report["peak_rss"] < bound, report
                with rbd.Image(ioctx, image_id, snapshot="snap", read_only=True) as img:
                    assert img.size() == size                   # trimmed to the byte
                    last = (size // MiB - 1).to_bytes(8, "little")
                    assert img.read(size - MiB, 8) == last
                assert not [n for n in rbd.RBD().list(ioctx) if n.startswith("..gsfs-")]
            finally:
                for name in (image_id, image_id + "-baseline"):
                    remove_rbd_image(ioctx, name)
    finally:
        client.shutdown()


# ---------------------------------------------------------------- Swift add

SWIFT_ADD_SCRIPT = CHILD_PRELUDE + r'''
work = Path(tempfile.mkdtemp())
conf = load_stores(work, ini({
    "DEFAULT": {"enabled_backends": "cloud:swift"},
    "glance_store": {"default_backend": "cloud"},
    "cloud": {
        "swift_store_config_file": p["config_file"],
        "swift_store_container": p["container"],
        "swift_store_large_object_chunk_size": p["chunk_mb"],
        "gsfs_swift_journal_dir": str(work / "journal"),
    },
}))

# baseline: connections, auth, one small add of unknown size (segment + manifest)
uri, *_ = multi_backend.add_with_multihash(conf, p["image_id"] + "-baseline",
                                           generated(2 * MiB, hashlib.md5()), 0, "cloud",
                                           "sha512")
multi_backend.delete(uri, "cloud")
baseline = peak_rss()

md5 = hashlib.md5()
start = time.monotonic()
uri, size, checksum, multihash, meta = multi_backend.add_with_multihash(
    conf, p["image_id"], generated(p["size"], md5), 0, "cloud", "sha512")
seconds = time.monotonic() - start
print(json.dumps({
    "uri": uri, "size": size, "checksum": checksum, "md5": md5.hexdigest(),
    "multihash_len": len(multihash), "meta": meta, "seconds": seconds,
    "baseline_rss": baseline, "peak_rss": peak_rss(), "vm_hwm": vm_hwm(),
    "journal": sorted(f.name for f in (work / "journal").glob("*")),
}))
'''

SWIFT_ONE_MB = 1000 * 1024     # glance_store's swift "MB"
SWIFT_CHUNKS = 4 * MiB         # a few 1 MiB source chunks (WRITE_CHUNKSIZE) in flight


@pytest.mark.ceph
def test_swift_2gib_unknown_size_bounded_rss(ceph, swift_container, swift_config_file):
    """2 GiB of unknown size (0) through add_with_multihash on radosgw's Swift
    API, segments of 200 MB (glance_store's default): the segments are streamed,
    never buffered, so peak RSS stays below baseline + 4 MiB + 64 MiB."""
    import hashlib

    chunk_mb, size = 200, 2 * GiB
    image_id = "big-unknown-size"
    params = {"config_file": str(swift_config_file), "container": swift_container,
              "chunk_mb": chunk_mb, "size": size, "image_id": image_id}
    report = run_measurement(SWIFT_ADD_SCRIPT, params)
    # the peak is the child's own: getrusage agrees with its VmHWM
    assert abs(report["peak_rss"] - report["vm_hwm"]) < 8 * MiB, report
    bound = report["baseline_rss"] + SWIFT_CHUNKS + SLACK
    sys.stderr.write(
        "Swift add of 2 GiB, size unknown: %.1f s (%.0f MiB/s); RSS baseline %.1f MiB, "
        "peak %.1f MiB (+%.1f MiB), bound %.1f MiB (baseline + %d MiB chunks + %d MiB)\n"
        % (report["seconds"], size / MiB / report["seconds"], report["baseline_rss"] / MiB,
           report["peak_rss"] / MiB, (report["peak_rss"] - report["baseline_rss"]) / MiB,
           bound / MiB, SWIFT_CHUNKS // MiB, SLACK // MiB))
    assert report["size"] == size
    assert report["checksum"] == report["md5"] and report["multihash_len"] == 128
    assert report["meta"] == {"store": "cloud"}
    assert report["uri"] == "swift+config://ref1/%s/%s" % (swift_container, image_id)
    assert report["peak_rss"] < bound, report
    assert report["journal"] == [], report         # both uploads ended

    conn = ceph.swift_connection()
    head = conn.head_object(swift_container, image_id)
    assert int(head["content-length"]) == size
    assert head["x-object-meta-gsfs-checksum"] == report["md5"]
    _, prefix = head["x-object-manifest"].split("/", 1)
    _, listed = conn.get_container(swift_container, full_listing=True)
    objects = {o["name"]: o["bytes"] for o in listed}
    segments = {n: b for n, b in objects.items() if n != image_id}
    # nothing but the image and its own segments (the baseline's were deleted):
    # 11 segments of at most 200 MB, together 2 GiB
    assert all(n.startswith(prefix) for n in segments), sorted(objects)
    segment = chunk_mb * SWIFT_ONE_MB
    assert len(segments) == -(-size // segment) == 11, sorted(segments)
    assert max(segments.values()) == segment and sum(segments.values()) == size
    # the stored bytes, read back in full, are the image
    md5 = hashlib.md5()
    _, body = conn.get_object(swift_container, image_id, resp_chunk_size=MiB)
    for piece in body:
        md5.update(piece)
    assert md5.hexdigest() == report["md5"]

    conn.delete_object(swift_container, image_id)
    for name in segments:
        conn.delete_object(swift_container, name)
    assert conn.get_container(swift_container, full_listing=True)[1] == []
