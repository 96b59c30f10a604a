//! Networks on this host: the agent's loop that makes the host's devices
//! match the cluster's networks (`plan` decides, `netlink` acts), the
//! per-network status each heartbeat carries, and the NIC definitions the
//! agent gives libvirt.
//!
//! On the embedded `test:///default` hypervisor nothing is made: its guests
//! are not real, and several nodes on one machine would fight over one set
//! of devices. Networks there read `ready` and say why nothing was made.

pub mod netlink;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use kvmesh_proto as pb;
use kvmesh_raft::model::ClusterState;
use kvmesh_raft::networks::{Network, Nic};
use tracing::{info, warn};

use crate::ctx::NodeCtx;
use crate::hypervisor::xml::NicXml;
use plan::{Status, Step, Wanted};

/// How often the host is compared with the cluster's networks when
/// nothing changed (someone may have deleted a device by hand).
const EVERY: Duration = Duration::from_secs(5);

pub const READY: &str = "ready";
pub const UNSUPPORTED: &str = "unsupported";
pub const ERROR: &str = "error";

/// Why VLAN devices cannot be made here, as the kernel's refusal says.
const NO_8021Q: &str = "this kernel has no 802.1Q VLAN support (the 8021q module is not loaded and cannot be); \
                        on a host with it, `modprobe 8021q` and the network becomes ready";

/// Keeps the host's devices and `ctx.network_status` up to date; runs for
/// the node's life.
pub async fn run(ctx: Arc<NodeCtx>) {
    let simulated = ctx.config.libvirt_uri.starts_with("test:");
    let handle = if simulated {
        None
    } else {
        match rtnetlink::new_connection() {
            Ok((connection, handle, _)) => {
                tokio::spawn(connection);
                Some(handle)
            }
            Err(e) => {
                warn!(error = %e, "no netlink socket: this host cannot make networks");
                None
            }
        }
    };
    let mut metrics = ctx.raft.metrics();
    // Why VLAN devices failed, and when: tried again after a minute (an
    // operator may have loaded 8021q meanwhile).
    let mut vlan_unsupported: Option<(String, std::time::Instant)> = None;
    loop {
        let seen = wanted_config(&ctx);
        let statuses = match (&handle, seen.as_ref()) {
            (_, None) => Vec::new(),
            (None, Some((nets, _, _))) => nets.iter().map(|n| unrealized(&ctx, n, simulated)).collect(),
            (Some(handle), Some((networks, local, peers))) => {
                let want = resolve(networks.clone(), local, peers).await;
                if vlan_unsupported.as_ref().is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(60)) {
                    vlan_unsupported = None;
                }
                realize(&ctx, handle, &want, &mut vlan_unsupported).await
            }
        };
        *ctx.network_status.lock().unwrap_or_else(|p| p.into_inner()) = statuses;
        let next = tokio::time::sleep(EVERY);
        tokio::pin!(next);
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if wanted_config(&ctx) != seen {
                        break;
                    }
                }
                _ = &mut next => break,
            }
        }
    }
}

/// The networks, this host's address and the other members' (name,
/// address) pairs, as the replica holds them.
type Config = (Vec<Network>, String, Vec<(String, String)>);

fn wanted_config(ctx: &NodeCtx) -> Option<Config> {
    ctx.read(|d| {
        let me = d.state.nodes.get(&ctx.id)?;
        let peers =
            d.state.nodes.values().filter(|n| n.id != ctx.id).map(|n| (n.name.clone(), n.address.clone())).collect();
        Some((d.state.meta.networks.values().cloned().collect(), me.address.clone(), peers))
    })
}

/// Turns addresses into IPv4 addresses (a host name is looked up); a peer
/// that gives none is named, so its VXLAN networks say the overlay is split.
async fn resolve(networks: Vec<Network>, local: &str, peers: &[(String, String)]) -> Wanted {
    let mut want = Wanted {
        networks,
        local: ipv4_of(local).await.unwrap_or(Ipv4Addr::UNSPECIFIED),
        peers: BTreeSet::new(),
        unreachable_peers: Vec::new(),
    };
    for (name, address) in peers {
        match ipv4_of(address).await {
            Some(ip) => {
                want.peers.insert(ip);
            }
            None => want.unreachable_peers.push(format!("member {name}'s address {address} gives no IPv4 address")),
        }
    }
    want
}

/// The IPv4 address of a node address (`IP:PORT` or `NAME:PORT`).
async fn ipv4_of(address: &str) -> Option<Ipv4Addr> {
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return match sa.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        };
    }
    let found = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(address)).await.ok()?.ok()?;
    found.into_iter().find_map(|sa| match sa.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    })
}

fn unrealized(ctx: &NodeCtx, n: &Network, simulated: bool) -> pb::HostNetworkStatus {
    let (state, message) = if simulated {
        (READY, "nothing made: the test:///default hypervisor runs no real guests".to_string())
    } else {
        (ERROR, "this host has no netlink socket to make networks with".to_string())
    };
    pb::HostNetworkStatus {
        node: ctx.name.clone(),
        network: n.name.clone(),
        state: state.into(),
        message,
        mtu: if state == READY { n.mtu.unwrap_or(1500) } else { 0 },
    }
}

