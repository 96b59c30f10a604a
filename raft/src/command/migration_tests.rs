//! The migration rules of `apply`: what may begin, the epoch and capacity a
//! migration reserves, finish and abort deciding every race, and hosts
//! that go down ending the migrations they take part in.

use super::tests::{initialized, node, vm};
use super::*;
use crate::model::Placement;
use crate::storage::{volume_name, StorageKind, Trashed};

/// Three hosts (a, b, c), a shared domain, and `web` running on a with a
/// shared disk.
fn cluster() -> ClusterState {
    let mut s = initialized();
    for (id, name) in [(2, "b"), (3, "c")] {
        let addr = format!("127.0.0.1:{id}");
        assert_eq!(s.apply(&Command::AddNode { node: node(id, name, &addr), at_ms: 1 }), Response::Done);
    }
    let shared = StorageDomain {
        id: 0,
        name: "shared".into(),
        kind: StorageKind::SharedDir { path: "/mnt/shared".into() },
        nodes: Default::default(),
        created_at_ms: 0,
    };
    assert_eq!(s.apply(&Command::AddStorage { domain: shared, at_ms: 2 }), Response::Done);
    let mut web = vm(10, "web", Some(1), 512);
    web.spec.disks = vec![Disk { index: 0, size_bytes: 1 << 30, storage: "shared".into(), image: None, volume: None }];
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(web), at_ms: 3 }), Response::Vm(_)));
    running(&mut s, 10, 1, 1);
    s
}

fn running(s: &mut ClusterState, vm: VmId, node: NodeId, epoch: u64) {
    let report = Command::ReportVm { vm, node, epoch, state: VmState::Running, error: None, spec_gen: 0, at_ms: 4 };
    assert_eq!(s.apply(&report), Response::Done);
}

fn begin(s: &mut ClusterState, name: &str, target: NodeId) -> Response {
    s.apply(&Command::BeginMigration { name: name.into(), target, bandwidth_mib: 0, copy_storage: false, at_ms: 10 })
}

