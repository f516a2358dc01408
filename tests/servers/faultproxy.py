"""A fault-injecting reverse HTTP proxy for the tests (standard library only).

A :class:`FaultProxy` listens on 127.0.0.1 (an ephemeral port) in front of a real
server (radosgw, or the test HTTP server of tests/servers/httpd.py) and forwards every
request byte for byte: method, target (path and query), every header (``Host`` and
``Authorization`` included, so SigV4 signatures made for the proxy's host:port still
verify), the body with its own framing (``Content-Length``, ``Transfer-Encoding:
chunked``, aws-chunked payloads). Bodies are streamed in 64 KiB pieces both ways, never
held whole. ``Expect: 100-continue`` is relayed: the origin's ``100 Continue`` (or its
final answer) goes back to the client before the body is forwarded. Each client
connection is kept alive as long as the client and the origin keep theirs, on a
dedicated origin connection.

Rules inject faults::

    proxy = FaultProxy(ceph.rgw_endpoint).start()           # kind="s3" (or "http")
    rule = proxy.add_rule("GET", "500", count=1, match="images/abc")
    ...                                                     # rule.hits: times it fired
    proxy.clear()                                           # drop every rule
    proxy.requests     # [(method, op, target, status), ...] last 10,000 requests
    proxy.stop()

``op`` (what the request is), for ``kind="s3"`` (path-style S3): ``HEAD`` (HeadObject,
HeadBucket), ``GET`` (a whole GetObject), ``RANGED_GET`` (GET of a key with ``Range``),
``LIST`` (a GET without a key: ListObjects(V2), ListMultipartUploads, ...),
``PUT`` (PutObject), ``CREATE_MULTIPART`` (POST ``?uploads``), ``UPLOAD_PART`` (PUT with
``partNumber`` and ``uploadId``), ``COMPLETE_MULTIPART`` (POST with ``uploadId``),
``ABORT_MULTIPART`` (DELETE with ``uploadId``), ``DELETE`` (DeleteObject), ``COPY``
(a PUT with ``x-amz-copy-source``, UploadPartCopy included) and, so that rules on the
names above do not catch them, ``LIST_PARTS`` (GET with ``uploadId``), ``CREATE_BUCKET``,
``DELETE_BUCKET``, ``DELETE_OBJECTS`` (POST ``?delete``) and ``OTHER``. For
``kind="http"``: ``HEAD``, ``GET``, ``RANGED_GET``, ``LIST`` (a GET of a path ending in
``/``) and the method's name for anything else. A rule's op may also be ``ANY``.

``match`` / ``match_not``: a substring that must / must not be in the request's path
(raw or percent-decoded), e.g. ``match=key`` or ``match_not=".gsfs-"``.

``fault``:

``"500"``, ``"503"`` (any status 400-599 works)
    answered by the proxy with that status and an S3-style XML error body
    (``InternalError``, ``ServiceUnavailable``, ...); the origin never sees the
    request. A request body is read and dropped first (keep-alive is preserved), unless
    the client is waiting on ``Expect: 100-continue``: then the error is the final
    answer and the connection is closed after it.
``"reset"``
    the client connection is closed at once without an answer, with SO_LINGER 0, so
    the client sees ECONNRESET.
``"stall"``
    the request is held ``seconds`` seconds (less if the rule is cleared), then
    forwarded normally.
``"stall_forever"``
    held until the rule is cleared or the proxy stops; then the connection is closed
    without an answer.
``"truncate"``
    forwarded; the answer's body is cut after half its ``Content-Length`` (a chunked
    body: after half of its first chunk) and the connection closed. Of an answer without
    a body (HEAD, 204, ``Content-Length: 0``) only the HTTP version is sent.

Rules are tried in the order they were added; the first one that matches and has not
fired ``count`` times yet (``count=None``: no limit) fires, at most one per request.

Stopping (``stop()``) closes the listening socket, releases held requests, shuts down
every client and origin connection and joins every thread (they are daemon threads,
joined with a timeout; a thread still alive after it is an error).

The pytest fixtures ``rgw_proxy`` (in front of ``ceph.rgw_endpoint``) and
``http_proxy`` (in front of ``http_server.base_url``) start one for a test and stop it
afterwards; load this module through ``pytest_plugins`` (tests/conftest.py does).
"""

