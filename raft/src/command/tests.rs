use super::*;
use crate::model::{Desired, Placement, PlacementSettings, VmSpec, VmState, EVENT_CAPACITY};
use crate::wire::to_pb;
use kvmesh_proto as pb;
use kvmesh_scheduler::Rejection;

pub(super) fn node(id: u64, name: &str, addr: &str) -> Node {
    Node {
        id,
        name: name.into(),
        address: addr.into(),
        cpus: 4,
        memory_mib: 4096,
        state: NodeState::Up,
        joined_at_ms: 0,
        labels: Default::default(),
        resume_as: None,
        cold_drain: false,
    }
}

pub(super) fn vm(id: u64, name: &str, node: Option<u64>, mem: u64) -> Vm {
    Vm {
        id,
        name: name.into(),
        spec: VmSpec { vcpus: 1, memory_mib: mem, ..Default::default() },
        desired: Desired::Running,
        placement: node.map(|n| Placement { node: n, epoch: 1 }),
        created_at_ms: 5,
        request_id: format!("req-{id}"),
        reported: None,
        desired_gen: 0,
        restart_gen: 0,
        force_stop: false,
        deleting: None,
        last_epoch: if node.is_some() { 1 } else { 0 },
        pending: None,
        moving_from: None,
        description: String::new(),
        snapshots: Vec::new(),
        next_disk: 0,
        migration: None,
        pending_changes: Vec::new(),
        spec_gen: 0,
    }
}

pub(super) fn initialized() -> ClusterState {
    let mut s = ClusterState::default();
    let r = s.apply(&Command::Init {
        cluster_id: "c1".into(),
        settings: Settings::default(),
        node: node(1, "a", "127.0.0.1:1"),
        at_ms: 1,
    });
    assert_eq!(r, Response::Done);
    s
}

#[test]
fn init_only_once() {
    let mut s = initialized();
    let again = s.apply(&Command::Init {
        cluster_id: "c2".into(),
        settings: Settings::default(),
        node: node(2, "b", "x:2"),
        at_ms: 2,
    });
    assert_eq!(again, Response::Refused(Refusal::AlreadyInitialized { cluster_id: "c1".into() }));
    assert_eq!(s.cluster_id(), Some("c1"));
    assert_eq!(s.nodes.len(), 1);
}

#[test]
fn add_node_refuses_taken_name_and_address_but_allows_rejoin() {
    let mut s = initialized();
    let r = s.apply(&Command::AddNode { node: node(2, "a", "127.0.0.1:2"), at_ms: 2 });
    assert_eq!(r, Response::Refused(Refusal::NodeNameTaken { name: "a".into() }));
    let r = s.apply(&Command::AddNode { node: node(2, "b", "127.0.0.1:1"), at_ms: 2 });
    assert!(matches!(r, Response::Refused(Refusal::NodeAddressTaken { .. })));
    assert_eq!(s.apply(&Command::AddNode { node: node(2, "b", "127.0.0.1:2"), at_ms: 2 }), Response::Done);
    // The same node registering again (a retried join) is fine.
    assert_eq!(s.apply(&Command::AddNode { node: node(2, "b", "127.0.0.1:2"), at_ms: 3 }), Response::Done);
    assert_eq!(s.nodes.len(), 2);
}

#[test]
fn create_checks_names_capacity_and_is_idempotent_per_request() {
    let mut s = initialized();
    let v = vm(10, "web", Some(1), 3000);
    assert_eq!(s.apply(&Command::CreateVm { vm: Box::new(v.clone()), at_ms: 3 }), Response::Vm(Box::new(v.clone())));
    // Retried create with the same request id: same answer, no duplicate.
    assert_eq!(s.apply(&Command::CreateVm { vm: Box::new(v.clone()), at_ms: 4 }), Response::Vm(Box::new(v.clone())));
    let mut other = vm(11, "web", Some(1), 1);
    other.request_id = "different".into();
    assert_eq!(
        s.apply(&Command::CreateVm { vm: Box::new(other), at_ms: 4 }),
        Response::Refused(Refusal::VmNameTaken { name: "web".into() })
    );
    // 3000 of 4096 MiB used: a 2000 MiB VM placed concurrently must lose.
    let r = s.apply(&Command::CreateVm { vm: Box::new(vm(12, "db", Some(1), 2000)), at_ms: 5 });
    assert_eq!(
        r,
        Response::Refused(Refusal::NoLongerFits {
            node: "a".into(),
            reason: Rejection::InsufficientMemory { need_mib: 2000, free_mib: 1096 }
        })
    );
    // An id that another VM holds is refused, never overwritten.
    let r = s.apply(&Command::CreateVm { vm: Box::new(vm(10, "other", Some(1), 1)), at_ms: 6 });
    assert_eq!(r, Response::Refused(Refusal::VmIdTaken { id: 10 }));
    assert_eq!(s.vms[&10].name, "web");
    assert_eq!(s.vms.len(), 1);
    assert_eq!(s.allocated(1), (1, 3000, 1));
}

