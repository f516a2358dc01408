"""The daemon's Prometheus metrics (gsfs/fs/metrics.py, docs/METRICS.md), scraped
over HTTP from a real mount while an upload runs, after it commits and after
a refused request; and the same registry written to ``-o metrics_file``."""

import json
import os
import re
import subprocess
import urllib.request

import pytest

from tests.test_fuse_file_http import HOLDING_WRITER, PYTHON, run, wait_for

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def value(text, name, **labels):
    """The sample ``name{labels}`` of an exposition text (0.0 if absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return 0.0


def test_metrics_move_with_an_upload_and_a_failure(gsfs_mount, stores_conf, tmp_path):
    metrics_file = tmp_path / "gsfs.prom"
    m = gsfs_mount(stores_conf("file"), options=("metrics_port=0",
                                                  "metrics_file=%s" % metrics_file))
    url = json.loads(os.getxattr(m.mountpoint, "user.gsfs.status"))["metrics_url"]
    assert re.match(r"^http://127\.0\.0\.1:\d+/metrics$", url), url
    before = scrape(url)
    assert value(before, "gsfs_uploads_in_flight", store="file") == 0
    assert value(before, "process_resident_memory_bytes") > 0        # the process collector
    assert value(before, "gsfs_memory_budget_bytes", kind="budget") == 96 * MiB
    assert value(before, "gsfs_memory_budget_bytes", kind="used") == 0

    # an upload under way: in flight, its writes counted and timed, its bytes in
    path = m.path("file", "slow")
    writer = subprocess.Popen([PYTHON, "-c", HOLDING_WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
        during = scrape(url)
        assert value(during, "gsfs_uploads_in_flight", store="file") == 1
        assert value(during, "gsfs_requests_total", store="file", op="write") >= 1
        assert value(during, "gsfs_request_seconds_count", store="file", op="write") >= 1
        assert value(during, "gsfs_store_bytes_total", store="file", direction="in") == MiB
        assert value(during, "gsfs_uploads_total", store="file", outcome="committed") == 0
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "OK"
    finally:
        writer.kill()
        writer.wait()
    after = scrape(url)
    assert value(after, "gsfs_uploads_in_flight", store="file") == 0
    # the MiB written waited in the upload queue, drawn from the budget; with
    # direct I/O the kernel sends a 1 MiB write from an unaligned buffer (a
    # Python bytes object) as two requests: up to the end of the 256th page
    # the buffer touches, then the rest
    assert value(after, "gsfs_memory_budget_bytes", kind="peak") >= MiB - 4096
    assert value(after, "gsfs_memory_budget_bytes", kind="used") == 0
    assert value(after, "gsfs_uploads_total", store="file", outcome="committed") == 1
    assert value(after, "gsfs_upload_seconds_count", store="file") == 1
    assert value(after, "gsfs_commit_seconds_count", store="file") == 1
    assert value(after, "gsfs_store_bytes_total", store="file", direction="in") == MiB + 10

    # a read: bytes out
    assert run("cat", path).stdout.encode() == b"a" * MiB + b"b" * 10
    assert value(scrape(url), "gsfs_store_bytes_total", store="file",
                 direction="out") == MiB + 10

    # a refused request: counted by errno, and as a failure of the store
    result = run("cp", "/etc/hostname", path, check=False)
    assert result.returncode != 0 and "File exists" in result.stderr
    refused = scrape(url)
    errors = sum(value(refused, "gsfs_request_errors_total", store="file", op=op,
                       errno="EEXIST") for op in ("open", "create", "lookup", "setattr"))
    assert errors >= 1, [line for line in refused.splitlines() if "errors_total{" in line]
    assert sum(value(refused, "gsfs_failures_total", store="file", op=op)
               for op in ("open", "create", "setattr")) >= 1
    # a name that does not exist is an answer, not an error
    assert not os.path.exists(m.path("file", "nothere"))
    assert value(scrape(url), "gsfs_request_errors_total", store="file", op="lookup",
                 errno="ENOENT") == 0

    # the file option writes the same registry
    assert wait_for(lambda: metrics_file.exists() and value(
        metrics_file.read_text(), "gsfs_uploads_total", store="file", outcome="committed") == 1,
        timeout=15)


def test_a_busy_metrics_port_does_not_stop_the_mount(gsfs_mount, stores_conf):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        m = gsfs_mount(stores_conf("file"), options=("metrics_port=%d" % port,))
        run("cp", "/etc/hostname", m.path("file", "h"))
        assert json.loads(os.getxattr(m.mountpoint, "user.gsfs.status"))["metrics_url"] is None
        assert wait_for(lambda: "Cannot serve metrics on 127.0.0.1:%d" % port in m.log_text())
