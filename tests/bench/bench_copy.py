"""Copy an image into and out of the FILE store through a gsfs mount, and put
the times next to what the host needs anyway for the same bytes:

  hashing   md5 + sha512 in one pass (python hashlib, what gsfs computes for
            every image it writes), and ``md5sum`` then ``sha512sum``;
  plain cp  ``cp`` into and out of the store's underlying directory (no gsfs),
            and ``cp`` in followed by ``sync FILE`` (gsfs's file driver fsyncs
            every image before publishing it; plain cp does not);
  gsfs      ``cp`` into the mount (ends when close(2) returns, i.e. when the
            image is committed) and ``cp`` out of it.

    .venv/bin/python -m tests.bench.bench_copy [--size-mib 1024] [--repeat N] [--workdir DIR]

Every file involved fits in the page cache on a normal test host, so these
are warm-cache numbers: they measure gsfs's own overhead (FUSE round trips,
hashing, the upload thread), not the disk. Not collected by pytest (the name
does not match test_*.py); ``make bench`` runs it.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tests.servers.mounts import GsfsMount, ini_text, is_mounted

MiB = 1024 * 1024


REPEAT = 1


def timed(func, *args, cleanup=None, repeat=None):
    """Best of REPEAT runs (cleanup() between runs): (seconds, last result)."""
    best = None
    for i in range(repeat or REPEAT):
        if i and cleanup:
            cleanup()
        t0 = time.perf_counter()
        result = func(*args)
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    return best, result


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_source(path, size_mib):
    """size_mib MiB that do not compress or dedupe (every MiB different)."""
    block = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for i in range(size_mib):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)


def hashlib_both(path):
    md5, sha = hashlib.md5(), hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def coreutils_both(path):
    md5 = subprocess.run(["md5sum", path], check=True, capture_output=True, text=True)
    subprocess.run(["sha512sum", path], check=True, capture_output=True, text=True)
    return md5.stdout.split()[0]


def md5_of(path):
    return subprocess.run(["md5sum", path], check=True, capture_output=True,
                          text=True).stdout.split()[0]


def cp_and_sync(src, dst):
    run("cp", src, dst)
    run("sync", dst)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    p.add_argument("--workdir", help="where to put the files (default: a new dir in $TMPDIR)")
    p.add_argument("--repeat", type=int, default=1, help="runs per step, best kept (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)

    work = tempfile.mkdtemp(prefix="gsfs-bench-", dir=args.workdir)
    size = args.size_mib * MiB
    datadir = os.path.join(work, "file-store")
    os.makedirs(datadir)
    src = os.path.join(work, "src.raw")
    mount = None
    rows = []
    try:
        print("gsfs bench_copy: %d MiB in %s" % (args.size_mib, work), file=sys.stderr)
        make_source(src, args.size_mib)
        hashlib_both(src)                    # warm the page cache before timing
        want_md5 = md5_of(src)

        t, (md5, _sha) = timed(hashlib_both, src)
        assert md5 == want_md5
        rows.append(("hash: python hashlib md5+sha512 (1 pass)", t))
        t, md5 = timed(coreutils_both, src)
        assert md5 == want_md5
        rows.append(("hash: md5sum, then sha512sum", t))

        plain = os.path.join(datadir, "plain-copy")
        plain_out = os.path.join(work, "plain-out.raw")
        t, _ = timed(run, "cp", src, plain, cleanup=lambda: os.unlink(plain))
        rows.append(("plain cp in (to the store dir)", t))
        t, _ = timed(run, "cp", plain, plain_out)
        rows.append(("plain cp out (from the store dir)", t))
        assert md5_of(plain_out) == want_md5
        os.unlink(plain)
        os.unlink(plain_out)
        t, _ = timed(cp_and_sync, src, plain, cleanup=lambda: os.unlink(plain))
        rows.append(("plain cp in + sync FILE", t))
        os.unlink(plain)

        conf = ini_text({"DEFAULT": {"enabled_backends": "file:file"},
                         "glance_store": {"default_backend": "file"},
                         "file": {"filesystem_store_datadir": datadir}})
        mount = GsfsMount(work, conf, name="mnt").start()
        image = str(mount.path("file", "bench-image"))
        out = os.path.join(work, "gsfs-out.raw")
        t, _ = timed(run, "cp", src, image, cleanup=lambda: os.unlink(image))
        rows.append(("gsfs cp in (close = committed)", t))
        assert os.path.getsize(os.path.join(datadir, "bench-image")) == size
        assert os.getxattr(image, "user.glance.checksum").decode() == want_md5
        # once: a second read is served by the kernel's page cache (its own row)
        t, _ = timed(run, "cp", image, out, repeat=1)
        rows.append(("gsfs cp out", t))
        assert md5_of(out) == want_md5
        t, _ = timed(run, "cp", image, out, repeat=1)
        rows.append(("gsfs cp out again (kernel page cache)", t))
        os.unlink(out)
    finally:
        if mount is not None:
            mount.stop()
            if is_mounted(mount.mountpoint):
                print("WARNING: %s is still mounted" % mount.mountpoint, file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    times = dict(rows)
    print_table(rows, size, times)
    return 0


def print_table(rows, size, times):
    hash_py = times["hash: python hashlib md5+sha512 (1 pass)"]
    hash_cu = times["hash: md5sum, then sha512sum"]
    baseline = {"gsfs cp in (close = committed)": ("plain cp in (to the store dir)",
                                                   "plain cp in + sync FILE"),
                "gsfs cp out": ("plain cp out (from the store dir)", None)}
    print()
    print("%-42s %8s %9s %10s %10s %10s %10s" % ("step (%d MiB)" % (size // MiB), "seconds",
                                                "MB/s", "/plain cp", "/cp+sync",
                                                "/hashlib", "/md5+sha"))
    for name, t in rows:
        cols = ["", "", "", ""]
        if name in baseline:
            cp_name, sync_name = baseline[name]
            cols[0] = "%.2fx" % (t / times[cp_name])
            if sync_name:
                cols[1] = "%.2fx" % (t / times[sync_name])
            cols[2] = "%.2fx" % (t / hash_py)
            cols[3] = "%.2fx" % (t / hash_cu)
        print("%-42s %8.2f %9.0f %10s %10s %10s %10s" % (name, t, size / t / 1e6, *cols))
    print("\nMB = 10^6 bytes. Ratios > 1: gsfs is slower than that baseline.")


if __name__ == "__main__":
    sys.exit(main())
