//! Wire to model: client requests checked and turned into model values.
//! Each error is a sentence for the client (an invalid argument).

use std::collections::{BTreeMap, HashMap};

use kvmesh_proto as pb;
use kvmesh_scheduler::Policy;

use crate::error::{Error, Result};
use crate::hardware::{self, BootDevice, CloudInit, CloudInitChange, Firmware, Hardware, Machine, VmChange};
use crate::model::{PlacementSettings, VmSpec};
use crate::networks::{Mac, Network, NetworkKind, Nic, DEFAULT_NIC_MODEL};
use crate::storage::{Disk, DEFAULT_STORAGE};
use crate::view;

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidRequest(message.into())
}

/// Labels as `key=value` pairs: a key, and no `=` in either.
pub fn labels(m: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    for (k, v) in m {
        if k.is_empty() || k.contains('=') || v.contains('=') {
            return Err(invalid(format!("bad label {k}={v}: use key=value")));
        }
    }
    Ok(m.clone().into_iter().collect())
}

/// The replicated spec of a create request (the name is checked by the
/// caller, which knows the naming rules).
pub fn vm_spec(req: &pb::CreateVmRequest) -> Result<VmSpec> {
    // Host paths would let any client attach any host file to a guest and
    // read it there; only imported images are attached.
    for (flag, kind, name) in
        [("--image", "disk", &req.image), ("--kernel", "kernel", &req.kernel), ("--initrd", "initrd", &req.initrd)]
    {
        if let Some(name) = name {
            if name.contains('/') || name.is_empty() {
                return Err(invalid(format!(
                    "{flag} takes the name of an imported image, not a host path ({name:?}); import the file first: `kvmesh image import NAME {name} --storage DOMAIN --kind {kind}`, then pass {flag} NAME"
                )));
            }
        }
    }
    if req.initrd.is_some() && req.kernel.is_none() {
        return Err(invalid("--initrd needs --kernel"));
    }
    if req.cmdline.is_some() && req.kernel.is_none() {
        return Err(invalid("--cmdline needs --kernel"));
    }
    if req.affinity.is_some() && req.affinity == req.anti_affinity {
        return Err(invalid("a group cannot be both --affinity and --anti-affinity"));
    }
    // The boot disk's domain and size come from the image's record
    // (`ClusterState::complete_disks`); blank disks follow it.
    let mut disks: Vec<Disk> = req
        .image
        .iter()
        .map(|image| Disk { index: 0, size_bytes: 0, storage: String::new(), image: Some(image.clone()), volume: None })
        .collect();
    for d in &req.disks {
        if d.size_bytes == 0 {
            return Err(invalid("a disk needs a size, such as --disk 10G or --disk 10G@shared"));
        }
        let storage = if d.storage.is_empty() { DEFAULT_STORAGE.to_string() } else { d.storage.clone() };
        let index = disks.len() as u32;
        disks.push(Disk { index, size_bytes: d.size_bytes, storage, image: None, volume: None });
    }
    let spec = VmSpec {
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        ha: req.ha,
        disks,
        kernel: req.kernel.clone(),
        initrd: req.initrd.clone(),
        cmdline: req.cmdline.clone(),
        nics: req.nics.iter().map(nic).collect::<Result<_>>()?,
        priority: req.priority,
        pin: req.pin.clone(),
        required_labels: labels(&req.required_labels)?,
        preferred_labels: labels(&req.preferred_labels)?,
        anti_affinity: req.anti_affinity.clone(),
        soft_anti_affinity: req.soft_anti_affinity.clone(),
        affinity: req.affinity.clone(),
        labels: labels(&req.labels)?,
        hardware: Hardware {
            firmware: parse_or_default(&req.firmware, Firmware::parse, "--firmware", "bios or uefi")?,
            machine: parse_or_default(&req.machine, Machine::parse, "--machine", "pc or q35")?,
            cpu_model: req.cpu_model.clone().filter(|m| !m.is_empty()).map(cpu_model).transpose()?,
            boot_order: boot_order(req.boot_order.iter().map(String::as_str))?,
            cdrom: req.cdrom.clone().filter(|c| !c.is_empty()),
            cloud_init: req.cloud_init.as_ref().map(cloud_init),
        },
    };
    view::request(0, &req.name, &spec).validate().map_err(|e| invalid(e.to_string()))?;
    Ok(spec)
}

/// An enum setting: empty is the default, anything else must parse.
fn parse_or_default<T: Default>(s: &str, parse: fn(&str) -> Option<T>, flag: &str, allowed: &str) -> Result<T> {
    if s.is_empty() {
        return Ok(T::default());
    }
    parse(s).ok_or_else(|| invalid(format!("{flag} {s:?} is not known; use {allowed}")))
}

/// A VM's cloud-init settings as the model keeps them (the API checked
/// their content).
pub fn cloud_init(ci: &pb::CloudInit) -> CloudInit {
    CloudInit {
        user_data: ci.user_data.clone().filter(|u| !u.is_empty()),
        ssh_keys: ci.ssh_keys.iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect(),
        hostname: ci.hostname.clone().filter(|h| !h.is_empty()),
    }
}

/// An enum setting that may be left out.
fn parse_opt<T>(v: &Option<String>, parse: fn(&str) -> Option<T>, flag: &str, allowed: &str) -> Result<Option<T>> {
    v.as_deref()
        .map(|s| parse(s).ok_or_else(|| invalid(format!("{flag} {s:?} is not known; use {allowed}"))))
        .transpose()
}

