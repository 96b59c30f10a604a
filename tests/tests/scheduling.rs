//! The scheduler through the real API on a 3-node cluster: anti-affinity,
//! refusals with a reason per node, policy changes, explanations and the
//! N+1 HA reservation check.

use anyhow::Result;
use kvmesh_tests::Cluster;
use serde_json::Value;

fn node_of(c: &Cluster, vm: &str) -> String {
    c.vm(0, vm).unwrap()["node"].as_str().unwrap().to_string()
}

#[test]
fn anti_affinity_spreads_replicas_and_refuses_a_fourth_with_reasons() -> Result<()> {
    let c = Cluster::three()?;
    for i in 1..=3 {
        c.cli_ok(i % 3, &["vm", "create", &format!("db{i}"), "--memory", "512", "--anti-affinity", "db"])?;
    }
    let mut hosts: Vec<String> = (1..=3).map(|i| node_of(&c, &format!("db{i}"))).collect();
    hosts.sort();
    assert_eq!(hosts, vec!["n1", "n2", "n3"]);
    let r = c.cli(1, &["vm", "create", "db4", "--memory", "512", "--anti-affinity", "db"]);
    assert!(!r.success);
    for n in ["n1", "n2", "n3"] {
        assert!(r.stderr.contains(&format!("{n}: anti-affinity group db already has 1 VM(s) here")), "{}", r.stderr);
    }
    // A full cluster: one line per node.
    let r = c.cli(2, &["vm", "create", "huge", "--memory", "20000"]);
    assert!(!r.success);
    for n in ["n1", "n2", "n3"] {
        assert!(r.stderr.contains(&format!("{n}: insufficient memory (need 20000 MiB")), "{}", r.stderr);
    }
    assert_eq!(c.vm_names(0)?.len(), 3, "refusals created nothing");
    Ok(())
}

