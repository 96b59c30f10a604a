//! Printing: aligned tables for people, JSON for scripts.

use kvmesh_proto as pb;
use serde_json::Value;

use super::Output;

/// Prints rows under a header with columns padded to their widest cell.
/// A VM's state as users read it (`host-down`, not `VM_STATE_HOST_DOWN`).
pub fn vm_state(state: i32) -> &'static str {
    match pb::VmState::try_from(state).unwrap_or(pb::VmState::Unspecified) {
        pb::VmState::Unspecified => "unknown",
        pb::VmState::Pending => "pending",
        pb::VmState::Running => "running",
        pb::VmState::Stopped => "stopped",
        pb::VmState::Crashed => "crashed",
        pb::VmState::Failed => "failed",
        pb::VmState::Deleting => "deleting",
        pb::VmState::HostDown => "host-down",
        pb::VmState::WaitingForLease => "waiting-for-lease",
        pb::VmState::Stopping => "stopping",
    }
}

pub fn node_state(state: i32) -> &'static str {
    match pb::NodeState::try_from(state).unwrap_or(pb::NodeState::Unspecified) {
        pb::NodeState::Unspecified => "unknown",
        pb::NodeState::Up => "up",
        pb::NodeState::Down => "down",
        pb::NodeState::Draining => "draining",
        pb::NodeState::Maintenance => "maintenance",
    }
}

pub fn desired(d: i32) -> &'static str {
    match pb::DesiredState::try_from(d).unwrap_or(pb::DesiredState::Unspecified) {
        pb::DesiredState::Unspecified => "unknown",
        pb::DesiredState::Running => "running",
        pb::DesiredState::Stopped => "stopped",
    }
}

pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// `cluster status -o json`, and the REST API's `GET /api/v1/cluster/status`.
pub fn status_json(s: &pb::ClusterStatus) -> Value {
    crate::view::json(crate::view::Status::from(s))
}

