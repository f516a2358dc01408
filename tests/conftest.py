"""The suite's plugins, and one check when the whole run ends: no gsfs mount
and no gsfs daemon is left below pytest's base temp (each fixture unmounts
what it mounted; this catches one that did not). A leftover fails the run."""

import sys

pytest_plugins = ["tests.servers.fixtures", "tests.servers.http_fixtures", "tests.servers.mounts",
                  "tests.servers.faultproxy", "tests.servers.glance"]


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
