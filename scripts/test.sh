#!/usr/bin/env bash
# Runs the whole kvmesh test suite: unit tests, the openraft storage suite on
# sled, and the multi-process cluster tests (real `kvmesh` processes on
# loopback ports). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

start=$(date +%s)
cargo build --locked --workspace --all-targets
export KVMESH_BIN=$PWD/target/debug/kvmesh
# Two test threads: every cluster test runs several node processes, and CI
# machines have two cores.
cargo test --locked --workspace -- --test-threads=2
echo "test suite finished in $(( $(date +%s) - start ))s"
