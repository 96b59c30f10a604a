//! Security from the outside: real nodes, real TLS, the real CLI and raw
//! gRPC clients. Every way in without the right credential is refused with
//! a message that says what is missing, and nothing changes: no
//! credential, a viewer deleting, a client token on an internal service, a
//! forged forwarded principal, wrong or revoked tokens, used, expired,
//! revoked or misdirected join tokens, a removed node's certificate, a
//! flood of connections that never finish their handshake; and
//! certificates that expire every 30 s renew under load, also on a node
//! that was off past its certificate's expiry.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kvmesh_proto as pb;
use kvmesh_tests::{api_channel, client_config_for, free_port, kvmesh_bin, node_channel, register_client_config};
use kvmesh_tests::{wait_for, Cluster};

fn token(c: &Cluster, name: &str, role: &str) -> Result<String> {
    let made = c.cli_ok(0, &["token", "create", name, "--role", role])?;
    Ok(made["token"].as_str().context("token in the answer")?.to_string())
}

/// The CLI against node `i` with `--token TOKEN`.
fn cli_as(c: &Cluster, i: usize, token: &str, args: &[&str]) -> kvmesh_tests::CliResult {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    c.cli(i, &all)
}

#[test]
fn every_call_needs_a_credential_with_the_right_role() -> Result<()> {
    let c = Cluster::three()?;
    c.cli_ok(0, &["vm", "create", "web", "--memory", "64"])?;

    // No credential: a client config with the CA only, for the same node
    // under another name.
    let config = client_config_for(&c.addr(0)).context("registered")?;
    let ca_only = c.dir.path().join("ca-only.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&ca_only, text.lines().filter(|l| !l.starts_with("token")).collect::<Vec<_>>().join("\n"))?;
    let alias = c.addr(0).replace("127.0.0.1", "localhost");
    register_client_config(&alias, &ca_only);
    let r = kvmesh_tests::run_cli(&alias, &["vm", "list"]);
    assert!(!r.success && r.stderr.contains("needs a credential"), "{}", r.stderr);

    let viewer = token(&c, "v1", "viewer")?;
    let operator = token(&c, "o1", "operator")?;
    assert!(cli_as(&c, 1, &viewer, &["vm", "list"]).success);
    let r = cli_as(&c, 1, &viewer, &["vm", "delete", "web", "--yes"]);
    assert!(!r.success && r.stderr.contains("needs the operator role; v1 has the viewer role"), "{}", r.stderr);
    let r = cli_as(&c, 2, &viewer, &["token", "list"]);
    assert!(!r.success && r.stderr.contains("needs the admin role"), "{}", r.stderr);
    let r = cli_as(&c, 1, &operator, &["storage", "add", "x", "--kind", "shared-dir", "--path", "/tmp/x"]);
    assert!(!r.success && r.stderr.contains("needs the admin role"), "{}", r.stderr);
    assert!(cli_as(&c, 2, &operator, &["vm", "create", "op-made", "--memory", "64"]).success);

    // Wrong secret, unknown name, then a revoked token.
    let wrong = format!("{}x", &viewer[..viewer.len() - 1]);
    for bad in [wrong.as_str(), "kvm1.nobody.abc", "garbage"] {
        let r = cli_as(&c, 0, bad, &["vm", "list"]);
        assert!(!r.success && r.stderr.contains("API token is not valid"), "{bad}: {}", r.stderr);
    }
    c.cli_ok(0, &["token", "revoke", "v1"])?;
    let r = cli_as(&c, 1, &viewer, &["vm", "list"]);
    assert!(!r.success && r.stderr.contains("not valid"), "revoked token still works: {}", r.stderr);
    let listed = c.cli_ok(0, &["token", "list"])?;
    let names: BTreeSet<&str> = listed.as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["admin", "o1"]));

    // Nothing changed: web is still there, the operator's VM too.
    let vms = c.vm_names(2)?;
    assert_eq!(vms, vec!["op-made".to_string(), "web".to_string()]);

    // Writes record who asked, also when a follower forwarded them.
    let leader = c.leader_index_no_mut()?;
    let follower = (leader + 1) % 3;
    cli_as(&c, follower, &operator, &["vm", "create", "audited", "--memory", "64"]);
    // `events -o json` prints one object per line.
    let events = c.cli(leader, &["events"]).stdout;
    let line = events.lines().find(|l| l.contains("audited")).context("an event for audited")?;
    assert!(line.contains("o1 (operator) from 127.0.0.1:"), "{line}");
    // A follower serving a user still gets the leader's view of the hosts
    // (its own internal call, not the user's).
    wait_for("heartbeats seen through a follower", Duration::from_secs(10), || {
        let nodes = cli_as(&c, follower, &operator, &["node", "list"]).stdout;
        let nodes: serde_json::Value = serde_json::from_str(&nodes).ok()?;
        nodes.as_array()?.iter().all(|n| n["heartbeat_age_ms"].is_u64()).then_some(())
    })?;

    // Raw gRPC: an admin token does not open internal services, and a
    // client may not claim a forwarded principal.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let admin = api_channel(&c.addr(0)).await?;
        let vote = pb::RaftMessage { payload: vec![] };
        let e = pb::raft_client::RaftClient::new(admin.clone()).vote(vote).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("internal to the cluster"), "{e:?}");
        let mut forged = tonic::Request::new(pb::DeleteVmRequest { name: "web".into(), ..Default::default() });
        forged.metadata_mut().insert("kvmesh-principal", "admin root 127.0.0.1:1".parse()?);
        let e = pb::vms_client::VmsClient::new(admin).delete(forged).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("a client may not set it"), "{e:?}");

        // An authenticated node sending garbage gets an error, and the
        // cluster carries on.
        let other = c.nodes[(leader + 1) % 3].data_dir.clone();
        let node = node_channel(&c.addr(leader), &other).await?;
        for payload in [vec![], vec![0xff; 64], vec![0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]] {
            let mut r = tonic::Request::new(pb::RaftMessage { payload: payload.clone() });
            r.metadata_mut().insert(kvmesh_proto::PROTOCOL_HEADER, kvmesh_proto::PROTOCOL_VERSION.into());
            let e = pb::raft_client::RaftClient::new(node.clone()).append_entries(r).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{payload:?}: {e:?}");
            let mut r = tonic::Request::new(pb::RaftMessage { payload });
            r.metadata_mut().insert(kvmesh_proto::PROTOCOL_HEADER, kvmesh_proto::PROTOCOL_VERSION.into());
            assert!(pb::raft_client::RaftClient::new(node.clone()).propose(r).await.is_err());
        }
        anyhow::Ok(())
    })?;
    assert_eq!(c.vm_names(leader)?, vec!["audited".to_string(), "op-made".to_string(), "web".to_string()]);
    c.wait_members(0, 3, 3)?;
    Ok(())
}

