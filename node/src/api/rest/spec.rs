//! A VM as a REST client writes it (`PUT /api/v1/vms/{name}`), and what
//! writing it to an existing VM changes.
//!
//! A PUT is the whole spec: a field left out means its default (written
//! out in the schema), so the same document always describes the same VM
//! and a second PUT of it changes nothing. What the VM can change in place
//! (size, HA, hardware, labels, description, priority, CD-ROM, cloud-init)
//! is changed through `vm set`'s and `vm cdrom`'s gRPC methods; what it
//! cannot (its image, disks, NICs and placement rules) is refused naming
//! the field, as a Terraform provider's "forces replacement".

use std::collections::BTreeMap;

use kvmesh_proto as pb;
use serde::Deserialize;
use tonic::Status;
use utoipa::ToSchema;

/// A closed set of words, as a JSON string enum: serde refuses any other
/// word naming the ones it takes, and the OpenAPI schema lists them.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        // The words are the variants in kebab-case (utoipa's schema reads
        // `rename_all`, not a variant's `rename`); `as_str` says them, and
        // the unit tests check that the two agree.
        #[derive(serde::Deserialize, utoipa::ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name { $($variant),* }

        impl $name {
            #[allow(dead_code)]
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
        }
    };
}
pub(crate) use choice;

choice!(
    /// The VM's firmware.
    Firmware { Bios = "bios", Uefi = "uefi" }
);
choice!(
    /// The VM's machine type.
    Machine { Pc = "pc", Q35 = "q35" }
);
choice!(
    /// A device to boot from.
    BootDevice { Disk = "disk", Cdrom = "cdrom", Network = "network" }
);

/// The boot order a VM without one gets.
const DEFAULT_BOOT_ORDER: [&str; 3] = ["disk", "cdrom", "network"];

/// A VM's spec.
#[derive(Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    #[schema(minimum = 1)]
    pub vcpus: u32,
    #[schema(minimum = 1)]
    pub memory_mib: u64,
    #[serde(default)]
    pub ha: bool,
    #[serde(default)]
    pub description: String,
    /// Restart order after a host failure: higher first.
    #[serde(default)]
    pub priority: i32,
    /// The VM's own labels (placement does not read them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// An imported disk image: the boot disk is a thin clone of it.
    #[serde(default)]
    pub image: Option<String>,
    /// Direct kernel boot: imported kernel and initrd images.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Blank disks, after the image's boot disk if any.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// NICs on the cluster's networks, in order.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Only on this host.
    #[serde(default)]
    pub pin: Option<String>,
    /// Only on hosts with all of these labels.
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    /// Rather on hosts with these labels.
    #[serde(default)]
    pub preferred_labels: BTreeMap<String, String>,
    /// Never on a host with another VM of this group.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// Rather not on a host with another VM of this group.
    #[serde(default)]
    pub soft_anti_affinity: Option<String>,
    /// Rather on a host with the VMs of this group.
    #[serde(default)]
    pub affinity: Option<String>,
    /// Refuse an HA VM the cluster could not restart after losing a host (N+1).
    #[serde(default)]
    pub strict: bool,
    #[serde(default = "bios")]
    #[schema(default = "bios")]
    pub firmware: Firmware,
    #[serde(default = "pc")]
    #[schema(default = "pc")]
    pub machine: Machine,
    /// Unset: QEMU's migratable baseline; or host-passthrough, host-model or a model name.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// Empty: disk, cdrom, network.
    #[serde(default)]
    pub boot_order: Vec<BootDevice>,
    /// An ISO image in the CD-ROM drive.
    #[serde(default)]
    pub cdrom: Option<String>,
    /// A NoCloud seed for cloud-init in the guest.
    #[serde(default)]
    pub cloud_init: Option<CloudInitSpec>,
}

fn bios() -> Firmware {
    Firmware::Bios
}

fn pc() -> Machine {
    Machine::Pc
}

