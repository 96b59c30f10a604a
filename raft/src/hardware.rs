//! A VM's virtual hardware beyond CPUs and memory: firmware (BIOS or UEFI),
//! machine type, CPU model, boot order and CD-ROM, the settings an operator
//! of Proxmox's `qm` or oVirt's "edit VM" expects to choose.
//!
//! The defaults are the ones that never stand in the way of moving a VM:
//! SeaBIOS on the `pc` machine, and no CPU model, which gives QEMU's
//! baseline (`qemu64`) that every x86-64 host can run and migrate. A named
//! model or `host-passthrough` is the operator's choice, and their promise
//! that the cluster's hosts share it.

use serde::{Deserialize, Serialize};

/// Guest firmware.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Firmware {
    /// SeaBIOS, built into QEMU.
    #[default]
    Bios,
    /// OVMF (Debian's `ovmf`); the VM's UEFI variables live next to its
    /// boot disk, so they follow it.
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bios" | "seabios" => Some(Firmware::Bios),
            "uefi" | "efi" | "ovmf" => Some(Firmware::Uefi),
            _ => None,
        }
    }
}

/// QEMU machine type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Machine {
    /// i440FX: what every guest boots on.
    #[default]
    Pc,
    /// Q35 (PCIe): what modern guests and Secure Boot want.
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pc" | "i440fx" => Some(Machine::Pc),
            "q35" => Some(Machine::Q35),
            _ => None,
        }
    }
}

/// A boot device, in `--boot-order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootDevice {
    Disk,
    Cdrom,
    Network,
}

impl BootDevice {
    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Network => "network",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disk" | "hd" => Some(BootDevice::Disk),
            "cdrom" | "cd" => Some(BootDevice::Cdrom),
            "network" | "net" => Some(BootDevice::Network),
            _ => None,
        }
    }
}

/// The order a VM boots in when it has no `--boot-order`: its disk, then
/// its CD-ROM (so a blank disk falls through to the installer, and the
/// installed system boots once the disk has one), then the network.
pub const DEFAULT_BOOT_ORDER: [BootDevice; 3] = [BootDevice::Disk, BootDevice::Cdrom, BootDevice::Network];

/// Firmware, machine, CPU model, boot order and CD-ROM of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub firmware: Firmware,
    pub machine: Machine,
    /// `None`: QEMU's migratable baseline. Otherwise `host-passthrough`,
    /// `host-model` or a named libvirt model such as `Haswell-noTSX`.
    pub cpu_model: Option<String>,
    /// Empty: `DEFAULT_BOOT_ORDER`.
    pub boot_order: Vec<BootDevice>,
    /// The name of an ISO image in the CD-ROM drive (every VM has a drive).
    pub cdrom: Option<String>,
    /// What cloud-init in the guest reads from a NoCloud seed (a second
    /// CD-ROM, labelled `cidata`, that its host builds at every start).
    pub cloud_init: Option<CloudInit>,
}

/// A VM's cloud-init settings: the operator's user-data as given (checked
/// by the API: YAML after `#cloud-config`, or a script), SSH public keys
/// and a hostname, which go into the seed's meta-data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInit {
    pub user_data: Option<String>,
    pub ssh_keys: Vec<String>,
    pub hostname: Option<String>,
}

/// The most user-data kvmesh keeps for a VM (it lives in the replicated
/// state).
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

impl Hardware {
    /// The boot order in effect.
    pub fn boot_order(&self) -> Vec<BootDevice> {
        if self.boot_order.is_empty() {
            DEFAULT_BOOT_ORDER.to_vec()
        } else {
            self.boot_order.clone()
        }
    }
}

/// A change to a VM's size, HA flag or hardware (`vm set`, `vm cdrom`);
/// `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmChange {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub ha: Option<bool>,
    pub firmware: Option<Firmware>,
    pub machine: Option<Machine>,
    /// `Some(None)`: back to the migratable default.
    pub cpu_model: Option<Option<String>>,
    /// `Some(vec![])`: back to the default order.
    pub boot_order: Option<Vec<BootDevice>>,
    /// `Some(None)`: eject.
    pub cdrom: Option<Option<String>>,
    pub cloud_init: Option<CloudInitChange>,
}