/// Starts node `name` with `--join-token TOKEN` through `via` and waits for
/// it to give up; its log.
fn refused_join(c: &mut Cluster, name: &str, via: &str, token: &str) -> Result<String> {
    let i = c.spawn(name, Some(via), &["--join-token", token])?;
    let code = c.nodes[i].wait_exit(Duration::from_secs(30))?;
    assert_ne!(code, Some(0), "{name} joined");
    Ok(c.log_text(i))
}

#[test]
fn join_tokens_are_single_use_expire_can_be_revoked_and_pin_the_ca() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    let make = |args: &[&str]| -> Result<serde_json::Value> {
        let mut all = vec!["cluster", "token", "create"];
        all.extend_from_slice(args);
        kvmesh_tests::run_cli(&first, &all).json()
    };
    let open = make(&[])?["token"].as_str().unwrap().to_string();
    c.spawn("j1", Some(&first), &["--join-token", &open])?;
    c.wait_members(0, 2, 2)?;

    let log = refused_join(&mut c, "j2", &first, &open)?;
    assert!(log.contains("unknown, already used or revoked"), "reused: {log}");

    let short = make(&["--ttl", "1s"])?["token"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let log = refused_join(&mut c, "j3", &first, &short)?;
    assert!(log.contains("expired"), "expired: {log}");

    let revoked = make(&[])?;
    c.cli_ok(0, &["cluster", "token", "revoke", revoked["id"].as_str().unwrap()])?;
    let log = refused_join(&mut c, "j4", &first, revoked["token"].as_str().unwrap())?;
    assert!(log.contains("unknown, already used or revoked"), "revoked: {log}");

    let bound = make(&["--name", "someone"])?["token"].as_str().unwrap().to_string();
    let log = refused_join(&mut c, "j5", &first, &bound)?;
    assert!(log.contains("is for node \"someone\", not \"j5\""), "misdirected: {log}");

    // Another cluster's CA fingerprint in an otherwise valid token.
    let spare = make(&[])?["token"].as_str().unwrap().to_string();
    let mut parts: Vec<String> = spare.splitn(3, '.').map(str::to_string).collect();
    parts[1] = "0".repeat(64);
    let log = refused_join(&mut c, "j6", &first, &parts.join("."))?;
    assert!(log.contains("does not match the fingerprint in the join token"), "pinned: {log}");

    // Without any token, a join says how to get one.
    let port = free_port();
    let dir = c.dir.path().join("j7");
    let out = Command::new(kvmesh_bin())
        .args(["serve", "--name", "j7", "--listen", &format!("127.0.0.1:{port}"), "--libvirt-uri", "test:///default"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--join", &first])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cluster token create --name j7"), "{stderr}");

    // Used and expired tokens are gone from the list; the unused ones stay.
    let listed = c.cli_ok(0, &["cluster", "token", "list"])?;
    let nodes: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|t| t["node"].as_str()).collect();
    assert_eq!(nodes.len(), 2, "{listed}");
    assert!(nodes.contains(&"someone"), "{listed}");
    // Two members, whatever was tried.
    c.wait_members(0, 2, 2)?;
    Ok(())
}

