"""gsfs side by side with the references, on the test servers, in one run.

Starts a single-node Ceph (radosgw + rbd) like the tests do, mounts gsfs with
a file, an s3 and an rbd store, and times, A/B interleaved (one round runs
every step once; the table shows the median of ``--rounds`` rounds):

  hash-1   md5 + sha512 of the image in one thread (python hashlib)
  file     gsfs cp in to the file store
  s3 in    gsfs cp in  | boto3 upload_file, same part size and threads
  s3 out   gsfs cp out | boto3 download_file, same part size and threads
           (both cold: the page cache is dropped before each read); and gsfs
           cp out of boto3's object, whose checksums gsfs computes as it reads
  rbd in   gsfs cp in  | ``rbd import``
  rbd out  gsfs cp out | ``rbd export`` (cold)

and prints the ratios (> 1: gsfs is faster) and the daemon's peak RSS.

    .venv/bin/python -m tests.bench.bench_stores [--size-mib 1024] [--rounds 3]

Needs root (it drops the page cache). Not collected by pytest; timing never
decides a test. s3fs and rclone are not measured here yet (issue 8).
"""

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import boto3.s3.transfer

from tests.bench.bench_copy import hashlib_both as hash_one_thread
from tests.bench.bench_copy import make_source
from tests.servers.ceph import CephCluster
from tests.servers.mounts import GsfsMount, ini_text

MiB = 1024 * 1024
PART_MIB = 16
THREADS = 4


