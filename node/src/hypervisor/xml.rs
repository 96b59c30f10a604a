//! libvirt XML for kvmesh domains, storage pools and volumes: generated from
//! the VM spec with every value escaped, and the kvmesh `<metadata>` tag that
//! marks a domain as ours (VM id, owning node, placement epoch).
//!
//! Pure functions, unit-tested without libvirt.

use std::fmt::Write;

use kvmesh_raft::hardware::{BootDevice, Firmware, Machine};

/// XML namespace of kvmesh's domain metadata.
pub const METADATA_NS: &str = "https://kvmesh.dev/xmlns/domain/1";
const METADATA_PREFIX: &str = "kvmesh";

/// Everything needed to define one domain.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainSpec {
    pub domain: String,
    pub vm_id: u64,
    pub vm_name: String,
    pub node_id: u64,
    pub epoch: u64,
    /// libvirt domain type: kvm, qemu (TCG) or test.
    pub domain_type: String,
    /// The VM's spec generation this definition is made from.
    pub spec_gen: u64,
    pub vcpus: u32,
    /// The most vCPUs the running guest can be given (hot-plug).
    pub max_vcpus: u32,
    pub memory_mib: u64,
    /// Disks as (index, qcow2 volume path); index 0 is `vda`, the boot disk.
    pub disks: Vec<(u32, String)>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// NICs in order, each on the bridge its network has on this host.
    pub nics: Vec<NicXml>,
    /// Where the serial console is written.
    pub console_log: Option<String>,
    /// The UUID libvirt gave the domain when it was first defined: a
    /// redefinition must carry it, or libvirt refuses the name as taken.
    pub uuid: Option<String>,
    pub machine: Machine,
    /// UEFI asks the hypervisor for OVMF (`uefi` below, set at define).
    pub firmware: Firmware,
    /// `None`: QEMU's migratable baseline CPU.
    pub cpu_model: Option<String>,
    /// Boot devices in order (ignored by a direct kernel boot).
    pub boot_order: Vec<BootDevice>,
    /// The ISO file in the CD-ROM drive; the drive is there either way, so
    /// a medium can be inserted while the guest runs.
    pub cdrom: Option<String>,
    /// OVMF's files and the VM's own variable store, for a UEFI guest.
    pub uefi: Option<UefiFiles>,
    /// The unix socket of its VNC display (set by the hypervisor).
    pub vnc_socket: Option<String>,
    /// A channel for the QEMU guest agent (set by the hypervisor).
    pub guest_agent: bool,
    /// cloud-init's seed files (meta-data, user-data), for the hypervisor
    /// to build into `seed`.
    pub cloud_init: Option<(String, String)>,
    /// The NoCloud seed ISO, in a second CD-ROM drive (set by the hypervisor).
    pub seed: Option<String>,
}

/// A UEFI guest's firmware: OVMF's code (shared, read-only) and the VM's
/// own variables, made from OVMF's template at first start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UefiFiles {
    pub code: String,
    pub vars_template: String,
    pub nvram: String,
}

/// The CD-ROM drive's target: IDE on i440FX, SATA on Q35 (which has no IDE).
pub fn cdrom_target(machine: Machine) -> (&'static str, &'static str) {
    match machine {
        Machine::Pc => ("hdc", "ide"),
        Machine::Q35 => ("sdc", "sata"),
    }
}

/// The cloud-init seed's drive: the next one on the same bus.
pub fn seed_target(machine: Machine) -> (&'static str, &'static str) {
    match machine {
        Machine::Pc => ("hdd", "ide"),
        Machine::Q35 => ("sdd", "sata"),
    }
}

/// The medium in a live definition's CD-ROM drive `dev`, if any.
pub fn cdrom_source(live_xml: &str, dev: &str) -> Option<String> {
    let mut rest = live_xml;
    while let Some(start) = rest.find("<disk ") {
        let len = rest[start..].find("</disk>")?;
        let block = &rest[start..start + len];
        if block.contains("device='cdrom'") && block.contains(&format!("dev='{dev}'")) {
            let at = block.find("<source file='")? + "<source file='".len();
            return Some(unescape(&block[at..at + block[at..].find('\'')?]));
        }
        rest = &rest[start + len..];
    }
    None
}

