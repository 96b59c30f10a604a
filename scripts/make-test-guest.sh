#!/usr/bin/env bash
# Builds the tiny test guest: the Debian cloud kernel plus a busybox initramfs
# whose init prints a marker on the serial console every 2 seconds.
#
#   scripts/make-test-guest.sh [OUT_DIR]   (default: target/test-guest)
#
# Prints the kernel and initrd paths. Boots in about 2 s under TCG.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-target/test-guest}")
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

need=()
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || need+=(linux-image-cloud-amd64)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$OUT"
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -1)
cp "$kernel" "$OUT/vmlinuz"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev"
cp /bin/busybox "$root/bin/busybox"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
n=0
while true; do
  echo "KVMESH-TEST-GUEST-UP $n $(/bin/busybox cat /proc/uptime)"
  n=$((n+1))
  /bin/busybox sleep 2
done
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/initrd.gz"
echo "kernel=$OUT/vmlinuz"
echo "initrd=$OUT/initrd.gz"
