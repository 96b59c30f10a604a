//! The kernel side of networks, over rtnetlink: read the host's links, their
//! addresses and the VXLAN flood entries ([`observe`]), and carry out one
//! planned [`Step`] ([`apply`]). No decisions here; `plan` makes them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVlan, LinkVxlan};

use super::plan::{alias_of, Link, Observed, Step};
use kvmesh_raft::networks::VXLAN_PORT;

/// EOPNOTSUPP: the kernel has no driver for the link kind asked for.
const EOPNOTSUPP: i32 = 95;

/// A failed step: its message, and whether the kernel lacks the feature.
#[derive(Debug)]
pub struct StepError {
    pub message: String,
    pub unsupported: bool,
}

fn step_error(what: &str, e: rtnetlink::Error) -> StepError {
    let unsupported = matches!(&e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == EOPNOTSUPP);
    StepError { message: format!("{what}: {e}"), unsupported }
}

/// Every link with what `plan` needs of it.
pub async fn observe(handle: &Handle) -> Result<Observed, String> {
    let mut links: Vec<Link> = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(|e| format!("listing links: {e}"))? {
        let mut l =
            Link { index: msg.header.index, up: msg.header.flags.contains(LinkFlags::Up), ..Default::default() };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                LinkAttribute::Controller(m) if *m != 0 => l.master = Some(*m),
                LinkAttribute::Mtu(m) => l.mtu = *m,
                LinkAttribute::Link(parent) => l.parent = Some(*parent),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                for x in v {
                                    match x {
                                        InfoVxlan::Id(id) => l.vni = Some(*id),
                                        InfoVxlan::Local(ip) => l.vxlan_local = Some(*ip),
                                        _ => {}
                                    }
                                }
                            }
                            LinkInfo::Data(InfoData::Vlan(v)) => {
                                l.vlan = v.iter().find_map(|x| if let InfoVlan::Id(id) = x { Some(*id) } else { None })
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        links.push(l);
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(|e| format!("listing addresses: {e}"))? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let (Some(ip), Some(l)) = (ip, links.iter_mut().find(|l| l.index == msg.header.index)) {
            if !l.addresses.contains(&ip) {
                l.addresses.push(ip);
            }
        }
    }
    let names: BTreeMap<u32, String> =
        links.iter().filter(|l| l.kind.as_deref() == Some("vxlan")).map(|l| (l.index, l.name.clone())).collect();
    let mut flood: BTreeMap<String, _> = BTreeMap::new();
    let mut get = handle.neighbours().get();
    get.message_mut().header.family = AddressFamily::Bridge;
    let mut fdb = get.execute();
    while let Some(msg) = fdb.try_next().await.map_err(|e| format!("listing forwarding entries: {e}"))? {
        let Some(dev) = names.get(&msg.header.ifindex) else { continue };
        let zero = msg
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::LinkLocalAddress(m) if m.iter().all(|b| *b == 0)));
        let dst = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(ip.to_owned()),
            // In a bridge-family dump the remote comes as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            _ => None,
        });
        if let (true, Some(dst)) = (zero, dst) {
            flood.entry(dev.clone()).or_insert_with(std::collections::BTreeSet::new).insert(dst);
        }
    }
    Ok(Observed { links, flood, vlan_unsupported: None })
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, StepError> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(StepError { message: format!("{name} vanished"), unsupported: false }),
        Err(e) => Err(step_error(&format!("finding {name}"), e)),
    }
}

/// Marks a device kvmesh just made as its own, and brings it up.
async fn mark(handle: &Handle, name: &str, network: &str) -> Result<(), StepError> {
    let index = index_of(handle, name).await?;
    let msg = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::IfAlias(alias_of(network)))
        .up()
        .build();
    handle.link().set(msg).execute().await.map_err(|e| step_error(&format!("marking {name}"), e))
}

/// Carries out one step.
pub async fn apply(handle: &Handle, step: &Step) -> Result<(), StepError> {
    match step {
        Step::AddBridge { name, network, mtu } => {
            let msg = LinkBridge::new(name).mtu(*mtu).build();
            handle.link().add(msg).execute().await.map_err(|e| step_error(&format!("making bridge {name}"), e))?;
            mark(handle, name, network).await
        }
        Step::AddVxlan { name, network, vni, local, mtu } => {
            let msg = LinkVxlan::new(name, *vni).local(*local).port(VXLAN_PORT).learning(false).mtu(*mtu).build();
            handle.link().add(msg).execute().await.map_err(|e| step_error(&format!("making VXLAN {name}"), e))?;
            mark(handle, name, network).await
        }
        Step::AddVlan { name, network, uplink, vlan, mtu } => {
            let msg = LinkVlan::new(name, *uplink, *vlan).mtu(*mtu).build();
            handle.link().add(msg).execute().await.map_err(|e| step_error(&format!("making VLAN device {name}"), e))?;
            mark(handle, name, network).await
        }
        Step::Attach { device, bridge, mtu } => {
            let (dev, br) = (index_of(handle, device).await?, index_of(handle, bridge).await?);
            let msg = LinkUnspec::new_with_index(dev).controller(br).mtu(*mtu).up().build();
            handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| step_error(&format!("attaching {device} to {bridge}"), e))
        }
        Step::SetUp { name, .. } => {
            let index = index_of(handle, name).await?;
            let msg = LinkUnspec::new_with_index(index).up().build();
            handle.link().set(msg).execute().await.map_err(|e| step_error(&format!("bringing {name} up"), e))
        }
        Step::FloodAdd { device, remote } => flood(handle, device, *remote, true).await,
        Step::FloodDel { device, remote } => flood(handle, device, *remote, false).await,
        Step::Mark { name, network } => mark(handle, name, network).await,
        Step::Delete { name, index } => {
            handle.link().del(*index).execute().await.map_err(|e| step_error(&format!("deleting {name}"), e))
        }
    }
}

/// Adds or removes the all-zero forwarding entry that sends the VXLAN
/// device's broadcast, unknown and multicast traffic to `remote` (as
/// `bridge fdb append 00:00:00:00:00:00 dev DEV dst REMOTE` does): one per
/// peer host, so no multicast underlay is needed.
async fn flood(handle: &Handle, device: &str, remote: Ipv4Addr, add: bool) -> Result<(), StepError> {
    let index = index_of(handle, device).await?;
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes.push(NeighbourAttribute::LinkLocalAddress(vec![0; 6]));
    msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(remote)));
    let what = format!("{} flood entry to {remote} on {device}", if add { "adding" } else { "removing" });
    if !add {
        return handle.neighbours().del(msg).execute().await.map_err(|e| step_error(&what, e));
    }
    // NLM_F_APPEND: one more remote for the same all-zero address.
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
    let mut handle = handle.clone();
    let mut response = handle.request(req).map_err(|e| step_error(&what, e))?;
    while let Some(m) = futures::StreamExt::next(&mut response).await {
        if let NetlinkPayload::Error(err) = m.payload {
            return Err(step_error(&what, rtnetlink::Error::NetlinkError(err)));
        }
    }
    Ok(())
}
