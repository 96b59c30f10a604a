//! The storage rules of `apply`: domains, images, disks, volumes recorded
//! once, HA only on shared storage, the trash.

use super::tests::{initialized, node, vm};
use super::*;
use crate::model::Desired;
use crate::storage::{ImageKind, StorageKind, Volume};

fn domain(name: &str, kind: StorageKind) -> Command {
    Command::AddStorage {
        domain: StorageDomain { id: 0, name: name.into(), kind, nodes: Default::default(), created_at_ms: 0 },
        at_ms: 2,
    }
}

fn shared() -> StorageKind {
    StorageKind::SharedDir { path: "/mnt/shared".into() }
}

/// A 1 GiB qcow2 disk image on the shared domain.
fn disk_image(id: u64, name: &str) -> Image {
    Image {
        id,
        name: name.into(),
        storage: "shared".into(),
        kind: ImageKind::Disk,
        format: "qcow2".into(),
        virtual_bytes: 1 << 30,
        file_bytes: 1000,
        sha256: String::new(),
        volume: format!("image-{id}.qcow2"),
        host: None,
        created_at_ms: 4,
    }
}

fn disk(index: u32, storage: &str) -> Disk {
    Disk { index, size_bytes: 1 << 30, storage: storage.into(), image: None, volume: None }
}

/// Two hosts, a shared domain, and `web` placed on host 1 with a local
/// disk and a shared one.
fn two_hosts() -> ClusterState {
    let mut s = initialized();
    assert_eq!(s.apply(&Command::AddNode { node: node(2, "b", "127.0.0.1:2"), at_ms: 1 }), Response::Done);
    assert_eq!(s.apply(&domain("shared", shared())), Response::Done);
    let mut web = vm(10, "web", Some(1), 256);
    web.spec.disks = vec![disk(0, "local"), disk(1, "shared")];
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(web), at_ms: 3 }), Response::Vm(_)));
    s
}

#[test]
fn every_cluster_starts_with_each_hosts_own_local_domain() {
    let s = initialized();
    let local = s.storage_by_name("local").expect("local domain");
    assert_eq!(local.kind, StorageKind::Local { path: None });
    assert!(!local.kind.is_shared());
}

#[test]
fn domain_names_are_unique_and_their_hosts_must_exist() {
    let mut s = two_hosts();
    assert_eq!(
        s.apply(&domain("shared", shared())),
        Response::Refused(Refusal::StorageNameTaken { name: "shared".into() })
    );
    let mut only =
        StorageDomain { id: 0, name: "x".into(), kind: shared(), nodes: Default::default(), created_at_ms: 0 };
    only.nodes.insert("nobody".into());
    assert!(matches!(
        s.apply(&Command::AddStorage { domain: only, at_ms: 3 }),
        Response::Refused(Refusal::StorageChange { .. })
    ));
    // Ids are drawn from the state, so every replica draws the same.
    let (a, b) = (s.storage_by_name("local").unwrap().id, s.storage_by_name("shared").unwrap().id);
    assert_ne!(a, b);
}

#[test]
fn a_vm_names_only_storage_and_images_that_exist_as_their_kind() {
    let mut s = two_hosts();
    let mut bad = vm(11, "bad", Some(1), 256);
    bad.spec.disks = vec![disk(0, "nowhere")];
    assert_eq!(
        s.apply(&Command::CreateVm { vm: Box::new(bad.clone()), at_ms: 4 }),
        Response::Refused(Refusal::UnknownStorage { name: "nowhere".into() })
    );
    bad.spec.disks = vec![];
    bad.spec.kernel = Some("vmlinuz".into());
    assert_eq!(
        s.apply(&Command::CreateVm { vm: Box::new(bad.clone()), at_ms: 4 }),
        Response::Refused(Refusal::UnknownImage { name: "vmlinuz".into() })
    );
    assert_eq!(s.apply(&Command::AddImage { image: disk_image(77, "vmlinuz"), at_ms: 4 }), Response::Done);
    assert!(matches!(
        s.apply(&Command::CreateVm { vm: Box::new(bad), at_ms: 4 }),
        Response::Refused(Refusal::ImageWrongKind { .. })
    ));
}

#[test]
fn ha_is_refused_for_data_only_one_host_reaches() {
    let mut s = two_hosts();
    let mut ha = vm(12, "ha", Some(2), 256);
    ha.spec.ha = true;
    ha.spec.disks = vec![disk(0, "shared"), disk(1, "local")];
    let r = s.apply(&Command::CreateVm { vm: Box::new(ha.clone()), at_ms: 4 });
    assert_eq!(r, Response::Refused(Refusal::HaNeedsSharedStorage { what: "disk 1".into(), storage: "local".into() }));
    assert!(r_text(&r).contains("shared domain"), "{}", r_text(&r));
    ha.spec.disks.pop();
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(ha), at_ms: 4 }), Response::Vm(_)));
}

