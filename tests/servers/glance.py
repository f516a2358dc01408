"""A real Glance image API (Glance 33 from PyPI) on 127.0.0.1 for the tests.

Glance lives in a venv of its own (``make setup`` makes it: scripts/setup-glance.sh; the path
is GLANCE_VENV, default .venv-glance). Glance 33 has no standalone server: its WSGI app
``glance.wsgi.api:application`` runs under uWSGI in HTTP mode, one process, on a free port.
No Keystone: a paste filter of ours (tests/servers/glance_context.py) makes every request an
admin of one project, and a policy file makes every caller admin. SQLite database, the
reserved staging/tasks stores and the config all live in the server's work directory.

    server = GlanceAPI(workdir, STORES_INI).start()      # the same store ini text gsfs is given
    server.session().get(server.url + "/v2/images")
    server.stop()

The fixture ``glance_server`` (function scope; load this module as a pytest plugin) returns
``make(stores, default_backend=None, **options)``: each call starts a GlanceAPI in a fresh
directory, and all are stopped when the test ends. A missing Glance venv FAILS the test
(never skips): run ``make setup``.

``stores`` is either the ini text of a glance-api.conf (as gsfs reads it: ``[DEFAULT]
enabled_backends``, ``[glance_store] default_backend``, one section per store; other
sections and options are passed on as they are) or the same as a dict ``{section: {option:
value}}``. ``enabled_backends`` and ``default_backend`` may also be given as arguments.

uWSGI is stopped by its pid (SIGTERM, then SIGKILL of its process group) at ``stop()``; an
atexit hook and a watchdog process (which stops it once the Python process that started it is
gone) are the last resorts.
"""

from __future__ import annotations

import configparser
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.servers import stop_at_exit

ROOT = Path(__file__).resolve().parents[2]
GLANCE_VERSION = "33.0.0"
#: the paste filter module, copied into each server's config directory
CONTEXT_FILTER = Path(__file__).with_name("glance_context.py")
CONTEXT_MODULE = "gsfs_glance_context"
FLAVOR = "gsfstest"  # [pipeline:glance-api-gsfstest]; must not contain "cache"
START_TIMEOUT = 90  # seconds until GET /v2/images answers 200 (about 5 s here)
DB_SYNC_TIMEOUT = 180
STOP_TIMEOUT = 15  # seconds between SIGTERM and SIGKILL
ADMIN_POLICY = '"context_is_admin": ""\n'

_live: set[GlanceAPI] = set()
_live_lock = threading.Lock()


def glance_venv() -> Path:
    return Path(os.environ.get("GLANCE_VENV") or ROOT / ".venv-glance")


def venv_problem(venv: Path | None = None) -> str | None:
    """Why ``venv`` cannot run the test Glance (None when it can)."""
    venv = Path(venv) if venv is not None else glance_venv()
    missing = [f for f in ("bin/python", "bin/uwsgi", "bin/glance-manage",
                           "etc/glance/glance-api-paste.ini", ".gsfs-glance-stamp")
               if not (venv / f).exists()]
    if not missing:
        return None
    return ("the Glance test venv %s is missing or incomplete (no %s). Run `make setup` "
            "(scripts/setup-glance.sh installs glance==%s and uwsgi there; GLANCE_VENV "
            "picks another path)." % (venv, ", ".join(missing), GLANCE_VERSION))


class GlanceAPIError(RuntimeError):
    pass


def _parser() -> configparser.ConfigParser:
    # no interpolation, case kept, and [DEFAULT] an ordinary section (not inherited)
    p = configparser.ConfigParser(interpolation=None, default_section="\x00no-default")
    p.optionxform = str
    return p


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # enabled_backends = {"fast": "file"}
        return ", ".join("%s:%s" % kv for kv in value.items())
    return str(value)


def parse_stores(stores) -> configparser.ConfigParser:
    """ini text or ``{section: {option: value}}`` (None values left out) as a parser."""
    p = _parser()
    if isinstance(stores, str):
        p.read_string(stores)
    else:
        for section, options in stores.items():
            p.add_section(section)
            for name, value in options.items():
                if value is not None:
                    p.set(section, name, _value(value))
    return p


