"""gsfs side by side with the references, on the test servers, in one run.

Starts a single-node Ceph (radosgw + rbd) like the tests do, mounts gsfs with
a file, an s3 and an rbd store (and a second s3 store for the listings), s3fs
and rclone on the same radosgw, and times, A/B interleaved (one round runs
every step once; the table shows the median of ``--rounds`` rounds):

  ls       ``ls -l`` of ``--ls-count`` images, warm (one untimed ``ls -l``
           just before the timed one): gsfs file store | its datadir itself;
           gsfs s3 store | s3fs | rclone, all on one bucket of tiny objects
           (gsfs-bench-ls, filled once with boto3; the datadir is filled once
           with small files written straight into it)
  hash-1   md5 + sha512 of the image in one thread (python hashlib)
  hash-2   md5 and sha512 at once, each in its own thread (hashlib releases
           the GIL on big buffers)
  file     gsfs cp in to the file store
  s3 in    gsfs cp in  | boto3 upload_file, same part size and threads
           | cp into s3fs | cp into rclone
  s3 out   gsfs cp out | boto3 download_file, same part size and threads
           | cp out of s3fs (all cold: the page cache is dropped before each
           read); and gsfs cp out of boto3's object, whose checksums gsfs
           computes as it reads
  4 par    4 cp of different 256 MiB images into the gsfs s3 store at once
           | 4 boto3 upload_file at once (same TransferConfig)
  rbd in   gsfs cp in  | ``rbd import``
  rbd out  gsfs cp out | ``rbd export`` (cold)

Within a round, the steps of one comparison (s3 in, s3 out, 4 par, rbd in,
rbd out) run in one order in even rounds and in the reverse order in odd
ones, and every step waits (untimed) for ``sync`` and for the OSD and
radosgw to go idle first: a step that came right after a write otherwise
paid for the servers' work behind it, and gsfs always came first. Before
every copy-in its sources are read once (untimed, ``cat``), so each one
reads them from the page cache: the cold reads before had dropped them,
and whichever of gsfs and its reference came first read them from disk.
Before every copy-out the last one's output file is removed (untimed), so
each writes a new file, as ``rbd export`` must.

It prints the ratios (> 1: gsfs is faster), the absolute listing times (the
goals, for 10,000 images: file store <= 0.5 s, s3 store <= 0.7 s), the
daemon's peak RSS, and then (``--parallel N``) N 256 MiB copies into s3 at
once on a fresh daemon: their time, the peak RSS and the RSS after.

The peers are mounted once for the run, as a user would, with the part size
and upload threads set like gsfs's and boto3's (16 MiB, 4):

  s3fs     ``s3fs BUCKET DIR -f -o url=ENDPOINT,use_path_request_style,
           passwd_file=FILE,multipart_size=16,parallel_count=4`` (FILE holds
           ``ACCESS:SECRET``, mode 600), once on the copy bucket and once on
           the listing bucket
  rclone   ``rclone --config FILE mount bench: DIR --vfs-cache-mode off
           --s3-chunk-size 16M --s3-upload-concurrency 4``, FILE a temporary
           config of one remote ``bench`` (type s3, provider Ceph, endpoint,
           keys); the buckets are directories of the mount. ``cp`` into it
           works without a VFS cache (cp writes sequentially); everything else
           is rclone's default (so a fresh listing HEADs every object for its
           mtime, which the warm-up ``ls -l`` pays); AWS_CA_BUNDLE is taken out
           of its environment (rclone fails on it: LoadCustomCABundleError)

Missing s3fs or rclone (Debian packages s3fs, rclone) is said and its steps
skipped; ``--no-peers`` skips both. Each round deletes what it wrote (not
timed) so that the OSD never fills up. ``make bench-stores`` installs the
peers if missing and runs this with ``$(BENCH_ARGS)``.

    .venv/bin/python -m tests.bench.bench_stores [--size-mib 1024] [--rounds 3]
        [--parallel 16] [--ls-count 10000] [--no-peers]

Needs root (it drops the page cache). Not collected by pytest; timing never
decides a test.
"""

