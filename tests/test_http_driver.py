"""The read-only http driver against a real local HTTP(S) server (tests/servers/httpd.py).

gsfs is configured the real way, through tests/storeconf.py: an ini file with
``enabled_backends = web:http`` parsed into the global oslo.config CONF, then
``register_store_opts`` and ``create_multi_stores``.
"""

import hashlib
import logging
import os
import socket
import threading
import time
import urllib.parse

import pytest

from gsfs import config, exceptions, location, multi_backend
from gsfs.drivers import http as http_driver
from tests.storeconf import ini, store_config  # noqa: F401  (store_config: a fixture)

PASSWORD = "s3cret"


# -- configuration ---------------------------------------------------------------

@pytest.fixture
def make_store(store_config):  # noqa: F811
    """make_store(base_url, extra=..., defaults=...) → the configured http store ``web``."""
    stores = []

    def options(lines):
        return dict((part.strip() for part in line.split("=", 1))
                    for line in lines.splitlines() if line.strip())

    def make(base_url=None, extra="", defaults=""):
        sections = {"DEFAULT": {"enabled_backends": "web:http"},
                    "glance_store": {"default_backend": "web"},
                    "web": {"gsfs_http_timeout": 5, "gsfs_http_base_url": base_url,
                            **options(extra)}}
        if defaults:
            sections["backend_defaults"] = options(defaults)
        store_config(ini(sections))
        store = multi_backend.get_store_from_store_identifier("web")
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            store.close()


@pytest.fixture(autouse=True)
def no_leftover_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, "threads left behind: %s" % left


def _write(server, name, data):
    path = server.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_creds(url, user="alice", password=PASSWORD):
    scheme, rest = url.split("://", 1)
    return "%s://%s:%s@%s" % (scheme, user, password, rest)


DATA = os.urandom(256 * 1024 + 123)


@pytest.fixture
def image(http_server):
    _write(http_server, "img.raw", DATA)
    return http_server.url("img.raw")


# -- configuration and identity -----------------------------------------------------

def test_store_from_ini(http_server, make_store):
    store = make_store(http_server.base_url)
    assert isinstance(store, http_driver.Store)
    assert store.get_schemes() == ("http", "https")
    assert store.url_prefix == "http"
    assert store.capabilities == 0x47       # READ_RANDOM | DRIVER_REUSABLE
    assert multi_backend.get_store_from_store_identifier("web") is store
    assert set(multi_backend.get_known_schemes_for_multi_store()) >= {"http", "https"}
    group = store.group_conf()
    opt = config.CONF._get_opt_info("https_insecure", config.SHARED_CONF_GROUP)["opt"]
    assert opt.default is False, (
        "https_insecure was registered with another default (glance_store's opts "
        "registered first in this process?)")
    assert group.https_insecure is False
    assert group.https_ca_certificates_file is None
    assert group.http_proxy_information == {}
    assert group.gsfs_http_base_url == http_server.base_url
    assert group.gsfs_http_timeout == 5


# -- get -----------------------------------------------------------------------------

def test_get_full(image, make_store):
    make_store()
    data, size = multi_backend.get(image, "web")
    assert size == len(DATA) == len(data)
    assert b"".join(data) == DATA
    data, size = multi_backend.get(image, None)          # search mode finds it too
    assert b"".join(data) == DATA and size == len(DATA)


