//! The pure half of realizing networks on a host: (the cluster's networks,
//! this host's address and its peers', the links the kernel has) → the
//! steps that make the host match, and each network's status here.
//!
//! kvmesh marks every device it makes with an interface alias
//! (`kvmesh network NAME`) and only ever changes or deletes devices that
//! carry one: an operator's bridge, uplink or address is never touched.
//! Running the plan on a host that already matches yields no steps, which
//! is what makes a restarted agent change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use kvmesh_raft::networks::{device_name, Network, NetworkKind, VXLAN_OVERHEAD};

/// The alias prefix that marks kvmesh's devices.
pub const ALIAS_PREFIX: &str = "kvmesh network ";

/// A link as the kernel lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `vxlan`, `vlan`, ... (`None`: a plain device such as a NIC).
    pub kind: Option<String>,
    pub alias: Option<String>,
    /// The bridge it is enslaved to.
    pub master: Option<u32>,
    pub mtu: u32,
    pub up: bool,
    /// For a VXLAN device: its VNI and local address.
    pub vni: Option<u32>,
    pub vxlan_local: Option<Ipv4Addr>,
    /// For a VLAN device: its id and the link it rides on.
    pub vlan: Option<u16>,
    pub parent: Option<u32>,
    /// IPv4 addresses on it.
    pub addresses: Vec<Ipv4Addr>,
}

/// What the host has now.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub links: Vec<Link>,
    /// VXLAN device name → the remote addresses of its all-zero FDB entries.
    pub flood: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Why this kernel cannot make VLAN devices, once an attempt said so.
    pub vlan_unsupported: Option<String>,
}

impl Observed {
    fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// What the cluster wants of this host.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub networks: Vec<Network>,
    /// This host's address as the cluster knows it (VXLAN's local end).
    pub local: Ipv4Addr,
    /// The other members' addresses (VXLAN's remote ends).
    pub peers: BTreeSet<Ipv4Addr>,
    /// Members whose address gives no IPv4 address here, with why: a
    /// VXLAN network without them would be split, so it says so.
    pub unreachable_peers: Vec<String>,
}

/// One change to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    AddBridge {
        name: String,
        network: String,
        mtu: u32,
    },
    AddVxlan {
        name: String,
        network: String,
        vni: u32,
        local: Ipv4Addr,
        mtu: u32,
    },
    AddVlan {
        name: String,
        network: String,
        uplink: u32,
        vlan: u16,
        mtu: u32,
    },
    /// Enslave `device` to `bridge`, set its MTU and bring it up.
    Attach {
        device: String,
        bridge: String,
        mtu: u32,
    },
    SetUp {
        name: String,
        mtu: u32,
    },
    FloodAdd {
        device: String,
        remote: Ipv4Addr,
    },
    FloodDel {
        device: String,
        remote: Ipv4Addr,
    },
    /// Mark a device of kvmesh's own naming that lacks the mark (the
    /// daemon died between making and marking it).
    Mark {
        name: String,
        network: String,
    },
    /// Remove a device kvmesh made (its network is gone or changed).
    Delete {
        name: String,
        index: u32,
    },
}

/// A network on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ready { mtu: u32 },
    Unsupported(String),
    Error(String),
}

/// The devices a network has on a host: its bridge and, for VXLAN and VLAN,
/// the device on the bridge that carries traffic off the host.
pub fn devices(n: &Network) -> (String, Option<String>) {
    let bridge = n.bridge();
    let port = match &n.kind {
        NetworkKind::Vxlan { .. } => Some(device_name("kvx", &n.name)),
        NetworkKind::Vlan { uplink, vlan } => {
            let classic = format!("{uplink}.{vlan}");
            Some(if classic.len() <= 15 { classic } else { device_name("kvl", &n.name) })
        }
        _ => None,
    };
    (bridge, port)
}

pub fn alias_of(network: &str) -> String {
    format!("{ALIAS_PREFIX}{network}")
}