/// A change to a VM's cloud-init settings: each part given replaces that
/// part, the rest stays (so no client needs to read user-data, which may
/// hold secrets, to change a hostname).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloudInitChange {
    Set {
        user_data: Option<String>,
        ssh_keys: Option<Vec<String>>,
        hostname: Option<String>,
    },
    /// No seed any more.
    Remove,
}

impl CloudInitChange {
    /// The settings after this change.
    pub fn applied_to(&self, current: Option<&CloudInit>) -> Option<CloudInit> {
        match self {
            CloudInitChange::Remove => None,
            CloudInitChange::Set { user_data, ssh_keys, hostname } => {
                let mut ci = current.cloned().unwrap_or_default();
                if user_data.is_some() {
                    ci.user_data.clone_from(user_data);
                }
                if let Some(keys) = ssh_keys {
                    ci.ssh_keys.clone_from(keys);
                }
                if hostname.is_some() {
                    ci.hostname.clone_from(hostname);
                }
                Some(ci)
            }
        }
    }
}

impl CloudInit {
    /// A hash of the settings that is the same on every build: it names
    /// the seed's instance (cloud-init re-runs when it changes), so it must
    /// never change with a compiler or a kvmesh upgrade.
    pub fn fingerprint(&self) -> u64 {
        let mut bytes = Vec::new();
        let mut field = |b: &[u8]| {
            bytes.extend_from_slice(&(b.len() as u64).to_le_bytes());
            bytes.extend_from_slice(b);
        };
        field(self.user_data.as_deref().unwrap_or_default().as_bytes());
        for key in &self.ssh_keys {
            field(key.as_bytes());
        }
        field(self.hostname.as_deref().unwrap_or_default().as_bytes());
        crate::view::fnv1a(&bytes)
    }
}

impl VmChange {
    pub fn is_empty(&self) -> bool {
        self == &VmChange::default()
    }
}

/// What is wrong with a CPU model name, if anything: a name libvirt takes
/// (letters, digits, `-`, `_`, `.`), at most 64 bytes.
pub fn check_cpu_model(model: &str) -> Result<(), String> {
    if model.is_empty() || model.len() > 64 {
        return Err("a CPU model is 1 to 64 characters (host-passthrough, host-model or a libvirt model name such as Haswell-noTSX; leave it out for the migratable default)".into());
    }
    if !model.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!(
            "CPU model {model:?} has characters no libvirt model name has (letters, digits, - _ . only)"
        ));
    }
    Ok(())
}

/// What is wrong with a boot order, if anything: each device at most once.
pub fn check_boot_order(order: &[BootDevice]) -> Result<(), String> {
    for (i, dev) in order.iter().enumerate() {
        if order[..i].contains(dev) {
            return Err(format!("boot order names {} twice", dev.as_str()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_defaults_are_the_migratable_ones() {
        for f in [Firmware::Bios, Firmware::Uefi] {
            assert_eq!(Firmware::parse(f.as_str()), Some(f));
        }
        for m in [Machine::Pc, Machine::Q35] {
            assert_eq!(Machine::parse(m.as_str()), Some(m));
        }
        for d in DEFAULT_BOOT_ORDER {
            assert_eq!(BootDevice::parse(d.as_str()), Some(d));
        }
        let hw = Hardware::default();
        assert_eq!((hw.firmware, hw.machine, hw.cpu_model.as_deref()), (Firmware::Bios, Machine::Pc, None));
        assert_eq!(hw.boot_order(), DEFAULT_BOOT_ORDER.to_vec());
        assert_eq!(Firmware::parse("coreboot"), None);
    }

    #[test]
    fn bad_cpu_models_and_boot_orders_are_refused_with_the_reason() {
        assert!(check_cpu_model("Haswell-noTSX").is_ok());
        assert!(check_cpu_model("host-passthrough").is_ok());
        assert!(check_cpu_model("").is_err());
        assert!(check_cpu_model("a'b").unwrap_err().contains("characters"));
        assert!(check_boot_order(&[BootDevice::Cdrom, BootDevice::Disk]).is_ok());
        assert!(check_boot_order(&[BootDevice::Disk, BootDevice::Disk]).unwrap_err().contains("disk twice"));
    }
}
