"""A small threaded HTTP(S) server for the http driver tests (stdlib only).

It serves the files under ``root`` on 127.0.0.1 (port 0: the kernel picks a
free port) from a thread of the test process, and stops reliably: ``stop()``
ends the accept loop, shuts down every open connection (idle keep-alive ones
included), then joins every handler thread.

Routes (``<path>`` is a path under ``root``, URL-quoted as usual):

``/<path>``
    GET / HEAD of a regular file: ``Content-Length``, ``Last-Modified``,
    ``Accept-Ranges: bytes``. GET honours ONE range of ``Range: bytes=a-b``,
    ``bytes=a-`` or ``bytes=-n`` with ``206`` and ``Content-Range``;
    an unsatisfiable range (start at or past the end, or any range of an empty
    file) gets ``416`` with ``Content-Range: bytes */<size>``. Several ranges or
    a malformed header are ignored (``200``, the whole file), as RFC 9110 allows.
``/<dir>/``
    an autoindex HTML page like python's http.server / nginx / Apache write:
    one ``<a href="quoted name">`` per entry, directories with a trailing
    ``/``, plus a ``../`` link, an Apache-style ``?C=N;O=D`` sort link and an
    absolute link elsewhere (so the driver's href filter is exercised).
    ``/<dir>`` without the slash redirects (301) to ``/<dir>/``.
``/<dir>/index.txt``
    when no such file exists: the plain-text index of ``<dir>``, one regular
    file a line, ``QUOTED_NAME SIZE MTIME_EPOCH``. A real file of that name is
    served instead, so a test can write any plain index it likes.
``/redirect/<code>/<n>/<path>``
    ``n`` >= 1 redirects with status ``code`` (301, 302, 303, 307, 308): to
    ``/redirect/<code>/<n-1>/<path>`` while n > 1, then to ``/<path>``. The
    ``Location`` is an absolute URL, or an absolute path with ``?rel=1``.
``/auth/<path>``
    ``<path>``, but only with HTTP Basic credentials equal to ``server.auth``
    (else 401 with ``WWW-Authenticate``).
``/norange/<path>``
    ``<path>`` with every ``Range`` header ignored (always 200).
``/short/<path>``
    ``<path>``, but a ranged answer carries at most ``server.short_max`` bytes
    (a 206 shorter than asked, which RFC 9110 allows).
``/nohead/<path>``
    HEAD answers 405; GET as ``<path>``.
``/slow/<seconds>/<path>``
    waits before answering (wakes early when the server stops).
``/status/<code>``
    answers with that status code and a one-line body.

Every request is recorded in ``server.requests`` as (method, path, headers).
"""

import base64
import email.utils
import html
import http.server
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.parse
from pathlib import Path

LOG = logging.getLogger(__name__)

