"""The Keystone v3 stand-in of tests/servers/keystone_standin.py.

Without Ceph: against a fake Swift v1 auth server (the protocol details, the errors).
With the real cluster: keystoneauth1 v3 Password, swiftclient auth_version 3 (through
keystoneclient) and the real glance_store 5.7 swift store (in a subprocess: glance_store
keeps its configuration in the process-wide cfg.CONF) all authenticate through it and
reach radosgw.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.servers import keystone_standin as ks_module
from tests.servers.keystone_standin import KeystoneStandin

keystone_standin = ks_module.keystone_standin  # the fixture, for this module's tests

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ a fake v1 auth server


class _FakeV1(http.server.BaseHTTPRequestHandler):
    users = {"acct:alice": "sekrit"}

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.headers.get("X-Auth-User"), self.headers.get("X-Auth-Key")))
        user, key = self.headers.get("X-Auth-User"), self.headers.get("X-Auth-Key")
        if user == "acct:boom":
            status = 500
        elif self.users.get(user) == key:
            status = 204
        else:
            status = 403 if user == "acct:forbidden" else 401
        self.send_response(status)
        if status == 204:
            self.send_header("X-Storage-Url", "http://swift.example/swift/v1")
            self.send_header("X-Auth-Token", "AUTH_tk%s" % uuid.uuid4().hex)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def fake_v1():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeV1)
    server.seen = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server, "http://127.0.0.1:%d/auth/1.0" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def _call(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, resp.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, e.headers, json.loads(raw) if raw else None


def _password_body(user="alice", password="sekrit", project="acct"):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "password": password, "domain": {"id": "default"}}}}}}
    if project is not None:
        body["auth"]["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    return body


def test_discovery_documents(fake_v1):
    _, auth = fake_v1
    with KeystoneStandin(auth) as ks:
        status, _, doc = _call("GET", ks.url)
        assert status == 200
        assert doc["version"]["id"] == "v3.14" and doc["version"]["status"] == "stable"
        assert doc["version"]["links"] == [{"rel": "self", "href": ks.url + "/"}]
        status, _, root = _call("GET", ks.base_url + "/")
        assert status == 300 and root == {"versions": {"values": [doc["version"]]}}
        assert ks.requests == {"/v3": 1, "/": 1}


def test_password_auth_issues_radosgw_token_and_catalog(fake_v1):
    server, auth = fake_v1
    with KeystoneStandin(auth) as ks:
        status, headers, doc = _call("POST", ks.url + "/auth/tokens", _password_body())
        assert status == 201
        token = headers["X-Subject-Token"]
        assert token.startswith("AUTH_tk") and ks.tokens == [token]
        assert server.seen == [("acct:alice", "sekrit")]
        t = doc["token"]
        assert t["methods"] == ["password"] and t["expires_at"].endswith("Z")
        assert t["user"]["name"] == "alice" and t["project"]["name"] == "acct"
        assert t["user"]["domain"] == {"id": "default", "name": "Default"}
        assert t["roles"] == [{"id": "r1", "name": "member"}]
        (svc,) = t["catalog"]
        assert svc["type"] == "object-store" and svc["name"] == "swift"
        assert sorted(e["interface"] for e in svc["endpoints"]) == ["admin", "internal", "public"]
        assert {e["url"] for e in svc["endpoints"]} == {"http://swift.example/swift/v1"}
        assert {e["region"] for e in svc["endpoints"]} == {"RegionOne"}
        # validation
        status, headers, again = _call("GET", ks.url + "/auth/tokens",
                                       headers={"X-Subject-Token": token, "X-Auth-Token": token})
        assert status == 200 and again == doc and headers["X-Subject-Token"] == token
        status, _, err = _call("GET", ks.url + "/auth/tokens", headers={"X-Subject-Token": "nope"})
        assert status == 404 and err["error"]["code"] == 404
        # re-authentication with the token method gives the same token back
        status, headers, _ = _call("POST", ks.url + "/auth/tokens", {"auth": {"identity": {
            "methods": ["token"], "token": {"id": token}}}})
        assert status == 201 and headers["X-Subject-Token"] == token
        assert ks.requests == {"/v3/auth/tokens": 4}


def test_unscoped_account_user_name_and_storage_url_override(fake_v1):
    server, auth = fake_v1
    with KeystoneStandin(auth, storage_url="http://127.0.0.1:1/proxy/v1") as ks:
        status, _, doc = _call("POST", ks.url + "/auth/tokens",
                               _password_body(user="acct:alice", project=None))
        assert status == 201 and server.seen == [("acct:alice", "sekrit")]
        urls = {e["url"] for e in doc["token"]["catalog"][0]["endpoints"]}
        assert urls == {"http://127.0.0.1:1/proxy/v1"}


@pytest.mark.parametrize("user, status", [("bob", 401), ("forbidden", 401), ("boom", 503)])
def test_auth_errors(fake_v1, user, status):
    _, auth = fake_v1
    with KeystoneStandin(auth) as ks:
        got, headers, doc = _call("POST", ks.url + "/auth/tokens", _password_body(user=user))
        assert got == status and "X-Subject-Token" not in headers
        assert doc["error"]["code"] == status and doc["error"]["message"]
        assert ks.tokens == []


def test_bad_requests_unknown_paths_and_unreachable_radosgw(fake_v1):
    _, auth = fake_v1
    with KeystoneStandin(auth) as ks:
        assert _call("POST", ks.url + "/auth/tokens", {"x": 1})[0] == 400
        assert _call("POST", ks.url + "/auth/tokens", _password_body(project=None))[0] == 401
        status, _, doc = _call("GET", ks.url + "/projects")
        assert status == 404 and doc["error"]["title"] == "Not Found"
        assert ks.requests["/v3/projects"] == 1
    with KeystoneStandin("http://127.0.0.1:1/auth/1.0") as ks:
        status, _, doc = _call("POST", ks.url + "/auth/tokens", _password_body())
        assert status == 503 and "radosgw auth" in doc["error"]["message"]


def test_stop_closes_keepalive_connections(fake_v1):
    import http.client

    _, auth = fake_v1
    ks = KeystoneStandin(auth).start()
    conn = http.client.HTTPConnection("127.0.0.1", ks.port, timeout=5)
    conn.request("GET", "/v3")
    assert conn.getresponse().read()
    ks.stop()
    ks.stop()  # idempotent
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/v3")
        conn.getresponse()
    conn.close()


# ----------------------------------------------------------------- against real radosgw


@pytest.mark.ceph
def test_keystoneauth1_session_reaches_radosgw(ceph, keystone_standin):
    import swiftclient
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    account, user = ceph.swift_user.split(":")
    sess = session.Session(auth=v3.Password(
        auth_url=keystone_standin.url, username=user, password=ceph.swift_key,
        project_name=account, user_domain_id="default", project_domain_id="default"))
    storage_url, _ = ceph.swift_connection().get_auth()
    for interface in ("public", "internal", "admin"):
        assert sess.get_endpoint(service_type="object-store", interface=interface) == storage_url
    assert sess.get_endpoint(service_type="object-store", interface="public",
                             region_name="RegionOne") == storage_url
    assert sess.get_token() in keystone_standin.tokens
    assert keystone_standin.requests["/v3/auth/tokens"] == 1

    container = "ks-%s" % uuid.uuid4().hex[:12]
    conn = swiftclient.Connection(session=sess)
    conn.put_container(container)
    try:
        conn.put_object(container, "hello", b"hello world")
        assert conn.get_object(container, "hello")[1] == b"hello world"
        v1_names = [o["name"] for o in ceph.swift_connection().get_container(container)[1]]
        assert v1_names == ["hello"]
    finally:
        conn.delete_object(container, "hello")
        conn.delete_container(container)


@pytest.mark.ceph
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keystoneclient without a session
def test_swiftclient_auth_version_3(ceph, keystone_standin):
    import swiftclient

    account, user = ceph.swift_user.split(":")
    conn = swiftclient.Connection(
        keystone_standin.url, user, ceph.swift_key, tenant_name=account, auth_version="3",
        os_options={"endpoint_type": "publicURL", "service_type": "object-store",
                    "user_domain_id": "default", "project_domain_id": "default"})
    assert "x-account-container-count" in conn.head_account()
    assert conn.url == ceph.swift_connection().get_auth()[0]
    bad = swiftclient.Connection(keystone_standin.url, user, "wrong", tenant_name=account,
                                 auth_version="3", retries=0,
                                 os_options={"user_domain_id": "default",
                                             "project_domain_id": "default"})
    with pytest.raises(swiftclient.ClientException, match="Unauthorized"):
        bad.head_account()


GLANCE_SCRIPT = r"""
import hashlib, io, json, os, sys, uuid
from oslo_config import cfg
import glance_store

