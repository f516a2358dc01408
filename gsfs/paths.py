"""Where gsfs keeps its files by default: one rule for every default path.

As root, the system directories; as another user, the XDG base directories
of the user (a variable that is unset or not an absolute path counts as
unset, as the XDG spec says):

=====  ==================  =========================================
kind   as root             otherwise
=====  ==================  =========================================
data   /var/lib/gsfs       $XDG_DATA_HOME/gsfs  (~/.local/share/gsfs)
state  /var/lib/gsfs       $XDG_STATE_HOME/gsfs (~/.local/state/gsfs)
cache  /var/cache/gsfs     $XDG_CACHE_HOME/gsfs (~/.cache/gsfs)
log    /var/log            $XDG_STATE_HOME/gsfs (~/.local/state/gsfs)
=====  ==================  =========================================
"""

import os

_KINDS = {
    "data": ("/var/lib/gsfs", "XDG_DATA_HOME", (".local", "share")),
    "state": ("/var/lib/gsfs", "XDG_STATE_HOME", (".local", "state")),
    "cache": ("/var/cache/gsfs", "XDG_CACHE_HOME", (".cache",)),
    "log": ("/var/log", "XDG_STATE_HOME", (".local", "state")),
}


def base_dir(kind):
    """The directory of ``kind`` (data, state, cache, log) for this user."""
    system, variable, home_parts = _KINDS[kind]
    if os.geteuid() == 0:
        return system
    base = os.environ.get(variable, "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), *home_parts)
    return os.path.join(base, "gsfs")