#[test]
fn delete_and_unknown() {
    let mut s = initialized();
    s.apply(&Command::CreateVm { vm: Box::new(vm(10, "web", None, 100)), at_ms: 3 });
    assert_eq!(s.apply(&Command::DeleteVm { name: "web".into(), keep_disks: false, at_ms: 4 }), Response::Done);
    assert!(s.vm_by_name("web").is_none());
    assert_eq!(
        s.apply(&Command::DeleteVm { name: "web".into(), keep_disks: false, at_ms: 5 }),
        Response::Refused(Refusal::UnknownVm { name: "web".into() })
    );
}

#[test]
fn remove_node_with_vms_needs_force() {
    let mut s = initialized();
    s.apply(&Command::AddNode { node: node(2, "b", "x:2"), at_ms: 2 });
    s.apply(&Command::CreateVm { vm: Box::new(vm(10, "web", Some(2), 100)), at_ms: 3 });
    let r = s.apply(&Command::RemoveNode { id: 2, force: false, at_ms: 4 });
    assert_eq!(r, Response::Refused(Refusal::NodeHasVms { name: "b".into(), vms: 1 }));
    assert_eq!(s.apply(&Command::RemoveNode { id: 2, force: true, at_ms: 5 }), Response::Done);
    assert!(!s.nodes.contains_key(&2));
    // Still placed on the removed host: it may run there until the leader
    // knows it fenced (HA) or an operator recovers it (see ha::decide).
    assert_eq!(s.vm_by_name("web").unwrap().placement.map(|p| p.node), Some(2));
    // Its word no longer counts, even about a VM still placed on it.
    let epoch = s.vm_by_name("web").unwrap().placement.unwrap().epoch;
    let report =
        Command::ReportVm { vm: 10, node: 2, epoch, state: VmState::Running, error: None, spec_gen: 0, at_ms: 6 };
    assert_eq!(s.apply(&report), Response::Refused(Refusal::StaleReport));
    assert_eq!(s.apply(&Command::RecoverVm { name: "web".into(), at_ms: 6 }), Response::Done);
    assert_eq!(s.vm_by_name("web").unwrap().placement, None);
}

#[test]
fn apply_is_deterministic_and_tracks_dirty_keys() {
    let cmds = vec![
        Command::Init { cluster_id: "c".into(), settings: Settings::default(), node: node(1, "a", "a:1"), at_ms: 1 },
        Command::AddNode { node: node(2, "b", "b:1"), at_ms: 2 },
        Command::CreateVm { vm: Box::new(vm(7, "x", Some(2), 10)), at_ms: 3 },
        Command::DeleteVm { name: "x".into(), keep_disks: false, at_ms: 4 },
    ];
    let (mut s1, mut s2) = (ClusterState::default(), ClusterState::default());
    for c in &cmds {
        assert_eq!(s1.apply(c), s2.apply(c));
    }
    assert_eq!(s1, s2);
    let dirty = s1.take_dirty();
    assert!(dirty.contains(&Key::Vm(7)) && dirty.contains(&Key::Node(2)) && dirty.contains(&Key::Meta));
    assert!(s1.take_dirty().is_empty());
}

#[test]
fn event_ring_is_bounded() {
    let mut s = initialized();
    for i in 0..(EVENT_CAPACITY as u64 + 50) {
        s.apply(&Command::DeleteVm { name: format!("nope-{i}"), keep_disks: false, at_ms: i });
        s.apply(&Command::CreateVm { vm: Box::new(vm(100 + i, &format!("v{i}"), None, 1)), at_ms: i });
    }
    assert_eq!(s.events.len(), EVENT_CAPACITY);
    assert_eq!(s.events.back().unwrap().seq, s.meta.next_event_seq);
}

