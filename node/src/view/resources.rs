//! The views of what VMs use: storage domains, images, networks; and the
//! API tokens that let callers in.

use kvmesh_proto as pb;
use serde::Serialize;
use utoipa::ToSchema;

/// A storage domain as one host has it.
#[derive(Serialize, ToSchema)]
pub struct HostStorage {
    pub node: String,
    pub state: String,
    pub message: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StorageDomain {
    pub name: String,
    pub id: String,
    /// local or shared kinds (dir, nfs, …).
    pub kind: String,
    pub location: String,
    pub shared: bool,
    /// The hosts it is on (empty: all).
    pub nodes: Vec<String>,
    pub disks: u32,
    pub images: u32,
    pub pending_deletions: u32,
    pub hosts: Vec<HostStorage>,
}

impl From<&pb::StorageDomainInfo> for StorageDomain {
    fn from(d: &pb::StorageDomainInfo) -> Self {
        StorageDomain {
            name: d.name.clone(),
            id: d.id.clone(),
            kind: d.kind.clone(),
            location: d.location.clone(),
            shared: d.shared,
            nodes: d.nodes.clone(),
            disks: d.disks,
            images: d.images,
            pending_deletions: d.pending_deletions,
            hosts: d
                .hosts
                .iter()
                .map(|h| HostStorage {
                    node: h.node.clone(),
                    state: h.state.clone(),
                    message: h.message.clone(),
                    free_bytes: h.free_bytes,
                    total_bytes: h.total_bytes,
                })
                .collect(),
        }
    }
}

/// An imported image: a disk, an ISO, a kernel or an initrd.
#[derive(Serialize, ToSchema)]
pub struct Image {
    pub name: String,
    pub storage: String,
    /// disk, iso, kernel, initrd.
    pub kind: String,
    pub format: String,
    pub virtual_bytes: u64,
    pub file_bytes: u64,
    pub sha256: String,
    /// The host holding it, on local storage.
    pub host: Option<String>,
    pub created_at_ms: u64,
    /// The VMs using it.
    pub used_by: Vec<String>,
}

impl From<&pb::ImageInfo> for Image {
    fn from(i: &pb::ImageInfo) -> Self {
        Image {
            name: i.name.clone(),
            storage: i.storage.clone(),
            kind: i.kind.clone(),
            format: i.format.clone(),
            virtual_bytes: i.virtual_bytes,
            file_bytes: i.file_bytes,
            sha256: i.sha256.clone(),
            host: i.host.clone(),
            created_at_ms: i.created_at_ms,
            used_by: i.used_by.clone(),
        }
    }
}

/// A network as one host has it.
#[derive(Serialize, ToSchema)]
pub struct HostNetwork {
    pub node: String,
    pub state: String,
    pub message: String,
    pub mtu: u32,
}

#[derive(Serialize, ToSchema)]
pub struct Network {
    pub name: String,
    /// isolated, bridge, vlan, vxlan.
    pub kind: String,
    pub bridge: String,
    pub uplink: Option<String>,
    pub vlan: Option<u32>,
    pub vni: Option<u32>,
    pub mtu: Option<u32>,
    /// A host without it is not up.
    pub required: bool,
    pub nics: u32,
    pub created_at_ms: u64,
    pub hosts: Vec<HostNetwork>,
}

impl From<&pb::NetworkInfo> for Network {
    fn from(n: &pb::NetworkInfo) -> Self {
        Network {
            name: n.name.clone(),
            kind: n.kind.clone(),
            bridge: n.bridge.clone(),
            uplink: n.uplink.clone(),
            vlan: n.vlan,
            vni: n.vni,
            mtu: n.mtu,
            required: n.required,
            nics: n.nics,
            created_at_ms: n.created_at_ms,
            hosts: n
                .hosts
                .iter()
                .map(|h| HostNetwork {
                    node: h.node.clone(),
                    state: h.state.clone(),
                    message: h.message.clone(),
                    mtu: h.mtu,
                })
                .collect(),
        }
    }
}

/// An API token (its secret is shown only when it is made).
#[derive(Serialize, ToSchema)]
pub struct Token {
    pub name: String,
    /// admin, operator, viewer.
    pub role: String,
    pub created_ms: u64,
}

impl From<&pb::TokenInfo> for Token {
    fn from(t: &pb::TokenInfo) -> Self {
        Token { name: t.name.clone(), role: t.role.clone(), created_ms: t.created_ms }
    }
}

/// A new token, its secret shown this once.
#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    pub name: String,
    pub role: String,
    pub token: String,
}