fn refusal(r: Response) -> String {
    match r {
        Response::Refused(r) => r.to_string(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_migration_reserves_an_epoch_and_the_targets_room_until_it_finishes() {
    let mut s = cluster();
    assert!(matches!(begin(&mut s, "web", 2), Response::Vm(_)));
    let web = &s.vms[&10];
    assert_eq!(web.placement, Some(Placement { node: 1, epoch: 1 }), "it runs on the source until the finish");
    assert_eq!(web.migration.map(|m| (m.source, m.target, m.epoch)), Some((1, 2, 2)));
    assert_eq!(web.last_epoch, 2);
    let views = s.scheduler_view(&Default::default(), None);
    let b = views.iter().find(|v| v.id == 2).unwrap();
    assert_eq!(b.allocated_memory_mib, 512, "the target's room is held");
    // The stale finish of another epoch changes nothing; the right one moves it.
    let wrong = Command::FinishMigration { vm: 10, epoch: 1, downtime_ms: None, at_ms: 11 };
    assert_eq!(s.apply(&wrong), Response::Refused(Refusal::StaleReport));
    assert_eq!(s.apply(&Command::FinishMigration { vm: 10, epoch: 2, downtime_ms: None, at_ms: 12 }), Response::Done);
    let web = &s.vms[&10];
    assert_eq!(web.placement, Some(Placement { node: 2, epoch: 2 }));
    assert_eq!(web.migration, None);
    assert_eq!(web.reported, None, "pending until the target reports it running");
    // An abort after the finish changes nothing.
    let late = Command::AbortMigration { vm: 10, epoch: 2, reason: "x".into(), at_ms: 13 };
    assert_eq!(s.apply(&late), Response::Done);
    assert_eq!(s.vms[&10].placement, Some(Placement { node: 2, epoch: 2 }));
}

#[test]
fn an_abort_leaves_the_vm_where_it_was_and_a_finish_after_it_is_refused() {
    let mut s = cluster();
    assert!(matches!(begin(&mut s, "web", 2), Response::Vm(_)));
    let abort = Command::AbortMigration { vm: 10, epoch: 2, reason: "the link broke".into(), at_ms: 11 };
    assert_eq!(s.apply(&abort), Response::Done);
    assert_eq!(s.vms[&10].placement, Some(Placement { node: 1, epoch: 1 }));
    assert_eq!(s.vms[&10].migration, None);
    assert!(s.events.iter().any(|e| e.message.contains("aborted") && e.message.contains("the link broke")));
    let finish = Command::FinishMigration { vm: 10, epoch: 2, downtime_ms: None, at_ms: 12 };
    assert_eq!(s.apply(&finish), Response::Refused(Refusal::StaleReport));
    // The next migration gets a new epoch: the aborted copy stays stale.
    assert!(matches!(begin(&mut s, "web", 3), Response::Vm(_)));
    assert_eq!(s.vms[&10].migration.map(|m| m.epoch), Some(3));
}

#[test]
fn bad_migrations_are_refused_with_the_reason() {
    let mut s = cluster();
    assert!(refusal(begin(&mut s, "web", 1)).contains("already runs on a"));
    assert!(refusal(begin(&mut s, "nosuch", 2)).contains("no VM named"));
    assert!(matches!(begin(&mut s, "web", 9), Response::Refused(Refusal::UnknownNode { id: 9 })));
    let drain = Command::SetNodeState { id: 3, state: NodeState::Draining, at_ms: 5 };
    assert!(matches!(s.apply(&drain), Response::Done | Response::Vm(_)));
    assert!(refusal(begin(&mut s, "web", 3)).contains("c is draining"));
    // Not running (never reported): nothing to move live.
    let mut idle = vm(11, "idle", Some(1), 256);
    idle.spec.disks.clear();
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(idle), at_ms: 5 }), Response::Vm(_)));
    assert!(refusal(begin(&mut s, "idle", 2)).contains("not running"));
    // A local disk does not move live.
    let mut local = vm(12, "local", Some(1), 256);
    local.spec.disks = vec![Disk { index: 0, size_bytes: 1 << 30, storage: "local".into(), image: None, volume: None }];
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(local), at_ms: 5 }), Response::Vm(_)));
    running(&mut s, 12, 1, 1);
    let why = refusal(begin(&mut s, "local", 2));
    assert!(why.contains("storage local to a") && why.contains("--copy-storage"), "{why}");
    // One at a time per VM; a stop or delete waits for it.
    assert!(matches!(begin(&mut s, "web", 2), Response::Vm(_)));
    assert!(refusal(begin(&mut s, "web", 2)).contains("already in flight"));
    let stop = Command::SetDesired { name: "web".into(), desired: Desired::Stopped, force: true, at_ms: 6 };
    assert!(refusal(s.apply(&stop)).contains("migrating to b"));
    let delete = Command::DeleteVm { name: "web".into(), keep_disks: false, at_ms: 6 };
    assert!(refusal(s.apply(&delete)).contains("migrating to b"));
}

#[test]
fn a_target_without_room_is_refused() {
    let mut s = cluster();
    let mut filler = vm(13, "filler", Some(2), 4000);
    filler.spec.disks.clear();
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(filler), at_ms: 7 }), Response::Vm(_)));
    assert!(refusal(begin(&mut s, "web", 2)).contains("can no longer take"));
    assert_eq!(s.vms[&10].migration, None);
}

#[test]
fn at_most_two_leave_a_host_and_four_run_at_once() {
    let mut s = cluster();
    for i in 0..6u64 {
        let mut v = vm(20 + i, &format!("v{i}"), Some(1), 128);
        v.spec.disks.clear();
        assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(v), at_ms: 5 }), Response::Vm(_)));
        running(&mut s, 20 + i, 1, 1);
    }
    assert!(matches!(begin(&mut s, "v0", 2), Response::Vm(_)));
    assert!(matches!(begin(&mut s, "v1", 2), Response::Vm(_)));
    assert!(refusal(begin(&mut s, "v2", 2)).contains("already leaving a"));
}