#[test]
fn a_removed_node_is_refused_with_its_old_certificate() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let gone = (leader + 1) % 3;
    let name = c.nodes[gone].name.clone();
    c.cli_ok(leader, &["cluster", "remove", &name, "--force", "--yes"])?;
    c.nodes[gone].wait_exit(Duration::from_secs(30))?;
    let dir = c.nodes[gone].data_dir.clone();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let channel = node_channel(&c.addr(leader), &dir).await?;
        let e = pb::cluster_client::ClusterClient::new(channel).status(pb::StatusRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("revoked"), "{e:?}");
        anyhow::Ok(())
    })?;
    // Started again from its data dir, it learns it was removed and stops.
    c.restart(gone)?;
    assert_ne!(c.nodes[gone].wait_exit(Duration::from_secs(30))?, Some(0));
    assert!(c.log_text(gone).contains("was removed"));
    let events = c.cli(leader, &["events"]).stdout;
    assert!(events.contains(&format!("certificate(s) of node {name} revoked")), "{events}");
    Ok(())
}

/// Node certificates that live 30 s renew at half life while writes go on,
/// without one failed write; a node that was off past its certificate's
/// expiry renews before it dials anyone and catches up.
#[test]
fn certificates_renew_under_load_and_after_expiring_while_off() -> Result<()> {
    let mut c = Cluster::new();
    c.config_toml = "cert_lifetime_s = 30\n".into();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    c.spawn("n2", Some(&first), &[])?;
    c.spawn("n3", Some(&first), &[])?;
    c.wait_members(0, 3, 3)?;
    c.cli_ok(0, &["vm", "create", "load", "--memory", "64"])?;
    c.nodes[2].kill();
    let paths: Vec<std::path::PathBuf> = c.nodes.iter().map(|n| n.data_dir.join("tls/node.crt")).collect();
    let cert = |i: usize| std::fs::read_to_string(&paths[i]).unwrap_or_default();
    let mut seen = [BTreeSet::new(), BTreeSet::new()];
    let (mut writes, mut failures) = (0, Vec::new());
    let started = Instant::now();
    // Past n3's certificate (30 s and a tenth of slack), with writes through
    // both live nodes all along.
    while started.elapsed() < Duration::from_secs(40) {
        let via = writes % 2;
        let r = c.cli(via, &["vm", "set", "load", "--description", &format!("write {writes}")]);
        if !r.success {
            failures.push(format!("write {writes} via n{}: {}", via + 1, r.stderr.trim()));
        }
        writes += 1;
        for (i, certs) in seen.iter_mut().enumerate() {
            certs.insert(cert(i));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failures.is_empty(), "{} of {writes} writes failed: {failures:?}", failures.len());
    for (i, certs) in seen.iter().enumerate() {
        assert!(certs.len() >= 3, "n{} used {} certificates in 40 s", i + 1, certs.len());
    }
    let before = cert(2);
    c.restart(2)?;
    let last = format!("write {}", writes - 1);
    wait_for("n3 to catch up after its certificate expired", Duration::from_secs(30), || {
        let vm = c.vm(2, "load").ok()?;
        (vm["description"] == last.as_str()).then_some(())
    })?;
    assert_ne!(cert(2), before, "n3 came back with its expired certificate");
    assert!(c.log_text(2).contains("renewed this node's certificate"));
    c.wait_members(0, 3, 3)?;
    Ok(())
}

/// 1,500 connections from one source that never start their TLS handshake
/// do not lock other clients out, and are closed within the handshake
/// deadline.
#[test]
fn a_flood_of_idle_connections_does_not_lock_clients_out() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let port = c.addr(0).rsplit_once(':').unwrap().1.to_string();
    let python = std::env::var("KVMESH_PYTHON").unwrap_or_else(|_| "python3".into());
    let flood = r#"
import resource, selectors, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(1500):
    s = socket.socket(); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", int(sys.argv[1]))); socks.append(s)
print("open", len(socks), flush=True)
sel = selectors.DefaultSelector()
for s in socks:
    sel.register(s, selectors.EVENT_READ)
closed, start = 0, time.time()
while time.time() - start < 9 and closed < len(socks):
    for key, _ in sel.select(0.5):
        try:
            gone = key.fileobj.recv(1) == b""
        except OSError:
            gone = True
        if gone:
            sel.unregister(key.fileobj)
            closed += 1
print("closed", closed, "after", round(time.time() - start, 1), flush=True)
"#;
    let mut child = Command::new(&python)
        .args(["-c", flood, &port])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("python for the flood")?;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    assert_eq!(line.trim(), "open 1500");
    // Meanwhile a client from another source is served at once.
    let asked = Instant::now();
    c.cli_ok(0, &["cluster", "status"])?;
    assert!(asked.elapsed() < Duration::from_secs(5), "status took {:?} during the flood", asked.elapsed());
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    child.wait()?;
    let closed: usize = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).context("flood report")?;
    assert_eq!(closed, 1500, "the node kept idle connections open: {line}");
    c.cli_ok(0, &["cluster", "status"])?;
    Ok(())
}