/// One pass: observe, plan, apply; each network's status afterwards.
async fn realize(
    ctx: &NodeCtx,
    handle: &rtnetlink::Handle,
    want: &Wanted,
    vlan_unsupported: &mut Option<(String, std::time::Instant)>,
) -> Vec<pb::HostNetworkStatus> {
    let mut have = match netlink::observe(handle).await {
        Ok(have) => have,
        Err(e) => {
            warn!(error = %e, "cannot read this host's network devices");
            return want.networks.iter().map(|n| status(ctx, &n.name, &Status::Error(e.clone()))).collect();
        }
    };
    have.vlan_unsupported = vlan_unsupported.as_ref().map(|(why, _)| why.clone());
    let (steps, mut statuses) = plan::plan(want, &have);
    // Which network a device belongs to, to charge a failed step to it.
    let owner: BTreeMap<String, String> = want
        .networks
        .iter()
        .flat_map(|n| {
            let (bridge, port) = plan::devices(n);
            [Some(bridge), port].into_iter().flatten().map(|d| (d, n.name.clone())).collect::<Vec<_>>()
        })
        .collect();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for step in &steps {
        let network = step_network(step, &owner);
        if network.as_ref().is_some_and(|n| failed.contains(n)) {
            continue;
        }
        match netlink::apply(handle, step).await {
            Ok(()) => info!(?step, "network device changed"),
            Err(e) => {
                let Some(network) = network else {
                    warn!(error = %e.message, "could not remove a device kvmesh made");
                    continue;
                };
                let s = if e.unsupported && matches!(step, Step::AddVlan { .. }) {
                    *vlan_unsupported = Some((NO_8021Q.to_string(), std::time::Instant::now()));
                    Status::Unsupported(NO_8021Q.to_string())
                } else {
                    warn!(network = %network, error = %e.message, "could not realize a network here");
                    Status::Error(e.message)
                };
                statuses.insert(network.clone(), s);
                failed.insert(network);
            }
        }
    }
    statuses.iter().map(|(n, s)| status(ctx, n, s)).collect()
}

fn step_network(step: &Step, owner: &BTreeMap<String, String>) -> Option<String> {
    match step {
        Step::AddBridge { network, .. } | Step::AddVxlan { network, .. } | Step::AddVlan { network, .. } => {
            Some(network.clone())
        }
        Step::Attach { device, .. } | Step::FloodAdd { device, .. } | Step::FloodDel { device, .. } => {
            owner.get(device).cloned()
        }
        Step::SetUp { name, .. } | Step::Mark { name, .. } => owner.get(name).cloned(),
        Step::Delete { name, .. } => owner.get(name).cloned(),
    }
}

fn status(ctx: &NodeCtx, network: &str, s: &Status) -> pb::HostNetworkStatus {
    let (state, message, mtu) = match s {
        Status::Ready { mtu } => (READY, String::new(), *mtu),
        Status::Unsupported(why) => (UNSUPPORTED, why.clone(), 0),
        Status::Error(why) => (ERROR, why.clone(), 0),
    };
    pb::HostNetworkStatus { node: ctx.name.clone(), network: network.into(), state: state.into(), message, mtu }
}

/// Deletes every device kvmesh made on this host (the node left the
/// cluster): the plan for no networks at all.
pub async fn remove_all(ctx: &NodeCtx) {
    if ctx.config.libvirt_uri.starts_with("test:") {
        return;
    }
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else { return };
    tokio::spawn(connection);
    let have = match netlink::observe(&handle).await {
        Ok(have) => have,
        Err(e) => return warn!(error = %e, "cannot read this host's network devices to remove kvmesh's"),
    };
    let want = Wanted {
        networks: Vec::new(),
        local: Ipv4Addr::UNSPECIFIED,
        peers: BTreeSet::new(),
        unreachable_peers: Vec::new(),
    };
    for step in plan::plan(&want, &have).0 {
        match netlink::apply(&handle, &step).await {
            Ok(()) => info!(?step, "left the cluster: removed a network device kvmesh made"),
            Err(e) => warn!(error = %e.message, "could not remove a network device kvmesh made"),
        }
    }
}

/// This host's statuses, for its heartbeat.
pub fn current(ctx: &NodeCtx) -> Vec<pb::HostNetworkStatus> {
    ctx.network_status.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The NICs of a VM as libvirt gets them on this host.
pub fn nics_xml(ctx: &NodeCtx, state: &ClusterState, nics: &[Nic]) -> Vec<NicXml> {
    let here = current(ctx);
    nics.iter()
        .filter_map(|nic| {
            let network = state.meta.networks.get(&nic.network)?;
            let mtu = here.iter().find(|s| s.network == nic.network && s.state == READY).map(|s| s.mtu);
            Some(NicXml {
                bridge: network.bridge(),
                mac: nic.mac.to_string(),
                model: nic.model.clone(),
                mtu: network.mtu.or(mtu).filter(|m| *m > 0),
            })
        })
        .collect()
}
