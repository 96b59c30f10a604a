#!/usr/bin/env bash
# Storage, kvmesh next to the plain tools, on this machine in one run:
#
#   1. `image import` of a 1 GiB file (streamed over gRPC, checked,
#      checksummed, synced) vs `cp` of the same file into the same directory;
#   2. 20 `vm create --image` (a thin qcow2 clone each, through the API,
#      until libvirt runs the guest) vs 20 full copies of the same image with
#      `qemu-img convert` (what a create that copies the image would cost).
#
#   scripts/bench-storage.sh [COUNT]     (default 20 creates)
#
# Runs one node on the machine's libvirtd (scripts/libvirtd.sh), release build,
# everything in one temporary directory on the same disk.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-20}
scripts/setup.sh >/dev/null
bash scripts/libvirtd.sh >/dev/null
cargo build -q --release -p kvmesh --bin kvmesh
K=$PWD/target/release/kvmesh
WORK=$(mktemp -d /var/tmp/kvmesh-bench-storage.XXXXXX)
PORT=7391
E="--endpoint 127.0.0.1:$PORT"
export KVMESH_CLIENT_CONFIG=$WORK/client.toml
cleanup() {
  pkill -f "kvmesh serve --name bench-storage" 2>/dev/null || true
  for d in $(virsh -c qemu:///system list --all --name | grep '^kvmesh-' || true); do
    if virsh -c qemu:///system dumpxml "$d" 2>/dev/null | grep -q "$WORK"; then
      virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
      virsh -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
    fi
  done
  for p in $(virsh -c qemu:///system pool-list --all --name | grep '^kvmesh-' || true); do
    if virsh -c qemu:///system pool-dumpxml "$p" 2>/dev/null | grep -q "$WORK"; then
      virsh -c qemu:///system pool-destroy "$p" >/dev/null 2>&1 || true
      virsh -c qemu:///system pool-undefine "$p" >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
secs() { python3 -c "import time; print(time.monotonic())"; }

"$K" serve --name bench-storage --listen "127.0.0.1:$PORT" --data-dir "$WORK/node" \
  --libvirt-uri qemu:///system --virt-type qemu --cpus 64 --memory-mib 65536 >"$WORK/node.log" 2>&1 &
for _ in $(seq 50); do "$K" $E cluster init >/dev/null 2>&1 && break; sleep 0.2; done
mkdir -p "$WORK/store"
"$K" $E storage add bench --kind local --path "$WORK/store" >/dev/null
for _ in $(seq 50); do "$K" $E -o json storage get bench | grep -q '"state":"active"' && break; sleep 0.2; done

echo "$(date -u +%F) kvmesh $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, files on $(df --output=source "$WORK" | tail -1)"
# 1 GiB of incompressible data, written and synced before anything is timed.
head -c 1G /dev/urandom >"$WORK/base.raw"
sync

t0=$(secs); cp "$WORK/base.raw" "$WORK/store/copy.raw"; sync "$WORK/store/copy.raw"; t1=$(secs)
rm -f "$WORK/store/copy.raw"
t2=$(secs); "$K" $E image import base "$WORK/base.raw" --storage bench >/dev/null; t3=$(secs)
python3 - "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
t0, t1, t2, t3 = map(float, sys.argv[1:])
cp, imp = t1 - t0, t3 - t2
print(f"import 1 GiB: cp+sync {cp:.2f} s ({1024/cp:.0f} MiB/s), kvmesh image import {imp:.2f} s ({1024/imp:.0f} MiB/s); import/cp throughput {cp/imp:.2f}")
PY

t4=$(secs)
for i in $(seq "$COUNT"); do
  "$K" $E vm create "clone$i" --memory 32 --image base --wait >/dev/null
done
t5=$(secs)
for i in $(seq "$COUNT"); do
  qemu-img convert -O qcow2 "$WORK/store/$(ls "$WORK/store" | grep '^image-' | head -1)" "$WORK/full$i.qcow2"
done
sync
t6=$(secs)
used=$(du -sm "$WORK/store" | cut -f1)
python3 - "$t4" "$t5" "$t6" "$COUNT" "$used" <<'PY'
import sys
t4, t5, t6 = map(float, sys.argv[1:4]); n = int(sys.argv[4]); used = int(sys.argv[5])
thin, full = t5 - t4, t6 - t5
print(f"{n} creates from a 1 GiB image: kvmesh thin clones (create --wait, each running) {thin:.2f} s ({thin/n*1000:.0f} ms each); "
      f"{n} full copies (qemu-img convert) {full:.2f} s ({full/n*1000:.0f} ms each); full/thin {full/thin:.1f}x; "
      f"domain holds {used} MiB for the image and {n} clones")
PY
