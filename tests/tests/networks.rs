//! Logical networks on real hosts: three testbed hosts (each its own network
//! namespace and libvirtd), two VXLAN networks realized by the agents, and
//! real TCG guests with virtio NICs that ping each other. Everything is
//! checked from outside kvmesh: the guests' own consoles say who they reach
//! and which MAC they have, `ip`/`bridge` in each host's namespace say which
//! devices exist, `virsh` says where guests run.
//!
//! Needs root, the packages of scripts/libvirtd.sh and the test guest
//! (scripts/test.sh provides all three).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kvmesh_tests::testbed::{addr, cli, running_on, shared_guest, testbed, up3, HOSTS};
use kvmesh_tests::{run_cli, wait_for};
use serde_json::Value;

/// `ip ARGS` (or `bridge ARGS`) inside host `h`'s namespace.
fn in_host(h: &str, tool: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", &format!("kvmtb-{h}"), tool]).args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Host `h`'s links: name -> ifindex (names without the `@peer` suffix).
fn links(h: &str) -> BTreeMap<String, String> {
    in_host(h, "ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split(": ");
            let index = f.next()?.trim().to_string();
            let name = f.next()?.split('@').next()?.to_string();
            Some((name, index))
        })
        .collect()
}

/// The bridge and VXLAN device kvmesh makes for `network` (from `network get`).
fn devices_of(network: &str) -> Result<(String, String)> {
    let n = cli("h1", &["network", "get", network])?;
    let bridge = n["bridge"].as_str().context("bridge")?.to_string();
    // The VXLAN port is the bridge's only member.
    let port = links("h1")
        .keys()
        .find(|l| {
            in_host("h1", "ip", &["-o", "link", "show", l]).contains(&format!("master {bridge}"))
                && l.starts_with("kvx")
        })
        .cloned()
        .context("the VXLAN device on the bridge")?;
    Ok((bridge, port))
}

/// The last `KVMESH-PING <ip> ok|fail <n>` results of a guest, and its MAC.
struct Console {
    pings: Vec<(String, bool, u64)>,
    mac: Option<String>,
}

fn console(name: &str) -> Option<Console> {
    let r = run_cli(&addr("h1"), &["vm", "console", name, "-o", "json"]);
    let data = r.json().ok()?["data"].as_str()?.to_string();
    let pings = data
        .lines()
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix("KVMESH-PING ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()? == "ok", w.next()?.parse().ok()?))
        })
        .collect();
    let mac = data.lines().rev().find_map(|l| l.trim().strip_prefix("KVMESH-MAC ").map(str::to_string));
    Some(Console { pings, mac })
}

/// Whether `name` has pinged `target` successfully at least `times` times
/// after its ping number `after`.
fn reached(name: &str, target: &str, after: u64, times: usize) -> bool {
    console(name).is_some_and(|c| c.pings.iter().filter(|(t, ok, n)| t == target && *ok && *n > after).count() >= times)
}

/// A guest on `host` with one NIC on `network`, address `ip`, pinging `peer`.
fn guest(host: &str, name: &str, network: &str, ip: &str, peer: &str, ha: bool) -> Result<Value> {
    let label = format!("for-{name}=yes");
    cli("h1", &["node", "set", host, "--label", &label])?;
    let cmdline = format!("console=ttyS0 kvmesh.ip={ip}/24 kvmesh.ping={peer}");
    let mut args = vec!["vm", "create", name, "--memory", "128", "--node-label", &label, "--nic", network];
    args.extend(["--kernel", "guest-kernel", "--initrd", "guest-initrd", "--cmdline", &cmdline, "--wait"]);
    if ha {
        args.push("--ha");
    }
    let vm = cli("h1", &args)?;
    ensure!(vm["node"] == host, "{name} landed on {} instead of {host}", vm["node"]);
    for other in HOSTS.iter().filter(|h| **h != host) {
        cli("h1", &["node", "set", other, "--label", &label])?;
    }
    Ok(vm)
}