#[test]
fn policy_changes_take_effect_and_explain_shows_every_node() -> Result<()> {
    let c = Cluster::three()?;
    let p = c.cli_ok(1, &["cluster", "policy", "show"])?;
    assert_eq!(p["policy"], "spread");
    assert_eq!(p["cpu_overcommit"], 4.0);
    assert_eq!(p["memory_overcommit"], 1.0);
    assert_eq!(p["balance"], false, "the automatic balance is off by default");
    // It is a setting of its own: kept when only the policy changes.
    assert_eq!(c.cli_ok(0, &["cluster", "policy", "set", "spread", "--balance", "on"])?["balance"], true);
    assert_eq!(c.cli_ok(2, &["cluster", "policy", "set", "spread"])?["balance"], true);
    assert_eq!(c.cli_ok(1, &["cluster", "policy", "set", "spread", "--balance", "off"])?["balance"], false);
    let bad = c.cli(0, &["cluster", "policy", "set", "spread", "--balance", "maybe"]);
    assert!(!bad.success && bad.stderr.contains("possible values: on, off"), "{}", bad.stderr);

    let p = c.cli_ok(1, &["cluster", "policy", "set", "pack", "--cpu-overcommit", "2"])?;
    assert_eq!((p["policy"].as_str(), p["cpu_overcommit"].as_f64()), (Some("pack"), Some(2.0)));
    c.cli_ok(0, &["vm", "create", "p1", "--memory", "1024"])?;
    c.cli_ok(2, &["vm", "create", "p2", "--memory", "1024"])?;
    c.cli_ok(1, &["vm", "create", "p3", "--memory", "1024"])?;
    let packed = node_of(&c, "p1");
    assert_eq!(node_of(&c, "p2"), packed, "pack fills one node first");
    assert_eq!(node_of(&c, "p3"), packed);

    c.cli_ok(2, &["cluster", "policy", "set", "spread"])?;
    c.cli_ok(0, &["vm", "create", "s1", "--memory", "1024"])?;
    assert_ne!(node_of(&c, "s1"), packed, "spread avoids the full node");
    // The ratio set with pack stays unless changed.
    assert_eq!(c.cli_ok(0, &["cluster", "policy", "show"])?["cpu_overcommit"], 2.0);

    // Dry run: every node's verdict, nothing created.
    // A dry run that fits nowhere exits 3 (a check that did not pass), with the verdicts on stdout.
    let r = c.cli(1, &["vm", "create", "maybe", "--memory", "2G", "--node-label", "ssd=true", "--dry-run"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let e: Value = serde_json::from_str(&r.stdout)?;
    let nodes = e["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(e["chosen"].is_null());
    assert!(nodes.iter().all(|n| n["feasible"] == false && n["reason"] == "missing label ssd=true"), "{e}");
    assert!(!c.vm_names(1)?.contains(&"maybe".to_string()));

    // Explain an existing VM: one chosen node, scores for the feasible ones.
    let e = c.cli_ok(2, &["vm", "explain", "s1"])?;
    let nodes: &Vec<Value> = e["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes.iter().filter(|n| n["chosen"] == true).count(), 1);
    assert!(nodes.iter().all(|n| n["feasible"] == true && n["score"].as_f64().is_some()));
    let table = c.cli_table(2, &["vm", "explain", "s1"]);
    assert!(table.stdout.contains("would be placed on"), "{}", table.stdout);

    let bad = c.cli(0, &["cluster", "policy", "set", "spread", "--memory-overcommit", "0"]);
    assert!(!bad.success && bad.stderr.contains("between 0.1 and 100"), "{}", bad.stderr);
    Ok(())
}

/// The worked N+1 example, on real nodes of 16 GiB each: a carries 8 + 6 GiB
/// of HA VMs, b 4 GiB of HA, c 12 GiB of non-HA. Losing a, the 8 GiB VM fits
/// on b and the 6 GiB one nowhere: short by 6 GiB, a is the worst case. A
/// fourth node restores N+1.
#[test]
fn cluster_capacity_reports_n_plus_1_on_a_worked_example() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("a", None, &["--label", "role=a"])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    c.spawn("b", Some(&first), &["--label", "role=b"])?;
    c.spawn("c", Some(&first), &["--label", "role=c"])?;
    c.wait_members(0, 3, 3)?;
    let nodes = c.cli_ok(1, &["node", "list"])?;
    assert_eq!(nodes[0]["labels"]["role"], "a", "{nodes}");
    for (name, mem, role, ha) in [
        ("a-big", "8192", "a", true),
        ("a-mid", "6144", "a", true),
        ("b-ha", "4096", "b", true),
        ("c-big", "12288", "c", false),
    ] {
        let mut args = vec!["vm", "create", name, "--memory", mem, "--prefer-label"];
        let pref = format!("role={role}");
        args.push(&pref);
        if ha {
            args.push("--ha");
        }
        c.cli_ok(0, &args)?;
        assert_eq!(node_of(&c, name), role);
    }
    let r = c.cli_ok(2, &["cluster", "capacity"])?;
    assert_eq!(r["n_plus_1"], false, "{r}");
    assert_eq!(r["worst"], "a");
    let host = |r: &Value, n: &str| r["hosts"].as_array().unwrap().iter().find(|h| h["node"] == n).unwrap().clone();
    let a = host(&r, "a");
    assert_eq!((a["ha_vms"].as_u64(), a["ha_memory_mib"].as_u64()), (Some(2), Some(14336)));
    assert_eq!(a["unplaceable"], serde_json::json!(["a-mid"]));
    assert_eq!(a["short_memory_mib"], 6144);
    assert_eq!(host(&r, "b")["unplaceable"], serde_json::json!([]));
    assert_eq!(host(&r, "c")["ha_vms"], 0);
    let table = c.cli_table(0, &["cluster", "capacity"]);
    assert!(table.stdout.contains("N+1: NO") && table.stdout.contains("worst case: losing a"), "{}", table.stdout);

    c.spawn("d", Some(&first), &[])?;
    c.wait_members(0, 3, 4)?;
    let r = c.cli_ok(0, &["cluster", "capacity"])?;
    assert_eq!(r["n_plus_1"], true, "{r}");
    Ok(())
}

/// `vm create --dry-run` names the node that the create after it uses: with
/// three equal nodes (every choice a tie-break), and again after one host
/// has gone silent (SIGSTOP: still `up` in the state, but the leader has not
/// heard from it for three heartbeats, so neither may choose it).
#[test]
fn dry_run_names_the_node_create_uses_also_with_a_silent_host() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let dry_then_create = |c: &Cluster, via: usize, name: &str| -> Result<(String, String)> {
        let dry = c.cli_ok(via, &["vm", "create", name, "--memory", "64", "--dry-run"])?;
        let predicted = dry["chosen"].as_str().unwrap_or_default().to_string();
        c.cli_ok(via, &["vm", "create", name, "--memory", "64"])?;
        Ok((predicted, node_of(c, name)))
    };
    for i in 0..4 {
        let (predicted, placed) = dry_then_create(&c, i % 3, &format!("tie{i}"))?;
        assert_eq!(predicted, placed, "tie{i}: dry-run and create disagree");
    }
    let silent = (leader + 1) % 3;
    let via = (leader + 2) % 3;
    let silent_name = c.nodes[silent].name.clone();
    c.nodes[silent].signal("STOP");
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let outcome = (0..3).map(|i| dry_then_create(&c, via, &format!("quiet{i}"))).collect::<Result<Vec<_>>>();
    c.nodes[silent].signal("CONT");
    for (i, (predicted, placed)) in outcome?.into_iter().enumerate() {
        assert_eq!(predicted, placed, "quiet{i}: dry-run and create disagree");
        assert_ne!(placed, silent_name, "quiet{i} was placed on the silent host");
    }
    Ok(())
}