/// The plan: steps in order, and every network's status on this host.
pub fn plan(want: &Wanted, have: &Observed) -> (Vec<Step>, BTreeMap<String, Status>) {
    let mut steps = Vec::new();
    let mut status = BTreeMap::new();
    // Device name -> the network that wants it.
    let mut keep: BTreeMap<String, String> = BTreeMap::new();
    for n in &want.networks {
        let (bridge, port) = devices(n);
        keep.insert(bridge, n.name.clone());
        if let Some(port) = port {
            keep.insert(port, n.name.clone());
        }
    }
    // What kvmesh made that nothing wants any more, or that was made for
    // another network (removed, then one added that wants the same name),
    // or that no longer matches its network: deleted first, ports before
    // bridges, so the adds below start from a clean slate.
    let stale: Vec<&Link> = have
        .links
        .iter()
        .filter(|l| {
            let Some(alias) = l.alias.as_deref().filter(|a| a.starts_with(ALIAS_PREFIX)) else { return false };
            match keep.get(&l.name) {
                None => true,
                Some(network) => alias != alias_of(network) || outdated(l, want, have),
            }
        })
        .collect();
    let (bridges, ports): (Vec<&Link>, Vec<&Link>) = stale.iter().partition(|l| l.kind.as_deref() == Some("bridge"));
    for l in ports.into_iter().chain(bridges) {
        steps.push(Step::Delete { name: l.name.clone(), index: l.index });
    }
    let gone: BTreeSet<&str> = stale.iter().map(|l| l.name.as_str()).collect();
    let mut left = have.clone();
    left.links.retain(|l| !gone.contains(l.name.as_str()));
    left.flood.retain(|dev, _| !gone.contains(dev.as_str()));
    for n in &want.networks {
        let (bridge, port) = devices(n);
        let s = match plan_one(n, &bridge, port.as_deref(), want, &left, &mut steps) {
            Ok(mtu) => Status::Ready { mtu },
            Err(s) => s,
        };
        status.insert(n.name.clone(), s);
    }
    (steps, status)
}

/// Whether a device kvmesh made for a network no longer matches it: a
/// VXLAN device with another VNI or local address, a VLAN device with
/// another id or uplink. It is made again.
fn outdated(l: &Link, want: &Wanted, have: &Observed) -> bool {
    let Some(network) = want.networks.iter().find(|n| devices(n).1.as_deref() == Some(l.name.as_str())) else {
        return false;
    };
    match &network.kind {
        NetworkKind::Vxlan { vni } => l.vni != Some(*vni) || l.vxlan_local.is_some_and(|ip| ip != want.local),
        NetworkKind::Vlan { uplink, vlan } => {
            let parent = have.link(uplink).map(|u| u.index);
            l.vlan.is_some_and(|v| v != *vlan) || (l.parent.is_some() && l.parent != parent)
        }
        _ => false,
    }
}

