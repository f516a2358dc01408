"""systemd integration: the unit files verify cleanly, sd_notify reaches a real socket,
the fstab example generates a valid unit, and the units' dead-mount cleanup works."""

import errno
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from gsfs import notify

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
SERVICE = "gsfs@.service"
MOUNT_UNIT = "srv-images.mount"
INSTANCE = "gsfs@srv-images.service"
INSTALLED_GSFS = "/usr/local/bin/gsfs"
FSTAB_GENERATOR = "/usr/lib/systemd/system-generators/systemd-fstab-generator"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (Debian package systemd)")


# ----------------------------------------------------------------- systemd-analyze verify

def _gsfs_executable(tmp_path):
    """The venv's gsfs script if installed (pip install -e .), else a stub for verify."""
    candidate = Path(sys.executable).parent / "gsfs"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    stub = tmp_path / "stub-bin" / "gsfs"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return str(stub)


def _copy_units(tmp_path, names=(SERVICE, MOUNT_UNIT)):
    """Copy the units, ExecStart/ExecStop pointing at an existing gsfs executable
    (verify checks that every Exec*= command exists)."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    gsfs = _gsfs_executable(tmp_path)
    for name in names:
        text = (UNITS / name).read_text()
        (unit_dir / name).write_text(text.replace(INSTALLED_GSFS, gsfs))
    return unit_dir


def _verify(unit_dir, units, *extra):
    """Run systemd-analyze verify; -> (exit code, lines about our units, other lines)."""
    paths = [str(unit_dir / u) for u in units]
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=no", *extra, *paths],
        capture_output=True, text=True, timeout=120, cwd=unit_dir,
        env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C"))
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    # A line is about our units if it names one of them or the directory they are in.
    names = set(units) | {SERVICE, MOUNT_UNIT, INSTANCE}
    ours = [line for line in lines if str(unit_dir) in line or any(n in line for n in names)]
    others = [line for line in lines if line not in ours]
    return proc.returncode, ours, others


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path):
    unit_dir = _copy_units(tmp_path)
    rc, ours, others = _verify(unit_dir, [INSTANCE, MOUNT_UNIT])
    if others:
        print("systemd-analyze said about other units (ignored):\n  " + "\n  ".join(others))
    assert ours == [], "systemd-analyze verify complains about our units:\n" + "\n".join(ours)
    assert rc == 0, "systemd-analyze verify exit status %d:\n%s" % (rc, "\n".join(others))


@needs_analyze
def test_verify_check_is_not_vacuous(tmp_path):
    """The same check catches a typo and a missing executable in our unit."""
    unit_dir = _copy_units(tmp_path, names=(SERVICE,))
    path = unit_dir / SERVICE
    text = path.read_text().replace("NotifyAccess=main", "NotifyAccess=main\nNotifyAcess=all")
    text = text.replace("ExecStop=" + _gsfs_executable(tmp_path), "ExecStop=/nonexistent/gsfs")
    path.write_text(text)
    rc, ours, _others = _verify(unit_dir, [INSTANCE])
    assert rc != 0
    assert any("NotifyAcess" in line for line in ours), ours
    assert any("/nonexistent/gsfs" in line for line in ours), ours


def _unit_settings(name):
    settings = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_service_unit_contract():
    """The settings the daemon and the operators rely on (not checkable by verify)."""
    s = _unit_settings(SERVICE)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [
        "/usr/local/bin/gsfs mount -f --config-file ${GSFS_CONFIG} $GSFS_OPTIONS %f"]
    assert s["ExecStop"] == ["/usr/local/bin/gsfs umount %f"]
    assert s["Environment"][0] == "GSFS_CONFIG=/etc/gsfs/gsfs.conf"
    assert "-/etc/default/gsfs" in s["EnvironmentFile"]
    assert s["KillMode"] == ["mixed"] and s["Restart"] == ["on-failure"]
    assert s["TimeoutStopSec"] == ["15min"]
    assert s["DeviceAllow"] == ["/dev/fuse rw"]
    assert "CAP_SYS_ADMIN" in s["CapabilityBoundingSet"][0].split()
    # Any of these gives the service its own mount namespace: the FUSE mount
    # would be invisible outside it (systemd.exec(5), PrivateMounts=).
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
                "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "ProtectProc", "ProcSubset", "TemporaryFileSystem", "BindPaths",
                "BindReadOnlyPaths", "RootDirectory", "MountFlags", "PrivateIPC"):
        assert key not in s, "%s= would hide the FUSE mount from the host" % key
    m = _unit_settings(MOUNT_UNIT)
    assert m["Where"] == ["/srv/images"] and m["Type"] == ["fuse.gsfs"] and m["What"] == ["gsfs"]
    assert m["Options"] == ["config_file=/etc/gsfs/gsfs.conf,_netdev,allow_other"]


@needs_analyze
@pytest.mark.skipif(not os.access(FSTAB_GENERATOR, os.X_OK), reason="no systemd-fstab-generator")
def test_fstab_example_generates_a_valid_network_mount(tmp_path):
    """systemd-fstab-generator turns the fstab.example line into a unit that verifies."""
    fstab = tmp_path / "fstab"
    fstab.write_text((UNITS / "fstab.example").read_text())
    out = tmp_path / "gen"
    dirs = [out / "normal", out / "early", out / "late"]
    for d in dirs:
        d.mkdir(parents=True)
    proc = subprocess.run(
        [FSTAB_GENERATOR, *map(str, dirs)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, SYSTEMD_FSTAB=str(fstab), SYSTEMD_PROC_CMDLINE="",
                 SYSTEMD_LOG_LEVEL="info"))
    assert proc.returncode == 0, proc.stderr
    unit = dirs[0] / MOUNT_UNIT
    text = unit.read_text()
    assert "Type=fuse.gsfs" in text and "Where=/srv/images" in text
    assert "TimeoutSec=2min" in text      # from x-systemd.mount-timeout
    # _netdev made it a network mount: pulled in by remote-fs.target
    assert (dirs[0] / "remote-fs.target.wants" / MOUNT_UNIT).is_symlink()
    rc, ours, _others = _verify(dirs[0], [MOUNT_UNIT], "--man=no")
    assert ours == [] and rc == 0, ours


# ----------------------------------------------------------------- sd_notify

def _short_tmpdir():
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    return tempfile.mkdtemp(prefix="gsfs-sdn-", dir="/tmp")


def _receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(10)
    return sock


def _receive(sock):
    """-> (datagram, sender pid) -- systemd checks that pid for NotifyAccess=main."""
    creds = struct.calcsize("3i")
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
    pid = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("3i", payload[:creds])
    return data, pid


def test_sd_notify_path_socket(monkeypatch):
    tmpdir = _short_tmpdir()
    path = os.path.join(tmpdir, "notify")
    try:
        with _receiver(path) as sock:
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            assert notify.sd_notify("READY=1") is True
            assert _receive(sock) == (b"READY=1", os.getpid())
            assert notify.notify_ready("Mounted at /srv/images\nsecond line") is True
            assert _receive(sock)[0] == b"READY=1\nSTATUS=Mounted at /srv/images second line"
            assert notify.notify_status("3 uploads in flight") is True
            assert _receive(sock)[0] == b"STATUS=3 uploads in flight"
            assert notify.notify_stopping("waiting for 3 uploads") is True
            assert _receive(sock)[0] == b"STOPPING=1\nSTATUS=waiting for 3 uploads"
            assert notify.notify_extend_timeout(90.5) is True
            assert _receive(sock)[0] == b"EXTEND_TIMEOUT_USEC=90500000"
    finally:
        shutil.rmtree(tmpdir)


def test_sd_notify_abstract_socket(monkeypatch):
    name = "gsfs-test-%s" % uuid.uuid4().hex
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.sd_notify("READY=1") is True
        assert _receive(sock) == (b"READY=1", os.getpid())


def test_sd_notify_from_a_subprocess_like_systemd_sees_it():
    """The daemon is a separate process started with NOTIFY_SOCKET in its environment."""
    tmpdir = _short_tmpdir()
    path = os.path.join(tmpdir, "notify")
    try:
        with _receiver(path) as sock:
            proc = subprocess.Popen(
                [sys.executable, "-c",
                 "import sys; from gsfs import notify; "
                 "sys.exit(0 if notify.notify_ready() else 3)"],
                env=dict(os.environ, NOTIFY_SOCKET=path), cwd=str(ROOT))
            assert proc.wait(timeout=60) == 0
            assert _receive(sock) == (b"READY=1", proc.pid)
    finally:
        shutil.rmtree(tmpdir)


def test_sd_notify_without_socket_or_listener(monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify.notify_ready() is False
    tmpdir = _short_tmpdir()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(tmpdir, "nobody-listens"))
        with caplog.at_level("DEBUG", logger="gsfs.notify"):
            assert notify.sd_notify("READY=1") is False          # ENOENT: no exception
        assert "failed" in caplog.text
        monkeypatch.setenv("NOTIFY_SOCKET", "@gsfs-test-nobody-%s" % uuid.uuid4().hex)
        assert notify.notify_status("x") is False                # ECONNREFUSED
        monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
        assert notify.sd_notify("READY=1") is False              # unsupported, no exception
    finally:
        shutil.rmtree(tmpdir)


# ----------------------------------------------------------------- dead-mount cleanup

HELLO_FS = textwrap.dedent("""\
    import errno, stat, sys
    import pyfuse3, trio

    class FS(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            if inode != pyfuse3.ROOT_INODE:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attr = pyfuse3.EntryAttributes()
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_ino = inode
            attr.st_nlink = 2
            return attr

    pyfuse3.init(FS(), sys.argv[1], {"fsname=gsfs-test", "subtype=gsfs-test"})
    print("mounted", flush=True)
    trio.run(pyfuse3.main)
    """)


def _cleanup_commands():
    """ExecStartPre=/ExecStopPost= cleanup command lines of the unit, as argv lists."""
    commands = []
    for line in (UNITS / SERVICE).read_text().splitlines():
        for key in ("ExecStartPre=", "ExecStopPost="):
            if line.startswith(key):
                value = line[len(key):]
                assert value.startswith("-"), "cleanup must be best effort ('-' prefix)"
                commands.append(shlex.split(value[1:].replace("$$", "$")))
    return commands


def _fstype(path):
    proc = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(path)],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() or None


@pytest.mark.fuse
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse")
                    or shutil.which("findmnt") is None,
                    reason="needs root, /dev/fuse and findmnt")
def test_unit_cleanup_unmounts_only_a_dead_fuse_mount(tmp_path):
    commands = _cleanup_commands()
    assert len(commands) == 2 and commands[0] == commands[1]
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    command = [str(mountpoint) if arg == "%f" else arg for arg in commands[0]]
    script = tmp_path / "hellofs.py"
    script.write_text(HELLO_FS)
    proc = subprocess.Popen([sys.executable, str(script), str(mountpoint)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "mounted"
        deadline = time.monotonic() + 30
        while _fstype(mountpoint) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _fstype(mountpoint) == "fuse.gsfs-test"
        os.stat(mountpoint)

        # a live mount is left alone (this one even fails statfs, with ENOSYS)
        subprocess.run(command, check=True, timeout=60)
        assert _fstype(mountpoint) == "fuse.gsfs-test"

        # the daemon dies: "Transport endpoint is not connected" (statfs is never
        # answered from a cache; stat of the root may be, for attr_timeout)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with pytest.raises(OSError) as dead:
            os.statvfs(mountpoint)
        assert dead.value.errno == errno.ENOTCONN

        subprocess.run(command, check=True, timeout=60)
        assert _fstype(mountpoint) is None
        os.stat(mountpoint)                       # the plain directory again

        # nothing mounted: a no-op that succeeds
        subprocess.run(command, check=True, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if _fstype(mountpoint) is not None:
            subprocess.run(["umount", "-l", str(mountpoint)], timeout=60)


def test_cleanup_commands_parse_like_systemd():
    """Every ExecStartPre/ExecStopPost '$' is doubled (systemd would expand it)."""
    text = (UNITS / SERVICE).read_text()
    for line in text.splitlines():
        if line.startswith(("ExecStartPre=", "ExecStopPost=")):
            assert "$" not in line.replace("$$", ""), line
