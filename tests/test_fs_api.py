"""gsfs.fs.Operations driven directly, without a kernel mount (as s3ql's
tests/t3_fs_api.py does): the error funnel, the reorder window, poisoned
uploads, the writer's fate and announced sizes, on a real file store in a
temporary directory. The same promises are tried with real tools on real
mounts in test_fuse_interrupted.py.
"""

import errno
import os
import random
import subprocess
import sys
import time

import pyfuse3
import pytest
import trio

from gsfs import multi_backend
from gsfs.fs import daemon, errors
from gsfs.fs import operations as operations_mod
from gsfs.fs import settings as settings_mod
from gsfs.fs.operations import Operations
from tests.storeconf import reset_global_state

MiB = 1024 * 1024


class Ctx:
    """What pyfuse3 passes as ``ctx`` (RequestContext cannot be built from
    Python); the handlers read its pid."""

    def __init__(self, pid=None):
        self.pid = pid if pid is not None else os.getpid()
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.umask = 0o022


@pytest.fixture
def fs_env(tmp_path):
    """``fs_env(**gsfs_options)`` → (run, datadir): ``run(body)`` runs
    ``await body(ops, store_dir)`` in trio with a fresh Operations."""
    datadir = tmp_path / "data"
    datadir.mkdir()
    conf_path = tmp_path / "glance-api.conf"
    conf_path.write_text("[DEFAULT]\nenabled_backends = a:file\n[glance_store]\n"
                         "default_backend = a\n[a]\nfilesystem_store_datadir = %s\n" % datadir)

    def make(**options):
        options.setdefault("spool_dir", str(tmp_path / "spool"))
        options.setdefault("spool_commit_delay", "0")
        reset_global_state()
        conf, reserved, _ = daemon.load_config([str(conf_path)], None,
                                               {k: str(v) for k, v in options.items()})
        multi_backend.create_multi_stores(conf, reserved_stores=reserved)
        ops = Operations(settings_mod.Settings(conf))

        def run(body):
            async def main():
                async with trio.open_nursery() as nursery:
                    ops.nursery = nursery
                    await body(ops, ops.namespace.store_dirs["a"])
                    nursery.cancel_scope.cancel()
            trio.run(main)
            return ops

        return run

    try:
        yield make, datadir
    finally:
        reset_global_state()


async def create(ops, d, name, pid=None, flags=os.O_WRONLY | os.O_CREAT):
    fi, _attrs = await ops.create(d.ino, name.encode(), 0o644, flags, Ctx(pid))
    return fi.fh


async def fuse_errno(coro):
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    return info.value.errno


def listing(datadir):
    return sorted(os.listdir(datadir))


def test_every_handler_goes_through_the_funnel():
    for name in operations_mod.HANDLERS:
        method = getattr(Operations, name)
        assert getattr(method, "__wrapped__", None) is not None, name


def test_a_bug_in_a_handler_becomes_eio_and_is_counted(fs_env, monkeypatch, caplog):
    """An unexpected exception (a bug in gsfs, simulated) becomes EIO with its
    traceback logged once; the next request is served."""
    make, _datadir = fs_env
    run = make()

    async def broken(store_dir, name):
        raise RuntimeError("simulated bug")

    async def body(ops, d):
        original = ops.namespace.lookup
        monkeypatch.setattr(ops.namespace, "lookup", broken)
        assert await fuse_errno(ops.lookup(d.ino, b"x", Ctx())) == errno.EIO
        monkeypatch.setattr(ops.namespace, "lookup", original)
        assert await fuse_errno(ops.lookup(d.ino, b"x", Ctx())) == errno.ENOENT
        assert ops.failures.per_store() == {"a": {"lookup": 1}}

    run(body)
    bug_lines = [r for r in caplog.records if "simulated bug" in r.getMessage()]
    assert len(bug_lines) == 1 and bug_lines[0].exc_info is not None