import argparse
import concurrent.futures
import glob
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import boto3.s3.transfer

from tests.bench.bench_copy import hashlib_both as hash_one_thread
from tests.bench.bench_copy import make_source
from tests.servers.ceph import CephCluster
from tests.servers.mounts import GsfsMount, ini_text, is_mounted

MiB = 1024 * 1024
PART_MIB = 16
THREADS = 4
PAR_N, PAR_MIB = 4, 256          # the "4 parallel s3 in" step
BUCKET = "gsfs-bench"            # the copies
LS_BUCKET = "gsfs-bench-ls"      # the listings: tiny objects only
GOALS = {"file in / hash-1": 1.2, "s3 in / boto3": 0.8, "s3 in / s3fs": 1.5,   # issue 8
         "s3 in / rclone": 1.5, "s3 out / boto3": 1.0, "s3 out / s3fs": 1.3,
         "rbd in / min(hash-1, import)": 0.9, "rbd out / export": 0.8}
LS_GOALS = {"ls file gsfs": 0.5, "ls s3 gsfs": 0.7}   # seconds, for 10,000 images
PEER_PACKAGES = {"s3fs": "s3fs", "rclone": "rclone"}  # program: Debian package


def run(*cmd):
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


OSD_CACHE_DROPPED = []     # the admin socket's answer, reported once


def drop_caches(ceph=None):
    """The page cache, and the OSD's own BlueStore cache (``cache drop`` on its
    admin socket): without it the reference that wrote last (``rbd import``,
    boto3) reads its image back from the OSD's memory and gsfs's from disk."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    if ceph is None:
        return
    sockets = glob.glob(os.path.join(ceph.dir, "run", "*osd*.asok"))
    for sock in sockets:
        r = subprocess.run(["ceph", "--admin-daemon", sock, "cache", "drop"],
                           capture_output=True, text=True)
        if not OSD_CACHE_DROPPED:
            OSD_CACHE_DROPPED.append(r.returncode == 0)
            print("OSD cache drop through %s: %s" % (
                sock, "done" if r.returncode == 0 else "not available (%s)"
                % (r.stderr.strip() or r.stdout.strip())), file=sys.stderr)


SETTLE_CPU = 0.05      # CPU-s per 0.5 s (10% of a core) under which Ceph counts as idle
SETTLE_MAX = 20        # seconds to wait for it at most


def _cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def settle(ceph, warnings):
    """Wait (untimed) until the local files are written back and the OSD and
    radosgw are done with what the last step left them (BlueStore's deferred
    writes and RocksDB compaction can go on for seconds after a write)."""
    subprocess.run(["sync"], check=True)
    pids = list(ceph.pids().values())
    deadline = time.monotonic() + SETTLE_MAX
    before = _cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _cpu_seconds(pids)
        if now - before < SETTLE_CPU:
            return
        before = now
    warnings.append("Ceph was still busy %d s after a step" % SETTLE_MAX)


# Whose CPU each timed step counts (filled in by main): "gsfs" the daemon,
# "ceph" mon + osd + radosgw, "peers" s3fs and rclone; "tools" is what this
# process (boto3, hashlib) and its finished children (cp, rbd) used.
CPU_PIDS = {"gsfs": [], "ceph": [], "peers": []}


def _steal_seconds():
    """CPU-s the hypervisor gave to others (all cores): /proc/stat's steal."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def _cpu_now():
    t = os.times()
    now = {k: _cpu_seconds(pids) for k, pids in CPU_PIDS.items()}
    now["tools"] = t.user + t.system + t.children_user + t.children_system
    now["steal"] = _steal_seconds()
    return now


def timed(func, *args):
    """(seconds func(*args) took, {who: CPU-s it cost}); "steal" is not a
    cost of the step: the CPU-s the hypervisor took from this machine meanwhile."""
    before = _cpu_now()
    t0 = time.perf_counter()
    func(*args)
    seconds = time.perf_counter() - t0
    after = _cpu_now()
    return seconds, {k: after[k] - before[k] for k in after}


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def hash_two_threads(path):
    """md5 and sha512 of path at once, each thread reading the file itself."""
    def one(name):
        h = hashlib.new(name)
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        return h.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return tuple(pool.map(one, ("md5", "sha512")))


