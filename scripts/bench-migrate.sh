#!/usr/bin/env bash
# Live migration with real guests on the testbed (scripts/testbed.sh): a
# 256 MiB busybox guest under TCG, idle or (--dirty MIB) rewriting MIB of its
# memory without pause, its disk on the shared domain, moved back and forth
# between two hosts ROUNDS times by `kvmesh vm migrate --wait`.
# Baseline in the same run: a plain libvirt domain of the same definition
# (same kernel, initrd, memory; its own copy of the disk), moved back and
# forth by hand with `virsh migrate --live --p2p` and the flags kvmesh uses.
# (The two hosts: the one the VM lands on and another.) Prints p50/p99 of the total time (as the caller sees it) and of the guest's
# downtime (libvirt's job statistics on the target; for kvmesh plus the time
# the target holds the guest paused until the move is committed), and
# kvmesh/virsh. The guest's own view of its downtime: it prints a line every
# 10 ms (`kvmesh.tick`), and scripts/console-gaps.py reports the longest gap
# between two lines arriving in its console logs during each move.
#
#   scripts/bench-migrate.sh [ROUNDS] [--dirty MIB]     (default 10; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
DIRTY=""; [ "${2:-}" = --dirty ] && DIRTY=${3:?--dirty needs MiB}
CMDLINE="console=ttyS0 kvmesh.tick${DIRTY:+ kvmesh.dirty=$DIRTY}"
# shellcheck source=scripts/bench-testbed-setup.sh
. scripts/bench-testbed-setup.sh
K "$E" vm create bm --memory 256 --disk 64M@shared --kernel guest-kernel --initrd guest-initrd --cmdline "$CMDLINE" \
  --wait >/dev/null
