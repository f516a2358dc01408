"""``gsfs check-config`` and the generated sample config (etc/gsfs-sample.conf).

- a real-looking glance-api.conf: a reachable file store, an s3 store on a
  closed port and one on a port that never answers (both unusable, the probe
  bounded by --timeout), a store of a type gsfs has no driver for, options
  gsfs ignores → each named, exit 1;
- only a good file store → exit 0; every store type on the suite's real
  servers (Ceph: rbd, s3 and swift on radosgw; the HTTP server) → usable;
- the sample loads with oslo.config, is what oslo-config-generator makes of
  the ``gsfs`` namespace today, and a copy of it with a file store enabled
  passes check-config with nothing ignored.
"""

import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from oslo_config import cfg

from gsfs import multi_backend
from tests.servers.mounts import GSFS

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "gsfs-sample.conf"
GENERATOR = str(Path(sys.executable).parent / "oslo-config-generator")


def check_config(*args, timeout=120):
    start = time.monotonic()
    r = subprocess.run([GSFS, "check-config", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    return r, time.monotonic() - start


def blocks(stdout):
    """store id → its block of lines ("fast (file): usable" and the indented ones)."""
    result, current = {}, None
    for line in stdout.splitlines():
        head = re.match(r"(\S+) \([\w-]+\): (usable|UNUSABLE)", line)
        if head:
            current = head.group(1)
            result[current] = [line]
        elif current and line.startswith("  "):
            result[current].append(line)
        else:
            current = None
    return result


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()           # nothing listens there now: connection refused
    return port


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def glance_api_conf(tmp_path, closed_port, silent_port):
    datadir = tmp_path / "images"
    datadir.mkdir()
    text = textwrap.dedent("""\
        [DEFAULT]
        enabled_backends = fast:file, cloud:s3, stalled:s3, volumes:cinder
        bind_host = 0.0.0.0
        bind_port = 9292
        workers = 4
        show_multiple_locations = true

        [glance_store]
        default_backend = fast

        [fast]
        store_description = Local SSD
        weight = 100
        filesystem_store_datadir = {datadir}
        filesystem_store_no_such_option = 1

        [backend_defaults]
        # what both s3 stores share
        s3_store_access_key = AKIAEXAMPLEKEY
        s3_store_secret_key = do-not-print-this-secret
        s3_store_bucket = glance
        s3_store_bucket_url_format = path

        [cloud]
        store_description = Object storage
        s3_store_host = http://127.0.0.1:{closed}

        [stalled]
        s3_store_host = http://127.0.0.1:{silent}

        [volumes]
        cinder_catalog_info = volumev3::publicURL

        [retired]
        filesystem_store_datadir = /var/lib/glance/retired

        [gsfs]
        spool_max_mb = 100

        [database]
        connection = mysql+pymysql://glance:password@db/glance

        [keystone_authtoken]
        www_authenticate_uri = http://keystone:5000
        password = do-not-print-this-secret

        [paste_deploy]
        flavor = keystone
        """).format(datadir=datadir, closed=closed_port, silent=silent_port)
    path = tmp_path / "glance-api.conf"
    path.write_text(text)
    return path


def test_unusable_stores_and_ignored_options(tmp_path, closed_port, silent_port):
    conf = glance_api_conf(tmp_path, closed_port, silent_port)
    r, seconds = check_config(conf, "--timeout", "3")
    out = r.stdout
    assert r.returncode == 1, (out, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert "do-not-print-this-secret" not in out + r.stderr
    stores = blocks(out)
    assert set(stores) == {"fast", "cloud", "stalled", "volumes"}, out

    fast = "\n".join(stores["fast"])
    assert stores["fast"][0] == "fast (file): usable, the default store"
    assert "loaded     yes" in fast and "reachable  yes" in fast
    assert "writable   add enabled" in fast
    assert " free of " in fast                       # the file driver knows its capacity

    cloud = "\n".join(stores["cloud"])
    assert stores["cloud"][0] == "cloud (s3): UNUSABLE", out
    assert "loaded     yes" in cloud
    assert "reachable  no:" in cloud and "127.0.0.1:%d" % closed_port in cloud, cloud
    assert "capacity   unknown" in cloud

    stalled = "\n".join(stores["stalled"])
    assert stores["stalled"][0] == "stalled (s3): UNUSABLE", out
    assert "reachable  no: no answer within 3 s" in stalled, stalled

    volumes = "\n".join(stores["volumes"])
    assert stores["volumes"][0] == "volumes (cinder): UNUSABLE"
    assert "loaded     no: gsfs has no driver for store type 'cinder'" in volumes

    ignored = out.split("ignored by gsfs:", 1)[1].split("\n\n", 1)[0]
    assert "[fast] filesystem_store_no_such_option: not an option of the file driver" \
        in ignored, ignored
    assert "[gsfs] spool_max_mb: not a gsfs mount setting" in ignored
    assert "[volumes]: store type cinder: gsfs has no driver for it; its options are " \
        "ignored: cinder_catalog_info" in ignored
    assert "[retired]: a store section, but 'retired' is not in [DEFAULT] enabled_backends" \
        in ignored
    own = [line for line in out.splitlines() if line.startswith("not read by gsfs")]
    assert own == ["not read by gsfs (Glance's own): [DEFAULT] bind_host, bind_port, "
                   "show_multiple_locations, workers; [database]; [keystone_authtoken]; "
                   "[paste_deploy]"], out
    assert out.rstrip().endswith("3 of 4 store(s) unusable: cloud, stalled, volumes")
    # the probes are bounded: the silent store costs --timeout, not botocore's 60 s
    assert seconds < 30, seconds


def test_only_a_good_file_store_exits_0(tmp_path):
    datadir = tmp_path / "images"
    datadir.mkdir()
    conf = tmp_path / "glance-api.conf"
    conf.write_text("[DEFAULT]\nenabled_backends = fast:file\n\n[glance_store]\n"
                    "default_backend = fast\n\n[fast]\nfilesystem_store_datadir = %s\n"
                    % datadir)
    r, _ = check_config(conf)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert blocks(r.stdout)["fast"][0] == "fast (file): usable, the default store"
    assert "ignored by gsfs" not in r.stdout
    assert r.stdout.rstrip().endswith("all 1 store(s) usable")


def test_config_dir_and_o_options_load_as_mount_does(tmp_path):
    """--config-dir reads *.conf in order; -o show_reserved adds Glance's reserved
    stores, as it does for gsfs mount; a missing file fails as mount fails."""
    datadir = tmp_path / "images"
    datadir.mkdir()
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "10-stores.conf").write_text(
        "[DEFAULT]\nenabled_backends = fast:file\n[fast]\nfilesystem_store_datadir = /nowhere\n")
    (confd / "20-override.conf").write_text("[fast]\nfilesystem_store_datadir = %s\n" % datadir)
    (confd / "ignored.txt").write_text("[DEFAULT]\nenabled_backends = other:file\n")
    staging = tmp_path / "staging"
    (confd / "30-reserved.conf").write_text(
        "[os_glance_staging_store]\nfilesystem_store_datadir = %s\n"
        "[os_glance_tasks_store]\nfilesystem_store_datadir = %s\n" % (staging, staging))
    r, _ = check_config("--config-dir", confd)
    assert set(blocks(r.stdout)) == {"fast"}, r.stdout
    assert "[os_glance_staging_store]: Glance's reserved store" in r.stdout
    r, _ = check_config("--config-dir", confd, "-o", "show_reserved")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert set(blocks(r.stdout)) == {"fast", "os_glance_staging_store",
                                     "os_glance_tasks_store"}, r.stdout
    assert "ignored by gsfs" not in r.stdout

    r, _ = check_config(tmp_path / "missing.conf")
    assert r.returncode == 1
    assert "config file %s does not exist" % (tmp_path / "missing.conf") in r.stderr
    assert "Traceback" not in r.stderr
    r, _ = check_config("-o", "no_such_option")
    assert r.returncode == 1 and "unknown mount option 'no_such_option'" in r.stderr


@pytest.mark.ceph
def test_every_store_type_on_real_servers_is_usable(stores_conf, tmp_path):
    """Every driver's probe (check_access: a listing of one name for s3 and swift,
    an open of the pool for rbd, a HEAD for http, a stat for file) answers on the
    suite's radosgw, Ceph and HTTP server."""
    (tmp_path / "file-store").mkdir()
    conf = tmp_path / "all.conf"
    conf.write_text(stores_conf("file", "http", "s3", "rbd", "swift"))
    r, _ = check_config(conf, "--timeout", "30")
    assert r.returncode == 0, (r.stdout, r.stderr)
    stores = blocks(r.stdout)
    assert set(stores) == {"file", "http", "s3", "rbd", "swift"}, r.stdout
    for store_id, lines in stores.items():
        text = "\n".join(lines)
        assert "reachable  yes" in text, text
        writable = "add disabled: the http driver is read-only" if store_id == "http" \
            else "add enabled"
        assert "writable   %s" % writable in text, text
    assert "ignored by gsfs" not in r.stdout, r.stdout


@pytest.mark.ceph
def test_a_missing_bucket_pool_or_container_is_unusable(stores_conf, tmp_path):
    """A store whose bucket, pool or container does not exist is UNUSABLE, with
    the fix named, as ls of the mounted store fails (EIO): before, the probe's
    stat of one image answered "not found" there too, and all three were
    "usable". With create_*_on_put the first add makes it: usable."""
    missing = {"s3": {"s3_store_bucket": "gsfs-no-such-bucket"},
               "rbd": {"rbd_store_pool": "gsfs-no-such-pool"},
               "swift": {"swift_store_container": "gsfs-no-such-container",
                         "swift_store_create_container_on_put": False}}
    conf = tmp_path / "missing.conf"
    conf.write_text(stores_conf("s3", "rbd", "swift", extra=missing))
    r, _ = check_config(conf, "--timeout", "30")
    assert r.returncode == 1, (r.stdout, r.stderr)
    stores = {k: "\n".join(v) for k, v in blocks(r.stdout).items()}
    assert all(text.startswith("%s (%s): UNUSABLE" % (k, k)) for k, text in stores.items()), \
        r.stdout
    assert "The bucket gsfs-no-such-bucket does not exist in S3. Please set the " \
           "s3_store_create_bucket_on_put option" in stores["s3"], stores["s3"]
    assert "RADOS pool gsfs-no-such-pool of store rbd does not exist" in stores["rbd"], \
        stores["rbd"]
    assert "ceph osd pool create gsfs-no-such-pool" in stores["rbd"]
    assert "The container gsfs-no-such-container does not exist in Swift. Please set " \
           "the swift_store_create_container_on_put option" in stores["swift"], stores["swift"]

    made_on_put = {"s3": dict(missing["s3"], s3_store_create_bucket_on_put=True),
                   "swift": dict(missing["swift"], swift_store_create_container_on_put=True)}
    conf.write_text(stores_conf("s3", "swift", extra=made_on_put))
    r, _ = check_config(conf, "--timeout", "30")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "reachable  yes" in r.stdout


# ------------------------------------------------------------------- the sample

def test_sample_is_what_the_generator_makes(tmp_path):
    fresh = tmp_path / "sample.conf"
    r = subprocess.run([GENERATOR, "--namespace", "gsfs", "--output-file", str(fresh)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Could not load" not in r.stderr, r.stderr
    assert fresh.read_text() == SAMPLE.read_text(), (
        "etc/gsfs-sample.conf is out of date; regenerate it with "
        "`.venv/bin/oslo-config-generator --namespace gsfs --output-file etc/gsfs-sample.conf`")


def test_sample_loads_with_oslo_config():
    groups = multi_backend._list_config_opts()
    names = {g if isinstance(g, str) else g.name for g, _ in groups}
    assert {"DEFAULT", "glance_store", "gsfs", "file", "http", "s3", "rbd",
            "swift"} <= names
    conf = cfg.ConfigOpts()
    for group, opts in groups:
        conf.register_opts(opts, group=None if group == "DEFAULT" else group)
    conf(args=[], default_config_files=[str(SAMPLE)])
    for group, opts in groups:
        section = conf if group == "DEFAULT" else getattr(
            conf, group if isinstance(group, str) else group.name)
        for opt in opts:
            getattr(section, opt.dest)      # every default is a valid value of its type
    text = SAMPLE.read_text()
    for section in names:
        assert "\n[%s]\n" % section in "\n" + text
    assert "#filesystem_store_datadir = /var/lib/glance/images" in text
    assert "#spool_max_mib = 65536" in text


def test_a_copy_of_the_sample_with_a_file_store_passes(tmp_path):
    datadir = tmp_path / "images"
    datadir.mkdir()
    text = SAMPLE.read_text()
    text = text.replace("#enabled_backends = <None>", "enabled_backends = file:file", 1)
    text = text.replace("#default_backend = <None>", "default_backend = file", 1)
    text = text.replace("#filesystem_store_datadir = /var/lib/glance/images",
                        "filesystem_store_datadir = %s" % datadir, 1)
    text = text.replace("#spool_dir = <None>", "spool_dir = %s" % (tmp_path / "spool"), 1)
    assert text.count("\nenabled_backends = file:file") == 1
    conf = tmp_path / "gsfs.conf"
    conf.write_text(text)
    r, _ = check_config(conf)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert blocks(r.stdout)["file"][0] == "file (file): usable, the default store"
    assert "ignored by gsfs" not in r.stdout and "not read by gsfs" not in r.stdout
