//! libvirt XML for kvmesh domains, storage pools and volumes: generated from
//! the VM spec with every value escaped, and the kvmesh `<metadata>` tag that
//! marks a domain as ours (VM id, owning node, placement epoch).
//!
//! Pure functions, unit-tested without libvirt.

use std::fmt::Write;

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
    pub vcpus: u32,
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
    let mtu = nic.mtu.map(|m| format!("<mtu size='{m}'/>")).unwrap_or_default();
    format!(
        "<interface type='bridge'><mac address='{}'/><source bridge='{}'/><model type='{}'/>{mtu}</interface>",
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
        "<{p}:vm xmlns:{p}=\"{ns}\"><{p}:id>{:016x}</{p}:id><{p}:name>{}</{p}:name><{p}:node>{}</{p}:node><{p}:epoch>{}</{p}:epoch></{p}:vm>",
        tag.vm_id,
        escape(vm_name),
        tag.node_id,
        tag.epoch,
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
    // Copied disks open the target's own volumes.
    for disk in &to.copy_disks {
        let from = format!("file='{}'", escape(&disk.from));
        if !out.contains(&from) {
            return None;
        }
        out = out.replace(&from, &format!("file='{}'", escape(&disk.to)));
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
    let tag = Tag { vm_id: s.vm_id, node_id: s.node_id, epoch: s.epoch };
    let mut x = String::new();
    let _ = writeln!(x, "<domain type='{}'>", escape(&s.domain_type));
    let _ = writeln!(x, "  <name>{}</name>", escape(&s.domain));
    if let Some(uuid) = &s.uuid {
        let _ = writeln!(x, "  <uuid>{}</uuid>", escape(uuid));
    }
    let _ = writeln!(x, "  <title>{}</title>", escape(&s.vm_name));
    let _ = writeln!(x, "  <metadata>{}</metadata>", metadata_xml(&tag, &s.vm_name));
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", s.memory_mib);
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", s.vcpus);
    x.push_str("  <os>\n");
    if s.domain_type == "test" {
        x.push_str("    <type>hvm</type>\n");
    } else {
        x.push_str("    <type arch='x86_64' machine='pc'>hvm</type>\n");
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
        None => x.push_str("    <boot dev='hd'/>\n"),
    }
    x.push_str("  </os>\n");
    x.push_str("  <features><acpi/></features>\n");
    // A guest that powers off or crashes stays off: the agent decides what
    // happens next (restart with backoff, or report it stopped).
    x.push_str(
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n",
    );
    x.push_str("  <devices>\n");
    for (index, path) in &s.disks {
        let _ = writeln!(x, "    {}", disk_xml(*index, path));
    }
    for nic in &s.nics {
        let _ = writeln!(x, "    {}", nic_xml(nic));
    }
    if let Some(log) = &s.console_log {
        let _ = writeln!(x, "    <serial type='file'><source path='{}'/><target port='0'/></serial>", escape(log));
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
            vcpus: 2,
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
        assert!(x.contains("<serial type='file'><source path='/d/console.log'/>"));
        assert!(!x.contains("<boot dev='hd'/>"), "direct kernel boot has no disk boot");
        assert_eq!(parse_metadata(&x), Some(Tag { vm_id: 255, node_id: 42, epoch: 3 }));
        let disk_boot = domain_xml(&DomainSpec { kernel: None, ..spec() });
        assert!(disk_boot.contains("<boot dev='hd'/>") && !disk_boot.contains("<kernel>"));
    }

    #[test]
    fn metadata_roundtrips_with_libvirts_prefix() {
        // libvirt may hand the element back with its own formatting.
        let back = "<kvmesh:vm xmlns:kvmesh=\"https://kvmesh.dev/xmlns/domain/1\">\n  <kvmesh:id>00000000000000ff</kvmesh:id>\n  <kvmesh:name>w</kvmesh:name>\n  <kvmesh:node>42</kvmesh:node>\n  <kvmesh:epoch>3</kvmesh:epoch>\n</kvmesh:vm>";
        assert_eq!(parse_metadata(back), Some(Tag { vm_id: 255, node_id: 42, epoch: 3 }));
        assert_eq!(parse_metadata("<other/>"), None);
    }

    #[test]
    fn a_migration_retags_the_domain_and_moves_its_console_only() {
        let live = "<domain type='qemu'>\n  <name>kvmesh-00ff</name>\n  <uuid>u-1</uuid>\n  <metadata>\n    <kvmesh:vm xmlns:kvmesh=\"https://kvmesh.dev/xmlns/domain/1\">\n      <kvmesh:id>00000000000000ff</kvmesh:id>\n      <kvmesh:name>w</kvmesh:name>\n      <kvmesh:node>42</kvmesh:node>\n      <kvmesh:epoch>3</kvmesh:epoch>\n    </kvmesh:vm>\n  </metadata>\n  <devices>\n    <disk><source file='/shared/00ff-disk0.qcow2'/><address type='pci' slot='0x04'/></disk>\n    <serial type='file'><source path='/a/consoles/kvmesh-00ff.log'/></serial>\n    <console type='file'><source path='/a/consoles/kvmesh-00ff.log'/></console>\n  </devices>\n</domain>";
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
        assert_eq!(parse_metadata(&dest[start..]), Some(Tag { vm_id: 255, node_id: 7, epoch: 4 }));
        assert_eq!(dest.matches("/b/consoles/kvmesh-00ff.log").count(), 2);
        assert!(!dest.contains("/a/consoles"));
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
