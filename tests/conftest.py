"""The suite's plugins, and one check when the whole run ends: no gsfs mount
and no gsfs daemon is left below pytest's base temp (each fixture unmounts
what it mounted; this catches one that did not). A leftover fails the run.

Started in the background of a non-interactive shell (``cmd &``), pytest
inherits SIGINT ignored, and so would every cp, dd and gsfs it starts: the
tests that press Ctrl-C on them would see them go on. pytest_configure
restores Python's handler, so its children start with the default again.
"""

import signal
import sys

pytest_plugins = ["tests.servers.fixtures", "tests.servers.http_fixtures", "tests.servers.mounts",
                  "tests.servers.faultproxy", "tests.servers.glance"]


def pytest_configure(config):
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return
    from tests.servers.mounts import gsfs_daemons_under, gsfs_mounts_under

    left = gsfs_mounts_under(base) + gsfs_daemons_under(base)
    if left:
        sys.stderr.write("\nFAILED: gsfs mounts or daemons left behind by the tests:\n  %s\n"
                         % "\n  ".join(line.strip() for line in left))
        session.exitstatus = 1
