"""A tiny Keystone v3 stand-in in front of radosgw's Swift v1 auth (standard library only).

What it is for
    Letting Keystone-v3-only Swift clients talk to the test cluster's radosgw: the real
    glance_store (the interop oracle) and gsfs's own swift driver (keystoneauth1 v3
    ``Password`` + ``session.get_endpoint(service_type="object-store", interface=...)``).

Why it exists
    radosgw speaks only Swift v1 auth (``GET /auth/1.0`` with ``X-Auth-User: ACCOUNT:USER``
    and ``X-Auth-Key: KEY`` -> ``X-Storage-Url`` + ``X-Auth-Token``), while glance_store
    5.7's swift driver authenticates only with Keystone v3: ``SwiftParams._load_config``
    (glance_store/_drivers/swift/utils.py) rewrites every reference's ``auth_version`` to
    ``'3'`` whatever the configuration says, and the store then builds
    ``swiftclient.Connection(auth_url, user, key, tenant_name=ACCOUNT, auth_version='3',
    os_options={endpoint_type, service_type, user_domain_id, project_domain_id, ...})``,
    so swiftclient goes through keystoneclient v3 (``POST /v3/auth/tokens``) and takes the
    object-store endpoint from the token's catalog.

What it answers (on 127.0.0.1, a free port; ``url`` is ``http://127.0.0.1:PORT/v3``)
    ``GET /v3`` (and ``/v3/``)
        version discovery: ``{"version": {"id": "v3.14", "status": "stable", "links":
        [{"rel": "self", "href": ".../v3/"}], "media-types": [...]}}``, 200.
    ``GET /``
        ``{"versions": {"values": [that version]}}``, 300 Multiple Choices like Keystone.
    ``POST /v3/auth/tokens``
        a password auth (``identity.password.user.name`` or ``.id``, ``password``, user
        domain; ``scope.project.name`` or ``.id`` + domain). It performs radosgw's v1 auth
        against ``swift_auth_url`` with ``X-Auth-User: <project>:<user>`` and ``X-Auth-Key:
        <password>`` (unscoped, a user name that already contains ``:`` is used as is).
        radosgw 2xx -> 201, ``X-Subject-Token`` = radosgw's ``X-Auth-Token``, and a v3
        token body (methods, expires_at = now + ``token_ttl``, issued_at, user, project,
        roles ``member``, and a catalog with ONE ``object-store`` service ``swift`` whose
        public, internal and admin endpoints (region ``RegionOne``) all are radosgw's
        ``X-Storage-Url``, or ``storage_url`` when given, e.g. a fault proxy's address).
        radosgw 401/403 -> 401 with a Keystone error body. The ``token`` method
        (re-authenticating with a token this stand-in issued) is accepted too.
        radosgw unreachable or any other status -> 503 with an error body.
    ``GET`` / ``HEAD /v3/auth/tokens``
        validation of ``X-Subject-Token``: 200 with the same body (HEAD: no body) if this
        stand-in issued it and it has not expired, else 404.
    anything else
        404 with a Keystone error body.

Every request is counted in ``requests`` (a dict ``path -> count``, the path without the
query string) so tests can assert that authentication happened.

    standin = KeystoneStandin(ceph.swift_auth).start()
    standin.url                   # http://127.0.0.1:PORT/v3 (the auth_url / auth_address)
    standin.requests              # {"/v3/auth/tokens": 1, ...}
    standin.stop()

The pytest fixture ``keystone_standin`` (function scope, needs the session ``ceph``
fixture) starts one in front of ``ceph.swift_auth`` and stops it after the test. Load it
by listing this module in ``pytest_plugins`` (tests/conftest.py) or importing the fixture.
"""

from __future__ import annotations

import collections
import datetime
import http.client
import http.server
import json
import logging
import socket
import threading
import urllib.parse
import uuid

import pytest

log = logging.getLogger(__name__)

API_VERSION = "v3.14"
REGION = "RegionOne"
DOMAIN = {"id": "default", "name": "Default"}
INTERFACES = ("public", "internal", "admin")
MEDIA_TYPES = [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]
_ID_NAMESPACE = uuid.UUID("6c1e3c1a-7c57-4a3e-9b5c-9e0f6a1d2b3c")


def _stable_id(kind: str, name: str) -> str:
    """A Keystone-looking (32 hex digits) id that is the same for the same name."""
    return uuid.uuid5(_ID_NAMESPACE, "%s:%s" % (kind, name)).hex


