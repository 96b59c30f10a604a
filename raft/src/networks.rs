//! Logical networks and NICs as cluster objects.
//!
//! A network is defined once (`kvmesh network add`) and realized by every
//! host's agent (`node/src/netconf/`). Its checks that need no host live
//! here, so the API and `apply` refuse the same things; what only a host can
//! tell (an uplink that is missing there, an MTU its underlay cannot carry)
//! is that host's status, not a refusal. MAC addresses are drawn by `apply`
//! from a per-cluster sequence, so every replica agrees on them and a VM keeps
//! its MACs wherever it restarts or moves.

use std::fmt;

use serde::{Deserialize, Serialize};

/// VXLAN (outer IPv4 + UDP + VXLAN headers) takes this much of the
/// underlay's MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The UDP port VXLAN uses (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// The NIC model when none is given.
pub const DEFAULT_NIC_MODEL: &str = "virtio";
const NIC_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "rtl8139"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkKind {
    /// A bridge the operator made on every host.
    Bridge { bridge: String },
    /// `UPLINK.VLAN` plus a bridge, made by kvmesh.
    Vlan { uplink: String, vlan: u16 },
    /// A VXLAN device over the hosts' own addresses plus a bridge.
    Vxlan { vni: u32 },
    /// A bridge on each host, connected to nothing else.
    Isolated,
}

impl NetworkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetworkKind::Bridge { .. } => "bridge",
            NetworkKind::Vlan { .. } => "vlan",
            NetworkKind::Vxlan { .. } => "vxlan",
            NetworkKind::Isolated => "isolated",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub kind: NetworkKind,
    /// Every host must have it: a host where it is not ready takes no new VMs.
    pub required: bool,
    /// The guests' MTU; `None`: the underlay's (less VXLAN's overhead).
    pub mtu: Option<u32>,
    pub created_at_ms: u64,
}

impl Network {
    /// What is wrong with a definition, before any host sees it.
    pub fn validate(&self) -> Result<(), String> {
        match &self.kind {
            NetworkKind::Bridge { bridge } => valid_ifname(bridge, "--bridge")?,
            NetworkKind::Vlan { uplink, vlan } => {
                valid_ifname(uplink, "--uplink")?;
                if !(1..=4094).contains(vlan) {
                    return Err(format!("VLAN id {vlan} is outside 1-4094"));
                }
            }
            NetworkKind::Vxlan { vni } => {
                if !(1..=0xFF_FFFF).contains(vni) {
                    return Err(format!("VNI {vni} is outside 1-16777215"));
                }
            }
            NetworkKind::Isolated => {}
        }
        if let Some(mtu) = self.mtu {
            if !(576..=9000).contains(&mtu) {
                return Err(format!("MTU {mtu} is outside 576-9000"));
            }
        }
        Ok(())
    }

    /// The bridge guests' NICs attach to on every host.
    pub fn bridge(&self) -> String {
        match &self.kind {
            NetworkKind::Bridge { bridge } => bridge.clone(),
            _ => device_name("kvb", &self.name),
        }
    }

    /// What another network's definition collides with in this one: the
    /// same VNI, the same VLAN on the same uplink.
    pub fn clashes_with(&self, other: &Network) -> Option<String> {
        match (&self.kind, &other.kind) {
            (NetworkKind::Vxlan { vni: a }, NetworkKind::Vxlan { vni: b }) if a == b => {
                Some(format!("network {:?} already uses VNI {a}", other.name))
            }
            (NetworkKind::Vlan { uplink: u1, vlan: v1 }, NetworkKind::Vlan { uplink: u2, vlan: v2 })
                if u1 == u2 && v1 == v2 =>
            {
                Some(format!("network {:?} already uses VLAN {v1} on {u1}", other.name))
            }
            _ => None,
        }
    }
}

/// A stable interface name of at most 15 bytes (the kernel's limit) for a
/// device kvmesh makes for `network`: a prefix and a hash of the name.
pub fn device_name(prefix: &str, network: &str) -> String {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    format!("{prefix}{:08x}", crate::view::fnv1a(network.as_bytes()) as u32)
}

