# Sourced by the testbed benchmarks (bench-ha-testbed.sh, bench-migrate.sh):
# builds kvmesh, starts a three-host testbed in its own directory (torn down
# on exit), waits for three voters, and puts the test guest's kernel and
# initrd on a storage domain every host shares ("shared"), so guests can run
# and move anywhere. Leaves E (h1's address), K (the CLI: K ENDPOINT ARGS),
# TB and SHARED set.
cargo build -q -p kvmesh
scripts/libvirtd.sh >/dev/null
eval "$(scripts/make-test-guest.sh target/test-guest)"
export KVMESH_TESTBED_DIR=/tmp/kvmesh-testbed-bench
# The CA and admin token `cluster init` writes (testbed.sh uses the same).
export KVMESH_CLIENT_CONFIG=$KVMESH_TESTBED_DIR/client.toml
export KVMESH_BIN=$PWD/target/debug/kvmesh
TB=scripts/testbed.sh
trap 'bash $TB down >/dev/null 2>&1 || true' EXIT
bash $TB down >/dev/null 2>&1 || true
bash $TB up 3 >/dev/null
E=$(bash $TB addr h1)
K() { "$KVMESH_BIN" --endpoint "$1" "${@:2}"; }
for _ in $(seq 100); do
  [ "$(K "$E" -o json cluster status | grep -o '"role":"voter"' | wc -l)" -eq 3 ] && break; sleep 0.2
done
SHARED=$KVMESH_TESTBED_DIR/shared
mkdir -p "$SHARED"
K "$E" storage add shared --kind shared-dir --path "$SHARED" >/dev/null
for _ in $(seq 100); do
  [ "$(K "$E" -o json storage get shared | grep -o '"state":"active"' | wc -l)" -ge 3 ] && break; sleep 0.3
done
K "$E" image import guest-kernel "$kernel" --storage shared --kind kernel >/dev/null
K "$E" image import guest-initrd "$initrd" --storage shared --kind initrd >/dev/null
