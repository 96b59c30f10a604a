#!/usr/bin/env bash
# Builds the tiny test guest: the Debian cloud kernel plus a busybox initramfs
# whose init prints a marker on the serial console every 2 seconds.
#
# The kernel builds virtio as modules, so the initramfs carries virtio_blk and
# virtio_net with their dependencies and loads them. With a disk (/dev/vda),
# the first boot writes a random marker to its first sector and every boot
# counts itself in the second; the console then shows
#   KVMESH-DISK KVMESH-MARKER-<uuid> boots=<n>
# so a test can tell whether a disk kept its data (and a revert undid a boot).
# Two modes for benchmarks (kernel command line): kvmesh.dirty=MIB keeps
# dirtying memory, kvmesh.tick prints a line every 10 ms.
# Networks: kvmesh.ip=ADDR/PREFIX gives the first NIC that address (it
# prints KVMESH-MAC <its MAC>), kvmesh.ping=IP[,IP...] pings each every
# second and prints KVMESH-PING <ip> ok|fail <n>, and kvmesh.serve=PORT
# answers TCP on PORT with a stream of zeros. For benchmarks,
# kvmesh.fetch=IP:PORT:MIB reads MIB from such a server and prints
# KVMESH-FETCH <bytes> <uptime before> <uptime after>, and kvmesh.rtt=IP
# prints KVMESH-RTT <busybox ping's round-trip summary> for 20 pings.
# Consoles: kvmesh.shell runs a shell on the serial port (for interactive
# console tests). Every guest prints KVMESH-HW cpus=<n> mem_kib=<MemTotal>
# (it brings hot-plugged vCPUs online first),
# and one booted from the ISO (below) prints KVMESH-ISO-BOOT. With
# kvmesh.cidata it mounts its cloud-init seed (the CD-ROM holding
# meta-data) and prints KVMESH-CIDATA hostname=<local-hostname>
# keys=<public keys> value=<kvmesh_value: from its user-data>. With
# kvmesh.agent it answers the QEMU guest agent protocol on its virtio-serial
# port, as qemu-ga would, for the commands kvmesh sends (guest-sync,
# guest-ping, guest-get-osinfo, guest-get-host-name,
# guest-network-get-interfaces, guest-shutdown, after which it prints
# KVMESH-AGENT-SHUTDOWN and powers off): the busybox guest has no qemu-ga.
#
# Besides the kernel and initrd it builds guest.iso, a bootable ISO (GRUB
# for BIOS and UEFI, via grub-mkrescue) around them, for install-from-ISO
# tests: it boots the same guest with kvmesh.iso on its command line.
# Each write is fsynced: that sends the disk a FLUSH, without which a killed
# QEMU may lose it (qcow2 metadata waits in QEMU's cache, as data waits in a
# real disk's write cache), and no hypervisor promises unflushed writes.
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
command -v grub-mkrescue >/dev/null || need+=(grub-common)
[ -d /usr/lib/grub/i386-pc ] || need+=(grub-pc-bin)
[ -d /usr/lib/grub/x86_64-efi ] || need+=(grub-efi-amd64-bin)
command -v xorriso >/dev/null || need+=(xorriso)
command -v mformat >/dev/null || need+=(mtools)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$OUT"
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -1)
cp "$kernel" "$OUT/vmlinuz"
version=${kernel#/boot/vmlinuz-}
modules="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci drivers/block/virtio_blk
net/core/failover drivers/net/net_failover drivers/net/virtio_net"
# Loaded only with kvmesh.cidata: IDE CD-ROMs and ISO 9660.
cd_modules="drivers/scsi/scsi_common drivers/scsi/scsi_mod drivers/cdrom/cdrom drivers/scsi/sr_mod
drivers/ata/libata drivers/ata/ata_piix fs/isofs/isofs drivers/char/virtio_console"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/modules"
cp /bin/busybox "$root/bin/busybox"
order=""
cd_order=""
for m in $modules MODULES-ON-DEMAND $cd_modules; do
  [ "$m" = MODULES-ON-DEMAND ] && { on_demand=1; continue; }
  name=$(basename "$m")
  src=$(ls /lib/modules/"$version"/kernel/"$m".ko* 2>/dev/null | head -1)
  [ -n "$src" ] || { echo "make-test-guest: $m.ko missing in /lib/modules/$version" >&2; exit 1; }
  case "$src" in
    *.ko) cp "$src" "$root/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$src" >"$root/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$root/modules/$name.ko" ;;
  esac
  if [ -n "${on_demand:-}" ]; then cd_order="$cd_order $name"; else order="$order $name"; fi
