use super::*;
use crate::model::{Desired, Placement, VmSpec, EVENT_CAPACITY};

fn node(id: u64, name: &str, addr: &str) -> Node {
    Node {
        id,
        name: name.into(),
        address: addr.into(),
        cpus: 4,
        memory_mib: 4096,
        state: NodeState::Up,
        joined_at_ms: 0,
    }
}

fn vm(id: u64, name: &str, node: Option<u64>, mem: u64) -> Vm {
    Vm {
        id,
        name: name.into(),
        spec: VmSpec {
            vcpus: 1,
            memory_mib: mem,
            ha: false,
        },
        desired: Desired::Running,
        placement: node.map(|n| Placement { node: n, epoch: 1 }),
        created_at_ms: 5,
        request_id: format!("req-{id}"),
    }
}

fn initialized() -> ClusterState {
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
    assert_eq!(
        again,
        Response::Refused(Refusal::AlreadyInitialized {
            cluster_id: "c1".into()
        })
    );
    assert_eq!(s.cluster_id(), Some("c1"));
    assert_eq!(s.nodes.len(), 1);
}

#[test]
fn add_node_refuses_taken_name_and_address_but_allows_rejoin() {
    let mut s = initialized();
    let r = s.apply(&Command::AddNode {
        node: node(2, "a", "127.0.0.1:2"),
        at_ms: 2,
    });
    assert_eq!(
        r,
        Response::Refused(Refusal::NodeNameTaken { name: "a".into() })
    );
    let r = s.apply(&Command::AddNode {
        node: node(2, "b", "127.0.0.1:1"),
        at_ms: 2,
    });
    assert!(matches!(
        r,
        Response::Refused(Refusal::NodeAddressTaken { .. })
    ));
    assert_eq!(
        s.apply(&Command::AddNode {
            node: node(2, "b", "127.0.0.1:2"),
            at_ms: 2
        }),
        Response::Done
    );
    // The same node registering again (a retried join) is fine.
    assert_eq!(
        s.apply(&Command::AddNode {
            node: node(2, "b", "127.0.0.1:2"),
            at_ms: 3
        }),
        Response::Done
    );
    assert_eq!(s.nodes.len(), 2);
}

#[test]
fn create_checks_names_capacity_and_is_idempotent_per_request() {
    let mut s = initialized();
    let v = vm(10, "web", Some(1), 3000);
    assert_eq!(
        s.apply(&Command::CreateVm {
            vm: v.clone(),
            at_ms: 3
        }),
        Response::Vm(v.clone())
    );
    // Retried create with the same request id: same answer, no duplicate.
    assert_eq!(
        s.apply(&Command::CreateVm {
            vm: v.clone(),
            at_ms: 4
        }),
        Response::Vm(v.clone())
    );
    let mut other = vm(11, "web", Some(1), 1);
    other.request_id = "different".into();
    assert_eq!(
        s.apply(&Command::CreateVm {
            vm: other,
            at_ms: 4
        }),
        Response::Refused(Refusal::VmNameTaken { name: "web".into() })
    );
    // 3000 of 4096 MiB used: a 2000 MiB VM placed concurrently must lose.
    let r = s.apply(&Command::CreateVm {
        vm: vm(12, "db", Some(1), 2000),
        at_ms: 5,
    });
    assert_eq!(
        r,
        Response::Refused(Refusal::NoLongerFits { node: "a".into() })
    );
    assert_eq!(s.vms.len(), 1);
    assert_eq!(s.allocated(1), (1, 3000, 1));
}

#[test]
fn delete_and_unknown() {
    let mut s = initialized();
    s.apply(&Command::CreateVm {
        vm: vm(10, "web", Some(1), 100),
        at_ms: 3,
    });
    assert_eq!(
        s.apply(&Command::DeleteVm {
            name: "web".into(),
            at_ms: 4
        }),
        Response::Done
    );
    assert!(s.vm_by_name("web").is_none());
    assert_eq!(
        s.apply(&Command::DeleteVm {
            name: "web".into(),
            at_ms: 5
        }),
        Response::Refused(Refusal::UnknownVm { name: "web".into() })
    );
}

#[test]
fn remove_node_with_vms_needs_force() {
    let mut s = initialized();
    s.apply(&Command::AddNode {
        node: node(2, "b", "x:2"),
        at_ms: 2,
    });
    s.apply(&Command::CreateVm {
        vm: vm(10, "web", Some(2), 100),
        at_ms: 3,
    });
    let r = s.apply(&Command::RemoveNode {
        id: 2,
        force: false,
        at_ms: 4,
    });
    assert_eq!(
        r,
        Response::Refused(Refusal::NodeHasVms {
            name: "b".into(),
            vms: 1
        })
    );
    assert_eq!(
        s.apply(&Command::RemoveNode {
            id: 2,
            force: true,
            at_ms: 5
        }),
        Response::Done
    );
    assert!(!s.nodes.contains_key(&2));
    assert_eq!(s.vm_by_name("web").unwrap().placement, None);
}

#[test]
fn apply_is_deterministic_and_tracks_dirty_keys() {
    let cmds = vec![
        Command::Init {
            cluster_id: "c".into(),
            settings: Settings::default(),
            node: node(1, "a", "a:1"),
            at_ms: 1,
        },
        Command::AddNode {
            node: node(2, "b", "b:1"),
            at_ms: 2,
        },
        Command::CreateVm {
            vm: vm(7, "x", Some(2), 10),
            at_ms: 3,
        },
        Command::DeleteVm {
            name: "x".into(),
            at_ms: 4,
        },
    ];
    let (mut s1, mut s2) = (ClusterState::default(), ClusterState::default());
    for c in &cmds {
        assert_eq!(s1.apply(c), s2.apply(c));
    }
    assert_eq!(s1, s2);
    let dirty = s1.take_dirty();
    assert!(
        dirty.contains(&Key::Vm(7)) && dirty.contains(&Key::Node(2)) && dirty.contains(&Key::Meta)
    );
    assert!(s1.take_dirty().is_empty());
}

#[test]
fn event_ring_is_bounded() {
    let mut s = initialized();
    for i in 0..(EVENT_CAPACITY as u64 + 50) {
        s.apply(&Command::DeleteVm {
            name: format!("nope-{i}"),
            at_ms: i,
        });
        s.apply(&Command::CreateVm {
            vm: vm(100 + i, &format!("v{i}"), None, 1),
            at_ms: i,
        });
    }
    assert_eq!(s.events.len(), EVENT_CAPACITY);
    assert_eq!(s.events.back().unwrap().seq, s.meta.next_event_seq);
}
