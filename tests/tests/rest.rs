//! The REST API on the gRPC port, spoken by curl over TLS with the cluster
//! CA and API tokens, as any script would: HTTP/1.1 and HTTP/2 on the same
//! port the CLI's gRPC uses; the CLI's JSON shapes; a write through a node
//! that does not lead; the event log followed as Server-Sent Events;
//! `/metrics`; refusals as problem documents with the gRPC message
//! (no credential, too small a role, an unknown VM, an unknown query field,
//! an unknown path, a path that climbs out), each leaving the state as it was.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use kvmesh_tests::rest::{bearer, curl, refused, wait_token};
use kvmesh_tests::Cluster;
use serde_json::Value;

#[test]
fn rest_speaks_the_grpc_api_on_the_same_port_with_the_same_rules() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let follower = (leader + 1) % 3;
    let viewer =
        c.cli_ok(0, &["token", "create", "watcher", "--role", "viewer"])?["token"].as_str().unwrap().to_string();
    let operator =
        c.cli_ok(0, &["token", "create", "ops", "--role", "operator"])?["token"].as_str().unwrap().to_string();
    c.cli_ok(0, &["vm", "create", "web", "--vcpus", "1", "--memory", "128", "--wait"])?;
    wait_token(&c, follower, &viewer)?;
    wait_token(&c, follower, &operator)?;

    // Reads over HTTP/1.1 and HTTP/2, in the CLI's shapes.
    let h1 = curl(&c, follower, "/api/v1/vms/web", &["--http1.1", "-H", &bearer(&viewer)])?;
    ensure!(h1.status == 200 && h1.version == "1.1", "{} over {}: {}", h1.status, h1.version, h1.body);
    let h2 = curl(&c, follower, "/api/v1/vms", &["--http2", "-H", &bearer(&viewer)])?;
    ensure!(h2.status == 200 && h2.version == "2", "{} over {}: {}", h2.status, h2.version, h2.body);
    let cli = c.cli_ok(follower, &["vm", "get", "web"])?;
    let mut rest = h1.json()?;
    let (mut cli_vm, mut rest_vm) = (cli.clone(), rest.clone());
    for v in [&mut cli_vm, &mut rest_vm] {
        v.as_object_mut().map(|o| o.remove("guest"));
    }
    ensure!(rest_vm == cli_vm, "REST {rest_vm}\nCLI  {cli_vm}");
    ensure!(h2.json()?.as_array().is_some_and(|a| a.len() == 1 && a[0]["name"] == "web"), "{}", h2.body);
    let status = curl(&c, follower, "/api/v1/cluster/status", &["-H", &bearer(&viewer)])?.json()?;
    ensure!(status["members"].as_array().is_some_and(|m| m.len() == 3), "{status}");
    let nodes = curl(&c, follower, "/api/v1/nodes", &["-H", &bearer(&viewer)])?.json()?;
    ensure!(nodes.as_array().is_some_and(|n| n.len() == 3), "{nodes}");

    // Refusals, with the gRPC messages; nothing changes.
    refused(&curl(&c, follower, "/api/v1/vms", &[])?, 401, "needs a credential")?;
    refused(&curl(&c, follower, "/api/v1/vms", &["-H", "Authorization: Bearer nope"])?, 401, "not valid")?;
    let stop = ["-X", "POST", "-H"];
    refused(&curl(&c, follower, "/api/v1/vms/web/stop", &[&stop[..], &[&bearer(&viewer)]].concat())?, 403, "operator")?;
    refused(&curl(&c, follower, "/api/v1/vms/ghost", &["-H", &bearer(&viewer)])?, 404, "ghost")?;
    refused(&curl(&c, follower, "/api/v1/vms?bogus=1", &["-H", &bearer(&viewer)])?, 400, "bogus")?;
    refused(&curl(&c, follower, "/api/v1/nothing", &[])?, 404, "GET /api/v1/vms")?;
    refused(&curl(&c, follower, "/api/v1/vms/web", &["-X", "PATCH"])?, 405, "no route")?;
    let climb = curl(&c, follower, "/api/v1/vms/../../../etc/passwd", &["--path-as-is", "-H", &bearer(&viewer)])?;
    refused(&climb, 404, "no route")?;
    refused(&curl(&c, follower, "/api/v1/vms//stop", &["-X", "POST"])?, 404, "no route")?;
    refused(
        &curl(&c, follower, "/api/v1/vms/web/restart?force=true", &[&stop[..], &[&bearer(&operator)]].concat())?,
        400,
        "force",
    )?;
    // A HEAD is the GET it describes, credentials and all.
    for path in ["/api/v1/vms", "/metrics"] {
        let head = curl(&c, follower, path, &["-I"])?;
        ensure!(head.status == 401, "HEAD {path} without a token: {}", head.status);
    }
    ensure!(c.cli_ok(leader, &["vm", "get", "web"])?["desired"] == "running", "a refusal changed the VM");

    // A write through a follower, forwarded to the leader, as the operator.
    let a = curl(&c, follower, "/api/v1/vms/web/stop?force=true", &[&stop[..], &[&bearer(&operator)]].concat())?;
    ensure!(a.status == 200, "stop: {} {}", a.status, a.body);
    rest = a.json()?;
    ensure!(rest["desired"] == "stopped", "{rest}");
    c.wait_vm_state(leader, "web", "stopped", std::time::Duration::from_secs(20))?;
    let events = curl(&c, follower, "/api/v1/events?after=0", &["-H", &bearer(&viewer)])?.json()?;
    let asked = events.as_array().and_then(|e| e.iter().find(|e| e["message"] == "vm web: force stop requested"));
    ensure!(
        asked.is_some_and(|e| e["principal"].as_str().is_some_and(|p| p.starts_with("ops (operator)"))),
        "the event does not say who asked: {events}"
    );
    let a = curl(&c, follower, "/api/v1/vms/web/start", &[&stop[..], &[&bearer(&operator)]].concat())?;
    ensure!(a.status == 200 && a.json()?["desired"] == "running", "start: {}", a.body);
    // Following the event log (Server-Sent Events): a restart asked for
    // through REST arrives on the stream, with its sequence number as id.
    let last = events.as_array().and_then(|e| e.iter().filter_map(|e| e["seq"].as_u64()).max()).unwrap_or(0);
    let port = c.addr(leader).rsplit(':').next().unwrap_or_default().to_string();
    let follow = Command::new("curl")
        .args(["-sSN", "--max-time", "8", "--cacert"])
        .arg(c.nodes[leader].data_dir.join("tls").join("ca.crt"))
        .args(["--resolve", &format!("kvmesh-node:{port}:127.0.0.1"), "-H", &bearer(&viewer)])
        .arg(format!("https://kvmesh-node:{port}/api/v1/events/stream?after={last}"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let a = curl(&c, follower, "/api/v1/vms/web/restart", &[&stop[..], &[&bearer(&operator)]].concat())?;
    ensure!(a.status == 200, "restart: {}", a.body);
    let streamed = String::from_utf8_lossy(&follow.wait_with_output()?.stdout).into_owned();
    let data: Vec<Value> = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    ensure!(data.iter().any(|e| e["message"] == "vm web: restart requested"), "not on the stream: {streamed}");
    ensure!(data.iter().all(|e| e["seq"].as_u64().is_some_and(|s| s > last)), "events before {last}: {streamed}");
    ensure!(streamed.contains(&format!("id: {}", data[0]["seq"])), "no ids: {streamed}");

    // And gRPC on the very same port still answers the CLI.
    ensure!(c.cli_ok(follower, &["vm", "list"])?.as_array().is_some_and(|v| v.len() == 1));
    metrics(&mut c, &viewer)
}

/// The value of every sample line of a scrape, by series.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

/// `/metrics`: a viewer's read, valid for promtool; cluster-wide series
/// only from the leader; counters that only grow; a deleted VM's series
/// gone at the next scrape.
fn metrics(c: &mut Cluster, viewer: &str) -> Result<()> {
    let leader = c.leader()?;
    let follower = (leader + 1) % 3;
    refused(&curl(c, leader, "/metrics", &[])?, 401, "needs a credential")?;
    let scrape = |i: usize| -> Result<String> {
        let a = curl(c, i, "/metrics", &["-H", &bearer(viewer)])?;
        ensure!(
            a.status == 200 && a.content_type.starts_with("text/plain"),
            "{} {}: {}",
            a.status,
            a.content_type,
            a.body
        );
        Ok(a.body)
    };
    let first = scrape(leader)?;
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut promtool = promtool.context("promtool (Debian's prometheus package; scripts/test.sh installs it)")?;
    std::io::Write::write_all(promtool.stdin.as_mut().context("stdin")?, first.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    ensure!(checked.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
    let s = samples(&first);
    ensure!(s.get("kvmesh_raft_is_leader") == Some(&1.0), "{first}");
    ensure!(s.keys().filter(|k| k.starts_with("kvmesh_node_cpus{")).count() == 3, "{first}");
    ensure!(s.keys().any(|k| k.starts_with("kvmesh_vm_info{") && k.contains("vm=\"web\"")), "{first}");
    let on_follower = samples(&scrape(follower)?);
    ensure!(on_follower.get("kvmesh_raft_is_leader") == Some(&0.0), "{on_follower:?}");
    ensure!(!on_follower.keys().any(|k| k.starts_with("kvmesh_vm_info")), "cluster-wide series from a follower");
    // The guest's own series come from its host.
    let host = c.cli_ok(leader, &["vm", "get", "web"])?["node"].as_str().unwrap_or_default().to_string();
    let host = (0..3).find(|i| c.nodes[*i].name == host).context("the VM's host")?;
    let on_host = samples(&scrape(host)?);
    ensure!(
        on_host.keys().any(|k| k.starts_with("kvmesh_vm_memory_bytes{") && k.contains("vm=\"web\"")),
        "{on_host:?}"
    );
    // Counters never go down between scrapes.
    let second = samples(&scrape(leader)?);
    for (series, before) in s.iter().filter(|(k, _)| k.contains("_total")) {
        let after = second.get(series).copied().unwrap_or(0.0);
        ensure!(after >= *before, "{series} went down: {before} -> {after}");
    }
    ensure!(second.iter().any(|(k, v)| k.contains("Cluster/Metrics") && *v > 0.0), "scrapes are API calls too");
    // Latencies: writes, WAL fsyncs, and API requests by method and code
    // (the refusals above included).
    for series in ["kvmesh_raft_proposal_seconds_count", "kvmesh_raft_wal_fsync_seconds_count"] {
        ensure!(second.get(series).is_some_and(|n| *n > 0.0), "{series}: {:?}", second.get(series));
    }
    // The REST calls of the test went to the follower.
    let answered = samples(&scrape(follower)?);
    let timed = |method: &str, code: &str| {
        answered.iter().any(|(k, v)| {
            k.starts_with("kvmesh_api_request_seconds_count{")
                && k.contains(&format!("method=\"{method}\""))
                && k.contains(&format!("code=\"{code}\""))
                && *v > 0.0
        })
    };
    ensure!(timed("/kvmesh.v1.Vms/Stop", "Ok"), "no timed stop: {answered:?}");
    ensure!(timed("/kvmesh.v1.Vms/Stop", "PermissionDenied"), "no timed refusal: {answered:?}");
    ensure!(timed("/kvmesh.v1.Vms/List", "Unauthenticated"), "no timed 401: {answered:?}");
    // Every series the Grafana dashboard graphs exists.
    let all = format!("{}\n{}", scrape(leader)?, scrape(host)?);
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../node/grafana/kvmesh.json"))?;
    let graphed: std::collections::BTreeSet<String> = dashboard
        .match_indices("kvmesh_")
        .map(|(at, _)| dashboard[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect();
    ensure!(graphed.len() > 15, "{graphed:?}");
    for name in &graphed {
        let present = all.lines().any(|l| l.strip_prefix(name.as_str()).is_some_and(|t| t.starts_with(['{', ' '])));
        ensure!(present, "the dashboard graphs {name}, which no scrape has");
    }
    // A deleted VM's series are gone.
    c.cli_ok(leader, &["vm", "delete", "web", "--yes"])?;
    wait_for_gone(c, viewer, leader, host)?;
    Ok(())
}

fn wait_for_gone(c: &Cluster, viewer: &str, leader: usize, host: usize) -> Result<()> {
    kvmesh_tests::wait_for("the deleted VM's series gone", std::time::Duration::from_secs(20), || {
        let gone = |i: usize| {
            curl(c, i, "/metrics", &["-H", &bearer(viewer)])
                .ok()
                .is_some_and(|a| a.status == 200 && !a.body.contains("vm=\"web\""))
        };
        (gone(leader) && gone(host)).then_some(())
    })
}
