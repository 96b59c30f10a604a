use super::*;

fn net(name: &str, kind: NetworkKind, mtu: Option<u32>) -> Network {
    Network { name: name.into(), kind, required: false, mtu, created_at_ms: 0 }
}

fn eth0() -> Link {
    Link {
        index: 2,
        name: "eth0".into(),
        mtu: 1500,
        up: true,
        addresses: vec![Ipv4Addr::new(10, 0, 0, 1)],
        ..Default::default()
    }
}

fn want(networks: Vec<Network>) -> Wanted {
    Wanted {
        networks,
        local: Ipv4Addr::new(10, 0, 0, 1),
        peers: [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)].into(),
        unreachable_peers: vec![],
    }
}

/// What the host looks like once `steps` ran (a tiny kernel model).
fn run(have: &mut Observed, steps: &[Step]) {
    let mut next = have.links.iter().map(|l| l.index).max().unwrap_or(0) + 1;
    let mut add = |have: &mut Observed, name: &str, kind: &str, network: &str, mtu: u32, vni: Option<u32>| {
        have.links.push(Link {
            index: next,
            name: name.into(),
            kind: Some(kind.into()),
            alias: Some(alias_of(network)),
            mtu,
            up: kind == "bridge",
            vni,
            ..Default::default()
        });
        next += 1;
    };
    for s in steps {
        match s {
            Step::AddBridge { name, network, mtu } => add(have, name, "bridge", network, *mtu, None),
            Step::AddVxlan { name, network, vni, mtu, local } => {
                add(have, name, "vxlan", network, *mtu, Some(*vni));
                have.links.last_mut().unwrap().vxlan_local = Some(*local);
            }
            Step::AddVlan { name, network, mtu, .. } => add(have, name, "vlan", network, *mtu, None),
            Step::Attach { device, bridge, mtu } => {
                let b = have.link(bridge).map(|l| l.index);
                let l = have.links.iter_mut().find(|l| &l.name == device).unwrap();
                (l.master, l.up, l.mtu) = (b, true, *mtu);
            }
            Step::SetUp { name, .. } => have.links.iter_mut().find(|l| &l.name == name).unwrap().up = true,
            Step::FloodAdd { device, remote } => {
                have.flood.entry(device.clone()).or_default().insert(*remote);
            }
            Step::FloodDel { device, remote } => {
                have.flood.entry(device.clone()).or_default().remove(remote);
            }
            Step::Delete { name, .. } => {
                have.links.retain(|l| &l.name != name);
                have.flood.remove(name);
            }
            Step::Mark { name, network } => {
                have.links.iter_mut().find(|l| &l.name == name).unwrap().alias = Some(alias_of(network));
            }
        }
    }
}

#[test]
fn a_vxlan_network_gets_a_bridge_a_vxlan_port_and_a_flood_entry_per_peer_and_a_second_pass_changes_nothing() {
    let w = want(vec![net("blue", NetworkKind::Vxlan { vni: 100 }, None)]);
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    let (steps, status) = plan(&w, &have);
    assert_eq!(status["blue"], Status::Ready { mtu: 1450 }, "underlay 1500 less 50");
    let (bridge, port) = devices(&w.networks[0]);
    let port = port.unwrap();
    assert!(steps.contains(&Step::AddBridge { name: bridge.clone(), network: "blue".into(), mtu: 1450 }));
    assert!(steps.contains(&Step::AddVxlan {
        name: port.clone(),
        network: "blue".into(),
        vni: 100,
        local: w.local,
        mtu: 1450
    }));
    assert_eq!(steps.iter().filter(|s| matches!(s, Step::FloodAdd { .. })).count(), 2);
    run(&mut have, &steps);
    let (again, _) = plan(&w, &have);
    assert_eq!(again, vec![], "idempotent");
    // A host leaves, another joins: only the difference changes.
    let mut w2 = w.clone();
    w2.peers = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 4)].into();
    let (steps, _) = plan(&w2, &have);
    assert_eq!(
        steps,
        vec![
            Step::FloodAdd { device: port.clone(), remote: Ipv4Addr::new(10, 0, 0, 4) },
            Step::FloodDel { device: port, remote: Ipv4Addr::new(10, 0, 0, 3) },
        ]
    );
}