#[test]
fn delete_of_a_held_vm_waits_for_its_host() {
    let mut s = initialized();
    s.apply(&Command::CreateVm { vm: Box::new(vm(10, "web", Some(1), 100)), at_ms: 3 });
    assert_eq!(s.apply(&Command::DeleteVm { name: "web".into(), keep_disks: true, at_ms: 4 }), Response::Done);
    let v = s.vm_by_name("web").unwrap();
    assert_eq!(to_pb::vm_state(&s, v), pb::VmState::Deleting);
    assert_eq!(v.desired, Desired::Stopped);
    // Another host, or a stale epoch, cannot finish it.
    let stale =
        Command::ReportVm { vm: 10, node: 1, epoch: 0, state: VmState::Deleted, error: None, spec_gen: 0, at_ms: 5 };
    assert_eq!(s.apply(&stale), Response::Refused(Refusal::StaleReport));
    let done =
        Command::ReportVm { vm: 10, node: 1, epoch: 1, state: VmState::Deleted, error: None, spec_gen: 0, at_ms: 5 };
    assert_eq!(s.apply(&done), Response::Done);
    assert!(s.vm_by_name("web").is_none());
    // Unplaced VMs go at once.
    s.apply(&Command::CreateVm { vm: Box::new(vm(11, "free", None, 1)), at_ms: 6 });
    s.apply(&Command::DeleteVm { name: "free".into(), keep_disks: false, at_ms: 7 });
    assert!(s.vm_by_name("free").is_none());
}

#[test]
fn reports_record_transitions_only_from_the_current_placement() {
    let mut s = initialized();
    s.apply(&Command::CreateVm { vm: Box::new(vm(10, "web", Some(1), 100)), at_ms: 3 });
    assert_eq!(to_pb::vm_state(&s, s.vm_by_name("web").unwrap()), pb::VmState::Pending);
    let running =
        Command::ReportVm { vm: 10, node: 1, epoch: 1, state: VmState::Running, error: None, spec_gen: 0, at_ms: 9 };
    assert_eq!(s.apply(&running), Response::Done);
    let events = s.events.len();
    // The same report again changes nothing and logs nothing.
    s.take_dirty();
    assert_eq!(s.apply(&running), Response::Done);
    assert!(s.take_dirty().is_empty());
    assert_eq!(s.events.len(), events);
    let v = s.vm_by_name("web").unwrap();
    assert_eq!(to_pb::vm_state(&s, v), pb::VmState::Running);
    assert_eq!(v.reported.as_ref().unwrap().since_ms, 9);
    let other_node =
        Command::ReportVm { vm: 10, node: 2, epoch: 1, state: VmState::Stopped, error: None, spec_gen: 0, at_ms: 10 };
    assert_eq!(s.apply(&other_node), Response::Refused(Refusal::StaleReport));
    let failed = Command::ReportVm {
        vm: 10,
        node: 1,
        epoch: 1,
        state: VmState::Failed,
        error: Some("libvirt: no such file".into()),
        spec_gen: 0,
        at_ms: 11,
    };
    s.apply(&failed);
    assert!(s.events.back().unwrap().message.contains("failed on a: libvirt: no such file"));
}

#[test]
fn start_stop_restart_bump_generations() {
    let mut s = initialized();
    s.apply(&Command::CreateVm { vm: Box::new(vm(10, "web", Some(1), 100)), at_ms: 3 });
    s.apply(&Command::SetDesired { name: "web".into(), desired: Desired::Stopped, force: true, at_ms: 4 });
    let v = s.vm_by_name("web").unwrap();
    assert_eq!((v.desired, v.force_stop, v.desired_gen), (Desired::Stopped, true, 1));
    s.apply(&Command::RestartVm { name: "web".into(), at_ms: 5 });
    let v = s.vm_by_name("web").unwrap();
    assert_eq!((v.desired, v.restart_gen, v.desired_gen), (Desired::Running, 1, 2));
    assert_eq!(
        s.apply(&Command::RestartVm { name: "nope".into(), at_ms: 6 }),
        Response::Refused(Refusal::UnknownVm { name: "nope".into() })
    );
}

