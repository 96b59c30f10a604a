#!/usr/bin/env bash
# A local kvmesh cluster on 127.0.0.1 for trying things out.
#
#   scripts/dev-cluster.sh up [N] [--libvirt-uri URI]
#                                   build, start N nodes (default 3), init, join, show status;
#                                   the hypervisor defaults to test:///default (no daemon);
#                                   with qemu:///system the nodes share one libvirtd
#   scripts/dev-cluster.sh demo     create three small VMs (web1..web3) and list them
#   scripts/dev-cluster.sh status   cluster status and nodes
#   scripts/dev-cluster.sh down     stop the nodes (data is kept; `up` resumes it)
#   scripts/dev-cluster.sh clean    stop and delete all data
#
# Node i listens on 127.0.0.1:(7100+i-1); node 1 is on the CLI's default
# endpoint. Data dirs and logs live under .dev-cluster/ (override with
# KVMESH_DEV_DIR). The cluster runs as in production: TLS between everyone,
# nodes joined with one-time join tokens, and the CLI authenticated with the
# admin token that `cluster init` wrote, with the cluster CA, to
# .dev-cluster/client.toml (export KVMESH_CLIENT_CONFIG=… to use it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${KVMESH_DEV_DIR:-$ROOT/.dev-cluster}
BIN=$ROOT/target/debug/kvmesh
export KVMESH_CLIENT_CONFIG=$DIR/client.toml
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

port() { echo $((7100 + $1 - 1)); }
kv() { "$BIN" --endpoint "127.0.0.1:$(port 1)" "$@"; }

running() { [ -f "$DIR/n$1.pid" ] && kill -0 "$(cat "$DIR/n$1.pid")" 2>/dev/null; }

start_node() {
  local i=$1 join=${2:-}
  running "$i" && return 0
  local args=(serve --name "n$i" --listen "127.0.0.1:$(port "$i")" --data-dir "$DIR/n$i" --libvirt-uri "$LIBVIRT_URI")
  [ "$LIBVIRT_URI" != "test:///default" ] && args+=(--virt-type "${VIRT_TYPE:-qemu}")
  if [ -n "$join" ] && [ ! -f "$DIR/n$i/kvmesh-node.json" ]; then
    # Invited with a one-time join token, as on real hosts.
    # (In the environment, not on the command line that `ps` shows.)
    args+=(--join "$join")
    export KVMESH_JOIN_TOKEN
    KVMESH_JOIN_TOKEN=$(kv cluster token create --name "n$i" 2>/dev/null)
  fi
  nohup "$BIN" "${args[@]}" >>"$DIR/n$i.log" 2>&1 &
  echo $! >"$DIR/n$i.pid"
  unset KVMESH_JOIN_TOKEN
  for _ in $(seq 100); do
    running "$i" || break
    (exec 3<>"/dev/tcp/127.0.0.1/$(port "$i")") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node n$i did not start; see $DIR/n$i.log" >&2
  tail -5 "$DIR/n$i.log" >&2
  if grep -q "written by an older kvmesh" "$DIR/n$i.log"; then
    echo "this dev cluster's data was written by an older build: \`scripts/dev-cluster.sh clean\` starts it over" >&2
  fi
  exit 1
}

up() {
  local n=${1:-3}
  mkdir -p "$DIR"
  echo "building kvmesh…"
  cargo build -q -p kvmesh
  local fresh=0
  [ -f "$DIR/n1/kvmesh-node.json" ] || fresh=1
  start_node 1
  if [ $fresh = 1 ]; then kv cluster init; fi
  for i in $(seq 2 "$n"); do start_node "$i" "127.0.0.1:$(port 1)"; done
  # Wait until every node is a member.
  for _ in $(seq 100); do
    [ "$(kv -o json cluster status | grep -o '"role"' | wc -l)" -ge "$n" ] && break
    sleep 0.2
  done
  # ...and reports its storage (disks are placed only where it is active).
  for _ in $(seq 100); do
    [ "$(kv -o json storage get local | grep -o '"state":"active"' | wc -l)" -ge "$n" ] && break
    sleep 0.2
  done
  echo
  status
  echo
  echo "data dirs and logs: $DIR/n<i> and $DIR/n<i>.log"
  echo "hypervisor: $LIBVIRT_URI"
  echo "client config (cluster CA, admin token): $KVMESH_CLIENT_CONFIG"
  echo "try: export KVMESH_CLIENT_CONFIG=$KVMESH_CLIENT_CONFIG; $BIN vm create web1 --vcpus 1 --memory 256 --wait && $BIN vm list"
}

demo() {
  for name in web1 web2 web3; do
    if ! kv vm get "$name" >/dev/null 2>&1; then
      kv vm create "$name" --vcpus 1 --memory 256 --disk 1G --wait
    fi
  done
  echo
  kv vm list
  # The web UI: the nodes' certificates name kvmesh-node, signed by the
  # cluster CA (written out here for a browser to import).
  sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$KVMESH_CLIENT_CONFIG" > "$DIR/ca.crt"
  echo
  echo "web UI: https://kvmesh-node:$(port 1)/ with kvmesh-node resolving to 127.0.0.1 (a hosts entry, or"
  echo "  chromium --host-resolver-rules='MAP kvmesh-node 127.0.0.1'), the CA $DIR/ca.crt imported, and the token"
  echo "  in $KVMESH_CLIENT_CONFIG to log in"
}

status() {
  kv cluster status
  echo
  kv node list
}

down() {
  for pidfile in "$DIR"/n*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  echo "stopped (data kept in $DIR)"
}

LIBVIRT_URI=test:///default
cmd=${1:-}; shift || true
n=3
while [ $# -gt 0 ]; do
  case "$1" in
    --libvirt-uri) LIBVIRT_URI=$2; shift 2 ;;
    --libvirt-uri=*) LIBVIRT_URI=${1#*=}; shift ;;
    [0-9]*) n=$1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

case "$cmd" in
  up) up "$n" ;;
  demo) demo ;;
  status) status ;;
  down) down ;;
  clean) down; rm -rf "$DIR"; echo "deleted $DIR" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