def test_backend_errors_become_errnos(fs_env):
    """A symlink loop and a fifo in the datadir: EIO / ENOENT, never a crash."""
    make, datadir = fs_env
    os.symlink("loop", datadir / "loop")
    run = make()

    async def body(ops, d):
        assert await fuse_errno(ops.lookup(d.ino, b"loop", Ctx())) == errno.EIO
        fh = await ops.opendir(d.ino, Ctx())
        ops.dir_handles[fh] = (d.ino, None)
        assert ops.failures.per_store()["a"]["lookup"] == 1

    run(body)


def test_writes_out_of_order_are_put_back_in_order(fs_env):
    make, datadir = fs_env
    data = os.urandom(24 * MiB)
    run = make(reorder_window_mib=16)

    async def body(ops, d):
        fh = await create(ops, d, "img")
        pieces = [(off, data[off:off + MiB]) for off in range(0, len(data), MiB)]
        rng = random.Random(7)
        # batches of 8 writes in flight in any order, as the kernel sends O_DIRECT
        for start in range(0, len(pieces), 8):
            batch = pieces[start:start + 8]
            rng.shuffle(batch)
            async with trio.open_nursery() as n:
                for off, piece in batch:
                    n.start_soon(ops.write, fh, off, piece)
        await ops.flush(fh)
        await ops.release(fh)

    run(body)
    assert (datadir / "img").read_bytes() == data


def test_a_full_window_with_nothing_at_the_stream_position_is_a_hole(fs_env):
    make, datadir = fs_env
    run = make(reorder_window_mib=1)
    tail = os.urandom(3 * MiB)

    async def body(ops, d):
        fh = await create(ops, d, "sparse")
        await ops.write(fh, 0, b"a" * 1000)
        for i in range(3):     # 5 MiB hole, then 3 MiB in order (window: 1 MiB)
            await ops.write(fh, 5 * MiB + i * MiB, tail[i * MiB:(i + 1) * MiB])
        await ops.flush(fh)
        await ops.release(fh)

    run(body)
    got = (datadir / "sparse").read_bytes()
    assert got == b"a" * 1000 + bytes(5 * MiB - 1000) + tail


def test_a_write_behind_the_stream_poisons_the_upload(fs_env):
    make, datadir = fs_env
    run = make()

    async def body(ops, d):
        fh = await create(ops, d, "img")
        await ops.write(fh, 0, b"x" * MiB)
        assert await fuse_errno(ops.write(fh, 10, b"y")) == errno.EINVAL
        assert await fuse_errno(ops.write(fh, MiB, b"z" * 10)) == errno.EINVAL
        assert await fuse_errno(ops.flush(fh)) == errno.EINVAL
        await ops.release(fh)
        assert await fuse_errno(ops.lookup(d.ino, b"img", Ctx())) == errno.ENOENT
        assert ops.stats.per_store["a"]["failed_uploads"] == 1

    run(body)
    assert listing(datadir) == []


def _dead_child(code):
    """A child process that ended with ``code`` (a signal if negative) and is
    not reaped yet: /proc still shows its exit code, as during do_exit()."""
    proc = subprocess.Popen([sys.executable, "-c", "import os,time; time.sleep(30)"])
    if code < 0:
        proc.send_signal(-code)
    else:
        proc.kill()
        proc.wait()
        proc = subprocess.Popen([sys.executable, "-c", "import os; os._exit(%d)" % code])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/proc/%d/stat" % proc.pid) as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                return proc
        time.sleep(0.01)
    raise AssertionError("child did not end")


@pytest.mark.parametrize("code, published", [(-9, False), (-15, False), (3, False),
                                             (0, True)])
def test_the_writers_fate_decides_the_commit(fs_env, code, published):
    make, datadir = fs_env
    run = make(allow_replace=True)
    (datadir / "old").write_bytes(b"old image")
    child = _dead_child(code)
    try:
        async def body(ops, d):
            for name in ("new", "old"):
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                fh = await create(ops, d, name, pid=child.pid, flags=flags)
                await ops.write(fh, 0, b"n" * 5000)
                await ops.flush(fh)
                await ops.release(fh)

        run(body)
    finally:
        child.wait()
    if published:
        assert listing(datadir) == ["new", "old"]
        assert (datadir / "old").read_bytes() == b"n" * 5000
    else:
        assert listing(datadir) == ["old"]
        assert (datadir / "old").read_bytes() == b"old image"


