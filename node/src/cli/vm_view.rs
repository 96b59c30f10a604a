//! How a VM reads: the `vm get` page with every setting and where it really
//! runs, the `vm list` table (and its wide form), its disks, a live
//! migration's progress, and the same as JSON for scripts.

use kvmesh_proto as pb;
use serde_json::Value;

use super::output::{desired, format_ms, human_bytes, table, vm_state};
use super::Output;

pub fn disk_json(d: &pb::DiskInfo) -> Value {
    crate::view::json(crate::view::Disk::from(d))
}

pub fn print_disks(output: Output, disks: &[pb::DiskInfo]) {
    match output {
        Output::Json => outln!("{}", Value::Array(disks.iter().map(disk_json).collect())),
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

pub fn vm_json(vm: &pb::Vm) -> Value {
    crate::view::json(crate::view::Vm::from(vm))
}

/// What `vm list` shows: its filters, its order and its width.
#[derive(Clone, Debug, Default)]
pub struct ListView {
    pub node: Option<String>,
    pub state: Option<String>,
    pub ha: Option<bool>,
    /// Every one of these labels.
    pub labels: Vec<(String, String)>,
    pub sort: SortKey,
    pub wide: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    #[default]
    Name,
    Node,
    State,
    Memory,
    Vcpus,
    Priority,
    Created,
}

/// The state a VM is shown in: the reported one, with a move in progress
/// named (`migrating`).
pub fn shown_state(vm: &pb::Vm) -> &'static str {
    if vm.migrating_to.is_some() {
        "migrating"
    } else {
        vm_state(vm.state)
    }
}

/// The VMs `view` keeps, in its order.
pub fn select<'a>(view: &ListView, vms: &'a [pb::Vm]) -> Vec<&'a pb::Vm> {
    let mut kept: Vec<&pb::Vm> = vms
        .iter()
        .filter(|v| view.node.as_ref().is_none_or(|n| v.node.as_ref() == Some(n) || v.observed.contains(n)))
        .filter(|v| view.state.as_ref().is_none_or(|s| shown_state(v) == s || vm_state(v.state) == s))
        .filter(|v| view.ha.is_none_or(|ha| v.ha == ha))
        .filter(|v| view.labels.iter().all(|(k, want)| v.labels.get(k) == Some(want)))
        .collect();
    kept.sort_by(|a, b| {
        let by = match view.sort {
            SortKey::Name => std::cmp::Ordering::Equal,
            SortKey::Node => a.node.cmp(&b.node),
            SortKey::State => shown_state(a).cmp(shown_state(b)),
            SortKey::Memory => b.memory_mib.cmp(&a.memory_mib),
            SortKey::Vcpus => b.vcpus.cmp(&a.vcpus),
            SortKey::Priority => b.priority.cmp(&a.priority),
            SortKey::Created => a.created_at_ms.cmp(&b.created_at_ms),
        };
        by.then_with(|| a.name.cmp(&b.name))
    });
    kept
}

/// The states `vm list --state` takes.
pub const STATES: &[&str] = &[
    "pending",
    "running",
    "stopping",
    "stopped",
    "crashed",
    "failed",
    "deleting",
    "host-down",
    "waiting-for-lease",
    "migrating",
];

pub fn print_vms(output: Output, view: &ListView, vms: &[pb::Vm]) {
    let vms = select(view, vms);
    match output {
        Output::Json => outln!("{}", Value::Array(vms.iter().map(|v| vm_json(v)).collect())),
        Output::Table if vms.is_empty() => eprintln!("no VMs{}", if vms_filtered(view) { " match" } else { "" }),
        Output::Table => {
            let rows = vms.iter().map(|v| list_row(v, view.wide)).collect();
            let mut header = vec!["NAME", "VCPUS", "MEMORY", "HA", "DESIRED", "STATE", "NODE"];
            if view.wide {
                header.extend(["PRIORITY", "DISKS", "BOOT", "LABELS", "SINCE", "ID"]);
            }
            table(&header, rows);
        }
    }
}

fn vms_filtered(view: &ListView) -> bool {
    view.node.is_some() || view.state.is_some() || view.ha.is_some() || !view.labels.is_empty()
}

fn list_row(v: &pb::Vm, wide: bool) -> Vec<String> {
    let state = match &v.migrating_to {
        Some(to) => format!("migrating to {to}"),
        None => vm_state(v.state).to_string(),
    };
    let mut row = vec![
        v.name.clone(),
        v.vcpus.to_string(),
        human_bytes(v.memory_mib << 20),
        if v.ha { "yes" } else { "no" }.into(),
        desired(v.desired).to_string(),
        state,
        v.node.clone().unwrap_or_else(|| "-".into()),
    ];
    if wide {
        let disk_bytes: u64 = v.disks.iter().map(|d| d.size_bytes).sum();
        let boot = match (&v.image, &v.kernel) {
            (Some(i), _) => format!("image {i}"),
            (None, Some(k)) => format!("kernel {k}"),
            (None, None) => "-".into(),
        };
        row.extend([
            v.priority.to_string(),
            if v.disks.is_empty() { "-".into() } else { format!("{} ({})", v.disks.len(), human_bytes(disk_bytes)) },
            boot,
            labels(&v.labels).replace(", ", ","),
            if v.since_ms > 0 { format_ms(v.since_ms) } else { "-".into() },
            v.id.clone(),
        ]);
    }
    row
}

/// `key=value, …` sorted, or `-`.
fn labels(map: &std::collections::HashMap<String, String>) -> String {
    let mut all: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    all.sort();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(", ")
    }
}