def cp_all(pairs):
    """cp every (src, dst) at once; fails if any cp does."""
    procs = [subprocess.Popen(["cp", str(s), str(d)]) for s, d in pairs]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError("parallel cp failed: exit codes %s" % codes)


def upload_all(s3, bucket, pairs, transfer):
    """boto3 upload_file of every (src, key) at once, one thread each."""
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
        futures = [pool.submit(s3.upload_file, src, bucket, key, None, None, transfer)
                   for src, key in pairs]
        for f in futures:
            f.result()


def ls_count(path):
    """Entries ``ls -l path`` shows (its output is read, so run it untimed)."""
    out = subprocess.run(["ls", "-l", str(path)], check=True, capture_output=True).stdout
    return sum(1 for line in out.splitlines() if not line.startswith(b"total "))


def fill_datadir(datadir, n):
    os.makedirs(datadir, exist_ok=True)
    for i in range(n):
        with open(os.path.join(datadir, "ls-%05d" % i), "wb") as f:
            f.write(b"small image %d\n" % i)


def fill_bucket(s3, bucket, n):
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(s3.put_object, Bucket=bucket, Key="ls-%05d" % i,
                               Body=b"tiny image %d\n" % i) for i in range(n)]
        for f in futures:
            f.result()


class PeerMount:
    """s3fs or rclone in the foreground in a subprocess; stop() leaves nothing
    behind: fusermount3 -u, then -z, then SIGTERM/SIGKILL by process id."""

    def __init__(self, name, cmd, mountpoint, log, env=None):
        self.name, self.cmd, self.mountpoint, self.log = name, cmd, mountpoint, log
        self.env = env
        self.proc = None

    def start(self, timeout=60):
        os.makedirs(self.mountpoint, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s before mounting:\n%s"
                                   % (self.name, self.proc.returncode, self.log_text()))
            if is_mounted(self.mountpoint):
                try:
                    os.listdir(self.mountpoint)
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("%s did not mount within %s s:\n%s"
                           % (self.name, timeout, self.log_text()))

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"

    def stop(self):
        for args in (["-u"], ["-u", "-z"]):
            if not is_mounted(self.mountpoint):
                break
            subprocess.run(["fusermount3", *args, str(self.mountpoint)], capture_output=True)
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=10)        # both exit once unmounted
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


def s3fs_mount(ceph, bucket, work, name):
    passwd = os.path.join(work, "s3fs.passwd")
    if not os.path.exists(passwd):
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("%s:%s\n" % (ceph.access_key, ceph.secret_key))
    opts = ("url=%s,use_path_request_style,passwd_file=%s,multipart_size=%d,parallel_count=%d"
            % (ceph.rgw_endpoint, passwd, PART_MIB, THREADS))
    mnt = os.path.join(work, name)
    return PeerMount(name, ["s3fs", bucket, mnt, "-f", "-o", opts], mnt,
                     os.path.join(work, name + ".log"))


def rclone_mount(ceph, work, name="rclone"):
    conf = os.path.join(work, "rclone.conf")
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[bench]\ntype = s3\nprovider = Ceph\nendpoint = %s\n"
                "access_key_id = %s\nsecret_access_key = %s\n"
                % (ceph.rgw_endpoint, ceph.access_key, ceph.secret_key))
    mnt = os.path.join(work, name)
    cmd = ["rclone", "--config", conf, "mount", "bench:", mnt, "--vfs-cache-mode", "off",
           "--s3-chunk-size", "%dM" % PART_MIB, "--s3-upload-concurrency", str(THREADS)]
    # rclone's AWS SDK refuses AWS_CA_BUNDLE with rclone's own HTTP transport
    # ("LoadCustomCABundleError"); radosgw is plain http here, so drop it
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return PeerMount(name, cmd, mnt, os.path.join(work, name + ".log"), env)


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


