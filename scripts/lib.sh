# Shell functions the setup scripts share (source it; TAG names the script in messages).
#   step MSG / fail MSG      a progress line / an error line and exit 1
#   find_python311           the Python 3.11 to build venvs with (prints its path)
#   link_ceph_bindings PY    symlink Debian's rados/rbd extension modules (packages
#                            python3-rados, python3-rbd; PyPI has no such bindings) into the
#                            site-packages of the venv whose python is PY; prints that dir

step() { printf '[%s] %s\n' "${TAG:-setup}" "$*"; }
fail() { printf '[%s] ERROR: %s\n' "${TAG:-setup}" "$*" >&2; exit 1; }

is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }

# find_python311: python3 on PATH if it is 3.11, else /usr/bin/python3 (the Debian rados/rbd
# bindings are built for 3.11); prints its path or fails
find_python311() {
  if command -v python3 >/dev/null && is_py311 python3; then
    command -v python3
  elif is_py311 /usr/bin/python3; then
    echo /usr/bin/python3
  else
    fail "no Python 3.11 found (python3 on PATH, /usr/bin/python3); the Debian rados/rbd bindings need 3.11"
  fi
}

link_ceph_bindings() {
  local site mod so f
  site=$("$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for mod in rados rbd; do
    so=
    for f in /usr/lib/python3/dist-packages/"$mod".cpython-311-*.so; do [ -e "$f" ] && so=$f && break; done
    [ -n "$so" ] || fail "/usr/lib/python3/dist-packages/$mod.cpython-311-*.so not found (package python3-$mod)"
    ln -sfn "$so" "$site/$(basename "$so")"
  done
  echo "$site"
}
