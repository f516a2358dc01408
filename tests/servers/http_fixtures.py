"""pytest fixtures for the local HTTP(S) test server (tests/servers/httpd.py).

``http_server``   a plain HTTP server on 127.0.0.1; ``.base_url`` (no trailing
                  slash), ``.root`` (a directory Path: drop files there),
                  ``.auth`` (("alice", "s3cret"): the credentials /auth/ wants),
                  ``.requests`` (what it received).
``https_server``  the same over TLS with a self-signed certificate for
                  127.0.0.1; ``.ca_file`` is that certificate. Skipped when the
                  openssl CLI is missing.

Both are stopped in ``finally``: no thread or socket outlives the test.
"""

import pytest

from tests.servers import httpd

HTTP_AUTH = ("alice", "s3cret")


@pytest.fixture
def http_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-root")
    server = httpd.HTTPTestServer(root, auth=HTTP_AUTH)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def http_tls_cert(tmp_path_factory):
    """(cert, key) paths of a self-signed certificate for 127.0.0.1."""
    made = httpd.make_self_signed_cert(tmp_path_factory.mktemp("http-tls"))
    if made is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    return made


@pytest.fixture
def https_server(tmp_path_factory, http_tls_cert):
    cert, key = http_tls_cert
    root = tmp_path_factory.mktemp("https-root")
    server = httpd.HTTPTestServer(root, tls_context=httpd.server_tls_context(cert, key),
                                  auth=HTTP_AUTH)
    server.ca_file = str(cert)
    server.start()
    try:
        yield server
    finally:
        server.stop()