#[test]
fn capacity_recheck_uses_overcommit_and_anti_affinity() {
    let mut s = initialized();
    // 4 CPUs at the default 4.0 overcommit: 16 vCPUs fit, the 17th does not.
    for i in 0..16 {
        assert!(matches!(
            s.apply(&Command::CreateVm { vm: Box::new(vm(100 + i, &format!("c{i}"), Some(1), 1)), at_ms: 1 }),
            Response::Vm(_)
        ));
    }
    let r = s.apply(&Command::CreateVm { vm: Box::new(vm(200, "c16", Some(1), 1)), at_ms: 2 });
    assert_eq!(
        r,
        Response::Refused(Refusal::NoLongerFits {
            node: "a".into(),
            reason: Rejection::InsufficientCpu { need: 1, free: 0 }
        })
    );
    let placement = PlacementSettings { cpu_overcommit_milli: 8000, ..Default::default() };
    s.apply(&Command::SetPlacement { placement, at_ms: 3 });
    let mut a = vm(300, "db-a", Some(1), 1);
    a.spec.anti_affinity = Some("db".into());
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(a), at_ms: 4 }), Response::Vm(_)));
    let mut b = vm(301, "db-b", Some(1), 1);
    b.spec.anti_affinity = Some("db".into());
    assert_eq!(
        s.apply(&Command::CreateVm { vm: Box::new(b), at_ms: 5 }),
        Response::Refused(Refusal::NoLongerFits {
            node: "a".into(),
            reason: Rejection::AntiAffinity { group: "db".into(), members: 1 }
        })
    );
}

#[test]
fn update_changes_description_and_priority_only() {
    let mut s = initialized();
    s.apply(&Command::CreateVm { vm: Box::new(vm(7, "db", Some(1), 512)), at_ms: 2 });
    s.take_dirty();
    let events = s.events.len();
    let r = s.apply(&Command::UpdateVm { name: "db".into(), description: Some("primary".into()), priority: None });
    let Response::Vm(updated) = r else { panic!("{r:?}") };
    assert_eq!(updated.description, "primary");
    assert_eq!(updated.spec.priority, 0);
    let r = s.apply(&Command::UpdateVm { name: "db".into(), description: None, priority: Some(-3) });
    let Response::Vm(updated) = r else { panic!("{r:?}") };
    assert_eq!((updated.description.as_str(), updated.spec.priority), ("primary", -3));
    // The guest is not touched: no new generation, placement or event.
    assert_eq!(
        (updated.desired_gen, updated.restart_gen, updated.placement),
        (0, 0, Some(Placement { node: 1, epoch: 1 }))
    );
    assert_eq!(s.events.len(), events);
    assert_eq!(s.take_dirty().into_iter().collect::<Vec<_>>(), vec![Key::Vm(7)]);
    let r = s.apply(&Command::UpdateVm { name: "nope".into(), description: Some("x".into()), priority: None });
    assert_eq!(r, Response::Refused(Refusal::UnknownVm { name: "nope".into() }));
}

#[test]
fn labels_are_set_changed_and_removed_without_touching_the_guest() {
    let mut s = initialized();
    s.apply(&Command::CreateVm { vm: Box::new(vm(7, "db", Some(1), 512)), at_ms: 2 });
    let set = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let r = s.apply(&Command::LabelVm { name: "db".into(), set: set(&[("app", "a"), ("tier", "1")]), unset: vec![] });
    let Response::Vm(v) = r else { panic!("{r:?}") };
    assert_eq!(v.spec.labels, set(&[("app", "a"), ("tier", "1")]));
    // Unset first, then set: a key in both ends up set.
    let r = s.apply(&Command::LabelVm {
        name: "db".into(),
        set: set(&[("tier", "2")]),
        unset: vec!["app".into(), "tier".into(), "absent".into()],
    });
    let Response::Vm(v) = r else { panic!("{r:?}") };
    assert_eq!(v.spec.labels, set(&[("tier", "2")]));
    assert_eq!((v.desired_gen, v.restart_gen), (0, 0));
    let r = s.apply(&Command::LabelVm { name: "nope".into(), set: set(&[]), unset: vec![] });
    assert_eq!(r, Response::Refused(Refusal::UnknownVm { name: "nope".into() }));
}

#[test]
fn a_batch_applies_each_command_in_order_as_if_alone() {
    let cmds = vec![
        Command::CreateVm { vm: Box::new(vm(7, "db", Some(1), 512)), at_ms: 2 },
        Command::UpdateVm { name: "db".into(), description: Some("one".into()), priority: None },
        // Refused on its own, so refused inside the batch too; the rest still applies.
        Command::CreateVm { vm: Box::new(vm(8, "db", Some(1), 512)), at_ms: 3 },
        Command::UpdateVm { name: "db".into(), description: Some("two".into()), priority: None },
    ];
    let mut one_by_one = initialized();
    let singles: Vec<Response> = cmds.iter().map(|c| one_by_one.apply(c)).collect();
    let mut batched = initialized();
    let r = batched.apply(&Command::Batch(cmds));
    assert_eq!(r, Response::Batch(singles.clone()));
    assert!(matches!(singles[2], Response::Refused(Refusal::VmNameTaken { .. })), "{:?}", singles[2]);
    assert_eq!(batched, one_by_one);
    assert_eq!(batched.vm_by_name("db").unwrap().description, "two");
}

