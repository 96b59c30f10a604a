#!/usr/bin/env bash
# Runs the whole kvmesh test suite: unit tests, the openraft storage suite on
# sled, the multi-process cluster tests (real `kvmesh` processes on loopback
# ports), and real QEMU guests under a libvirtd it starts itself. Installs
# what it needs first (apt, as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/libvirtd.sh
eval "$(scripts/make-test-guest.sh target/test-guest)"
export KVMESH_TEST_GUEST=$(dirname "$kernel")
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# A stock gRPC client for the reflection test (Python grpcio, in a venv),
# promtool (Debian's prometheus) to check what /metrics says, schemathesis
# for the OpenAPI document, and Chromium with its driver, certutil and
# selenium for the web UI's browser test.
if ! python3 -m venv --help >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v certutil >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver libnss3-tools >/dev/null
fi
PYENV=$PWD/target/pyprobe
if ! "$PYENV/bin/python" -c 'import grpc, grpc_reflection, grpc_health, schemathesis, selenium' 2>/dev/null; then
  python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check grpcio grpcio-reflection grpcio-health-checking schemathesis selenium
fi
export KVMESH_PYTHON=$PYENV/bin/python

start=$(date +%s)
cargo build --locked --workspace --all-targets
export KVMESH_BIN=$PWD/target/debug/kvmesh
# Two test threads: every cluster test runs several node processes, and CI
# machines have two cores.
cargo test --locked --workspace -- --test-threads=2
echo "test suite finished in $(( $(date +%s) - start ))s"
