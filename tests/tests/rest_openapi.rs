//! The REST API against its own OpenAPI document: schemathesis (PyPI)
//! fetches `/api/v1/openapi.json` from a node and drives every operation
//! with generated requests (coverage, fuzzing and stateful phases: valid
//! and invalid bodies, parameters and sequences), checking that no answer
//! is a 5xx, that every status, content type, header and body is the one
//! the document describes, and that invalid input is refused. The cluster
//! answers normally afterwards.
//!
//! Not checked: that every schema-valid request is accepted (the API also
//! refuses what only the cluster's state makes wrong: an unknown image, a
//! full host), and revoking tokens (the run would revoke its own).

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kvmesh_tests::rest::{bearer, curl, wait_token};
use kvmesh_tests::Cluster;
use serde_json::json;

#[test]
fn every_operation_answers_as_its_openapi_document_says() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let f = (leader + 1) % 3;
    let admin = c.cli_ok(0, &["token", "create", "fuzz", "--role", "admin"])?["token"].as_str().unwrap().to_string();
    wait_token(&c, f, &admin)?;
    // Something to find: a VM and a network.
    let web = json!({"vcpus": 1, "memory_mib": 64}).to_string();
    let a = curl(
        &c,
        f,
        "/api/v1/vms/web",
        &["-X", "PUT", "-H", &bearer(&admin), "-H", "Content-Type: application/json", "-d", &web],
    )?;
    ensure!(a.status == 201, "{} {}", a.status, a.body);
    c.cli_ok(0, &["network", "add", "lan", "--kind", "isolated"])?;

    // The document is public, as an API's reference is.
    let doc = curl(&c, f, "/api/v1/openapi.json", &[])?;
    ensure!(doc.status == 200, "{} {}", doc.status, doc.body);
    let doc = doc.json()?;
    ensure!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);

    let python = std::env::var("KVMESH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis_run.py");
    let port = c.addr(f).rsplit(':').next().unwrap_or_default().to_string();
    let ca = c.nodes[f].data_dir.join("tls").join("ca.crt");
    let reports = tempfile::tempdir()?;
    let out = Command::new("timeout")
        // Its replay cache (.schemathesis/) goes with the reports.
        .current_dir(reports.path())
        .args(["300", &python, script, &port])
        .arg(&ca)
        .arg(&admin)
        .arg(reports.path())
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--exclude-operation-id", "delete_api_v1_tokens_name", "--max-examples", "25"])
        .output()
        .context("run schemathesis (scripts/test.sh installs it into target/pyprobe)")?;
    let said = String::from_utf8_lossy(&out.stdout);
    let summary = said.rsplit_once("SUMMARY").map_or(said.as_ref(), |(_, s)| s);
    eprintln!("schemathesis:{summary}\n{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "schemathesis found failures:\n{said}");
    // Every operation was selected but the token revocation and the
    // document's own route (schemathesis skips that one unless named), and
    // every selected one tested.
    let count = |label: &str| summary.split(label).nth(1).and_then(|t| t.split_whitespace().next()).map(str::to_string);
    let (selected, tested) = (count("Selected:").unwrap_or_default(), count("Tested:").unwrap_or_default());
    let operations =
        doc["paths"].as_object().map_or(0, |p| p.values().map(|i| i.as_object().map_or(0, |o| o.len())).sum::<usize>());
    ensure!(
        selected == format!("{}/{}", operations - 2, operations - 1),
        "selected {selected} of {operations}:\n{summary}"
    );
    ensure!(selected.split('/').next() == Some(tested.as_str()), "tested {tested} of {selected}:\n{summary}");

    // The cluster is whole after the fuzzing.
    let status = c.status(f)?;
    ensure!(status["leader"].is_object() && status["members"].as_array().map(Vec::len) == Some(3), "{status}");
    let vms = curl(&c, leader, "/api/v1/vms", &["-H", &bearer(&admin)])?;
    ensure!(vms.status == 200 && vms.json()?.is_array(), "{} {}", vms.status, vms.body);
    kvmesh_tests::wait_for("every node answers", Duration::from_secs(10), || {
        (0..3).all(|i| c.cli(i, &["vm", "list"]).success).then_some(())
    })?;
    Ok(())
}