def _iso(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuthError(Exception):
    """An auth request answered with a Keystone error (status, title, message)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class KeystoneStandin:
    """A Keystone v3 identity endpoint that authenticates against radosgw's Swift v1 auth.

    ``swift_auth_url``: radosgw's v1 auth URL (``http://127.0.0.1:PORT/auth/1.0``).
    ``storage_url``: the object-store URL to put in the catalog instead of radosgw's
    ``X-Storage-Url`` (a fault proxy's); it is an attribute, read at each token issue.
    ``region``: the catalog endpoints' region. ``token_ttl``: seconds until expires_at.
    ``timeout``: seconds for the request to radosgw.
    """

    def __init__(self, swift_auth_url: str, storage_url: str | None = None, *,
                 region: str = REGION, token_ttl: float = 3600, timeout: float = 30) -> None:
        parsed = urllib.parse.urlsplit(swift_auth_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("swift_auth_url must be an http(s) URL: %r" % swift_auth_url)
        self.swift_auth_url = swift_auth_url
        self.storage_url = storage_url
        self.region = region
        self.token_ttl = token_ttl
        self.timeout = timeout
        self.requests: collections.Counter[str] = collections.Counter()
        self.port: int | None = None
        self._tokens: dict[str, tuple[datetime.datetime, dict]] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> KeystoneStandin:
        if self._server is not None:
            raise RuntimeError("already started")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="keystone-standin:%d" % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every open connection, join the threads. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(10)
        server.join_handlers(10)

    def __enter__(self) -> KeystoneStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the unversioned identity root)."""
        if self.port is None:
            raise RuntimeError("not started")
        return "http://127.0.0.1:%d" % self.port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/v3``: the auth_url / glance_store auth_address."""
        return self.base_url + "/v3"

    @property
    def tokens(self) -> list[str]:
        """The tokens issued so far (radosgw's X-Auth-Token values)."""
        with self._lock:
            return list(self._tokens)

    def __repr__(self) -> str:
        return "<KeystoneStandin %s -> %s>" % (
            self.url if self.port else "(stopped)", self.swift_auth_url)

    # -- documents -------------------------------------------------------------------

    def version_document(self) -> dict:
        return {
            "id": API_VERSION,
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": self.url + "/"}],
            "media-types": MEDIA_TYPES,
        }

    def _count(self, path: str) -> None:
        with self._lock:
            self.requests[path] += 1

    def _lookup(self, token: str | None) -> dict | None:
        if not token:
            return None
        now = datetime.datetime.now(datetime.timezone.utc)
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._tokens[token]
                return None
            return entry[1]

    # -- POST /v3/auth/tokens ----------------------------------------------------------

    def authenticate(self, request: dict) -> tuple[str, dict]:
        """(token, token body) for a v3 auth request body, or raise AuthError."""
        try:
            auth = request["auth"]
            identity = auth["identity"]
            methods = list(identity.get("methods") or [])
        except (KeyError, TypeError, AttributeError):
            raise AuthError(400, "Bad Request", "Expecting to find auth.identity in the request"
                            ) from None
        if "token" in methods and "password" not in methods:
            token = (identity.get("token") or {}).get("id")
            old = self._lookup(token)
            if old is None:
                raise AuthError(401, "Unauthorized", "The token is not valid.")
            return token, old  # the same radosgw token again (radosgw does not scope tokens)
        if "password" not in methods:
            raise AuthError(401, "Unauthorized",
                            "Unsupported auth methods %s (password or token only)" % methods)
        try:
            user = identity["password"]["user"]
            user_name = user.get("name") or user.get("id")
            password = user["password"]
        except (KeyError, TypeError, AttributeError):
            raise AuthError(400, "Bad Request",
                            "Expecting identity.password.user with name and password") from None
        if not user_name:
            raise AuthError(400, "Bad Request", "Expecting a user name or id")
        project = ((auth.get("scope") or {}).get("project") or {})
        project_name = project.get("name") or project.get("id")
        if project_name:
            swift_user = "%s:%s" % (project_name, user_name)
        elif ":" in user_name:  # unscoped, the user given as ACCOUNT:USER already
            swift_user = user_name
            project_name, user_name = user_name.split(":", 1)
        else:
            raise AuthError(401, "Unauthorized",
                            "A project scope is required (radosgw users are ACCOUNT:USER)")

        rgw_token, storage_url = self._swift_v1_auth(swift_user, password)
        now = datetime.datetime.now(datetime.timezone.utc)
        expires = now + datetime.timedelta(seconds=self.token_ttl)
        url = self.storage_url or storage_url
        body = {"token": {
            "methods": ["password"],
            "expires_at": _iso(expires),
            "issued_at": _iso(now),
            "audit_ids": [uuid.uuid4().hex[:22]],
            "user": {"id": _stable_id("user", user_name), "name": user_name,
                     "domain": dict(DOMAIN), "password_expires_at": None},
            "project": {"id": _stable_id("project", project_name), "name": project_name,
                        "domain": dict(DOMAIN)},
            "is_domain": False,
            "roles": [{"id": "r1", "name": "member"}],
            "catalog": [{
                "type": "object-store",
                "name": "swift",
                "id": "s1",
                "endpoints": [
                    {"id": "e%d" % (i + 1), "interface": interface, "region": self.region,
                     "region_id": self.region, "url": url}
                    for i, interface in enumerate(INTERFACES)
                ],
            }],
        }}
        with self._lock:
            self._tokens[rgw_token] = (expires, body)
        return rgw_token, body

    def _swift_v1_auth(self, swift_user: str, key: str) -> tuple[str, str]:
        """radosgw's (X-Auth-Token, X-Storage-Url) for ACCOUNT:USER / KEY, or AuthError."""
        u = urllib.parse.urlsplit(self.swift_auth_url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=self.timeout)
        target = (u.path or "/") + ("?" + u.query if u.query else "")
        try:
            conn.request("GET", target, headers={"X-Auth-User": swift_user, "X-Auth-Key": key})
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise AuthError(503, "Service Unavailable",
                            "radosgw auth at %s failed: %s" % (self.swift_auth_url, e)) from None
        finally:
            conn.close()
        if resp.status in (401, 403):
            raise AuthError(401, "Unauthorized",
                            "The request you have made requires authentication "
                            "(radosgw answered %d for %s)." % (resp.status, swift_user))
        token = resp.getheader("X-Auth-Token") or resp.getheader("X-Storage-Token")
        storage_url = resp.getheader("X-Storage-Url")
        if not 200 <= resp.status < 300 or not token or not storage_url:
            raise AuthError(503, "Service Unavailable",
                            "radosgw auth answered %d %s (token %s, storage url %r)"
                            % (resp.status, resp.reason, "present" if token else "missing",
                               storage_url))
        return token, storage_url


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    standin: KeystoneStandin

    def __init__(self, *args, **kwargs) -> None:
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._conns_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request_thread(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
            self._handlers.add(threading.current_thread())
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)
                self._handlers.discard(threading.current_thread())

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join_handlers(self, timeout: float) -> None:
        with self._conns_lock:
            threads = list(self._handlers)
        for t in threads:
            t.join(timeout)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keystone-standin/1"
    timeout = 120  # an idle keep-alive connection is dropped after this

    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("keystone-standin %s: " + format, self.address_string(), *args)

    # -- plumbing --------------------------------------------------------------------

    def _send_json(self, status: int, doc: dict | None, headers: dict | None = None,
                   body: bool = True) -> None:
        data = json.dumps(doc).encode() if doc is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Vary", "X-Auth-Token")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, title: str, message: str) -> None:
        self._send_json(status, {"error": {"code": status, "title": title, "message": message}})

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _dispatch(self) -> None:
        standin = self.server.standin
        path = urllib.parse.urlsplit(self.path).path
        standin._count(path)
        body = self._read_body()
        norm = path.rstrip("/") or "/"
        method = self.command
        try:
            if norm == "/" and method in ("GET", "HEAD"):
                self._send_json(300, {"versions": {"values": [standin.version_document()]}})
            elif norm == "/v3" and method in ("GET", "HEAD"):
                self._send_json(200, {"version": standin.version_document()})
            elif norm == "/v3/auth/tokens" and method == "POST":
                self._post_tokens(standin, body)
            elif norm == "/v3/auth/tokens" and method in ("GET", "HEAD"):
                token = self.headers.get("X-Subject-Token")
                doc = standin._lookup(token)
                if doc is None:
                    self._error(404, "Not Found", "Could not find token: %s" % token)
                else:
                    self._send_json(200, doc, {"X-Subject-Token": token})
            else:
                self._error(404, "Not Found",
                            "The resource could not be found (%s %s)." % (method, path))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _post_tokens(self, standin: KeystoneStandin, body: bytes) -> None:
        try:
            request = json.loads(body or b"null")
        except ValueError:
            self._error(400, "Bad Request", "The request body is not JSON.")
            return
        try:
            token, doc = standin.authenticate(request)
        except AuthError as e:
            self._error(e.status, e.title, e.message)
            return
        self._send_json(201, doc, {"X-Subject-Token": token})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


# ------------------------------------------------------------------------- fixtures


@pytest.fixture
def keystone_standin(ceph):
    """A KeystoneStandin in front of ``ceph.swift_auth``; stopped after the test."""
    standin = KeystoneStandin(ceph.swift_auth).start()
    try:
        yield standin
    finally:
        standin.stop()