from __future__ import annotations

import collections
import itertools
import logging
import select
import socket
import struct
import threading
import time
import urllib.parse
from typing import NamedTuple

import pytest

LOG = logging.getLogger(__name__)

S3_OPS = (
    "HEAD", "GET", "RANGED_GET", "LIST", "PUT", "CREATE_MULTIPART", "UPLOAD_PART",
    "COMPLETE_MULTIPART", "ABORT_MULTIPART", "DELETE", "COPY",
    "LIST_PARTS", "CREATE_BUCKET", "DELETE_BUCKET", "DELETE_OBJECTS", "OTHER",
)
FAULTS = ("500", "503", "reset", "stall", "stall_forever", "truncate")
LOG_SIZE = 10_000

_BUF = 65536
_MAX_LINE = 65536
_MAX_HEADERS = 256
_JOIN_TIMEOUT = 10.0

_ERROR_CODES = {
    400: ("BadRequest", "Bad request."),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    409: ("Conflict", "Conflict."),
    429: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "The proxy could not get an answer from the origin."),
    503: ("ServiceUnavailable", "Please reduce your request rate."),
    504: ("GatewayTimeout", "The origin did not answer in time."),
}
_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class LoggedRequest(NamedTuple):
    method: str
    op: str
    path: str
    #: the status sent to the client (logged just before it is sent), or the fault
    #: that answers nothing ("reset", "stall_forever": logged when the hold starts),
    #: or "aborted" (a stalled request that the proxy's stop() ended)
    status: int | str


# ---------------------------------------------------------------------------- rules


class Rule:
    """One fault rule; ``hits`` counts the requests it fired on."""

    def __init__(self, op, fault, count=1, seconds=None, match=None, match_not=None):
        self.op = op
        self.fault = fault
        self.count = count
        self.seconds = seconds
        self.match = match
        self.match_not = match_not
        self.hits = 0
        self.released = threading.Event()   # set by clear()/stop(): held requests go

    @property
    def exhausted(self):
        return self.count is not None and self.hits >= self.count

    @property
    def status(self):
        return int(self.fault) if self.fault.isdigit() else None

    def applies(self, op, path):
        if self.exhausted or (self.op != "ANY" and self.op != op):
            return False
        decoded = urllib.parse.unquote(path)
        if self.match is not None and self.match not in path and self.match not in decoded:
            return False
        if self.match_not is not None and (self.match_not in path or self.match_not in decoded):
            return False
        return True

    def __repr__(self):
        return "<Rule %s %s count=%s hits=%d match=%r match_not=%r>" % (
            self.op, self.fault, self.count, self.hits, self.match, self.match_not)


# ---------------------------------------------------------------------- classifying


def _split_target(target):
    if target.startswith(("http://", "https://")):   # absolute-form
        split = urllib.parse.urlsplit(target)
        return split.path or "/", split.query
    path, _, query = target.partition("?")
    return path, query


def classify_s3(method, target, headers):
    """The op name of a path-style S3 request (see the module docstring)."""
    path, query = _split_target(target)
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    bucket, _, key = path.lstrip("/").partition("/")
    if method == "HEAD":
        return "HEAD"
    if method == "GET":
        if not key or "list-type" in q:
            return "LIST"
        if "uploadId" in q:
            return "LIST_PARTS"
        return "RANGED_GET" if "range" in headers else "GET"
    if method == "PUT":
        if "x-amz-copy-source" in headers:
            return "COPY"
        if "uploadId" in q and "partNumber" in q:
            return "UPLOAD_PART"
        if not key:
            return "CREATE_BUCKET" if bucket and not q else "OTHER"
        return "PUT"
    if method == "POST":
        if "uploads" in q:
            return "CREATE_MULTIPART"
        if "uploadId" in q:
            return "COMPLETE_MULTIPART"
        if "delete" in q:
            return "DELETE_OBJECTS"
        return "OTHER"
    if method == "DELETE":
        if "uploadId" in q:
            return "ABORT_MULTIPART"
        if key:
            return "DELETE"
        return "DELETE_BUCKET" if bucket and not q else "OTHER"
    return "OTHER"