def wanted_peers(no_peers):
    """{peer: why it is not run} of s3fs and rclone (absent: it is run)."""
    if no_peers:
        print("s3fs and rclone: skipped (--no-peers)", file=sys.stderr)
        return dict.fromkeys(PEER_PACKAGES, "--no-peers")
    skipped = {}
    for prog, package in PEER_PACKAGES.items():
        if not shutil.which(prog):
            skipped[prog] = "%s missing: install the Debian package %s" % (prog, package)
            print("%s not found: its steps are skipped. Install the Debian package %s "
                  "(apt-get install --no-install-recommends %s, or make bench-stores)"
                  % (prog, package, package), file=sys.stderr)
    return skipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parallel", type=int, default=16,
                   help="then this many 256 MiB copies into s3 at once (0: skip)")
    p.add_argument("--ls-count", type=int, default=10000,
                   help="images in the listed file store and bucket (0: no listings)")
    p.add_argument("--no-peers", action="store_true", help="skip s3fs and rclone")
    args = p.parse_args(argv)
    skipped = wanted_peers(args.no_peers)
    work = tempfile.mkdtemp(prefix="gsfs-bench-", dir="/tmp")
    size = args.size_mib * MiB
    src = os.path.join(work, "src.raw")
    make_source(src, args.size_mib)
    par_srcs = [os.path.join(work, "par-src%d.raw" % i) for i in range(PAR_N)]
    for path in par_srcs:
        make_source(path, PAR_MIB)
    datadir = os.path.join(work, "file-store")
    ceph = CephCluster()
    mount = None
    peers = []
    times = {}
    cpu = {}                # step → [{who: CPU-s}] per round
    warnings = []
    try:
        ceph.start(os.path.join(work, "ceph"))
        s3 = ceph.s3_client(max_pool_connections=64)
        s3.create_bucket(Bucket=BUCKET)
        backends = "file:file, s3:s3, rbd:rbd"
        s3_section = {"s3_store_host": ceph.rgw_endpoint, "s3_store_access_key": ceph.access_key,
                      "s3_store_secret_key": ceph.secret_key, "s3_store_bucket": BUCKET,
                      "s3_store_bucket_url_format": "path",
                      "s3_store_large_object_size": PART_MIB,
                      "s3_store_large_object_chunk_size": PART_MIB,
                      "s3_store_thread_pools": THREADS}
        sections = {
            "glance_store": {"default_backend": "file"},
            "file": {"filesystem_store_datadir": datadir},
            "s3": s3_section,
            "rbd": {"rbd_store_pool": ceph.pool, "rbd_store_user": ceph.rbd_user,
                    "rbd_store_ceph_conf": ceph.conf_path, "rbd_store_chunk_size": 8}}
        if args.ls_count:
            t0 = time.perf_counter()
            s3.create_bucket(Bucket=LS_BUCKET)
            fill_datadir(datadir, args.ls_count)
            fill_bucket(s3, LS_BUCKET, args.ls_count)
            print("filled the datadir and %s with %d images each in %.1f s"
                  % (LS_BUCKET, args.ls_count, time.perf_counter() - t0), file=sys.stderr)
            backends += ", s3ls:s3"
            sections["s3ls"] = dict(s3_section, s3_store_bucket=LS_BUCKET)
        conf = ini_text(dict({"DEFAULT": {"enabled_backends": backends}}, **sections))
        mount = GsfsMount(work, conf, name="mnt").start()
        pid = int(os.getxattr(mount.mountpoint, "user.gsfs.pid"))

        s3fs = s3fs_ls = rclone = None
        if "s3fs" not in skipped:
            s3fs = s3fs_mount(ceph, BUCKET, work, "s3fs")
            peers.append(s3fs)
            s3fs.start()
            if args.ls_count:
                s3fs_ls = s3fs_mount(ceph, LS_BUCKET, work, "s3fs-ls")
                peers.append(s3fs_ls)
                s3fs_ls.start()
        if "rclone" not in skipped:
            rclone = rclone_mount(ceph, work)
            peers.append(rclone)
            rclone.start()
        CPU_PIDS["gsfs"] = [pid]
        CPU_PIDS["ceph"] = list(ceph.pids().values())
        CPU_PIDS["peers"] = [p.proc.pid for p in peers]
        listings = []                              # (step, directory)
        if args.ls_count:
            listings = [("ls file gsfs", mount.path("file")), ("ls file datadir", datadir),
                        ("ls s3 gsfs", mount.path("s3ls"))]
            if s3fs_ls:
                listings.append(("ls s3 s3fs", s3fs_ls.mountpoint))
            if rclone:
                listings.append(("ls s3 rclone", os.path.join(rclone.mountpoint, LS_BUCKET)))

        transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=PART_MIB * MiB, multipart_chunksize=PART_MIB * MiB,
            max_concurrency=THREADS, use_threads=True)
        rbd = ["rbd", "--no-progress", "--conf", ceph.conf_path, "--id", ceph.rbd_user]
        out = os.path.join(work, "out.raw")

        def record(name, measured):
            seconds, used = measured
            times.setdefault(name, []).append(seconds)
            cpu.setdefault(name, []).append(used)
            print("  %-22s %6.2f s  CPU-s %s" % (name, seconds, " ".join(
                "%s %.1f" % kv for kv in used.items())), file=sys.stderr)

        def remove_outputs():
            for path in (out, out + ".rbd"):
                if os.path.exists(path):
                    os.unlink(path)

        def check_size(key):
            got = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
            if got != size:
                warnings.append("object %s has %d bytes, not %d" % (key, got, size))

        for r in range(args.rounds):
            print("round %d" % (r + 1), file=sys.stderr)
            for name, path in listings:
                t0 = time.perf_counter()
                n = ls_count(path)              # warm-up, untimed
                print("  %-22s (warm-up %.2f s)" % (name, time.perf_counter() - t0),
                      file=sys.stderr)
                if n != args.ls_count:
                    warnings.append("round %d: %s listed %d entries, not %d"
                                    % (r + 1, name, n, args.ls_count))
                record(name, timed(run, "ls", "-l", path))
            # the references read the source from the page cache, as cp does
            # (the cold reads of the last round dropped it)
            for name, func in (("hash-1", hash_one_thread), ("hash-2", hash_two_threads)):
                settle(ceph, warnings)
                run("cat", src)
                record(name, timed(func, src))

            def s3fs_out(r=r):
                run("cp", os.path.join(s3fs.mountpoint, "s%d" % r), out)
                if os.path.getsize(out) != size:
                    warnings.append("s3fs copied out %d bytes, not %d"
                                    % (os.path.getsize(out), size))

            # Each group's steps run in one order in even rounds and in the
            # other in odd ones, each after the servers settled: whoever
            # comes right after a write step otherwise pays for the OSD's
            # and radosgw's work behind it (gsfs always came first before).
            groups = [
                [("file in", False, run, "cp", src, mount.path("file", "f%d" % r))],
                [("s3 in gsfs", False, run, "cp", src, mount.path("s3", "g%d" % r)),
                 ("s3 in boto3", False, s3.upload_file, src, BUCKET, "b%d" % r,
                  None, None, transfer)]
                + ([("s3 in s3fs", False, run, "cp", src,
                     os.path.join(s3fs.mountpoint, "s%d" % r))] if s3fs else [])
                + ([("s3 in rclone", False, run, "cp", src,
                     os.path.join(rclone.mountpoint, BUCKET, "r%d" % r))] if rclone else []),
                [("s3 out gsfs", True, run, "cp", mount.path("s3", "g%d" % r), out),
                 ("s3 out boto3", True, s3.download_file, BUCKET, "b%d" % r, out,
                  None, None, transfer),
                 # an image gsfs did not write: its checksums are computed while it is read
                 ("s3 out gsfs+hash", True, run, "cp", mount.path("s3", "b%d" % r), out)]
                + ([("s3 out s3fs", True, s3fs_out)] if s3fs else []),
                [("4 par s3 in gsfs", False, cp_all, [
                    (s, mount.path("s3", "p%d-%d" % (r, i))) for i, s in enumerate(par_srcs)]),
                 ("4 par s3 in boto3", False, upload_all, s3, BUCKET, [
                     (s, "q%d-%d" % (r, i)) for i, s in enumerate(par_srcs)], transfer)],
                [("rbd in gsfs", False, run, "cp", src, mount.path("rbd", "g%d" % r)),
                 ("rbd in import", False, run, *rbd, "import", src,
                  "%s/bench-b%d" % (ceph.pool, r))],
                [("rbd out gsfs", True, run, "cp", mount.path("rbd", "g%d" % r), out),
                 ("rbd out export", True, run, *rbd, "export",
                  "%s/bench-b%d" % (ceph.pool, r), out + ".rbd")],
            ]
            for group in groups:
                for name, cold, func, *fargs in (group if r % 2 == 0 else group[::-1]):
                    if cold:
                        # every copy-out writes a new file: cp onto the last
                        # step's output first freed its 1 GiB (rbd export
                        # refuses to overwrite, so it never paid for that)
                        remove_outputs()
                        settle(ceph, warnings)
                        drop_caches(ceph)
                    else:
                        # every copy-in reads its source from the page cache:
                        # the cold reads before dropped it, and whichever of
                        # gsfs and the reference came first read it from disk
                        run("cat", src, *par_srcs)
                        settle(ceph, warnings)
                    record(name, timed(func, *fargs))
            if s3fs:
                check_size("s%d" % r)
            if rclone:
                check_size("r%d" % r)
            # not timed: remove what this round wrote, so the OSD never fills up
            remove_outputs()
            for store, name in [("file", "f%d" % r), ("s3", "g%d" % r), ("rbd", "g%d" % r)] + [
                    ("s3", "p%d-%d" % (r, i)) for i in range(PAR_N)]:
                os.unlink(mount.path(store, name))
            for key in ["b%d" % r, "s%d" % r, "r%d" % r] + ["q%d-%d" % (r, i)
                                                            for i in range(PAR_N)]:
                s3.delete_object(Bucket=BUCKET, Key=key)
            run(*rbd, "rm", "%s/bench-b%d" % (ceph.pool, r))
        peak = peak_rss_mib(pid)
        parallel = None
        if args.parallel:
            parallel = parallel_copies(mount, s3, BUCKET, work, args.parallel)
    finally:
        for m in reversed(peers):
            try:
                m.stop()
            except Exception as e:   # go on: gsfs and Ceph must still go away
                print("stopping %s: %r" % (m.name, e), file=sys.stderr)
            said = [line for line in m.log_text().splitlines() if line.strip()
                    and "[INF]" not in line and " NOTICE: " not in line] if m.proc else []
            if said:
                print("%s logged (last lines, info left out):\n%s"
                      % (m.name, "\n".join(said[-15:])), file=sys.stderr)
        try:
            if mount is not None:
                mount.stop()
        finally:
            ceph.stop()
            for m in peers + ([mount] if mount else []):
                if is_mounted(m.mountpoint):
                    print("WARNING: %s is still mounted" % m.mountpoint, file=sys.stderr)
            subprocess.run(["rm", "-rf", "--one-file-system", work])

    report(args, size, times, cpu, peak, parallel, skipped, warnings)
    return 0


