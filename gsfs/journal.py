"""A small local journal of work this host has in progress on a shared backend
(the S3 driver journals its multipart uploads with it, the Swift driver its
segmented uploads). ``begin``/``end`` record a piece of work and its end.

One JSON file per entry in one directory, written atomically (temp file, fsync,
rename) and removed when the work ends. After a crash the entries left behind
name the work and the process that started it, so a later cleanup can tell
"started here, and that process is gone" from "still running" and from "not
ours" (no entry).

A process is identified by its pid plus its start time and the boot id (from
/proc), so a pid reused by another process, e.g. after a reboot, does not keep
a dead process's entries alive.
"""

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket

from gsfs import paths, process

LOG = logging.getLogger(__name__)

_SUFFIX = ".json"


def default_dir(name):
    """``/var/lib/gsfs/<name>`` as root, else ``$XDG_STATE_HOME/gsfs/<name>``
    (``~/.local/state/gsfs/<name>``; gsfs/paths.py)."""
    return os.path.join(paths.base_dir("state"), name)


class Journal:
    """Entries (JSON-able dicts) by name, one file each in ``directory``,
    which is created on the first add. Failures are logged, never raised: the
    journal only helps a later cleanup."""

    def __init__(self, directory):
        self.directory = directory

    def _path(self, name):
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.directory, digest[:40] + _SUFFIX)

    def add(self, name, entry):
        """Store (or replace) ``entry`` under ``name``; False if it could not."""
        path = self._path(name)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(entry, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            LOG.warning("Could not write the journal entry %s: %s", path, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        return True

    def begin(self, name, **fields):
        """Record work this process starts: ``fields`` plus the host, pid,
        process tag and start time that tell a later cleanup whose it is."""
        entry = dict(fields, host=socket.gethostname(), pid=os.getpid(),
                     process=process.process_tag(os.getpid()),
                     started=datetime.datetime.now(datetime.timezone.utc).isoformat())
        return self.add(name, entry)

    def end(self, name, gone=True):
        """The work ended: its entry goes (``gone``), or, if what it left could
        not be removed, stays marked abandoned for cleanup."""
        if gone:
            self.remove(name)
            return
        entry = self.get(name)
        if entry is not None:
            entry["abandoned"] = True
            self.add(name, entry)

    def get(self, name):
        """The entry stored under ``name``, or None."""
        return self._load(self._path(name))

    def remove(self, name):
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            LOG.warning("Could not remove the journal entry %s: %s", self._path(name), e)

    def entries(self):
        """Every readable entry."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as e:
            LOG.warning("Could not read the journal %s: %s", self.directory, e)
            return []
        found = (self._load(os.path.join(self.directory, n))
                 for n in names if n.endswith(_SUFFIX))
        return [entry for entry in found if entry is not None]

    @staticmethod
    def _load(path):
        try:
            with open(path) as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            LOG.warning("Ignoring the unreadable journal entry %s: %s", path, e)
            return None
        return entry if isinstance(entry, dict) else None
