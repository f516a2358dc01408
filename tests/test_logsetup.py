"""gsfs.logsetup: destinations, formats, levels and secret redaction, through real logging."""

import io
import logging
import os
import re
import sys

import pytest

from gsfs import logsetup

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
CEPHX_KEY = "AQBnFVxlAAAAABAAxVkOXgH8b5lfZ8zGfkbZ3g=="

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \d+ (DEBUG|INFO|WARNING|ERROR"
                         r"|CRITICAL) [\w.]+: ")

LOG = logging.getLogger("gsfs.test")


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch):
    """Leave the logging module exactly as it was; no systemd environment."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    names = ("", "gsfs", "py.warnings") + logsetup.DEBUG_LOGGERS + logsetup.QUIET_LOGGERS
    saved_levels = {name: logging.getLogger(name).level for name in names}
    logsetup.clear_secrets()
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)
    logsetup.clear_secrets()
    logsetup._state["debug"] = False


def _secrets_absent(text):
    for secret in (SECRET_KEY, ACCESS_KEY, CEPHX_KEY, "hunter2hunter2", "sig0123456789abcdef",
                   "dXNlcjpwYXNzd29yZA", "cred-secret-part", "TOKEN-SECRET-VALUE"):
        assert secret not in text, "secret %r leaked into the log:\n%s" % (secret, text)
    # the URL-encoded form of the S3 secret key too
    assert "wJalrXUtnFEMI%2FK7MDENG" not in text


def _log_everything():
    """One record per kind of secret, as the daemon and its libraries write them."""
    LOG.info("store uri s3://%s:%s@rgw.example:8080/images/abc", ACCESS_KEY, SECRET_KEY)
    LOG.info("store uri swift+https://tenant%3Auser:hunter2hunter2@keystone/v3/x")
    LOG.info("encoded %s in a query", "wJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY")
    LOG.info("options {'aws_access_key_id': 'x', 'aws_secret_access_key': '%s'}", "hunter2hunter2")
    LOG.info("env AWS_SECRET_ACCESS_KEY=hunter2hunter2 AWS_SESSION_TOKEN=TOKEN-SECRET-VALUE")
    LOG.warning("keyring /etc/ceph/ceph.client.glance.keyring:\n[client.glance]\n\tkey = %s\n",
                CEPHX_KEY)
    LOG.warning("rados conf key=%s mon_host=10.0.0.1", CEPHX_KEY)
    LOG.debug("Sending http request: <AWSPreparedRequest method=GET, headers={'Authorization': "
              "b'AWS4-HMAC-SHA256 Credential=%s/20240101/us-east-1/s3/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=sig0123456789abcdef', "
              "'X-Amz-Security-Token': b'TOKEN-SECRET-VALUE'}>", ACCESS_KEY)
    LOG.debug("send: b'GET / HTTP/1.1\\r\\nHost: h\\r\\nAuthorization: Basic dXNlcjpwYXNzd29yZA"
              "\\r\\n'")
    LOG.error("GET https://bucket.s3.example/obj?X-Amz-Algorithm=AWS4-HMAC-SHA256"
              "&X-Amz-Credential=cred-secret-part%2F20240101&X-Amz-Signature=sig0123456789abcdef"
              " failed")
    LOG.error("GET https://bucket.s3.example/obj?AWSAccessKeyId=%s&Expires=1&Signature="
              "sig0123456789abcdef failed", ACCESS_KEY)
    try:
        raise ConnectionError("cannot reach s3://%s:%s@rgw/" % (ACCESS_KEY, SECRET_KEY))
    except ConnectionError:
        LOG.exception("upload of images/abc failed")


def test_log_file_has_timestamps_and_no_secrets(tmp_path):
    log_file = tmp_path / "gsfs.log"
    handler = logsetup.setup_logging(debug=True, foreground=False, log_file=str(log_file))
    assert handler.gsfs_destination == "file"
    logsetup.register_secret(SECRET_KEY)
    logsetup.register_secret(ACCESS_KEY)
    _log_everything()
    handler.flush()
    text = log_file.read_text()
    _secrets_absent(text)
    assert text.count("***") >= 12
    assert "s3://***:***@rgw.example:8080/images/abc" in text
    assert "Traceback (most recent call last)" in text
    assert "ConnectionError: cannot reach s3://***:***@rgw/" in text
    records = [line for line in text.splitlines() if TIMESTAMPED.match(line)]
    assert len(records) == 12
    # the multi-line keyring message is one line, its line breaks escaped
    keyring = [line for line in records if "keyring" in line]
    assert keyring and keyring[0].endswith("[client.glance]\\n\tkey = ***\\n")


def test_stderr_in_the_foreground_is_timestamped_one_line_per_record():
    stream = io.StringIO()
    handler = logsetup.setup_logging(foreground=True, stream=stream)
    assert handler.gsfs_destination == "stderr"
    LOG.info("name with a newline: %r", "evil\nWARNING gsfs: forged line")
    LOG.info("raw newline: %s", "evil\n2024-01-01 00:00:00.000 1 ERROR gsfs: forged")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert all(TIMESTAMPED.match(line) for line in lines)
    assert lines[1].endswith("raw newline: evil\\n2024-01-01 00:00:00.000 1 ERROR gsfs: forged")


def test_journald_prefix_when_journal_stream_is_our_stderr(tmp_path, monkeypatch):
    """JOURNAL_STREAM names stderr's device:inode -> <N> prefixes, no timestamps."""
    path = tmp_path / "journal-stream"
    with open(path, "w") as fake_journal:
        st = os.fstat(fake_journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", "%d:%d" % (st.st_dev, st.st_ino))
        monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        monkeypatch.setattr(sys, "stderr", fake_journal)
        handler = logsetup.setup_logging(debug=True, foreground=True)
        assert handler.gsfs_destination == "journal"
        logsetup.register_secret(SECRET_KEY)
        LOG.debug("debug %s", SECRET_KEY)
        LOG.info("info")
        LOG.warning("warning")
        LOG.error("error")
        LOG.critical("critical")
        try:
            raise ValueError("bad value " + SECRET_KEY)
        except ValueError:
            LOG.exception("failed")
        handler.flush()
    text = path.read_text()
    lines = text.splitlines()
    assert lines[:5] == ["<7>DEBUG gsfs.test: debug ***", "<6>INFO gsfs.test: info",
                         "<4>WARNING gsfs.test: warning", "<3>ERROR gsfs.test: error",
                         "<2>CRITICAL gsfs.test: critical"]
    assert lines[5] == "<3>ERROR gsfs.test: failed"
    # every traceback line carries the record's priority, so journald keeps its level
    assert len(lines) > 7 and all(line.startswith("<3>") for line in lines[5:])
    assert lines[-1] == "<3>ValueError: bad value ***"
    assert SECRET_KEY not in text
    assert not any(TIMESTAMPED.match(line[3:]) for line in lines)


def test_stale_journal_stream_means_plain_stderr(monkeypatch):
    """A process whose stderr is no longer the journal must not write <N> prefixes."""
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()
    handler = logsetup.setup_logging(foreground=True, stream=stream)
    assert handler.gsfs_destination == "stderr"
    LOG.warning("hello")
    assert TIMESTAMPED.match(stream.getvalue())


def test_invocation_id_without_journal_stream_uses_prefixes(monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    stream = io.StringIO()
    handler = logsetup.setup_logging(foreground=True, stream=stream)
    assert handler.gsfs_destination == "journal"
    LOG.warning("hello")
    assert stream.getvalue() == "<4>WARNING gsfs.test: hello\n"


def test_log_file_wins_over_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    handler = logsetup.setup_logging(foreground=True, log_file=str(tmp_path / "x.log"))
    assert handler.gsfs_destination == "file"


def test_levels_normal_and_debug():
    stream = io.StringIO()
    logsetup.setup_logging(debug=False, foreground=True, stream=stream)
    LOG.debug("gsfs-debug-hidden")
    LOG.info("gsfs-info-shown")
    logging.getLogger("botocore.endpoint").debug("botocore-debug-hidden")
    logging.getLogger("botocore.credentials").info("botocore-info-hidden")
    logging.getLogger("urllib3.connectionpool").warning("urllib3-warning-shown")
    logging.getLogger("pyfuse3").debug("pyfuse3-debug-hidden")
    text = stream.getvalue()
    assert "gsfs-info-shown" in text and "urllib3-warning-shown" in text
    assert "hidden" not in text

    stream = io.StringIO()
    logsetup.setup_logging(debug=True, foreground=True, stream=stream)
    LOG.debug("gsfs-debug-shown")
    logging.getLogger("botocore.endpoint").debug("botocore-debug-shown")
    logging.getLogger("urllib3.connectionpool").debug("urllib3-debug-shown")
    logging.getLogger("pyfuse3").debug("pyfuse3-debug-hidden")
    text = stream.getvalue()
    for word in ("gsfs-debug-shown", "botocore-debug-shown", "urllib3-debug-shown"):
        assert word in text
    assert "hidden" not in text

    logsetup.set_debug(False)
    LOG.debug("after-set-debug-hidden")
    assert "after-set-debug-hidden" not in stream.getvalue()


def test_tracebacks_only_when_asked_or_in_debug_mode():
    stream = io.StringIO()
    logsetup.setup_logging(debug=False, foreground=True, stream=stream)
    try:
        raise OSError(5, "Input/output error")
    except OSError as e:
        LOG.error("upload failed: %s", e)
    assert len(stream.getvalue().splitlines()) == 1
    try:
        raise OSError(5, "Input/output error")
    except OSError:
        LOG.error("upload failed", exc_info=True)
    assert "Traceback (most recent call last)" in stream.getvalue()

    stream = io.StringIO()
    logsetup.setup_logging(debug=True, foreground=True, stream=stream)
    try:
        raise OSError(5, "Input/output error")
    except OSError as e:
        LOG.error("upload failed: %s", e)      # no exc_info: debug mode adds the traceback
        LOG.info("info inside except: stays one line")
    text = stream.getvalue()
    assert "Traceback (most recent call last)" in text
    assert text.rstrip("\n").endswith("info inside except: stays one line")
    LOG.warning("outside except: one line")
    assert text.count("Traceback") == stream.getvalue().count("Traceback") == 1


def test_multiline_extra_keeps_line_breaks_with_prefixes(monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "x")
    stream = io.StringIO()
    logsetup.setup_logging(foreground=True, stream=stream)
    LOG.warning("task tree:\n  main\n    upload", extra={"multiline": True})
    assert stream.getvalue().splitlines() == [
        "<4>WARNING gsfs.test: task tree:", "<4>  main", "<4>    upload"]


def test_setup_twice_replaces_only_our_handler():
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    first = logsetup.setup_logging(foreground=True, stream=io.StringIO())
    second = logsetup.setup_logging(foreground=True, stream=io.StringIO())
    handlers = logging.getLogger().handlers
    assert second in handlers and first not in handlers and other in handlers
    logging.getLogger().removeHandler(other)


def test_secret_filter_on_a_plain_handler_and_args_dict():
    """SecretFilter works on any handler/formatter, including %(name)s-dict args."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(logsetup.SecretFilter())
    logger = logging.getLogger("gsfs.test.plain")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logsetup.register_secret(SECRET_KEY)
        logsetup.register_secret("ab")     # too short: ignored, not masked everywhere
        logsetup.register_secret(None)
        logger.warning("%(k)s and password=%(p)s", {"k": SECRET_KEY, "p": "hunter2hunter2"})
        logger.warning("broken format %d", "not a number")
        logger.warning("a short 'ab' stays readable")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING *** and password=***"
    assert lines[1].startswith("WARNING 'broken format %d'")
    assert lines[2] == "WARNING a short 'ab' stays readable"


def test_long_message_is_cut_without_leaving_part_of_a_secret():
    stream = io.StringIO()
    logsetup.setup_logging(foreground=True, stream=stream)
    logsetup.register_secret(SECRET_KEY)
    for shift in range(0, len(SECRET_KEY) + 2, 3):
        head = "x" * (logsetup.MAX_MESSAGE_CHARS - shift)
        LOG.info("%s %s tail", head, SECRET_KEY)
    text = stream.getvalue()
    assert SECRET_KEY[:6] not in text
    assert "characters cut]" in text
    assert all(len(line) < logsetup.MAX_MESSAGE_CHARS + 200 for line in text.splitlines())


def test_redact_leaves_ordinary_text_alone():
    for text in ("http://glance:9292/v2/images", "rbd://fsid/images/abc/snap",
                 "Committed s3/abc: 1048576 bytes", "object key=images/abc"):
        assert logsetup.redact(text) == text


def test_real_botocore_request_trace_is_redacted(http_server):
    """--debug: botocore's own request traces reach the log, signatures masked."""
    botocore_session = pytest.importorskip("botocore.session")
    botocore_config = pytest.importorskip("botocore.config")
    stream = io.StringIO()
    logsetup.setup_logging(debug=True, foreground=True, stream=stream)
    logsetup.register_secret(SECRET_KEY)
    logsetup.register_secret(ACCESS_KEY)
    session = botocore_session.get_session()
    client = session.create_client(
        "s3", region_name="us-east-1", endpoint_url=http_server.base_url,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    try:
        client.list_objects_v2(Bucket="images")
    except Exception:  # noqa: BLE001 - the test server is not S3; the trace is what counts
        pass
    # botocore's default presigning for S3 is SigV2 (Signature=, AWSAccessKeyId=)
    url_v2 = client.generate_presigned_url("get_object", Params={"Bucket": "images", "Key": "a"})
    v4 = session.create_client(
        "s3", region_name="us-east-1", endpoint_url=http_server.base_url,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=botocore_config.Config(signature_version="s3v4"))
    url_v4 = v4.generate_presigned_url("get_object", Params={"Bucket": "images", "Key": "a"})
    LOG.info("presigned: %s", url_v2)
    LOG.info("presigned: %s", url_v4)
    text = stream.getvalue()
    assert "botocore" in text and "Authorization" in text
    assert "&Signature=***" in text and "X-Amz-Signature=***" in text
    for url, name in ((url_v2, "&Signature="), (url_v4, "X-Amz-Signature=")):
        signature = url.split(name)[1].split("&")[0]
        assert len(signature) > 10 and signature not in text
    _secrets_absent(text)