fn r_text(r: &Response) -> String {
    match r {
        Response::Refused(r) => r.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_volume_is_recorded_once_by_the_current_host_and_a_local_one_pins_the_vm() {
    let mut s = two_hosts();
    let record = |node, epoch, index| Command::RecordVolume { vm: 10, index, node, epoch, at_ms: 5 };
    assert_eq!(s.apply(&record(2, 1, 0)), Response::Refused(Refusal::StaleReport), "not its host");
    assert_eq!(s.apply(&record(1, 0, 0)), Response::Refused(Refusal::StaleReport), "an old epoch");
    assert_eq!(s.apply(&record(1, 1, 0)), Response::Done);
    assert_eq!(s.apply(&record(1, 1, 1)), Response::Done);
    let web = s.vm_by_name("web").unwrap().clone();
    assert_eq!(web.spec.disks[0].volume, Some(Volume { host: Some(1), created_at_ms: 5 }));
    assert_eq!(web.spec.disks[1].volume, Some(Volume { host: None, created_at_ms: 5 }), "shared: no host");
    // Recorded again (a retried report): nothing changes.
    assert_eq!(s.apply(&record(1, 1, 0)), Response::Done);
    assert_eq!(s.vm_by_name("web").unwrap().spec.disks[0].volume.unwrap().created_at_ms, 5);
    // The local volume lives on host a: the VM can go nowhere else.
    let req = s.request_for(&web);
    assert_eq!(req.volumes_on.as_deref(), Some("a"));
    assert_eq!(req.storage, vec!["local".to_string(), "shared".to_string()]);
    match s.check_placement(2, &req) {
        Err(Refusal::NoLongerFits { reason: kvmesh_scheduler::Rejection::LocalVolumes { host }, .. }) => {
            assert_eq!(host, "a")
        }
        other => panic!("expected a local-volume rejection, got {other:?}"),
    }
}

#[test]
fn a_deleted_vms_volumes_go_to_the_trash_until_a_host_deletes_them() {
    let mut s = two_hosts();
    s.apply(&Command::RecordVolume { vm: 10, index: 0, node: 1, epoch: 1, at_ms: 5 });
    assert!(matches!(
        s.apply(&Command::RemoveStorage { name: "shared".into(), at_ms: 6 }),
        Response::Refused(Refusal::StorageInUse { .. })
    ));
    s.apply(&Command::DeleteVm { name: "web".into(), keep_disks: false, at_ms: 6 });
    assert!(s.meta.trash.is_empty(), "the host removes the domain first");
    s.apply(&Command::ReportVm {
        vm: 10,
        node: 1,
        epoch: 1,
        state: crate::model::VmState::Deleted,
        error: None,
        spec_gen: 0,
        at_ms: 7,
    });
    let trash = s.meta.trash.clone();
    assert_eq!(
        trash,
        vec![
            Trashed { storage: "local".into(), volume: "000000000000000a-disk0.qcow2".into(), host: Some(1) },
            Trashed { storage: "shared".into(), volume: "000000000000000a-disk1.qcow2".into(), host: None },
        ]
    );
    s.apply(&Command::VolumesDeleted { volumes: trash[..1].to_vec() });
    assert_eq!(s.meta.trash, trash[1..].to_vec());
    s.apply(&Command::VolumesDeleted { volumes: trash[1..].to_vec() });
    assert!(s.meta.trash.is_empty());
    assert_eq!(s.apply(&Command::RemoveStorage { name: "shared".into(), at_ms: 8 }), Response::Done);
}

#[test]
fn disks_grow_live_are_removed_only_stopped_and_never_reuse_a_trashed_name() {
    let mut s = two_hosts();
    let add =
        |size| Command::AddDisk { name: "web".into(), disk: Disk { size_bytes: size, ..disk(0, "shared") }, at_ms: 5 };
    // Added to the running VM: its host attaches it live.
    let Response::Vm(vm) = s.apply(&add(1 << 30)) else { panic!("add refused") };
    assert_eq!(vm.spec.disks.last().unwrap().index, 2);
    let shrink = Command::ResizeDisk { name: "web".into(), index: 2, size_bytes: 1 << 20, at_ms: 6 };
    assert!(r_text(&s.apply(&shrink)).contains("only grow"));
    let grow = Command::ResizeDisk { name: "web".into(), index: 2, size_bytes: 2 << 30, at_ms: 6 };
    assert!(matches!(s.apply(&grow), Response::Vm(_)), "grown live");
    let remove = Command::RemoveDisk { name: "web".into(), index: 2, at_ms: 7 };
    assert!(r_text(&s.apply(&remove)).contains("stopped"), "no hot-unplug");
    s.apply(&Command::SetDesired { name: "web".into(), desired: Desired::Stopped, force: false, at_ms: 7 });
    assert!(matches!(s.apply(&remove), Response::Vm(_)));
    // Disk 2's volume may still wait in the trash (or a host behind on it):
    // the next disk is 3, not 2 again, also once the trash is empty.
    s.apply(&Command::VolumesDeleted { volumes: s.meta.trash.clone() });
    let Response::Vm(vm) = s.apply(&add(1 << 30)) else { panic!("add refused") };
    assert_eq!(vm.spec.disks.last().unwrap().index, 3);
}

#[test]
fn snapshots_are_named_once_and_reverted_only_if_they_exist() {
    let mut s = two_hosts();
    let snap = |op| Command::Snapshot { name: "web".into(), snapshot: "s1".into(), op, at_ms: 5 };
    assert!(r_text(&s.apply(&snap(SnapshotOp::Create))).contains("stopped"));
    s.apply(&Command::SetDesired { name: "web".into(), desired: Desired::Stopped, force: false, at_ms: 5 });
    assert!(r_text(&s.apply(&snap(SnapshotOp::Revert))).contains("no snapshot named"));
    assert!(matches!(s.apply(&snap(SnapshotOp::Create)), Response::Vm(_)));
    assert!(r_text(&s.apply(&snap(SnapshotOp::Create))).contains("already has"));
    assert!(matches!(s.apply(&snap(SnapshotOp::Revert)), Response::Vm(_)));
    assert!(matches!(s.apply(&snap(SnapshotOp::Delete)), Response::Vm(_)));
    assert!(s.vm_by_name("web").unwrap().snapshots.is_empty());
}

#[test]
fn an_image_in_use_is_not_deleted() {
    let mut s = two_hosts();
    s.apply(&Command::AddImage { image: disk_image(78, "base"), at_ms: 4 });
    let mut clone = vm(13, "clone", Some(2), 256);
    clone.spec.disks = vec![Disk { image: Some("base".into()), ..disk(0, "") }];
    s.complete_disks(&mut clone.spec).unwrap();
    assert_eq!(clone.spec.disks[0].storage, "shared", "a clone lives on its image's domain");
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(clone), at_ms: 5 }), Response::Vm(_)));
    let r = s.apply(&Command::DeleteImage { name: "base".into(), at_ms: 6 });
    assert_eq!(r, Response::Refused(Refusal::ImageInUse { name: "base".into(), by: "clone".into() }));
}