ID=$(K "$E" -o json vm get bm | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# Back and forth between the host it landed on (A) and another (B).
A=$(K "$E" -o json vm get bm | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"])')
B=h1; [ "$A" = h1 ] && B=h2
DOM=kvmesh-$ID
sleep 8
# The longest gap in the guest's 10 ms ticks while CMD runs, read from the
# console logs LOGS... (both hosts'): gap LOG... -- CMD...
gap() {
  local logs=()
  while [ "$1" != -- ]; do logs+=("$1"); shift; done; shift
  python3 scripts/console-gaps.py "${logs[@]}" >"$KVMESH_TESTBED_DIR/gap" & local watcher=$!
  sleep 0.3
  local t0; t0=$(now_ms); "$@" >/dev/null; echo $(($(now_ms) - t0)) >"$KVMESH_TESTBED_DIR/took"
  sleep 0.3
  kill -TERM "$watcher"; wait "$watcher" || true
  cat "$KVMESH_TESTBED_DIR/gap"
}
consoles() { echo "$KVMESH_TESTBED_DIR/$A/kvmesh/consoles/$1.log" "$KVMESH_TESTBED_DIR/$B/kvmesh/consoles/$1.log"; }
ip_of() { echo "10.254.77.$((10 + ${1#h}))"; }
V() { local h=$1; shift; virsh -c "qemu+tcp://$(ip_of "$h")/system" "$@"; }
downtime() { V "$1" domjobinfo "$2" --completed 2>/dev/null | awk '/Total downtime/ {print $3}'; }
# kvmesh keeps the guest paused on the target until the move is committed:
# the time from the source's libvirt returning to the target's resume, from
# the two daemons' logs (one clock), adds to libvirt's downtime.
held_ms() { # from to
  python3 - "$KVMESH_TESTBED_DIR/$1/kvmesh.log" "$KVMESH_TESTBED_DIR/$2/kvmesh.log" <<'PY'
import sys, datetime
def last(path, text):
    t = None
    for line in open(path, errors="replace"):
        if text in line:
            t = datetime.datetime.fromisoformat(line.split()[0].rstrip("Z")[:26])
    return t
done = last(sys.argv[1], "live migration completed")
resumed = last(sys.argv[2], "resuming the guest a live migration brought here")
print(int((resumed - done).total_seconds() * 1000) if done and resumed else "")
PY
}

# The plain domain: kvmesh's definition without its tag, under another name,
# over a copy of the disk.
cp "$SHARED/$ID-disk0.qcow2" "$SHARED/plain-disk0.qcow2"
V "$A" dumpxml "$DOM" | python3 -c '
import re,sys
x=sys.stdin.read()
x=re.sub(r"<name>[^<]*</name>","<name>plain-bm</name>",x,count=1)
x=re.sub(r"\s*<uuid>[^<]*</uuid>","",x,count=1)
x=re.sub(r"\s*<metadata>.*?</metadata>","",x,count=1,flags=re.S)
x=re.sub(r"'"$ID"'-disk0.qcow2","plain-disk0.qcow2",x)
x=re.sub(r"kvmesh-'"$ID"'.log","plain-bm.log",x)
print(x)' >"$KVMESH_TESTBED_DIR/plain.xml"
V "$A" define "$KVMESH_TESTBED_DIR/plain.xml" >/dev/null
V "$A" start plain-bm >/dev/null
sleep 5

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
declare -a k_total k_down k_held k_gap v_total v_down v_gap idle_gap
# shellcheck disable=SC2046
for r in $(seq 1 "$ROUNDS"); do
  to=$B from=$A; [ $((r % 2)) -eq 0 ] && to=$A from=$B
  # What the guest's ticks look like when nothing moves it, as long.
  idle_gap+=("$(gap $(consoles "$DOM") -- sleep 2)")
  k_gap+=("$(gap $(consoles "$DOM") -- K "$E" vm migrate bm --to "$to" --wait)")
  held=$(held_ms "$from" "$to"); libvirt_down=$(downtime "$to" "$DOM")
  k_total+=("$(cat "$KVMESH_TESTBED_DIR/took")"); k_down+=("$((${libvirt_down:-0} + ${held:-0}))"); k_held+=("${held:-0}")
  v_gap+=("$(gap $(consoles plain-bm) -- V "$from" migrate --live --p2p --persistent --undefinesource --unsafe \
    --auto-converge plain-bm "qemu+tcp://$(ip_of "$to")/system" --migrateuri "tcp://$(ip_of "$to")")")
  v_total+=("$(cat "$KVMESH_TESTBED_DIR/took")"); v_down+=("$(downtime "$to" plain-bm)")
  sleep 1
done
pct() { # p50|p99 of the numbers given
  python3 -c 'import sys,math; v=sorted(float(x) for x in sys.argv[2:] if x); q=float(sys.argv[1])
print(int(v[min(len(v)-1, math.ceil(q*len(v))-1)]) if v else "n/a")' "$@"
}
KIND="idle"; [ -n "$DIRTY" ] && KIND="rewriting $DIRTY MiB of its memory"
echo "live migration of a 256 MiB TCG guest, $KIND, $ROUNDS rounds each (ms):"
printf '  kvmesh vm migrate --wait: total p50 %s p99 %s; downtime p50 %s p99 %s\n' \
  "$(pct 0.5 "${k_total[@]}")" "$(pct 0.99 "${k_total[@]}")" "$(pct 0.5 "${k_down[@]}")" "$(pct 0.99 "${k_down[@]}")"
printf '    of which paused on the target until the move was committed: p50 %s p99 %s\n' \
  "$(pct 0.5 "${k_held[@]}")" "$(pct 0.99 "${k_held[@]}")"
printf '  virsh migrate --live:     total p50 %s p99 %s; downtime p50 %s p99 %s\n' \
  "$(pct 0.5 "${v_total[@]}")" "$(pct 0.99 "${v_total[@]}")" "$(pct 0.5 "${v_down[@]}")" "$(pct 0.99 "${v_down[@]}")"
printf '  longest gap in the guest'"'"'s 10 ms ticks: kvmesh p50 %s p99 %s; virsh p50 %s p99 %s; unmoved p50 %s p99 %s\n' \
  "$(pct 0.5 "${k_gap[@]}")" "$(pct 0.99 "${k_gap[@]}")" "$(pct 0.5 "${v_gap[@]}")" "$(pct 0.99 "${v_gap[@]}")" \
  "$(pct 0.5 "${idle_gap[@]}")" "$(pct 0.99 "${idle_gap[@]}")"
python3 -c 'import sys; a=sorted(map(int,sys.argv[1].split())); b=sorted(map(int,sys.argv[2].split()))
print("  kvmesh/virsh total time: p50 %.2fx" % (a[len(a)//2]/b[len(b)//2]))' "${k_total[*]}" "${v_total[*]}"
