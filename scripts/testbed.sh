#!/usr/bin/env bash
# Simulated hosts on one machine, each a network namespace plus a private
# mount namespace with its own libvirtd (real QEMU/TCG guests, disk leases
# by virtlockd) and its own kvmesh node. Hosts are joined by a bridge; they
# reach each other (and the machine reaches them) only on the testbed's own
# subnet.
#
#   scripts/testbed.sh up N           start N hosts (h1..hN), bootstrap h1, join the rest
#   scripts/testbed.sh down           stop everything and remove the namespaces and files
#   scripts/testbed.sh kill-host H    kill -9 every process of host H (node, libvirtd, guests)
#   scripts/testbed.sh start-host H   start host H again (same data dir)
#   scripts/testbed.sh partition H    cut host H's link; heal H restores it
#   scripts/testbed.sh heal H
#   scripts/testbed.sh addr H         print H's kvmesh address
#   scripts/testbed.sh virsh H ARGS   run virsh against H's libvirtd
#   scripts/testbed.sh pid H WHAT     pid of H's daemon, guard, libvirtd or virtlockd
#   scripts/testbed.sh signal H WHAT SIG  send SIG (KILL, STOP, CONT) to H's daemon, guard or libvirtd
#   scripts/testbed.sh start-daemon H start only H's kvmesh daemon again (libvirtd and guests untouched)
#   scripts/testbed.sh start-libvirtd H  start H's libvirtd again after it was killed
#   scripts/testbed.sh freeze H | thaw H  fsfreeze H's data dir (needs KVMESH_TESTBED_LOOP)
#   scripts/testbed.sh hide-ovmf H | show-ovmf H  H loses (regains) its OVMF firmware: an empty
#                                     /usr/share/OVMF in its own mount namespace
#
# Needs root, iproute2 and scripts/libvirtd.sh's packages. Environment:
# KVMESH_BIN (default target/debug/kvmesh), KVMESH_TESTBED_DIR (default
# /tmp/kvmesh-testbed), KVMESH_TESTBED_NODE_ARGS (extra `kvmesh serve` flags),
# KVMESH_TESTBED_LOOP (hosts, e.g. "h3", whose kvmesh data dir is a loop-mounted
# ext4 of its own, so that `freeze H` / `thaw H` (fsfreeze) hit only that host).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${KVMESH_BIN:-$ROOT/target/debug/kvmesh}
BASE=${KVMESH_TESTBED_DIR:-/tmp/kvmesh-testbed}
# `cluster init` writes the cluster CA and the admin token here; every CLI
# call of this script (and of whoever sets the same variable) uses it.
export KVMESH_CLIENT_CONFIG=${KVMESH_CLIENT_CONFIG:-$BASE/client.toml}
BR=kvmtb0
NET=10.254.77
PORT=7100

ip_of() { echo "$NET.$((10 + ${1#h}))"; }
ns_of() { echo "kvmtb-$1"; }

start_host() {
  local h=$1 ns dir ip join=${2:-}
  ns=$(ns_of "$h"); dir=$BASE/$h; ip=$(ip_of "$h")
  mkdir -p "$dir"/{run,lib/qemu,lib/images,etc,log,cache,kvmesh}
  if [[ " ${KVMESH_TESTBED_LOOP:-} " == *" $h "* ]] && ! mountpoint -q "$dir/kvmesh"; then
    [ -f "$dir/data.img" ] || { truncate -s 1G "$dir/data.img"; mkfs.ext4 -q "$dir/data.img"; }
    mount -o loop "$dir/data.img" "$dir/kvmesh"
  fi
  if [ ! -f "$dir/etc/libvirtd.conf" ]; then
    cp -a /etc/libvirt/. "$dir/etc/"
    cat >"$dir/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
tcp_port = "16509"
listen_addr = "$ip"
auth_tcp = "none"
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
CONF
    cp "$ROOT/scripts/qemu-test.conf" "$dir/etc/qemu.conf"
    # Disk leases through libvirt's lock manager, as on a production host
    # (README, "Disk leases"): virtlockd locks each disk file itself, so a
    # disk on the shared folder is locked for every host and a local disk
    # only for its own.
    echo 'lock_manager = "lockd"' >>"$dir/etc/qemu.conf"
    printf 'auto_disk_leases = 1\nrequire_lease_for_disks = 1\n' >"$dir/etc/qemu-lockd.conf"
  fi
  ip netns exec "$ns" unshare --mount --propagation private sh -c "
    mount --bind '$dir/run' /run/libvirt
    mount --bind '$dir/lib' /var/lib/libvirt
    mount --bind '$dir/etc' /etc/libvirt
    mount --bind '$dir/log' /var/log/libvirt
    mount --bind '$dir/cache' /var/cache/libvirt 2>/dev/null || true
    virtlogd -d --pid-file '$dir/virtlogd.pid'
    virtlockd -d --pid-file '$dir/virtlockd.pid'
    libvirtd -d --listen --pid-file '$dir/libvirtd.pid'
    for i in \$(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
    exec $(serve_cmd "$h" "$join")
  " &
  wait_port "$h"
}

# The daemon's command line for host H (joining JOIN on its first start).
serve_cmd() {
  local h=$1 join=${2:-} dir=$BASE/$1
  local args=(serve --name "$h" --listen "$(ip_of "$h"):$PORT" --data-dir "$dir/kvmesh" --libvirt-uri qemu:///system --virt-type qemu)
  if [ -n "$join" ] && [ ! -f "$dir/kvmesh/kvmesh-node.json" ]; then
    # A new host is invited with a one-time join token, as an operator would.
    local token
    token=$("$BIN" --endpoint "$join" cluster token create --name "$h" 2>/dev/null) || {
      echo "cannot make a join token for $h through $join" >&2
      return 1
    }
    args+=(--join "$join" --join-token "$token")
  fi
  # shellcheck disable=SC2086
  args+=(${KVMESH_TESTBED_NODE_ARGS:-})
  echo "'$BIN' ${args[*]@Q} >>'$dir/kvmesh.log' 2>&1"
}

wait_port() {
  local h=$1 ip; ip=$(ip_of "$1")
  for _ in $(seq 150); do
    (exec 3<>"/dev/tcp/$ip/$PORT") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "host $h did not start; see $BASE/$h/kvmesh.log and $BASE/$h/log/libvirtd.log" >&2
  return 1
}

# The pid of H's daemon, guard or libvirtd (empty if none runs).
pid_of() {
  local h=$1 what=$2 pid cmd
  for pid in $(ip netns pids "$(ns_of "$h")" 2>/dev/null); do
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    case "$what" in
      daemon) [[ "$cmd" == *" serve --name $h "* ]] && { echo "$pid"; return; } ;;
      guard) [[ "$cmd" == *" guard --data-dir $BASE/$h/kvmesh "* ]] && { echo "$pid"; return; } ;;
      libvirtd) [[ "$cmd" == libvirtd* ]] && { echo "$pid"; return; } ;;
      virtlockd) [[ "$cmd" == virtlockd* ]] && { echo "$pid"; return; } ;;
      *) echo "pid: daemon, guard, libvirtd or virtlockd, not $what" >&2; return 2 ;;
    esac
  done
}