/// The most vCPUs a guest starting with `vcpus` can be given while it runs
/// (libvirt's `<vcpu current>` maximum): up to its host's CPUs, but no more
/// than four times its own count (every possible vCPU costs the guest a
/// little at boot), and never past 240 (the pc machine takes at most 255,
/// and q35 beyond that needs an interrupt-remapping IOMMU).
pub fn vcpu_room(vcpus: u32, host_cpus: u32) -> u32 {
    host_cpus.min(vcpus.saturating_mul(4)).min(240).max(vcpus)
}

/// A running domain's disk targets (`vda`, …; not CD-ROMs) and NIC
/// devices on the host (`vnet3`), from its live XML: what libvirt's
/// block and interface statistics are asked for.
pub fn device_targets(live_xml: &str) -> (Vec<String>, Vec<String>) {
    let target = |block: &str| {
        let at = block.find("<target dev='")? + "<target dev='".len();
        Some(block[at..at + block[at..].find('\'')?].to_string())
    };
    let blocks = |open: &str, close: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = live_xml;
        while let Some(start) = rest.find(open) {
            let Some(len) = rest[start..].find(close) else { break };
            out.push(rest[start..start + len].to_string());
            rest = &rest[start + len..];
        }
        out
    };
    let disks =
        blocks("<disk ", "</disk>").iter().filter(|b| b.contains("device='disk'")).filter_map(|b| target(b)).collect();
    let nics = blocks("<interface ", "</interface>").iter().filter_map(|b| target(b)).collect();
    (disks, nics)
}

fn unescape(s: &str) -> String {
    s.replace("&apos;", "'").replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The CD-ROM drive, with `iso` in it or empty; also what a live medium
/// change sends (libvirt matches the drive by its target).
pub fn cdrom_xml(machine: Machine, iso: Option<&str>, boot: Option<usize>) -> String {
    cdrom_xml_at(cdrom_target(machine), iso, boot)
}

fn cdrom_xml_at((dev, bus): (&str, &str), iso: Option<&str>, boot: Option<usize>) -> String {
    let source = iso.map(|p| format!("<source file='{}'/>", escape(p))).unwrap_or_default();
    let boot = boot.map(|n| format!("<boot order='{n}'/>")).unwrap_or_default();
    format!(
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>{source}<target dev='{dev}' bus='{bus}'/><readonly/>{boot}</disk>"
    )
}

/// One NIC as libvirt gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicXml {
    pub bridge: String,
    pub mac: String,
    pub model: String,
    /// The guest's MTU, when the network sets one.
    pub mtu: Option<u32>,
}

/// One NIC's `<interface>` element (also what a hot-plug attaches).
pub fn nic_xml(nic: &NicXml) -> String {
    nic_xml_booting(nic, None)
}

fn nic_xml_booting(nic: &NicXml, boot: Option<usize>) -> String {
    let mtu = nic.mtu.map(|m| format!("<mtu size='{m}'/>")).unwrap_or_default();
    let boot = boot.map(|n| format!("<boot order='{n}'/>")).unwrap_or_default();
    format!(
        "<interface type='bridge'><mac address='{}'/><source bridge='{}'/><model type='{}'/>{mtu}{boot}</interface>",
        escape(&nic.mac),
        escape(&nic.bridge),
        escape(&nic.model)
    )
}

/// The `<interface>` elements of a domain's XML with their MACs, as
/// libvirt wrote them (what an unplug must name).
pub fn interfaces(domain_xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = domain_xml;
    while let Some(start) = rest.find("<interface ") {
        let Some(len) = rest[start..].find("</interface>") else { break };
        let block = &rest[start..start + len + "</interface>".len()];
        if let Some(mac) = block.split("<mac address='").nth(1).and_then(|m| m.split('\'').next()) {
            out.push((mac.to_string(), block.to_string()));
        }
        rest = &rest[start + len..];
    }
    out
}

/// The kvmesh tag read back from a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub vm_id: u64,
    pub node_id: u64,
    pub epoch: u64,
    /// The VM's spec generation the definition was made from: a live
    /// migration carries it, so the target reports the run it received.
    pub spec_gen: u64,
}

/// Escapes text for XML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The metadata element alone (also what `virDomainGetMetadata` returns).
pub fn metadata_xml(tag: &Tag, vm_name: &str) -> String {
    format!(
        "<{p}:vm xmlns:{p}=\"{ns}\"><{p}:id>{:016x}</{p}:id><{p}:name>{}</{p}:name><{p}:node>{}</{p}:node><{p}:epoch>{}</{p}:epoch><{p}:spec>{}</{p}:spec></{p}:vm>",
        tag.vm_id,
        escape(vm_name),
        tag.node_id,
        tag.epoch,
        tag.spec_gen,
        p = METADATA_PREFIX,
        ns = METADATA_NS,
    )
}