#[test]
fn removing_a_network_deletes_exactly_what_kvmesh_made_for_it() {
    let blue = net("blue", NetworkKind::Vxlan { vni: 100 }, None);
    let red = net("red", NetworkKind::Isolated, None);
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    // The operator's own bridge, with an alias of its own.
    have.links.push(Link {
        index: 50,
        name: "br0".into(),
        kind: Some("bridge".into()),
        alias: Some("uplink".into()),
        mtu: 1500,
        up: true,
        ..Default::default()
    });
    let (steps, _) = plan(&want(vec![blue.clone(), red.clone()]), &have);
    run(&mut have, &steps);
    let (steps, status) = plan(&want(vec![red]), &have);
    assert!(status.contains_key("red") && !status.contains_key("blue"));
    let (bridge, port) = devices(&blue);
    let deleted: Vec<&str> = steps
        .iter()
        .map(|s| match s {
            Step::Delete { name, .. } => name.as_str(),
            other => panic!("only deletes: {other:?}"),
        })
        .collect();
    assert_eq!(deleted, vec![port.unwrap().as_str(), bridge.as_str()], "port first, then its bridge");
}

#[test]
fn a_vlan_network_plans_uplink_dot_id_on_a_bridge_and_reports_a_kernel_without_8021q_as_unsupported() {
    let n = net("office", NetworkKind::Vlan { uplink: "eth0".into(), vlan: 100 }, None);
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    let (steps, status) = plan(&want(vec![n.clone()]), &have);
    assert_eq!(status["office"], Status::Ready { mtu: 1500 });
    let bridge = n.bridge();
    assert_eq!(
        steps,
        vec![
            Step::AddBridge { name: bridge.clone(), network: "office".into(), mtu: 1500 },
            Step::AddVlan { name: "eth0.100".into(), network: "office".into(), uplink: 2, vlan: 100, mtu: 1500 },
            Step::Attach { device: "eth0.100".into(), bridge, mtu: 1500 },
        ]
    );
    have.vlan_unsupported = Some("this kernel has no 802.1Q VLAN support".into());
    let (steps, status) = plan(&want(vec![n]), &have);
    assert_eq!(steps, vec![]);
    assert!(matches!(&status["office"], Status::Unsupported(why) if why.contains("802.1Q")));
    // A long uplink name gets a short device name of kvmesh's.
    let long = net("lab", NetworkKind::Vlan { uplink: "enp129s0f1np1".into(), vlan: 4094 }, None);
    assert!(devices(&long).1.unwrap().starts_with("kvl"));
}

#[test]
fn what_only_a_host_can_tell_is_that_hosts_status() {
    let have = Observed { links: vec![eth0()], ..Default::default() };
    let missing = net("office", NetworkKind::Vlan { uplink: "eth1".into(), vlan: 7 }, None);
    let too_big = net("jumbo", NetworkKind::Vxlan { vni: 7 }, Some(1500));
    let no_bridge = net("lan", NetworkKind::Bridge { bridge: "br9".into() }, None);
    let (steps, status) = plan(&want(vec![missing, too_big, no_bridge]), &have);
    assert_eq!(steps, vec![], "nothing made for a network that cannot be ready");
    assert!(matches!(&status["office"], Status::Error(e) if e.contains("uplink eth1 does not exist")), "{status:?}");
    assert!(matches!(&status["jumbo"], Status::Error(e) if e.contains("at most 1450")), "{status:?}");
    assert!(matches!(&status["lan"], Status::Error(e) if e.contains("br9 does not exist")), "{status:?}");
    // A loopback address cannot carry VXLAN between hosts.
    let mut w = want(vec![net("blue", NetworkKind::Vxlan { vni: 1 }, None)]);
    w.local = Ipv4Addr::LOCALHOST;
    assert!(matches!(&plan(&w, &have).1["blue"], Status::Error(e) if e.contains("127.0.0.1")));
}