#[test]
fn a_host_going_down_aborts_the_migrations_it_takes_part_in() {
    let mut s = cluster();
    assert!(matches!(begin(&mut s, "web", 2), Response::Vm(_)));
    // The target dies: the VM runs on at the source.
    assert_eq!(s.apply(&Command::NodeDown { id: 2, at_ms: 20 }), Response::Done);
    assert_eq!(s.vms[&10].migration, None);
    assert_eq!(s.vms[&10].placement, Some(Placement { node: 1, epoch: 1 }));
    // The source dies mid-migration: aborted, and the HA rules take over.
    assert!(matches!(begin(&mut s, "web", 3), Response::Vm(_)));
    s.vms.get_mut(&10).unwrap().spec.ha = true;
    assert_eq!(s.apply(&Command::NodeDown { id: 1, at_ms: 21 }), Response::Done);
    let web = &s.vms[&10];
    assert_eq!(web.migration, None);
    assert_eq!(web.placement, None, "unplaced, to be restarted at a new epoch");
    assert!(web.last_epoch >= 3, "never again an epoch the target's copy had");
}

#[test]
fn a_drain_leaves_what_moves_live_running_and_stops_the_rest() {
    let mut s = cluster();
    // `idle` was never reported running: it cannot move live.
    let mut idle = vm(11, "idle", Some(1), 256);
    idle.spec.disks.clear();
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(idle), at_ms: 5 }), Response::Vm(_)));
    assert_eq!(s.apply(&Command::Drain { id: 1, cold: false, at_ms: 6 }), Response::Done);
    let (web, idle) = (&s.vms[&10], &s.vms[&11]);
    assert_eq!((web.placement.map(|p| p.node), web.moving_from), (Some(1), Some(1)), "web stays to move live");
    assert_eq!((idle.placement, idle.moving_from), (None, Some(1)), "idle is stopped and started elsewhere");
    let event = &s.events.back().unwrap().message;
    assert!(event.contains("1 to migrate live") && event.contains("idle (it is not running"), "{event}");
    // The live move finishes: the drain has nothing left of web.
    assert!(matches!(begin(&mut s, "web", 2), Response::Vm(_)));
    assert_eq!(s.apply(&Command::FinishMigration { vm: 10, epoch: 2, downtime_ms: None, at_ms: 7 }), Response::Done);
    assert_eq!(s.vms[&10].moving_from, None);
}

#[test]
fn a_failed_live_move_off_a_draining_host_falls_back_to_stop_and_start() {
    let mut s = cluster();
    assert_eq!(s.apply(&Command::Drain { id: 1, cold: false, at_ms: 6 }), Response::Done);
    assert!(matches!(begin(&mut s, "web", 2), Response::Vm(_)));
    let abort = Command::AbortMigration { vm: 10, epoch: 2, reason: "broken link".into(), at_ms: 7 };
    assert_eq!(s.apply(&abort), Response::Done);
    let web = &s.vms[&10];
    assert_eq!((web.placement, web.moving_from), (None, Some(1)));
    assert!(web.pending.as_deref().is_some_and(|p| p.contains("live migration failed")));
}

#[test]
fn a_cold_drain_stops_and_starts_everything() {
    let mut s = cluster();
    assert_eq!(s.apply(&Command::Drain { id: 1, cold: true, at_ms: 6 }), Response::Done);
    assert_eq!((s.vms[&10].placement, s.vms[&10].moving_from), (None, Some(1)));
    assert!(s.nodes[&1].cold_drain);
}

#[test]
fn a_stopped_vm_moves_cold_at_once_and_a_stopping_one_waits() {
    let mut s = cluster();
    let stop = Command::SetDesired { name: "web".into(), desired: Desired::Stopped, force: false, at_ms: 5 };
    assert!(matches!(s.apply(&stop), Response::Vm(_)));
    // Still running on its host: it is stopping.
    assert!(refusal(begin(&mut s, "web", 2)).contains("it is stopping"));
    let stopped =
        Command::ReportVm { vm: 10, node: 1, epoch: 1, state: VmState::Stopped, error: None, spec_gen: 0, at_ms: 6 };
    assert_eq!(s.apply(&stopped), Response::Done);
    assert!(refusal(begin(&mut s, "web", 1)).contains("already on a"));
    assert!(matches!(begin(&mut s, "web", 2), Response::Vm(_)));
    let web = &s.vms[&10];
    assert_eq!(web.placement, Some(Placement { node: 2, epoch: 2 }));
    assert_eq!((web.migration, web.desired), (None, Desired::Stopped));
}