/// Plans one network; its MTU here, or why it is not ready.
fn plan_one(
    n: &Network,
    bridge: &str,
    port: Option<&str>,
    want: &Wanted,
    have: &Observed,
    steps: &mut Vec<Step>,
) -> Result<u32, Status> {
    let alias = alias_of(&n.name);
    let ours = |l: &Link| l.alias.as_deref() == Some(alias.as_str());
    // A device by that name that kvmesh did not make for this network is
    // someone else's: leave it alone and say so. One of kvmesh's own naming
    // (kvb/kvx/kvl and this network's hash) without any alias was made by
    // a daemon that died before marking it: it is marked now.
    let mut adopt: Vec<String> = Vec::new();
    let mut foreign = |name: &str| {
        let l = have.link(name).filter(|l| !ours(l))?;
        let kvmesh_named = ["kvb", "kvx", "kvl"].iter().any(|p| device_name(p, &n.name) == name);
        if kvmesh_named && l.alias.is_none() {
            adopt.push(name.to_string());
            return None;
        }
        Some(Status::Error(format!(
            "a device named {name} exists that kvmesh did not make for {}; not touching it",
            n.name
        )))
    };
    let mtu = match &n.kind {
        NetworkKind::Bridge { bridge } => {
            let Some(l) = have.link(bridge) else {
                return Err(Status::Error(format!("bridge {bridge} does not exist on this host")));
            };
            if l.kind.as_deref() != Some("bridge") {
                return Err(Status::Error(format!("{bridge} is not a bridge on this host")));
            }
            return match n.mtu {
                Some(m) if m > l.mtu => Err(Status::Error(format!("MTU {m} is more than bridge {bridge}'s {}", l.mtu))),
                Some(m) => Ok(m),
                None => Ok(l.mtu),
            };
        }
        NetworkKind::Isolated => n.mtu.unwrap_or(1500),
        NetworkKind::Vxlan { .. } => {
            if want.local.is_loopback() || want.local.is_unspecified() {
                return Err(Status::Error(format!(
                    "VXLAN needs this host's address to be one the other hosts reach; it is {} (serve --advertise)",
                    want.local
                )));
            }
            if let Some(peer) = want.unreachable_peers.first() {
                return Err(Status::Error(format!("cannot reach every member over VXLAN: {peer}")));
            }
            let Some(underlay) = have.links.iter().find(|l| l.addresses.contains(&want.local)) else {
                return Err(Status::Error(format!("no device on this host has its address {}", want.local)));
            };
            let most = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
            match n.mtu {
                Some(m) if m > most => {
                    return Err(Status::Error(format!(
                        "MTU {m} is too big for the underlay: {} has MTU {} and VXLAN takes {VXLAN_OVERHEAD} bytes, so at most {most}",
                        underlay.name, underlay.mtu
                    )))
                }
                Some(m) => m,
                None => most,
            }
        }
        NetworkKind::Vlan { uplink, .. } => {
            let Some(up) = have.link(uplink) else {
                return Err(Status::Error(format!("uplink {uplink} does not exist on this host")));
            };
            if let Some(why) = &have.vlan_unsupported {
                return Err(Status::Unsupported(why.clone()));
            }
            match n.mtu {
                Some(m) if m > up.mtu => {
                    return Err(Status::Error(format!("MTU {m} is more than uplink {uplink}'s {}", up.mtu)))
                }
                Some(m) => m,
                None => up.mtu,
            }
        }
    };
    let foreign_bridge = foreign(bridge);
    if let Some(e) = foreign_bridge.or_else(|| port.and_then(&mut foreign)) {
        return Err(e);
    }
    for name in adopt {
        steps.push(Step::Mark { name, network: n.name.clone() });
    }
    match have.link(bridge) {
        None => steps.push(Step::AddBridge { name: bridge.into(), network: n.name.clone(), mtu }),
        Some(l) if !l.up => steps.push(Step::SetUp { name: bridge.into(), mtu }),
        Some(_) => {}
    }
    let Some(port) = port else { return Ok(mtu) };
    let existing = have.link(port);
    let made_before = steps.len();
    match (&n.kind, existing) {
        (NetworkKind::Vxlan { vni }, None) => {
            steps.push(Step::AddVxlan { name: port.into(), network: n.name.clone(), vni: *vni, local: want.local, mtu })
        }
        (NetworkKind::Vlan { uplink, vlan }, None) => {
            let uplink = have.link(uplink).map(|l| l.index).unwrap_or_default();
            steps.push(Step::AddVlan { name: port.into(), network: n.name.clone(), uplink, vlan: *vlan, mtu })
        }
        _ => {}
    }
    // Made in this pass: attached and given its flood list afresh.
    let fresh = steps.len() > made_before;
    let bridge_index = have.link(bridge).map(|l| l.index);
    let attached = existing.is_some_and(|l| l.master.is_some() && l.master == bridge_index && l.up && l.mtu == mtu);
    if fresh || !attached {
        steps.push(Step::Attach { device: port.into(), bridge: bridge.into(), mtu });
    }
    if let NetworkKind::Vxlan { .. } = n.kind {
        let now = if fresh { BTreeSet::new() } else { have.flood.get(port).cloned().unwrap_or_default() };
        for remote in want.peers.difference(&now) {
            steps.push(Step::FloodAdd { device: port.into(), remote: *remote });
        }
        for remote in now.difference(&want.peers) {
            steps.push(Step::FloodDel { device: port.into(), remote: *remote });
        }
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests;
