//! Property tests of `apply`: random command sequences, nonsense included,
//! never panic and never break an invariant; and `apply` accepts a placement
//! exactly when the scheduler, given the same state, would allow it.

use std::collections::{BTreeMap, BTreeSet};

use kvmesh_scheduler::{self as scheduler, Decision, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::model::{Placement, PlacementSettings, Policy, VmSpec, EVENT_CAPACITY};
use crate::requests::{RequestId, WINDOW};
use crate::view;

const NODES: u64 = 5;
const VMS: u64 = 24;

/// Node `id`'s record. Outside `wild` runs a node keeps its capacity when
/// it re-registers, so "never over capacity" must hold at every step.
fn node(rng: &mut StdRng, id: u64, wild: bool) -> Node {
    let (cpus, memory_mib) = if wild { (rng.gen_range(0..6), rng.gen_range(0..5000)) } else { (id as u32, id * 1024) };
    let mut labels = BTreeMap::new();
    if rng.gen_bool(0.5) {
        labels.insert("zone".to_string(), format!("z{}", rng.gen_range(0..2)));
    }
    Node {
        id,
        // Sometimes a name or address another node holds.
        name: format!("n{}", if rng.gen_bool(0.9) { id } else { rng.gen_range(1..=NODES) }),
        address: format!("10.0.0.{}:7100", if rng.gen_bool(0.9) { id } else { rng.gen_range(1..=NODES) }),
        cpus,
        memory_mib,
        state: NodeState::Up,
        joined_at_ms: 0,
        labels,
        resume_as: None,
        cold_drain: false,
    }
}

fn group(rng: &mut StdRng) -> Option<String> {
    rng.gen_bool(0.3).then(|| format!("g{}", rng.gen_range(0..3)))
}

fn spec(rng: &mut StdRng) -> VmSpec {
    let mut required_labels = BTreeMap::new();
    if rng.gen_bool(0.2) {
        required_labels.insert("zone".to_string(), format!("z{}", rng.gen_range(0..2)));
    }
    VmSpec {
        vcpus: if rng.gen_bool(0.02) { u32::MAX } else { rng.gen_range(0..4) },
        memory_mib: if rng.gen_bool(0.02) { u64::MAX } else { rng.gen_range(0..2500) },
        ha: rng.gen_bool(0.5),
        priority: rng.gen_range(-2..3),
        pin: rng.gen_bool(0.1).then(|| format!("n{}", rng.gen_range(1..=NODES))),
        required_labels,
        anti_affinity: group(rng),
        soft_anti_affinity: group(rng),
        affinity: group(rng),
        ..Default::default()
    }
}

fn vm_name(rng: &mut StdRng) -> String {
    format!("vm{}", rng.gen_range(0..VMS))
}

/// One random command; `wild` also changes capacity rules mid-run.
fn command(rng: &mut StdRng, state: &ClusterState, wild: bool) -> Command {
    let node_id = rng.gen_range(0..=NODES + 1); // 0 and NODES+1 are unknown
    let vm_id = rng.gen_range(0..VMS + 2);
    let at_ms = rng.gen_range(0..1_000_000);
    match rng.gen_range(0..31) {
        0..=1 => {
            let id = rng.gen_range(1..=NODES);
            Command::AddNode { node: node(rng, id, wild), at_ms }
        }
        2 => Command::RemoveNode { id: node_id, force: rng.gen_bool(0.5), at_ms },
        3..=6 => {
            // Half of the creates go where the scheduler says, as the
            // leader's would; the rest name any node, as a stale leader might.
            let name = vm_name(rng);
            let spec = spec(rng);
            let target = if rng.gen_bool(0.5) {
                let req = view::request(vm_id, &name, &spec);
                match scheduler::place(
                    &state.scheduler_view(&Default::default(), None),
                    &req,
                    &state.meta.settings.placement,
                ) {
                    Decision::Place { node_id, .. } => Some(node_id),
                    Decision::Unplaceable { .. } => None,
                }
            } else {
                rng.gen_bool(0.9).then_some(node_id)
            };
            let mut vm = match target {
                Some(n) => Vm::placed(vm_id, &name, spec, n, at_ms),
                None => Vm { placement: None, ..Vm::placed(vm_id, &name, spec, 0, at_ms) },
            };
            vm.request_id = format!("r{}", rng.gen_range(0..3));
            // NICs on networks that exist, MACs left to `apply` (given and
            // clashing MACs come with AddNic): a placement the scheduler
            // made must still be accepted.
            let networks: Vec<String> = state.meta.networks.keys().cloned().collect();
            for _ in 0..rng.gen_range(0..3).min(networks.len()) {
                let network = networks[rng.gen_range(0..networks.len())].clone();
                let mac = crate::networks::Mac::default();
                vm.spec.nics.push(crate::networks::Nic { network, mac, model: "virtio".into() });
            }
            if rng.gen_bool(0.1) {
                vm.placement = Some(Placement { node: node_id, epoch: rng.gen_range(0..5) });
            }
            Command::CreateVm { vm: Box::new(vm), at_ms }
        }
        7 => Command::DeleteVm { name: vm_name(rng), keep_disks: rng.gen_bool(0.5), at_ms },
        8 => Command::SetDesired {
            name: vm_name(rng),
            desired: if rng.gen_bool(0.5) { Desired::Running } else { Desired::Stopped },
            force: rng.gen_bool(0.5),
            at_ms,
        },
        9 => Command::RestartVm { name: vm_name(rng), at_ms },
        10 => Command::UpdateVm {
            name: vm_name(rng),
            description: rng.gen_bool(0.5).then(|| "d".repeat(rng.gen_range(0..10))),
            priority: rng.gen_bool(0.5).then(|| rng.gen_range(i32::MIN..i32::MAX)),
        },
        11 if wild => Command::SetPlacement {
            placement: PlacementSettings {
                policy: [Policy::Spread, Policy::Pack, Policy::Balanced][rng.gen_range(0..3)],
                cpu_overcommit_milli: rng.gen_range(0..10_000),
                memory_overcommit_milli: rng.gen_range(0..3000),
                balance: rng.gen_bool(0.5),
            },
            at_ms,
        },
        12 => Command::NodeDown { id: node_id, at_ms },
        13 => Command::NodeUp { id: node_id, at_ms },
        14 => Command::SetNodeState {
            id: node_id,
            state: [NodeState::Up, NodeState::Down, NodeState::Draining, NodeState::Maintenance][rng.gen_range(0..4)],
            at_ms,
        },
        15..=16 => Command::PlaceVm { vm: vm_id, node: node_id, at_ms },
        17 => Command::SetPending { vm: vm_id, reason: format!("r{}", rng.gen_range(0..2)), at_ms },
        18 => Command::RecoverVm { name: vm_name(rng), at_ms },
        19 => Command::ReportVm {
            vm: vm_id,
            node: node_id,
            epoch: rng.gen_range(0..4),
            state: [VmState::Running, VmState::Stopped, VmState::Crashed, VmState::Failed, VmState::Deleted]
                [rng.gen_range(0..5)],
            error: rng.gen_bool(0.3).then(|| "boom".to_string()),
            spec_gen: rng.gen_range(0..3),
            at_ms,
        },
        20 => Command::Request {
            id: RequestId { origin: rng.gen_range(1..=2), seq: rng.gen_range(0..6) },
            cmd: Box::new(command(rng, state, wild)),
        },
        21 => Command::BeginMigration {
            name: vm_name(rng),
            target: node_id,
            bandwidth_mib: 0,
            copy_storage: rng.gen_bool(0.5),
            at_ms,
        },
        22 => Command::FinishMigration { vm: vm_id, epoch: rng.gen_range(0..4), downtime_ms: None, at_ms },
        23 => Command::AbortMigration { vm: vm_id, epoch: rng.gen_range(0..4), reason: "r".into(), at_ms },
        24 => Command::Drain { id: node_id, cold: rng.gen_bool(0.5), at_ms },
        25 => {
            let kind = crate::networks::NetworkKind::Vxlan { vni: rng.gen_range(0..4) };
            let network = crate::networks::Network {
                name: format!("net{}", rng.gen_range(0..3)),
                kind,
                required: rng.gen_bool(0.2),
                mtu: None,
                created_at_ms: 0,
            };
            Command::AddNetwork { network, at_ms }
        }
        26 => Command::RemoveNetwork { name: format!("net{}", rng.gen_range(0..3)), at_ms },
        27 => {
            // Mostly "allocate one"; sometimes a small given MAC, which
            // collides now and then.
            let mac = if rng.gen_bool(0.7) {
                crate::networks::Mac::default()
            } else {
                crate::networks::Mac([0x0a, 0, 0, 0, 0, rng.gen_range(1..4)])
            };
            let nic =
                crate::networks::Nic { network: format!("net{}", rng.gen_range(0..3)), mac, model: "virtio".into() };
            Command::AddNic { name: vm_name(rng), nic, at_ms }
        }
        28 => {
            let mac = crate::networks::Mac([0x0a, 0, 0, 0, 0, rng.gen_range(1..4)]);
            Command::RemoveNic { name: vm_name(rng), mac, at_ms }
        }
        29 => {
            // Sizes from tiny to far too big for any node.
            let change = crate::hardware::VmChange {
                vcpus: rng.gen_bool(0.5).then(|| rng.gen_range(0..40)),
                memory_mib: rng.gen_bool(0.5).then(|| rng.gen_range(0..20_000)),
                ha: rng.gen_bool(0.2).then(|| rng.gen_bool(0.5)),
                firmware: rng.gen_bool(0.2).then_some(crate::hardware::Firmware::Uefi),
                ..Default::default()
            };
            Command::ConfigureVm { name: vm_name(rng), change, at_ms }
        }
        _ => Command::Batch((0..rng.gen_range(0..4)).map(|_| command(rng, state, wild)).collect()),
    }
}

/// Everything that must hold after any command. `capacity`: no node holds
/// more than its capacity (true while capacities and ratios never shrink).
fn check_invariants(s: &mut ClusterState, capacity: bool, step: usize) {
    // What each node's VMs hold, kept in step with every change.
    assert!(s.held_in_step(), "step {step}: the held index differs from a rebuild");
    let ctx = |what: &str| format!("step {step}: {what}");
    // The name index is exactly the VMs' names (so names are unique).
    assert_eq!(s.vm_names.len(), s.vms.len(), "{}", ctx("name index size"));
    for (name, id) in &s.vm_names {
        assert_eq!(s.vms.get(id).map(|v| v.name.as_str()), Some(name.as_str()), "{}", ctx("name index"));
    }
    // Every NIC is on a network that exists, and no MAC is on two NICs.
    let mut macs = std::collections::BTreeSet::new();
    for nic in s.vms.values().flat_map(|v| &v.spec.nics) {
        assert!(s.meta.networks.contains_key(&nic.network), "{}", ctx("NIC on a removed network"));
        assert!(!nic.mac.is_unset() && macs.insert(nic.mac), "{}", ctx("MAC unset or on two NICs"));
    }
    for vm in s.vms.values() {
        if let Some(p) = vm.placement {
            // The node may be gone: a host removed with --force keeps its
            // VMs placed on it, since they may still run there.
            assert!(vm.last_epoch >= p.epoch, "{}", ctx("epoch went backwards"));
        }
        // A migration runs from the VM's host to another, at an epoch above
        // its placement's and reserved for it alone.
        if let Some(m) = vm.migration {
            let p = vm.placement.expect("a migrating VM is placed");
            assert_eq!(p.node, m.source, "{}", ctx("migration from elsewhere"));
            assert_ne!(m.target, m.source, "{}", ctx("migration to its own host"));
            assert!(m.epoch > p.epoch && m.epoch == vm.last_epoch, "{}", ctx("migration epoch"));
            assert!(s.nodes.contains_key(&m.target), "{}", ctx("migration to a removed host"));
        }
    }
    // Hard anti-affinity: never two members of one group on a host.
    let mut hard: BTreeSet<(u64, &str)> = BTreeSet::new();
    for vm in s.vms.values() {
        if let (Some(p), Some(g)) = (vm.placement, vm.spec.anti_affinity.as_deref()) {
            assert!(hard.insert((p.node, g)), "{}", ctx("anti-affinity broken"));
        }
    }
    if capacity {
        let settings = s.meta.settings.placement;
        for n in s.scheduler_view(&Default::default(), None) {
            assert!(n.allocated_vcpus <= n.vcpu_capacity(&settings), "{}", ctx("vCPUs over capacity"));
            assert!(
                n.allocated_memory_mib <= n.memory_capacity(&settings),
                "{} on {}: {} of {} MiB",
                ctx("memory over capacity"),
                n.name,
                n.allocated_memory_mib,
                n.memory_capacity(&settings)
            );
        }
    }
    assert!(s.events.len() <= EVENT_CAPACITY);
    assert!(s.events.iter().zip(s.events.iter().skip(1)).all(|(a, b)| a.seq < b.seq), "{}", ctx("event order"));
    assert!(s.requests.len() <= 2 * WINDOW);
    // The readers' placement index agrees with the maps once brought up to date.
    let dirty = s.take_dirty();
    assert!(dirty.iter().all(|k| !matches!(k, Key::Vm(id) if s.vms.get(id).is_some_and(|v| v.id != *id))));
    for id in 0..=NODES + 1 {
        let indexed: BTreeSet<VmId> = s.vms_on(id).map(|v| v.id).collect();
        let scanned: BTreeSet<VmId> =
            s.vms.values().filter(|v| v.placement.map(|p| p.node) == Some(id)).map(|v| v.id).collect();
        assert_eq!(indexed, scanned, "{}", ctx("placement index"));
    }
}

#[test]
fn random_command_sequences_never_panic_or_break_invariants() {
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let wild = seed % 3 == 0;
        let mut s = ClusterState::default();
        let first = node(&mut rng, 1, false);
        s.apply(&Command::Init { cluster_id: "c".into(), settings: Settings::default(), node: first, at_ms: 0 });
        let mut log = Vec::new();
        for step in 0..400 {
            let cmd = command(&mut rng, &s, wild);
            // A placement the scheduler made must be accepted.
            let scheduled = matches!(&cmd, Command::CreateVm { vm, .. } if vm.placement.is_some()
                && s.vm_by_name(&vm.name).is_none() && !s.vms.contains_key(&vm.id)
                && scheduled_here(&s, vm));
            let r = s.apply(&cmd);
            if scheduled {
                assert!(matches!(r, Response::Vm(_)), "seed {seed} step {step}: scheduler's placement refused: {r:?}");
            }
            if std::env::var("KVMESH_PROP_DEBUG").is_ok() {
                eprintln!("seed {seed} step {step}: {cmd:?} -> {r:?}");
            }
            log.push(cmd);
            check_invariants(&mut s, !wild, step);
        }
        // Every replica that applies the same log holds the same state, and
        // a snapshot of it decodes to the same state.
        let mut replica = ClusterState::default();
        replica.apply(&Command::Init {
            cluster_id: "c".into(),
            settings: Settings::default(),
            node: node(&mut StdRng::seed_from_u64(seed), 1, false),
            at_ms: 0,
        });
        for cmd in &log {
            replica.apply(cmd);
        }
        assert!(replica == s, "seed {seed}: replicas differ");
        let bytes = crate::codec::encode("snapshot", &s).unwrap();
        let mut decoded: ClusterState = crate::codec::decode("snapshot", &bytes).unwrap();
        decoded.reindex();
        assert!(decoded == s, "seed {seed}: snapshot differs");
    }
}