def run(*cmd):
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(func, *args):
    t0 = time.perf_counter()
    func(*args)
    return time.perf_counter() - t0


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def parallel_copies(mount, s3, bucket, work, n):
    """n cp of different 256 MiB images into s3 at once, on a fresh daemon
    (so its peak RSS is theirs): (seconds, n, peak RSS, RSS after, all right)."""
    mount.umount()
    mount.start()
    pid = int(os.getxattr(mount.mountpoint, "user.gsfs.pid"))
    srcs = []
    for i in range(n):
        path = os.path.join(work, "par%d.raw" % i)
        make_source(path, 256)
        srcs.append(path)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["cp", p, str(mount.path("s3", "par%d" % i))])
             for i, p in enumerate(srcs)]
    ok = all(p.wait() == 0 for p in procs)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mib(pid)
    for i, p in enumerate(srcs):
        with open(p, "rb") as f:
            want = hashlib.md5(f.read()).hexdigest()
        got = os.getxattr(mount.path("s3", "par%d" % i), "user.glance.checksum").decode()
        ok = ok and got == want
        os.unlink(p)
    time.sleep(2)
    with open("/proc/%d/status" % pid) as f:
        after = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    return seconds, n, peak, after, ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parallel", type=int, default=16,
                   help="then this many 256 MiB copies into s3 at once (0: skip)")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="gsfs-bench-", dir="/tmp")
    size = args.size_mib * MiB
    src = os.path.join(work, "src.raw")
    make_source(src, args.size_mib)
    ceph = CephCluster()
    mount = None
    times = {}
    try:
        ceph.start(os.path.join(work, "ceph"))
        s3 = ceph.s3_client()
        bucket = "gsfs-bench"
        s3.create_bucket(Bucket=bucket)
        conf = ini_text({
            "DEFAULT": {"enabled_backends": "file:file, s3:s3, rbd:rbd"},
            "glance_store": {"default_backend": "file"},
            "file": {"filesystem_store_datadir": os.path.join(work, "file-store")},
            "s3": {"s3_store_host": ceph.rgw_endpoint, "s3_store_access_key": ceph.access_key,
                   "s3_store_secret_key": ceph.secret_key, "s3_store_bucket": bucket,
                   "s3_store_bucket_url_format": "path",
                   "s3_store_large_object_size": PART_MIB,
                   "s3_store_large_object_chunk_size": PART_MIB,
                   "s3_store_thread_pools": THREADS},
            "rbd": {"rbd_store_pool": ceph.pool, "rbd_store_user": ceph.rbd_user,
                    "rbd_store_ceph_conf": ceph.conf_path, "rbd_store_chunk_size": 8}})
        mount = GsfsMount(work, conf, name="mnt").start()
        pid = int(os.getxattr(mount.mountpoint, "user.gsfs.pid"))
        transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=PART_MIB * MiB, multipart_chunksize=PART_MIB * MiB,
            max_concurrency=THREADS, use_threads=True)
        rbd = ["rbd", "--no-progress", "--conf", ceph.conf_path, "--id", ceph.rbd_user]
        out = os.path.join(work, "out.raw")

        def record(name, seconds):
            times.setdefault(name, []).append(seconds)
            print("  %-22s %6.2f s" % (name, seconds), file=sys.stderr)

        for r in range(args.rounds):
            print("round %d" % (r + 1), file=sys.stderr)
            record("hash-1", timed(hash_one_thread, src))
            record("file in", timed(run, "cp", src, mount.path("file", "f%d" % r)))
            record("s3 in gsfs", timed(run, "cp", src, mount.path("s3", "g%d" % r)))
            record("s3 in boto3", timed(s3.upload_file, src, bucket, "b%d" % r,
                                        None, None, transfer))
            drop_caches()
            record("s3 out gsfs", timed(run, "cp", mount.path("s3", "g%d" % r), out))
            drop_caches()
            record("s3 out boto3", timed(s3.download_file, bucket, "b%d" % r, out,
                                         None, None, transfer))
            drop_caches()
            # an image gsfs did not write: its checksums are computed while it is read
            record("s3 out gsfs+hash", timed(run, "cp", mount.path("s3", "b%d" % r), out))
            record("rbd in gsfs", timed(run, "cp", src, mount.path("rbd", "g%d" % r)))
            record("rbd in import", timed(run, *rbd, "import", src,
                                          "%s/bench-b%d" % (ceph.pool, r)))
            drop_caches()
            record("rbd out gsfs", timed(run, "cp", mount.path("rbd", "g%d" % r), out))
            drop_caches()
            record("rbd out export", timed(run, *rbd, "export", "%s/bench-b%d" % (ceph.pool, r),
                                           out + ".rbd"))
            os.unlink(out + ".rbd")
        peak = peak_rss_mib(pid)
        parallel = None
        if args.parallel:
            parallel = parallel_copies(mount, s3, bucket, work, args.parallel)
    finally:
        if mount is not None:
            mount.stop()
        ceph.stop()
        subprocess.run(["rm", "-rf", work])

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: size / v / 1e6 for k, v in med.items()}
    print("\n%d MiB, median of %d rounds (MB = 10^6 bytes)" % (args.size_mib, args.rounds))
    for k in med:
        print("%-16s %7.2f s %7.0f MB/s" % (k, med[k], rate[k]))
    print("\nratios (> 1: gsfs faster)")
    pairs = [("file in / hash-1", "file in", "hash-1"),
             ("s3 in / boto3", "s3 in gsfs", "s3 in boto3"),
             ("s3 out / boto3", "s3 out gsfs", "s3 out boto3"),
             ("s3 out, hashing / boto3", "s3 out gsfs+hash", "s3 out boto3"),
             ("rbd in / min(hash-1, import)", "rbd in gsfs",
              min(("hash-1", "rbd in import"), key=lambda k: rate[k])),
             ("rbd out / export", "rbd out gsfs", "rbd out export")]
    for label, a, b in pairs:
        print("%-30s %5.2f" % (label, rate[a] / rate[b]))
    print("daemon peak RSS: %.0f MiB" % peak)
    if parallel:
        seconds, n, top, after, ok = parallel
        print("%d parallel 256 MiB copies into s3: %.1f s, daemon peak RSS %.0f MiB, "
              "RSS 2 s after %.0f MiB, all checksums right: %s" % (n, seconds, top, after, ok))
    return 0


if __name__ == "__main__":
    sys.exit(main())
