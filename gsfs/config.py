"""Configuration as Glance reads it, through oslo.config.

* ``[DEFAULT] enabled_backends = id:type, ...`` (a DictOpt Glance registers;
  gsfs registers it too, so a glance-api.conf loads as is);
* ``[glance_store] default_backend``;
* one group per store identifier holding the driver's options plus
  ``store_description`` and ``weight``;
* ``[backend_defaults]``: the fall-back for any driver option a store group
  leaves unset (explicit group value, then backend_defaults, then the default).
"""

import logging

from oslo_config import cfg

LOG = logging.getLogger(__name__)

CONF = cfg.CONF
SHARED_CONF_GROUP = "backend_defaults"

ENABLED_BACKENDS_OPT = cfg.DictOpt(
    "enabled_backends",
    help="Key:value pairs of store identifier and store type, e.g. fast:file,cloud:s3.")

DEFAULT_BACKEND_OPT = cfg.StrOpt(
    "default_backend",
    help="The store identifier images are added to when no backend is named.")

MULTI_BACKEND_OPTS = [
    cfg.StrOpt("store_description",
               help="A human-readable description of the store, shown to users."),
    cfg.IntOpt("weight", default=0,
               help="Relative sort weight of this store; only the order matters."),
]


def ensure_enabled_backends_opt(conf):
    """Register ``[DEFAULT] enabled_backends`` unless the caller already did."""
    try:
        conf.register_opt(ENABLED_BACKENDS_OPT)
    except cfg.DuplicateOptError:
        pass


def register_opts_ignoring_duplicates(conf, opts, group):
    for opt in opts:
        try:
            conf.register_opt(opt, group=group)
        except cfg.DuplicateOptError:
            pass


def reserved_file_opts(store_id):
    """The filesystem option template glance_store registers for a reserved store."""
    return [
        cfg.StrOpt("filesystem_store_datadir", default="/var/lib/glance/%s" % store_id),
        cfg.MultiStrOpt("filesystem_store_datadirs"),
        cfg.StrOpt("filesystem_store_metadata_file"),
        cfg.IntOpt("filesystem_store_file_perm", default=0),
        cfg.IntOpt("filesystem_store_chunk_size", default=64 * 1024, min=1),
        cfg.BoolOpt("filesystem_thin_provisioning", default=False),
    ]


class BackendGroupConfiguration:
    """Read a store's options: its own group first, then ``[backend_defaults]``.

    As in glance_store, the store group's defaults are set to None when this
    object is built, so an unset option falls through to backend_defaults,
    whose default is the option's real default.
    """

    def __init__(self, store_opts, config_group=None, conf=None):
        self.conf = conf or CONF
        self.config_group = config_group
        self.shared_group = SHARED_CONF_GROUP
        if config_group:
            register_opts_ignoring_duplicates(self.conf, store_opts, config_group)
            for opt in store_opts:
                self.conf.set_default(opt.dest, None, group=config_group)
        register_opts_ignoring_duplicates(self.conf, store_opts, self.shared_group)

    def _group_value(self, name):
        if not self.config_group:
            return None
        try:
            return getattr(getattr(self.conf, self.config_group), name)
        except (cfg.NoSuchOptError, AttributeError):
            return None

    def __getattr__(self, name):
        if name.startswith("_") or name in ("conf", "config_group", "shared_group"):
            raise AttributeError(name)
        value = self._group_value(name)
        if value is not None:
            return value
        return getattr(getattr(self.conf, self.shared_group), name)

    def get(self, key, default=None):
        try:
            return getattr(self, key)
        except (cfg.NoSuchOptError, AttributeError):
            return default
