#!/usr/bin/env bash
# Replicated writes, kvmesh next to etcd, on this machine in one run.
#
#   scripts/bench-writes.sh                 side by side: 3-node kvmesh with
#                                           TLS and tokens, the same with
#                                           `serve --insecure`, and 3-member
#                                           etcd 3.4 with TLS (clients and
#                                           peers, certificates required);
#                                           1/16/64/256 clients, leader and
#                                           follower
#   scripts/bench-writes.sh --scale [N,M]   how the cost grows with N host and
#                                           M VM records (default 1000,10000)
#
# Extra arguments go to the bench binary (--clients 1,64 --duration-secs 10).
# Installs etcd-server and etcd-client through apt when they are missing, and
# builds the release binaries (the --scale run also builds a `bench-seed`
# kvmesh into target/bench-seed: only that build can write synthetic records).
# Every data dir is on the same disk (a temp dir), fsync on for both systems.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd-server and etcd-client (apt)…" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
  # The package starts a system etcd on the default ports; the benchmark
  # runs its own members on free ports and does not need it.
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
scripts/setup.sh >/dev/null
# The bench stops its etcd members itself; this covers an interrupted run.
trap 'pkill -f "initial-cluster-token kvmesh-bench" 2>/dev/null || true' EXIT

cargo build -q --release -p kvmesh -p kvmesh-tests --bin kvmesh --bin bench-writes
if [ "${1:-}" = "--scale" ]; then
  shift
  SCALE=${1:-1000,10000}
  [ $# -gt 0 ] && shift
  CARGO_TARGET_DIR=target/bench-seed cargo build -q --release -p kvmesh --features bench-seed
  echo "$(date -u +%F) kvmesh $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  KVMESH_BIN=$PWD/target/bench-seed/release/kvmesh target/release/bench-writes --scale "$SCALE" "$@"
else
  echo "$(date -u +%F) kvmesh $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(etcd --version | head -1)"
  KVMESH_BIN=$PWD/target/release/kvmesh target/release/bench-writes "$@"
fi
