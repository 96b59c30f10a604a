//! The JSON shape of every object kvmesh shows: one typed view per object,
//! built from its gRPC message. The CLI's `-o json` and the REST API both
//! serialize these, so the two never drift apart, and the OpenAPI document
//! describes them from the same types (`utoipa::ToSchema`), never by hand.
//!
//! Maps are `BTreeMap`s so that the same object always serializes to the
//! same bytes: REST's ETags are hashes of these bytes.

mod cluster;
mod resources;
mod vm;

#[cfg(test)]
pub use cluster::node_of;
pub use cluster::subject;
pub use cluster::{
    Balance, BalanceMove, Capacity, Event, Explanation, HostCapacity, Member, Node, NodeAction, NodeEvaluation,
    NodeNetwork, NodeStorage, Policy, Status, Subject,
};
pub use resources::{HostNetwork, HostStorage, Image, Network, StorageDomain, Token, TokenCreated};
pub use vm::{CloudInit, Disk, Guest, GuestInterface, Hardware, MigrationProgress, Nic, Snapshot, Vm};

use std::collections::{BTreeMap, HashMap};

/// A message's map, in a stable order.
fn sorted(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A view as a JSON value (what `-o json` prints).
pub fn json<T: serde::Serialize>(view: T) -> serde_json::Value {
    serde_json::to_value(view).expect("views serialize")
}

/// Every view, for the OpenAPI document's components.
pub fn schemas() -> Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)> {
    use utoipa::ToSchema;
    let mut all = Vec::new();
    macro_rules! add {
        ($($t:ty),* $(,)?) => {$(
            all.push((<$t>::name().into_owned(), <$t as utoipa::PartialSchema>::schema()));
            <$t>::schemas(&mut all);
        )*};
    }
    add!(
        Status,
        Member,
        Node,
        NodeStorage,
        NodeNetwork,
        NodeAction,
        Event,
        Subject,
        Policy,
        Capacity,
        HostCapacity,
        Balance,
        BalanceMove,
        Explanation,
        NodeEvaluation,
        Vm,
        Disk,
        Nic,
        Snapshot,
        MigrationProgress,
        Hardware,
        Guest,
        GuestInterface,
        CloudInit,
        StorageDomain,
        HostStorage,
        Image,
        Network,
        HostNetwork,
        Token,
        TokenCreated,
    );
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.dedup_by(|a, b| a.0 == b.0);
    all
}
