#!/usr/bin/env bash
# Guest-to-guest throughput and latency over a kvmesh VXLAN network against
# the testbed's plain bridge, on the same two hosts in the same run. Real TCG
# guests (scripts/make-test-guest.sh): a server on h1 streams zeros over TCP
# (busybox nc), a client on h2 reads MIB of them and pings the server 20
# times; the guests print what they measured on their consoles.
#
# The baseline ("plain"): each host gets a bridge tbr0 of its own, joined by a
# veth to one bridge in the machine's namespace, as hosts on one switch;
# kvmesh uses it as a `--kind bridge` network, so only the path differs:
# VXLAN (encapsulation, a 1450-byte MTU) against a plain L2 segment.
#
#   scripts/bench-network.sh [MIB]     (default 64; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-64}
# shellcheck source=scripts/bench-testbed-setup.sh
. scripts/bench-testbed-setup.sh
trap 'ip link del kvmtbp0 2>/dev/null || true; bash $TB down >/dev/null 2>&1 || true' EXIT
ip link del kvmtbp0 2>/dev/null || true
ip link add kvmtbp0 type bridge && ip link set kvmtbp0 up
for h in h1 h2; do
  ns=kvmtb-$h
  ip link add "vp-$h" type veth peer name tbr0-up netns "$ns"
  ip link set "vp-$h" master kvmtbp0 up
  ip netns exec "$ns" ip link add tbr0 type bridge
  ip netns exec "$ns" ip link set tbr0-up master tbr0 up
  ip netns exec "$ns" ip link set tbr0 up
done
K "$E" network add overlay --kind vxlan --vni 4242 >/dev/null
K "$E" network add plain --kind bridge --bridge tbr0 >/dev/null
for net in overlay plain; do
  for _ in $(seq 100); do
    [ "$(K "$E" -o json network get $net | grep -o '"state":"ready"' | wc -l)" -ge 2 ] && break; sleep 0.3
  done
done
for h in h1 h2; do K "$E" node set "$h" --label "bench=$h" >/dev/null; done

# run NETWORK: a server on h1 and a client on h2 on NETWORK; prints
# "MiB/s rtt_avg_ms" as the client's console reported them.
run() {
  local net=$1
  K "$E" vm create srv --memory 128 --nic "$net" --node-label bench=h1 --kernel guest-kernel \
    --initrd guest-initrd --cmdline "console=ttyS0 kvmesh.ip=10.77.0.1/24 kvmesh.serve=5001" --wait >/dev/null
  K "$E" vm create cli --memory 128 --nic "$net" --node-label bench=h2 --kernel guest-kernel --initrd guest-initrd \
    --cmdline "console=ttyS0 kvmesh.ip=10.77.0.2/24 kvmesh.rtt=10.77.0.1 kvmesh.fetch=10.77.0.1:5001:$MIB" \
    --wait >/dev/null
  local out=""
  for _ in $(seq 120); do
    out=$(K "$E" -o json vm console cli | python3 -c '
import json, sys
data = json.load(sys.stdin)["data"]
fetch = [l.split() for l in data.splitlines() if l.startswith("KVMESH-FETCH ")]
rtt = [l for l in data.splitlines() if l.startswith("KVMESH-RTT ")]
if fetch and rtt:
    _, got, t0, t1 = fetch[-1][:4]
    avg = rtt[-1].split("=")[-1].split("/")[1]
    print(f"{int(got) / 1048576 / (float(t1) - float(t0)):.2f} {avg} {got} {float(t1) - float(t0):.1f}")
' 2>/dev/null || true)
    [ -n "$out" ] && break; sleep 1
  done
  [ -n "$out" ] || { echo "bench-network: no result over $net; the client's console:" >&2; K "$E" vm console cli --tail | tail -20 >&2; exit 1; }
  K "$E" vm delete cli --yes --wait >/dev/null
  K "$E" vm delete srv --yes --wait >/dev/null
  [ -n "$out" ] || { echo "bench-network: no result over $net; the client's console:" >&2; K "$E" vm console cli --tail >&2; exit 1; }
  echo "$out"
}
plain=$(run plain) || exit 1
overlay=$(run overlay) || exit 1
read -r plain_tp plain_rtt plain_bytes plain_secs <<<"$plain"
read -r vx_tp vx_rtt vx_bytes vx_secs <<<"$overlay"
echo "guest to guest, h1 -> h2, $MIB MiB over TCP, 20 pings (TCG guests)"
printf '%-22s %12s %14s\n' network "MiB/s" "rtt avg (ms)"
printf '%-22s %12s %14s\n' "plain bridge" "$plain_tp" "$plain_rtt"
printf '%-22s %12s %14s\n' "kvmesh vxlan" "$vx_tp" "$vx_rtt"
[ "$plain_bytes" -eq $((MIB * 1048576)) ] && [ "$vx_bytes" -eq $((MIB * 1048576)) ] ||
  { echo "bench-network: a client read $plain_bytes / $vx_bytes bytes, not $MIB MiB" >&2; exit 1; }
echo "(read $MIB MiB in ${plain_secs}s plain, ${vx_secs}s vxlan)"
python3 -c "print(f'vxlan/plain: throughput {float($vx_tp)/float($plain_tp):.2f}x, rtt {float($vx_rtt)/float($plain_rtt):.2f}x')"
