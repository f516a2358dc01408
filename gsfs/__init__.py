"""gsfs: Glance image stores as a filesystem, on a glance_store-compatible library.

Like ``glance_store``, the package top level re-exports the multi-backend API,
the Indexable helper and every exception class.
"""

__version__ = "0.1.0"

from gsfs.backend import Indexable  # noqa: E402,F401
from gsfs.exceptions import *  # noqa: E402,F401,F403
from gsfs.multi_backend import *  # noqa: E402,F401,F403
