"""The fault-injecting proxy (tests/servers/faultproxy.py) against real servers.

S3 traffic goes through the proxy to the test radosgw with boto3 (retries off, so every
call is exactly one request); one test drives the local HTTP server with ``requests``.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import json
import threading
import time
import uuid

import pytest
import requests
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.parsers import ResponseParserError

from tests.servers.ceph import purge_bucket
from tests.servers.faultproxy import FaultProxy, classify_http, classify_s3

MiB = 1 << 20
DATA = bytes(range(256)) * 512            # 128 KiB

#: the ops of one request each that _actions() performs, in this order
OPS = ("HEAD", "GET", "RANGED_GET", "LIST", "PUT", "CREATE_MULTIPART", "UPLOAD_PART",
       "COMPLETE_MULTIPART", "ABORT_MULTIPART", "DELETE", "COPY")

CONNECTION_ERRORS = (ConnectionClosedError, EndpointConnectionError)
SHORT_READ_ERRORS = (IncompleteReadError, ResponseStreamingError)
#: what a truncated answer does to boto3: a streamed body (GetObject) notices the short
#: read; an answer without a body is cut in its status line (a connection error); botocore
#: reads XML answers without enforcing Content-Length (enforce_content_length=False), so a
#: cut XML body fails to parse, which its S3 "200 with an error inside" handling turns
#: into a ClientError 500 (or a chunked body's early end surfaces as a streaming error)
TRUNCATED_ERRORS = SHORT_READ_ERRORS + CONNECTION_ERRORS + (ClientError, ResponseParserError)


def s3_via(ceph, url, **config):
    """A boto3 client for radosgw at ``url`` (the proxy), one attempt per call."""
    # botocore reads max_attempts as retries AFTER the first try (max_attempts=1 still
    # retries once): total_max_attempts=1 is what makes it a single attempt
    opts = dict(read_timeout=30, retries={"total_max_attempts": 1, "mode": "standard"})
    opts.update(config)
    return ceph.s3_client(endpoint_url=url, **opts)


@pytest.fixture(scope="module")
def bucket(ceph):
    """One bucket for the whole module (each test uses its own key prefix)."""
    s3 = ceph.s3_client()
    name = "gsfs-fp-%s" % uuid.uuid4().hex[:16]
    s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        purge_bucket(ceph.s3_client(), name)


@pytest.fixture
def s3(ceph, rgw_proxy):
    return s3_via(ceph, rgw_proxy.url)


def _prefix():
    return "t-%s/" % uuid.uuid4().hex[:10]


def _prepare(direct, bucket, p):
    """Objects and uploads the actions need, made without the proxy."""
    direct.put_object(Bucket=bucket, Key=p + "src", Body=DATA)
    direct.put_object(Bucket=bucket, Key=p + "victim", Body=b"x")
    st = {}
    st["part_upload"] = direct.create_multipart_upload(Bucket=bucket, Key=p + "mp-part")[
        "UploadId"]
    st["done_upload"] = direct.create_multipart_upload(Bucket=bucket, Key=p + "mp-done")[
        "UploadId"]
    st["done_etag"] = direct.upload_part(Bucket=bucket, Key=p + "mp-done", PartNumber=1,
                                         UploadId=st["done_upload"], Body=b"p" * 1000)["ETag"]
    st["abort_upload"] = direct.create_multipart_upload(Bucket=bucket, Key=p + "mp-abort")[
        "UploadId"]
    return st


def _actions(s3, bucket, p, st):
    """op -> a callable doing exactly one request of that op (and checking its answer)."""

    def get():
        assert s3.get_object(Bucket=bucket, Key=p + "src")["Body"].read() == DATA

    def ranged():
        body = s3.get_object(Bucket=bucket, Key=p + "src", Range="bytes=1000-1999")["Body"]
        assert body.read() == DATA[1000:2000]

    def listing():
        keys = [o["Key"] for o in
                s3.list_objects_v2(Bucket=bucket, Prefix=p).get("Contents", [])]
        assert p + "src" in keys

    def complete():
        s3.complete_multipart_upload(
            Bucket=bucket, Key=p + "mp-done", UploadId=st["done_upload"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": st["done_etag"]}]})

    return {
        "HEAD": lambda: s3.head_object(Bucket=bucket, Key=p + "src"),
        "GET": get,
        "RANGED_GET": ranged,
        "LIST": listing,
        "PUT": lambda: s3.put_object(Bucket=bucket, Key=p + "new", Body=b"new"),
        "CREATE_MULTIPART": lambda: s3.create_multipart_upload(Bucket=bucket,
                                                               Key=p + "mp-new"),
        "UPLOAD_PART": lambda: s3.upload_part(Bucket=bucket, Key=p + "mp-part", PartNumber=1,
                                              UploadId=st["part_upload"],
                                              Body=io.BytesIO(b"q" * 1000)),
        "COMPLETE_MULTIPART": complete,
        "ABORT_MULTIPART": lambda: s3.abort_multipart_upload(
            Bucket=bucket, Key=p + "mp-abort", UploadId=st["abort_upload"]),
        "DELETE": lambda: s3.delete_object(Bucket=bucket, Key=p + "victim"),
        "COPY": lambda: s3.copy_object(Bucket=bucket, Key=p + "copy",
                                       CopySource={"Bucket": bucket, "Key": p + "src"}),
    }


def _run(actions):
    """op -> None (it worked) or the exception it raised."""
    out = {}
    for op in OPS:
        try:
            actions[op]()
            out[op] = None
        except Exception as e:  # noqa: BLE001 - collected and checked by the caller
            out[op] = e
    return out


def _status(e):
    return e.response["ResponseMetadata"]["HTTPStatusCode"]


# ------------------------------------------------------------------- classification


def test_classify_s3():
    c = classify_s3
    assert c("HEAD", "/b/k", {}) == "HEAD"
    assert c("GET", "/b/k", {}) == "GET"
    assert c("GET", "/b/k", {"range": "bytes=0-1"}) == "RANGED_GET"
    assert c("GET", "/b?list-type=2&prefix=x", {}) == "LIST"
    assert c("GET", "/b", {}) == "LIST"
    assert c("GET", "/b/k?uploadId=u", {}) == "LIST_PARTS"
    assert c("PUT", "/b/k", {}) == "PUT"
    assert c("PUT", "/b/k", {"x-amz-copy-source": "/b/s"}) == "COPY"
    assert c("PUT", "/b/k?partNumber=1&uploadId=u", {}) == "UPLOAD_PART"
    assert c("PUT", "/b", {}) == "CREATE_BUCKET"
    assert c("POST", "/b/k?uploads", {}) == "CREATE_MULTIPART"
    assert c("POST", "/b/k?uploadId=u", {}) == "COMPLETE_MULTIPART"
    assert c("POST", "/b?delete", {}) == "DELETE_OBJECTS"
    assert c("DELETE", "/b/k?uploadId=u", {}) == "ABORT_MULTIPART"
    assert c("DELETE", "/b/k", {}) == "DELETE"
    assert c("DELETE", "/b", {}) == "DELETE_BUCKET"
    assert classify_http("GET", "/a/b.img", {}) == "GET"
    assert classify_http("GET", "/a/b.img", {"range": "bytes=0-"}) == "RANGED_GET"
    assert classify_http("GET", "/a/", {}) == "LIST"
    assert classify_http("HEAD", "/a/b.img", {}) == "HEAD"


def test_add_rule_validates():
    with FaultProxy("http://127.0.0.1:9") as proxy:
        with pytest.raises(ValueError):
            proxy.add_rule("FETCH", "500")
        with pytest.raises(ValueError):
            proxy.add_rule("GET", "explode")
        with pytest.raises(ValueError):
            proxy.add_rule("GET", "stall")           # no seconds
        with pytest.raises(ValueError):
            proxy.add_rule("GET", "500", count=0)


# ----------------------------------------------------------------- no rules: pass-through


@pytest.mark.ceph
def test_passthrough_every_op(ceph, rgw_proxy, s3, bucket):
    p = _prefix()
    s3.put_object(Bucket=bucket, Key=p + "a", Body=DATA)                  # bytes body
    s3.put_object(Bucket=bucket, Key=p + "b", Body=io.BytesIO(DATA))      # Expect: 100-continue
    head = s3.head_object(Bucket=bucket, Key=p + "a")
    assert head["ContentLength"] == len(DATA)
    assert s3.get_object(Bucket=bucket, Key=p + "b")["Body"].read() == DATA
    got = s3.get_object(Bucket=bucket, Key=p + "a", Range="bytes=100-199")
    assert got["Body"].read() == DATA[100:200]
    assert got["ContentRange"] == "bytes 100-199/%d" % len(DATA)

    # multipart: 2 parts of 5 MiB, streamed through the proxy both ways
    part1, part2 = b"\x01" * (5 * MiB), bytes(range(256)) * (5 * MiB // 256)
    up = s3.create_multipart_upload(Bucket=bucket, Key=p + "big")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key=p + "big", PartNumber=n, UploadId=up,
                            Body=io.BytesIO(part))["ETag"]
             for n, part in ((1, part1), (2, part2))]
    s3.complete_multipart_upload(
        Bucket=bucket, Key=p + "big", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e}
                                   for n, e in enumerate(etags, 1)]})
    body = s3.get_object(Bucket=bucket, Key=p + "big")["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(MiB), b""):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(part1 + part2).hexdigest()

    s3.copy_object(Bucket=bucket, Key=p + "c", CopySource={"Bucket": bucket, "Key": p + "a"})
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=p)["Contents"]]
    assert keys == [p + "a", p + "b", p + "big", p + "c"]
    up2 = s3.create_multipart_upload(Bucket=bucket, Key=p + "gone")["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key=p + "gone", UploadId=up2)
    s3.delete_object(Bucket=bucket, Key=p + "c")
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=bucket, Key=p + "c")
    assert _status(err.value) == 404

    ops = [r.op for r in rgw_proxy.requests]
    assert ops == ["PUT", "PUT", "HEAD", "GET", "RANGED_GET", "CREATE_MULTIPART",
                   "UPLOAD_PART", "UPLOAD_PART", "COMPLETE_MULTIPART", "GET", "COPY", "LIST",
                   "CREATE_MULTIPART", "ABORT_MULTIPART", "DELETE", "HEAD"]
    assert [r.status for r in rgw_proxy.requests][-1] == 404
    assert rgw_proxy.accepted <= 2           # keep-alive: the pool reuses its connection


@pytest.mark.ceph
def test_expect_continue_is_relayed(ceph, rgw_proxy, s3, bucket):
    # botocore waits 1 s for "100 Continue" before sending the body anyway: a relayed
    # 100 makes the upload quick
    key = _prefix() + "expect"
    s3.put_object(Bucket=bucket, Key=key, Body=io.BytesIO(b"warm-up"))
    t0 = time.monotonic()
    for _ in range(3):
        s3.put_object(Bucket=bucket, Key=key, Body=io.BytesIO(DATA))
    assert time.monotonic() - t0 < 2.0
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == DATA


@pytest.mark.ceph
def test_chunked_request_to_radosgw_gets_its_answer(ceph, rgw_proxy, s3, bucket):
    # radosgw 16 wants a Content-Length on PutObject: its 411 must come back intact
    # through the proxy, and the next request must work
    key = _prefix() + "chunked"
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key},
                                    ExpiresIn=300)
    assert url.startswith(rgw_proxy.url)
    pieces = [DATA[i:i + 10000] for i in range(0, len(DATA), 10000)]
    with requests.Session() as session:
        session.trust_env = False
        r = session.put(url, data=iter(pieces), timeout=30)
        assert r.status_code == 411 and b"MissingContentLength" in r.content
        s3.put_object(Bucket=bucket, Key=key, Body=DATA)
        r = session.get(s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300), timeout=30)
        assert r.status_code == 200 and r.content == DATA
    assert [(x.op, x.status) for x in rgw_proxy.requests] == [
        ("PUT", 411), ("PUT", 200), ("GET", 200)]


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """PUT/POST: answers the sha256 and framing of the body it got (chunked decoded).
    GET /chunked/N: N bytes of DATA as a chunked answer."""

    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, fmt, *args):
        pass

    def do_PUT(self):  # noqa: N802
        digest, n = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                digest.update(data)
                n += len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", 0))
            while left:
                data = self.rfile.read(min(left, 65536))
                digest.update(data)
                n += len(data)
                left -= len(data)
        body = json.dumps({"sha256": digest.hexdigest(), "length": n,
                           "te": self.headers.get("Transfer-Encoding"),
                           "expect": self.headers.get("Expect"),
                           "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT

    def do_GET(self):  # noqa: N802
        n = int(self.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, n, 10000):
            piece = (DATA * (n // len(DATA) + 1))[i:min(n, i + 10000)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class _EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = False

    def handle_error(self, request, client_address):
        pass                     # the truncate fault hangs up on a handler mid-answer


@pytest.fixture
def echo_proxy():
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    proxy = FaultProxy("http://127.0.0.1:%d" % server.server_address[1], kind="http").start()
    try:
        yield proxy
    finally:
        proxy.stop()            # closes the origin connections: the handlers see EOF
        server.shutdown()
        server.server_close()   # joins the handler threads
        thread.join(10)
        assert not thread.is_alive()


def test_chunked_bodies_and_expect_continue(echo_proxy):
    host = "127.0.0.1:%d" % echo_proxy.port
    big = DATA * 40                                             # 5 MiB
    with requests.Session() as session:
        session.trust_env = False
        pieces = [big[i:i + 100_000] for i in range(0, len(big), 100_000)]
        r = session.put(echo_proxy.url + "/up", data=iter(pieces), timeout=30)
        assert r.status_code == 200
        assert r.json() == {"sha256": hashlib.sha256(big).hexdigest(), "length": len(big),
                            "te": "chunked", "expect": None, "host": host}
        r = session.get(echo_proxy.url + "/chunked/300000", timeout=30)
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert r.content == (DATA * 3)[:300000]
        echo_proxy.add_rule("GET", "truncate")
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            session.get(echo_proxy.url + "/chunked/300000", timeout=30)
    assert echo_proxy.accepted == 1

    # Expect: 100-continue: the origin's 100 comes back before any body byte is sent
    conn = http.client.HTTPConnection("127.0.0.1", echo_proxy.port, timeout=10)
    try:
        conn.putrequest("POST", "/expect")
        conn.putheader("Content-Length", str(len(DATA)))
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        conn.sock.settimeout(5)
        interim = conn.sock.recv(100)
        assert interim.startswith(b"HTTP/1.") and b" 100 " in interim.split(b"\r\n")[0]
        conn.sock.settimeout(10)
        conn.send(DATA)
        r = conn.getresponse()
        assert r.status == 200
        assert json.loads(r.read()) == {"sha256": hashlib.sha256(DATA).hexdigest(),
                                        "length": len(DATA), "te": None,
                                        "expect": "100-continue", "host": host}
        conn.request("PUT", "/again", body=b"abc")               # same connection
        assert json.loads(conn.getresponse().read())["length"] == 3
    finally:
        conn.close()
    assert echo_proxy.accepted == 2


# ---------------------------------------------------------------- faults, op by op


@pytest.mark.ceph
@pytest.mark.parametrize("fault", ["500", "503", "reset", "truncate"])
def test_fault_fires_on_its_op_only(ceph, rgw_proxy, s3, bucket, fault):
    direct = ceph.s3_client()
    for op in OPS:
        p = _prefix()
        st = _prepare(direct, bucket, p)
        rgw_proxy.clear()
        rgw_proxy.clear_requests()
        rule = rgw_proxy.add_rule(op, fault, count=None)
        outcome = _run(_actions(s3, bucket, p, st))
        assert rule.hits == 1, (op, rgw_proxy.requests)
        logged = [r for r in rgw_proxy.requests if r.op == op]
        assert len(logged) == 1, (op, rgw_proxy.requests)
        for other in OPS:
            if other != op:
                assert outcome[other] is None, (fault, op, other, outcome[other])
        e = outcome[op]
        if fault in ("500", "503"):
            assert isinstance(e, ClientError), (op, e)
            assert _status(e) == int(fault)
            want = {"500": "InternalError", "503": "ServiceUnavailable"}[fault]
            assert e.response["Error"]["Code"] in (want, fault)    # HEAD has no body
            assert logged[0].status == int(fault)
        elif fault == "reset":
            assert isinstance(e, CONNECTION_ERRORS), (op, repr(e))
            assert logged[0].status == "reset"
        else:
            want = SHORT_READ_ERRORS if op in ("GET", "RANGED_GET") else TRUNCATED_ERRORS
            assert isinstance(e, want), (op, repr(e))
            if isinstance(e, ClientError):
                assert _status(e) == 500
            assert logged[0].status in (200, 204, 206)     # forwarded, then cut


@pytest.mark.ceph
def test_truncate_cuts_a_get_at_half(ceph, rgw_proxy, s3, bucket):
    key = _prefix() + "half"
    s3.put_object(Bucket=bucket, Key=key, Body=DATA)
    rgw_proxy.add_rule("GET", "truncate")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    got = bytearray()
    with pytest.raises(SHORT_READ_ERRORS):
        for chunk in iter(lambda: body.read(4096), b""):
            got += chunk
        body.close()
    assert bytes(got) == DATA[: len(DATA) // 2]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == DATA   # count=1


@pytest.mark.ceph
def test_stall_delays_by_seconds(ceph, rgw_proxy, s3, bucket):
    key = _prefix() + "slow"
    s3.put_object(Bucket=bucket, Key=key, Body=DATA)
    rule = rgw_proxy.add_rule("GET", "stall", seconds=1.5)
    t0 = time.monotonic()
    s3.head_object(Bucket=bucket, Key=key)                  # another op: not delayed
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == DATA
    assert 1.4 <= time.monotonic() - t0 < 5
    assert rule.hits == 1
    t0 = time.monotonic()
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == DATA
    assert time.monotonic() - t0 < 1.0


@pytest.mark.ceph
def test_stall_forever_times_out_then_clear_releases(ceph, rgw_proxy, bucket):
    s3 = s3_via(ceph, rgw_proxy.url, read_timeout=2, connect_timeout=2)
    key = _prefix() + "held"
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    rule = rgw_proxy.add_rule("HEAD", "stall_forever")
    t0 = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        s3.head_object(Bucket=bucket, Key=key)
    assert 1.8 <= time.monotonic() - t0 < 5
    assert rule.hits == 1
    rgw_proxy.clear()
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == 1
    assert [r.status for r in rgw_proxy.requests if r.op == "HEAD"] == ["stall_forever", 200]


@pytest.mark.ceph
def test_stop_releases_held_requests_and_joins_threads(ceph, bucket):
    proxy = FaultProxy(ceph.rgw_endpoint).start()
    try:
        s3 = s3_via(ceph, proxy.url, read_timeout=30)
        proxy.add_rule("ANY", "stall_forever", count=None)
        errors = []

        def call():
            try:
                s3.list_objects_v2(Bucket=bucket)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        callers = [threading.Thread(target=call) for _ in range(3)]
        for t in callers:
            t.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proxy.rules[0].hits < 3:
            time.sleep(0.05)
        assert proxy.rules[0].hits == 3
    finally:
        t0 = time.monotonic()
        proxy.stop()
        assert time.monotonic() - t0 < 3
    for t in callers:
        t.join(10)
    assert len(errors) == 3 and all(isinstance(e, CONNECTION_ERRORS) for e in errors), errors
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy-%d-"
                                                                      % proxy.port)]


# ------------------------------------------------------------- count, order, match


@pytest.mark.ceph
def test_count_order_and_clear(ceph, rgw_proxy, s3, bucket):
    key = _prefix() + "k"
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    first = rgw_proxy.add_rule("HEAD", "500", count=1)
    second = rgw_proxy.add_rule("HEAD", "503", count=2)
    statuses = []
    for _ in range(4):
        try:
            s3.head_object(Bucket=bucket, Key=key)
            statuses.append(200)
        except ClientError as e:
            statuses.append(_status(e))
    assert statuses == [500, 503, 503, 200]
    assert (first.hits, second.hits) == (1, 2)

    always = rgw_proxy.add_rule("GET", "503", count=None)
    for _ in range(3):
        with pytest.raises(ClientError):
            s3.get_object(Bucket=bucket, Key=key)
    assert always.hits == 3
    rgw_proxy.clear()
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"x"
    assert rgw_proxy.rules == []


@pytest.mark.ceph
def test_match_restricts_to_one_key(ceph, rgw_proxy, s3, bucket):
    p = _prefix()
    for name in ("image-a", "image-b", ".gsfs-meta/image-a"):
        s3.put_object(Bucket=bucket, Key=p + name, Body=b"x")
    rule = rgw_proxy.add_rule("ANY", "500", count=None, match=p + "image-a",
                              match_not=".gsfs-")
    s3.head_object(Bucket=bucket, Key=p + "image-b")
    s3.head_object(Bucket=bucket, Key=p + ".gsfs-meta/image-a")
    s3.get_object(Bucket=bucket, Key=p + ".gsfs-meta/image-a")["Body"].read()
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=p + "image-a")
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key=p + "image-a")
    assert rule.hits == 2


# ------------------------------------------------------------------ plain HTTP origin


def test_http_origin_with_requests(http_server, http_proxy):
    (http_server.root / "disk.img").write_bytes(DATA)
    (http_server.root / "dir").mkdir()
    with requests.Session() as session:
        session.trust_env = False
        url = http_proxy.url + "/disk.img"
        r = session.get(url, timeout=10)
        assert r.status_code == 200 and r.content == DATA
        r = session.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
        assert r.status_code == 206 and r.content == DATA[10:20]
        assert session.head(url, timeout=10).headers["Content-Length"] == str(len(DATA))
        r = session.get(http_proxy.url + "/auth/disk.img", auth=http_server.auth, timeout=10)
        assert r.status_code == 200 and r.content == DATA         # Authorization forwarded
        assert session.get(http_proxy.url + "/dir/", timeout=10).status_code == 200
        assert http_proxy.accepted == 1                              # one kept-alive connection
        host = "127.0.0.1:%d" % http_proxy.port
        assert {h.get("Host") for _, _, h in http_server.requests} == {host}

        http_proxy.add_rule("GET", "503")
        r = session.get(url, timeout=10)
        assert r.status_code == 503 and b"<Code>ServiceUnavailable</Code>" in r.content
        http_proxy.add_rule("RANGED_GET", "reset")
        with pytest.raises(requests.ConnectionError):
            session.get(url, headers={"Range": "bytes=0-9"}, timeout=10)
        http_proxy.add_rule("GET", "truncate")
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            session.get(url, timeout=10)
        http_proxy.add_rule("HEAD", "stall", seconds=0.5)
        t0 = time.monotonic()
        assert session.head(url, timeout=10).status_code == 200
        assert time.monotonic() - t0 >= 0.45
        r = session.get(url, timeout=10)                              # every rule used up
        assert r.status_code == 200 and r.content == DATA
    assert [x.op for x in http_proxy.requests] == [
        "GET", "RANGED_GET", "HEAD", "GET", "LIST", "GET", "RANGED_GET", "GET", "HEAD", "GET"]