/// Reads the kvmesh tag from a metadata element (any namespace prefix).
pub fn parse_metadata(xml: &str) -> Option<Tag> {
    let field = |name: &str| -> Option<String> {
        let open = xml.find(&format!(":{name}>")).or_else(|| xml.find(&format!("<{name}>")))?;
        let start = open + xml[open..].find('>')? + 1;
        let end = start + xml[start..].find('<')?;
        Some(xml[start..end].trim().to_string())
    };
    Some(Tag {
        vm_id: u64::from_str_radix(&field("id")?, 16).ok()?,
        node_id: field("node")?.parse().ok()?,
        epoch: field("epoch")?.parse().ok()?,
        // Absent in definitions made before generations were counted.
        spec_gen: field("spec").and_then(|g| g.parse().ok()).unwrap_or(0),
    })
}

/// A running domain's definition (libvirt's migratable form) as the target
/// of a live migration must define it: tagged with the target's node id
/// and the migration's epoch, its console log in the target's folder. The
/// rest (devices, addresses, uuid) stays exactly as it is: libvirt refuses
/// a destination definition that changes the guest's hardware.
pub fn retarget(xml: &str, node_id: u64, to: &super::MigrationTarget, consoles_dir: &str) -> Option<String> {
    let metadata = xml.find("<metadata>")?;
    let tag = parse_metadata(&xml[metadata..])?;
    if tag.node_id != node_id {
        return None;
    }
    let (head, tail) = xml.split_at(metadata);
    let tail = replace_field(tail, "node", &to.node_id.to_string())?;
    let tail = replace_field(&tail, "epoch", &to.epoch.to_string())?;
    let mut out = format!("{head}{tail}").replace(
        &format!("{}/", consoles_dir.trim_end_matches('/')),
        &format!("{}/", to.consoles_dir.trim_end_matches('/')),
    );
    // UEFI variables of a VM without disks live in the host's data dir,
    // beside its consoles folder: the target's own.
    let nvram_of = |consoles: &str| {
        format!("{}/nvram/", consoles.trim_end_matches('/').trim_end_matches("consoles").trim_end_matches('/'))
    };
    out = out.replace(&nvram_of(consoles_dir), &nvram_of(&to.consoles_dir));
    // Copied disks open the target's own volumes, and variables kept beside
    // a copied boot disk move to its new folder.
    for disk in &to.copy_disks {
        let from = format!("file='{}'", escape(&disk.from));
        if !out.contains(&from) {
            return None;
        }
        out = out.replace(&from, &format!("file='{}'", escape(&disk.to)));
        let folder = |p: &str| std::path::Path::new(p).parent().map(|d| format!(">{}/", d.display()));
        if let (Some(a), Some(b)) = (folder(&disk.from), folder(&disk.to)) {
            out = out.replace(&format!("{a}kvmesh-"), &format!("{b}kvmesh-"));
        }
    }
    Some(out)
}

/// `xml` with the text of its first `PREFIX:name` element replaced.
fn replace_field(xml: &str, name: &str, value: &str) -> Option<String> {
    let open = xml.find(&format!(":{name}>"))?;
    let start = open + xml[open..].find('>')? + 1;
    let end = start + xml[start..].find('<')?;
    Some(format!("{}{}{}", &xml[..start], value, &xml[end..]))
}

