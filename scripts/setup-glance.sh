#!/usr/bin/env bash
# Glance's own virtual environment, for the tests that run a real Glance image API
# (tests/servers/glance.py starts it under uWSGI). Idempotent; `make setup` runs it.
#   - GLANCE_VENV (default .venv-glance in the work tree) gets glance, uwsgi and boto3 at the
#     versions pinned below, with the Python 3.11 the project's .venv is built on. Glance's
#     pins stay out of the project's .venv.
#   - Skipped when the venv's stamp file holds exactly these pins and the venv still has its
#     programs; otherwise the venv is made again from nothing.
#   - Debian's rados/rbd bindings are linked into it (for Glance's rbd store), as setup.sh
#     does for .venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
GLANCE_VENV=${GLANCE_VENV:-$ROOT/.venv-glance}
# boto3 (the version .venv uses against radosgw): glance_store's s3 driver needs it, Glance does not pull it
PINS=(glance==33.0.0 uwsgi==2.0.31 boto3==1.44.8)
STAMP=$GLANCE_VENV/.gsfs-glance-stamp

TAG=setup-glance
# shellcheck source=scripts/lib.sh
. scripts/lib.sh


complete() { # the stamp matches and what the tests run is there
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ] || return 1
  local f
  for f in bin/python bin/uwsgi bin/glance-manage etc/glance/glance-api-paste.ini; do
    [ -e "$GLANCE_VENV/$f" ] || return 1
  done
  (cd / && "$GLANCE_VENV/bin/python" -c 'import boto3, glance.context, glance_store') 2>/dev/null
}

if complete; then
  link_ceph_bindings "$GLANCE_VENV/bin/python" >/dev/null
  step "reusing $GLANCE_VENV (${PINS[*]}; delete $STAMP to force a new install)"
  exit 0
fi

# the interpreter the project's .venv is built on, else the one setup.sh would pick
PY=
if [ -x "$ROOT/.venv/bin/python" ]; then
  base=$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)' 2>/dev/null || true)
  [ -n "$base" ] && is_py311 "$base" && PY=$base
fi
[ -n "$PY" ] || PY=$(find_python311)

t0=$SECONDS
rm -rf "$GLANCE_VENV"
"$PY" -m venv "$GLANCE_VENV"
step "created $GLANCE_VENV with $PY ($("$PY" -V)); installing ${PINS[*]} (uwsgi is built from source)"
# the stamp is written last: an interrupted install is made again next time
"$GLANCE_VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
link_ceph_bindings "$GLANCE_VENV/bin/python" >/dev/null
versions=$(cd / && "$GLANCE_VENV/bin/python" -c \
  'import boto3, glance_store, glance.context; from importlib.metadata import version as v
print("glance %s, glance_store %s, uwsgi %s, boto3 %s" % (v("glance"), v("glance_store"), v("uwsgi"), boto3.__version__))') \
  || fail "import check in $GLANCE_VENV failed"
[ -e "$GLANCE_VENV/etc/glance/glance-api-paste.ini" ] \
  || fail "$GLANCE_VENV/etc/glance/glance-api-paste.ini is missing after the install"
[ -x "$GLANCE_VENV/bin/uwsgi" ] || fail "$GLANCE_VENV/bin/uwsgi is missing after the install"
echo "${PINS[*]}" >"$STAMP"
step "installed $versions in $((SECONDS - t0)) s"
