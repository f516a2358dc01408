"""Configure gsfs stores from a glance-api.conf-style ini text, as Glance does.

gsfs.multi_backend (like glance_store) reads the process-wide ``cfg.CONF``, so
the configuration must live in that object. These helpers put ``cfg.CONF`` and
gsfs's store registry back to their import-time state before (and, through the
fixture, after) each configuration, so tests are independent in one session:

    from tests.storeconf import ini, load_stores, store_config  # noqa: F401

    def test_x(store_config):                       # fixture: resets afterwards
        conf = store_config(ini({"DEFAULT": {"enabled_backends": "cloud:s3"},
                                 "glance_store": {"default_backend": "cloud"},
                                 "cloud": {"s3_store_host": ...}}))
        store = multi_backend.get_store_from_store_identifier("cloud")

``load_stores(path_dir, text)`` is the same without the fixture; call
``reset_global_state()`` yourself afterwards.
"""

import itertools
import textwrap

import pytest
from oslo_config import cfg

from gsfs import multi_backend

CONF = cfg.CONF
_files = itertools.count(1)


def _registered_opts(conf):
    opts = {None: set(conf._opts)}
    for name, group in conf._groups.items():
        opts[name] = set(group._opts)
    return opts


# What is registered when the test modules are imported (libraries' own
# options); everything registered later by a store configuration is removed.
_BASELINE = _registered_opts(CONF)


def wipe_conf():
    """``cfg.CONF`` as at import: no parsed files, no overrides or defaults, and
    none of the options a store configuration registered (glance_store and gsfs
    register same-named options that differ, so they must not linger)."""
    CONF.reset()
    for dest, info in list(CONF._opts.items()):
        if dest not in _BASELINE[None]:
            CONF.unregister_opt(info["opt"])
    for name, group in list(CONF._groups.items()):
        keep = _BASELINE.get(name, set())
        for dest, info in list(group._opts.items()):
            if dest not in keep:
                CONF.unregister_opt(info["opt"], group=name)


def reset_global_state():
    """Forget every gsfs store and wipe ``cfg.CONF``."""
    multi_backend.reset()
    wipe_conf()


def ini(sections):
    """Render ``{section: {option: value}}`` as ini text (values str()-ed;
    booleans as true/false; None values are left out)."""
    lines = []
    for section, options in sections.items():
        lines.append("[%s]" % section)
        for name, value in options.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            lines.append("%s = %s" % (name, value))
        lines.append("")
    return "\n".join(lines)


def load_stores(directory, text, reserved_stores=None, filename=None,
                register_enabled=True):
    """Write ``text`` to an ini file in ``directory`` and configure the stores
    from it the way Glance does: register ``enabled_backends``, parse the file
    into ``cfg.CONF``, ``register_store_opts``, ``create_multi_stores``.

    Global state is reset first. Returns ``cfg.CONF`` (the registration count
    of create_multi_stores is in ``load_stores.last_count``).
    """
    reset_global_state()
    path = directory / (filename or "glance-api-%d.conf" % next(_files))
    path.write_text(textwrap.dedent(text))
    if register_enabled:
        CONF.register_opt(cfg.DictOpt("enabled_backends"))   # Glance registers it
    CONF(args=[], default_config_files=[str(path)])
    multi_backend.register_store_opts(CONF, reserved_stores=reserved_stores)
    load_stores.last_count = multi_backend.create_multi_stores(
        CONF, reserved_stores=reserved_stores)
    return CONF


load_stores.last_count = None


@pytest.fixture
def store_config(tmp_path):
    """``load_stores`` bound to this test's tmp_path; global state is reset
    before and after the test."""
    reset_global_state()

    def load(text, reserved_stores=None, filename=None, register_enabled=True):
        return load_stores(tmp_path, text, reserved_stores=reserved_stores,
                           filename=filename, register_enabled=register_enabled)

    yield load
    reset_global_state()