/// The domain definition.
pub fn domain_xml(s: &DomainSpec) -> String {
    let tag = Tag { vm_id: s.vm_id, node_id: s.node_id, epoch: s.epoch, spec_gen: s.spec_gen };
    let mut x = String::new();
    let _ = writeln!(x, "<domain type='{}'>", escape(&s.domain_type));
    let _ = writeln!(x, "  <name>{}</name>", escape(&s.domain));
    if let Some(uuid) = &s.uuid {
        let _ = writeln!(x, "  <uuid>{}</uuid>", escape(uuid));
    }
    let _ = writeln!(x, "  <title>{}</title>", escape(&s.vm_name));
    let _ = writeln!(x, "  <metadata>{}</metadata>", metadata_xml(&tag, &s.vm_name));
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", s.memory_mib);
    if s.max_vcpus > s.vcpus && s.domain_type != "test" {
        let _ = writeln!(x, "  <vcpu placement='static' current='{}'>{}</vcpu>", s.vcpus, s.max_vcpus);
    } else {
        let _ = writeln!(x, "  <vcpu>{}</vcpu>", s.vcpus);
    }
    x.push_str("  <os>\n");
    if s.domain_type == "test" {
        x.push_str("    <type>hvm</type>\n");
    } else {
        let _ = writeln!(x, "    <type arch='x86_64' machine='{}'>hvm</type>", s.machine.as_str());
    }
    if let Some(uefi) = &s.uefi {
        let _ = writeln!(x, "    <loader readonly='yes' type='pflash'>{}</loader>", escape(&uefi.code));
        let _ = writeln!(x, "    <nvram template='{}'>{}</nvram>", escape(&uefi.vars_template), escape(&uefi.nvram));
    }
    match &s.kernel {
        Some(kernel) => {
            let _ = writeln!(x, "    <kernel>{}</kernel>", escape(kernel));
            if let Some(initrd) = &s.initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", escape(initrd));
            }
            if let Some(cmdline) = &s.cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(cmdline));
            }
        }
        // Per-device boot order (below), which SeaBIOS and OVMF both read.
        None => {}
    }
    x.push_str("  </os>\n");
    x.push_str("  <features><acpi/><apic/></features>\n");
    // Memory is not made hot-pluggable: a maximum (and the NUMA cell it
    // needs) costs a guest tens of MiB for the kernel's map of the range,
    // and kept 128 MiB guests from booting at all. Memory changes wait for
    // the next start.
    match s.cpu_model.as_deref() {
        None => {}
        Some(mode @ ("host-passthrough" | "host-model")) => {
            let _ = writeln!(x, "  <cpu mode='{mode}'/>");
        }
        Some(model) => {
            let _ = writeln!(
                x,
                "  <cpu mode='custom' match='exact'><model fallback='forbid'>{}</model></cpu>",
                escape(model)
            );
        }
    }
    // The position of each device in the boot order (1-based), none for a
    // direct kernel boot.
    let boot_index = |dev: BootDevice| -> Option<usize> {
        if s.kernel.is_some() {
            return None;
        }
        s.boot_order.iter().position(|d| *d == dev).map(|i| i + 1)
    };
    // A guest that powers off or crashes stays off: the agent decides what
    // happens next (restart with backoff, or report it stopped).
    x.push_str(
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n",
    );
    x.push_str("  <devices>\n");
    for (index, path) in &s.disks {
        let boot = if *index == 0 { boot_index(BootDevice::Disk) } else { None };
        let disk = disk_xml(*index, path);
        let _ = match boot {
            Some(n) => writeln!(x, "    {}<boot order='{n}'/></disk>", disk.trim_end_matches("</disk>")),
            None => writeln!(x, "    {disk}"),
        };
    }
    if s.domain_type != "test" {
        let _ = writeln!(x, "    {}", cdrom_xml(s.machine, s.cdrom.as_deref(), boot_index(BootDevice::Cdrom)));
    }
    if let Some(seed) = &s.seed {
        let _ = writeln!(x, "    {}", cdrom_xml_at(seed_target(s.machine), Some(seed), None));
    }
    for (i, nic) in s.nics.iter().enumerate() {
        let boot = if i == 0 { boot_index(BootDevice::Network) } else { None };
        let _ = writeln!(x, "    {}", nic_xml_booting(nic, boot));
    }
    if let Some(log) = &s.console_log {
        // A pty, so an operator can type into it (`vm console`), and a log
        // file of everything it printed (`vm console --tail`).
        let _ = writeln!(
            x,
            "    <serial type='pty'><log file='{}'/><target port='0'/></serial>\n    <console type='pty'><target type='serial' port='0'/></console>",
            escape(log)
        );
    }
    if let Some(socket) = &s.vnc_socket {
        // On a unix socket only root on the host can open: the way in is
        // kvmesh's authenticated proxy (`vm vnc`).
        let _ = writeln!(x, "    <graphics type='vnc' socket='{}'/>", escape(socket));
        x.push_str("    <video><model type='vga'/></video>\n");
    }
    if s.machine == Machine::Q35 && s.domain_type != "test" {
        // PCIe has no hot-plug slots of its own: spare root ports, so disks
        // and NICs can still be plugged into a running guest.
        x.push_str("    <controller type='pci' index='0' model='pcie-root'/>\n");
        for index in 1..=8 {
            let _ = writeln!(x, "    <controller type='pci' index='{index}' model='pcie-root-port'/>");
        }
    }
    if s.guest_agent {
        x.push_str("    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n");
    }
    x.push_str("  </devices>\n</domain>\n");
    x
}

