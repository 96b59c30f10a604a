//! Cluster-wide commands: the first entry and the placement policy.

use super::{Refusal, Response};
use crate::model::{ClusterState, Key, Node, PlacementSettings, Settings};
use crate::storage::{StorageDomain, StorageKind, DEFAULT_STORAGE};

impl ClusterState {
    pub(super) fn init(&mut self, cluster_id: &str, settings: &Settings, node: &Node, at_ms: u64) -> Response {
        if let Some(existing) = &self.meta.cluster_id {
            return Response::Refused(Refusal::AlreadyInitialized { cluster_id: existing.clone() });
        }
        self.meta.cluster_id = Some(cluster_id.to_string());
        self.meta.settings = settings.clone();
        self.dirty.insert(Key::Meta);
        self.put_node(node.clone());
        self.push_event(at_ms, "cluster", format!("cluster {cluster_id} initialized on {}", node.name));
        // Every cluster starts with each host's own directory, so disks work
        // before any storage is configured (pinned to their host).
        let local = StorageDomain {
            id: 0,
            name: DEFAULT_STORAGE.into(),
            kind: StorageKind::Local { path: None },
            nodes: Default::default(),
            created_at_ms: at_ms,
        };
        self.add_storage(&local, at_ms);
        Response::Done
    }

    pub(super) fn set_placement(&mut self, placement: &PlacementSettings, at_ms: u64) -> Response {
        let before = self.meta.settings.placement;
        self.meta.settings.placement = *placement;
        self.dirty.insert(Key::Meta);
        self.push_event(
            at_ms,
            "cluster",
            format!(
                "placement policy {} (cpu overcommit {}, memory overcommit {}; was {})",
                placement.policy.as_str(),
                placement.cpu_overcommit(),
                placement.memory_overcommit(),
                before.policy.as_str()
            ),
        );
        Response::Done
    }
}
