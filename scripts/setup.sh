#!/usr/bin/env bash
# Set up a Debian 12 machine (as root) to build and test gsfs. Idempotent: run it as often as you like.
#   1. Debian packages: FUSE 3, Ceph (mon, osd, radosgw, rados/rbd Python bindings), tools.
#      Only missing packages are installed (apt-get update + install); present ones are left
#      at their version (no upgrades of e.g. systemd on a machine whose PID 1 is not systemd).
#   2. .venv with a Python 3.11 (python3 on PATH if it is 3.11, else /usr/bin/python3),
#      `pip install -e '.[test]'` (skipped when pyproject.toml is unchanged since the last run).
#   3. Debian's rados/rbd extension modules symlinked into the venv (PyPI has no such bindings).
#   4. Check: import pyfuse3, rados, rbd, boto3, glance_store.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV=$ROOT/.venv

TAG=setup
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# ---------------------------------------------------------------- 1. Debian packages
PACKAGES=(
  # FUSE 3 and what building pyfuse3 from source needs
  fuse3 libfuse3-dev pkg-config gcc python3-dev
  # tools the tests use
  attr rsync qemu-utils curl uuid-runtime iproute2 procps make strace
  # single-node Ceph for the rbd and S3 tests (tests/servers/ceph.sh)
  ceph-mon ceph-osd ceph-common radosgw python3-rados python3-rbd
  # venv for Debian's python3; systemd for systemd-analyze (unit file checks)
  python3-venv systemd
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} = 0 ]; then
  step "Debian packages: all ${#PACKAGES[@]} present"
else
  SUDO=
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "need root (or sudo) to install: ${missing[*]}"
    SUDO=sudo
  fi
  step "Debian packages missing: ${missing[*]}"
  t0=$SECONDS
  $SUDO apt-get update -q
  # postinst scripts try to talk to systemd; without it as PID 1 they say so and go on
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  step "installed ${#missing[@]} Debian packages in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- 2. venv
if [ -x "$VENV/bin/python" ] && is_py311 "$VENV/bin/python"; then
  step "venv: reusing $VENV ($("$VENV/bin/python" -V))"
else
  PY=$(find_python311)
  [ -e "$VENV" ] && { step "venv: $VENV is not a working 3.11 venv, recreating"; rm -rf "$VENV"; }
  "$PY" -m venv "$VENV"
  step "venv: created $VENV with $PY ($("$PY" -V))"
fi

STAMP=$VENV/.gsfs-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  step "pip: pyproject.toml unchanged since the last install, skipping (delete $STAMP to force)"
else
  t0=$SECONDS
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  step "pip: installed -e '.[test]' in $((SECONDS - t0)) s"
  echo "$want" >"$STAMP"
fi

# ---------------------------------------------------------------- 3. rados/rbd bindings
SITE=$(link_ceph_bindings "$VENV/bin/python")
step "bindings: rados, rbd linked into $SITE"

# ---------------------------------------------------------------- 4. check
# run from / so that nothing in the work tree can shadow a module
(cd / && "$VENV/bin/python" - <<'PY') || fail "import check failed"
import boto3, glance_store, pyfuse3, rados, rbd
print("[setup] imports ok: pyfuse3 %s, rados/rbd %s, boto3 %s, glance_store %s" % (
    pyfuse3.__version__ if hasattr(pyfuse3, "__version__") else "?",
    ".".join(map(str, rbd.RBD().version())), boto3.__version__,
    getattr(glance_store, "__version__", "ok")))
PY
[ -e /dev/fuse ] || step "warning: /dev/fuse missing: the FUSE tests cannot mount here"

# ---------------------------------------------------------------- 5. Glance's own venv
# a real Glance API for the tests (tests/servers/glance.py); GLANCE_VENV picks its path
bash "$ROOT/scripts/setup-glance.sh"
step "done"