def parse_backends(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        if item.strip():
            name, _, kind = item.partition(":")
            out[name.strip()] = kind.strip()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GlanceAPI:
    """One Glance API server; see the module docstring.

    ``options`` ({section: {option: value}}) is applied last, over everything else (e.g.
    ``{"DEFAULT": {"show_multiple_locations": False}}``).
    """

    def __init__(self, workdir, stores, default_backend: str | None = None,
                 enabled_backends=None, options: dict | None = None, venv=None,
                 start_timeout: float = START_TIMEOUT):
        self.workdir = Path(workdir).resolve()
        self.venv = Path(venv) if venv is not None else glance_venv()
        self.start_timeout = start_timeout
        self.conf_dir = self.workdir / "etc"
        self.conf_path = self.conf_dir / "glance-api.conf"
        self.paste_path = self.conf_dir / "glance-api-paste.ini"
        self.policy_path = self.conf_dir / "policy.yaml"
        self.uwsgi_ini = self.conf_dir / "uwsgi.ini"
        self.db_path = self.workdir / "glance.sqlite"
        self.staging_dir = self.workdir / "staging"
        self.tasks_dir = self.workdir / "tasks"
        self.log_path = self.workdir / "uwsgi.log"
        self.port: int | None = None
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

        user = parse_stores(stores)
        backends = enabled_backends
        if backends is None and user.has_option("DEFAULT", "enabled_backends"):
            backends = user.get("DEFAULT", "enabled_backends")
        if not backends:
            raise GlanceAPIError("no enabled_backends: give it in [DEFAULT] or as an argument")
        self.stores = parse_backends(_value(backends))
        if default_backend is None and user.has_option("glance_store", "default_backend"):
            default_backend = user.get("glance_store", "default_backend")
        if default_backend is None:
            default_backend = next(iter(self.stores))
        if default_backend not in self.stores:
            raise GlanceAPIError("default_backend %r is not one of enabled_backends %s"
                                 % (default_backend, sorted(self.stores)))
        self.default_backend = default_backend
        self._user = user
        self._options = options or {}

    # -- configuration -------------------------------------------------------------

    def config_text(self) -> str:
        """glance-api.conf: ours, then the stores' sections, then ``options``."""
        p = _parser()
        ours = {
            "DEFAULT": {
                "enabled_backends": _value(self.stores),
                "enabled_import_methods": "[glance-direct,web-download,copy-image]",
                "show_multiple_locations": "true",
                "hashing_algorithm": "sha512",
                "debug": "false",
                "use_stderr": "true",
                "image_cache_dir": str(self.workdir / "cache"),
            },
            "glance_store": {"default_backend": self.default_backend},
            "os_glance_staging_store": {"filesystem_store_datadir": str(self.staging_dir)},
            "os_glance_tasks_store": {"filesystem_store_datadir": str(self.tasks_dir)},
            "database": {"connection": "sqlite:///%s" % self.db_path},
            "paste_deploy": {"flavor": FLAVOR, "config_file": str(self.paste_path)},
            "oslo_policy": {"policy_file": str(self.policy_path)},
            "oslo_concurrency": {"lock_path": str(self.workdir / "locks")},
        }
        for section, opts in ours.items():
            p.add_section(section)
            for name, value in opts.items():
                p.set(section, name, value)
        for section in self._user.sections():
            if not p.has_section(section):
                p.add_section(section)
            for name, value in self._user.items(section):
                if (section, name) in (("DEFAULT", "enabled_backends"),
                                       ("glance_store", "default_backend")):
                    continue
                if section in ours and name in ours[section]:
                    continue  # ours win: the test server depends on them
                p.set(section, name, value)
        for section, opts in self._options.items():
            if not p.has_section(section):
                p.add_section(section)
            for name, value in opts.items():
                if value is None:
                    p.remove_option(section, name)
                else:
                    p.set(section, name, _value(value))
        out = io.StringIO()
        p.write(out)
        return out.getvalue()

    def paste_text(self) -> str:
        """Glance's own glance-api-paste.ini plus our flavor: Glance's keyless pipeline with our
        context filter in place of ``unauthenticated-context``.

        Glance 33 picks the pipeline in ``[composite:api]`` (``glance.api:pipeline_factory``,
        one option per flavor) behind ``[composite:glance-api-FLAVOR]``; older Glances have
        ``[pipeline:glance-api-FLAVOR]``. Both layouts are handled."""
        src = self.venv / "etc" / "glance" / "glance-api-paste.ini"
        p = configparser.RawConfigParser(strict=False, interpolation=None)
        p.optionxform = str
        p.read_string(src.read_text())

        def ours(pipeline: str, where: str) -> str:
            words = pipeline.split()
            if "unauthenticated-context" not in words:
                raise GlanceAPIError("%s: %s has no unauthenticated-context filter to replace: %s"
                                     % (src, where, pipeline))
            words[words.index("unauthenticated-context")] = "gsfs-admin-context"
            return " ".join(words)

        if p.has_section("pipeline:glance-api"):
            p["pipeline:glance-api-" + FLAVOR] = {
                "pipeline": ours(p["pipeline:glance-api"]["pipeline"], "[pipeline:glance-api]")}
        elif p.has_section("composite:glance-api"):
            root = dict(p["composite:glance-api"])
            p["composite:glance-api-" + FLAVOR] = root
            pickers = [t for k, t in root.items() if k.startswith("/")
                       and "pipeline_factory" in p.get("composite:" + t.strip(),
                                                       "paste.composite_factory", fallback="")]
            if not pickers:
                raise GlanceAPIError("%s: [composite:glance-api] routes to no pipeline_factory "
                                     "composite" % src)
            for t in pickers:
                section = p["composite:" + t.strip()]
                section[FLAVOR] = ours(section["default"], "[composite:%s] default" % t.strip())
        else:
            raise GlanceAPIError("%s has neither [pipeline:glance-api] nor "
                                 "[composite:glance-api]" % src)
        p["filter:gsfs-admin-context"] = {
            "paste.filter_factory": "%s:AdminContextMiddleware.factory" % CONTEXT_MODULE}
        out = io.StringIO()
        out.write("# Glance's %s, and flavor %s (tests/servers/glance.py): keyless, every\n"
                  "# request an admin of one project\n\n" % (src, FLAVOR))
        p.write(out)
        return out.getvalue()

    def uwsgi_text(self) -> str:
        return "\n".join([
            "[uwsgi]",
            "http-socket = 127.0.0.1:%d" % self.port,
            "module = glance.wsgi.api:application",
            "home = %s" % self.venv,
            "pythonpath = %s" % self.conf_dir,
            "master = true",
            "processes = 1",
            "threads = 4",
            "enable-threads = true",
            "lazy-apps = true",
            "http-auto-chunked = true",
            "http-chunked-input = true",
            "http-raw-body = true",
            "buffer-size = 65535",
            # uWSGI closes each connection after its response: say so, or a client that
            # reuses it at once gets "Connection reset by peer" (Glance's own uwsgi ini has it)
            "add-header = Connection: close",
            "die-on-term = true",
            "need-app = true",
            "",
        ])

    def _write_config(self) -> None:
        for d in (self.conf_dir, self.staging_dir, self.tasks_dir, self.workdir / "locks"):
            d.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config_text())
        self.paste_path.write_text(self.paste_text())
        self.policy_path.write_text(ADMIN_POLICY)
        shutil.copyfile(CONTEXT_FILTER, self.conf_dir / (CONTEXT_MODULE + ".py"))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env["OS_GLANCE_CONFIG_DIR"] = str(self.conf_dir)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        return env

    def db_sync(self, template: Path | None = None) -> None:
        """Create the database: a copy of ``template`` (a database db_sync made) when given."""
        if template is not None:
            shutil.copyfile(template, self.db_path)
            return
        make_database(self.venv, self.db_path, self.workdir / "db-sync.log")

    # -- lifecycle -----------------------------------------------------------------

    def start(self, db_template: Path | None = None) -> GlanceAPI:
        problem = venv_problem(self.venv)
        if problem:
            raise GlanceAPIError(problem)
        if self.proc is not None:
            raise GlanceAPIError("already started")
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._write_config()
        self.db_sync(db_template)
        for attempt in range(3):
            self.uwsgi_ini.write_text(self.uwsgi_text())
            self._spawn()
            try:
                self._wait_ready()
                break
            except GlanceAPIError:
                in_use = "Address already in use" in self.log_tail()
                self.stop()
                if not in_use or attempt == 2:
                    raise
                self.port = free_port()  # another process took the port: try another
        self.startup_seconds = time.monotonic() - t0
        return self

    def _spawn(self) -> None:
        with _live_lock:
            _live.add(self)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "uwsgi"), "--ini", str(self.uwsgi_ini)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env(), cwd=str(self.workdir), start_new_session=True)
        self.url = "http://127.0.0.1:%d" % self.port
        self._watchdog = _start_watchdog(self.proc.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = None
        with self.session() as s:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise GlanceAPIError("uWSGI exited with code %s before Glance answered;"
                                         " %s ends:\n%s" % (code, self.log_path, self.log_tail()))
                tail = self.log_tail(20)
                if "failed loading app" in tail or "no app loaded" in tail:
                    raise GlanceAPIError("Glance's app did not load under uWSGI; %s ends:\n%s"
                                         % (self.log_path, self.log_tail()))
                try:
                    r = s.get(self.url + "/v2/images", timeout=5)
                    if r.status_code == 200:
                        return
                    last = "HTTP %d %s" % (r.status_code, r.text[:300])
                except requests.RequestException as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    raise GlanceAPIError(
                        "GET %s/v2/images did not answer 200 within %d s (last: %s); %s ends:\n%s"
                        % (self.url, self.start_timeout, last, self.log_path, self.log_tail()))
                time.sleep(0.2)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        """Stop uWSGI (SIGTERM, then SIGKILL of its process group). Safe to call again."""
        with _live_lock:
            _live.discard(self)
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    sys.stderr.write("uWSGI %d ignored SIGTERM for %d s: SIGKILL\n"
                                     % (proc.pid, STOP_TIMEOUT))
            # its workers share its process group (start_new_session): none may outlive it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=STOP_TIMEOUT)
        dog, self._watchdog = self._watchdog, None
        if dog is not None:
            try:  # the shell and its `sleep` (own process group)
                os.killpg(dog.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            dog.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> GlanceAPI:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers -------------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def session(self) -> requests.Session:
        """A requests session for this server (no proxies from the environment)."""
        s = requests.Session()
        s.trust_env = False
        return s

    def image(self, image_id: str, session: requests.Session | None = None) -> dict:
        s = session or self.session()
        r = s.get("%s/v2/images/%s" % (self.url, image_id), timeout=30)
        r.raise_for_status()
        return r.json()

    def wait_image(self, image_id: str, predicate, timeout: float = 60,
                   session: requests.Session | None = None) -> dict:
        """Poll GET /v2/images/ID until ``predicate(image)``; GlanceAPIError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            image = self.image(image_id, session)
            if predicate(image):
                return image
            if time.monotonic() > deadline:
                raise GlanceAPIError("image %s: condition not met within %d s; last: %s\n"
                                     "%s ends:\n%s" % (image_id, timeout, image,
                                                       self.log_path, self.log_tail()))
            time.sleep(0.2)

    def __repr__(self) -> str:
        return "<GlanceAPI %s pid=%s %s>" % (self.url, self.pid, self.workdir)


def image_stores(image: dict) -> set[str]:
    """The store ids an image record lists (its ``stores`` property, comma-separated)."""
    return {s for s in image.get("stores", "").split(",") if s}


def make_database(venv: Path, db_path: Path, log_path: Path) -> None:
    """``glance-manage db_sync`` into a new SQLite file ``db_path``."""
    conf = db_path.with_suffix(".db-sync.conf")
    conf.write_text("[DEFAULT]\nuse_stderr = true\n[database]\nconnection = sqlite:///%s\n"
                    % db_path)
    cmd = [str(venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=DB_SYNC_TIMEOUT, env=env, cwd=str(db_path.parent))
    except subprocess.TimeoutExpired as e:
        raise GlanceAPIError("`%s` took over %d s" % (" ".join(cmd), DB_SYNC_TIMEOUT)) from e
    output = proc.stdout + proc.stderr
    log_path.write_text(output)
    if proc.returncode != 0:
        raise GlanceAPIError("`%s` failed with exit code %d:\n%s"
                             % (" ".join(cmd), proc.returncode, output[-4000:]))


def _start_watchdog(pid: int) -> subprocess.Popen:
    """A shell that stops uWSGI ``pid`` (and its process group) once this process is gone."""
    script = (
        'owner=$1 pid=$2\n'
        'while kill -0 "$owner" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done\n'
        'if kill -0 "$pid" 2>/dev/null; then\n'
        '  kill -TERM "$pid" 2>/dev/null\n'
        '  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 1; done\n'
        '  kill -KILL -- "-$pid" 2>/dev/null\n'
        'fi\n'
    )
    return subprocess.Popen(["bash", "-c", script, "glance-watchdog", str(os.getpid()), str(pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


stop_at_exit(_live, _live_lock)


# ---------------------------------------------------------------- pytest fixtures

@pytest.fixture(scope="session")
def glance_db_template(tmp_path_factory):
    """A database ``glance-manage db_sync`` made once per session; each server gets a copy."""
    problem = venv_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    d = tmp_path_factory.mktemp("glance-db")
    db = d / "glance.sqlite"
    make_database(glance_venv(), db, d / "db-sync.log")
    return db


@pytest.fixture
def glance_server(tmp_path_factory, glance_db_template):
    """``make(stores, default_backend=None, **kwargs)`` starts a GlanceAPI (kwargs go to
    GlanceAPI: enabled_backends, options, ...) and returns it; all stop after the test."""
    servers: list[GlanceAPI] = []

    def make(stores, default_backend=None, **kwargs):
        server = GlanceAPI(tmp_path_factory.mktemp("glance"), stores,
                           default_backend=default_backend, **kwargs)
        servers.append(server)
        return server.start(db_template=glance_db_template)

    try:
        yield make
    finally:
        errors = []
        for server in servers:
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - stop the others, then report
                errors.append("%r: %s" % (server, e))
        if errors:
            raise GlanceAPIError("stopping Glance failed: %s" % "; ".join(errors))