done
echo "$order" >"$root/modules/order"
echo "$cd_order" >"$root/modules/cd.order"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in $($B cat /modules/order); do $B insmod /modules/$m.ko 2>/dev/null; done
disk=""
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; $B sleep 0.2; done
if [ -b /dev/vda ]; then
  marker=$($B dd if=/dev/vda bs=64 count=1 2>/dev/null | $B tr -d '\000')
  case "$marker" in
    KVMESH-MARKER-*) ;;
    *) marker="KVMESH-MARKER-$($B cat /proc/sys/kernel/random/uuid)"
       printf '%s' "$marker" | $B dd of=/dev/vda bs=64 count=1 conv=sync,notrunc,fsync 2>/dev/null ;;
  esac
  boots=$($B dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | $B tr -d '\000' | $B sed -n 's/^KVMESH-BOOTS \([0-9]*\).*/\1/p')
  boots=$((${boots:-0} + 1))
  printf 'KVMESH-BOOTS %d' "$boots" | $B dd of=/dev/vda bs=512 seek=1 count=1 conv=sync,notrunc,fsync 2>/dev/null
  $B sync
  disk="KVMESH-DISK $marker boots=$boots"
fi
# Benchmark modes, from the kernel command line. kvmesh.dirty=MIB keeps
# rewriting MIB of memory with random data (a file on a tmpfs; random, so a
# migration cannot send its pages as zero pages). kvmesh.tick prints a line
# every 10 ms: whoever reads the console sees the guest stop.
for arg in $($B cat /proc/cmdline); do
  case "$arg" in
    kvmesh.dirty=*)
      mib=${arg#kvmesh.dirty=}
      $B mkdir -p /dirty && $B mount -t tmpfs -o size=$((2 * mib + 8))m tmpfs /dirty
      $B dd if=/dev/urandom of=/dirty/src bs=1M count="$mib" 2>/dev/null
      (while true; do $B dd if=/dirty/src of=/dirty/dst bs=1M conv=notrunc 2>/dev/null; done) &
      echo "KVMESH-DIRTY $mib" ;;
    kvmesh.tick)
      (t=0; while true; do echo "KVMESH-TICK $t"; t=$((t+1)); $B usleep 10000; done) & ;;
    kvmesh.ip=*)
      for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; $B sleep 0.2; done
      $B ip link set lo up
      $B ip link set eth0 up
      $B ip addr add "${arg#kvmesh.ip=}" dev eth0
      mac=$($B cat /sys/class/net/eth0/address) ;;
    kvmesh.ping=*)
      targets=$(echo "${arg#kvmesh.ping=}" | $B tr ',' ' ')
      (n=0; while true; do
        for t in $targets; do
          if $B ping -c 1 -W 1 "$t" >/dev/null 2>&1; then echo "KVMESH-PING $t ok $n"; else echo "KVMESH-PING $t fail $n"; fi
        done
        n=$((n+1)); $B sleep 1
      done) & ;;
    kvmesh.fetch=*)
      spec=${arg#kvmesh.fetch=}; host=${spec%%:*}; rest=${spec#*:}; port=${rest%%:*}; mib=${rest#*:}
      (until $B ping -c 1 -W 1 "$host" >/dev/null 2>&1; do $B sleep 1; done
       t0=$($B cut -d' ' -f1 /proc/uptime)
       # nc's stdin: a FIFO held open, never written (at EOF busybox nc
       # hangs up, and a writer such as sleep would outlive the pipeline).
       $B mkdir -p /run; $B mkfifo /run/hold; exec 3<>/run/hold
       got=$($B nc "$host" "$port" <&3 | $B head -c $((mib * 1048576)) | $B wc -c)
       t1=$($B cut -d' ' -f1 /proc/uptime)
       while true; do echo "KVMESH-FETCH $got $t0 $t1"; $B sleep 2; done) & ;;
    kvmesh.rtt=*)
      target=${arg#kvmesh.rtt=}
      (until $B ping -c 1 -W 1 "$target" >/dev/null 2>&1; do $B sleep 1; done
       sum=$($B ping -c 20 "$target" | $B tail -1)
       while true; do echo "KVMESH-RTT $sum"; $B sleep 2; done) & ;;
    kvmesh.serve=*)
      port=${arg#kvmesh.serve=}
      (while true; do $B nc -l -p "$port" </dev/zero >/dev/null 2>&1; done) & ;;
    kvmesh.shell)
      # A shell on the serial port, as a login console would be.
      $B setsid $B sh -c "exec $B sh </dev/ttyS0 >/dev/ttyS0 2>&1" & ;;
    kvmesh.iso) iso="KVMESH-ISO-BOOT" ;;
    kvmesh.agent)
      $B insmod /modules/virtio_console.ko 2>/dev/null
      (port=""
       for i in 1 2 3 4 5 6 7 8 9 10; do
         for p in /sys/class/virtio-ports/*; do
           [ "$($B cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
         done
         [ -n "$port" ] && [ -c "$port" ] && break
         $B sleep 0.5
       done
       [ -n "$port" ] || { echo "KVMESH-AGENT no port"; exit 0; }
       echo "KVMESH-AGENT listening on $port"
       exec 3<>"$port"
       # The port reads as ended while no host side is connected: wait and
       # read again.
       while true; do
       while IFS= read -r line <&3; do
         case "$line" in
           *guest-sync*)
             id=$(echo "$line" | $B sed -n 's/.*"id" *: *\([0-9]*\).*/\1/p')
             echo "{\"return\": $id}" >&3 ;;
           *guest-ping*) echo '{"return": {}}' >&3 ;;
           *guest-get-osinfo*)
             echo "{\"return\": {\"id\": \"kvmesh-test\", \"name\": \"kvmesh test guest\", \"pretty-name\": \"kvmesh test guest (busybox)\", \"kernel-release\": \"$($B uname -r)\"}}" >&3 ;;
           *guest-get-host-name*) echo "{\"return\": {\"host-name\": \"$($B hostname)\"}}" >&3 ;;
           *guest-network-get-interfaces*)
             ifs=""
             for n in /sys/class/net/*; do
               name=${n##*/}; [ "$name" = lo ] && continue
               mac=$($B cat "$n/address")
               ips=""
               for a in $($B ip -o -4 addr show dev "$name" | $B awk '{print $4}'); do
                 ips="$ips${ips:+,}{\"ip-address-type\": \"ipv4\", \"ip-address\": \"${a%/*}\", \"prefix\": ${a#*/}}"
               done
               ifs="$ifs${ifs:+,}{\"name\": \"$name\", \"hardware-address\": \"$mac\", \"ip-addresses\": [$ips]}"
             done
             echo "{\"return\": [$ifs]}" >&3 ;;
           *guest-shutdown*)
             echo "KVMESH-AGENT-SHUTDOWN"
             $B sync; $B poweroff -f ;;
           *'"execute"'*) echo '{"error": {"class": "CommandNotFound", "desc": "not in the kvmesh test agent"}}' >&3 ;;
         esac
       done
       $B sleep 0.5
       done) & ;;
    kvmesh.cidata)
      for m in $($B cat /modules/cd.order); do $B insmod /modules/$m.ko 2>/dev/null; done
      $B mkdir -p /seed
      for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
        for dev in /dev/sr*; do
          [ -b "$dev" ] || continue
          $B mount -t iso9660 -o ro "$dev" /seed 2>/dev/null || continue
          [ -f /seed/meta-data ] && break 2
          $B umount /seed
        done
        $B sleep 1
      done
      if [ -f /seed/meta-data ]; then
        host=$($B sed -n 's/^local-hostname: //p' /seed/meta-data)
        keys=$($B grep -c '^  - ' /seed/meta-data)
        value=$($B sed -n 's/^kvmesh_value: //p' /seed/user-data)
        cidata="KVMESH-CIDATA hostname=$host keys=$keys value=$value"
      else
        cidata="KVMESH-CIDATA none"
      fi ;;
  esac
