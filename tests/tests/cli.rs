//! The operator's CLI through the real binary: state that tells the truth
//! (uninitialized nodes, dead and silent hosts), waits, filters and views,
//! one size syntax, "did you mean", exit codes for scripts, endpoint lists
//! and errors that name the endpoint, confirmations, events that follow a
//! node's death, quiet logs and help.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kvmesh_tests::{client_config_for, kvmesh_bin, wait_for, Cluster};
use serde_json::Value;

/// The CLI with node `endpoint`'s client config and any endpoint string.
fn cli_with(config_of: &str, endpoint: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(kvmesh_bin());
    if let Some(config) = client_config_for(config_of) {
        command.env("KVMESH_CLIENT_CONFIG", config);
    }
    command.args(["--endpoint", endpoint]).args(args).stdin(Stdio::null()).output().expect("run kvmesh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn an_uninitialized_node_says_so_on_every_command_and_exits_non_zero() -> Result<()> {
    let mut c = Cluster::new();
    c.insecure = true;
    c.spawn("lonely", None, &[])?;
    for args in [
        vec!["vm", "list"],
        vec!["node", "list"],
        vec!["events"],
        vec!["cluster", "capacity"],
        vec!["vm", "create", "x", "--memory", "64"],
        vec!["cluster", "status"],
    ] {
        let r = c.cli_table(0, &args);
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("not in a cluster yet") && r.stderr.contains("cluster init"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("--join"), "{args:?} should say how to join: {}", r.stderr);
    }
    // And once initialized, the same commands work.
    c.cli_ok(0, &["cluster", "init"])?;
    assert_eq!(c.cli_ok(0, &["vm", "list"])?, Value::Array(vec![]));
    Ok(())
}

/// Two small hosts: 4 CPUs and 8 GiB each (given as a size).
fn small_pair() -> Result<Cluster> {
    let mut c = Cluster::new();
    let small = ["--cpus", "4", "--memory-mib", "8G"];
    c.spawn("n1", None, &small)?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    c.spawn("n2", Some(&first), &small)?;
    c.wait_members(0, 2, 2)?;
    kvmesh_tests::wait_storage_active(&first, "local", 2)?;
    c.cli_ok(0, &["cluster", "policy", "set", "spread"])?;
    Ok(c)
}

#[test]
fn input_is_read_one_way_and_mistakes_get_reasons_and_change_nothing() -> Result<()> {
    let c = small_pair()?;
    let nodes = c.cli_ok(0, &["node", "list"])?;
    assert!(nodes.as_array().unwrap().iter().all(|n| n["memory_mib"] == 8192), "serve --memory-mib 8G: {nodes}");
    // One size syntax: a unit, or a bare number of MiB.
    assert_eq!(c.cli_ok(0, &["vm", "create", "web1", "--memory", "1.5G"])?["memory_mib"], 1536);
    assert_eq!(c.cli_ok(1, &["vm", "create", "web2", "--memory", "256"])?["memory_mib"], 256);
    let r = c.cli(0, &["vm", "create", "bad", "--memory", "100K"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("whole MiB"), "{}", r.stderr);
    let r = c.cli(0, &["vm", "create", "bad", "--memory", "8X"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("512M, 8G or 1.5T"), "{}", r.stderr);

    // Unknown names: said so, with the nearest known one.
    let r = c.cli(0, &["vm", "get", "wbe1"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains(r#"no VM named "wbe1" (did you mean "web1"?)"#), "{}", r.stderr);
    let r = c.cli(1, &["vm", "stop", "web11"]);
    assert!(r.stderr.contains("did you mean"), "{}", r.stderr);
    let r = c.cli(0, &["vm", "create", "pinned", "--memory", "64", "--node", "n7"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains(r#"no node named "n7" (did you mean "n"#), "{}", r.stderr);
    assert_eq!(r.stderr.matches("pinned to").count(), 0, "one reason, not one per node: {}", r.stderr);
    let r = c.cli(0, &["node", "get", "n3"]);
    assert!(r.stderr.contains("did you mean"), "{}", r.stderr);

    // Bigger than any host: refused with the reason, exit 3 (not placeable).
    let r = c.cli(0, &["vm", "create", "wide", "--vcpus", "8", "--memory", "64"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("8 vCPUs, more than this host's 4 CPUs"), "{}", r.stderr);
    let r = c.cli(0, &["vm", "create", "roomy", "--memory", "64", "--disk", "100T"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("no host has that much free there"), "{}", r.stderr);
    let r = c.cli(0, &["vm", "create", "huge", "--memory", "9G", "--dry-run"]);
    assert_eq!(r.code, Some(3), "an unplaceable dry run is a failed check: {}", r.stderr);
    let names: Vec<String> = c.vm_names(0)?;
    assert_eq!(names, vec!["web1".to_string(), "web2".to_string()], "refusals created nothing");

    // N+1: an HA VM that breaks it is a warning, refused with --strict.
    c.cli_ok(0, &["vm", "create", "ha1", "--memory", "5G", "--ha"])?;
    let ok = c.cli(0, &["cluster", "capacity", "--check"]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let r = c.cli(0, &["vm", "create", "ha2", "--memory", "5G", "--ha"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("warning: with HA VM ha2 the cluster is no longer N+1"), "{}", r.stderr);
    let r = c.cli(1, &["cluster", "capacity", "--check"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("N+1 fails"), "{}", r.stderr);
    let r = c.cli(1, &["vm", "create", "ha3", "--memory", "512", "--ha", "--strict"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("refused (--strict)"), "{}", r.stderr);
    assert!(!c.vm_names(0)?.contains(&"ha3".to_string()));
    Ok(())
}

/// Answers every connection with an HTTP error, as a web server would.
fn http_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    addr
}

/// Accepts connections and never says a word.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    addr
}

#[test]
fn connection_errors_name_the_endpoint_lists_fall_through_and_pipes_close_quietly() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let node = c.addr(0);

    // An HTTP server: a clear error naming it, exit 1, never a silent 141.
    let http = http_server();
    let out = cli_with(&node, &http, &["vm", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&http) && text(&out.stderr).contains("without TLS"), "{}", text(&out.stderr));
    let out = cli_with(&node, &http, &["--insecure", "vm", "list"]);
    assert_eq!(out.status.code(), Some(1), "plaintext against HTTP: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&http), "{}", text(&out.stderr));
    // Plaintext has no handshake: a list still moves past what is not kvmesh.
    let mut plain = Cluster::new();
    plain.insecure = true;
    plain.spawn("p1", None, &[])?;
    plain.cli_ok(0, &["cluster", "init"])?;
    let silent_first = format!("{},{}", silent_server(), plain.addr(0));
    let out = cli_with(&plain.addr(0), &silent_first, &["--insecure", "-o", "json", "cluster", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A silent endpoint: named within seconds, not after the request deadline.
    let silent = silent_server();
    let started = Instant::now();
    let out = cli_with(&node, &silent, &["vm", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&silent), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "named long before the 30 s deadline: {:?}",
        started.elapsed()
    );

    // A list: the dead and the silent one are skipped, the node answers.
    let list = format!("127.0.0.1:1,{silent},{node}");
    let out = cli_with(&node, &list, &["-o", "json", "cluster", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all_dead = cli_with(&node, &format!("127.0.0.1:1,{silent}"), &["vm", "list"]);
    let e = text(&all_dead.stderr);
    assert!(e.contains("127.0.0.1:1 (") && e.contains(&format!("{silent} (")), "each endpoint with its cause: {e}");

    // A client config with a list works as the flag does.
    let config = std::fs::read_to_string(client_config_for(&node).unwrap())?;
    let listed = c.dir.path().join("listed.toml");
    let with_list = config.replace(&format!("endpoint = \"{node}\""), &format!("endpoint = \"127.0.0.1:1,{node}\""));
    assert_ne!(with_list, config, "the config names its endpoint");
    std::fs::write(&listed, with_list)?;
    let out = Command::new(kvmesh_bin()).args(["--client-config"]).arg(&listed).args(["node", "list"]).output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // stdout closed before the answer: exit 141, quietly.
    for i in 0..20 {
        c.cli_ok(0, &["vm", "create", &format!("p{i}"), "--memory", "1"])?;
    }
    let mut child = Command::new(kvmesh_bin())
        .env("KVMESH_CLIENT_CONFIG", client_config_for(&node).unwrap())
        .args(["--endpoint", &node, "vm", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(141), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "quietly: {}", text(&out.stderr));
    Ok(())
}

#[test]
fn operations_wait_ask_before_destroying_and_views_show_everything() -> Result<()> {
    let c = Cluster::three()?;
    c.cli_ok(0, &["vm", "create", "keep", "--memory", "64", "--vcpus", "2", "--priority", "7", "--wait"])?;
    c.cli_ok(0, &["vm", "create", "ha1", "--memory", "128", "--ha", "--anti-affinity", "g", "--wait"])?;
    // A stopped VM on the host to drain: it moves off too, and does not
    // hold the drain up once its host has let it go.
    c.cli_ok(1, &["vm", "create", "idle", "--memory", "32", "--node", "n2"])?;
    c.cli_ok(1, &["vm", "stop", "idle", "--wait"])?;

    // A running VM is not deleted without a confirmation; a script says --yes.
    let r = c.cli(1, &["vm", "delete", "keep"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--yes") && r.stderr.contains("running"), "{}", r.stderr);
    assert_eq!(c.vm(0, "keep")?["state"], "running", "nothing changed");
    let r = c.cli(0, &["cluster", "remove", "n3", "--force"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(c.cli_ok(0, &["node", "list"])?.as_array().unwrap().len(), 3);

    // --wait returns when the work is done.
    let v = c.cli_ok(2, &["vm", "stop", "keep", "--wait"])?;
    assert_eq!(v["state"], "stopped");
    let v = c.cli_ok(2, &["vm", "start", "keep", "--wait"])?;
    assert_eq!(v["state"], "running");
    let v = c.cli_ok(1, &["vm", "restart", "keep", "--wait"])?;
    assert_eq!(v["state"], "running");
    let d = c.cli_ok(0, &["vm", "delete", "keep", "--yes", "--wait"])?;
    assert_eq!(d, serde_json::json!({"deleted": "keep", "done": true}));
    let r = c.cli(0, &["vm", "get", "keep"]);
    assert!(!r.success && r.stderr.contains("no VM named"), "gone when --wait returned: {}", r.stderr);
    c.cli_ok(0, &["vm", "create", "keep", "--memory", "64"])?;
    // Without --wait, a delete says it is under way, and a create of the
    // same name while it lasts says why it is refused. Its host is frozen
    // (SIGSTOP), so the deletion lasts.
    let leader = c.leader_index_no_mut()?;
    let host = (leader + 1) % 3;
    let host_name = c.nodes[host].name.clone();
    c.cli_ok(leader, &["vm", "create", "cyc", "--memory", "16", "--node", &host_name, "--wait"])?;
    c.nodes[host].signal("STOP");
    let d = c.cli_ok(leader, &["vm", "delete", "cyc", "--yes"])?;
    assert_eq!(d["done"], false);
    let again = c.cli(leader, &["vm", "create", "cyc", "--memory", "16"]);
    c.nodes[host].signal("CONT");
    assert!(!again.success && again.stderr.contains("still being deleted"), "{}", again.stderr);
    wait_for("cyc deleted by its thawed host", Duration::from_secs(30), || {
        c.cli(leader, &["vm", "get", "cyc"]).stderr.contains("no VM named").then_some(())
    })?;
    c.cli_ok(leader, &["vm", "create", "cyc", "--memory", "16", "--wait"])?;

    // A drain waits for maintenance.
    let n = c.cli_ok(0, &["node", "drain", "n2", "--wait", "--timeout", "60"])?;
    assert_eq!(n["state"], "maintenance");
    assert_eq!(c.cli_ok(0, &["vm", "list", "--node", "n2"])?, Value::Array(vec![]), "nothing left on n2");
    c.cli_ok(0, &["node", "activate", "n2"])?;

    // Filters and order.
    let ha = c.cli_ok(0, &["vm", "list", "--ha"])?;
    assert_eq!(ha.as_array().unwrap().iter().map(|v| v["name"].clone()).collect::<Vec<_>>(), vec!["ha1"]);
    let stopped = c.cli_ok(0, &["vm", "list", "--state", "stopped"])?;
    assert_eq!(stopped.as_array().unwrap().iter().map(|v| v["name"].clone()).collect::<Vec<_>>(), vec!["idle"]);
    // Moved off its drained host, it still starts (somewhere that has room).
    assert_eq!(c.cli_ok(0, &["vm", "start", "idle", "--wait"])?["state"], "running");
    c.cli_ok(0, &["vm", "stop", "idle", "--wait"])?;
    let by_memory = c.cli_ok(0, &["vm", "list", "--sort", "memory"])?;
    let memory: Vec<u64> = by_memory.as_array().unwrap().iter().map(|v| v["memory_mib"].as_u64().unwrap()).collect();
    assert!(memory.windows(2).all(|w| w[0] >= w[1]), "{memory:?}");
    let r = c.cli(0, &["vm", "list", "--state", "sleeping"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let wide = kvmesh_tests::run_cli_as(&c.addr(0), "wide", &["vm", "list"]).stdout;
    let header = wide.lines().next().unwrap_or_default();
    assert!(header.contains("PRIORITY") && header.contains("DISKS") && header.contains("ID"), "{wide}");
    let narrow = c.cli_table(0, &["vm", "list"]).stdout;
    assert!(!narrow.lines().next().unwrap_or_default().contains("PRIORITY"), "{narrow}");

    // One VM: every setting and where it really runs; times with their zone.
    let page = wait_for("ha1 reported running by its host", Duration::from_secs(10), || {
        let page = c.cli_table(1, &["vm", "get", "ha1"]).stdout;
        page.contains("(its host reports it running)").then_some(page)
    })?;
    for field in [
        "state:",
        "runs on:",
        "vcpus:",
        "memory:",
        "ha:",
        "priority:",
        "pin:",
        "needs:",
        "groups:",
        "boot:",
        "nic:",
        "created:",
    ] {
        assert!(page.contains(field), "vm get lacks {field}: {page}");
    }
    assert!(page.contains("anti-affinity g"), "{page}");
    let created = page.lines().find(|l| l.starts_with("created:")).unwrap();
    assert!(
        created.trim_end().rsplit(' ').next().is_some_and(|z| z.starts_with('+') || z.starts_with('-')),
        "{created}"
    );
    // A VM's own labels: set, filtered on, changed, shown.
    c.cli_ok(0, &["vm", "create", "tagged", "--memory", "16", "--label", "app=web", "--label", "tier=1"])?;
    let web = c.cli_ok(1, &["vm", "list", "--label", "app=web"])?;
    assert_eq!(web.as_array().unwrap().iter().map(|v| v["name"].clone()).collect::<Vec<_>>(), vec!["tagged"]);
    let v = c.cli_ok(2, &["vm", "set", "tagged", "--label", "tier=2", "--unlabel", "app"])?;
    assert_eq!(v["labels"], serde_json::json!({"tier": "2"}), "{v}");
    assert_eq!(c.cli_ok(0, &["vm", "list", "--label", "app=web"])?, Value::Array(vec![]));
    let r = c.cli(0, &["vm", "set", "tagged", "--label", "bad"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(c.cli_table(0, &["vm", "get", "tagged"]).stdout.contains("tier=2"));
    // Node views: labels shown, and a host by name.
    c.cli_ok(0, &["node", "set", "n1", "--label", "rack=a"])?;
    let table = c.cli_table(0, &["node", "list"]).stdout;
    assert!(table.lines().next().unwrap_or_default().contains("LABELS") && table.contains("rack=a"), "{table}");
    assert_eq!(c.cli_ok(2, &["node", "get", "n1"])?["labels"]["rack"], "a");
    Ok(())
}

/// Lines an `events --follow -o json` child prints, gathered by a thread.
fn follow(config_of: &str, endpoints: &str) -> Result<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
    let mut child = Command::new(kvmesh_bin())
        .env("KVMESH_CLIENT_CONFIG", client_config_for(config_of).context("no client config")?)
        .args(["--endpoint", endpoints, "-o", "json", "events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

#[test]
fn events_filter_and_follow_and_dead_nodes_never_look_alive() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let victim = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    let victim_name = c.nodes[victim].name.clone();
    c.cli_ok(leader, &["node", "set", &victim_name, "--label", "victim=yes"])?;
    c.cli_ok(leader, &["vm", "create", "web1", "--memory", "64", "--prefer-label", "victim=yes", "--wait"])?;
    assert_eq!(c.vm(leader, "web1")?["node"], victim_name.as_str());
    c.cli_ok(survivor, &["vm", "create", "web2", "--memory", "64", "--wait"])?;

    // Filters, a header, structured JSON.
    let lines = |args: &[&str]| -> Result<Vec<Value>> {
        let r = c.cli(leader, args);
        anyhow::ensure!(r.success, "{}", r.stderr);
        r.stdout.lines().map(|l| serde_json::from_str(l).context("an event per line")).collect()
    };
    let web1 = lines(&["events", "--vm", "web1"])?;
    assert!(!web1.is_empty());
    assert!(web1.iter().all(|e| e["subject"]["kind"] == "vm" && e["subject"]["name"] == "web1"), "{web1:?}");
    let created = web1.iter().find(|e| e["message"].as_str().unwrap().contains("created")).unwrap();
    let running = web1.iter().find(|e| e["message"].as_str().unwrap().contains("is running on")).unwrap();
    assert_eq!(running["node"], victim_name.as_str(), "the host a VM event names: {running}");
    assert!(created["principal"].as_str().unwrap().contains("admin"), "{created}");
    assert!(created["time"].as_str().is_some() && created["seq"].as_u64().is_some(), "{created}");
    assert_eq!(lines(&["events", "--limit", "2"])?.len(), 2);
    let on_victim = lines(&["events", "--node", &victim_name])?;
    assert!(on_victim.iter().any(|e| e["message"].as_str().unwrap().contains("web1")), "{on_victim:?}");
    assert!(lines(&["events", "--since", "2000-01-01 00:00"])?.len() >= web1.len());
    assert!(lines(&["events", "--since", "2099-01-01 00:00"])?.is_empty());
    let table = c.cli_table(leader, &["events", "--limit", "1"]).stdout;
    assert!(table.lines().next().unwrap_or_default().trim_start().starts_with("SEQ"), "{table}");
    let fencing_warnings = (0..3).flat_map(|i| c.log_text(i).lines().map(str::to_string).collect::<Vec<_>>());
    let fencing_warnings: Vec<String> = fencing_warnings.filter(|l| l.contains("WARN") && l.contains("fenc")).collect();
    assert!(fencing_warnings.is_empty(), "a normal start warns of no fencing: {fencing_warnings:?}");

    // Follow, connected to the victim first, starting at now.
    let order = [victim, leader, survivor].map(|i| c.addr(i)).join(",");
    let (mut child, rx) = follow(&c.addr(leader), &order)?;
    std::thread::sleep(Duration::from_secs(2));

    // The victim dies: unreachable at once, without its stale guests, and
    // down later; the follower moves to the next endpoint.
    let victim_port = c.addr(victim).rsplit(':').next().unwrap().to_string();
    let before_kill = c.log_text(leader).len();
    c.nodes[victim].kill();
    let killed = Instant::now();
    let dead = wait_for("the victim unreachable", Duration::from_secs(15), || {
        let nodes = c.cli_ok(survivor, &["node", "list"]).ok()?;
        let n = nodes.as_array()?.iter().find(|n| n["name"] == victim_name.as_str())?.clone();
        (n["reachable"] == false).then_some(n)
    })?;
    assert!(dead["running_vms"].is_null(), "a silent host shows no guests: {dead}");
    let status = c.cli_ok(survivor, &["cluster", "status"])?;
    let member =
        status["members"].as_array().unwrap().iter().find(|m| m["name"] == victim_name.as_str()).unwrap().clone();
    assert_eq!(member["reachable"], false, "{status}");
    assert!(c.cli_table(survivor, &["cluster", "status"]).stdout.contains("UNREACHABLE"));
    let down = wait_for("the victim down", Duration::from_secs(30), || {
        let nodes = c.cli_ok(survivor, &["node", "list"]).ok()?;
        let n = nodes.as_array()?.iter().find(|n| n["name"] == victim_name.as_str())?.clone();
        (n["state"] == "down").then_some(n)
    })?;
    assert!(down["running_vms"].is_null(), "a dead host shows no guests: {down}");
    let table = c.cli_table(survivor, &["node", "list"]).stdout;
    let row = table.lines().find(|l| l.starts_with(victim_name.as_str())).unwrap_or_default();
    assert!(row.contains("down") && !row.contains("vCPU"), "{table}");

    // Its VM is recovered, and --wait returns once it runs elsewhere.
    let vm = c.cli_ok(survivor, &["vm", "recover", "web1", "--wait", "--timeout", "60"])?;
    assert_eq!(vm["state"], "running");
    assert_ne!(vm["node"], victim_name.as_str());
    let mut seen: Vec<String> = Vec::new();
    let got = wait_for("the follower to see the recovery", Duration::from_secs(30), || {
        seen.extend(rx.try_iter());
        seen.iter().any(|l| l.contains("web1") && l.contains("placed on")).then(|| seen.clone())
    });
    let _ = child.kill();
    let _ = child.wait();
    let got = got?;
    assert!(!got.iter().any(|l| l.contains("web2")), "follow starts at now: {got:?}");

    // A down peer is a few folded lines, not several a second.
    let log = c.log_text(leader);
    let after = &log[before_kill.min(log.len())..];
    let noisy =
        after.lines().filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains(&victim_port)).count();
    let seconds = killed.elapsed().as_secs().max(1);
    eprintln!("{noisy} warnings and errors about the dead peer in {seconds} s");
    // Each kind (about six: replication, heartbeat, RPC, read confirmation)
    // once per ten seconds; unfolded, Raft's retries write dozens a second.
    assert!(noisy as u64 <= 8 + seconds, "{noisy} warnings about the dead peer in {seconds} s:\n{after}");
    Ok(())
}

#[test]
fn help_has_examples_and_serve_shows_only_its_own_flags() -> Result<()> {
    let help = |args: &[&str]| text(&Command::new(kvmesh_bin()).args(args).output().unwrap().stdout);
    let serve = help(&["serve", "--help"]);
    assert!(serve.contains("--join-token") && serve.contains("Examples:"), "{serve}");
    assert!(!serve.contains("--endpoint") && !serve.contains("--client-config"), "{serve}");
    let top = help(&["--help"]);
    assert!(top.contains("Exit codes") && top.contains("--endpoint"), "{top}");
    for group in [
        vec!["--help"],
        vec!["cluster", "--help"],
        vec!["cluster", "token", "--help"],
        vec!["cluster", "policy", "--help"],
        vec!["node", "--help"],
        vec!["vm", "--help"],
        vec!["vm", "disk", "--help"],
        vec!["vm", "snapshot", "--help"],
        vec!["storage", "--help"],
        vec!["image", "--help"],
        vec!["token", "--help"],
        vec!["cert", "--help"],
    ] {
        let out = help(&group);
        let commands = out.lines().skip_while(|l| !l.starts_with("Commands:")).skip(1).take_while(|l| !l.is_empty());
        for line in commands {
            assert!(line.split_whitespace().count() >= 2, "{group:?}: {line:?} has no description");
        }
    }
    for leaf in [
        ["vm", "create"],
        ["vm", "list"],
        ["vm", "delete"],
        ["events", ""],
        ["vm", "stop"],
        ["node", "drain"],
        ["cluster", "capacity"],
        ["image", "import"],
    ] {
        let args: Vec<&str> = leaf.iter().copied().filter(|a| !a.is_empty()).chain(["--help"]).collect();
        assert!(help(&args).contains("Examples:"), "{args:?}");
    }
    Ok(())
}

/// Networks and NICs through the CLI, on the embedded hypervisor (nothing
/// is made on this machine; the testbed test makes real ones): defined once,
/// shown per host, NICs with MACs of the cluster's, and every mistake
/// refused with its reason and no change.
#[test]
fn networks_are_defined_once_and_nics_keep_the_macs_the_cluster_gave_them() -> Result<()> {
    let c = small_pair()?;
    let n = c.cli_ok(0, &["network", "add", "blue", "--kind", "vxlan", "--vni", "100"])?;
    assert_eq!((n["kind"].as_str(), n["vni"].as_u64()), (Some("vxlan"), Some(100)), "{n}");
    let hosts = wait_for("blue reported by both hosts", Duration::from_secs(15), || {
        let n = c.cli_ok(1, &["network", "get", "blue"]).ok()?;
        let hosts = n["hosts"].as_array()?.clone();
        hosts.iter().all(|h| h["state"] == "ready").then_some(hosts)
    })?;
    assert_eq!(hosts.len(), 2);
    assert!(hosts[0]["message"].as_str().unwrap_or_default().contains("test:///default"), "{hosts:?}");
    let table = c.cli_table(0, &["network", "list"]).stdout;
    assert!(table.contains("blue") && table.contains("VNI 100") && table.contains("2/2"), "{table}");

    // NICs: MACs drawn by the cluster, distinct, kept; one given is checked.
    let v = c.cli_ok(0, &["vm", "create", "web", "--memory", "32", "--nic", "blue", "--nic", "blue,model=e1000"])?;
    let macs: Vec<String> =
        v["nics"].as_array().unwrap().iter().map(|n| n["mac"].as_str().unwrap().to_string()).collect();
    assert_eq!(macs.len(), 2);
    assert!(macs[0] != macs[1] && macs.iter().all(|m| m.starts_with("0a:")), "{macs:?}");
    assert_eq!(v["nics"][1]["model"], "e1000");
    let r = c.cli(1, &["vm", "create", "db", "--memory", "32", "--nic", &format!("blue,mac={}", macs[0])]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("already used by web"), "{}", r.stderr);
    assert!(c.cli(0, &["vm", "get", "db"]).stderr.contains("no VM named"), "nothing was created");
    let v = c.cli_ok(1, &["vm", "nic", "add", "web", "blue", "--mac", "0a:00:00:00:00:42"])?;
    assert_eq!(v["nics"][2]["mac"], "0a:00:00:00:00:42");
    let v = c.cli_ok(1, &["vm", "nic", "remove", "web", &macs[1]])?;
    assert_eq!(v["nics"].as_array().unwrap().len(), 2);
    assert_eq!(c.cli_ok(0, &["vm", "get", "web"])?["nics"][0]["mac"], macs[0].as_str(), "kept");
    let page = c.cli_table(0, &["vm", "get", "web"]).stdout;
    assert!(page.contains(&format!("{} on network blue", macs[0])), "{page}");

    // Mistakes: each a reason, nothing changed.
    let refused = |args: &[&str], code: i32, says: &str| {
        let r = c.cli(0, args);
        assert_eq!(r.code, Some(code), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    };
    // The server's refusals exit 1; what the CLI itself cannot read, 2.
    refused(&["network", "add", "v", "--kind", "vlan", "--uplink", "eth0", "--vlan", "4095"], 1, "1-4094");
    refused(&["network", "add", "v", "--kind", "vxlan", "--vni", "100"], 1, "already uses VNI 100");
    refused(&["network", "add", "v", "--kind", "vxlan", "--vni", "7", "--bridge", "br0"], 1, "--bridge does not apply");
    refused(&["network", "add", "v", "--kind", "geneve"], 1, "bridge, vlan, vxlan or isolated");
    refused(&["network", "remove", "blue"], 1, "used by the NICs of web");
    refused(&["vm", "create", "x", "--nic", "red"], 1, "no network named \"red\"");
    refused(&["vm", "create", "x", "--nic", "blue,mac=01:00:5e:00:00:01"], 1, "multicast");
    refused(&["vm", "create", "x", "--nic", "mac=0a:00:00:00:00:01"], 2, "start with the network");
    refused(&["vm", "create", "x", "--network", "default"], 2, "--nic");
    refused(&["vm", "nic", "remove", "web", "0a:00:00:00:00:99"], 1, "has no NIC 0a:00:00:00:00:99");
    assert_eq!(c.cli_ok(0, &["network", "list"])?.as_array().unwrap().len(), 1);
    assert_eq!(c.cli_ok(0, &["vm", "list"])?.as_array().unwrap().len(), 1);

    // Free again, it goes.
    c.cli_ok(0, &["vm", "delete", "web", "--yes", "--wait"])?;
    assert_eq!(c.cli_ok(1, &["network", "remove", "blue"])?, serde_json::json!({"removed": "blue"}));
    assert_eq!(c.cli_ok(0, &["network", "list"])?, Value::Array(vec![]));
    Ok(())
}