/// `web` with a local disk (its volume recorded on a) and a shared one,
/// running on a.
fn with_local_disk() -> ClusterState {
    let mut s = cluster();
    let disks = vec![
        Disk { index: 0, size_bytes: 1 << 30, storage: "local".into(), image: None, volume: None },
        Disk { index: 1, size_bytes: 1 << 30, storage: "shared".into(), image: None, volume: None },
    ];
    let mut loc = vm(12, "loc", Some(1), 256);
    loc.spec.disks = disks;
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(loc), at_ms: 5 }), Response::Vm(_)));
    for index in [0, 1] {
        assert_eq!(s.apply(&Command::RecordVolume { vm: 12, index, node: 1, epoch: 1, at_ms: 5 }), Response::Done);
    }
    running(&mut s, 12, 1, 1);
    s
}

fn begin_copying(s: &mut ClusterState, name: &str, target: NodeId) -> Response {
    s.apply(&Command::BeginMigration { name: name.into(), target, bandwidth_mib: 0, copy_storage: true, at_ms: 10 })
}

#[test]
fn a_copying_migration_moves_the_local_volumes_to_the_target_when_it_finishes() {
    let mut s = with_local_disk();
    let Response::Vm(vm) = begin_copying(&mut s, "loc", 2) else { panic!("refused") };
    let m = vm.migration.unwrap();
    assert!(m.copy_storage);
    // Until the finish, the volume is the source's.
    assert_eq!(s.vms[&12].spec.disks[0].volume.unwrap().host, Some(1));
    let finish = Command::FinishMigration { vm: 12, epoch: m.epoch, downtime_ms: Some(31), at_ms: 20 };
    assert_eq!(s.apply(&finish), Response::Done);
    let vm = &s.vms[&12];
    assert_eq!(vm.placement, Some(Placement { node: 2, epoch: m.epoch }));
    assert_eq!(vm.spec.disks[0].volume.unwrap().host, Some(2), "the local volume is now b's");
    assert_eq!(vm.spec.disks[1].volume.unwrap().host, None, "the shared one is everyone's");
    let source_copy = Trashed { storage: "local".into(), volume: volume_name(12, 0), host: Some(1) };
    assert_eq!(s.meta.trash, vec![source_copy], "only the source's local file goes");
    let event = &s.events.back().unwrap().message;
    assert!(event.contains("with its local disks") && event.contains("downtime 31 ms"), "{event}");
    // It is pinned to b now: a shared-only move from b is refused again.
    running(&mut s, 12, 2, m.epoch);
    assert!(refusal(begin(&mut s, "loc", 3)).contains("storage local to b"));
}

#[test]
fn an_aborted_copy_trashes_the_targets_volumes_and_keeps_the_sources() {
    let mut s = with_local_disk();
    let Response::Vm(vm) = begin_copying(&mut s, "loc", 3) else { panic!("refused") };
    let epoch = vm.migration.unwrap().epoch;
    let abort = Command::AbortMigration { vm: 12, epoch, reason: "link down".into(), at_ms: 20 };
    assert_eq!(s.apply(&abort), Response::Done);
    let vm = &s.vms[&12];
    assert_eq!(vm.placement, Some(Placement { node: 1, epoch: 1 }));
    assert_eq!(vm.spec.disks[0].volume.unwrap().host, Some(1));
    let target_copy = Trashed { storage: "local".into(), volume: volume_name(12, 0), host: Some(3) };
    assert_eq!(s.meta.trash, vec![target_copy]);
    // A finish after the abort changes nothing.
    let late = Command::FinishMigration { vm: 12, epoch, downtime_ms: None, at_ms: 21 };
    assert!(matches!(s.apply(&late), Response::Refused(Refusal::StaleReport)));
    assert_eq!(s.vms[&12].spec.disks[0].volume.unwrap().host, Some(1));
}

