//! VM creates through the API from long-lived clients (`--creates`): C
//! clients in closed loops, each `Vms/Create` placed by the leader's
//! scheduler and committed through Raft (the host's agent then defines and
//! starts it on `test:///default` and reports it running, a second write),
//! against the leader and through a follower. Baseline in the same run, on
//! the same cluster and clients: `vm set --description`, the plain write
//! that group-commits.

use anyhow::Result;
use kvmesh_proto as pb;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_tests::{Cluster, TokenChannel};

use super::load::{self, ms, Writer};
use super::{check, create_pool, kvmesh_channels, machine, Args, KvmeshUpdate};

/// `vm create` of a new 1-vCPU, 1-MiB VM per write.
#[derive(Clone)]
struct KvmeshCreate {
    channels: Vec<TokenChannel>,
    /// Tells runs apart, names being unique for good.
    run: String,
}

impl Writer for KvmeshCreate {
    async fn write(&self, client: usize, seq: u64) -> Result<(), String> {
        let mut vms = VmsClient::new(self.channels[client % self.channels.len()].clone());
        let name = format!("{}-{client}-{seq}", self.run);
        let create = pb::CreateVmRequest { name, vcpus: 1, memory_mib: 1, ..Default::default() };
        vms.create(create).await.map(|_| ()).map_err(|s| format!("{}: {}", s.code(), s.message()))
    }
}

pub async fn creates(args: &Args) -> Result<()> {
    // Hosts big enough that capacity never refuses a create.
    let mut c = Cluster::three_with(&["--cpus", "1000000", "--memory-mib", "1000000000"])?;
    let leader = c.leader()?;
    let follower = (leader + 1) % 3;
    create_pool(&c.addr(leader), false).await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    println!(
        "machine: {}; {} s per run after {} s warm-up",
        machine(),
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    println!();
    println!("| target | clients | creates/s | vm set/s (baseline) | creates/baseline | create p50 / p99 ms | vm set p50 / p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (target, node) in [("leader", leader), ("follower", follower)] {
        for &clients in &args.clients {
            let channels = kvmesh_channels(&c.addr(node), clients, false).await?;
            let run = format!("c{target}{clients}");
            let k =
                load::run(KvmeshCreate { channels: channels.clone(), run }, clients, args.warmup, args.duration).await;
            check("creates", &k)?;
            let u = load::run(KvmeshUpdate { channels }, clients, args.warmup, args.duration).await;
            check("vm set", &u)?;
            println!(
                "| {target} | {clients} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                k.per_sec(),
                u.per_sec(),
                k.per_sec() / u.per_sec(),
                ms(k.pct(0.5)),
                ms(k.pct(0.99)),
                ms(u.pct(0.5)),
                ms(u.pct(0.99))
            );
        }
    }
    if c.leader()? != leader {
        println!("\nnote: the leader changed during the run; rerun for clean figures");
    }
    Ok(())
}