#[derive(Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub size_bytes: u64,
    /// The storage domain; empty: the cluster's default.
    #[serde(default)]
    pub storage: String,
}

#[derive(Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub network: String,
    /// Unset: one is chosen.
    #[serde(default)]
    pub mac: Option<String>,
    /// Unset: virtio.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Deserialize, ToSchema, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct CloudInitSpec {
    /// `#cloud-config` YAML or a `#!` script (never sent back).
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Unset: the VM's name.
    #[serde(default)]
    pub hostname: Option<String>,
}

impl CloudInitSpec {
    fn to_pb(&self) -> pb::CloudInit {
        pb::CloudInit {
            user_data: self.user_data.clone(),
            ssh_keys: self.ssh_keys.clone(),
            hostname: self.hostname.clone(),
            ..Default::default()
        }
    }

    /// Whether these settings leave out a part `now` has (which an update,
    /// setting only the parts given, would keep).
    fn drops_from(&self, now: &pb::CloudInit) -> bool {
        (self.user_data.is_none() && now.user_data_bytes > 0)
            || (self.ssh_keys.is_empty() && !now.ssh_keys.is_empty())
            || (self.hostname.is_none() && now.hostname.is_some())
    }

    /// The fingerprint the cluster gives these settings (a VM's answer
    /// carries it instead of its user-data).
    fn fingerprint(&self) -> String {
        format!("{:016x}", kvmesh_raft::wire::from_pb::cloud_init(&self.to_pb()).fingerprint())
    }
}

/// What a PUT changes on an existing VM.
#[derive(Default)]
pub struct Changes {
    /// First, when the spec drops a cloud-init part the VM has (an update
    /// only sets parts, so the seed is removed and written again).
    pub reset_cloud_init: Option<pb::UpdateVmRequest>,
    pub update: Option<pb::UpdateVmRequest>,
    /// The ISO to put in the drive (`Some(None)`: eject).
    pub cdrom: Option<Option<String>>,
}

impl VmSpec {
    /// The spec with an empty optional string read as unset, as the
    /// cluster stores it (`"cpu_model": ""` is the migratable default).
    pub fn normalized(mut self) -> Self {
        for field in [
            &mut self.image,
            &mut self.kernel,
            &mut self.initrd,
            &mut self.cmdline,
            &mut self.pin,
            &mut self.anti_affinity,
            &mut self.soft_anti_affinity,
            &mut self.affinity,
            &mut self.cpu_model,
            &mut self.cdrom,
        ] {
            if field.as_deref() == Some("") {
                *field = None;
            }
        }
        if let Some(ci) = &mut self.cloud_init {
            for field in [&mut ci.user_data, &mut ci.hostname] {
                if field.as_deref() == Some("") {
                    *field = None;
                }
            }
        }
        self
    }

