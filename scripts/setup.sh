#!/usr/bin/env bash
# Installs what building and running kvmesh needs on Debian/Ubuntu: a C
# toolchain, pkg-config and libvirt's development files from apt (libvirt's
# embedded test driver comes with them, so no daemon is needed), and
# Rust >= 1.88 (rustup) if the machine has no recent enough cargo. Safe to
# run again.
set -euo pipefail

need_apt=()
for pkg in build-essential pkg-config libvirt-dev ca-certificates curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
rust_ok() {
  command -v cargo >/dev/null 2>&1 || return 1
  local v; v=$(rustc --version | awk '{print $2}')
  [ "$(printf '%s\n1.88.0\n' "$v" | sort -V | head -1)" = "1.88.0" ]
}
if ! rust_ok; then
  echo "setup: installing Rust (rustup, stable)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
echo "setup: $(cargo --version)"
