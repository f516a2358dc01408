#!/usr/bin/env bash
# Single-node Ceph for the gsfs test suite: 1 mon, 1 bluestore OSD, radosgw (S3),
# all on 127.0.0.1, all state (data, keyrings, logs, sockets) under one directory,
# daemons started by hand (no systemd) and stopped by the PIDs recorded at start.
#
#   ceph.sh up DIR         create DIR and start the cluster; on success prints shell
#                          assignments on stdout (eval-able):
#                            CEPH_CONF CEPH_FSID CEPH_POOL CEPH_USER
#                            RGW_ENDPOINT RGW_ACCESS_KEY RGW_SECRET_KEY
#                            SWIFT_AUTH SWIFT_USER SWIFT_KEY
#                          (also saved in DIR/cluster.env). On failure it tears down
#                          whatever it started, removes DIR and exits non-zero.
#   ceph.sh down DIR       stop radosgw, then the osd, then the mon (SIGTERM, SIGKILL after
#                          CEPH_STOP_TIMEOUT s), then remove DIR. Safe to repeat.
#   ceph.sh stop-rgw DIR [TERM|KILL]   stop only radosgw (default SIGTERM)
#   ceph.sh start-rgw DIR  start radosgw again on the same port, wait until it answers
#
# The pool 'images' is initialised for rbd; the cephx user client.gsfs has
# mon 'profile rbd' osd 'profile rbd pool=images' and its keyring is DIR/client.gsfs.keyring,
# found through ceph.conf (keyring = DIR/$name.keyring): rados.Rados(conffile=..., rados_id='gsfs').
# The S3 user 'gsfs' gets random keys (or RGW_ACCESS_KEY / RGW_SECRET_KEY from the environment);
# its Swift subuser 'gsfs:swift' a random swift key (or RGW_SWIFT_KEY), v1 auth at SWIFT_AUTH.
#
# Environment knobs:
#   CEPH_BLUESTORE_BYTES     size of the OSD's sparse block file (default 24 GiB)
#   CEPH_OSD_MEMORY_TARGET   osd memory target (default 1 GiB)
#   CEPH_MON_PORT, CEPH_RGW_PORT   fixed ports (default: the kernel picks free ones)
#   CEPH_STOP_TIMEOUT        seconds to wait after SIGTERM before SIGKILL (default 15)
#   CEPH_START_TIMEOUT       seconds to wait for each daemon to become ready (default 90)
#   CEPH_OWNER_PID           if set, a watchdog runs 'down DIR' once that process is gone
#   CEPH_KEEP_FAILED=1       on a failed 'up', keep DIR (logs) after stopping the daemons
#
# Debian 12 packages: ceph-mon ceph-osd ceph-common radosgw curl uuid-runtime iproute2 procps
# (`make setup` installs them).
set -euo pipefail

POOL=images
RBD_USER=gsfs
RGW_UID=gsfs
RGW_NAME=client.rgw.gsfs
MARKER=.gsfs-ceph-cluster
STOP_ORDER=(rgw osd.0 mon.a)

BLUESTORE_BYTES=${CEPH_BLUESTORE_BYTES:-$((24 << 30))}
OSD_MEMORY_TARGET=${CEPH_OSD_MEMORY_TARGET:-$((1 << 30))}
STOP_TIMEOUT=${CEPH_STOP_TIMEOUT:-15}
START_TIMEOUT=${CEPH_START_TIMEOUT:-90}