    /// The create request for a new VM named `name`.
    pub fn create_request(&self, name: &str) -> pb::CreateVmRequest {
        pb::CreateVmRequest {
            name: name.into(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            ha: self.ha,
            request_id: format!("{:032x}", rand::random::<u128>()),
            image: self.image.clone(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            priority: self.priority,
            pin: self.pin.clone(),
            required_labels: self.required_labels.clone().into_iter().collect(),
            preferred_labels: self.preferred_labels.clone().into_iter().collect(),
            anti_affinity: self.anti_affinity.clone(),
            soft_anti_affinity: self.soft_anti_affinity.clone(),
            affinity: self.affinity.clone(),
            disks: self
                .disks
                .iter()
                .map(|d| pb::DiskSpec { size_bytes: d.size_bytes, storage: d.storage.clone() })
                .collect(),
            strict: self.strict,
            labels: self.labels.clone().into_iter().collect(),
            nics: self
                .nics
                .iter()
                .map(|n| pb::Nic {
                    network: n.network.clone(),
                    mac: n.mac.clone().unwrap_or_default(),
                    model: n.model.clone().unwrap_or_default(),
                })
                .collect(),
            firmware: self.firmware.as_str().into(),
            machine: self.machine.as_str().into(),
            cpu_model: self.cpu_model.clone(),
            boot_order: self.boot_order.iter().map(|d| d.as_str().to_string()).collect(),
            cdrom: self.cdrom.clone(),
            cloud_init: self.cloud_init.as_ref().map(CloudInitSpec::to_pb),
        }
    }

    /// What writing this spec to `vm` changes, or a refusal naming the
    /// first field that cannot change in place.
    pub fn changes(&self, vm: &pb::Vm) -> Result<Changes, Status> {
        self.check_fixed(vm)?;
        let mut u = pb::UpdateVmRequest { name: vm.name.clone(), ..Default::default() };
        let mut any = false;
        let mut set = |changed: bool| {
            any |= changed;
            changed
        };
        if set(self.description != vm.description) {
            u.description = Some(self.description.clone());
        }
        if set(self.priority != vm.priority) {
            u.priority = Some(self.priority);
        }
        if set(!same_map(&self.labels, &vm.labels)) {
            u.labels = self
                .labels
                .iter()
                .filter(|(k, v)| vm.labels.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            u.unlabel = vm.labels.keys().filter(|k| !self.labels.contains_key(*k)).cloned().collect();
        }
        if set(self.vcpus != vm.vcpus) {
            u.vcpus = Some(self.vcpus);
        }
        if set(self.memory_mib != vm.memory_mib) {
            u.memory_mib = Some(self.memory_mib);
        }
        if set(self.ha != vm.ha) {
            u.ha = Some(self.ha);
        }
        if set(self.firmware.as_str() != vm.firmware) {
            u.firmware = Some(self.firmware.as_str().into());
        }
        if set(self.machine.as_str() != vm.machine) {
            u.machine = Some(self.machine.as_str().into());
        }
        if set(self.cpu_model != vm.cpu_model) {
            u.cpu_model = Some(self.cpu_model.clone().unwrap_or_default());
        }
        let order: Vec<&str> = self.boot_order.iter().map(|d| d.as_str()).collect();
        let effective = if order.is_empty() { DEFAULT_BOOT_ORDER.to_vec() } else { order.clone() };
        if set(effective != vm.boot_order) {
            u.boot_order = Some(order.join(","));
        }
        let mut reset_cloud_init = None;
        match (&self.cloud_init, &vm.cloud_init) {
            (None, Some(_)) => u.no_cloud_init = set(true),
            (Some(want), now) if now.as_ref().map(|c| c.fingerprint.as_str()) != Some(want.fingerprint().as_str()) => {
                set(true);
                u.cloud_init = Some(want.to_pb());
                if now.as_ref().is_some_and(|now| want.drops_from(now)) {
                    let reset =
                        pb::UpdateVmRequest { name: vm.name.clone(), no_cloud_init: true, ..Default::default() };
                    reset_cloud_init = Some(reset);
                }
            }
            _ => {}
        }
        if self.strict && self.ha && !vm.ha {
            return Err(Status::failed_precondition(format!(
                "strict applies when a VM is made: VM {} exists, so making it HA here skips the N+1 check; check \
                 GET /api/v1/cluster/capacity, or send strict: false",
                vm.name
            )));
        }
        let cdrom = (self.cdrom != vm.cdrom).then(|| self.cdrom.clone());
        Ok(Changes { reset_cloud_init, update: any.then_some(u), cdrom })
    }

    /// Refuses a spec whose fixed parts differ from the VM's.
    fn check_fixed(&self, vm: &pb::Vm) -> Result<(), Status> {
        let fixed = |field: &str, how: &str| {
            Err(Status::failed_precondition(format!(
                "{field} of VM {} cannot change in place ({how}); send the VM's own value, or delete it and PUT it again",
                vm.name
            )))
        };
        if self.image != vm.image {
            return fixed("image", "its boot disk was cloned from it");
        }
        if self.kernel != vm.kernel || self.initrd != vm.initrd || self.cmdline != vm.cmdline {
            return fixed("kernel, initrd or cmdline", "direct kernel boot is set at creation");
        }
        let blank: Vec<&pb::DiskInfo> = vm.disks.iter().filter(|d| d.image.is_none()).collect();
        let disks_equal = blank.len() == self.disks.len()
            && blank
                .iter()
                .zip(&self.disks)
                .all(|(d, s)| d.size_bytes == s.size_bytes && (s.storage.is_empty() || s.storage == d.storage));
        if !disks_equal {
            return fixed("disks", "add, grow or remove them with `kvmesh vm disk`");
        }
        let nics_equal = vm.nics.len() == self.nics.len()
            && vm.nics.iter().zip(&self.nics).all(|(n, s)| {
                n.network == s.network
                    && s.mac.as_ref().is_none_or(|m| same_mac(m, &n.mac))
                    && s.model.as_ref().is_none_or(|m| *m == n.model)
            });
        if !nics_equal {
            return fixed("nics", "add or remove them with `kvmesh vm nic`");
        }
        if self.pin != vm.pin
            || self.anti_affinity != vm.anti_affinity
            || self.soft_anti_affinity != vm.soft_anti_affinity
            || self.affinity != vm.affinity
            || !same_map(&self.required_labels, &vm.required_labels)
            || !same_map(&self.preferred_labels, &vm.preferred_labels)
        {
            return fixed("placement (pin, affinities, required or preferred labels)", "they are set at creation");
        }
        Ok(())
    }
}

/// MACs as the cluster stores them: `52-54-00-…` is `52:54:00:…`.
fn same_mac(a: &str, b: &str) -> bool {
    let norm = |m: &str| m.replace('-', ":").to_ascii_lowercase();
    norm(a) == norm(b)
}

fn same_map(a: &BTreeMap<String, String>, b: &std::collections::HashMap<String, String>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(doc: serde_json::Value) -> VmSpec {
        serde_json::from_value(doc).expect("a valid spec")
    }

    fn vm() -> pb::Vm {
        pb::Vm {
            name: "web".into(),
            vcpus: 1,
            memory_mib: 128,
            firmware: "bios".into(),
            machine: "pc".into(),
            boot_order: DEFAULT_BOOT_ORDER.iter().map(|d| d.to_string()).collect(),
            labels: [("app".to_string(), "shop".to_string())].into(),
            ..Default::default()
        }
    }

    /// A choice's words as serde reads them and as the schema lists them.
    fn agree<T: serde::de::DeserializeOwned + utoipa::PartialSchema + PartialEq + std::fmt::Debug + Copy>(
        all: &[T],
        word: fn(T) -> &'static str,
    ) {
        let schema = serde_json::to_value(T::schema()).unwrap();
        for v in all {
            assert_eq!(serde_json::from_value::<T>(serde_json::json!(word(*v))).unwrap(), *v);
            assert!(schema["enum"].as_array().unwrap().contains(&serde_json::json!(word(*v))), "{schema}");
        }
    }

    #[test]
    fn every_choice_reads_and_lists_its_own_words() {
        agree(Firmware::ALL, Firmware::as_str);
        agree(Machine::ALL, Machine::as_str);
        agree(BootDevice::ALL, BootDevice::as_str);
        use crate::api::rest::{cluster, resources};
        agree(resources::StorageKind::ALL, resources::StorageKind::as_str);
        agree(resources::NetworkKind::ALL, resources::NetworkKind::as_str);
        agree(resources::ImageKind::ALL, resources::ImageKind::as_str);
        agree(cluster::PolicyName::ALL, cluster::PolicyName::as_str);
        agree(cluster::RoleName::ALL, cluster::RoleName::as_str);
    }

    #[test]
    fn the_same_spec_again_changes_nothing() {
        let s = spec(serde_json::json!({"vcpus": 1, "memory_mib": 128, "labels": {"app": "shop"}}));
        let c = s.changes(&vm()).unwrap();
        assert!(c.update.is_none() && c.cdrom.is_none());
    }

    #[test]
    fn a_left_out_field_is_its_default_and_labels_are_replaced() {
        let s = spec(serde_json::json!({"vcpus": 2, "memory_mib": 128, "labels": {"tier": "web"}}));
        let u = s.changes(&vm()).unwrap().update.expect("a change");
        assert_eq!(u.vcpus, Some(2));
        assert_eq!(u.memory_mib, None, "unchanged fields are not sent");
        assert_eq!(u.labels.get("tier").map(String::as_str), Some("web"));
        assert_eq!(u.unlabel, vec!["app".to_string()]);
        assert_eq!(u.firmware, None, "bios is the default and the VM's");
    }

    #[test]
    fn dropping_a_cloud_init_part_resets_the_seed_first_and_macs_compare_as_stored() {
        let mut with_seed = vm();
        let keys = vec!["ssh-ed25519 AAAA k".to_string()];
        let full = CloudInitSpec { user_data: Some("#cloud-config\n".into()), ssh_keys: keys.clone(), hostname: None };
        with_seed.cloud_init = Some(pb::CloudInit {
            ssh_keys: keys,
            user_data_bytes: 14,
            fingerprint: full.fingerprint(),
            ..Default::default()
        });
        let same = spec(serde_json::json!({"vcpus": 1, "memory_mib": 128, "labels": {"app": "shop"},
            "cloud_init": {"user_data": "#cloud-config\n", "ssh_keys": ["ssh-ed25519 AAAA k"]}}));
        let c = same.changes(&with_seed).unwrap();
        assert!(c.update.is_none() && c.reset_cloud_init.is_none(), "the same seed again");
        let fewer = spec(serde_json::json!({"vcpus": 1, "memory_mib": 128, "labels": {"app": "shop"},
            "cloud_init": {"ssh_keys": ["ssh-ed25519 AAAA k"]}}));
        let c = fewer.changes(&with_seed).unwrap();
        assert!(c.reset_cloud_init.is_some_and(|r| r.no_cloud_init), "user-data dropped: reset first");
        assert!(c.update.is_some_and(|u| u.cloud_init.is_some()));
        assert!(same_mac("52-54-00-AA-bb-01", "52:54:00:aa:bb:01"));
        let empty =
            spec(serde_json::json!({"vcpus": 1, "memory_mib": 128, "labels": {"app": "shop"}, "cpu_model": ""}));
        assert!(empty.normalized().changes(&vm()).unwrap().update.is_none(), "\"\" is the default");
    }

    #[test]
    fn fixed_fields_are_refused_by_name() {
        let s = spec(serde_json::json!({"vcpus": 1, "memory_mib": 128, "labels": {"app": "shop"}, "image": "debian"}));
        let e = s.changes(&vm()).err().expect("refused");
        assert!(e.message().starts_with("image of VM web cannot change in place"), "{}", e.message());
        let s = spec(serde_json::json!({"vcpus": 1, "memory_mib": 128, "disks": [{"size_bytes": 1024}]}));
        assert!(s.changes(&vm()).err().expect("refused").message().starts_with("disks"));
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_named() {
        let e = serde_json::from_value::<VmSpec>(serde_json::json!({"vcpus": 1, "memory_mib": 1, "cpus": 2}));
        assert!(e.err().unwrap().to_string().contains("unknown field `cpus`"));
        let e = serde_json::from_value::<VmSpec>(serde_json::json!({"vcpus": "two", "memory_mib": 1}));
        assert!(e.err().unwrap().to_string().contains("invalid type: string \"two\", expected u32"));
    }
}
