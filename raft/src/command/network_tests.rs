//! Networks and NICs in the state machine: definitions checked, removal
//! refused while in use, MACs allocated once and never twice.

use super::tests::{initialized, vm};
use super::*;
use crate::networks::{Mac, Network, NetworkKind, Nic};

fn vxlan(name: &str, vni: u32) -> Command {
    let network =
        Network { name: name.into(), kind: NetworkKind::Vxlan { vni }, required: false, mtu: None, created_at_ms: 0 };
    Command::AddNetwork { network, at_ms: 2 }
}

fn nic(network: &str, mac: Mac) -> Nic {
    Nic { network: network.into(), mac, model: "virtio".into() }
}

fn refusal(r: Response) -> String {
    match r {
        Response::Refused(r) => r.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn networks_are_checked_unique_and_not_removed_while_a_nic_uses_them() {
    let mut s = initialized();
    assert_eq!(s.apply(&vxlan("blue", 100)), Response::Done);
    assert!(refusal(s.apply(&vxlan("blue", 200))).contains("already exists"));
    assert!(refusal(s.apply(&vxlan("green", 100))).contains("already uses VNI 100"));
    let bad = Network {
        name: "v".into(),
        kind: NetworkKind::Vlan { uplink: "eth0".into(), vlan: 5000 },
        required: false,
        mtu: None,
        created_at_ms: 0,
    };
    assert!(refusal(s.apply(&Command::AddNetwork { network: bad, at_ms: 3 })).contains("1-4094"));
    let mut v = vm(10, "web", Some(1), 64);
    v.spec.nics = vec![nic("blue", Mac::default())];
    assert!(matches!(s.apply(&Command::CreateVm { vm: Box::new(v), at_ms: 4 }), Response::Vm(_)));
    let r = refusal(s.apply(&Command::RemoveNetwork { name: "blue".into(), at_ms: 5 }));
    assert!(r.contains("used by the NICs of web"), "{r}");
    assert!(s.meta.networks.contains_key("blue"), "nothing changed");
    let mac = s.vms[&10].spec.nics[0].mac;
    assert!(matches!(s.apply(&Command::RemoveNic { name: "web".into(), mac, at_ms: 6 }), Response::Vm(_)));
    assert_eq!(s.apply(&Command::RemoveNetwork { name: "blue".into(), at_ms: 7 }), Response::Done);
    assert!(refusal(s.apply(&Command::RemoveNetwork { name: "blue".into(), at_ms: 8 })).contains("no network named"));
}

#[test]
fn every_nic_gets_a_mac_of_its_own_and_keeps_it() {
    let mut s = initialized();
    s.apply(&vxlan("blue", 100));
    let mut v = vm(10, "web", Some(1), 64);
    v.spec.nics = vec![nic("blue", Mac::default()), nic("blue", Mac::default())];
    let Response::Vm(created) = s.apply(&Command::CreateVm { vm: Box::new(v), at_ms: 4 }) else { panic!() };
    let (a, b) = (created.spec.nics[0].mac, created.spec.nics[1].mac);
    assert!(!a.is_unset() && !b.is_unset() && a != b);
    assert_eq!(a.0[0] & 0b11, 0b10, "locally administered unicast");
    // Given MACs are checked against every VM's.
    let taken = refusal(s.apply(&Command::AddNic { name: "web".into(), nic: nic("blue", a), at_ms: 5 }));
    assert!(taken.contains("already used by web"), "{taken}");
    let mut other = vm(11, "db", Some(1), 64);
    other.spec.nics = vec![nic("blue", b)];
    assert!(refusal(s.apply(&Command::CreateVm { vm: Box::new(other), at_ms: 6 })).contains("already used"));
    assert!(refusal(s.apply(&Command::AddNic { name: "web".into(), nic: nic("red", Mac::default()), at_ms: 7 }))
        .contains("no network named \"red\""));
    // A placement change (an HA restart, a move) does not touch the spec.
    s.apply(&Command::NodeDown { id: 1, at_ms: 8 });
    assert_eq!(s.vms[&10].spec.nics[0].mac, a);
    // Replicas agree: the same commands give the same MACs.
    let mut replica = initialized();
    replica.apply(&vxlan("blue", 100));
    let mut v = vm(10, "web", Some(1), 64);
    v.spec.nics = vec![nic("blue", Mac::default()), nic("blue", Mac::default())];
    replica.apply(&Command::CreateVm { vm: Box::new(v), at_ms: 4 });
    assert_eq!(replica.vms[&10].spec.nics, s.vms[&10].spec.nics);
}