done

n=0
while true; do
  echo "KVMESH-TEST-GUEST-UP $n $($B cat /proc/uptime)"
  [ -n "$disk" ] && echo "$disk"
  [ -n "${mac:-}" ] && echo "KVMESH-MAC $mac"
  # vCPUs plugged in while it runs come up offline: bring them online, as
  # a distribution's udev rule does.
  for c in /sys/devices/system/cpu/cpu*/online; do
    [ "$($B cat "$c" 2>/dev/null)" = 0 ] && echo 1 >"$c"
  done
  echo "KVMESH-HW cpus=$($B grep -c ^processor /proc/cpuinfo) mem_kib=$($B awk '/^MemTotal/ {print $2}' /proc/meminfo)"
  [ -n "${iso:-}" ] && echo "$iso"
  [ -n "${cidata:-}" ] && echo "$cidata"
  n=$((n+1))
  $B sleep 2
done
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/initrd.gz"

# The bootable ISO: GRUB (BIOS and UEFI) loading the same kernel and initrd.
iso_root=$(mktemp -d)
trap 'rm -rf "$root" "$iso_root"' EXIT
mkdir -p "$iso_root/boot/grub"
cp "$OUT/vmlinuz" "$OUT/initrd.gz" "$iso_root/"
cat >"$iso_root/boot/grub/grub.cfg" <<'CFG'
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry "kvmesh test guest" {
  linux /vmlinuz console=ttyS0 kvmesh.iso
  initrd /initrd.gz
}
CFG
grub-mkrescue -o "$OUT/guest.iso" "$iso_root" >/dev/null 2>&1 \
  || { echo "make-test-guest: grub-mkrescue failed" >&2; grub-mkrescue -o "$OUT/guest.iso" "$iso_root" >&2; exit 1; }
echo "kernel=$OUT/vmlinuz"
echo "initrd=$OUT/initrd.gz"
echo "iso=$OUT/guest.iso"