#[test]
fn a_device_kvmesh_did_not_make_is_never_touched() {
    let n = net("blue", NetworkKind::Isolated, None);
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    // A device of that name with an alias of someone else's.
    let theirs = Link {
        index: 9,
        name: n.bridge(),
        kind: Some("bridge".into()),
        mtu: 1500,
        alias: Some("lab".into()),
        ..Default::default()
    };
    have.links.push(theirs);
    let (steps, status) = plan(&want(vec![n]), &have);
    assert_eq!(steps, vec![]);
    assert!(matches!(&status["blue"], Status::Error(e) if e.contains("did not make")));
    // A VLAN device named the classic way may be the operator's, alias or not.
    let vlan = net("office", NetworkKind::Vlan { uplink: "eth0".into(), vlan: 5 }, None);
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    have.links.push(Link {
        index: 9,
        name: "eth0.5".into(),
        kind: Some("vlan".into()),
        mtu: 1500,
        ..Default::default()
    });
    let (steps, status) = plan(&want(vec![vlan]), &have);
    assert!(steps.iter().all(|s| !matches!(s, Step::Delete { .. } | Step::Mark { .. })), "{steps:?}");
    assert!(matches!(&status["office"], Status::Error(e) if e.contains("did not make")), "{status:?}");
}

#[test]
fn a_name_reused_by_another_network_or_a_changed_device_is_made_again_deletes_first() {
    let blue = net("blue", NetworkKind::Vxlan { vni: 100 }, None);
    let w = want(vec![blue.clone()]);
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    let (steps, _) = plan(&w, &have);
    run(&mut have, &steps);
    // The host's address changed: the VXLAN device is made again, from the
    // new address, after the old one is deleted.
    let mut moved = w.clone();
    moved.local = Ipv4Addr::new(10, 0, 0, 9);
    have.links[0].addresses = vec![moved.local];
    let (steps, status) = plan(&moved, &have);
    assert_eq!(status["blue"], Status::Ready { mtu: 1450 });
    let port = devices(&blue).1.unwrap();
    let del = steps.iter().position(|s| matches!(s, Step::Delete { name, .. } if *name == port)).expect("deleted");
    let add =
        steps.iter().position(|s| matches!(s, Step::AddVxlan { local, .. } if *local == moved.local)).expect("made");
    assert!(del < add, "{steps:?}");
    run(&mut have, &steps);
    assert_eq!(plan(&moved, &have).0, vec![], "settled");
    // A VLAN network removed and another added with the same uplink and id
    // in one pass: the old device (marked for the old network) goes first.
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    let old = net("office", NetworkKind::Vlan { uplink: "eth0".into(), vlan: 7 }, None);
    let (steps, _) = plan(&want(vec![old]), &have);
    run(&mut have, &steps);
    let new = net("office2", NetworkKind::Vlan { uplink: "eth0".into(), vlan: 7 }, None);
    let (steps, status) = plan(&want(vec![new.clone()]), &have);
    assert_eq!(status["office2"], Status::Ready { mtu: 1500 }, "{steps:?}");
    assert!(matches!(&steps[0], Step::Delete { name, .. } if name == "eth0.7"), "{steps:?}");
    run(&mut have, &steps);
    assert_eq!(plan(&want(vec![new]), &have).0, vec![]);
}

#[test]
fn a_device_of_kvmeshs_naming_left_unmarked_by_a_crash_is_marked_not_refused() {
    let n = net("blue", NetworkKind::Isolated, None);
    let mut have = Observed { links: vec![eth0()], ..Default::default() };
    have.links.push(Link {
        index: 9,
        name: n.bridge(),
        kind: Some("bridge".into()),
        mtu: 1500,
        up: true,
        ..Default::default()
    });
    let (steps, status) = plan(&want(vec![n.clone()]), &have);
    assert_eq!(steps, vec![Step::Mark { name: n.bridge(), network: "blue".into() }]);
    assert_eq!(status["blue"], Status::Ready { mtu: 1500 });
}

#[test]
fn a_member_without_an_ipv4_address_splits_the_overlay_and_vxlan_says_so() {
    let mut w = want(vec![net("blue", NetworkKind::Vxlan { vni: 1 }, None)]);
    w.unreachable_peers = vec!["member n4's address [::1]:7000 gives no IPv4 address".into()];
    let have = Observed { links: vec![eth0()], ..Default::default() };
    let (steps, status) = plan(&w, &have);
    assert_eq!(steps, vec![]);
    assert!(matches!(&status["blue"], Status::Error(e) if e.contains("n4")), "{status:?}");
}