/// One VM: every setting, its state, and where it really runs.
pub fn print_vm(output: Output, vm: &pb::Vm) {
    if output == Output::Json {
        outln!("{}", vm_json(vm));
        return;
    }
    let field = |name: &str, value: &str| {
        let label = if name.is_empty() { String::new() } else { format!("{name}:") };
        outln!("{label:<12} {value}")
    };
    field("name", &vm.name);
    field("id", &vm.id);
    if !vm.description.is_empty() {
        field("description", &vm.description);
    }
    field("state", shown_state(vm));
    field("desired", desired(vm.desired));
    if vm.since_ms > 0 {
        field("since", &format_ms(vm.since_ms));
    }
    if let Some(e) = &vm.last_error {
        field("note", e);
    }
    if let Some(p) = &vm.pending {
        field("pending", p);
    }
    field("node", vm.node.as_deref().unwrap_or("- (not placed)"));
    // Where it really runs, from the hosts' own reports, not the record.
    let runs = match (vm.observed.as_slice(), &vm.node) {
        _ if !vm.observed_known => "unknown (no leader answered with the hosts' reports)".to_string(),
        ([], _) => "nowhere (no host reports it running)".to_string(),
        ([one], Some(node)) if one == node => format!("{one} (its host reports it running)"),
        (all, _) => format!("{} (reported by the hosts' heartbeats)", all.join(", ")),
    };
    field("runs on", &runs);
    if let Some(to) = &vm.migrating_to {
        let how = match (vm.desired == pb::DesiredState::Stopped as i32, vm.migration_copies_disks) {
            (true, _) => "its local disks being copied",
            (false, true) => "live, with its local disks,",
            (false, false) => "live",
        };
        field("moving", &format!("{how} to {to}, since {}", format_ms(vm.migration_started_ms)));
        match &vm.migration_progress {
            Some(p) => field("", &progress_line(p)),
            // Before libvirt's job (the target getting ready), or a cold
            // copy (no job): no figures.
            None => field("", "(no figures from the source's libvirt yet)"),
        }
    }
    if let Some(h) = &vm.lease_holder {
        field("lease", &format!("probably held by the copy on {h} (its last heartbeat listed the VM running)"));
    }
    field("vcpus", &vm.vcpus.to_string());
    field("memory", &human_bytes(vm.memory_mib << 20));
    for change in &vm.pending_changes {
        field("pending change", &format!("{change} (at the next start: `kvmesh vm restart {}`)", vm.name));
    }
    field(
        "hardware",
        &format!(
            "{} firmware, {} machine, CPU {}",
            vm.firmware,
            vm.machine,
            vm.cpu_model.as_deref().unwrap_or("default (migratable)")
        ),
    );
    field("boot order", &vm.boot_order.join(", "));
    field("cdrom", vm.cdrom.as_deref().unwrap_or("(empty)"));
    if let Some(g) = &vm.guest {
        let os = if g.os.is_empty() { "(not said)" } else { g.os.as_str() };
        let name = if g.hostname.is_empty() { String::new() } else { format!(", hostname {}", g.hostname) };
        field("guest", &format!("{os}{name} (from its guest agent)"));
        for i in &g.interfaces {
            field("", &format!("{} {} {}", i.name, i.mac, i.addresses.join(" ")));
        }
    }
    if let Some(ci) = &vm.cloud_init {
        field(
            "cloud-init",
            &format!(
                "{} of user-data, {} SSH key(s), hostname {}",
                human_bytes(ci.user_data_bytes),
                ci.ssh_keys.len(),
                ci.hostname.as_deref().unwrap_or(&vm.name)
            ),
        );
    }
    field("ha", if vm.ha { "yes (restarted elsewhere if its host dies)" } else { "no" });
    field("priority", &vm.priority.to_string());
    field("labels", &labels(&vm.labels));
    field("pin", vm.pin.as_deref().unwrap_or("-"));
    field("needs", &labels(&vm.required_labels));
    field("prefers", &labels(&vm.preferred_labels));
    let groups: Vec<String> = [
        ("anti-affinity", &vm.anti_affinity),
        ("soft-anti-affinity", &vm.soft_anti_affinity),
        ("affinity", &vm.affinity),
    ]
    .iter()
    .filter_map(|(what, g)| g.as_ref().map(|g| format!("{what} {g}")))
    .collect();
    field("groups", &if groups.is_empty() { "-".to_string() } else { groups.join(", ") });
    match (&vm.kernel, &vm.image) {
        (Some(k), _) => field(
            "boot",
            &format!(
                "kernel {k}{}{}",
                vm.initrd.as_ref().map(|i| format!(", initrd {i}")).unwrap_or_default(),
                vm.cmdline.as_ref().map(|c| format!(", cmdline {c:?}")).unwrap_or_default()
            ),
        ),
        (None, Some(i)) => field("boot", &format!("disk 0, a clone of image {i}")),
        (None, None) => field("boot", "disk 0 (blank)"),
    }
    for d in &vm.disks {
        let image = d.image.as_ref().map(|i| format!(", clone of {i}")).unwrap_or_default();
        let made = if d.created { "" } else { ", made at first start" };
        field(&format!("disk {}", d.index), &format!("{} on {}{image}{made}", human_bytes(d.size_bytes), d.storage));
    }
    if vm.nics.is_empty() {
        field("nic", "-");
    }
    for (i, n) in vm.nics.iter().enumerate() {
        field(&format!("nic {i}"), &format!("{} on network {} ({})", n.mac, n.network, n.model));
    }
    if !vm.snapshots.is_empty() {
        let names: Vec<&str> = vm.snapshots.iter().map(|s| s.name.as_str()).collect();
        field("snapshots", &names.join(", "));
    }
    field("domain", &vm.domain);
    field("epoch", &vm.epoch.to_string());
    field("created", &format_ms(vm.created_at_ms));
}