def test_a_writer_that_is_gone_commits(fs_env):
    make, datadir = fs_env
    run = make()
    proc = subprocess.Popen(["true"])
    proc.wait()

    async def body(ops, d):
        fh = await create(ops, d, "img", pid=proc.pid)
        await ops.write(fh, 0, b"data")
        await ops.flush(fh)
        await ops.release(fh)

    run(body)
    assert listing(datadir) == ["img"]


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR], ids=["stream", "spool"])
def test_an_announced_size_is_checked_before_publishing(fs_env, flags):
    make, datadir = fs_env
    run = make()

    async def body(ops, d):
        for name, announced in (("wrong", b"4097"), ("right", b"4096")):
            fh = await create(ops, d, name, flags=flags | os.O_CREAT)
            await ops.write(fh, 0, b"s" * 4096)
            ino = ops.handles[fh].image.ino
            await ops.setxattr(ino, b"user.glance.size", announced, Ctx())
            if name == "wrong" and flags == os.O_WRONLY:
                assert await fuse_errno(ops.flush(fh)) == errno.EIO
            else:
                await ops.flush(fh)
            await ops.release(fh)
        await trio.sleep(0.5)       # the spool's upload after the last close
        await ops.sync_all()

    run(body)
    assert listing(datadir) == ["right"]


def test_a_full_spool_poisons_the_image(fs_env):
    make, datadir = fs_env
    run = make(spool_max_mib=1)

    async def body(ops, d):
        fh = await create(ops, d, "q.qcow2", flags=os.O_RDWR | os.O_CREAT)
        await ops.write(fh, 0, b"q" * 1000)
        assert await fuse_errno(ops.write(fh, 1000, b"q" * MiB)) == errno.ENOSPC
        assert await fuse_errno(ops.write(fh, 0, b"q")) == errno.ENOSPC
        assert await fuse_errno(ops.flush(fh)) == errno.ENOSPC
        await ops.release(fh)
        await trio.sleep(0.2)
        assert ops.spool_used == 0 and not ops.spools
        assert ops.status()["failures"]["a"]["upload"] == 1

    run(body)
    assert listing(datadir) == []
    assert os.listdir(datadir.parent / "spool") == []


def test_a_dying_writer_poisons_a_spooled_image(fs_env):
    make, datadir = fs_env
    run = make()
    child = _dead_child(-9)
    try:
        async def body(ops, d):
            fh = await create(ops, d, "q.qcow2", pid=child.pid, flags=os.O_RDWR | os.O_CREAT)
            await ops.write(fh, 0, b"q" * 1000)
            assert await fuse_errno(ops.flush(fh)) == errno.EIO
            await ops.release(fh)
            await trio.sleep(0.2)
            await ops.sync_all()

        run(body)
    finally:
        child.wait()
    assert listing(datadir) == []


def test_a_failing_background_job_does_not_end_the_daemon(fs_env, caplog):
    make, _datadir = fs_env
    run = make()

    async def body(ops, d):
        async def job():
            raise ValueError("background bug")
        ops.spawn(job, "test job")
        await trio.sleep(0.05)
        assert await fuse_errno(ops.lookup(d.ino, b"x", Ctx())) == errno.ENOENT
        assert ops.failures.per_store()["-"]["background"] == 1

    run(body)
    assert any("background bug" in r.getMessage() for r in caplog.records)


def test_errno_of_maps_known_errors():
    from gsfs import exceptions
    assert errors.errno_of(exceptions.Duplicate()) == errno.EEXIST
    assert errors.errno_of(exceptions.StorageFull()) == errno.ENOSPC
    assert errors.errno_of(OSError(errno.ELOOP, "loop")) == errno.ELOOP
    assert errors.errno_of(exceptions.BackendException("x")) == errno.EIO
    assert errors.errno_of(KeyError("x")) == errno.EIO
