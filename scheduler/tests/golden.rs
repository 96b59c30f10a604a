//! Golden scenarios: `tests/scenarios/*.scenario`, readable by people.
//!
//! ```text
//! policy spread cpu=4 mem=1          # optional; defaults as shown
//! node a cpus=8 mem=16384 [state=down] [labels=zone:a,ssd:true]
//! place web vcpus=2 mem=2048 [id=7] [pin=a] [need=k:v,..] [prefer=k:v,..]
//!       [anti=g] [soft=g] [affinity=g] [priority=n] [ha]
//! expect b                            # or: expect none, then one
//!   a: insufficient memory (...)      #   indented reason line per node
//! capacity                            # N+1 over the VMs placed so far with `ha`
//! expect n+1=no worst=a short=a:3072
//! ```
//! Each `place` that succeeds reserves the VM on its node, so later steps see it.

use std::collections::BTreeMap;

use kvmesh_scheduler::*;

fn kv_list(s: &str) -> BTreeMap<String, String> {
    s.split(',').filter_map(|p| p.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn fields(words: &[&str]) -> BTreeMap<String, String> {
    words
        .iter()
        .map(|w| {
            w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap_or((w.to_string(), String::new()))
        })
        .collect()
}

fn run(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy();
    let mut settings = Settings::default();
    let mut nodes: Vec<NodeView> = Vec::new();
    let mut ha: BTreeMap<u64, Vec<VmRequest>> = BTreeMap::new();
    let mut last: Option<(VmRequest, Decision)> = None;
    let mut last_capacity: Option<Reservation> = None;
    let mut next_id = 1000;
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].split('#').next().unwrap().trim_end();
        i += 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(&cmd) = words.first() else { continue };
        let f = fields(&words[1..]);
        match cmd {
            "policy" => {
                settings.policy = words[1].parse().unwrap();
                if let Some(c) = f.get("cpu") {
                    settings.cpu_overcommit_milli = (c.parse::<f64>().unwrap() * 1000.0).round() as u32;
                }
                if let Some(m) = f.get("mem") {
                    settings.memory_overcommit_milli = (m.parse::<f64>().unwrap() * 1000.0).round() as u32;
                }
            }
            "node" => {
                let mut n = NodeView::new(
                    nodes.len() as u64 + 1,
                    words[1],
                    f["cpus"].parse().unwrap(),
                    f["mem"].parse().unwrap(),
                );
                if let Some(s) = f.get("state") {
                    n.state = match s.as_str() {
                        "down" => NodeState::Down,
                        "draining" => NodeState::Draining,
                        "maintenance" => NodeState::Maintenance,
                        _ => NodeState::Up,
                    };
                }
                if let Some(l) = f.get("labels") {
                    n.labels = kv_list(l);
                }
                nodes.push(n);
            }
            "place" => {
                next_id += 1;
                let mut v = VmRequest::new(
                    f.get("id").map(|s| s.parse().unwrap()).unwrap_or(next_id),
                    words[1],
                    f["vcpus"].parse().unwrap(),
                    f["mem"].parse().unwrap(),
                );
                v.pin = f.get("pin").cloned();
                v.required_labels = f.get("need").map(|s| kv_list(s)).unwrap_or_default();
                v.preferred_labels = f.get("prefer").map(|s| kv_list(s)).unwrap_or_default();
                v.anti_affinity = f.get("anti").cloned();
                v.soft_anti_affinity = f.get("soft").cloned();
                v.affinity = f.get("affinity").cloned();
                v.priority = f.get("priority").map(|s| s.parse().unwrap()).unwrap_or(0);
                let d = place(&nodes, &v, &settings);
                if let Decision::Place { node_id, .. } = &d {
                    let n = nodes.iter_mut().find(|n| n.id == *node_id).unwrap();
                    n.reserve(&v);
                    if f.contains_key("ha") {
                        ha.entry(*node_id).or_default().push(v.clone());
                    }
                }
                last = Some((v, d));
            }
            "capacity" => last_capacity = Some(ha_reservation(&nodes, &ha, &settings)),
            "expect" if words[1].starts_with("n+1=") => {
                let r = last_capacity.as_ref().unwrap_or_else(|| panic!("{name}:{i}: expect before capacity"));
                assert_eq!(r.n_plus_1, f["n+1"] == "yes", "{name}:{i}: {r:?}");
                if let Some(w) = f.get("worst") {
                    assert_eq!(r.worst.as_deref(), Some(w.as_str()), "{name}:{i}");
                }
                if let Some(short) = f.get("short") {
                    let (host, mib) = short.split_once(':').unwrap();
                    let h = r.hosts.iter().find(|h| h.node == host).unwrap();
                    assert_eq!(h.short_memory_mib, mib.parse::<u64>().unwrap(), "{name}:{i}: {h:?}");
                }
            }
            "expect" => {
                let (v, d) = last.as_ref().unwrap_or_else(|| panic!("{name}:{i}: expect before place"));
                let mut reasons = Vec::new();
                while i < lines.len() && lines[i].starts_with("  ") {
                    reasons.push(lines[i].trim().to_string());
                    i += 1;
                }
                match (words[1], d) {
                    ("none", Decision::Unplaceable { rejections }) => {
                        assert_eq!(explain_rejections(rejections), reasons.join("\n"), "{name}:{i}: {}", v.name)
                    }
                    (want, Decision::Place { node, .. }) => assert_eq!(node, want, "{name}:{i}: {}", v.name),
                    (want, other) => panic!("{name}:{i}: {} expected {want}, got {other:?}", v.name),
                }
            }
            other => panic!("{name}:{i}: unknown command {other}"),
        }
    }
}

#[test]
fn golden_scenarios() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 4, "scenarios missing in {}", dir.display());
    for f in files {
        run(&f);
    }
}