fn valid_ifname(name: &str, flag: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{flag} {name:?} is not an interface name (1-15 letters, digits, '-', '_', '.')"))
    }
}

/// A MAC address; all zeros in a request means "allocate one".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn is_unset(&self) -> bool {
        self.0 == [0; 6]
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The `seq`th MAC of a cluster: locally administered, unicast
    /// (`0a` first), one byte from the cluster id, so two kvmesh clusters
    /// on one segment rarely draw the same, and 2^32 per cluster.
    pub fn allocated(cluster_id: &str, seq: u64) -> Mac {
        let c = cluster_id.bytes().fold(0u8, |h, b| h.rotate_left(3) ^ b);
        let s = (seq as u32).to_be_bytes();
        Mac([0x0a, c, s[0], s[1], s[2], s[3]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bad = || format!("{s:?} is not a MAC address (six hex pairs, like 0a:12:34:56:78:9a)");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        let mac = Mac(out);
        if mac.is_multicast() {
            return Err(format!("{s} is a multicast address; a NIC needs a unicast one (even first byte)"));
        }
        if mac.is_unset() {
            return Err(format!("{s} is not a usable MAC address"));
        }
        Ok(mac)
    }
}

/// One NIC of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub network: String,
    pub mac: Mac,
    pub model: String,
}

impl Nic {
    pub fn validate(&self) -> Result<(), String> {
        if !NIC_MODELS.contains(&self.model.as_str()) {
            return Err(format!("NIC model {:?} is not one of {}", self.model, NIC_MODELS.join(", ")));
        }
        if self.mac.is_multicast() {
            return Err(format!("{} is a multicast address; a NIC needs a unicast one", self.mac));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(kind: NetworkKind) -> Network {
        Network { name: "n".into(), kind, required: false, mtu: None, created_at_ms: 0 }
    }

    #[test]
    fn definitions_are_checked_before_any_host_sees_them() {
        assert!(net(NetworkKind::Vlan { uplink: "eth0".into(), vlan: 0 }).validate().unwrap_err().contains("1-4094"));
        assert!(net(NetworkKind::Vlan { uplink: "eth0".into(), vlan: 4095 }).validate().is_err());
        assert!(net(NetworkKind::Vlan { uplink: "eth0".into(), vlan: 4094 }).validate().is_ok());
        assert!(net(NetworkKind::Vxlan { vni: 1 << 24 }).validate().is_err());
        assert!(net(NetworkKind::Bridge { bridge: "a-name-far-too-long".into() }).validate().is_err());
        assert!(net(NetworkKind::Bridge { bridge: "br0;rm".into() }).validate().is_err());
        let mut n = net(NetworkKind::Isolated);
        n.mtu = Some(65000);
        assert!(n.validate().unwrap_err().contains("MTU"));
    }

    #[test]
    fn device_names_are_stable_short_and_distinct() {
        let a = device_name("kvb", "blue");
        assert_eq!(a, device_name("kvb", "blue"));
        assert_ne!(a, device_name("kvb", "green"));
        assert!(a.len() <= 15);
        assert_eq!(net(NetworkKind::Bridge { bridge: "br0".into() }).bridge(), "br0");
    }

    #[test]
    fn macs_parse_print_and_allocate_unicast_local_addresses() {
        let m: Mac = "0A:12:34:56:78:9a".parse().unwrap();
        assert_eq!(m.to_string(), "0a:12:34:56:78:9a");
        assert!("01:00:5e:00:00:01".parse::<Mac>().unwrap_err().contains("multicast"));
        assert!("0a:12:34".parse::<Mac>().is_err());
        let a = Mac::allocated("c1", 1);
        assert_eq!(a.0[0] & 0b11, 0b10, "locally administered, unicast");
        assert_ne!(a, Mac::allocated("c1", 2));
    }
}