/// Whether the scheduler, on this state, would choose the node `vm` names.
fn scheduled_here(s: &ClusterState, vm: &Vm) -> bool {
    let req = view::vm_request(vm);
    let d = scheduler::place(&s.scheduler_view(&Default::default(), None), &req, &s.meta.settings.placement);
    matches!(d, Decision::Place { node_id, .. } if Some(node_id) == vm.placement.map(|p| p.node))
}

#[test]
fn apply_accepts_a_placement_exactly_when_the_scheduler_allows_it() {
    let (mut agreed_yes, mut agreed_no) = (0, 0);
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let mut s = ClusterState::default();
        let first = node(&mut rng, 1, true);
        s.apply(&Command::Init { cluster_id: "c".into(), settings: Settings::default(), node: first, at_ms: 0 });
        for _ in 0..150 {
            let cmd = command(&mut rng, &s, true);
            s.apply(&cmd);
        }
        s.take_dirty();
        for _ in 0..30 {
            let name = format!("new{}", rng.gen_range(0..1000));
            let id = 10_000 + rng.gen_range(0..1000);
            let spec = spec(&mut rng);
            let req = view::request(id, &name, &spec);
            let nodes = s.scheduler_view(&Default::default(), None);
            let evals = scheduler::explain(&nodes, &req, &s.meta.settings.placement);
            for e in &evals {
                let node_id = nodes.iter().find(|n| n.name == e.node).map(|n| n.id).unwrap();
                let mut trial = s.clone();
                let vm = Vm::placed(id, &name, spec.clone(), node_id, 1);
                let accepted =
                    matches!(trial.apply(&Command::CreateVm { vm: Box::new(vm), at_ms: 1 }), Response::Vm(_));
                // Rules only new decisions take (`scheduler::admits`) are
                // not `apply`'s: a replayed old entry must not be refused.
                if matches!(e.outcome, Outcome::Rejected(scheduler::Rejection::MoreVcpusThanHost { .. })) {
                    continue;
                }
                let feasible = matches!(e.outcome, Outcome::Feasible(_));
                assert_eq!(accepted, feasible, "seed {seed}: node {} {:?}", e.node, e.outcome);
                if accepted {
                    agreed_yes += 1;
                } else {
                    agreed_no += 1;
                }
            }
        }
    }
    // Both answers must actually occur, or the test proves nothing.
    assert!(agreed_yes > 100 && agreed_no > 100, "yes {agreed_yes}, no {agreed_no}");
}