def test_get_chunked_iteration(image, make_store):
    store = make_store()
    store.READ_CHUNKSIZE = 1000
    data, size = multi_backend.get(image, "web")
    chunks = list(data)
    assert max(len(c) for c in chunks) == 1000 and len(chunks) == -(-len(DATA) // 1000)
    assert b"".join(chunks) == DATA


@pytest.mark.parametrize("offset,chunk_size", [
    (0, 10), (1, 1), (5, None), (4096, 65536), (len(DATA) - 3, 10), (len(DATA) - 1, None),
    (len(DATA), 5), (len(DATA) + 100, None), (0, 0), (0, len(DATA) + 50),
])
def test_get_offset_and_length(image, make_store, http_server, offset, chunk_size):
    make_store()
    data, size = multi_backend.get(image, "web", offset=offset, chunk_size=chunk_size)
    end = len(DATA) if not chunk_size else offset + chunk_size
    assert b"".join(data) == DATA[offset:end]
    # as glance_store's filesystem driver: chunk_size given → size = chunk_size
    assert size == (chunk_size or len(DATA))
    if offset or chunk_size:
        ranges = [h.get("Range") for m, p, h in http_server.requests if m == "GET"]
        assert ranges[-1] == "bytes=%d-%s" % (offset, "" if not chunk_size
                                              else offset + chunk_size - 1)


@pytest.mark.parametrize("offset,chunk_size", [(0, 10), (70000, 5000), (len(DATA) - 5, 100),
                                               (len(DATA) + 1, 10), (100, None)])
def test_get_server_without_range_support(image, make_store, http_server, offset,
                                          chunk_size):
    """A server answering 200 to a Range request: the driver skips forward."""
    make_store()
    data, size = multi_backend.get(http_server.url("norange/img.raw"), "web",
                                   offset=offset, chunk_size=chunk_size)
    end = len(DATA) if not chunk_size else offset + chunk_size
    assert b"".join(data) == DATA[offset:end]
    assert size == (chunk_size or len(DATA))


def test_get_short_partial_answers_are_completed(image, make_store, http_server):
    http_server.short_max = 10000
    make_store()
    data, size = multi_backend.get(http_server.url("short/img.raw"), "web", offset=3,
                                   chunk_size=55555)
    assert b"".join(data) == DATA[3:55558] and size == 55555
    data, size = multi_backend.get(http_server.url("short/img.raw"), "web", offset=200000)
    assert b"".join(data) == DATA[200000:] and size == len(DATA)


def test_get_empty_image(http_server, make_store):
    _write(http_server, "empty", b"")
    make_store()
    data, size = multi_backend.get(http_server.url("empty"), "web")
    assert size == 0 and b"".join(data) == b""
    data, size = multi_backend.get(http_server.url("empty"), "web", offset=0, chunk_size=4)
    assert size == 4 and b"".join(data) == b""


def test_get_not_found(http_server, make_store):
    make_store()
    with pytest.raises(exceptions.NotFound) as e:
        multi_backend.get(http_server.url("missing.img"), "web")
    assert str(e.value) == "HTTP datastore could not find image at URI."
    with pytest.raises(exceptions.NotFound):
        multi_backend.get_size_from_uri_and_backend(http_server.url("missing.img"), "web")


def test_server_error_is_bad_store_uri(http_server, make_store):
    make_store()
    with pytest.raises(exceptions.BadStoreUri) as e:
        multi_backend.get(http_server.url("status/500"), "web")
    assert "500" in str(e.value) and "/status/500" in str(e.value)
    with pytest.raises(exceptions.BadStoreUri):
        multi_backend.get(http_server.url("status/403"), "web")


# -- redirects -------------------------------------------------------------------------

@pytest.mark.parametrize("code", [301, 302])
@pytest.mark.parametrize("hops", [1, 5])
def test_redirects_followed(image, http_server, make_store, code, hops):
    make_store()
    url = http_server.url("redirect/%d/%d/img.raw" % (code, hops))
    data, size = multi_backend.get(url, "web")
    assert b"".join(data) == DATA and size == len(DATA)
    assert multi_backend.get_size_from_uri_and_backend(url, "web") == len(DATA)
    data, size = multi_backend.get(url, "web", offset=10, chunk_size=20)
    assert b"".join(data) == DATA[10:30]


def test_relative_redirect_followed(image, http_server, make_store):
    make_store()
    data, _size = multi_backend.get(http_server.url("redirect/302/3/img.raw?rel=1"), "web")
    assert b"".join(data) == DATA


def test_too_many_redirects(image, http_server, make_store):
    make_store()
    url = http_server.url("redirect/301/6/img.raw")
    with pytest.raises(exceptions.MaxRedirectsExceeded) as e:
        multi_backend.get(url, "web")
    assert str(e.value) == "The HTTP URL exceeded 5 maximum redirects."
    with pytest.raises(exceptions.MaxRedirectsExceeded):
        multi_backend.get_size_from_uri_and_backend(url, "web")


@pytest.mark.parametrize("code", [303, 307, 308])
def test_other_redirects_are_bad_store_uri(image, http_server, make_store, code):
    make_store()
    with pytest.raises(exceptions.BadStoreUri) as e:
        multi_backend.get(http_server.url("redirect/%d/1/img.raw" % code), "web")
    assert str(code) in str(e.value)


# -- get_size, stat_image, read --------------------------------------------------------------

def test_get_size(image, make_store):
    make_store()
    assert multi_backend.get_size_from_uri_and_backend(image, "web") == len(DATA)


def test_stat_image(image, http_server, make_store):
    store = make_store(http_server.base_url)
    mtime = 1_600_000_000
    os.utime(http_server.root / "img.raw", (mtime, mtime))
    info = store.stat_image(store.location_for("img.raw"))
    assert (info.id, info.size, info.mtime, info.mtime_ns) == (
        "img.raw", len(DATA), float(mtime), mtime * 10**9)
    # HEAD refused (405): a one-byte ranged GET gives the size
    loc = location.get_location_from_uri_and_backend(http_server.url("nohead/img.raw"), "web")
    info = store.stat_image(loc)
    assert info.size == len(DATA) and info.mtime == mtime
    with pytest.raises(exceptions.NotFound):
        store.stat_image(store.location_for("nope"))


@pytest.mark.parametrize("path", ["img.raw", "norange/img.raw", "short/img.raw"])
def test_read(image, http_server, make_store, path):
    store = make_store()
    loc = location.get_location_from_uri_and_backend(http_server.url(path), "web")
    n = len(DATA)
    for offset, length in [(0, 1), (0, 4096), (1000, 131072), (n - 10, 10), (n - 10, 4096),
                           (n - 1, 1), (0, n), (0, n + 1000)]:
        assert store.read(loc, offset, length) == DATA[offset:offset + length], (offset, length)
    assert store.read(loc, n, 10) == b""
    assert store.read(loc, n + 12345, 10) == b""
    assert store.read(loc, 5, 0) == b""
    with pytest.raises(exceptions.Invalid):
        store.read(loc, -1, 10)


def test_read_not_found(http_server, make_store):
    store = make_store(http_server.base_url)
    with pytest.raises(exceptions.NotFound):
        store.read(store.location_for("nope"), 0, 10)


# -- unreachable and slow servers ----------------------------------------------------------------

def test_dead_port(make_store):
    store = make_store()
    url = "http://127.0.0.1:%d/img" % _dead_port()
    start = time.monotonic()
    with pytest.raises(exceptions.RemoteServiceUnavailable) as e:
        multi_backend.get(url, "web")
    assert "127.0.0.1" in str(e.value)
    with pytest.raises(exceptions.BadStoreUri) as e:
        multi_backend.get_size_from_uri_and_backend(url, "web")
    assert str(e.value).startswith("The HTTP URL is invalid: ")
    loc = location.get_location_from_uri_and_backend(url, "web")
    with pytest.raises(exceptions.RemoteServiceUnavailable):
        store.read(loc, 0, 10)
    with pytest.raises(exceptions.RemoteServiceUnavailable):
        store.stat_image(loc)
    assert time.monotonic() - start < 5
    # the original library error is chained
    try:
        multi_backend.get(url, "web")
    except exceptions.RemoteServiceUnavailable as exc:
        assert exc.__cause__ is not None


def test_timeout_is_bounded(image, http_server, make_store):
    store = make_store(extra="gsfs_http_timeout = 0.5")
    url = http_server.url("slow/30/img.raw")
    start = time.monotonic()
    with pytest.raises(exceptions.RemoteServiceUnavailable) as e:
        multi_backend.get(url, "web")
    assert "timed out" in str(e.value)
    with pytest.raises(exceptions.BadStoreUri):
        multi_backend.get_size_from_uri_and_backend(url, "web")
    assert time.monotonic() - start < 5
    assert store._conf().timeout == 0.5


# -- read-only -----------------------------------------------------------------------------

def test_read_only(image, http_server, make_store):
    import io
    store = make_store(http_server.base_url)
    with pytest.raises(exceptions.StoreAddDisabled):
        multi_backend.add(config.CONF, "new", io.BytesIO(b"x"), 1, "web")
    with pytest.raises(exceptions.StoreAddDisabled):
        multi_backend.add_with_multihash(config.CONF, "new", io.BytesIO(b"x"), 1, "web",
                                         "sha256")
    with pytest.raises(exceptions.StoreAddDisabled):
        multi_backend.add(config.CONF, "new", io.BytesIO(b"x"), 1, None)   # default backend
    with pytest.raises(exceptions.StoreDeleteNotSupported):
        multi_backend.delete(image, "web")
    with pytest.raises(exceptions.StoreAddDisabled):
        store.add_image("new", io.BytesIO(b"x"), 1)
    loc = store.location_for("img.raw")
    with pytest.raises(exceptions.StoreAddDisabled):
        store.set_image_meta(loc, {"checksum": "x"})
    with pytest.raises(exceptions.StoreAddDisabled):
        store.rename(loc, "other")
    assert store.get_image_meta(loc) == {}
    assert store.capacity() is None
    assert (http_server.root / "img.raw").read_bytes() == DATA
    assert not (http_server.root / "new").exists()


# -- location_for and listing ----------------------------------------------------------------

def test_location_for(http_server, make_store):
    name = "a b%c+d\u00e9"
    payload = b"special name"
    _write(http_server, "images/" + name, payload)
    store = make_store(http_server.url("images") + "/")       # trailing slash is dropped
    loc = store.location_for(name)
    expected = http_server.url("images/" + urllib.parse.quote(name, safe=""))
    assert loc.get_store_uri() == expected
    assert loc.image_id == name
    assert store.read(loc, 0, 100) == payload
    data, size = multi_backend.get(loc.get_store_uri(), "web")
    assert b"".join(data) == payload and size == len(payload)
    with pytest.raises(exceptions.Invalid):
        store.location_for("../etc")


def test_location_for_without_base_url(make_store):
    store = make_store()
    with pytest.raises(exceptions.BadStoreConfiguration) as e:
        store.location_for("x")
    assert "gsfs_http_base_url" in str(e.value)
    assert store.list_images() == []


def test_list_images_autoindex(http_server, make_store):
    files = {"one.img": b"1" * 10, "two words.qcow2": b"2" * 2000, "\u00e9t\u00e9.raw": b"",
             "percent%41.iso": b"4" * 7}
    for name, data in files.items():
        _write(http_server, "images/" + name, data)
    (http_server.root / "images" / "subdir").mkdir()
    _write(http_server, "images/subdir/nested.img", b"nested")
    _write(http_server, "elsewhere/outside", b"not ours")
    mtime = 1_500_000_000
    os.utime(http_server.root / "images" / "one.img", (mtime, mtime))
    store = make_store(http_server.url("images"))
    images = {info.id: info for info in store.list_images()}
    assert set(images) == set(files)
    for name, data in files.items():
        assert images[name].size == len(data)
    assert images["one.img"].mtime == mtime
    # HEAD requests gave the sizes
    assert sum(1 for m, _p, _h in http_server.requests if m == "HEAD") == len(files)


def test_list_images_plain_generated(http_server, make_store):
    _write(http_server, "a.img", b"a" * 3)
    _write(http_server, "b c.img", b"b" * 5)
    store = make_store(http_server.base_url, extra="gsfs_http_index_url = %s"
                       % http_server.url("index.txt"))
    images = {info.id: info for info in store.list_images()}
    assert {k: v.size for k, v in images.items()} == {"a.img": 3, "b c.img": 5}
    assert all(isinstance(v.mtime, float) for v in images.values())
    assert not any(m == "HEAD" for m, _p, _h in http_server.requests)


def test_list_images_plain_written(http_server, make_store):
    _write(http_server, "imgs/known", b"k" * 11)
    _write(http_server, "imgs/sized-by-head", b"h" * 13)
    _write(http_server, "lists/images.txt", "\n".join([
        "# a comment",
        "",
        "known 11 1700000000.123456789",
        "sized-by-head",
        "dash%20name - 1700000001",
        "vanished",
        "bad-size abc",
        "too many fields here",
        "..",
    ]).encode())
    _write(http_server, "imgs/dash name", b"d" * 17)
    store = make_store(http_server.url("imgs"), extra="gsfs_http_index_url = %s"
                       % http_server.url("lists/images.txt"))
    images = {info.id: info for info in store.list_images()}
    assert {k: v.size for k, v in images.items()} == {"known": 11, "sized-by-head": 13,
                                                      "dash name": 17}
    assert images["known"].mtime_ns == 1700000000123456789
    assert images["dash name"].mtime == 1700000001


def test_list_images_index_missing(http_server, make_store):
    store = make_store(http_server.base_url, extra="gsfs_http_index_url = %s"
                       % http_server.url("no/such/index.txt"))
    with pytest.raises(exceptions.NotFound) as e:
        store.list_images()
    assert "index" in str(e.value)


def test_html_href_filter():
    page = """<html><body>
    <a href="../">Parent</a> <a href="?C=N;O=D">Name</a> <a href="sub/">sub/</a>
    <a href="plain.img">plain</a> <a href="./dot.img">dot</a>
    <a href="/images/abs.img">abs</a> <a href="http://h:8080/images/full.img">full</a>
    <a href="http://other/images/foreign.img">foreign</a> <a href="/other/x">x</a>
    <a href="q.img?x=1">q</a> <a href="frag.img#top">f</a> <a href="%C3%A9.img">e</a>
    <a href="#">top</a> <a href="index.html">self</a>
    </body></html>"""
    names = http_driver._html_index_names(page, "http://h:8080/images/index.html",
                                          "http://u:p@h:8080/images")
    assert names == ["plain.img", "dot.img", "abs.img", "full.img", "frag.img", "\u00e9.img"]


# -- URIs and credentials ---------------------------------------------------------------------

GOOD_URIS = [
    "http://example.com/images/x",
    "https://example.com:8443/x?sig=abc",
    "http://user:pass@example.com/x",
    "http://[2001:db8::1]:8080/x",
    "http://[2001:db8::1]/x",
    "http://example.com",
]
BAD_URIS = [
    ("http:///x", None),
    ("http://example.com:port/x", None),
    ("http://user@example.com/x", "Credentials are not well-formatted."),
    ("http://a:b:c@example.com/x", "Credentials are not well-formatted."),
    ("http://user:pass@example.com:bad/x", None),
]


@pytest.mark.parametrize("uri", GOOD_URIS)
def test_uri_round_trip(make_store, uri):
    make_store()
    loc = location.get_location_from_uri_and_backend(uri, "web")
    assert loc.get_store_uri() == uri
    # the same as glance_store's own parser
    from glance_store._drivers import http as glance_http
    theirs = glance_http.StoreLocation({}, None)
    theirs.parse_uri(uri)
    assert theirs.get_uri() == uri
    ours = loc.store_location
    assert (ours.netloc, ours.user, ours.password, ours.path) == (
        theirs.netloc, theirs.user, getattr(theirs, "password", None), theirs.path)


@pytest.mark.parametrize("uri,message", BAD_URIS)
def test_bad_uris(make_store, uri, message):
    make_store()
    with pytest.raises(exceptions.BadStoreUri) as e:
        location.get_location_from_uri_and_backend(uri, "web")
    if message:
        assert str(e.value) == message
    assert "pass" not in str(e.value)
    from glance_store import exceptions as glance_exceptions
    from glance_store._drivers import http as glance_http
    with pytest.raises(glance_exceptions.BadStoreUri):
        glance_http.StoreLocation({}, None).parse_uri(uri)


def test_at_sign_in_credentials(make_store):
    """Deliberate difference: the credentials end at the last '@' (as urllib3 reads them)."""
    make_store()
    loc = location.get_location_from_uri_and_backend("http://u:p@ss@host/x", "web")
    ours = loc.store_location
    assert (ours.user, ours.password, ours.netloc) == ("u", "p@ss", "host")
    assert loc.get_store_uri() == "http://u:p@ss@host/x"
    with pytest.raises(exceptions.BadStoreUri) as e:
        location.get_location_from_uri_and_backend("http://a@b@host/x", "web")
    assert str(e.value) == "Credentials are not well-formatted."


def test_unknown_scheme(make_store):
    make_store()
    with pytest.raises(exceptions.UnknownScheme):
        location.get_location_from_uri_and_backend("ftp://example.com/x", "web")


def test_credentials_used_and_never_shown(image, http_server, make_store, caplog):
    caplog.set_level(logging.DEBUG)
    store = make_store()
    _write(http_server, "secret.img", b"top secret")
    url = _with_creds(http_server.url("auth/secret.img"))
    loc = location.get_location_from_uri_and_backend(url, "web")
    assert loc.store_location.user == "alice" and loc.store_location.password == PASSWORD
    assert loc.get_store_uri() == url                       # glance_store re-emits them
    data, size = multi_backend.get(url, "web")
    assert b"".join(data) == b"top secret"
    assert multi_backend.get_size_from_uri_and_backend(url, "web") == 10
    assert store.read(loc, 4, 6) == b"secret"
    # a redirect to the same host keeps the credentials
    redirected = _with_creds(http_server.url("redirect/302/2/auth/secret.img"))
    assert b"".join(multi_backend.get(redirected, "web")[0]) == b"top secret"
    # sent as an Authorization header, never in the request line
    assert all(PASSWORD not in path for _m, path, _h in http_server.requests)
    assert any("Authorization" in h for _m, _p, h in http_server.requests)

    errors = []
    wrong = _with_creds(http_server.url("auth/secret.img"), password="wr0ngpass")
    with pytest.raises(exceptions.BadStoreUri) as e:
        multi_backend.get(wrong, "web")
    assert "401" in str(e.value) and "alice:***@" in str(e.value)
    errors.append(str(e.value))
    dead = _with_creds("http://127.0.0.1:%d/x" % _dead_port())
    with pytest.raises(exceptions.RemoteServiceUnavailable) as e:
        multi_backend.get(dead, "web")
    errors.append(str(e.value))
    with pytest.raises(exceptions.BadStoreUri) as e:
        multi_backend.get_size_from_uri_and_backend(dead, "web")
    errors.append(str(e.value))
    with pytest.raises(exceptions.BadStoreUri) as e:
        location.get_location_from_uri_and_backend(
            "http://alice:%s@127.0.0.1:bad/x" % PASSWORD, "web")
    errors.append(str(e.value))
    with pytest.raises(exceptions.NotFound) as e:
        multi_backend.get(_with_creds(http_server.url("auth/missing")), "web")
    errors.append(str(e.value))
    for text in errors + [r.getMessage() for r in caplog.records]:
        assert PASSWORD not in text and "wr0ngpass" not in text, text


def test_base_url_with_credentials(http_server, make_store, caplog):
    caplog.set_level(logging.DEBUG)
    _write(http_server, "private/p.img", b"private")
    store = make_store(_with_creds(http_server.url("auth/private")))
    loc = store.location_for("p.img")
    assert loc.get_store_uri() == _with_creds(http_server.url("auth/private/p.img"))
    assert store.read(loc, 0, 100) == b"private"
    assert [(i.id, i.size) for i in store.list_images()] == [("p.img", 7)]
    for r in caplog.records:
        assert PASSWORD not in r.getMessage()


# -- TLS -------------------------------------------------------------------------------------

def test_https_verified_by_default(https_server, make_store):
    _write(https_server, "tls.img", b"over tls")
    url = https_server.url("tls.img")
    make_store()
    with pytest.raises(exceptions.RemoteServiceUnavailable) as e:
        multi_backend.get(url, "web")
    message = str(e.value)
    assert "certificate" in message.lower() and "https_ca_certificates_file" in message
    assert "https_insecure" in message
    with pytest.raises(exceptions.BadStoreUri) as e:
        multi_backend.get_size_from_uri_and_backend(url, "web")
    assert "certificate" in str(e.value).lower()


def test_https_with_ca_file(https_server, make_store):
    _write(https_server, "tls.img", b"over tls")
    make_store(https_server.base_url,
               extra="https_ca_certificates_file = %s" % https_server.ca_file)
    url = https_server.url("tls.img")
    data, size = multi_backend.get(url, "web")
    assert b"".join(data) == b"over tls" and size == 8
    store = multi_backend.get_store_from_store_identifier("web")
    assert store.read(store.location_for("tls.img"), 5, 100) == b"tls"
    assert [i.id for i in store.list_images()] == ["tls.img"]


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("where", ["store", "backend_defaults"])
def test_https_insecure(https_server, make_store, where):
    _write(https_server, "tls.img", b"over tls")
    if where == "store":
        make_store(extra="https_insecure = True")
    else:
        make_store(defaults="https_insecure = True")
    data, size = multi_backend.get(https_server.url("tls.img"), "web", offset=5)
    assert b"".join(data) == b"tls" and size == 8


# -- the test server itself ----------------------------------------------------------------------

def test_server_ranges(http_server):
    import requests
    _write(http_server, "r.bin", b"0123456789")
    url = http_server.url("r.bin")
    with requests.Session() as s:
        r = s.get(url, headers={"Range": "bytes=2-4"})
        assert r.status_code == 206 and r.content == b"234"
        assert r.headers["Content-Range"] == "bytes 2-4/10"
        r = s.get(url, headers={"Range": "bytes=-3"})
        assert r.status_code == 206 and r.content == b"789"
        r = s.get(url, headers={"Range": "bytes=10-"})
        assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */10"
        r = s.get(url, headers={"Range": "bytes=0-1,3-4"})
        assert r.status_code == 200 and r.content == b"0123456789"
        r = s.head(url)
        assert r.headers["Content-Length"] == "10" and "Last-Modified" in r.headers
        assert hashlib.md5(s.get(url).content).hexdigest() == hashlib.md5(
            b"0123456789").hexdigest()


# -- proxies and threads ----------------------------------------------------------------------

def test_http_proxy_information(image, http_server, make_store):
    """The test server also answers proxy requests (absolute URI in the request line)."""
    make_store(extra="http_proxy_information = http:127.0.0.1:%d" % http_server.port)
    data, size = multi_backend.get("http://images.invalid/img.raw", "web", offset=7,
                                   chunk_size=9)
    assert b"".join(data) == DATA[7:16] and size == 9
    assert http_server.requests[-1][1] == "http://images.invalid/img.raw"


def test_concurrent_reads_share_one_store(image, http_server, make_store):
    store = make_store(http_server.base_url)
    loc = store.location_for("img.raw")
    errors = []

    def worker(seed):
        try:
            for i in range(20):
                offset = (seed * 7919 + i * 104729) % len(DATA)
                length = 1 + (seed * 31 + i * 977) % 70000
                assert store.read(loc, offset, length) == DATA[offset:offset + length]
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,), name="gsfs-test-reader-%d" % n)
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_unread_get_closes_its_connection(image, http_server, make_store):
    make_store()
    data, _size = multi_backend.get(image, "web")
    assert len(data[0]) > 0          # Indexable: pulls the first chunk
    data.close()
    data, _size = multi_backend.get(image, "web")
    data.close()                     # never iterated
    data, _size = multi_backend.get(image, "web")
    assert b"".join(data) == DATA