#[test]
fn a_drain_refuses_running_vms_with_local_disks_and_keeps_stopped_ones_on_their_host() {
    let mut s = two_hosts();
    s.apply(&Command::RecordVolume { vm: 10, index: 0, node: 1, epoch: 1, at_ms: 5 });
    let drain = Command::SetNodeState { id: 1, state: NodeState::Draining, at_ms: 6 };
    let r = s.apply(&drain);
    assert!(matches!(&r, Response::Refused(Refusal::LocalDisksRunning { vms, .. }) if vms == "web"), "{r:?}");
    assert_eq!(s.nodes[&1].state, NodeState::Up, "a refused drain changes nothing");
    s.apply(&Command::SetDesired { name: "web".into(), desired: Desired::Stopped, force: false, at_ms: 6 });
    assert_eq!(s.apply(&drain), Response::Done);
    let web = s.vm_by_name("web").unwrap();
    assert_eq!(web.placement.map(|p| p.node), Some(1), "it stays with its disk");
    assert_eq!(web.moving_from, None);
    let start = Command::SetDesired { name: "web".into(), desired: Desired::Running, force: false, at_ms: 7 };
    assert!(matches!(s.apply(&start), Response::Refused(Refusal::HostInMaintenance { .. })));
    s.apply(&Command::SetNodeState { id: 1, state: NodeState::Up, at_ms: 8 });
    assert!(matches!(s.apply(&start), Response::Vm(_)));
}

#[test]
fn a_volume_on_a_host_that_left_is_not_trashed_forever() {
    let mut s = two_hosts();
    s.apply(&Command::RecordVolume { vm: 10, index: 0, node: 1, epoch: 1, at_ms: 5 });
    s.apply(&Command::RemoveNode { id: 1, force: true, at_ms: 6 });
    s.apply(&Command::DeleteVm { name: "web".into(), keep_disks: false, at_ms: 7 });
    assert!(s.vm_by_name("web").is_none());
    // Its local volume left with host 1; the shared one waits for any host.
    assert_eq!(s.meta.trash.iter().map(|t| t.storage.as_str()).collect::<Vec<_>>(), vec!["shared"]);
    s.apply(&Command::VolumesDeleted { volumes: s.meta.trash.clone() });
    assert_eq!(s.apply(&Command::RemoveStorage { name: "shared".into(), at_ms: 8 }), Response::Done);
}