/// A checked CPU model name.
pub fn cpu_model(model: String) -> Result<String> {
    hardware::check_cpu_model(&model).map_err(invalid)?;
    Ok(model)
}

/// A boot order from its device names; none is the default order.
pub fn boot_order<'a>(names: impl Iterator<Item = &'a str>) -> Result<Vec<BootDevice>> {
    let order = names
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            BootDevice::parse(n)
                .ok_or_else(|| invalid(format!("boot device {n:?} is not known; use disk, cdrom or network")))
        })
        .collect::<Result<Vec<_>>>()?;
    hardware::check_boot_order(&order).map_err(invalid)?;
    Ok(order)
}

/// `vm set`'s size, HA and hardware part; `None` when it changes none.
pub fn vm_change(req: &pb::UpdateVmRequest) -> Result<Option<VmChange>> {
    let change = VmChange {
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        ha: req.ha,
        firmware: parse_opt(&req.firmware, Firmware::parse, "--firmware", "bios or uefi")?,
        machine: parse_opt(&req.machine, Machine::parse, "--machine", "pc or q35")?,
        cpu_model: req.cpu_model.clone().map(|m| (!m.is_empty()).then(|| cpu_model(m)).transpose()).transpose()?,
        boot_order: req.boot_order.as_deref().map(|o| boot_order(o.split(','))).transpose()?,
        cdrom: None,
        cloud_init: match (&req.cloud_init, req.no_cloud_init) {
            (Some(_), true) => return Err(invalid("give new cloud-init settings or --no-cloud-init, not both")),
            (Some(ci), false) => {
                let c = cloud_init(ci);
                Some(CloudInitChange::Set {
                    user_data: c.user_data,
                    ssh_keys: (!ci.ssh_keys.is_empty()).then_some(c.ssh_keys),
                    hostname: c.hostname,
                })
            }
            (None, true) => Some(CloudInitChange::Remove),
            (None, false) => None,
        },
    };
    if change.vcpus == Some(0) || change.memory_mib == Some(0) {
        return Err(invalid("a VM needs at least 1 vCPU and 1 MiB of memory"));
    }
    Ok((!change.is_empty()).then_some(change))
}

/// A NIC of a request: an empty MAC is left for `apply` to allocate.
pub fn nic(n: &pb::Nic) -> Result<Nic> {
    if n.network.is_empty() {
        return Err(invalid("a NIC needs a network: --nic NETWORK[,mac=MAC][,model=virtio]"));
    }
    let mac = if n.mac.is_empty() { Mac::default() } else { n.mac.parse::<Mac>().map_err(invalid)? };
    let model = if n.model.is_empty() { DEFAULT_NIC_MODEL.to_string() } else { n.model.clone() };
    let nic = Nic { network: n.network.clone(), mac, model };
    nic.validate().map_err(invalid)?;
    Ok(nic)
}

/// `network add`: the definition to record, checked as far as it can be
/// without a host.
pub fn network(req: &pb::AddNetworkRequest) -> Result<Network> {
    let flag = |v: &Option<String>, f: &str| {
        v.clone().filter(|s| !s.is_empty()).ok_or_else(|| invalid(format!("a {} network needs {f}", req.kind)))
    };
    let kind = match req.kind.as_str() {
        "bridge" => NetworkKind::Bridge { bridge: flag(&req.bridge, "--bridge BR")? },
        "vlan" => {
            let vlan = req.vlan.ok_or_else(|| invalid("a vlan network needs --vlan ID (1-4094)"))?;
            let vlan = u16::try_from(vlan).map_err(|_| invalid(format!("VLAN id {vlan} is outside 1-4094")))?;
            NetworkKind::Vlan { uplink: flag(&req.uplink, "--uplink IF")?, vlan }
        }
        "vxlan" => NetworkKind::Vxlan { vni: req.vni.ok_or_else(|| invalid("a vxlan network needs --vni N"))? },
        "isolated" => NetworkKind::Isolated,
        other => return Err(invalid(format!("unknown network kind {other:?}: use bridge, vlan, vxlan or isolated"))),
    };
    let extra = [
        (req.bridge.is_some() && req.kind != "bridge", "--bridge"),
        (req.uplink.is_some() && req.kind != "vlan", "--uplink"),
        (req.vlan.is_some() && req.kind != "vlan", "--vlan"),
        (req.vni.is_some() && req.kind != "vxlan", "--vni"),
    ];
    if let Some((_, f)) = extra.iter().find(|(bad, _)| *bad) {
        return Err(invalid(format!("{f} does not apply to a {} network", req.kind)));
    }
    let n = Network { name: req.name.clone(), kind, required: req.required, mtu: req.mtu, created_at_ms: 0 };
    n.validate().map_err(invalid)?;
    Ok(n)
}

/// New placement settings: the request's policy, and its ratios and
/// balance setting where given (else the current ones).
pub fn placement(req: &pb::SetPolicyRequest, current: &PlacementSettings) -> Result<PlacementSettings> {
    let policy: Policy = req.policy.parse().map_err(|e: kvmesh_scheduler::Error| invalid(e.to_string()))?;
    let mut settings = PlacementSettings::with_ratios(
        policy,
        req.cpu_overcommit.unwrap_or(current.cpu_overcommit()),
        req.memory_overcommit.unwrap_or(current.memory_overcommit()),
    )
    .map_err(|e| invalid(e.to_string()))?;
    settings.balance = req.balance.unwrap_or(current.balance);
    Ok(settings)
}