pub fn print_status(output: Output, s: &pb::ClusterStatus) {
    match output {
        Output::Json => outln!("{}", status_json(s)),
        Output::Table => {
            let cluster = if s.cluster_id.is_empty() { "(not initialized)" } else { &s.cluster_id };
            outln!("cluster:   {cluster}");
            outln!("answered:  {} ({})", s.node_name, s.raft_state);
            match &s.leader {
                Some(l) => outln!("leader:    {} ({})", l.name, l.address),
                None => outln!("leader:    none (election in progress or no quorum)"),
            }
            outln!("term:      {}", s.term);
            outln!("commit:    {}", s.commit_index);
            outln!("");
            let rows = s
                .members
                .iter()
                .map(|m| {
                    let leader = s.leader.as_ref().is_some_and(|l| l.id == m.id);
                    vec![
                        m.name.clone(),
                        m.address.clone(),
                        if leader { format!("{} (leader)", m.role) } else { m.role.clone() },
                        match m.reachable {
                            Some(true) => "reachable".into(),
                            Some(false) => "UNREACHABLE".into(),
                            None => "-".into(),
                        },
                        m.last_contact_ms.map(ago).unwrap_or_else(|| "-".into()),
                        m.matched_index.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        m.lag.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&["NAME", "ADDRESS", "ROLE", "STATUS", "LAST CONTACT", "MATCHED", "LAG"], rows);
            let silent: Vec<&str> =
                s.members.iter().filter(|m| m.reachable == Some(false)).map(|m| m.name.as_str()).collect();
            if !silent.is_empty() {
                outln!("not heard from: {} (`kvmesh node list` shows whether they are down)", silent.join(", "));
            }
        }
    }
}

/// A host as `node get -o json` and the REST API show it.
pub fn node_json(n: &pb::NodeInfo) -> Value {
    crate::view::json(crate::view::Node::from(n))
}

/// One host: a JSON object, or the `node list` table with one row plus its labels.
pub fn print_node(output: Output, node: &pb::NodeInfo) {
    match output {
        Output::Json => outln!("{}", node_json(node)),
        Output::Table => {
            print_nodes(output, true, std::slice::from_ref(node));
            for st in &node.storage {
                let room = if st.total_bytes > 0 {
                    format!(", {} free of {}", human_bytes(st.free_bytes), human_bytes(st.total_bytes))
                } else {
                    String::new()
                };
                let why = if st.message.is_empty() { String::new() } else { format!(": {}", st.message) };
                outln!("storage {}: {}{room}{why}", st.domain, st.state);
            }
            for st in &node.networks {
                let why = if st.message.is_empty() { String::new() } else { format!(": {}", st.message) };
                outln!("network {}: {}{why}", st.network, st.state);
            }
            match node.uefi_missing.as_deref() {
                Some("") => outln!("firmware: bios, uefi"),
                Some(why) => outln!("firmware: bios only ({why}); UEFI VMs go elsewhere"),
                None => outln!("firmware: not reported yet"),
            }
        }
    }
}

/// "1.2s ago".
fn ago(ms: u64) -> String {
    format!("{:.1}s ago", ms as f64 / 1000.0)
}

/// A host's state as people should read it: `unreachable` for a host the
/// leader no longer hears that is not declared down yet.
pub fn shown_node_state(n: &pb::NodeInfo) -> &'static str {
    match (node_state(n.state), n.reachable) {
        ("up" | "draining" | "maintenance", Some(false)) => "unreachable",
        (state, _) => state,
    }
}

pub fn print_nodes(output: Output, wide: bool, nodes: &[pb::NodeInfo]) {
    match output {
        Output::Json => outln!("{}", Value::Array(nodes.iter().map(node_json).collect())),
        Output::Table => {
            let rows = nodes
                .iter()
                .map(|n| {
                    let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    let mut row = vec![
                        n.name.clone(),
                        n.address.clone(),
                        shown_node_state(n).to_string(),
                        n.role.clone(),
                        format!("{}/{}", n.allocated_vcpus, n.cpus),
                        format!("{}/{}", n.allocated_memory_mib, n.memory_mib),
                        n.vm_count.to_string(),
                        match (n.running_vms, n.running_vcpus, n.running_memory_mib) {
                            (Some(r), Some(c), Some(m)) => format!("{r} ({c} vCPU, {m} MiB)"),
                            _ => "-".into(),
                        },
                        n.heartbeat_age_ms.map(ago).unwrap_or_else(|| "-".into()),
                        if labels.is_empty() { "-".into() } else { labels.join(",") },
                    ];
                    if wide {
                        row.extend([
                            n.fencing.clone().filter(|f| !f.is_empty()).unwrap_or_else(|| "-".into()),
                            storage_summary(&n.storage),
                            n.id.to_string(),
                        ]);
                    }
                    row
                })
                .collect();
            let mut header = vec![
                "NAME",
                "ADDRESS",
                "STATE",
                "ROLE",
                "VCPUS",
                "MEMORY(MiB)",
                "VMS",
                "RUNNING",
                "HEARTBEAT",
                "LABELS",
            ];
            if wide {
                header.extend(["FENCING", "STORAGE", "ID"]);
            }
            table(&header, rows);
            for n in nodes {
                if let Some(problem) = n.problem.as_ref().filter(|p| !p.is_empty()) {
                    outln!("{}: {problem}; it takes no new VMs", n.name);
                }
                for net in n.networks.iter().filter(|s| s.state != "ready") {
                    outln!("{}: network {} is {}: {}", n.name, net.network, net.state, net.message);
                }
                if shown_node_state(n) == "unreachable" {
                    outln!("{}: not heard from; its HA VMs restart elsewhere once it is declared down", n.name);
                }
            }
        }
    }
}

/// `2/3 active (nfs1: missing)`, or `-` before the first report.
fn storage_summary(storage: &[pb::HostStorageStatus]) -> String {
    if storage.is_empty() {
        return "-".into();
    }
    let active = storage.iter().filter(|s| s.state == "active").count();
    let problems: Vec<String> =
        storage.iter().filter(|s| s.state != "active").map(|s| format!("{}: {}", s.domain, s.state)).collect();
    let extra = if problems.is_empty() { String::new() } else { format!(" ({})", problems.join(", ")) };
    format!("{active}/{} active{extra}", storage.len())
}

/// Bytes as people read them: 1.5 GiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub use super::time::format_ms;

pub fn print_explanation(output: Output, e: &pb::Explanation) {
    match output {
        Output::Json => outln!("{}", crate::view::json(crate::view::Explanation::from(e))),
        Output::Table => {
            match &e.chosen {
                Some(c) => outln!("{}: would be placed on {c} (policy {})", e.vm, e.policy),
                None => outln!("{}: fits on no node (policy {})", e.vm, e.policy),
            }
            let rows = e
                .nodes
                .iter()
                .map(|n| {
                    if n.feasible {
                        vec![
                            format!("{}{}", n.node, if n.chosen { " *" } else { "" }),
                            "ok".into(),
                            format!("{:.3}", n.score),
                            format!(
                                "policy {:.3}, labels {:.3}, group {:.3}",
                                n.policy_score, n.label_score, n.group_score
                            ),
                        ]
                    } else {
                        vec![n.node.clone(), "rejected".into(), "-".into(), n.reason.clone()]
                    }
                })
                .collect();
            table(&["NODE", "FILTER", "SCORE", "DETAIL"], rows);
        }
    }
}

pub fn print_policy(output: Output, p: &pb::PlacementPolicy) {
    match output {
        Output::Json => outln!("{}", crate::view::json(crate::view::Policy::from(p))),
        Output::Table => outln!(
            "policy {} (cpu overcommit {}, memory overcommit {}; automatic balance {})",
            p.policy,
            p.cpu_overcommit,
            p.memory_overcommit,
            if p.balance { "on" } else { "off" }
        ),
    }
}

pub fn print_capacity(output: Output, r: &pb::CapacityReport) {
    match output {
        Output::Json => outln!("{}", crate::view::json(crate::view::Capacity::from(r))),
        Output::Table => {
            if r.n_plus_1 {
                outln!("N+1: yes — the HA VMs of any one host can restart on the others");
            } else {
                outln!("N+1: NO — losing some hosts would leave HA VMs with nowhere to run");
            }
            if let Some(w) = &r.worst {
                outln!("worst case: losing {w}");
            }
            let rows = r
                .hosts
                .iter()
                .map(|h| {
                    let short = if h.unplaceable.is_empty() {
                        "-".to_string()
                    } else {
                        format!(
                            "{} VM(s): {} vCPUs, {} MiB ({})",
                            h.unplaceable.len(),
                            h.short_vcpus,
                            h.short_memory_mib,
                            h.unplaceable.join(", ")
                        )
                    };
                    vec![
                        h.node.clone(),
                        h.ha_vms.to_string(),
                        h.ha_vcpus.to_string(),
                        h.ha_memory_mib.to_string(),
                        if h.fencing.is_empty() { "-".into() } else { h.fencing.clone() },
                        short,
                    ]
                })
                .collect();
            table(&["IF LOST", "HA VMS", "HA VCPUS", "HA MEMORY(MiB)", "FENCING", "SHORT BY"], rows);
            if r.hosts.iter().any(|h| h.ha_vms > 0 && h.fencing == "guard-only") {
                outln!("guard-only hosts: if their daemon and guard both die, only disk leases keep a restarted HA VM from running twice; enable a watchdog (softdog) for full protection");
            }
        }
    }
}
