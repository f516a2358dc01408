"""Logging for the gsfs daemon and CLI: destinations, formats, secret redaction.

``setup_logging(debug, foreground, log_file)`` picks one destination:

* ``log_file`` given: that file (``WatchedFileHandler``, so logrotate's
  move-and-create works without a signal), timestamped lines;
* running under systemd with stderr connected to the journal (``JOURNAL_STREAM``
  names the device:inode of our stderr, see systemd.exec(5)), or started by
  systemd (``INVOCATION_ID``) without ``JOURNAL_STREAM``: stderr, no timestamp
  (journald adds its own), each line prefixed with an sd-daemon(3) ``<N>``
  syslog priority so journald records the level (``journalctl -p warning``);
* ``foreground``: stderr, timestamped lines;
* otherwise (a background daemon without a log file): syslog via ``/dev/log``
  when it exists (journald reads it too), else stderr.

Every record is one line: newlines and carriage returns inside a message are
written as ``\\n``/``\\r`` (a file name is user input and must not be able to
forge log lines).  A traceback is appended, on the following lines, when the
record carries ``exc_info`` (``LOG.exception``, ``exc_info=True``); in debug
mode a WARNING-or-worse record logged inside an ``except`` block gets the
traceback of the exception being handled as well.  A record logged with
``extra={"multiline": True}`` keeps its line breaks (a stack dump); in journal
mode every line of a multi-line record carries the priority prefix.

``SecretFilter`` sits on every handler installed here and rewrites the final
message, traceback and stack text of each record before any handler formats
it: values registered with ``register_secret()``, URI passwords
(``s3://key:secret@host`` -> ``s3://key:***@host``), ``aws_secret_access_key=``
style assignments, ceph keyring ``key = ...`` lines and cephx keys,
``Authorization:``-like headers and ``X-Amz-Signature=``/``Signature=`` query
values become ``***``.
"""

import logging
import logging.handlers
import os
import re
import stat
import sys
import threading
import urllib.parse

from gsfs import location

__all__ = [
    "setup_logging",
    "set_debug",
    "register_secret",
    "clear_secrets",
    "redact",
    "SecretFilter",
    "JournalFormatter",
    "LineFormatter",
    "journal_stream_is_stderr",
]

MASK = "***"

#: Loggers switched to DEBUG by ``--debug`` (gsfs itself plus the S3 client's
#: request traces).  Everything else stays at INFO/WARNING.
DEBUG_LOGGERS = ("gsfs", "botocore", "boto3", "s3transfer", "urllib3", "swiftclient",
                 "keystoneauth")

#: Libraries too chatty at INFO for normal operation.
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "stevedore", "swiftclient",
                 "keystoneauth")

#: Messages longer than this are cut (botocore's debug output can contain whole
#: request bodies); see ``_truncate`` for how a secret at the cut is handled.
MAX_MESSAGE_CHARS = 32 * 1024

#: Registered secrets shorter than this are ignored: masking every "ab" in the
#: log would make it useless and hide nothing of value.
MIN_SECRET_CHARS = 4

_HANDLER_MARK = "_gsfs_handler"

# ----------------------------------------------------------------- redaction

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern | None = None

# scheme://user:password@host: where the password ends is gsfs.location's one
# rule (credentials_span), also for a password holding '/' (S3 secret keys)
_URI_START_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://")

# name = value / name: value / 'name': 'value' / "name"="value"
_SECRET_NAMES = (
    r"aws_secret_access_key|aws_session_token|aws_security_token|secret_access_key"
    r"|s3_store_secret_key|s3_store_access_key|rbd_store_secret|secret_key|secretkey"
    r"|password|passwd|auth_key"
)
# Not preceded by a name character, except the "n" of an escaped "\\n" in a repr.
_NAME_START = r"(?:(?<![A-Za-z0-9_-])|(?<=\\[rnt]))"

_ASSIGNMENT_RE = re.compile(
    r"(?P<head>" + _NAME_START + r"(?:" + _SECRET_NAMES + r")['\"]?\s*[:=]\s*)"
    r"(?:(?P<q>['\"])(?P<quoted>[^'\"]*)(?P=q)|(?P<bare>[^\s'\",;&)}\]\\]+))",
    re.IGNORECASE)

# Ceph keyring:  [client.glance]\n\tkey = AQB...==
_KEYRING_RE = re.compile(r"(?P<head>(?:^|(?<=\\n)|(?<=\]))\s*key\s*=\s*)(?P<secret>[^\s'\"\\]+)",
                         re.IGNORECASE | re.MULTILINE)
# A cephx secret anywhere: base64 of 28 bytes, which starts with "AQ".
_CEPHX_RE = re.compile(r"(?<![A-Za-z0-9+/])AQ[A-Za-z0-9+/]{36}==")

