"""systemd readiness notification (sd_notify(3)), stdlib only.

systemd passes ``NOTIFY_SOCKET`` to ``Type=notify`` services: a filesystem path
(``/run/systemd/notify``) or an abstract-namespace name written with a leading
``@``.  Each notification is one datagram of newline-separated ``KEY=VALUE``
assignments.  Outside systemd the variable is unset and every call here is a
cheap no-op returning False.  Nothing here ever raises: a failed notification
is logged at debug level and reported by the return value, because the
filesystem must keep working whether or not anyone listens.

``gsfs@.service`` uses ``NotifyAccess=main``: only the daemon's main process
may notify, so send from the process that systemd started (the foreground
``gsfs mount -f``), not from worker children.
"""

import logging
import os
import socket

LOG = logging.getLogger(__name__)

__all__ = [
    "sd_notify",
    "notify_ready",
    "notify_stopping",
    "notify_status",
    "notify_extend_timeout",
]


def _address(value):
    """NOTIFY_SOCKET value -> AF_UNIX address, or None when unsupported."""
    if value.startswith("@"):
        # Abstract namespace: the leading '@' stands for a NUL byte.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Newer systemd may also hand out "vsock:CID:PORT"; gsfs runs on the host
    # and never needs that, so treat it as unsupported rather than guess.
    return None


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``.

    Returns True when the datagram was sent, False when ``NOTIFY_SOCKET`` is
    unset or empty, unsupported, or sending failed.  Never raises.
    """
    value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    address = _address(value)
    if address is None:
        LOG.debug("sd_notify: unsupported NOTIFY_SOCKET %r, not notifying", value)
        return False
    try:
        data = state.encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sent = sock.send(data)
        if sent != len(data):
            LOG.debug("sd_notify: short send (%d of %d bytes) to %r", sent, len(data), value)
            return False
    except Exception as exc:  # noqa: BLE001 - must never take the daemon down
        LOG.debug("sd_notify: sending %r to %r failed: %s", state, value, exc)
        return False
    LOG.debug("sd_notify: sent %r", state)
    return True


def _one_line(text):
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return " ".join(str(text).splitlines())


def notify_ready(status: str | None = None) -> bool:
    """Tell systemd start-up is complete (the mount is ready)."""
    state = "READY=1"
    if status:
        state += "\nSTATUS=" + _one_line(status)
    return sd_notify(state)


def notify_stopping(status: str | None = None) -> bool:
    """Tell systemd the daemon is shutting down (unmount/upload drain begun)."""
    state = "STOPPING=1"
    if status:
        state += "\nSTATUS=" + _one_line(status)
    return sd_notify(state)


def notify_status(text: str) -> bool:
    """Set the free-form status line shown by ``systemctl status``."""
    return sd_notify("STATUS=" + _one_line(text))


def notify_extend_timeout(seconds: float) -> bool:
    """Ask systemd for ``seconds`` more before the current start/stop timeout.

    Useful while ``gsfs umount`` waits for uploads that are still making
    progress: send it periodically (each call extends from *now*) instead of
    relying on a fixed ``TimeoutStopSec=``.  Ignored by systemd outside a
    start/stop job.
    """
    usec = max(0, int(seconds * 1_000_000))
    return sd_notify(f"EXTEND_TIMEOUT_USEC={usec}")
