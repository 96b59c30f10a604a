//! A stock gRPC client in another language can discover and call the API
//! without kvmesh's .proto files, and probe health. It also plays a node of a
//! future protocol version, which must be refused with a reason. It speaks
//! TLS with the cluster CA and an API token, as any client must.

use std::process::Command;

use anyhow::Result;
use kvmesh_tests::Cluster;

#[test]
fn python_grpcio_discovers_and_calls_the_api_through_reflection() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("probe", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    c.leader()?;
    // scripts/test.sh provides a Python with grpcio; plain python3 otherwise.
    let python = std::env::var("KVMESH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc_probe.py");
    // A viewer's token, and the node's own certificate for the calls only
    // nodes may make.
    let token = c.cli_ok(0, &["token", "create", "probe", "--role", "viewer"])?["token"].as_str().unwrap().to_string();
    let tls = c.nodes[0].data_dir.join("tls");
    let args = [
        c.addr(0),
        tls.join("ca.crt").display().to_string(),
        token,
        tls.join("node.crt").display().to_string(),
        tls.join("node.key").display().to_string(),
    ];
    // Health is refreshed every 500 ms; give it a few rounds after init.
    let mut out = Command::new(&python).arg(script).args(&args).output()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !out.status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(300));
        out = Command::new(&python).arg(script).args(&args).output()?;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "probe failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "'kvmesh.v1.Cluster'",
        "'kvmesh.v1.Vms'",
        "'grpc.health.v1.Health'",
        "status via reflection: leader probe term",
        "health '' SERVING",
        "health 'kvmesh.v1.Cluster' SERVING",
        "plaintext refused",
        "join with an API token: PERMISSION_DENIED Join is internal to the cluster",
        "join of protocol 999: FAILED_PRECONDITION node probe speaks kvmesh protocol 999",
        "raft rpc of protocol 999: FAILED_PRECONDITION peer speaks kvmesh protocol 999",
    ] {
        assert!(stdout.contains(expected), "{expected} missing in:\n{stdout}");
    }
    Ok(())
}
