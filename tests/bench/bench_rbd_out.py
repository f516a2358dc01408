"""rbd copy-out alone: cold ``cp`` out of a gsfs mount that holds only an rbd
store, interleaved with cold ``rbd export`` of the same bytes, medians.

    .venv/bin/python -m tests.bench.bench_rbd_out --size-mib 1024 --rounds 3 [-o readahead_mib=96]

It starts its own Ceph (tests/servers/ceph.py), writes the image once through
gsfs and once with ``rbd import``, then, each round, drops the page cache and
the OSD's cache (bench_stores.drop_caches) before each read. It isolates the
read path from everything else bench_stores runs beside it.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from tests.bench.bench_copy import make_source
from tests.bench.bench_stores import drop_caches
from tests.servers.ceph import CephCluster
from tests.servers.mounts import GsfsMount, ini_text

MiB = 1024 * 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="a gsfs mount option (repeatable)")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="gsfs-bench-rbd-", dir="/tmp")
    src = os.path.join(work, "src.raw")
    make_source(src, args.size_mib)
    ceph = CephCluster()
    mount = None
    try:
        ceph.start(os.path.join(work, "ceph"))
        conf = ini_text({"DEFAULT": {"enabled_backends": "rbd:rbd"},
                         "glance_store": {"default_backend": "rbd"},
                         "rbd": {"rbd_store_pool": ceph.pool, "rbd_store_user": ceph.rbd_user,
                                 "rbd_store_ceph_conf": ceph.conf_path,
                                 "rbd_store_chunk_size": 8}})
        mount = GsfsMount(work, conf, options=args.options, name="mnt").start()
        rbd = ["rbd", "--no-progress", "--conf", ceph.conf_path, "--id", ceph.rbd_user]
        subprocess.run(["cp", src, str(mount.path("rbd", "g"))], check=True)
        subprocess.run(rbd + ["import", src, "%s/ref" % ceph.pool], check=True)
        out = os.path.join(work, "out.raw")
        rates = {"gsfs cp out": [], "rbd export": []}
        for _ in range(args.rounds):
            for step, cmd in (("gsfs cp out", ["cp", str(mount.path("rbd", "g")), out]),
                              ("rbd export", rbd + ["export", "%s/ref" % ceph.pool, out])):
                drop_caches(ceph)
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                rates[step].append(args.size_mib * MiB / 1e6 / (time.perf_counter() - t0))
                os.unlink(out)
        med = {k: statistics.median(v) for k, v in rates.items()}
        for step, values in rates.items():
            print("%-12s median %4.0f MB/s  (%s)" % (step, med[step], ", ".join(
                "%.0f" % v for v in values)))
        print("rbd out / export: %.2f" % (med["gsfs cp out"] / med["rbd export"]))
    finally:
        if mount is not None:
            mount.stop()
        ceph.stop()
        subprocess.run(["rm", "-rf", work], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