REDIRECT_CODES = (301, 302, 303, 307, 308)
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gsfs-test-httpd/1"
    timeout = 10          # an idle keep-alive connection is dropped after this

    # -- connection bookkeeping ----------------------------------------------
    def setup(self):
        super().setup()
        self.server.track(self.connection)
        # headers and body are separate writes: without this, Nagle plus the
        # client's delayed ACK cost ~40 ms per keep-alive request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except BaseException:
                self.server.untrack(self.connection)
                raise

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, fmt, *args):
        LOG.debug("httpd: " + fmt, *args)

    # -- dispatch -------------------------------------------------------------
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._dispatch(head=False)

    def do_HEAD(self):  # noqa: N802
        self._dispatch(head=True)

    def _dispatch(self, head):
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        query = urllib.parse.parse_qs(split.query)
        parts = path.lstrip("/").split("/")
        try:
            route = parts[0]
            if route == "redirect" and len(parts) >= 4:
                return self._redirect(int(parts[1]), int(parts[2]), "/".join(parts[3:]),
                                      relative="rel" in query)
            if route == "status" and len(parts) == 2:
                return self._send_simple(int(parts[1]), head)
            if route == "auth":
                if not self._authorized():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="gsfs"')
                    return self._end_headers_with_body(b"unauthorized\n", head)
                return self._serve_path("/".join(parts[1:]), head)
            if route == "norange":
                return self._serve_path("/".join(parts[1:]), head, ranges=False)
            if route == "short":
                return self._serve_path("/".join(parts[1:]), head,
                                        max_range=self.server.short_max)
            if route == "nohead":
                if head:
                    return self._send_simple(405, head)
                return self._serve_path("/".join(parts[1:]), head)
            if route == "slow" and len(parts) >= 3:
                self.server.stopping.wait(float(parts[1]))
                return self._serve_path("/".join(parts[2:]), head)
        except ValueError:
            return self._send_simple(400, head)
        return self._serve_path(path.lstrip("/"), head, raw_path=split.path)

    # -- responses --------------------------------------------------------------
    def _end_headers_with_body(self, body, head, content_type="text/plain; charset=utf-8"):
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_simple(self, code, head):
        self.send_response(code)
        self._end_headers_with_body(("status %d\n" % code).encode(), head)

    def _authorized(self):
        if self.server.auth is None:
            return False
        value = self.headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (user, password) == tuple(self.server.auth)

    def _host_url(self):
        scheme = "https" if self.server.tls else "http"
        return "%s://127.0.0.1:%d" % (scheme, self.server.server_address[1])

    def _redirect(self, code, n, rest, relative):
        if code not in REDIRECT_CODES or n < 1:
            return self._send_simple(400, self.command == "HEAD")
        target = "/" + urllib.parse.quote(rest) if n == 1 else \
            "/redirect/%d/%d/%s" % (code, n - 1, urllib.parse.quote(rest))
        if relative:
            target += "?rel=1" if n > 1 else ""
        else:
            target = self._host_url() + target
        self.send_response(code)
        self.send_header("Location", target)
        self._end_headers_with_body(b"redirecting\n", self.command == "HEAD")

    def _resolve(self, rel):
        root = self.server.root.resolve()
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            return None
        return target

    def _serve_path(self, rel, head, ranges=True, max_range=None, raw_path=None):
        target = self._resolve(rel)
        if target is None:
            return self._send_simple(404, head)
        if target.is_dir():
            if raw_path is not None and not raw_path.endswith("/"):
                self.send_response(301)
                self.send_header("Location", raw_path + "/")
                return self._end_headers_with_body(b"moved\n", head)
            return self._autoindex(target, head)
        if not target.is_file():
            if target.name == "index.txt" and target.parent.is_dir():
                return self._plain_index(target.parent, head)
            return self._send_simple(404, head)
        return self._send_file(target, head, ranges, max_range)

    def _autoindex(self, directory, head):
        lines = ["<!DOCTYPE html>", "<html><head><title>Index of %s</title></head><body>"
                 % html.escape(str(directory.name)),
                 '<a href="?C=N;O=D">Name</a> <a href="?C=S;O=A">Size</a>',
                 '<a href="/elsewhere/outside">outside</a>',
                 "<hr><pre>", '<a href="../">../</a>']
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            name = entry.name + ("/" if entry.is_dir() else "")
            lines.append('<a href="%s">%s</a>' % (html.escape(urllib.parse.quote(name), True),
                                                  html.escape(name)))
        lines.append("</pre><hr></body></html>")
        self.send_response(200)
        self._end_headers_with_body("\n".join(lines).encode("utf-8"), head,
                                    "text/html; charset=utf-8")

    def _plain_index(self, directory, head):
        lines = []
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                lines.append("%s %d %d\n" % (urllib.parse.quote(entry.name), st.st_size,
                                             int(st.st_mtime)))
        self.send_response(200)
        self._end_headers_with_body("".join(lines).encode("utf-8"), head)

    def _parse_range(self, size):
        """None (serve everything), (start, end) inclusive, or "416"."""
        value = self.headers.get("Range")
        if not value:
            return None
        m = _RANGE_RE.fullmatch(value.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return None
        if m.group(1):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
            if m.group(2) and end < start:
                return None
            if start >= size:
                return "416"
            return start, min(end, size - 1)
        suffix = int(m.group(2))
        if suffix == 0 or size == 0:
            return "416"
        return max(0, size - suffix), size - 1

    def _send_file(self, target, head, ranges, max_range):
        try:
            f = open(target, "rb")
        except OSError:
            return self._send_simple(403, head)
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            rng = self._parse_range(size) if ranges and self.command == "GET" else None
            if rng == "416":
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                return self._end_headers_with_body(b"", head)
            if rng is None:
                start, length = 0, size
                self.send_response(200)
            else:
                start, end = rng
                if max_range is not None:
                    end = min(end, start + max_range - 1)
                length = end - start + 1
                self.send_response(206)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.send_header("Accept-Ranges", "none" if not ranges else "bytes")
            self.end_headers()
            if head:
                return
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(65536, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False      # handler threads are joined by server_close()
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, root, tls_context=None):
        self.root = Path(root)
        self.tls = tls_context is not None
        self.auth = None
        self.short_max = 1000
        self.requests = []
        self.stopping = threading.Event()
        self._conns = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls_context is not None:
            # the handshake happens in the handler thread (see _Handler.setup)
            self.socket = tls_context.wrap_socket(self.socket, server_side=True,
                                                  do_handshake_on_connect=False)

    def track(self, sock):
        with self._conns_lock:
            self._conns.add(sock)

    def untrack(self, sock):
        with self._conns_lock:
            self._conns.discard(sock)

    def shutdown_connections(self):
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                # the plain socket's shutdown: works under an SSLSocket too
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # Clients that hang up early (the driver closes a response it no
        # longer needs) or reject our certificate are normal in these tests.
        LOG.debug("httpd: error serving %s", client_address, exc_info=True)


class HTTPTestServer:
    """The server plus its thread. ``base_url`` has no trailing slash."""

    def __init__(self, root, tls_context=None, auth=None):
        self.root = Path(root)
        self._httpd = _Server(self.root, tls_context)
        self._httpd.auth = auth
        self.port = self._httpd.server_address[1]
        scheme = "https" if tls_context is not None else "http"
        self.base_url = "%s://127.0.0.1:%d" % (scheme, self.port)
        self._thread = None

    @property
    def requests(self):
        return self._httpd.requests

    @property
    def auth(self):
        return self._httpd.auth

    @auth.setter
    def auth(self, value):
        self._httpd.auth = value

    @property
    def short_max(self):
        return self._httpd.short_max

    @short_max.setter
    def short_max(self, value):
        self._httpd.short_max = value

    def url(self, path=""):
        return self.base_url + "/" + path.lstrip("/")

    def start(self):
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="gsfs-test-httpd-%d" % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._httpd.stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10)
        self._httpd.shutdown_connections()
        self._httpd.server_close()          # joins the handler threads
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the test HTTP server thread did not stop")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def make_self_signed_cert(directory, common_name="127.0.0.1"):
    """(cert_path, key_path) of a new self-signed certificate for 127.0.0.1 and
    localhost, made with the openssl CLI; None when openssl is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    directory = Path(directory)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=%s" % common_name,
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    return cert, key


def server_tls_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