# Runs a command inside H's namespaces (its network and its libvirt mounts).
in_host() {
  local h=$1 anchor; shift
  anchor=$(cat "$BASE/$h/virtlogd.pid")
  exec nsenter -t "$anchor" -m -n "$@"
}

start_daemon() {
  local h=$1
  [ -z "$(pid_of "$h" daemon)" ] || { echo "$h's daemon already runs" >&2; return 1; }
  # Its own stdio: a caller reading this script's output must not wait on
  # the daemon.
  (in_host "$h" sh -c "exec $(serve_cmd "$h")") </dev/null >/dev/null 2>&1 &
  wait_port "$h"
}

start_libvirtd() {
  local h=$1 dir=$BASE/$1
  (in_host "$h" sh -c "libvirtd -d --listen --pid-file '$dir/libvirtd.pid'; for i in \$(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1")
}

up() {
  local n=${1:-3}
  [ "$(id -u)" -eq 0 ] || { echo "testbed needs root" >&2; exit 1; }
  mkdir -p "$BASE"
  ip link show "$BR" >/dev/null 2>&1 || {
    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
    ip link set "$BR" up
  }
  for i in $(seq 1 "$n"); do
    local h=h$i ns
    ns=$(ns_of "$h")
    if ! ip netns list | grep -qw "$ns"; then
      ip netns add "$ns"
      ip link add "veth-$h" type veth peer name eth0 netns "$ns"
      ip link set "veth-$h" master "$BR" up
      ip netns exec "$ns" ip addr add "$(ip_of "$h")/24" dev eth0
      ip netns exec "$ns" ip link set eth0 up
      ip netns exec "$ns" ip link set lo up
    fi
  done
  start_host h1
  "$BIN" --endpoint "$(ip_of h1):$PORT" cluster init >/dev/null 2>&1 || true
  for i in $(seq 2 "$n"); do start_host "h$i" "$(ip_of h1):$PORT"; done
  echo "testbed: $n hosts; h1 at $(ip_of h1):$PORT; files in $BASE"
}

kill_host() {
  local ns; ns=$(ns_of "$1")
  # Every process in the host's network namespace: node, libvirtd, QEMU.
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && return 0; sleep 0.1; done
}

down() {
  # A frozen data dir would keep its processes from dying.
  for m in "$BASE"/h*/kvmesh; do
    mountpoint -q "$m" 2>/dev/null && fsfreeze -u "$m" 2>/dev/null || true
  done
  for ns in $(ip netns list | awk '{print $1}' | grep '^kvmtb-' || true); do
    kill_host "${ns#kvmtb-}"
    ip netns del "$ns" 2>/dev/null || true
  done
  for l in $(ip -o link show | awk -F': ' '{print $2}' | grep '^veth-h' | cut -d@ -f1 || true); do ip link del "$l" 2>/dev/null || true; done
  ip link del "$BR" 2>/dev/null || true
  for m in "$BASE"/h*/kvmesh; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$BASE"
  echo "testbed: down"
}

case "${1:-}" in
  up) up "${2:-3}" ;;
  down) down ;;
  kill-host) kill_host "$2" ;;
  start-host) start_host "$2" "$(ip_of h1):$PORT" ;;
  partition) ip link set "veth-$2" down ;;
  heal) ip link set "veth-$2" up ;;
  addr) echo "$(ip_of "$2"):$PORT" ;;
  virsh) h=$2; shift 2; virsh -c "qemu+tcp://$(ip_of "$h")/system" "$@" ;;
  pid) pid_of "$2" "$3" ;;
  signal)
    pid=$(pid_of "$2" "$3")
    [ -n "$pid" ] || { echo "no $3 runs on $2" >&2; exit 1; }
    kill -"$4" "$pid" ;;
  start-daemon) start_daemon "$2" ;;
  start-libvirtd) start_libvirtd "$2" ;;
  freeze) fsfreeze -f "$BASE/$2/kvmesh" ;;
  thaw) fsfreeze -u "$BASE/$2/kvmesh" ;;
  hide-ovmf) (in_host "$2" mount -t tmpfs -o size=64k kvmesh-no-ovmf /usr/share/OVMF) ;;
  show-ovmf) (in_host "$2" umount /usr/share/OVMF) ;;
  *) sed -n '2,29p' "$0"; exit 2 ;;
esac
