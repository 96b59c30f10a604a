#!/usr/bin/env bash
# HA restart with real guests: three testbed hosts (scripts/testbed.sh), three
# HA busybox guests under TCG; each round kills every process of one guest's
# host (node, libvirtd, QEMU) and times until every HA guest runs again on
# another host, then brings the host back. Prints p50/p99 over the rounds and
# the ratio of p99 to down_after (8 s), the floor set by the fencing argument.
#
#   scripts/bench-ha-testbed.sh [ROUNDS]     (default 10; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
cargo build -q -p kvmesh
scripts/libvirtd.sh >/dev/null
eval "$(scripts/make-test-guest.sh target/test-guest)"
export KVMESH_TESTBED_DIR=/tmp/kvmesh-testbed-bench
export KVMESH_BIN=$PWD/target/debug/kvmesh
TB=scripts/testbed.sh
trap 'bash $TB down >/dev/null 2>&1 || true' EXIT
bash $TB down >/dev/null 2>&1 || true
bash $TB up 3 >/dev/null
E=$(bash $TB addr h1)
K() { "$KVMESH_BIN" --endpoint "$1" "${@:2}"; }
for _ in $(seq 100); do
  [ "$(K "$E" -o json cluster status | grep -o '"role":"voter"' | wc -l)" -eq 3 ] && break; sleep 0.2
done
for i in 0 1 2; do
  K "$E" vm create "g$i" --memory 128 --ha --kernel "$kernel" --initrd "$initrd" --cmdline console=ttyS0 \
    --soft-anti-affinity bench --wait >/dev/null
done
node_of() { K "$1" -o json vm get "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"])'; }
all_running_off() { # endpoint host
  K "$1" -o json vm list | python3 -c "
import json,sys
vms=json.load(sys.stdin)
sys.exit(0 if all(v['state']=='running' and v['node']!='$2' for v in vms) else 1)"
}
times=()
for r in $(seq 1 "$ROUNDS"); do
  host=$(node_of "$E" "g$((r % 3))")
  other=h1; [ "$host" = h1 ] && other=h2
  OE=$(bash $TB addr $other)
  bash $TB kill-host "$host"
  t0=$(date +%s%N)
  until all_running_off "$OE" "$host" 2>/dev/null; do sleep 0.1; done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  times+=("$ms")
  echo "round $r: killed $host, all HA guests running elsewhere after ${ms} ms"
  bash $TB start-host "$host" >/dev/null
  until K "$OE" -o json node list | python3 -c "import json,sys; sys.exit(0 if all(n['state']=='up' for n in json.load(sys.stdin)) else 1)"; do sleep 0.5; done
  E=$OE
done
printf '%s\n' "${times[@]}" | sort -n | python3 -c "
import sys
t=[int(x) for x in sys.stdin]
p=lambda q: t[round((len(t)-1)*q)]
print(f'HA restart with real TCG guests: n={len(t)} p50 {p(0.5)} ms p99 {p(0.99)} ms max {t[-1]} ms; p99/down_after {p(0.99)/8000:.2f}')"
