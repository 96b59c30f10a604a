#!/usr/bin/env bash
# Installs and starts a local libvirtd with QEMU for kvmesh's real-guest tests
# (Debian/Ubuntu, as root, no systemd needed). Idempotent.
#
#   scripts/libvirtd.sh          install if needed, configure, start, wait until it answers
#
# Configuration follows ../shared/notes/libvirt-and-qemu-here.md: QEMU runs as
# root without a security driver, cgroups or namespaces, which is what works in
# containers and CI machines. Do not use this configuration on a production host.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

# ovmf: UEFI guests (`vm create --firmware uefi`); xorriso: cloud-init seeds.
pkgs=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils libvirt-clients iproute2 ovmf xorriso)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# Installing Debian's qemu-system-x86 removes a newer qemu-utils that came
# with the machine image (a version conflict), so qemu-img goes with it:
# whenever anything is installed, or qemu-img is gone, install Debian's
# qemu-utils in the same transaction.
if [ ${#missing[@]} -gt 0 ] || ! command -v qemu-img >/dev/null; then
  [[ " ${missing[*]} " == *" qemu-utils "* ]] || missing+=(qemu-utils)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "libvirtd: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # Some machine images ship a backported qemu-utils newer than the
  # distribution's qemu-system-x86, and apt refuses the pair ("held broken
  # packages"). Pin qemu-utils to qemu-system-x86's version, downgrading if
  # need be, so both come from one QEMU release.
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  for i in "${!missing[@]}"; do
    [ "${missing[$i]}" = qemu-utils ] && [ -n "$qemu_version" ] && missing[$i]="qemu-utils=$qemu_version"
  done
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" >/dev/null
fi

if virsh -c qemu:///system version >/dev/null 2>&1; then
  echo "libvirtd: already running"
  exit 0
fi

getent group kvm >/dev/null || $SUDO groupadd -r kvm
getent group libvirt-qemu >/dev/null || $SUDO groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || $SUDO useradd -r -g kvm -s /usr/sbin/nologin libvirt-qemu
$SUDO mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/qemu /var/lib/libvirt/images /etc/libvirt
conf=/etc/libvirt/qemu.conf
if ! grep -q '^# kvmesh test settings' "$conf" 2>/dev/null; then
  $SUDO tee -a "$conf" >/dev/null <"$(dirname "$0")/qemu-test.conf"
fi
# A daemon killed earlier (kill -9, a previous CI run) leaves pid files and
# sockets behind; a fresh start copes, but the first start after that can die
# or hang, so (re)start until it answers.
for _ in $(seq 60); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "libvirtd: running ($(virsh -c qemu:///system version | grep -i 'running hypervisor' || true))"
    exit 0
  fi
  pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
  pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
  sleep 1
done
echo "libvirtd did not answer on qemu:///system within 60 s; see /var/log/libvirt/libvirtd.log" >&2
exit 1
