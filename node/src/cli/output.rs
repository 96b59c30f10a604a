//! Printing: aligned tables for people, JSON for scripts.

use kvmesh_proto as pb;
use serde_json::{json, Value};

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
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn member_json(m: &pb::Member) -> Value {
    json!({
        "id": m.id, "name": m.name, "address": m.address, "role": m.role,
        "matched_index": m.matched_index, "lag": m.lag,
    })
}

pub fn print_status(output: Output, s: &pb::ClusterStatus) {
    match output {
        Output::Json => {
            let leader = s.leader.as_ref().map(|l| json!({"id": l.id, "name": l.name, "address": l.address}));
            let v = json!({
                "cluster_id": s.cluster_id,
                "node": {"id": s.node_id, "name": s.node_name, "raft_state": s.raft_state},
                "leader": leader,
                "term": s.term,
                "commit_index": s.commit_index,
                "last_log_index": s.last_log_index,
                "last_applied": s.last_applied,
                "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "max_voters": s.max_voters,
                "version": s.version,
                "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
            });
            println!("{v}");
        }
        Output::Table => {
            let cluster = if s.cluster_id.is_empty() { "(not initialized)" } else { &s.cluster_id };
            println!("cluster:   {cluster}");
            println!("answered:  {} ({})", s.node_name, s.raft_state);
            match &s.leader {
                Some(l) => println!("leader:    {} ({})", l.name, l.address),
                None => println!("leader:    none (election in progress or no quorum)"),
            }
            println!("term:      {}", s.term);
            println!("commit:    {}", s.commit_index);
            println!();
            let rows = s
                .members
                .iter()
                .map(|m| {
                    let leader = s.leader.as_ref().is_some_and(|l| l.id == m.id);
                    vec![
                        m.name.clone(),
                        m.address.clone(),
                        if leader { format!("{} (leader)", m.role) } else { m.role.clone() },
                        m.matched_index.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        m.lag.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&["NAME", "ADDRESS", "ROLE", "MATCHED", "LAG"], rows);
        }
    }
}

fn node_json(n: &pb::NodeInfo) -> Value {
    json!({
        "id": n.id, "name": n.name, "address": n.address, "state": node_state(n.state), "role": n.role,
        "cpus": n.cpus, "memory_mib": n.memory_mib, "vms": n.vm_count,
        "allocated_vcpus": n.allocated_vcpus, "allocated_memory_mib": n.allocated_memory_mib,
        "labels": n.labels, "heartbeat_age_ms": n.heartbeat_age_ms, "running_vms": n.running_vms,
        "running_vcpus": n.running_vcpus, "running_memory_mib": n.running_memory_mib,
        "fencing": n.fencing, "problem": n.problem,
        "storage": n.storage.iter().map(|s| json!({"domain": s.domain, "state": s.state, "message": s.message, "free_bytes": s.free_bytes, "total_bytes": s.total_bytes})).collect::<Vec<_>>(),
    })
}

/// One host: a JSON object, or the `node list` table with one row plus its labels.
pub fn print_node(output: Output, node: &pb::NodeInfo) {
    match output {
        Output::Json => println!("{}", node_json(node)),
        Output::Table => {
            print_nodes(output, std::slice::from_ref(node));
            let mut labels: Vec<String> = node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            println!("labels: {}", if labels.is_empty() { "-".to_string() } else { labels.join(", ") });
            for st in &node.storage {
                let room = if st.total_bytes > 0 {
                    format!(", {} free of {}", human_bytes(st.free_bytes), human_bytes(st.total_bytes))
                } else {
                    String::new()
                };
                let why = if st.message.is_empty() { String::new() } else { format!(": {}", st.message) };
                println!("storage {}: {}{room}{why}", st.domain, st.state);
            }
        }
    }
}

pub fn print_nodes(output: Output, nodes: &[pb::NodeInfo]) {
    match output {
        Output::Json => println!("{}", Value::Array(nodes.iter().map(node_json).collect())),
        Output::Table => {
            let rows = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.address.clone(),
                        node_state(n.state).to_string(),
                        n.role.clone(),
                        format!("{}/{}", n.allocated_vcpus, n.cpus),
                        format!("{}/{}", n.allocated_memory_mib, n.memory_mib),
                        n.vm_count.to_string(),
                        match (n.running_vms, n.running_vcpus, n.running_memory_mib) {
                            (Some(r), Some(c), Some(m)) => format!("{r} ({c} vCPU, {m} MiB)"),
                            _ => "-".into(),
                        },
                        n.heartbeat_age_ms
                            .map(|a| format!("{:.1}s ago", a as f64 / 1000.0))
                            .unwrap_or_else(|| "-".into()),
                        n.fencing.clone().filter(|f| !f.is_empty()).unwrap_or_else(|| "-".into()),
                        storage_summary(&n.storage),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "ADDRESS",
                    "STATE",
                    "ROLE",
                    "VCPUS",
                    "MEMORY(MiB)",
                    "VMS",
                    "RUNNING",
                    "HEARTBEAT",
                    "FENCING",
                    "STORAGE",
                ],
                rows,
            );
            for n in nodes {
                if let Some(problem) = n.problem.as_ref().filter(|p| !p.is_empty()) {
                    println!("{}: {problem}; it takes no new VMs", n.name);
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

pub fn disk_json(d: &pb::DiskInfo) -> Value {
    json!({
        "index": d.index, "size_bytes": d.size_bytes, "storage": d.storage, "image": d.image,
        "created": d.created, "host": d.host, "volume": d.volume,
    })
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

pub fn print_disks(output: Output, disks: &[pb::DiskInfo]) {
    match output {
        Output::Json => println!("{}", Value::Array(disks.iter().map(disk_json).collect())),
        Output::Table => {
            let rows = disks
                .iter()
                .map(|d| {
                    vec![
                        d.index.to_string(),
                        human_bytes(d.size_bytes),
                        d.storage.clone(),
                        d.image.clone().unwrap_or_else(|| "-".into()),
                        if d.created { "yes" } else { "not yet (made at first start)" }.into(),
                        d.host.clone().unwrap_or_else(|| "-".into()),
                        d.volume.clone(),
                    ]
                })
                .collect();
            table(&["INDEX", "SIZE", "STORAGE", "IMAGE", "CREATED", "HOST", "VOLUME"], rows);
        }
    }
}

/// A live migration's progress in one line: copied, left, rate.
pub fn progress_line(p: &pb::MigrationProgress) -> String {
    let phase = if p.phase.is_empty() { "copying" } else { p.phase.as_str() };
    format!(
        "{phase}: {} of {} copied, {} left, {}/s",
        human_bytes(p.data_processed),
        human_bytes(p.data_total),
        human_bytes(p.data_remaining),
        human_bytes(p.bytes_per_s)
    )
}

fn progress_json(p: &pb::MigrationProgress) -> Value {
    json!({
        "data_total": p.data_total, "data_processed": p.data_processed,
        "data_remaining": p.data_remaining, "bytes_per_s": p.bytes_per_s, "phase": p.phase,
        "disk_total": p.disk_total, "disk_remaining": p.disk_remaining,
    })
}

pub fn vm_json(vm: &pb::Vm) -> Value {
    json!({
        "id": vm.id, "name": vm.name, "vcpus": vm.vcpus, "memory_mib": vm.memory_mib, "ha": vm.ha,
        "desired": desired(vm.desired), "node": vm.node, "node_id": vm.node_id, "epoch": vm.epoch,
        "created_at_ms": vm.created_at_ms, "state": vm_state(vm.state), "since": vm.since_ms,
        "last_error": vm.last_error, "image": vm.image, "kernel": vm.kernel, "initrd": vm.initrd,
        "disks": vm.disks.iter().map(disk_json).collect::<Vec<_>>(),
        "snapshots": vm.snapshots.iter().map(|s| json!({"name": s.name, "created_at_ms": s.created_at_ms})).collect::<Vec<_>>(),
        "network": vm.network, "bridge": vm.bridge, "domain": vm.domain,
        "priority": vm.priority, "pin": vm.pin, "required_labels": vm.required_labels,
        "preferred_labels": vm.preferred_labels, "anti_affinity": vm.anti_affinity,
        "soft_anti_affinity": vm.soft_anti_affinity, "affinity": vm.affinity,
        "pending": vm.pending, "observed": vm.observed, "lease_holder": vm.lease_holder, "description": vm.description,
        "migrating_to": vm.migrating_to,
        "migration_started_ms": (vm.migration_started_ms > 0).then_some(vm.migration_started_ms),
        "migration_copies_disks": vm.migration_copies_disks,
        "migration_progress": vm.migration_progress.as_ref().map(progress_json),
    })
}

pub fn print_vms(output: Output, vms: &[pb::Vm]) {
    match output {
        Output::Json => println!("{}", Value::Array(vms.iter().map(vm_json).collect())),
        Output::Table => {
            let rows = vms
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.vcpus.to_string(),
                        v.memory_mib.to_string(),
                        if v.ha { "yes" } else { "no" }.into(),
                        desired(v.desired).to_string(),
                        match &v.migrating_to {
                            Some(to) => format!("{} (moving to {to})", vm_state(v.state)),
                            None => vm_state(v.state).to_string(),
                        },
                        v.node.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&["NAME", "VCPUS", "MEMORY(MiB)", "HA", "DESIRED", "STATE", "NODE"], rows);
        }
    }
}

pub fn print_vm(output: Output, vm: &pb::Vm) {
    match output {
        Output::Json => println!("{}", vm_json(vm)),
        Output::Table => {
            println!("name:     {}", vm.name);
            println!("id:       {}", vm.id);
            println!("vcpus:    {}", vm.vcpus);
            println!("memory:   {} MiB", vm.memory_mib);
            println!("ha:       {}", vm.ha);
            println!("desired:  {}", desired(vm.desired));
            println!("state:    {}", vm_state(vm.state));
            if vm.since_ms > 0 {
                println!("since:    {}", format_ms(vm.since_ms));
            }
            if let Some(e) = &vm.last_error {
                println!("error:    {e}");
            }
            if let Some(p) = &vm.pending {
                println!("pending:  {p}");
            }
            if !vm.observed.is_empty() {
                println!("observed: running on {}", vm.observed.join(", "));
            }
            if let Some(to) = &vm.migrating_to {
                let how = match (vm.desired == pb::DesiredState::Stopped as i32, vm.migration_copies_disks) {
                    (true, _) => "its local disks being copied",
                    (false, true) => "live, with its local disks,",
                    (false, false) => "live",
                };
                println!("moving:   {how} to {to}, since {}", format_ms(vm.migration_started_ms));
                match &vm.migration_progress {
                    Some(p) => println!("          {}", progress_line(p)),
                    // Before libvirt's job (the target getting ready), or a
                    // cold copy (no job): no figures.
                    None => println!("          (no figures from the source's libvirt yet)"),
                }
            }
            if let Some(h) = &vm.lease_holder {
                println!("lease:    probably held by the copy on {h} (its last heartbeat listed the VM running)");
            }
            println!("domain:   {}", vm.domain);
            println!("node:     {}", vm.node.as_deref().unwrap_or("-"));
            println!("epoch:    {}", vm.epoch);
            for d in &vm.disks {
                let image = d.image.as_ref().map(|i| format!(", clone of {i}")).unwrap_or_default();
                println!("disk {}:   {} on {}{image}", d.index, human_bytes(d.size_bytes), d.storage);
            }
            if let Some(k) = &vm.kernel {
                println!("kernel:   {k}{}", vm.initrd.as_ref().map(|i| format!(" (initrd {i})")).unwrap_or_default());
            }
            if !vm.snapshots.is_empty() {
                let names: Vec<&str> = vm.snapshots.iter().map(|s| s.name.as_str()).collect();
                println!("snapshots: {}", names.join(", "));
            }
            if !vm.description.is_empty() {
                println!("description: {}", vm.description);
            }
        }
    }
}

pub fn print_events(output: Output, events: &[pb::Event]) {
    for e in events {
        match output {
            Output::Json => {
                println!(
                    "{}",
                    json!({"seq": e.seq, "at_ms": e.at_ms, "kind": e.kind, "message": e.message, "by": e.by})
                )
            }
            Output::Table if e.by.is_empty() => {
                println!("{:>6}  {}  {:<8} {}", e.seq, format_ms(e.at_ms), e.kind, e.message)
            }
            Output::Table => {
                println!("{:>6}  {}  {:<8} {} [by {}]", e.seq, format_ms(e.at_ms), e.kind, e.message, e.by)
            }
        }
    }
}

/// Unix milliseconds as UTC `YYYY-MM-DD hh:mm:ss`.
pub fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if mo <= 2 { 1 } else { 0 };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}")
}

pub fn print_explanation(output: Output, e: &pb::Explanation) {
    match output {
        Output::Json => {
            let nodes: Vec<Value> = e
                .nodes
                .iter()
                .map(|n| {
                    json!({
                        "node": n.node, "feasible": n.feasible, "reason": n.reason, "score": n.score,
                        "policy_score": n.policy_score, "label_score": n.label_score,
                        "group_score": n.group_score, "chosen": n.chosen,
                    })
                })
                .collect();
            println!("{}", json!({"vm": e.vm, "policy": e.policy, "chosen": e.chosen, "nodes": nodes}));
        }
        Output::Table => {
            match &e.chosen {
                Some(c) => println!("{}: would be placed on {c} (policy {})", e.vm, e.policy),
                None => println!("{}: fits on no node (policy {})", e.vm, e.policy),
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
        Output::Json => println!(
            "{}",
            json!({"policy": p.policy, "cpu_overcommit": p.cpu_overcommit, "memory_overcommit": p.memory_overcommit,
                   "balance": p.balance})
        ),
        Output::Table => println!(
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
        Output::Json => {
            let hosts: Vec<Value> = r
                .hosts
                .iter()
                .map(|h| {
                    json!({
                        "node": h.node, "ha_vms": h.ha_vms, "ha_vcpus": h.ha_vcpus, "ha_memory_mib": h.ha_memory_mib,
                        "unplaceable": h.unplaceable, "short_vcpus": h.short_vcpus,
                        "short_memory_mib": h.short_memory_mib, "fencing": h.fencing,
                    })
                })
                .collect();
            println!("{}", json!({"n_plus_1": r.n_plus_1, "worst": r.worst, "policy": r.policy, "hosts": hosts}));
        }
        Output::Table => {
            if r.n_plus_1 {
                println!("N+1: yes — the HA VMs of any one host can restart on the others");
            } else {
                println!("N+1: NO — losing some hosts would leave HA VMs with nowhere to run");
            }
            if let Some(w) = &r.worst {
                println!("worst case: losing {w}");
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
                println!("guard-only hosts: if their daemon and guard both die, only disk leases keep a restarted HA VM from running twice; enable a watchdog (softdog) for full protection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_timestamps() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_ms(1_795_651_200_000), "2026-11-26 00:00:00");
    }
}