use kvmesh_raft::storage::MAX_DISKS;

/// The guest device of disk `index`: a disk keeps its name (`vdb`) for its
/// whole life, also when a disk before it is removed.
pub fn disk_target(index: u32) -> String {
    format!("vd{}", (b'a' + index.min(MAX_DISKS - 1) as u8) as char)
}

/// One disk device, also what a live attach sends. `cache='none'` (what
/// oVirt and Proxmox use): no host page cache, so a host that takes the
/// guest over, live or after a failure, reads what was written, never a
/// stale cached copy.
pub fn disk_xml(index: u32, path: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='{}'/><target dev='{}' bus='virtio'/></disk>",
        escape(path),
        disk_target(index)
    )
}

/// A qcow2 volume; with `backing`, a thin clone of that image.
pub fn volume_xml(name: &str, capacity_bytes: u64, backing: Option<(&str, &str)>) -> String {
    let mut x = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity_bytes}</capacity><target><format type='qcow2'/></target>",
        escape(name)
    );
    if let Some((path, format)) = backing {
        let _ =
            write!(x, "<backingStore><path>{}</path><format type='{}'/></backingStore>", escape(path), escape(format));
    }
    x.push_str("</volume>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            domain: "kvmesh-00000000000000ff".into(),
            vm_id: 255,
            vm_name: "web<1>&'x'".into(),
            node_id: 42,
            epoch: 3,
            domain_type: "qemu".into(),
            spec_gen: 6,
            vcpus: 2,
            max_vcpus: 4,
            memory_mib: 256,
            disks: vec![(0, "/d/a b.qcow2".into()), (2, "/d/c.qcow2".into())],
            kernel: Some("/boot/vmlinuz".into()),
            initrd: Some("/boot/initrd".into()),
            cmdline: Some("console=ttyS0 x=\"1\"".into()),
            nics: vec![NicXml {
                bridge: "kvb1".into(),
                mac: "0a:00:00:00:00:01".into(),
                model: "virtio".into(),
                mtu: Some(1450),
            }],
            console_log: Some("/d/console.log".into()),
            uuid: None,
            machine: Machine::Pc,
            firmware: Firmware::Bios,
            cpu_model: None,
            boot_order: kvmesh_raft::hardware::DEFAULT_BOOT_ORDER.to_vec(),
            cdrom: None,
            uefi: None,
            vnc_socket: Some("/d/vnc.sock".into()),
            guest_agent: true,
            cloud_init: None,
            seed: None,
        }
    }

    #[test]
    fn domain_xml_escapes_and_carries_the_tag() {
        let x = domain_xml(&spec());
        assert!(x.contains("<title>web&lt;1&gt;&amp;&apos;x&apos;</title>"), "{x}");
        assert!(x.contains("<cmdline>console=ttyS0 x=&quot;1&quot;</cmdline>"));
        assert!(x.contains("<source file='/d/a b.qcow2'/><target dev='vda'"));
        assert!(x.contains("<source file='/d/c.qcow2'/><target dev='vdc'"), "a disk keeps its name: {x}");
        assert!(x.contains("<domain type='qemu'>"));
        let ifaces = interfaces(&x);
        assert_eq!(ifaces.len(), 1);
        assert_eq!(ifaces[0].0, "0a:00:00:00:00:01");
        assert!(ifaces[0].1.starts_with("<interface type='bridge'>") && ifaces[0].1.ends_with("</interface>"));
        assert!(
            x.contains("<interface type='bridge'><mac address='0a:00:00:00:00:01'/><source bridge='kvb1'/><model type='virtio'/><mtu size='1450'/></interface>"),
            "{x}"
        );
        assert!(x.contains("<serial type='pty'><log file='/d/console.log'/>"));
        assert!(x.contains("<vcpu placement='static' current='2'>4</vcpu>"), "room to plug vCPUs: {x}");

        assert!(x.contains("<graphics type='vnc' socket='/d/vnc.sock'/>"));
        assert!(x.contains("name='org.qemu.guest_agent.0'"));
        assert!(!x.contains("<boot order"), "direct kernel boot has no boot order");
        assert!(x.contains("<target dev='hdc' bus='ide'/><readonly/></disk>"), "an empty drive: {x}");
        assert!(!x.contains("<cpu") && !x.contains("<loader") && !x.contains("maxMemory"), "migratable defaults: {x}");
        assert_eq!(parse_metadata(&x), Some(Tag { vm_id: 255, node_id: 42, epoch: 3, spec_gen: 6 }));
        let disk_boot = domain_xml(&DomainSpec { kernel: None, ..spec() });
        assert!(disk_boot.contains("<target dev='vda' bus='virtio'/><boot order='1'/></disk>"), "{disk_boot}");
        assert!(!disk_boot.contains("<kernel>"));
    }

    #[test]
    fn hardware_choices_reach_the_definition() {
        let uefi =
            UefiFiles { code: "/ovmf/CODE.fd".into(), vars_template: "/ovmf/VARS.fd".into(), nvram: "/d/v.fd".into() };
        let x = domain_xml(&DomainSpec {
            kernel: None,
            machine: Machine::Q35,
            cpu_model: Some("Haswell-noTSX".into()),
            boot_order: vec![BootDevice::Cdrom, BootDevice::Disk],
            cdrom: Some("/iso/inst'all.iso".into()),
            uefi: Some(uefi),
            ..spec()
        });
        assert!(x.contains("machine='q35'"), "{x}");
        assert!(x.contains("<loader readonly='yes' type='pflash'>/ovmf/CODE.fd</loader>"));
        assert!(x.contains("<nvram template='/ovmf/VARS.fd'>/d/v.fd</nvram>"));
        assert!(x.contains("<model fallback='forbid'>Haswell-noTSX</model>"));
        assert!(
            x.contains(
                "<source file='/iso/inst&apos;all.iso'/><target dev='sdc' bus='sata'/><readonly/><boot order='1'/>"
            ),
            "{x}"
        );
        assert!(x.contains("<target dev='vda' bus='virtio'/><boot order='2'/>"), "{x}");
        assert!(!x.contains("<interface type='bridge'><mac address='0a:00:00:00:00:01'/><source bridge='kvb1'/><model type='virtio'/><mtu size='1450'/><boot"), "the network is not in this order");
        assert_eq!(cdrom_source(&x, "sdc").as_deref(), Some("/iso/inst'all.iso"));
        let seeded = domain_xml(&DomainSpec { seed: Some("/d/seed.iso".into()), ..spec() });
        assert_eq!(cdrom_source(&seeded, "hdd").as_deref(), Some("/d/seed.iso"), "{seeded}");
        assert_eq!(cdrom_source(&domain_xml(&DomainSpec { kernel: None, ..spec() }), "hdc"), None, "an empty drive");
        let passthrough = domain_xml(&DomainSpec { cpu_model: Some("host-passthrough".into()), ..spec() });
        assert!(passthrough.contains("<cpu mode='host-passthrough'/>"), "{passthrough}");
    }

    #[test]
    fn vcpu_room_is_bounded_by_the_host_the_guest_and_the_machine() {
        assert_eq!(vcpu_room(1, 2), 2);
        assert_eq!(vcpu_room(2, 64), 8, "four times its own");
        assert_eq!(vcpu_room(100, 512), 240, "the machine's limit");
        assert_eq!(vcpu_room(4, 2), 4, "never fewer than it has");
        assert_eq!(vcpu_room(1, 0), 1, "a host not known yet");
    }

    #[test]
    fn statistics_are_asked_of_disks_and_nics_not_cdroms() {
        let live = "<domain><devices><disk type='file' device='disk'><source file='/d/a'/><target dev='vda' bus='virtio'/></disk>\
            <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>\
            <interface type='bridge'><mac address='0a:00:00:00:00:01'/><target dev='vnet7'/><model type='virtio'/></interface></devices></domain>";
        assert_eq!(device_targets(live), (vec!["vda".to_string()], vec!["vnet7".to_string()]));
    }

    #[test]
    fn metadata_roundtrips_with_libvirts_prefix() {
        // libvirt may hand the element back with its own formatting.
        let back = "<kvmesh:vm xmlns:kvmesh=\"https://kvmesh.dev/xmlns/domain/1\">\n  <kvmesh:id>00000000000000ff</kvmesh:id>\n  <kvmesh:name>w</kvmesh:name>\n  <kvmesh:node>42</kvmesh:node>\n  <kvmesh:epoch>3</kvmesh:epoch>\n  <kvmesh:spec>6</kvmesh:spec>\n</kvmesh:vm>";
        assert_eq!(parse_metadata(back), Some(Tag { vm_id: 255, node_id: 42, epoch: 3, spec_gen: 6 }));
        assert_eq!(parse_metadata("<other/>"), None);
        let older = back.replace("  <kvmesh:spec>6</kvmesh:spec>\n", "");
        assert_eq!(parse_metadata(&older).map(|t| t.spec_gen), Some(0), "defined before generations counted");
    }

    #[test]
    fn a_migration_retags_the_domain_and_moves_its_console_only() {
        let live = "<domain type='qemu'>\n  <name>kvmesh-00ff</name>\n  <uuid>u-1</uuid>\n  <metadata>\n    <kvmesh:vm xmlns:kvmesh=\"https://kvmesh.dev/xmlns/domain/1\">\n      <kvmesh:id>00000000000000ff</kvmesh:id>\n      <kvmesh:name>w</kvmesh:name>\n      <kvmesh:node>42</kvmesh:node>\n      <kvmesh:epoch>3</kvmesh:epoch>\n      <kvmesh:spec>6</kvmesh:spec>\n    </kvmesh:vm>\n  </metadata>\n  <os><nvram template='/ovmf/VARS.fd'>/a/nvram/kvmesh-00ff_VARS.fd</nvram></os>\n  <devices>\n    <disk><source file='/shared/00ff-disk0.qcow2'/><address type='pci' slot='0x04'/></disk>\n    <serial type='file'><source path='/a/consoles/kvmesh-00ff.log'/></serial>\n    <console type='file'><source path='/a/consoles/kvmesh-00ff.log'/></console>\n  </devices>\n</domain>";
        let to = crate::hypervisor::MigrationTarget {
            libvirt_uri: "qemu+tcp://b/system".into(),
            data_uri: None,
            node_id: 7,
            epoch: 4,
            consoles_dir: "/b/consoles".into(),
            bandwidth_mib: 0,
            copy_disks: Vec::new(),
        };
        let dest = retarget(live, 42, &to, "/a/consoles").unwrap();
        let start = dest.find("<metadata>").unwrap();
        assert_eq!(parse_metadata(&dest[start..]), Some(Tag { vm_id: 255, node_id: 7, epoch: 4, spec_gen: 6 }));
        assert_eq!(dest.matches("/b/consoles/kvmesh-00ff.log").count(), 2);
        assert!(!dest.contains("/a/consoles"));
        assert!(dest.contains(">/b/nvram/kvmesh-00ff_VARS.fd</nvram>"), "a diskless VM's variables: {dest}");
        assert!(
            dest.contains("<uuid>u-1</uuid>")
                && dest.contains("slot='0x04'")
                && dest.contains("/shared/00ff-disk0.qcow2")
        );
        assert_eq!(retarget(live, 41, &to, "/a/consoles"), None, "another node's domain");

        // A copied disk opens the target's volume; a disk it does not have
        // is a mistake, not something to skip.
        let copy = |from: &str| crate::hypervisor::CopiedDisk {
            dev: "vda".into(),
            from: from.into(),
            to: "/b/images/00ff-disk0.qcow2".into(),
        };
        let to = crate::hypervisor::MigrationTarget { copy_disks: vec![copy("/shared/00ff-disk0.qcow2")], ..to };
        let dest = retarget(live, 42, &to, "/a/consoles").unwrap();
        assert!(dest.contains("<source file='/b/images/00ff-disk0.qcow2'/>") && !dest.contains("/shared/"));
        let to = crate::hypervisor::MigrationTarget { copy_disks: vec![copy("/elsewhere.qcow2")], ..to };
        assert_eq!(retarget(live, 42, &to, "/a/consoles"), None);
    }

    #[test]
    fn a_volume_may_be_a_thin_clone() {
        let v = volume_xml("x.qcow2", 1 << 30, Some(("/base's.img", "raw")));
        assert!(v.contains("<backingStore><path>/base&apos;s.img</path><format type='raw'/>"));
    }
}