# HTTP headers as text ("Authorization: AWS4-HMAC-SHA256 ...") or in a dict
# repr ("'Authorization': b'AWS4-HMAC-SHA256 ...'").  The value ends at a
# quote, a backslash (an escaped \r\n inside a bytes repr) or a line end.
_HEADER_RE = re.compile(
    r"(?P<head>" + _NAME_START + r"['\"]?(?:proxy-authorization|authorization"
    r"|x-amz-security-token|x-auth-token|x-auth-key|x-subject-token|x-storage-token"
    r"|cookie|set-cookie)['\"]?\s*[:=]\s*(?:b?['\"])?)(?P<secret>[^'\"\\\r\n]+)",
    re.IGNORECASE)

# Pre-signed URL query values, and botocore.auth's debug line "Signature:\n<hex>"
# (a pre-signed URL's signature is a bearer credential until it expires).
_QUERY_RE = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_-])(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token"
    r"|Signature|AWSAccessKeyId)(?:=|:\s*))(?P<secret>[^&\s'\",\\]+)",
    re.IGNORECASE)


def register_secret(value) -> None:
    """Mask ``value`` wherever it appears in a log message from now on.

    Also masks its URL-encoded form (secrets appear in URIs).  ``None``, empty
    and very short values (< MIN_SECRET_CHARS) are ignored.
    """
    global _secrets_re
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value)
    variants = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
    variants = {v for v in variants if len(v) >= MIN_SECRET_CHARS}
    if not variants:
        return
    with _secrets_lock:
        if variants <= _secrets:
            return
        _secrets.update(variants)
        ordered = sorted(_secrets, key=len, reverse=True)   # longest first
        _secrets_re = re.compile("|".join(re.escape(s) for s in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secrets_re
    with _secrets_lock:
        _secrets.clear()
        _secrets_re = None


def _mask_uri_passwords(text):
    out, pos = [], 0
    for match in _URI_START_RE.finditer(text):
        if match.start() < pos:
            continue
        span = location.credentials_span(text, match.start())
        if span is None:
            continue
        begin, end = span
        colon = text.find(":", begin, end)
        if colon < 0:
            continue
        out.append(text[pos:colon + 1])
        out.append(MASK)
        pos = end - 1                       # the '@'
    out.append(text[pos:])
    return "".join(out)


def _mask_group(match, group="secret"):
    text = match.group(0)
    start, end = match.span(group)
    base = match.start(0)
    return text[:start - base] + MASK + text[end - base:]


def _mask_assignment(match):
    head = match.group("head")
    if match.group("q") is not None:
        q = match.group("q")
        return head + q + MASK + q
    return head + MASK


def redact(text: str) -> str:
    """Return ``text`` with every known kind of secret replaced by ``***``."""
    if not text:
        return text
    pattern = _secrets_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _mask_uri_passwords(text)
    text = _HEADER_RE.sub(_mask_group, text)
    text = _QUERY_RE.sub(_mask_group, text)
    text = _ASSIGNMENT_RE.sub(_mask_assignment, text)
    text = _KEYRING_RE.sub(_mask_group, text)
    text = _CEPHX_RE.sub(MASK, text)
    return text


def _truncate(text):
    """Cut very long messages without leaving half a secret at the cut.

    Secrets contain no whitespace, quote or comma, so the cut moves back to the
    last such separator (at most 512 characters back, else drops those 512):
    a secret straddling the cut disappears entirely instead of leaving a
    prefix that no pattern recognises.
    """
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    cut = text[:MAX_MESSAGE_CHARS]
    window = cut[-512:]
    positions = [window.rfind(c) for c in " \t\n'\",;&"]
    best = max(positions)
    keep = len(cut) - len(window) + best + 1 if best >= 0 else len(cut) - len(window)
    return "%s ...[%d characters cut]" % (cut[:keep], len(text) - keep)


class SecretFilter(logging.Filter):
    """Redact secrets from a record's message, traceback and stack text.

    Installed on handlers.  It renders the message once (``getMessage()``),
    stores the redacted text as ``record.msg`` with no ``args``, and
    pre-renders ``exc_text`` redacted, so every formatter downstream -- ours or
    a stock ``logging.Formatter`` -- sees only redacted text.  Idempotent, so
    several handlers sharing a record are fine.
    """

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception as exc:  # a broken %-format must not kill logging
            message = "%r %% %r (log format error: %s)" % (record.msg, record.args, exc)
        record.msg = redact(_truncate(message))
        record.args = ()
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# ----------------------------------------------------------------- formatting

_state = {"debug": False}


class _ActiveExceptionFilter(logging.Filter):
    """Debug mode: attach the exception being handled to WARNING+ records.

    Runs at emit time in the logging thread, i.e. inside the caller's
    ``except`` block, so ``sys.exc_info()`` is the caller's exception.
    """

    def filter(self, record):
        if (_state["debug"] and record.levelno >= logging.WARNING
                and not record.exc_info and not record.exc_text):
            info = sys.exc_info()
            if info[0] is not None:
                record.exc_info = info
        return True


def _one_line(text):
    return text.replace("\r", "\\r").replace("\n", "\\n")


_PRIORITIES = (  # (minimum level, syslog priority)
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


def syslog_priority(levelno: int) -> int:
    """Python level -> syslog priority (crit 2, err 3, warning 4, info 6, debug 7)."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


class LineFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 1234 WARNING gsfs.fs: message`` (one line)."""

    def __init__(self, timestamps=True):
        if timestamps:
            fmt = "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s: %(message)s"
        else:
            fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt, datefmt="%Y-%m-%d %H:%M:%S")

    def _lines(self, record):
        message = record.getMessage()
        if not getattr(record, "multiline", False):
            message = _one_line(message)
        record.message = message
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        extra = [record.exc_text, record.stack_info and self.formatStack(record.stack_info)]
        return text, [e for e in extra if e]

    def format(self, record):
        text, extra = self._lines(record)
        for block in extra:
            text += "\n" + block.rstrip("\n")
        return text


class JournalFormatter(LineFormatter):
    """``<4>WARNING gsfs.fs: message``: sd-daemon(3) priority prefix, no time.

    journald strips the prefix and stores the priority; every line of a
    multi-line record gets the prefix so a traceback keeps its level.
    """

    def __init__(self):
        super().__init__(timestamps=False)

    def format(self, record):
        text, extra = self._lines(record)
        prefix = "<%d>" % syslog_priority(record.levelno)
        lines = text.split("\n")
        for block in extra:
            lines.extend(block.rstrip("\n").split("\n"))
        return "\n".join(prefix + line for line in lines)


class _SyslogFormatter(LineFormatter):
    """For SysLogHandler, which adds the ``<PRI>`` itself: ``gsfs[PID]: ...``."""

    def __init__(self):
        super().__init__(timestamps=False)

    def format(self, record):
        return "gsfs[%d]: %s" % (record.process, super().format(record))


# ----------------------------------------------------------------- destinations

def journal_stream_is_stderr(stream=None) -> bool:
    """True if ``$JOURNAL_STREAM`` (``DEV:INODE``) is the stream's file.

    systemd sets it when stdout/stderr go to the journal; a process whose
    stderr was redirected since (a log file, /dev/null) inherits a stale
    value, hence the comparison (systemd.exec(5), "$JOURNAL_STREAM").
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, OSError, ValueError, TypeError):
        return False


def _stream_is_useful(stream):
    """False for a closed stream or /dev/null (a daemonized process)."""
    if stream is None:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        # No file descriptor (e.g. io.StringIO in tests): it is writable.
        return not getattr(stream, "closed", False)
    null = os.stat(os.devnull)
    return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev)


def _journal_mode(stream):
    if journal_stream_is_stderr(stream):
        return True
    # Started by systemd (INVOCATION_ID) but not connected to the journal
    # (StandardError=syslog/kmsg also honour <N>): use the prefix form too,
    # as long as stderr goes somewhere.
    return ("INVOCATION_ID" in os.environ and "JOURNAL_STREAM" not in os.environ
            and _stream_is_useful(stream))


def _make_handler(foreground, log_file, stream):
    if log_file:
        handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        handler.setFormatter(LineFormatter())
        return handler, "file"
    if _journal_mode(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JournalFormatter())
        return handler, "journal"
    if not foreground and os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:
            pass
        else:
            handler.setFormatter(_SyslogFormatter())
            return handler, "syslog"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter())
    return handler, "stderr"


def _apply_levels(debug):
    _state["debug"] = bool(debug)
    # The root stays at INFO even in debug mode: pyfuse3 and trio would
    # otherwise log per request without telling anything gsfs does not.
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("gsfs").setLevel(logging.DEBUG if debug else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if debug:
        for name in DEBUG_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)


def set_debug(debug: bool) -> None:
    """Switch debug logging on or off at runtime (levels only, same handler)."""
    _apply_levels(debug)


def setup_logging(debug=False, foreground=False, log_file=None, stream=None):
    """Configure the root logger for gsfs; returns the installed handler.

    Safe to call again (e.g. after daemonizing): handlers installed by an
    earlier call are removed and closed first; other handlers are left alone.
    ``stream`` defaults to ``sys.stderr`` at call time.
    """
    stream = stream if stream is not None else sys.stderr
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    handler, kind = _make_handler(foreground, log_file, stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.gsfs_destination = kind
    handler.addFilter(_ActiveExceptionFilter())
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    _apply_levels(debug)
    logging.captureWarnings(True)
    return handler
