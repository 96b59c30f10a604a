//! `kvmesh cluster …` and `kvmesh events`: bootstrapping the cluster, its
//! status and membership, the placement policy, the HA capacity report, and
//! the cluster's event log.

use super::client::Ch;
use anyhow::Result;
use kvmesh_proto as pb;
use pb::cluster_client::ClusterClient;
use serde_json::json;

use super::client::{req, status_err};
use super::config::{ClientConfig, Settings};
use super::output::{print_capacity, print_policy, print_status};
use super::{ClusterCmd, Output, PolicyCmd};
use crate::tls::verify::CaFromChain;

pub async fn run(channel: Ch, output: Output, command: ClusterCmd) -> Result<()> {
    let cluster_channel = channel.clone();
    let mut cluster = ClusterClient::new(channel);
    match command {
        ClusterCmd::Init { .. } => unreachable!("init is run by `init`"),
        ClusterCmd::Token(c) => return super::security::join_tokens(cluster_channel, output, c).await,
        ClusterCmd::Status => {
            let s = cluster.status(req(pb::StatusRequest {})).await.map_err(status_err)?.into_inner();
            if s.cluster_id.is_empty() {
                anyhow::bail!(
                    "node {} is not in a cluster yet ({}). Run `kvmesh cluster init` against it to found a new cluster, \
                     or start it with `kvmesh serve --join MEMBER --join-token TOKEN` to join one",
                    s.node_name,
                    s.raft_state
                );
            }
            print_status(output, &s);
        }
        ClusterCmd::Remove { name, force, yes } => {
            if force {
                super::wait::confirm(
                    yes,
                    &format!("removing node {name} with --force unplaces the VMs placed on it (they wait for a new placement)"),
                )?;
            }
            cluster.remove(req(pb::RemoveRequest { name: name.clone(), force })).await.map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"removed": name})),
                Output::Table => outln!("removed node {name}"),
            }
        }
        ClusterCmd::Policy(PolicyCmd::Show) => {
            let p = cluster.get_policy(req(pb::GetPolicyRequest {})).await.map_err(status_err)?.into_inner();
            print_policy(output, &p);
        }
        ClusterCmd::Policy(PolicyCmd::Set { policy, cpu_overcommit, memory_overcommit, balance }) => {
            let balance = balance.map(|b| b == "on");
            let set = pb::SetPolicyRequest { policy, cpu_overcommit, memory_overcommit, balance };
            let p = cluster.set_policy(req(set)).await.map_err(status_err)?.into_inner();
            print_policy(output, &p);
        }
        ClusterCmd::Balance { dry_run, threshold, max } => {
            let r = pb::BalanceRequest { dry_run, threshold_pct: threshold, max_moves: max };
            let moves = cluster.balance(req(r)).await.map_err(status_err)?.into_inner().moves;
            match output {
                Output::Json => outln!(
                    "{}",
                    crate::view::json(crate::view::Balance::from(&pb::BalanceReply { moves: moves.clone() }))
                ),
                Output::Table if moves.is_empty() => outln!("the hosts are balanced: nothing to move"),
                Output::Table => {
                    for m in &moves {
                        let what = match (dry_run, m.begun) {
                            (true, _) => "would move",
                            (false, true) => "moving",
                            (false, false) => "not moving",
                        };
                        outln!("{what} {} live from {} to {}: {}", m.vm, m.from, m.to, m.why);
                        if !m.refused.is_empty() {
                            outln!("  {}", m.refused);
                        }
                    }
                }
            }
        }
        ClusterCmd::Capacity { check } => {
            let r = cluster.capacity(req(pb::CapacityRequest {})).await.map_err(status_err)?.into_inner();
            print_capacity(output, &r);
            if check && !r.n_plus_1 {
                let worst = r
                    .worst
                    .map(|w| format!(": losing {w} would leave HA VMs with nowhere to restart"))
                    .unwrap_or_default();
                return Err(super::CheckFailed(format!("N+1 fails{worst}")).into());
            }
        }
    }
    Ok(())
}

/// `cluster init`: founds the cluster on the node at the endpoint, trusting
/// the CA it presents (its first use), and writes the client config with
/// that CA and the first admin token.
pub async fn init(settings: &Settings, output: Output, max_voters: u32, force: bool) -> Result<()> {
    // Checked before the cluster exists: its admin token is shown once.
    if !settings.insecure && !force && settings.path.exists() {
        return Err(anyhow::anyhow!(
            "the client config {} exists (it may hold another cluster's admin token); move it away, name another with --client-config, or pass --force to overwrite it",
            settings.path.display()
        ));
    }
    let seen = CaFromChain::first_use();
    let channel = super::client::connect(settings, Some(seen.clone())).await?;
    let r =
        ClusterClient::new(channel).init(req(pb::InitRequest { max_voters })).await.map_err(status_err)?.into_inner();
    let mut saved = None;
    if !settings.insecure {
        super::security::same_ca(seen.seen.lock().unwrap_or_else(|p| p.into_inner()).clone(), &r.ca_cert_pem)?;
        let config = ClientConfig {
            endpoint: Some(settings.endpoint_list()),
            ca_cert: Some(r.ca_cert_pem.clone()),
            token: Some(r.admin_token.clone()),
            cert: None,
            key: None,
        };
        if let Err(e) = super::config::save(&settings.path, &config) {
            // The token exists only in this answer: never lose it.
            eprintln!("admin token (shown once): {}", r.admin_token);
            eprintln!("cluster CA certificate:\n{}", r.ca_cert_pem);
            return Err(e.context("the cluster is initialized, but its client config could not be written; keep the token and CA printed above"));
        }
        saved = Some(settings.path.display().to_string());
    }
    match output {
        Output::Json => outln!(
            "{}",
            json!({"cluster_id": r.cluster_id, "node_id": r.node_id, "node_name": r.node_name,
                   "admin_token": r.admin_token, "client_config": saved})
        ),
        Output::Table => {
            outln!("initialized cluster {} on node {}", r.cluster_id, r.node_name);
            if let Some(path) = saved {
                outln!("admin token (shown once): {}", r.admin_token);
                outln!("client config written to {path}: the endpoint, the cluster CA and this token; keep it private");
            }
        }
    }
    Ok(())
}