api_conf = sys.argv[1]
CONF = cfg.CONF
CONF.register_opt(cfg.DictOpt("enabled_backends"))
CONF(["--config-file", api_conf], project="glance")
glance_store.register_store_opts(CONF)
glance_store.create_multi_stores(CONF)
glance_store.verify_store()
out = []
for size in (3072000, 12000):
    data = hashlib.shake_256(str(size).encode()).digest(size)
    image_id = str(uuid.uuid4())
    loc, got_size, md5, _, meta = glance_store.add_with_multihash(
        CONF, image_id, io.BytesIO(data), 0, "sw", "sha256")
    print(json.dumps({"event": "added", "id": image_id, "size": size}), flush=True)
    sys.stdin.readline()  # the test looks at radosgw meanwhile
    it, read_size = glance_store.get(loc, "sw")
    out.append({"id": image_id, "loc": loc, "size": got_size, "meta": meta,
                "md5_ok": md5 == hashlib.md5(data).hexdigest(),
                "read_ok": b"".join(it) == data, "read_size": read_size,
                "get_size": glance_store.get_size_from_uri_and_backend(loc, "sw")})
    glance_store.delete(loc, "sw")
print(json.dumps({"event": "done", "results": out}), flush=True)
"""


@pytest.mark.ceph
def test_glance_store_swift_through_the_standin(ceph, keystone_standin, tmp_path):
    import swiftclient

    container = "ks-glance-%s" % uuid.uuid4().hex[:12]  # created by glance_store on put
    swift_conf = tmp_path / "glance-swift.conf"
    swift_conf.write_text(textwrap.dedent("""\
        [ref1]
        user = %s
        key = %s
        auth_address = %s
        auth_version = 3
        """) % (ceph.swift_user, ceph.swift_key, keystone_standin.url))
    api_conf = tmp_path / "glance-api.conf"
    api_conf.write_text(textwrap.dedent("""\
        [DEFAULT]
        enabled_backends = sw:swift

        [glance_store]
        default_backend = sw

        [sw]
        swift_store_config_file = %s
        default_swift_reference = ref1
        swift_store_container = %s
        swift_store_create_container_on_put = true
        swift_store_large_object_size = 1
        swift_store_large_object_chunk_size = 1
        """) % (swift_conf, container))
    v1 = ceph.swift_connection()
    listings, results = {}, None
    with subprocess.Popen([sys.executable, "-c", GLANCE_SCRIPT, str(api_conf)], cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stdout:
                msg = json.loads(line)
                if msg["event"] == "added":
                    listings[msg["size"]] = sorted(
                        (o["name"], o["bytes"]) for o in v1.get_container(container)[1]
                        if o["name"].startswith(msg["id"]))
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                else:
                    results = msg["results"]
            assert proc.wait(timeout=120) == 0
            leftovers = [o["name"] for o in v1.get_container(container)[1]]
        finally:
            if proc.poll() is None:
                proc.kill()
            try:
                for o in v1.get_container(container)[1]:
                    v1.delete_object(container, o["name"])
                v1.delete_container(container)
            except swiftclient.ClientException as e:  # never created: the add failed
                if e.http_status != 404:
                    raise
    big, small = results
    for r in results:
        assert r["loc"] == "swift+config://ref1/%s/%s" % (container, r["id"])
        assert r["meta"] == {"store": "sw"}
        assert r["md5_ok"] and r["read_ok"]
        assert r["size"] == r["read_size"] == r["get_size"]
    assert big["size"] == 3072000 and small["size"] == 12000
    # unknown size (0): a DLO, 1,024,000-byte segments ID-00001... plus a 0-byte manifest
    assert listings[3072000] == [(big["id"], 0)] + [
        ("%s-%05d" % (big["id"], n), 1024000) for n in (1, 2, 3)]
    assert listings[12000] == [(small["id"], 0), (small["id"] + "-00001", 12000)]
    assert leftovers == []  # glance_store deleted manifests and segments
    assert keystone_standin.requests["/v3/auth/tokens"] >= 2