def classify_http(method, target, headers):
    """The op name of a request to a plain HTTP origin."""
    path, _ = _split_target(target)
    if method == "GET":
        if "range" in headers:
            return "RANGED_GET"
        return "LIST" if path.endswith("/") else "GET"
    return method


# ------------------------------------------------------------------- wire plumbing


class _PeerError(Exception):
    """A peer failed (went away, timed out, spoke garbage); ``side`` says which."""

    def __init__(self, side, msg):
        super().__init__("%s: %s" % (side, msg))
        self.side = side


class _Reader:
    """A buffered reader over a socket that can tell whether it holds unread bytes."""

    def __init__(self, sock, side):
        self.sock = sock
        self.side = side
        self.buf = bytearray()

    def _recv(self):
        try:
            return self.sock.recv(_BUF)
        except OSError as e:
            raise _PeerError(self.side, "recv: %s" % e) from None

    def buffered(self):
        return len(self.buf)

    def readline(self):
        """A line with its newline; a shorter or empty result means EOF."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > _MAX_LINE:
                raise _PeerError(self.side, "line too long")
            start = len(self.buf)
            data = self._recv()
            if not data:
                line = bytes(self.buf)
                self.buf.clear()
                return line
            self.buf += data

    def read_some(self, n):
        """1..n bytes; b"" at EOF."""
        if self.buf:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        data = self._recv()
        if len(data) > n:
            self.buf += data[n:]
            data = data[:n]
        return data

    def full_line(self):
        line = self.readline()
        if not line.endswith(b"\n"):
            raise _PeerError(self.side, "closed in the middle of a message")
        return line


class _Sink:
    """Sends to a socket. ``tolerant``: after a send error, drop the rest silently."""

    def __init__(self, sock, side, tolerant=False):
        self.sock = sock
        self.side = side
        self.tolerant = tolerant
        self.failed = False

    def send(self, data):
        if self.failed or not data:
            return
        try:
            self.sock.sendall(data)
        except OSError as e:
            if not self.tolerant:
                raise _PeerError(self.side, "send: %s" % e) from None
            self.failed = True


class _Head:
    """A request or response head: first line, headers (lower-cased names), raw bytes."""

    def __init__(self, first, headers, raw):
        self.first = first
        self.headers = headers          # [(lower name, value), ...]
        self.raw = raw

    def get(self, name, default=None):
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def tokens(self, name):
        out = set()
        for k, v in self.headers:
            if k == name:
                out.update(t.strip().lower() for t in v.split(","))
        return out

    def header_dict(self):
        return {k: v for k, v in self.headers}

    def body_framing(self):
        """("chunked", None) / ("length", n) / ("none", None)."""
        te = [t for t in self.tokens("transfer-encoding") if t]
        if te:
            return "chunked", None
        cl = self.get("content-length")
        if cl is not None:
            try:
                n = int(cl.split(",")[0].strip())
            except ValueError:
                raise _PeerError("client", "bad Content-Length %r" % cl) from None
            return ("length", n) if n > 0 else ("none", None)
        return "none", None

    def with_close(self):
        """The raw head with its Connection headers replaced by ``Connection: close``."""
        lines = [self.first.encode("latin-1") + b"\r\n"]
        for raw_line in self.raw.split(b"\n")[1:]:
            name = raw_line.split(b":", 1)[0].strip().lower()
            if raw_line.strip() and name not in (b"connection", b"keep-alive"):
                lines.append(raw_line.rstrip(b"\r") + b"\r\n")
        return b"".join(lines) + b"Connection: close\r\n\r\n"


def _read_head(reader, request):
    """The next message head from reader, or None at a clean EOF before it."""
    line = reader.readline()
    if request:
        while line in (b"\r\n", b"\n"):      # RFC 9112 2.2: ignore empty lines first
            line = reader.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise _PeerError(reader.side, "closed in the middle of a message head")
    raw = [line]
    headers = []
    while True:
        h = reader.full_line()
        raw.append(h)
        if h in (b"\r\n", b"\n"):
            break
        if len(headers) >= _MAX_HEADERS:
            raise _PeerError(reader.side, "too many headers")
        name, sep, value = h.decode("latin-1").partition(":")
        if not sep:
            raise _PeerError(reader.side, "bad header line %r" % h[:80])
        headers.append((name.strip().lower(), value.strip()))
    return _Head(line.decode("latin-1").rstrip("\r\n"), headers, b"".join(raw))


def _copy_length(reader, n, sink):
    while n > 0:
        data = reader.read_some(min(n, _BUF))
        if not data:
            raise _PeerError(reader.side, "closed with %d body bytes to go" % n)
        sink.send(data)
        n -= len(data)


def _copy_chunked(reader, sink):
    while True:
        line = reader.full_line()
        sink.send(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _PeerError(reader.side, "bad chunk size line %r" % line[:80]) from None
        if size == 0:
            while True:                          # trailers, then the empty line
                t = reader.full_line()
                sink.send(t)
                if t in (b"\r\n", b"\n"):
                    return
        _copy_length(reader, size, sink)
        sink.send(reader.full_line())            # the CRLF after the data


def _copy_body(reader, framing, sink):
    kind, n = framing
    if kind == "length":
        _copy_length(reader, n, sink)
    elif kind == "chunked":
        _copy_chunked(reader, sink)


def _copy_to_eof(reader, sink):
    while True:
        data = reader.read_some(_BUF)
        if not data:
            return
        sink.send(data)


class _Null:
    failed = False

    def send(self, data):
        pass


def _error_response(status, resource, close, head_only):
    code, message = _ERROR_CODES.get(status, ("Error%d" % status, "Injected error."))
    request_id = "faultproxy-%d" % next(_ids)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
        "<Resource>%s</Resource><RequestId>%s</RequestId></Error>\n"
        % (code, message, _xml_escape(resource), request_id)
    ).encode()
    head = (
        "HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
        "x-amz-request-id: %s\r\nConnection: %s\r\n\r\n"
        % (status, _REASONS.get(status, "Error"), len(body), request_id,
           "close" if close else "keep-alive")
    ).encode()
    return head if head_only else head + body


def _xml_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ids = itertools.count(1)


# ------------------------------------------------------------------- a connection


class _Connection:
    """One client connection and the origin connection paired with it."""

    def __init__(self, proxy, sock):
        self.proxy = proxy
        self.sock = sock
        self.reader = _Reader(sock, "client")
        self.sink = _Sink(sock, "client")
        self.up = None           # (socket, _Reader) of the origin connection
        self.reset_done = False

    # -- origin connection -------------------------------------------------------

    def _upstream(self):
        """(sock, reader, reused): the origin connection, a new one if the old is dead."""
        if self.up is not None:
            sock, reader = self.up
            try:
                dead = reader.buffered() or select.select([sock], [], [], 0)[0]
            except (OSError, ValueError):
                dead = True
            if not dead:
                return sock, reader, True
            self._drop_upstream()
        if self.proxy.stopping:
            raise _PeerError("upstream", "the proxy is stopping")
        try:
            sock = socket.create_connection(self.proxy.upstream_addr,
                                            timeout=self.proxy.upstream_timeout)
        except OSError as e:
            raise _PeerError("upstream", "connect: %s" % e) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proxy._track(sock)
        self.up = (sock, _Reader(sock, "upstream"))
        return sock, self.up[1], False

    def _drop_upstream(self):
        if self.up is not None:
            self.proxy._close(self.up[0])
            self.up = None

    # -- the loop ------------------------------------------------------------------

    def serve(self):
        try:
            while not self.proxy.stopping:
                req = _read_head(self.reader, request=True)
                if req is None:
                    break
                if not self._handle(req):
                    break
        except _PeerError as e:
            LOG.debug("faultproxy: connection ends: %s", e)
        except Exception:  # noqa: BLE001 - a test helper must not die noisily
            LOG.exception("faultproxy: unexpected error")
        finally:
            self._drop_upstream()
            if not self.reset_done:
                self.proxy._close(self.sock)

    def _handle(self, req):
        """Serve one request; True to keep the client connection for the next one."""
        parts = req.first.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _PeerError("client", "bad request line %r" % req.first[:80])
        method, target, version = parts
        headers = req.header_dict()
        op = self.proxy.classify(method, target, headers)
        path = _split_target(target)[0]
        rule = self.proxy._fire(op, path)
        fault = rule.fault if rule is not None else None
        log = self.proxy._log_request
        req.method, req.target, req.version, req.op = method, target, version, op
        req.framing = req.body_framing()
        req.has_body = req.framing[0] != "none"
        req.expect = "100-continue" in req.tokens("expect")
        conn_tokens = req.tokens("connection")
        req.wants_close = "close" in conn_tokens or (
            version == "HTTP/1.0" and "keep-alive" not in conn_tokens)
        if rule is not None:
            LOG.debug("faultproxy: %s %s (%s): %r fires", method, target, op, rule)

        if fault == "reset":
            log(method, op, target, "reset")
            self._reset()
            return False
        if fault == "stall_forever":
            log(method, op, target, "stall_forever")
            rule.released.wait()
            return False
        if fault == "stall":
            rule.released.wait(rule.seconds)
            if self.proxy.stopping:
                log(method, op, target, "aborted")
                return False
        if rule is not None and rule.status is not None:
            return self._answer_error(req, rule.status)
        return self._forward(req, truncate=(fault == "truncate"))

    # -- faults --------------------------------------------------------------------

    def _reset(self):
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.reset_done = True
        self.proxy._close(self.sock)

    def _answer_error(self, req, status):
        head_only = req.method == "HEAD"
        if req.has_body and req.expect and not self.reader.buffered():
            # the client waits for 100 Continue: this is the final answer, no body follows
            self.proxy._log_request(req.method, req.op, req.target, status)
            self.sink.send(_error_response(status, req.target, True, head_only))
            self._linger_close()
            return False
        _copy_body(self.reader, req.framing, _Null())
        close = req.wants_close
        self.proxy._log_request(req.method, req.op, req.target, status)
        self.sink.send(_error_response(status, req.target, close, head_only))
        return not close

    def _linger_close(self):
        """Close after the answer without an RST destroying it: FIN, drain briefly, close."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(0.5)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and self.sock.recv(_BUF):
                pass
        except OSError:
            pass

    # -- forwarding ----------------------------------------------------------------

    def _forward(self, req, truncate):
        head = None
        force_close = False
        for attempt in (0, 1):
            usock, ureader, reused = self._upstream()
            try:
                _Sink(usock, "upstream").send(req.raw)
                if req.has_body:
                    head, force_close = self._send_body(req, usock, ureader)
                if head is None:
                    head = self._final_head(ureader)
                break
            except _PeerError as e:
                if e.side != "upstream":
                    raise
                self._drop_upstream()
                # a kept-alive origin connection may close just as we reuse it
                if attempt == 0 and reused and not req.has_body:
                    continue
                LOG.debug("faultproxy: %s %s: origin failed: %s", req.method, req.target, e)
                return self._bad_gateway(req)
        return self._relay(req, head, ureader, truncate, force_close)

    def _send_body(self, req, usock, ureader):
        """Forward the request body; (final head or None, close afterwards?)."""
        if req.expect and not self.reader.buffered():
            while True:
                if ureader.buffered():
                    ready = [usock]
                else:
                    try:
                        ready = select.select([usock, self.sock], [], [],
                                              self.proxy.upstream_timeout)[0]
                    except (OSError, ValueError) as e:
                        raise _PeerError("upstream", "select: %s" % e) from None
                if not ready:
                    raise _PeerError("upstream", "no answer to Expect: 100-continue")
                if usock not in ready:
                    break                      # the client sends the body anyway
                head = _read_head(ureader, request=False)
                if head is None:
                    raise _PeerError("upstream", "closed before answering")
                status = _status_of(head)
                if status == 100:
                    self.sink.send(head.raw)
                    break
                if 100 < status < 200:
                    self.sink.send(head.raw)
                    continue
                return head, True              # a final answer: no body is coming
        usink = _Sink(usock, "upstream", tolerant=True)
        _copy_body(self.reader, req.framing, usink)
        # the origin stopped reading (it answered early, or failed): get its answer,
        # then close both connections
        return None, usink.failed

    def _final_head(self, ureader):
        """The origin's final response head; interim (1xx) ones go to the client."""
        while True:
            head = _read_head(ureader, request=False)
            if head is None:
                raise _PeerError("upstream", "closed before answering")
            status = _status_of(head)
            if 100 <= status < 200 and status != 101:
                self.sink.send(head.raw)
                continue
            return head

    def _relay(self, req, head, ureader, truncate, force_close):
        status = _status_of(head)
        if req.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            framing = ("none", None)
        else:
            framing = head.body_framing()
            if framing == ("none", None) and head.get("content-length") is None:
                framing = ("eof", None)
        version = head.first.split(" ", 1)[0]
        up_tokens = head.tokens("connection")
        close = (force_close or req.wants_close or framing[0] == "eof"
                 or "close" in up_tokens
                 or (version == "HTTP/1.0" and "keep-alive" not in up_tokens))
        self.proxy._log_request(req.method, req.op, req.target, status)
        if truncate:
            self._truncated(head, framing, ureader)
            self._drop_upstream()
            return False
        self.sink.send(head.with_close() if force_close else head.raw)
        if framing[0] == "eof":
            _copy_to_eof(ureader, self.sink)
        else:
            _copy_body(ureader, framing, self.sink)
        if close:
            self._drop_upstream()
            if force_close:
                self._linger_close()
            return False
        return True

    def _truncated(self, head, framing, ureader):
        kind, n = framing
        if kind == "length":
            self.sink.send(head.raw)
            _copy_length(ureader, n // 2, self.sink)
        elif kind == "chunked":
            self.sink.send(head.raw)
            line = ureader.full_line()
            self.sink.send(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                size = 0
            _copy_length(ureader, size // 2, self.sink)
        elif kind == "eof":
            self.sink.send(head.raw)
            self.sink.send(ureader.read_some(_BUF)[: _BUF // 2])
        else:
            # no body: cut the status line after the version ("HTTP/1.1 204" alone
            # would still parse as a complete answer)
            self.sink.send(head.raw.split(b" ", 1)[0])

    def _bad_gateway(self, req):
        self.proxy._log_request(req.method, req.op, req.target, 502)
        self.sink.send(_error_response(502, req.target, True, req.method == "HEAD"))
        self._linger_close()
        return False


def _status_of(head):
    try:
        return int(head.first.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise _PeerError("upstream", "bad status line %r" % head.first[:80]) from None


# ------------------------------------------------------------------------ the proxy


class FaultProxy:
    """See the module docstring. ``upstream``: the origin's base URL (http only)."""

    def __init__(self, upstream, kind="s3", upstream_timeout=60.0, idle_timeout=300.0):
        split = urllib.parse.urlsplit(upstream)
        if split.scheme != "http" or not split.hostname:
            raise ValueError("FaultProxy forwards to http://host:port origins, not %r"
                             % upstream)
        if kind not in ("s3", "http"):
            raise ValueError("kind must be 's3' or 'http'")
        self.upstream = upstream.rstrip("/")
        self.upstream_addr = (split.hostname, split.port or 80)
        self.kind = kind
        self.classify = classify_s3 if kind == "s3" else classify_http
        self.upstream_timeout = upstream_timeout
        self.idle_timeout = idle_timeout
        self.accepted = 0            # client connections accepted so far
        self._rules = []
        self._lock = threading.Lock()
        self._log = collections.deque(maxlen=LOG_SIZE)
        self._socks = set()
        self._threads = set()
        self._stop = threading.Event()
        self._accept_thread = None
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(128)
        self.port = self._lsock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port

    # -- rules ---------------------------------------------------------------------

    def add_rule(self, op, fault, count=1, seconds=None, match=None, match_not=None):
        ops = S3_OPS if self.kind == "s3" else ("HEAD", "GET", "RANGED_GET", "LIST")
        if op != "ANY" and op not in ops and not (self.kind == "http" and op.isupper()):
            raise ValueError("unknown op %r (one of %s, ANY)" % (op, ", ".join(ops)))
        fault = str(fault)
        if fault not in FAULTS and not (fault.isdigit() and 400 <= int(fault) <= 599):
            raise ValueError("unknown fault %r (one of %s)" % (fault, ", ".join(FAULTS)))
        if fault == "stall" and (seconds is None or seconds < 0):
            raise ValueError("a stall needs seconds >= 0")
        if count is not None and count < 1:
            raise ValueError("count must be None or >= 1")
        rule = Rule(op, fault, count, seconds, match, match_not)
        with self._lock:
            if self._stop.is_set():
                rule.released.set()
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule):
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)
        rule.released.set()

    def clear(self):
        """Drop every rule; requests held by stall rules go on (stall_forever: closed)."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            rule.released.set()

    @property
    def rules(self):
        with self._lock:
            return list(self._rules)

    def _fire(self, op, path):
        with self._lock:
            for rule in self._rules:
                if rule.applies(op, path):
                    rule.hits += 1
                    return rule
        return None

    # -- the request log -----------------------------------------------------------

    @property
    def requests(self):
        """[(method, op, target, status), ...]: the last LOG_SIZE requests, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_requests(self):
        with self._lock:
            self._log.clear()

    def _log_request(self, method, op, path, status):
        with self._lock:
            self._log.append(LoggedRequest(method, op, path, status))

    # -- lifecycle -----------------------------------------------------------------

    @property
    def stopping(self):
        return self._stop.is_set()

    def start(self):
        if self._accept_thread is not None:
            raise RuntimeError("already started")
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="faultproxy-%d-accept" % self.port, daemon=True)
        self._accept_thread.start()
        return self

    def stop(self):
        """Stop accepting, release held requests, close every connection, join threads."""
        self._stop.set()
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            rule.released.set()
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT)
        try:
            self._lsock.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + _JOIN_TIMEOUT
        with self._lock:
            threads = list(self._threads)
        if self._accept_thread is not None:
            threads.append(self._accept_thread)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            self._close(sock)
        if alive:
            raise RuntimeError("faultproxy threads did not stop: %s" % ", ".join(alive))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return "<FaultProxy %s -> %s>" % (self.url, self.upstream)

    # -- internals -----------------------------------------------------------------

    def _track(self, sock):
        with self._lock:
            self._socks.add(sock)
        if self._stop.is_set():     # raced with stop(): do not leave it open
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close(self, sock):
        with self._lock:
            self._socks.discard(sock)
        try:
            sock.close()
        except OSError:
            pass

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                ready = select.select([self._lsock], [], [], 0.1)[0]
                if not ready:
                    continue
                csock, _ = self._lsock.accept()
            except (OSError, ValueError):
                if self._stop.is_set():
                    break
                time.sleep(0.05)
                continue
            if self._stop.is_set():
                csock.close()
                break
            csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            csock.settimeout(self.idle_timeout)
            self.accepted += 1
            self._track(csock)
            t = threading.Thread(target=self._serve, args=(csock,), daemon=True,
                                 name="faultproxy-%d-conn-%d" % (self.port, self.accepted))
            with self._lock:
                self._threads.add(t)
            t.start()

    def _serve(self, csock):
        try:
            _Connection(self, csock).serve()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())


# ------------------------------------------------------------------------- fixtures


def _running(proxy):
    """Start ``proxy`` for one test and stop it afterwards (fixture body)."""
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def rgw_proxy(ceph):
    """A FaultProxy (kind="s3") in front of radosgw; stopped after the test."""
    yield from _running(FaultProxy(ceph.rgw_endpoint, kind="s3"))


@pytest.fixture
def http_proxy(http_server):
    """A FaultProxy (kind="http") in front of the test HTTP server; stopped afterwards."""
    yield from _running(FaultProxy(http_server.base_url, kind="http"))
