//! The write path under concurrency: `vm set` from any node, and group
//! commit (concurrent writes share log entries, also when a follower
//! forwards them) without losing or reordering any acknowledged write.

use std::time::Duration;

use anyhow::{Context, Result};
use kvmesh_proto as pb;
use kvmesh_proto::cluster_client::ClusterClient;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_tests::Cluster;
use kvmesh_tests::TokenChannel;

#[test]
fn vm_set_changes_description_and_priority_from_any_node() -> Result<()> {
    let c = Cluster::three()?;
    let leader = c.leader_index_no_mut()?;
    let follower = (leader + 1) % 3;
    c.cli_ok(leader, &["vm", "create", "db", "--memory", "64"])?;
    let vm =
        c.cli_ok(follower, &["vm", "set", "db", "--description", "primary database\tfor billing", "--priority", "-5"])?;
    assert_eq!(vm["description"], "primary database\tfor billing", "{vm}");
    assert_eq!(vm["priority"], -5, "{vm}");
    // Committed: every replica shows it.
    for i in 0..3 {
        kvmesh_tests::wait_for("the description on every node", Duration::from_secs(10), || {
            (c.vm(i, "db").ok()?["description"] == "primary database\tfor billing").then_some(())
        })?;
    }
    let table = c.cli_table(leader, &["vm", "get", "db"]);
    assert!(table.stdout.contains("description: primary database"), "{}", table.stdout);
    // Only the description changes; the priority stays.
    let vm = c.cli_ok(leader, &["vm", "set", "db", "--description", ""])?;
    assert_eq!((vm["description"].as_str(), vm["priority"].as_i64()), (Some(""), Some(-5)));

    // Bad input: a clear message, nothing changed.
    let r = c.cli(follower, &["vm", "set", "db"]);
    assert!(!r.success && r.stderr.contains("nothing to change"), "{}", r.stderr);
    let long = "x".repeat(5000);
    let r = c.cli(follower, &["vm", "set", "db", "--description", &long]);
    assert!(!r.success && r.stderr.contains("limit is 4096"), "{}", r.stderr);
    let r = c.cli(follower, &["vm", "set", "db", "--description", "bell\u{7}"]);
    assert!(!r.success && r.stderr.contains("control characters"), "{}", r.stderr);
    let r = c.cli(follower, &["vm", "set", "nope", "--priority", "1"]);
    assert!(!r.success && r.stderr.contains("no VM named \"nope\""), "{}", r.stderr);
    assert_eq!(c.vm(leader, "db")?["priority"], -5);
    Ok(())
}

async fn connect(address: &str) -> Result<TokenChannel> {
    kvmesh_tests::api_channel(address).await
}

async fn commit_index(ch: &TokenChannel) -> Result<u64> {
    Ok(ClusterClient::new(ch.clone()).status(pb::StatusRequest {}).await?.into_inner().commit_index)
}

/// 64 clients write at once through a follower, 20 writes each, each to its
/// own VM: every write is acknowledged, the last acknowledged value is what
/// every replica holds, and the writes took far fewer log entries than
/// writes (the proposer batched them, and the follower forwarded batches).
#[test]
fn concurrent_writes_through_a_follower_share_log_entries_and_lose_nothing() -> Result<()> {
    const CLIENTS: usize = 64;
    const WRITES: usize = 20;
    let c = Cluster::three()?;
    let leader = c.leader_index_no_mut()?;
    let follower = (leader + 1) % 3;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let leader_ch = connect(&c.addr(leader)).await?;
        for k in 0..CLIENTS {
            let create = pb::CreateVmRequest { name: format!("b{k}"), vcpus: 1, memory_mib: 1, ..Default::default() };
            VmsClient::new(leader_ch.clone()).create(create).await?;
        }
        let before = commit_index(&leader_ch).await?;
        let ch = connect(&c.addr(follower)).await?;
        let mut tasks = Vec::new();
        for k in 0..CLIENTS {
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                for w in 0..WRITES {
                    let req = pb::UpdateVmRequest {
                        name: format!("b{k}"),
                        description: Some(format!("client {k} write {w}")),
                        priority: None,
                        ..Default::default()
                    };
                    let vm = VmsClient::new(ch.clone()).update(req).await?.into_inner();
                    anyhow::ensure!(vm.description == format!("client {k} write {w}"), "answer {vm:?}");
                }
                anyhow::Ok(())
            }));
        }
        let work = async {
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), work).await.context("writes did not finish in 60 s")??;
        let entries = commit_index(&leader_ch).await? - before;
        let writes = (CLIENTS * WRITES) as u64;
        assert!(entries * 4 <= writes, "{writes} writes took {entries} log entries: no group commit");
        // Every replica applied every last write.
        for i in 0..3 {
            let ch = connect(&c.addr(i)).await?;
            kvmesh_tests::wait_async_ok(Duration::from_secs(10), || {
                let ch = ch.clone();
                async move {
                    let vms = VmsClient::new(ch).list(pb::ListVmsRequest::default()).await.ok()?.into_inner().vms;
                    let done = (0..CLIENTS).all(|k| {
                        vms.iter().any(|v| {
                            v.name == format!("b{k}") && v.description == format!("client {k} write {}", WRITES - 1)
                        })
                    });
                    done.then_some(())
                }
            })
            .await
            .with_context(|| format!("node {i} does not hold every last write"))?;
        }
        anyhow::Ok(())
    })
}

/// openraft snapshots every `snapshot_every` entries; an entry can hold
/// hundreds of writes, so the node also snapshots when the log since the
/// last snapshot outgrows `snapshot_log_mib`.
#[test]
fn a_log_that_outgrows_its_size_limit_is_snapshotted() -> Result<()> {
    let mut c = Cluster::new();
    c.config_toml = "[raft]\nsnapshot_every = 1000000\nsnapshot_log_mib = 1\n".into();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    c.cli_ok(0, &["vm", "create", "big", "--memory", "64"])?;
    assert!(c.status(0)?["snapshot_index"].is_null(), "no snapshot expected yet");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let ch = connect(&c.addr(0)).await?;
        // 400 × 4 KB: about 1.6 MiB of log.
        let work = async {
            for w in 0..400 {
                let description = format!("{w} {}", "x".repeat(4000));
                let req =
                    pb::UpdateVmRequest { name: "big".into(), description: Some(description), ..Default::default() };
                VmsClient::new(ch.clone()).update(req).await?;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), work).await.context("writes did not finish in 60 s")?
    })?;
    kvmesh_tests::wait_for("a snapshot by size", Duration::from_secs(15), || {
        c.status(0).ok()?["snapshot_index"].as_u64().filter(|i| *i > 0)
    })?;
    assert!(c.log_text(0).contains("outgrew raft.snapshot_log_mib"), "{}", c.log_text(0));
    Ok(())
}
