//! Synthetic records for the scale benchmark (`bench-writes --scale`).
//!
//! Compiled only with the `bench-seed` feature, so no release binary can
//! write them. With `KVMESH_BENCH_SEED=NODES,VMS` in its environment, a
//! leader fills the replicated state with that many host records
//! (`synthetic-node-<i>`, on addresses in 198.18.0.0/15, the range set aside
//! for benchmarks) and VM records (`synthetic-vm-<j>`, placed round-robin on
//! them), through the real write path: the proposer, Raft, every replica's
//! apply. Records that exist already are skipped, so a restarted or newly
//! elected leader finishes the job rather than repeating it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_raft::command::Command;
use kvmesh_raft::model::{Node, NodeState, Vm, VmSpec};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::ctx::{now_ms, NodeCtx};

/// Writes in flight at once while seeding; the proposer batches them.
const CONCURRENCY: usize = 64;

/// Reads `KVMESH_BENCH_SEED` and, if set, seeds once this node leads.
pub fn start(ctx: &Arc<NodeCtx>) {
    let Ok(spec) = std::env::var("KVMESH_BENCH_SEED") else { return };
    let parsed = spec.split_once(',').and_then(|(n, v)| Some((n.trim().parse().ok()?, v.trim().parse().ok()?)));
    let Some((nodes, vms)) = parsed else {
        warn!(%spec, "KVMESH_BENCH_SEED must be NODES,VMS; not seeding");
        return;
    };
    tokio::spawn(run(ctx.clone(), nodes, vms));
}

async fn run(ctx: Arc<NodeCtx>, nodes: usize, vms: usize) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leads = ctx.leader().map(|(id, _)| id) == Some(ctx.id);
        let initialized = ctx.read(|d| d.state.cluster_id().is_some());
        if !(leads && initialized) {
            continue;
        }
        let start = Instant::now();
        match seed(&ctx, nodes, vms).await {
            Ok(written) => {
                info!(nodes, vms, written, elapsed_ms = start.elapsed().as_millis() as u64, "bench seed done");
                return;
            }
            Err(e) => warn!(error = %e, "bench seed interrupted; will retry"),
        }
    }
}

fn synthetic_node(i: usize) -> Node {
    Node {
        id: 0x5eed_0000_0000_0000 | i as u64,
        name: format!("synthetic-node-{i}"),
        address: format!("198.18.{}.{}:7000", i / 256, i % 256),
        cpus: 64,
        memory_mib: 256 * 1024,
        state: NodeState::Up,
        joined_at_ms: now_ms(),
        labels: [("kvmesh.synthetic".to_string(), "true".to_string())].into(),
        resume_as: None,
        cold_drain: false,
    }
}

fn synthetic_vm(j: usize, node: u64) -> Vm {
    let spec = VmSpec { vcpus: 2, memory_mib: 2048, ..Default::default() };
    Vm::placed(0x5eed_0000_0000 | j as u64, &format!("synthetic-vm-{j}"), spec, node, now_ms())
}

/// Writes every missing record; returns how many it wrote.
async fn seed(ctx: &Arc<NodeCtx>, nodes: usize, vms: usize) -> crate::error::Result<usize> {
    let missing_nodes: Vec<Command> = ctx.read(|d| {
        (0..nodes)
            .map(synthetic_node)
            .filter(|n| !d.state.nodes.contains_key(&n.id))
            .map(|node| Command::AddNode { node, at_ms: now_ms() })
            .collect()
    });
    let mut written = write_all(ctx, missing_nodes).await?;
    let missing_vms: Vec<Command> = ctx.read(|d| {
        (0..vms)
            .map(|j| synthetic_vm(j, synthetic_node(j % nodes.max(1)).id))
            .filter(|vm| !d.state.vms.contains_key(&vm.id))
            .map(|vm| Command::CreateVm { vm: Box::new(vm), at_ms: now_ms() })
            .collect()
    });
    written += write_all(ctx, missing_vms).await?;
    Ok(written)
}

async fn write_all(ctx: &Arc<NodeCtx>, cmds: Vec<Command>) -> crate::error::Result<usize> {
    let count = cmds.len();
    let mut tasks = JoinSet::new();
    for cmd in cmds {
        if tasks.len() >= CONCURRENCY {
            if let Some(r) = tasks.join_next().await {
                r.map_err(|e| crate::error::Error::Raft(e.to_string()))??;
            }
        }
        let ctx = ctx.clone();
        tasks.spawn(async move { ctx.propose_as_leader(cmd).await.map(|_| ()) });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| crate::error::Error::Raft(e.to_string()))??;
    }
    Ok(count)
}