#[test]
fn the_placement_index_follows_every_applied_batch() {
    let mut s = initialized();
    s.apply(&Command::AddNode { node: node(2, "b", "127.0.0.1:2"), at_ms: 2 });
    let mut ha = vm(7, "db", Some(1), 512);
    ha.spec.ha = true;
    s.apply(&Command::CreateVm { vm: Box::new(ha), at_ms: 3 });
    s.take_dirty();
    let ids = |s: &ClusterState, n| s.vms_on(n).map(|v| v.id).collect::<Vec<_>>();
    assert_eq!((ids(&s, 1), ids(&s, 2)), (vec![7], vec![]));
    assert_eq!(s.allocated_indexed(1), s.allocated(1));
    let (on_1, on_2) = (s.changes_on(1), s.changes_on(2));
    // A change elsewhere does not touch node 1's counter.
    s.apply(&Command::AddNode { node: node(3, "c", "127.0.0.1:3"), at_ms: 4 });
    s.take_dirty();
    assert_eq!(s.changes_on(1), on_1);
    // Node 1 goes down: its HA VM is unplaced, then placed on node 2, all
    // in one batch; both nodes hear of it.
    s.apply(&Command::NodeDown { id: 1, at_ms: 5 });
    let r = s.apply(&Command::PlaceVm { vm: 7, node: 2, at_ms: 6 });
    assert!(matches!(r, Response::Vm(_)), "{r:?}");
    s.take_dirty();
    assert_eq!((ids(&s, 1), ids(&s, 2)), (vec![], vec![7]));
    assert_ne!(s.changes_on(1), on_1);
    assert_ne!(s.changes_on(2), on_2);
    // A rebuilt state (snapshot) reads as changed everywhere.
    let mut rebuilt = s.clone();
    rebuilt.reindex();
    rebuilt.replaces(&s);
    assert_ne!(rebuilt.changes_on(3), s.changes_on(3));
    assert_eq!(ids(&rebuilt, 2), ids(&s, 2));
}

#[test]
fn a_retried_request_is_applied_once_and_gets_the_first_answer() {
    use crate::requests::RequestId;
    let mut s = initialized();
    s.apply(&Command::CreateVm { vm: Box::new(vm(10, "web", Some(1), 64)), at_ms: 2 });
    let restart = |seq| Command::Request {
        id: RequestId { origin: 2, seq },
        cmd: Box::new(Command::RestartVm { name: "web".into(), at_ms: 3 }),
    };
    let first = s.apply(&restart(1));
    assert!(matches!(&first, Response::Vm(v) if v.restart_gen == 1));
    // The same id again (a retry after an unseen commit): no second restart.
    assert_eq!(s.apply(&restart(1)), first);
    assert_eq!(s.vms[&10].restart_gen, 1);
    // A new id is a new restart.
    assert!(matches!(s.apply(&restart(2)), Response::Vm(v) if v.restart_gen == 2));
    // A retried delete answers as the first one did, not "no such VM".
    let delete = Command::Request {
        id: RequestId { origin: 2, seq: 3 },
        cmd: Box::new(Command::DeleteVm { name: "web".into(), keep_disks: false, at_ms: 4 }),
    };
    assert_eq!(s.apply(&delete), Response::Done);
    s.apply(&Command::ReportVm {
        vm: 10,
        node: 1,
        epoch: 1,
        state: VmState::Deleted,
        error: None,
        spec_gen: 0,
        at_ms: 5,
    });
    assert!(s.vms.is_empty());
    assert_eq!(s.apply(&delete), Response::Done);
    // Only writes that differ when applied twice pay for an answer.
    assert!(Command::DeleteVm { name: "x".into(), keep_disks: false, at_ms: 0 }.needs_request_id());
    assert!(Command::RestartVm { name: "x".into(), at_ms: 0 }.needs_request_id());
    let set = Command::UpdateVm { name: "x".into(), description: Some("d".into()), priority: None };
    assert!(!set.needs_request_id());
    // The answers are persisted keys.
    assert!(s.take_dirty().contains(&Key::Request(RequestId { origin: 2, seq: 3 })));
}
