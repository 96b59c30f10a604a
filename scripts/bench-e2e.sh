#!/usr/bin/env bash
# End-to-end create throughput: N VMs (default 2000) created through the API
# of a 3-node loopback cluster on libvirt's test driver, C at a time
# (default 16), each through a random node with the real CLI. Every create is
# placed by the leader's scheduler and committed through Raft; each node's
# agent then defines and starts the domain and reports it running (a second
# Raft write per VM).
#
# Baseline, same script and machine: the same number of `cluster status`
# calls at the same concurrency (CLI start-up plus one gRPC round trip and no
# Raft write), so the ratio shows what placement and replication add.
#
#   scripts/bench-e2e.sh [N] [C]     (release build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
C=${2:-16}
cargo build -q --release -p kvmesh
BIN=$PWD/target/release/kvmesh
DIR=$(mktemp -d)
# TLS and an admin token, as shipped: init writes them here.
export KVMESH_CLIENT_CONFIG=$DIR/client.toml
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
P=${KVMESH_BENCH_PORT:-7300}
for i in 0 1 2; do
  join=(); [ $i -gt 0 ] && join=(--join 127.0.0.1:$P --join-token "$("$BIN" --endpoint 127.0.0.1:$P cluster token create --name b$i 2>/dev/null)")
  "$BIN" serve --name b$i --listen 127.0.0.1:$((P + i)) --data-dir "$DIR/b$i" --libvirt-uri test:///default \
    --cpus 10000 --memory-mib 100000000 "${join[@]}" >"$DIR/b$i.log" 2>&1 &
  sleep 0.3
  [ $i -eq 0 ] && "$BIN" --endpoint 127.0.0.1:$P cluster init >/dev/null
done
for _ in $(seq 100); do
  [ "$("$BIN" --endpoint 127.0.0.1:$P -o json cluster status | grep -o '"role":"voter"' | wc -l)" -eq 3 ] && break
  sleep 0.1
done

now() { date +%s.%N; }
run() { # $1 = label, rest = command template with {} for the index
  local label=$1; shift
  local start end
  start=$(now)
  seq 1 "$N" | xargs -P "$C" -I{} sh -c "$*" >/dev/null
  end=$(now)
  echo "$label $(echo "$end - $start" | bc)"
}
base=$(run baseline "$BIN --endpoint 127.0.0.1:\$(( $P + {} % 3 )) cluster status")
create=$(run create "$BIN --endpoint 127.0.0.1:\$(( $P + {} % 3 )) vm create vm-{} --vcpus 1 --memory 64")
base_s=${base#* }; create_s=${create#* }
count=$("$BIN" --endpoint 127.0.0.1:$P -o json vm list --consistent | grep -o '"name"' | wc -l)
# Wait for every VM to be reported running by its host.
for _ in $(seq 600); do
  running=$("$BIN" --endpoint 127.0.0.1:$P -o json vm list | grep -o '"state":"running"' | wc -l)
  [ "$running" -ge "$N" ] && break
  sleep 0.1
done
end_running=$(now)
printf 'created %s VMs (listed: %s, running: %s) at concurrency %s\n' "$N" "$count" "$running" "$C"
printf 'vm create:        %.1f VMs/s (%.2f s)\n' "$(echo "$N / $create_s" | bc -l)" "$create_s"
printf 'baseline status:  %.1f calls/s (%.2f s)\n' "$(echo "$N / $base_s" | bc -l)" "$base_s"
printf 'ratio create/baseline time: %.2fx\n' "$(echo "$create_s / $base_s" | bc -l)"
[ "$count" -eq "$N" ] || { echo "expected $N VMs, listed $count" >&2; exit 1; }