fn ready_everywhere(network: &str) -> Option<()> {
    let n = run_cli(&addr("h1"), &["network", "get", network]).json().ok()?;
    let hosts = n["hosts"].as_array()?;
    (hosts.len() == 3 && hosts.iter().all(|h| h["state"] == "ready")).then_some(())
}

#[test]
fn vxlan_networks_carry_guests_across_hosts_keep_macs_and_clean_up_exactly() -> Result<()> {
    let _teardown = up3()?;
    shared_guest()?;
    let before: BTreeMap<&str, BTreeMap<String, String>> = HOSTS.iter().map(|h| (*h, links(h))).collect();
    cli("h1", &["network", "add", "net100", "--kind", "vxlan", "--vni", "100"])?;
    cli("h1", &["network", "add", "net200", "--kind", "vxlan", "--vni", "200"])?;
    for net in ["net100", "net200"] {
        wait_for(&format!("{net} ready on every host"), Duration::from_secs(30), || ready_everywhere(net))?;
    }
    let n = cli("h2", &["network", "get", "net100"])?;
    assert_eq!(n["hosts"][0]["mtu"], 1450, "the testbed's 1500-byte links less VXLAN's 50: {n}");

    // From outside: each host has a VXLAN device with the VNI, on the
    // network's bridge, flooding to the other two hosts' addresses.
    let (bridge100, vx100) = devices_of("net100")?;
    for h in HOSTS {
        let d = in_host(h, "ip", &["-d", "link", "show", &vx100]);
        ensure!(d.contains("vxlan id 100") && d.contains(&format!("master {bridge100}")), "{h}: {d}");
        let fdb = in_host(h, "bridge", &["fdb", "show", "dev", &vx100]);
        let remotes: Vec<&str> = fdb.lines().filter(|l| l.starts_with("00:00:00:00:00:00")).collect();
        ensure!(remotes.len() == 2, "{h}: one flood entry per other host: {fdb}");
        for other in HOSTS.iter().filter(|o| **o != h) {
            let ip = addr(other);
            ensure!(fdb.contains(&format!("dst {}", &ip[..ip.len() - 5])), "{h} floods to {other}: {fdb}");
        }
    }

    // Guests: a1 (h1) and a2 (h2) on net100; b1 (h1) and b3 (h3) on net200
    // with addresses in the same subnet, so only the overlays keep them
    // apart: b3 reaches b1 and never a1.
    let a1 = guest("h1", "a1", "net100", "10.100.0.1", "10.100.0.2", false)?;
    let a2 = guest("h2", "a2", "net100", "10.100.0.2", "10.100.0.1", true)?;
    guest("h1", "b1", "net200", "10.100.0.4", "10.100.0.3", false)?;
    guest("h3", "b3", "net200", "10.100.0.3", "10.100.0.1,10.100.0.4", false)?;
    wait_for("a1 and a2 ping each other across hosts", Duration::from_secs(60), || {
        (reached("a1", "10.100.0.2", 0, 2) && reached("a2", "10.100.0.1", 0, 2)).then_some(())
    })?;
    let b3 = wait_for("b3 reached b1 and tried a1 five times", Duration::from_secs(60), || {
        let c = console("b3")?;
        let tried = c.pings.iter().filter(|(t, _, _)| t == "10.100.0.1").count();
        (tried >= 5 && c.pings.iter().any(|(t, ok, _)| t == "10.100.0.4" && *ok)).then_some(c)
    })?;
    ensure!(
        b3.pings.iter().all(|(t, ok, _)| t != "10.100.0.1" || !ok),
        "b3 (net200) never reaches a1 (net100): {:?}",
        b3.pings
    );

    // MACs: the cluster's, in libvirt's definition and inside the guest.
    let mac_a2 = a2["nics"][0]["mac"].as_str().context("a2's MAC")?.to_string();
    assert!(mac_a2.starts_with("0a:"), "{mac_a2}");
    assert_ne!(a1["nics"][0]["mac"], a2["nics"][0]["mac"]);
    wait_for("a2 reports its MAC", Duration::from_secs(10), || {
        (console("a2")?.mac.as_deref() == Some(mac_a2.as_str())).then_some(())
    })?;

    // A NIC added to a running guest is plugged in live, and unplugged
    // again, as libvirt on its host says.
    let a1_domain = a1["domain"].as_str().context("a1's domain")?.to_string();
    let added = cli("h1", &["vm", "nic", "add", "a1", "net200"])?;
    let extra = added["nics"][1]["mac"].as_str().context("the new NIC's MAC")?.to_string();
    let (bridge200, _) = devices_of("net200")?;
    wait_for("the NIC plugged into the running a1", Duration::from_secs(20), || {
        let l = kvmesh_tests::testbed::virsh_on("h1", &["domiflist", &a1_domain]);
        (l.contains(&extra) && l.contains(&bridge200)).then_some(())
    })?;
    cli("h1", &["vm", "nic", "remove", "a1", &extra])?;
    wait_for("the NIC unplugged from a1", Duration::from_secs(20), || {
        (!kvmesh_tests::testbed::virsh_on("h1", &["domiflist", &a1_domain]).contains(&extra)).then_some(())
    })?;
    ensure!(running_on("h1").contains(&a1_domain), "a1 ran on through it");

    // An agent restart changes nothing that exists.
    let kvm_links = |h: &str| -> BTreeMap<String, String> {
        links(h).into_iter().filter(|(n, _)| n.starts_with("kvb") || n.starts_with("kvx")).collect()
    };
    let made_h1 = kvm_links("h1");
    assert_eq!(made_h1.len(), 4, "a bridge and a VXLAN device per network: {made_h1:?}");
    let fdb_h1 = in_host("h1", "bridge", &["fdb", "show", "dev", &vx100]);
    let changes = || kvmesh_tests::testbed::log("h1").matches("network device changed").count();
    let changed_before = changes();
    testbed(&["signal", "h1", "daemon", "KILL"])?;
    testbed(&["start-daemon", "h1"])?;
    wait_for("h1 reports its networks again", Duration::from_secs(60), || ready_everywhere("net100"))?;
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(kvm_links("h1"), made_h1, "same devices, same indexes");
    assert_eq!(in_host("h1", "bridge", &["fdb", "show", "dev", &vx100]), fdb_h1, "same flood entries");
    assert_eq!(changes(), changed_before, "the restarted agent changed no device");
    let last = console("a1").and_then(|c| c.pings.last().map(|p| p.2)).unwrap_or(0);
    wait_for("a1 still reaches a2", Duration::from_secs(20), || reached("a1", "10.100.0.2", last, 1).then_some(()))?;

    // HA restart: h2 dies with a2; a2 comes back elsewhere with its MAC,
    // and a1 reaches it again.
    testbed(&["kill-host", "h2"])?;
    let moved = wait_for("a2 running again on another host", Duration::from_secs(60), || {
        let v = run_cli(&addr("h1"), &["vm", "get", "a2"]).json().ok()?;
        let on = v["node"].as_str()?.to_string();
        (v["state"] == "running" && on != "h2" && running_on(&on).contains(&v["domain"].as_str()?.to_string()))
            .then_some(on)
    })?;
    let a2_now = cli("h1", &["vm", "get", "a2"])?;
    assert_eq!(a2_now["nics"][0]["mac"], mac_a2.as_str(), "the cluster kept the MAC");
    let iflist = kvmesh_tests::testbed::virsh_on(&moved, &["domiflist", a2_now["domain"].as_str().unwrap_or_default()]);
    ensure!(iflist.contains(&mac_a2) && iflist.contains(&bridge100), "libvirt on {moved}: {iflist}");
    let last = console("a1").and_then(|c| c.pings.last().map(|p| p.2)).unwrap_or(0);
    wait_for("a1 reaches the restarted a2, and a2 sees its old MAC", Duration::from_secs(90), || {
        let mac_ok = console("a2")?.mac.as_deref() == Some(mac_a2.as_str());
        (mac_ok && reached("a1", "10.100.0.2", last, 2) && reached("a2", "10.100.0.1", 0, 1)).then_some(())
    })?;
    testbed(&["start-host", "h2"])?;
    wait_for("h2 back", Duration::from_secs(60), || ready_everywhere("net200"))?;

    // Removing a network that NICs use is refused and changes nothing;
    // once free, every host deletes exactly what kvmesh made for it.
    let r = run_cli(&addr("h1"), &["network", "remove", "net200"]);
    ensure!(!r.success && r.stderr.contains("b1") && r.stderr.contains("b3"), "{}", r.stderr);
    cli("h1", &["vm", "delete", "b1", "--yes", "--wait"])?;
    cli("h1", &["vm", "delete", "b3", "--yes", "--wait"])?;
    cli("h1", &["network", "remove", "net200"])?;
    wait_for("net200's devices gone from every host", Duration::from_secs(30), || {
        HOSTS.iter().all(|h| !links(h).contains_key(&bridge200)).then_some(())
    })?;
    for h in HOSTS {
        let now = links(h);
        let made: Vec<&String> = now.keys().filter(|n| n.starts_with("kvb") || n.starts_with("kvx")).collect();
        ensure!(made.len() == 2, "{h}: only net100's bridge and VXLAN device remain: {made:?}");
        for name in before[h].keys() {
            ensure!(now.contains_key(name), "{h}: {name}, not kvmesh's, is still there");
        }
    }

    // What only a host can tell is that host's status, never a crash.
    cli("h1", &["network", "add", "office", "--kind", "vlan", "--uplink", "eth0", "--vlan", "10"])?;
    cli("h1", &["network", "add", "nowhere", "--kind", "vlan", "--uplink", "eth9", "--vlan", "11"])?;
    cli("h1", &["network", "add", "jumbo", "--kind", "vxlan", "--vni", "300", "--mtu", "9000", "--required"])?;
    let status = |net: &str| -> Option<Vec<(String, String)>> {
        let n = run_cli(&addr("h1"), &["network", "get", net]).json().ok()?;
        let hosts: Vec<(String, String)> = n["hosts"]
            .as_array()?
            .iter()
            .map(|h| {
                (
                    h["state"].as_str().unwrap_or_default().to_string(),
                    h["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (hosts.len() == 3 && hosts.iter().all(|(s, _)| s != "unknown")).then_some(hosts)
    };
    let office = wait_for("the VLAN network's status", Duration::from_secs(30), || status("office"))?;
    // This machine's kernel has no 802.1Q; on one that has, the device is there.
    let no_8021q = office.iter().all(|(s, m)| s == "unsupported" && m.contains("802.1Q"));
    let made = office.iter().all(|(s, _)| s == "ready")
        && HOSTS
            .iter()
            .all(|h| in_host(h, "ip", &["-d", "link", "show", "eth0.10"]).contains("vlan protocol 802.1Q id 10"));
    ensure!(no_8021q || made, "{office:?}");
    let nowhere = wait_for("the missing uplink's status", Duration::from_secs(30), || status("nowhere"))?;
    ensure!(nowhere.iter().all(|(s, m)| s == "error" && m.contains("uplink eth9 does not exist")), "{nowhere:?}");
    let jumbo = wait_for("the jumbo network's status", Duration::from_secs(30), || status("jumbo"))?;
    ensure!(jumbo.iter().all(|(s, m)| s == "error" && m.contains("too big for the underlay")), "{jumbo:?}");
    // A required network ready nowhere: no host takes a new VM, and the
    // scheduler says why.
    let r = run_cli(&addr("h1"), &["vm", "create", "x", "--memory", "64", "--dry-run"]);
    ensure!(r.code == Some(3) && r.stdout.contains("required network jumbo"), "{} {}", r.stdout, r.stderr);
    let nodes = cli("h1", &["node", "list"])?;
    ensure!(nodes.to_string().contains("too big for the underlay"), "node list shows it: {nodes}");
    for net in ["office", "nowhere", "jumbo"] {
        cli("h1", &["network", "remove", net])?;
    }
    Ok(())
}
