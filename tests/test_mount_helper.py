"""gsfs.mount_helper: mount(8)'s helper convention -> `gsfs mount` argv; and the
-o parser (gsfs/mount_options.py) it shares with `gsfs mount` and the daemon."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from gsfs import cli, mount_helper, mount_options
from gsfs.mount_helper import HelperUsageError, translate


def test_minimal_source_gsfs():
    assert translate(["gsfs", "/srv/images"]) == ["mount", "/srv/images"]
    assert translate(["none", "/srv/images"]) == ["mount", "/srv/images"]


def test_source_is_a_config_file():
    assert translate(["/etc/gsfs/gsfs.conf", "/srv/images", "-o", "allow_other"]) == [
        "mount", "--config-file", "/etc/gsfs/gsfs.conf", "/srv/images", "-o", "allow_other"]


def test_source_is_a_config_dir(tmp_path):
    assert translate([str(tmp_path), "/srv/images"]) == [
        "mount", "--config-dir", str(tmp_path), "/srv/images"]


def test_systemd_mount_unit_options():
    """What srv-images.mount (Options=config_file=...,_netdev,allow_other) produces."""
    argv = ["gsfs", "/srv/images", "-o", "config_file=/etc/gsfs/gsfs.conf,_netdev,allow_other"]
    assert translate(argv) == [
        "mount", "--config-file", "/etc/gsfs/gsfs.conf", "/srv/images", "-o", "allow_other"]


def test_fstab_only_options_are_dropped():
    opts = ("defaults,rw,_netdev,nofail,noauto,auto,user,users,nouser,owner,group,user=alice,"
            "x-systemd.automount,x-systemd.mount-timeout=15min,x-systemd.requires=ceph.target,"
            "x-gvfs-hide,X-mount.mkdir=0755,comment=systemd.automount")
    assert translate(["gsfs", "/mnt", "-o", opts]) == ["mount", "/mnt"]


def test_everything_else_passes_in_one_o_in_order():
    argv = ["gsfs", "/mnt", "-o", "ro,allow_other,uid=1000,gid=1000,file_mode=0640",
            "-o", "dir_mode=0750,allow_replace,show_reserved,spool_dir=/var/cache/gsfs,"
                  "spool_max=10G,default_permissions,debug,nosuid,nodev"]
    assert translate(argv) == [
        "mount", "/mnt", "-o",
        "ro,allow_other,uid=1000,gid=1000,file_mode=0640,dir_mode=0750,allow_replace,"
        "show_reserved,spool_dir=/var/cache/gsfs,spool_max=10G,default_permissions,debug,"
        "nosuid,nodev"]


def test_config_file_repeatable_and_config_dir():
    argv = ["/etc/gsfs/base.conf", "/mnt", "-o",
            "config_file=/etc/gsfs/a.conf,allow_other,config_file=/etc/gsfs/b.conf,"
            "config_dir=/etc/gsfs/conf.d"]
    assert translate(argv) == [
        "mount", "--config-file", "/etc/gsfs/base.conf", "--config-file", "/etc/gsfs/a.conf",
        "--config-file", "/etc/gsfs/b.conf", "--config-dir", "/etc/gsfs/conf.d", "/mnt",
        "-o", "allow_other"]


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert translate(["gsfs.conf", "mnt", "-o", "config_file=more.conf"]) == [
        "mount", "--config-file", str(tmp_path / "gsfs.conf"),
        "--config-file", str(tmp_path / "more.conf"), str(tmp_path / "mnt")]


def test_mount8_flags_and_attached_forms():
    """mount(8) passes -s -f -n -v before -o, and -t TYPE when the helper name differs."""
    argv = ["gsfs", "/mnt", "-s", "-n", "-v", "-oallow_other,_netdev", "-t", "fuse.gsfs"]
    assert translate(argv) == ["mount", "/mnt", "-o", "allow_other"]
    assert translate(["-nv", "-o", "ro", "gsfs", "/mnt"]) == ["mount", "/mnt", "-o", "ro"]
    assert translate(["gsfs", "/mnt", "-r"]) == ["mount", "/mnt", "-o", "ro"]
    assert translate(["gsfs", "/mnt", "-w", "-o", ""]) == ["mount", "/mnt"]


def test_fake_flag_is_not_gsfs_foreground():
    # mount -f means "fake": it must never turn into gsfs's -f (foreground)
    assert translate(["gsfs", "/mnt", "-f"]) == ["mount", "/mnt"]


def test_program_name_is_tolerated():
    assert translate(["/sbin/mount.fuse.gsfs", "gsfs", "/mnt"]) == ["mount", "/mnt"]


@pytest.mark.parametrize("argv, message", [
    ([], "expected SOURCE and MOUNTPOINT"),
    (["gsfs"], "expected SOURCE and MOUNTPOINT"),
    (["gsfs", "/mnt", "/extra"], "expected SOURCE and MOUNTPOINT"),
    (["gsfs", "/mnt", "-o"], "needs a value"),
    (["gsfs", "/mnt", "-x"], "unknown option -x"),
    (["gsfs", "/mnt", "--foreground"], "unknown option --foreground"),
    (["gsfs", "/mnt", "-N", "/proc/1/ns/mnt"], "not supported"),
    (["gsfs", "/mnt", "-o", "config_file="], "needs a path"),
])
def test_bad_command_lines(argv, message):
    with pytest.raises(HelperUsageError, match=message):
        translate(argv)


def test_main_usage_error_exit_1(capsys):
    assert mount_helper.main(["gsfs"]) == 1
    assert "usage: mount.fuse.gsfs" in capsys.readouterr().err


def test_main_help(capsys):
    assert mount_helper.main(["--help"]) == 0
    assert "usage: mount.fuse.gsfs" in capsys.readouterr().out


def test_main_fake_mode_runs_nothing(capsys, monkeypatch):
    def no_exec(*args):
        raise AssertionError("fake mode must not exec")
    monkeypatch.setattr(os, "execvp", no_exec)
    assert mount_helper.main(["gsfs", "/mnt", "-f", "-o", "allow_other"]) == 0
    err = capsys.readouterr().err
    assert "(fake, not run)" in err and "mount /mnt -o allow_other" in err


def test_gsfs_command_fallback_is_python_m(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "nothing-here")])
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    assert mount_helper._gsfs_command() == [str(tmp_path / "bin" / "python3"), "-m", "gsfs.cli"]


def test_helper_execs_the_gsfs_beside_it(tmp_path):
    """A real exec: mount.fuse.gsfs (reached through a symlink, as from /sbin) runs
    the `gsfs` script in its own directory with the translated arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    out = tmp_path / "argv.txt"
    gsfs_stub = bindir / "gsfs"
    gsfs_stub.write_text('#!/bin/sh\nprintf "%%s\\n" "$@" > %s\nexit 7\n' % out)
    gsfs_stub.chmod(0o755)
    helper = bindir / "mount.fuse.gsfs"
    helper.write_text(textwrap.dedent("""\
        #!%s
        import sys
        sys.path.insert(0, %r)
        from gsfs.mount_helper import main
        sys.exit(main())
        """ % (sys.executable, os.path.dirname(os.path.dirname(mount_helper.__file__)))))
    helper.chmod(0o755)
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "mount.fuse.gsfs").symlink_to(helper)
    proc = subprocess.run(
        [str(sbin / "mount.fuse.gsfs"), "/etc/gsfs/gsfs.conf", "/srv/images",
         "-o", "_netdev,allow_other,x-systemd.automount"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr       # gsfs's exit status is mount's
    assert out.read_text().splitlines() == [
        "mount", "--config-file", "/etc/gsfs/gsfs.conf", "/srv/images", "-o", "allow_other"]


# ------------------------------------------------------------------- the shared -o parser

def test_one_parser_for_mount_and_the_helper():
    """gsfs/mount_options.py: what `gsfs mount` (and the daemon) makes of -o."""
    opts = mount_options.parse(["ro,allow_other,uid=1000,spool_max=10,debug",
                                "config_file=/a.conf,config_file=/b.conf,config_dir=/d,rw,"
                                "context=system_u:object_r:tmp_t:s0"])
    assert opts.settings == {"read_only": True, "uid": "1000", "spool_max_mib": "10"}
    assert opts.fuse == ["allow_other", "context=system_u:object_r:tmp_t:s0"]
    assert opts.config_files == ["/a.conf", "/b.conf"] and opts.config_dir == "/d"
    assert opts.debug is True
    assert mount_options.parse(["debug=false"]).debug is False
    assert mount_options.parse(opts) is opts
    assert [i.kind for i in mount_options.items(["_netdev,x-systemd.automount,rw,bogus"])] \
        == ["mount8", "mount8", "default", "unknown"]


@pytest.mark.parametrize("options, message", [
    (["bogus"], "unknown mount option 'bogus'"),
    (["allow_other=1"], "unknown mount option 'allow_other=1'"),
    (["_netdev"], "'_netdev' is an option for mount(8) or fstab"),
    (["config_dir="], "config_dir needs a path"),
    (["debug=maybe"], "debug takes no value, or true/false"),
])
def test_parser_refusals(options, message):
    with pytest.raises(mount_options.MountOptionError, match=re.escape(message)):
        mount_options.parse(options)


def test_debug_flag_is_the_debug_option():
    args = cli._parser().parse_args(["mount", "/mnt", "--debug", "-o", "ro"])
    assert args.options == ["debug", "ro"]
    assert mount_options.parse(args.options).debug


def test_gsfs_mount_refuses_a_bad_option_before_starting(tmp_path):
    """Checked by the command itself (no daemon is started, nothing is mounted)."""
    for extra in ([], ["-f"]):
        r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "gsfs"), "mount",
                            str(tmp_path), "-o", "allow_other,bogus", *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r
        assert r.stderr.strip() == ("gsfs: unknown mount option 'bogus' "
                                    "(see gsfs mount --help)"), r.stderr