#[test]
fn copying_is_remembered_only_for_local_disks_and_local_images_still_pin() {
    let mut s = cluster();
    // web's disks are all shared: nothing to copy.
    let Response::Vm(web) = begin_copying(&mut s, "web", 2) else { panic!("refused") };
    assert!(!web.migration.unwrap().copy_storage);
    // A VM booting from an image on a's local storage cannot leave a.
    let image = crate::storage::Image {
        id: 5,
        name: "kern".into(),
        storage: "local".into(),
        kind: crate::storage::ImageKind::Kernel,
        format: "raw".into(),
        virtual_bytes: 10,
        file_bytes: 10,
        sha256: String::new(),
        volume: "image-5.raw".into(),
        host: Some(1),
        created_at_ms: 1,
    };
    assert_eq!(s.apply(&Command::AddImage { image: image.clone(), at_ms: 5 }), Response::Done);
    let mut booted = vm(13, "booted", Some(1), 128);
    booted.spec.disks.clear();
    booted.spec.kernel = Some("kern".into());
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(booted), at_ms: 5 }), Response::Vm(_)));
    running(&mut s, 13, 1, 1);
    let why = refusal(begin_copying(&mut s, "booted", 3));
    assert!(why.contains("image kern") && why.contains("storage local to a"), "{why}");
}

#[test]
fn disks_do_not_change_while_a_migration_runs() {
    let mut s = with_local_disk();
    assert!(matches!(begin_copying(&mut s, "loc", 2), Response::Vm(_)));
    let resize = Command::ResizeDisk { name: "loc".into(), index: 0, size_bytes: 2 << 30, at_ms: 11 };
    assert!(refusal(s.apply(&resize)).contains("migrating to b"));
    let add = Command::AddDisk {
        name: "loc".into(),
        disk: Disk { index: 0, size_bytes: 1 << 30, storage: "shared".into(), image: None, volume: None },
        at_ms: 11,
    };
    assert!(refusal(s.apply(&add)).contains("migrating to b"));
}

#[test]
fn a_stopped_vm_with_a_local_disk_moves_once_its_disk_is_copied() {
    let mut s = with_local_disk();
    let stop = Command::SetDesired { name: "loc".into(), desired: Desired::Stopped, force: true, at_ms: 6 };
    assert!(matches!(s.apply(&stop), Response::Vm(_) | Response::Done));
    let report =
        Command::ReportVm { vm: 12, node: 1, epoch: 1, state: VmState::Stopped, error: None, spec_gen: 0, at_ms: 7 };
    assert_eq!(s.apply(&report), Response::Done);
    let why = refusal(begin(&mut s, "loc", 2));
    assert!(why.contains("storage local to a") && why.contains("--copy-storage"), "{why}");
    let Response::Vm(vm) = begin_copying(&mut s, "loc", 2) else { panic!("refused") };
    let m = vm.migration.expect("a copy is a migration until it is done");
    assert!(m.copy_storage && m.source == 1 && m.target == 2);
    assert_eq!(vm.placement, Some(Placement { node: 1, epoch: 1 }), "it stays on a until copied");
    let start = Command::SetDesired { name: "loc".into(), desired: Desired::Running, force: false, at_ms: 8 };
    assert!(refusal(s.apply(&start)).contains("migrating to b"));
    assert!(refusal(begin_copying(&mut s, "loc", 3)).contains("already moving to b"));
    let finish = Command::FinishMigration { vm: 12, epoch: m.epoch, downtime_ms: None, at_ms: 30 };
    assert_eq!(s.apply(&finish), Response::Done);
    let vm = &s.vms[&12];
    assert_eq!(vm.placement, Some(Placement { node: 2, epoch: m.epoch }));
    assert_eq!(vm.desired, Desired::Stopped);
    assert_eq!(vm.spec.disks[0].volume.unwrap().host, Some(2));
    assert!(s.meta.trash.contains(&Trashed { storage: "local".into(), volume: volume_name(12, 0), host: Some(1) }));
    let event = &s.events.back().unwrap().message;
    assert!(event.contains("(stopped) moved from a to b with its local disks"), "{event}");
}