T_START=$(date +%s%N)
say() { printf '[ceph.sh %s +%ss] %s\n' "$(date +%T)" "$(elapsed "$T_START")" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
elapsed() { # seconds since a `date +%s%N` stamp, 1 decimal
  local now; now=$(date +%s%N)
  printf '%d.%d' $(((now - $1) / 1000000000)) $((((now - $1) / 100000000) % 10))
}

# ---------------------------------------------------------------- helpers

need_binaries() {
  local b missing=()
  for b in "$@"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
  [ ${#missing[@]} = 0 ] && return 0
  say "missing programs: ${missing[*]} -- run 'make setup' (installs ceph-mon ceph-osd ceph-common radosgw ...)"
  exit 3
}

pick_port() { # ask the kernel for a free TCP port on 127.0.0.1
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

random_key() { # random_key LENGTH: [A-Za-z0-9]{LENGTH}
  python3 -c 'import secrets, string, sys
abc = string.ascii_letters + string.digits
print("".join(secrets.choice(abc) for _ in range(int(sys.argv[1]))))' "$1"
}

is_running() { # is_running PID: exists and is not a zombie (init may reap our orphans late)
  local state
  state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

pid_is_ours() { # pid_is_ours DIR PID: the process was started with DIR/ceph.conf (guards PID reuse)
  tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null | grep -qF -- "$1/ceph.conf"
}

launch() { # launch DIR NAME PROGRAM ARGS... : run a daemon in the foreground mode, in the background
  local dir=$1 name=$2 prog=$3; shift 3
  "$prog" -c "$dir/ceph.conf" "$@" -f </dev/null >>"$dir/log/$name.out" 2>&1 &
  echo $! >"$dir/run/$name.pid"
  say "started $name (pid $!)"
}

pid_of() { # pid_of DIR NAME -> recorded pid (empty if none)
  cat "$1/run/$2.pid" 2>/dev/null || true
}

stop_one() { # stop_one DIR NAME SIGNAL: signal a recorded daemon, wait, escalate to SIGKILL
  local dir=$1 name=$2 sig=$3 pid t0
  pid=$(pid_of "$dir" "$name")
  [ -n "$pid" ] || return 0
  if is_running "$pid" && pid_is_ours "$dir" "$pid"; then
    t0=$(date +%s%N)
    kill -"$sig" "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      is_running "$pid" || break
      sleep 0.1
    done
    if is_running "$pid"; then
      say "$name (pid $pid) still running ${STOP_TIMEOUT}s after SIG$sig: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do is_running "$pid" || break; sleep 0.1; done
    fi
    say "stopped $name (pid $pid) in $(elapsed "$t0")s"
  fi
  rm -f "$dir/run/$name.pid"
}

# wait_until SECONDS WHAT PID CMD...: poll CMD every 0.2 s; give up early if PID died
wait_until() {
  local limit=$1 what=$2 pid=$3 t0 i; shift 3
  t0=$(date +%s%N)
  for ((i = 0; i < limit * 5; i++)); do
    if "$@" >/dev/null 2>&1; then say "$what after $(elapsed "$t0")s"; return 0; fi
    is_running "$pid" || { say "$what: the daemon (pid $pid) exited"; return 1; }
    sleep 0.2
  done
  say "$what: gave up after ${limit}s"
  return 1
}

show_logs() { # on failure: the end of every log, to stderr
  local dir=$1 f
  for f in "$dir"/log/*; do
    [ -s "$f" ] || continue
    printf '==== %s (last 15 lines)\n' "$f" >&2
    tail -n 15 "$f" >&2
  done
}

absdir() { (cd "$1" && pwd -P); }

# ---------------------------------------------------------------- up

write_conf() { # write_conf DIR FSID MON_PORT RGW_PORT
  local d=$1
  cat >"$d/ceph.conf" <<EOF
# generated by tests/servers/ceph.sh: throwaway single-node cluster, 127.0.0.1 only
[global]
fsid = $2
mon host = v2:127.0.0.1:$3
mon initial members = a
public addr = 127.0.0.1
# without this the osd binds its cluster/heartbeat messengers to 0.0.0.0
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
# every key is found here: client.gsfs -> $d/client.gsfs.keyring
keyring = $d/\$name.keyring
# keep every file of this cluster inside $d (nothing in /var/log/ceph, /var/run/ceph)
run dir = $d/run
log file = $d/log/\$name.log
mon cluster log file = default=$d/log/cluster.\$channel.log cluster=$d/log/cluster.log
crash dir = $d/crash
# one osd: size 1, no redundancy warnings
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# the defaults (30% / 5% free) warn, or stop the mon, on a fullish CI disk
mon data avail warn = 1
mon data avail crit = 0
client mount timeout = 30

[mon]
mon data = $d/mon/\$cluster-\$id
# default 1 s: every map change (pool create, osd boot, ...) waits that long
paxos propose interval = 0.1

[osd]
osd data = $d/osd/\$cluster-\$id
osd objectstore = bluestore
# bluestore straight on a sparse file: no LVM, no loop device
bluestore block create = true
bluestore block size = $BLUESTORE_BYTES
osd memory target = $OSD_MEMORY_TARGET

[$RGW_NAME]
rgw frontends = beast endpoint=127.0.0.1:$4
rgw data = $d/rgw
# no 'rgw dns name': path-style S3 (http://127.0.0.1:PORT/bucket/key)
rgw enable usage log = false
rgw enable ops log = false
rgw thread pool size = 128
# deleted objects' data is collected after 2 h by default
rgw gc obj min wait = 10
rgw gc processor period = 10
# bucket lifecycle processing is not used by gsfs; its thread makes SIGTERM take 3-10 s
rgw enable lc threads = false
EOF
}

start_rgw_daemon() { # start_rgw_daemon DIR: launch radosgw and wait until S3 answers
  local d=$1 port pid
  port=$(sed -n 's/^RGW_PORT=//p' "$d/ports")
  launch "$d" rgw radosgw -n "$RGW_NAME"
  pid=$(pid_of "$d" rgw)
  # an anonymous ListAllMyBuckets answers 200 once the frontend is up; always with a timeout
  if ! wait_until "$START_TIMEOUT" "radosgw answers on 127.0.0.1:$port" "$pid" \
      curl -sf --noproxy '*' -m 2 -o /dev/null "http://127.0.0.1:$port/"; then
    stop_one "$d" rgw KILL
    return 1
  fi
}

cmd_up() {
  local d=$1
  need_binaries ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd radosgw radosgw-admin \
    curl uuidgen python3 awk
  [ -e "$d" ] && die "$d already exists"
  mkdir -p "$d"
  d=$(absdir "$d")
  touch "$d/$MARKER"
  UP_DIR=$d # for the failure trap
  # unix sockets live in DIR/run: their paths must stay well under 108 bytes
  [ ${#d} -le 60 ] || die "cluster dir path too long for unix sockets (${#d} > 60 chars): $d"
  mkdir -p "$d"/{mon,osd,rgw,log,run,crash}

  local fsid mon_port rgw_port c=(-c "$d/ceph.conf")
  fsid=$(uuidgen)
  mon_port=${CEPH_MON_PORT:-$(pick_port)}
  rgw_port=${CEPH_RGW_PORT:-$(pick_port)}
  while [ "$rgw_port" = "$mon_port" ]; do rgw_port=$(pick_port); done
  printf 'MON_PORT=%s\nRGW_PORT=%s\n' "$mon_port" "$rgw_port" >"$d/ports"
  write_conf "$d" "$fsid" "$mon_port" "$rgw_port"

  # --- mon.a, with the client.admin key imported so the admin can talk to it
  ceph-authtool --create-keyring "$d/mon.a.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$d/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$d/mon.a.keyring" --import-keyring "$d/client.admin.keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$d/monmap" >/dev/null
  ceph-mon "${c[@]}" -i a --mkfs --monmap "$d/monmap" --keyring "$d/mon.a.keyring" \
    >"$d/log/mon.a.mkfs" 2>&1 || die "ceph-mon --mkfs failed"
  launch "$d" mon.a ceph-mon -i a
  wait_until "$START_TIMEOUT" "mon.a in quorum" "$(pid_of "$d" mon.a)" \
    ceph "${c[@]}" --connect-timeout 5 quorum_status || die "mon.a did not form a quorum"

  # --- osd.0: bluestore on DIR/osd/ceph-0/block (sparse)
  local osd_uuid osd_key osd_id
  osd_uuid=$(uuidgen)
  osd_key=$(ceph-authtool --gen-print-key)
  osd_id=$(printf '{"cephx_secret": "%s"}' "$osd_key" | ceph "${c[@]}" osd new "$osd_uuid" -i -)
  [ "$osd_id" = 0 ] || die "expected osd id 0, got '$osd_id'"
  mkdir -p "$d/osd/ceph-0"
  ceph-authtool --create-keyring "$d/osd.0.keyring" --name osd.0 --add-key "$osd_key" >/dev/null
  ceph-osd "${c[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$d/log/osd.0.mkfs" 2>&1 \
    || die "ceph-osd --mkfs failed"
  # an unknown objectstore name silently falls back to the default: check
  [ "$(cat "$d/osd/ceph-0/type" 2>/dev/null)" = bluestore ] || die "osd.0 is not bluestore"
  say "osd.0 mkfs done (bluestore, $((BLUESTORE_BYTES >> 30)) GiB sparse)"
  launch "$d" osd.0 ceph-osd -i 0
  wait_until "$START_TIMEOUT" "osd.0 up" "$(pid_of "$d" osd.0)" \
    bash -c 'ceph "$@" osd stat -f json | grep -q "\"num_up_osds\":1"' _ "${c[@]}" \
    || die "osd.0 did not come up"

  # --- rbd pool + restricted cephx user
  ceph "${c[@]}" osd pool create "$POOL" 8 8 >/dev/null 2>&1 || die "pool create $POOL failed"
  rbd "${c[@]}" pool init "$POOL" || die "rbd pool init $POOL failed"
  ceph "${c[@]}" auth get-or-create "client.$RBD_USER" mon 'profile rbd' osd "profile rbd pool=$POOL" \
    -o "$d/client.$RBD_USER.keyring" >/dev/null || die "creating client.$RBD_USER failed"
  say "pool $POOL ready for rbd, user client.$RBD_USER created"

  # --- radosgw + S3 user (mon 'allow rw': rgw creates its own pools)
  ceph "${c[@]}" auth get-or-create "$RGW_NAME" mon 'allow rw' osd 'allow rwx' mgr 'allow rw' \
    -o "$d/$RGW_NAME.keyring" >/dev/null || die "creating $RGW_NAME failed"
  start_rgw_daemon "$d" || die "radosgw did not start"
  local access_key secret_key
  access_key=${RGW_ACCESS_KEY:-$(random_key 20)}
  secret_key=${RGW_SECRET_KEY:-$(random_key 40)}
  radosgw-admin "${c[@]}" user create --uid="$RGW_UID" --display-name="gsfs tests" \
    --access-key="$access_key" --secret-key="$secret_key" >"$d/log/rgw-user.json" 2>&1 \
    || die "radosgw-admin user create failed"
  say "S3 user $RGW_UID created"
  # the same user's Swift API: subuser UID:swift with a swift key (v1 auth at /auth/1.0)
  local swift_key
  swift_key=${RGW_SWIFT_KEY:-$(random_key 40)}
  radosgw-admin "${c[@]}" subuser create --uid="$RGW_UID" --subuser="$RGW_UID:swift" \
    --access=full --key-type=swift --secret-key="$swift_key" >"$d/log/rgw-subuser.json" 2>&1 \
    || die "radosgw-admin subuser create failed"
  say "Swift subuser $RGW_UID:swift created"

  {
    printf 'CEPH_CONF=%q\n' "$d/ceph.conf"
    printf 'CEPH_FSID=%q\n' "$fsid"
    printf 'CEPH_POOL=%q\n' "$POOL"
    printf 'CEPH_USER=%q\n' "$RBD_USER"
    printf 'RGW_ENDPOINT=%q\n' "http://127.0.0.1:$rgw_port"
    printf 'RGW_ACCESS_KEY=%q\n' "$access_key"
    printf 'RGW_SECRET_KEY=%q\n' "$secret_key"
    printf 'SWIFT_AUTH=%q\n' "http://127.0.0.1:$rgw_port/auth/1.0"
    printf 'SWIFT_USER=%q\n' "$RGW_UID:swift"
    printf 'SWIFT_KEY=%q\n' "$swift_key"
  } >"$d/cluster.env"

  if [ -n "${CEPH_OWNER_PID:-}" ]; then
    start_watchdog "$d" "$CEPH_OWNER_PID"
  fi
  say "cluster up: $(ceph "${c[@]}" health 2>&1)"
  UP_DIR= # success: nothing to undo
  cat "$d/cluster.env"
}

start_watchdog() { # start_watchdog DIR OWNER_PID: tear the cluster down once OWNER is gone
  local d=$1 owner=$2 self
  self=$(absdir "$(dirname "${BASH_SOURCE[0]}")")/$(basename "${BASH_SOURCE[0]}")
  (
    trap - EXIT INT TERM
    while [ -d "$d/run" ] && is_running "$owner"; do sleep 2; done
    if [ -d "$d/run" ]; then
      echo "owner pid $owner is gone: tearing down $d" >&2
      CEPH_IN_WATCHDOG=1 bash "$self" down "$d"
    fi
  ) </dev/null >/dev/null 2>&1 &
  echo $! >"$d/run/watchdog.pid"
  say "watchdog (pid $!) stops the cluster if pid $owner disappears"
}

on_up_exit() {
  local rc=$?
  if [ -n "${UP_DIR:-}" ] && [ -d "$UP_DIR" ]; then
    say "up failed (rc $rc): tearing down $UP_DIR"
    show_logs "$UP_DIR"
    if [ "${CEPH_KEEP_FAILED:-0}" = 1 ]; then
      stop_all "$UP_DIR"
      say "kept $UP_DIR (CEPH_KEEP_FAILED=1)"
    else
      cmd_down "$UP_DIR"
    fi
  fi
  exit "$rc"
}

# ---------------------------------------------------------------- down & rgw control

stop_all() {
  local d=$1 name pid
  # radosgw first: stopped together with the osd it can hang in shutdown
  for name in "${STOP_ORDER[@]}"; do stop_one "$d" "$name" TERM; done
  # the watchdog (a subshell of an earlier 'up', not a ceph daemon)
  if [ -z "${CEPH_IN_WATCHDOG:-}" ]; then
    pid=$(pid_of "$d" watchdog)
    if [ -n "$pid" ] && is_running "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'ceph\.sh'; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$d/run/watchdog.pid"
}

cmd_down() {
  local d=$1
  [ -d "$d" ] || { say "$d does not exist: nothing to stop"; return 0; }
  d=$(absdir "$d")
  [ -e "$d/$MARKER" ] || die "$d is not a cluster directory made by ceph.sh up; not touching it"
  stop_all "$d"
  rm -rf "$d"
  say "removed $d"
}

cmd_stop_rgw() {
  local d sig=${2:-TERM}
  d=$(absdir "$1")
  [ -e "$d/$MARKER" ] || die "$d is not a cluster directory"
  case $sig in TERM | KILL | INT) ;; *) die "signal must be TERM, KILL or INT" ;; esac
  [ -n "$(pid_of "$d" rgw)" ] || { say "radosgw is not running"; return 0; }
  stop_one "$d" rgw "$sig"
}

cmd_start_rgw() {
  local d pid
  d=$(absdir "$1")
  [ -e "$d/$MARKER" ] || die "$d is not a cluster directory"
  pid=$(pid_of "$d" rgw)
  if [ -n "$pid" ] && is_running "$pid"; then die "radosgw already running (pid $pid)"; fi
  need_binaries radosgw curl
  start_rgw_daemon "$d" || { show_logs "$d"; die "radosgw did not start again"; }
}

usage() {
  echo "usage: $0 up DIR | down DIR | stop-rgw DIR [TERM|KILL] | start-rgw DIR" >&2
  exit 2
}

case "${1:-}" in
  up)
    [ -n "${2:-}" ] || usage
    UP_DIR=
    trap on_up_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    cmd_up "$2"
    ;;
  down) [ -n "${2:-}" ] || usage; cmd_down "$2" ;;
  stop-rgw) [ -n "${2:-}" ] || usage; cmd_stop_rgw "$2" "${3:-TERM}" ;;
  start-rgw) [ -n "${2:-}" ] || usage; cmd_start_rgw "$2" ;;
  *) usage ;;
esac