def report(args, size, times, cpu, peak, parallel, skipped, warnings):
    med = {k: statistics.median(v) for k, v in times.items()}
    nbytes = {k: (PAR_N * PAR_MIB * MiB if k.startswith("4 par") else size)
              for k in med if not k.startswith("ls ")}
    print("\n%d MiB, median of %d rounds (MB = 10^6 bytes; ls: %d images)"
          % (args.size_mib, args.rounds, args.ls_count))
    for k in med:
        rate = "%7.0f MB/s" % (nbytes[k] / med[k] / 1e6) if k in nbytes else ""
        print(("%-18s %7.2f s %s" % (k, med[k], rate)).rstrip())
    cores = os.cpu_count() or 1
    used = {k: statistics.median(sum(x for w, x in c.items() if w != "steal") for c in v)
            for k, v in cpu.items() if v}
    print("\nCPU-s per step (median; on %d cores a step that uses C CPU-s takes at "
          "least C/%d s); steal: the share of the step's core-seconds the "
          "hypervisor gave to other machines (a pipelined step loses more to it "
          "than one thread does)" % (cores, cores))
    for k in med:
        if k in used and not k.startswith("ls "):
            parts = {w: statistics.median(c.get(w, 0) for c in cpu[k])
                     for w in ("gsfs", "ceph", "peers", "tools")}
            steal = statistics.median(c.get("steal", 0) / max(t * cores, 1e-9)
                                      for c, t in zip(cpu[k], times[k], strict=True))
            print("%-18s %6.1f  (%s)  steal %.0f%%" % (k, used[k], ", ".join(
                "%s %.1f" % (w, v) for w, v in parts.items() if v >= 0.05), 100 * steal))
    print("\nratios (> 1: gsfs faster)")
    pairs = [("file in / hash-1", "file in", "hash-1"),
             ("file in / hash-2", "file in", "hash-2"),
             ("s3 in / boto3", "s3 in gsfs", "s3 in boto3"),
             ("s3 in / s3fs", "s3 in gsfs", "s3 in s3fs"),
             ("s3 in / rclone", "s3 in gsfs", "s3 in rclone"),
             ("s3 out / boto3", "s3 out gsfs", "s3 out boto3"),
             ("s3 out, hashing / boto3", "s3 out gsfs+hash", "s3 out boto3"),
             ("s3 out / s3fs", "s3 out gsfs", "s3 out s3fs"),
             ("4 parallel s3 in / boto3", "4 par s3 in gsfs", "4 par s3 in boto3"),
             ("rbd in / min(hash-1, import)", "rbd in gsfs",
              max(("hash-1", "rbd in import"), key=med.get)),
             ("rbd out / export", "rbd out gsfs", "rbd out export"),
             ("ls file / datadir", "ls file gsfs", "ls file datadir"),
             ("ls s3 / s3fs", "ls s3 gsfs", "ls s3 s3fs"),
             ("ls s3 / rclone", "ls s3 gsfs", "ls s3 rclone")]
    for label, a, b in pairs:
        if a in med and b in med:
            ratio = med[b] / med[a]
            goal = GOALS.get(label)
            verdict = ""
            if goal is not None and ratio >= goal:
                verdict = "  goal >= %.1f: met" % goal
            elif goal is not None:
                need = med[b] / goal
                verdict = ("  goal >= %.1f: not met; it needs gsfs's step in %.2f s, whose "
                           "%.1f CPU-s take %.2f s on %d cores"
                           % (goal, need, used.get(a, 0), used.get(a, 0) / cores, cores))
            print("%-30s %5.2f%s" % (label, ratio, verdict))
        else:
            why = "--ls-count 0" if a.startswith("ls ") and not args.ls_count else \
                skipped.get(b.split()[-1], "not run")
            print("%-30s  skipped (%s)" % (label, why))
    if args.ls_count:
        goal = "" if args.ls_count == 10000 else " (goals are for 10,000 images)"
        print("ls -l of %d images, warm: file store %.2f s (goal <= %.1f s), "
              "s3 store %.2f s (goal <= %.1f s)%s"
              % (args.ls_count, med["ls file gsfs"], LS_GOALS["ls file gsfs"],
                 med["ls s3 gsfs"], LS_GOALS["ls s3 gsfs"], goal))
    print("daemon peak RSS: %.0f MiB" % peak)
    if parallel:
        seconds, n, top, after, ok = parallel
        print("%d parallel 256 MiB copies into s3: %.1f s, daemon peak RSS %.0f MiB, "
              "RSS 2 s after %.0f MiB, all checksums right: %s" % (n, seconds, top, after, ok))
    for w in warnings:
        print("WARNING: %s" % w)


if __name__ == "__main__":
    sys.exit(main())
