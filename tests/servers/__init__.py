"""Real servers for the tests (Ceph, HTTP, Glance, a Keystone stand-in, a fault proxy)."""

import atexit
import sys


def stop_at_exit(live, lock):
    """The last resort of a session whose fixtures did not tear down (an
    interrupted run): at exit, stop every server still in ``live`` (a set
    guarded by ``lock``), reporting failures and going on."""

    def stop_all():
        with lock:
            servers = list(live)
        for server in servers:
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - report and go on at exit
                sys.stderr.write("stopping %r at exit failed: %s\n" % (server, e))

    atexit.register(stop_all)