#[test]
fn insecure_mode_is_for_loopback_only() -> Result<()> {
    let port = free_port();
    let dir = tempfile::tempdir()?;
    let out = Command::new(kvmesh_bin())
        .args(["serve", "--insecure", "--name", "x", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--advertise", "10.1.2.3:7100", "--libvirt-uri", "test:///default"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("must be loopback addresses"), "{stderr}");

    // On loopback it runs, without TLS (nodes join with --join alone):
    // only clients that say --insecure talk to it.
    let c = Cluster::three_insecure()?;
    let r = c.cli(1, &["vm", "create", "dev", "--memory", "64"]);
    assert!(r.success, "{}", r.stderr);
    let vms = c.vm_names(2)?;
    assert_eq!(vms, vec!["dev".to_string()]);
    let config = c.dir.path().join("none.toml");
    let alias = c.addr(0).replace("127.0.0.1", "localhost");
    register_client_config(&alias, &config);
    let r = kvmesh_tests::run_cli(&alias, &["vm", "list"]);
    assert!(!r.success, "a TLS client talked to a plaintext node: {}", r.stdout);
    Ok(())
}

/// A client certificate is a credential with a role, like a token: made
/// from a key that stays with the client, refused at once once revoked.
#[test]
fn client_certificates_carry_a_role_and_can_be_revoked() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::new();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let out = c.dir.path().join("ci.toml");
    c.cli_ok(0, &["cert", "create", "ci", "--role", "viewer", "--out", &out.display().to_string()])?;
    assert_eq!(std::fs::metadata(&out)?.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&out)?;
    assert!(text.contains("PRIVATE KEY") && !text.contains("token"), "{text}");
    let alias = c.addr(0).replace("127.0.0.1", "localhost");
    register_client_config(&alias, &out);
    let r = kvmesh_tests::run_cli(&alias, &["vm", "list"]);
    assert!(r.success, "{}", r.stderr);
    let r = kvmesh_tests::run_cli(&alias, &["vm", "create", "x", "--memory", "64"]);
    assert!(!r.success && r.stderr.contains("needs the operator role; ci has the viewer role"), "{}", r.stderr);
    let listed = c.cli_ok(0, &["cert", "list"])?;
    assert_eq!(listed[0]["name"], "ci", "{listed}");
    c.cli_ok(0, &["cert", "revoke", "ci"])?;
    let r = kvmesh_tests::run_cli(&alias, &["vm", "list"]);
    assert!(!r.success && r.stderr.contains("was revoked"), "{}", r.stderr);
    assert!(c.cli_ok(0, &["cert", "list"])?.as_array().unwrap().is_empty());
    assert!(c.vm_names(0)?.is_empty());
    Ok(())
}

/// A node certificate from another cluster's CA gets no further than the
/// handshake, even from a client that trusts this cluster's CA; and a
/// client holding another cluster's CA does not accept this cluster's nodes.
#[test]
fn another_clusters_certificates_are_refused_at_the_handshake() -> Result<()> {
    let mut a = Cluster::new();
    a.spawn("a1", None, &[])?;
    a.cli_ok(0, &["cluster", "init"])?;
    let mut b = Cluster::new();
    b.spawn("b1", None, &[])?;
    b.cli_ok(0, &["cluster", "init"])?;
    let (a_tls, b_tls) = (a.nodes[0].data_dir.join("tls"), b.nodes[0].data_dir.join("tls"));
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(a_tls.join("ca.crt"))?))
            .identity(Identity::from_pem(read(b_tls.join("node.crt"))?, read(b_tls.join("node.key"))?))
            .domain_name("kvmesh-node");
        let channel = Channel::from_shared(format!("https://{}", a.addr(0)))?.tls_config(tls)?.connect().await;
        match channel {
            Err(e) => anyhow::Ok(format!("connect: {e:?}")),
            Ok(channel) => {
                let r = pb::raft_client::RaftClient::new(channel).vote(pb::RaftMessage { payload: vec![] }).await;
                anyhow::ensure!(r.is_err(), "another cluster's node certificate reached Raft");
                Ok(format!("call: {:?}", r.unwrap_err()))
            }
        }
    })?;
    println!("foreign node certificate: {result}");
    // Refused by the TLS handshake itself (an alert, or the connection
    // closed after it), never answered by a service.
    assert!(result.contains("Transport") || result.starts_with("connect"), "{result}");
    // A client config of cluster b against cluster a's node.
    let b_config = client_config_for(&b.addr(0)).context("registered")?;
    let alias = a.addr(0).replace("127.0.0.1", "localhost");
    register_client_config(&alias, &b_config);
    let r = kvmesh_tests::run_cli(&alias, &["cluster", "status"]);
    assert!(!r.success && r.stderr.contains("does not check out against the CA"), "{}", r.stderr);
    Ok(())
}
