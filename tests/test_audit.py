"""``gsfs audit`` (gsfs/audit.py) on a real mount and a real Glance 33 API on the same file
store (tests/servers/glance.py, tests/test_catalog.py's helpers).

The mount runs with ``cache_ttl=0`` so it sees at once what is changed behind its back in
the store's data directory (tmp_path / "file-store").
"""

import fcntl
import functools
import hashlib
import http.server
import json
import os
import struct
import subprocess
import termios
import threading
import uuid

import pytest

from gsfs import audit as audit_mod
from tests.servers.mounts import GSFS
from tests.test_catalog import catalog_conf, glance_image
from tests.test_fuse_file_http import run

MiB = 1024 * 1024


def audit(mountpoint, *args, **kwargs):
    return subprocess.run([GSFS, "audit", str(mountpoint), *args], capture_output=True,
                          text=True, timeout=300, **kwargs)


def audit_json(mountpoint, *args):
    result = audit(mountpoint, "--json", *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def ids(entries):
    return sorted(e["id"] for e in entries)


def under_pty(cmd):
    """Run ``cmd`` with stderr on a pseudo-terminal: (exit status, what the terminal got)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=slave)
    finally:
        os.close(slave)
    got = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:         # EIO: the last holder of the slave closed it
                break
            if not chunk:
                break
            got += chunk
    finally:
        os.close(master)
    proc.stdout.read()
    return proc.wait(timeout=300), got.decode("utf-8", "replace")


@pytest.mark.fuse
def test_audit_reports_orphan_missing_and_corrupt(glance_server, gsfs_mount, stores_conf,
                                                  tmp_path):
    text = stores_conf("file", default="file")
    g = glance_server(text)
    healthy, _ = glance_image(g, os.urandom(2 * MiB + 3), "healthy", "file")
    gone, _ = glance_image(g, os.urandom(MiB + 11), "gone", "file")
    corrupt, corrupt_rec = glance_image(g, os.urandom(3 * MiB + 5), "corrupt", "file")
    m = gsfs_mount(catalog_conf(text, g.url), options=("cache_ttl=0",))
    data_dir = tmp_path / "file-store"

    # (a) an orphan, written through the mount
    src = tmp_path / "orphan.raw"
    src.write_bytes(os.urandom(100_000))
    orphan = str(uuid.uuid4())
    run("cp", src, m.path("file", orphan))
    # (b) a catalog image whose data was removed behind Glance's back
    os.remove(data_dir / gone)
    # (c) a corrupted copy: some bytes in the middle flipped, the size kept
    with open(data_dir / corrupt, "r+b") as f:
        f.seek(MiB + 17)
        old = f.read(4096)
        f.seek(MiB + 17)
        f.write(bytes(b ^ 0xFF for b in old))
    assert os.path.getsize(data_dir / corrupt) == 3 * MiB + 5

    # sizes only: the orphan and the missing image, not the corrupted copy
    code, doc = audit_json(m.mountpoint)
    assert code == 1, doc
    assert doc["mountpoint"] == str(m.mountpoint) and doc["ok"] is False
    assert list(doc["stores"]) == ["file"]
    store = doc["stores"]["file"]
    assert ids(store["orphans"]) == [orphan]
    assert store["orphans"][0]["size"] == 100_000
    assert 0 <= store["orphans"][0]["age_s"] < 600
    assert store["missing"] == [{"id": gone, "name": "gone"}]
    assert store["mismatched"] == [] and store["unreadable"] == []
    assert store["checked"] == 2            # healthy and corrupt: present, same size

    # --verify: the corrupted copy too (read through the mount), not the healthy one
    code, doc = audit_json(m.mountpoint, "--verify")
    assert code == 1, doc
    store = doc["stores"]["file"]
    assert ids(store["orphans"]) == [orphan]
    assert ids(store["missing"]) == [gone]
    assert ids(store["mismatched"]) == [corrupt]
    bad = store["mismatched"][0]
    assert bad["what"] in ("checksum", "os_hash_value"), bad
    field = bad["what"]
    assert bad["catalog"] == corrupt_rec[field] and bad["found"] != corrupt_rec[field]
    assert bad["name"] == "corrupt"
    assert store["unreadable"] == [] and store["checked"] == 2
    assert healthy not in json.dumps(doc)

    # text mode names each of the three, and not the healthy one
    result = audit(m.mountpoint, "--verify")
    assert result.returncode == 1, result.stderr
    for image_id in (orphan, gone, corrupt):
        assert image_id in result.stdout, result.stdout
    assert healthy not in result.stdout
    assert "3 problems" in result.stdout.splitlines()[-1], result.stdout
    assert result.stderr == ""              # not a terminal: no progress line

    # the progress line, on a terminal
    code, terminal = under_pty([GSFS, "audit", str(m.mountpoint), "--verify"])
    assert code == 1
    assert "\rverifying " in terminal and " MiB/s" in terminal, repr(terminal)
    assert "file/%s" % healthy in terminal or "file/%s" % corrupt in terminal, repr(terminal)

    # repaired: the orphan removed through the mount, the broken images deleted in Glance
    run("rm", m.path("file", orphan))
    s = g.session()
    for image_id in (gone, corrupt):
        r = s.delete(g.url + "/v2/images/%s" % image_id)
        assert r.status_code == 204, r.text
    code, doc = audit_json(m.mountpoint, "--verify")
    assert code == 0, doc
    assert doc["ok"] is True and doc["stores"]["file"]["checked"] == 1
    result = audit(m.mountpoint)
    assert result.returncode == 0 and result.stdout.splitlines()[-1].startswith("summary: ok")

    # the catalog gone: the audit cannot be done
    g.stop()
    result = audit(m.mountpoint)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "unreachable" in result.stderr and "[gsfs_catalog]" in result.stderr


@pytest.mark.fuse
def test_audit_cannot_be_done_without_a_mount_or_a_catalog(glance_server, gsfs_mount,
                                                           stores_conf, tmp_path):
    # not a gsfs mount
    result = audit(tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "is not a gsfs mount" in result.stderr and str(tmp_path) in result.stderr

    # a mount whose config has no [gsfs_catalog]
    text = stores_conf("file", default="file")
    m = gsfs_mount(text)
    result = audit(m.mountpoint, "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "[gsfs_catalog]" in result.stderr and "--config-file" in result.stderr

    # --config-file gives it one
    g = glance_server(text)
    conf = tmp_path / "with-catalog.conf"
    conf.write_text(catalog_conf(text, g.url))
    code, doc = audit_json(m.mountpoint, "--config-file", str(conf))
    assert code == 0 and doc["ok"] is True, doc
    assert doc["stores"]["file"]["checked"] == 0

    # an endpoint that is not Glance's Image API: a static web server answering 200
    web = tmp_path / "web"
    (web / "v2").mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(web)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conf.write_text(catalog_conf(text, "http://127.0.0.1:%d" % server.server_port))
        answers = {
            "<html><body>It works!</body></html>": "[gsfs_catalog]",    # not JSON
            json.dumps({"images": [{"id": str(uuid.uuid4()), "stores": 5}]}):
                "auditing store file: AttributeError",
        }
        for body, what in answers.items():
            (web / "v2" / "images").write_text(body)
            for args in ((), ("--json",)):
                result = audit(m.mountpoint, "--config-file", str(conf), *args)
                assert result.returncode == 2 and result.stdout == "", result
                assert len(result.stderr.splitlines()) == 1, result.stderr
                assert result.stderr.startswith("gsfs: audit: ") and what in result.stderr
                assert "Traceback" not in result.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_records_without_id_size_or_name(tmp_path):
    """Classification and rendering from plain records, on a real directory (no mount,
    no catalog: every file is one the records list, so Glance is never asked again)."""
    store = tmp_path / "file"
    store.mkdir()
    data = {name: os.urandom(1000 + i) for i, name in enumerate(("nosize", "short", "bad"))}
    for name, blob in data.items():
        (store / name).write_bytes(blob)
    records = [
        {"name": "lost", "stores": "file"},                     # no id
        {"id": None, "name": None, "stores": "file"},
        {"id": "nosize", "name": None, "size": None, "status": "queued", "stores": "file"},
        {"id": "short", "name": None, "size": 5, "stores": "file"},
        {"id": "bad", "name": None, "size": len(data["bad"]), "status": "active",
         "checksum": hashlib.md5(b"other").hexdigest(), "stores": "file"},
    ]
    a = audit_mod.Audit(str(tmp_path), None, records)
    assert sorted(a.records) == ["bad", "nosize", "short"]
    assert [(s["store"], s["id"], s["name"]) for s in a.skipped] == [(None, None, "lost"),
                                                                     (None, None, None)]
    a.audit_store("file")
    a.verify(audit_mod.Progress(None))
    r = a.stores["file"]
    assert r["checked"] == 3 and r["orphans"] == [] and r["missing"] == []
    assert [(x["id"], x["what"], x["name"]) for x in r["mismatched"]] == [
        ("short", "size", None), ("bad", "checksum", None)]
    assert r["unreadable"] == []
    assert [s["id"] for s in a.skipped[2:]] == ["nosize"]   # status queued: not verified
    r["unreadable"].append({"id": "gone-bad", "name": None, "error": "stat: Input/output error"})
    text = audit_mod.render_text(a, True, "http://glance")
    assert "  mismatched  short  (no name): size: catalog 5 bytes, file 1001 bytes" in text
    assert "  unreadable  gone-bad  (no name): stat: Input/output error" in text
    assert '  catalog record "lost": no id in the record: not compared' in text
    assert "  catalog record (no name): no id in the record: not compared" in text
    assert text.splitlines()[-1].startswith("summary: 3 problems"), text
    assert json.loads(json.dumps(a.document()))["ok"] is False
