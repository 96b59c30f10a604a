#!/usr/bin/env bash
# HA restart with real guests: three testbed hosts (scripts/testbed.sh), three
# HA busybox guests under TCG. Each round makes one guest's host fail in one of
# two ways, alternately: every process of the host killed (node, libvirtd,
# QEMU: a host death), or only its kvmesh daemon killed (the fence guard then
# kills the guests), and times until every HA guest runs again on another
# host; then brings the host (or its daemon) back. Prints p50/p99 per kind,
# the ratio of the two, and of p99 to down_after (8 s), the floor set by the
# fencing argument.
#
#   scripts/bench-ha-testbed.sh [ROUNDS]     (default 10 of each; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
# shellcheck source=scripts/bench-testbed-setup.sh
. scripts/bench-testbed-setup.sh
for i in 0 1 2; do
  K "$E" vm create "g$i" --memory 128 --ha --kernel guest-kernel --initrd guest-initrd --cmdline console=ttyS0 \
    --soft-anti-affinity bench --wait >/dev/null
done
node_of() { K "$1" -o json vm get "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"])'; }
all_running_off() { # endpoint host
  K "$1" -o json vm list | python3 -c "
import json,sys
vms=json.load(sys.stdin)
sys.exit(0 if all(v['state']=='running' and v['node']!='$2' for v in vms) else 1)"
}
declare -A times=([host]="" [daemon]="")
for r in $(seq 1 $((2 * ROUNDS))); do
  kind=host; [ $((r % 2)) -eq 0 ] && kind=daemon
  host=$(node_of "$E" "g$((r % 3))")
  other=h1; [ "$host" = h1 ] && other=h2
  OE=$(bash $TB addr $other)
  if [ $kind = host ]; then bash $TB kill-host "$host"; else bash $TB signal "$host" daemon KILL; fi
  t0=$(date +%s%N)
  until all_running_off "$OE" "$host" 2>/dev/null; do sleep 0.1; done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  times[$kind]+="$ms "
  echo "round $r: killed $host's $([ $kind = host ] && echo processes || echo daemon), all HA guests running elsewhere after ${ms} ms"
  if [ $kind = host ]; then bash $TB start-host "$host" >/dev/null; else bash $TB start-daemon "$host" >/dev/null; fi
  until K "$OE" -o json node list | python3 -c "import json,sys; sys.exit(0 if all(n['state']=='up' for n in json.load(sys.stdin)) else 1)"; do sleep 0.5; done
  E=$OE
done
python3 -c "
import sys
def stats(xs):
    t=sorted(int(x) for x in xs.split())
    p=lambda q: t[round((len(t)-1)*q)]
    return len(t), p(0.5), p(0.99), t[-1]
h=stats('${times[host]}'); d=stats('${times[daemon]}')
for name,(n,p50,p99,mx) in (('whole host killed',h),('daemon only killed',d)):
    print(f'HA restart, {name}: n={n} p50 {p50} ms p99 {p99} ms max {mx} ms; p99/down_after {p99/8000:.2f}')
print(f'daemon-only / whole-host: p50 {d[1]/h[1]:.2f}x, p99 {d[2]/h[2]:.2f}x')"
