//! The VM-level command groups: `vm` (with its disks and snapshots),
//! `storage` and `image`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{parse_label, WaitArgs};
use super::{examples, sizes, vm_view};

/// `vm create`: the VM's spec and how to run the command.
#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// Virtual CPUs (at most the host's CPU count).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory: a size, e.g. 2G or 512M (a bare number is MiB).
    #[arg(long, default_value = "512", value_parser = sizes::parse_mib)]
    pub memory: u64,
    /// Restart it elsewhere if its host dies.
    #[arg(long)]
    pub ha: bool,
    /// A blank disk: SIZE[@STORAGE], e.g. 10G or 10G@shared (repeatable;
    /// default storage: local; a bare number is MiB).
    #[arg(long = "disk", value_parser = sizes::parse_disk)]
    pub disks: Vec<(u64, String)>,
    /// Boot disk: a thin qcow2 clone of this imported image (`kvmesh image list`).
    #[arg(long)]
    pub image: Option<String>,
    /// Direct kernel boot: an imported kernel image (`image import --kind kernel`).
    #[arg(long)]
    pub kernel: Option<String>,
    /// An imported initrd image (`image import --kind initrd`).
    #[arg(long)]
    pub initrd: Option<String>,
    /// Kernel command line, e.g. "console=ttyS0".
    #[arg(long)]
    pub cmdline: Option<String>,
    /// A NIC on a cluster network: NETWORK[,mac=MAC][,model=virtio]
    /// (repeatable, in order; `kvmesh network list`). Without mac= the
    /// cluster gives it one, kept for the VM's life.
    #[arg(long = "nic", value_parser = parse_nic)]
    pub nics: Vec<kvmesh_proto::Nic>,
    /// Removed: NICs name the cluster's networks now (--nic).
    #[arg(long, hide = true)]
    pub network: Option<String>,
    /// Removed: define the bridge as a network (--nic).
    #[arg(long, hide = true)]
    pub bridge: Option<String>,
    /// Restart order when its host dies: higher first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Pin to this node.
    #[arg(long = "node")]
    pub pin: Option<String>,
    /// Only on nodes with this label, key=value (repeatable).
    #[arg(long = "node-label", value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,
    /// Prefer nodes with this label, key=value (repeatable).
    #[arg(long = "prefer-label", value_parser = parse_label)]
    pub prefer_labels: Vec<(String, String)>,
    /// Never on a host with another member of this group.
    #[arg(long)]
    pub anti_affinity: Option<String>,
    /// Spread members of this group when possible.
    #[arg(long)]
    pub soft_anti_affinity: Option<String>,
    /// Keep members of this group on one host.
    #[arg(long)]
    pub affinity: Option<String>,
    /// A label of the VM's own, key=value (repeatable), for `vm list
    /// --label`; placement does not read it (see --node-label).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Firmware: bios (SeaBIOS, the default) or uefi (OVMF; only hosts
    /// that have it take the VM).
    #[arg(long, value_parser = ["bios", "uefi"])]
    pub firmware: Option<String>,
    /// Machine type: pc (i440FX, the default) or q35 (PCIe).
    #[arg(long, value_parser = ["pc", "q35"])]
    pub machine: Option<String>,
    /// CPU model: host-passthrough, host-model or a libvirt model name
    /// (Haswell-noTSX...). Default: QEMU's baseline, which every x86-64
    /// host runs, so the VM migrates anywhere; a host CPU model migrates
    /// only between hosts with the same CPU.
    #[arg(long)]
    pub cpu_model: Option<String>,
    /// Boot order, comma-separated: disk, cdrom, network (the default
    /// order is disk,cdrom,network: a blank disk falls through to the CD).
    #[arg(long, value_delimiter = ',')]
    pub boot_order: Vec<String>,
    /// An ISO image in its CD-ROM drive (`image import NAME FILE --kind iso`).
    #[arg(long)]
    pub cdrom: Option<String>,
    #[command(flatten)]
    pub cloud_init: CloudInitArgs,
    /// Show where it would go, per node, without creating it (exit 3 if
    /// no node can take it).
    #[arg(long)]
    pub dry_run: bool,
    /// For an HA VM: refuse it (exit 3) if, with it, some host's HA VMs
    /// could no longer all restart on the others (N+1). Without it, that
    /// is a warning.
    #[arg(long)]
    pub strict: bool,
    /// Wait until the VM runs (or fails).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

// Parsed once per process; boxing the big variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Create a VM; the leader places it.
    #[command(after_help = examples::VM_CREATE)]
    Create(CreateArgs),
    /// Start a stopped (or failed) VM.
    #[command(after_help = "Examples:\n  kvmesh vm start web1\n  kvmesh vm start web1 --wait --timeout 120")]
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a VM: ACPI shutdown, then power off after the host's timeout
    /// (an event says when it had to).
    #[command(
        after_help = "Examples:\n  kvmesh vm stop web1 --wait     # ACPI, then power-off after the host's timeout\n  kvmesh vm stop web1 --force    # power off at once"
    )]
    Stop {
        name: String,
        /// Power off at once.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Power-cycle a VM.
    #[command(after_help = "Examples:\n  kvmesh vm restart web1 --wait")]
    Restart {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Each node's filter result and score for a VM, as if placed now.
    #[command(after_help = "Examples:\n  kvmesh vm explain web1\n  kvmesh vm explain web1 -o json")]
    Explain { name: String },
    /// Restart a VM whose host is down on another host, on purpose.
    #[command(after_help = "Examples:\n  kvmesh vm recover web1 --wait   # its host is down: run it elsewhere")]
    Recover {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Move a running VM to another host without stopping it (live
    /// migration), or a stopped one's record (cold).
    #[command(
        after_help = "Examples:\n  kvmesh vm migrate web1 --to n3 --wait\n  kvmesh vm migrate web1 --dry-run\n  kvmesh vm migrate web1 --to n3 --copy-storage --bandwidth 200"
    )]
    Migrate {
        name: String,
        /// The host to move it to (default: the scheduler's pick).
        #[arg(long)]
        to: Option<String>,
        /// Only show which host it would go to, and why.
        #[arg(long)]
        dry_run: bool,
        /// Return once it runs on the target; exit non-zero if the
        /// migration is aborted.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// The most the migration may use, in MiB/s (default: no limit).
        #[arg(long, value_name = "MIB_PER_S", default_value_t = 0)]
        bandwidth: u64,
        /// Copy the disks on local storage to the target's as the guest
        /// runs (without it, only VMs whose disks are on shared storage
        /// move).
        #[arg(long)]
        copy_storage: bool,
    },
    /// Change a VM: its description, restart priority and labels, its size, HA and hardware. The size is
    /// checked against its host; what the running guest cannot take live is pending until its next start.
    #[command(
        after_help = "Examples:\n  kvmesh vm set web1 --description \"billing front end\" --priority 10\n  kvmesh vm set web1 --label app=billing --unlabel tier\n  kvmesh vm set web1 --vcpus 4 --memory 8G\n  kvmesh vm set web1 --firmware uefi --machine q35"
    )]
    Set {
        name: String,
        /// Free text for operators (up to 4096 bytes).
        #[arg(long)]
        description: Option<String>,
        /// Restart order when its host dies: higher first.
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        /// Add or change a label, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove a label by key (repeatable).
        #[arg(long = "unlabel")]
        unlabel: Vec<String>,
        /// Virtual CPUs. On a running VM: plugged in live up to the room it started with (its host's CPUs,
        /// at most four times its own)
        /// (the guest brings them online), else pending until its next start.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory, e.g. 2G or 512M. On a running VM: pending until its next start.
        #[arg(long, value_parser = sizes::parse_mib)]
        memory: Option<u64>,
        /// Restart it elsewhere if its host dies (shared storage only).
        #[arg(long, conflicts_with = "no_ha")]
        ha: bool,
        /// No longer restart it elsewhere.
        #[arg(long)]
        no_ha: bool,
        /// bios or uefi (pending on a running VM).
        #[arg(long, value_parser = ["bios", "uefi"])]
        firmware: Option<String>,
        /// pc or q35 (pending on a running VM).
        #[arg(long, value_parser = ["pc", "q35"])]
        machine: Option<String>,
        /// A CPU model, or `default` for the migratable baseline (pending on a running VM).
        #[arg(long)]
        cpu_model: Option<String>,
        /// Boot order, comma-separated (disk,cdrom,network), or `default`.
        #[arg(long)]
        boot_order: Option<String>,
        /// Change cloud-init settings (the others stay; applied at the next boot).
        #[command(flatten)]
        cloud_init: CloudInitArgs,
        /// Remove its cloud-init seed.
        #[arg(long, conflicts_with_all = ["user_data", "ssh_keys", "hostname"])]
        no_cloud_init: bool,
    },
    /// The VM's serial console, interactive, from any node (Ctrl-] leaves);
    /// --tail prints the end of its console log instead.
    #[command(
        after_help = "Examples:\n  kvmesh vm console web1\n  echo 'uname -a' | kvmesh vm console web1 --linger 2\n  kvmesh vm console web1 --tail --bytes 65536 -o json"
    )]
    Console {
        name: String,
        /// Print the end of the console log and exit (also with -o json or --bytes).
        #[arg(long)]
        tail: bool,
        /// With --tail: how many bytes from the end (default 16384).
        #[arg(long)]
        bytes: Option<u64>,
        /// With a stdin that is not a terminal: after stdin ends, go on
        /// printing what the guest sends for this many seconds.
        #[arg(long, default_value_t = 1.0)]
        linger: f64,
        /// Take the console over from the session that has it (that one ends).
        #[arg(long)]
        force: bool,
    },
    /// Carry VNC viewers to the VM's display, through any node: listens on
    /// a local port and says where to point the viewer.
    #[command(after_help = "Examples:\n  kvmesh vm vnc win1\n  kvmesh vm vnc win1 --listen 127.0.0.1:5901")]
    Vnc {
        name: String,
        /// Local address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// End after the first viewer disconnects.
        #[arg(long)]
        once: bool,
    },
    /// Insert an ISO image into the VM's CD-ROM drive, or eject it (live on
    /// a running VM).
    #[command(subcommand)]
    Cdrom(CdromCmd),
    /// List VMs, filtered and sorted.
    #[command(after_help = examples::VM_LIST)]
    List {
        /// Read through the leader (linearizable).
        #[arg(long)]
        consistent: bool,
        /// Only VMs placed on, or reported running on, this node.
        #[arg(long)]
        node: Option<String>,
        /// Only VMs in this state.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(vm_view::STATES))]
        state: Option<String>,
        /// Only HA VMs.
        #[arg(long)]
        ha: bool,
        /// Only VMs with this label, key=value (repeatable: all of them).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Sort by this (largest first for sizes and priority).
        #[arg(long, value_enum, default_value_t = vm_view::SortKey::Name)]
        sort: vm_view::SortKey,
    },
    /// Show one VM: every setting, its state, and where it really runs.
    #[command(after_help = "Examples:\n  kvmesh vm get web1\n  kvmesh vm get web1 -o json | jq .observed")]
    Get {
        name: String,
        /// Read through the leader (linearizable).
        #[arg(long)]
        consistent: bool,
    },
    /// Delete a VM and its volumes (a running one is powered off first;
    /// that is asked on a terminal, or confirmed with --yes).
    #[command(after_help = examples::VM_DELETE)]
    Delete {
        name: String,
        /// Keep the VM's volumes on its host.
        #[arg(long)]
        keep_disks: bool,
        /// Do not ask: delete it even if it runs.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// A VM's disks: list, add and grow (live), remove (on a stopped VM).
    #[command(subcommand)]
    Disk(DiskCmd),
    /// A VM's NICs: list, add, remove (a running guest gets the change live).
    #[command(subcommand)]
    Nic(NicCmd),
    /// Snapshots of all of a VM's disks (taken and reverted while it is stopped).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Make an image from a stopped VM's boot disk.
    #[command(after_help = "Examples:\n  kvmesh vm stop web1 --wait && kvmesh vm template web1 web-golden")]
    Template {
        name: String,
        /// The new image's name.
        image: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// A VM's disks with their storage and volumes.
    #[command(after_help = "Examples:\n  kvmesh vm disk list web1")]
    List { name: String },
    /// Add a blank disk (a running guest gets it live).
    #[command(
        after_help = "Examples:\n  kvmesh vm disk add web1 --size 20G\n  kvmesh vm disk add db1 --size 100G --storage shared"
    )]
    Add {
        name: String,
        /// Its size, e.g. 10G.
        #[arg(long, value_parser = sizes::parse_bytes)]
        size: u64,
        /// Its storage domain [default: local].
        #[arg(long)]
        storage: Option<String>,
    },
    /// Grow a disk, live if the VM runs (disks never shrink).
    #[command(after_help = "Examples:\n  kvmesh vm disk resize web1 1 40G")]
    Resize {
        name: String,
        index: u32,
        /// The new size, e.g. 20G (a bare number is MiB).
        #[arg(value_parser = sizes::parse_bytes)]
        size: u64,
    },
    /// Remove a disk of a stopped VM; its volume is deleted.
    #[command(after_help = "Examples:\n  kvmesh vm disk remove web1 1")]
    Remove { name: String, index: u32 },
}

#[derive(Subcommand, Debug)]
pub enum NicCmd {
    /// A VM's NICs with their networks and MACs.
    #[command(after_help = "Examples:\n  kvmesh vm nic list web1")]
    List { name: String },
    /// Add a NIC on a network; the cluster gives it a MAC unless --mac.
    #[command(
        after_help = "Examples:\n  kvmesh vm nic add web1 backend\n  kvmesh vm nic add web1 lan --mac 0a:00:00:12:34:56 --model e1000"
    )]
    Add {
        name: String,
        network: String,
        #[arg(long)]
        mac: Option<String>,
        /// virtio (default), e1000, e1000e, rtl8139.
        #[arg(long)]
        model: Option<String>,
    },
    /// Remove the NIC with this MAC.
    #[command(after_help = "Examples:\n  kvmesh vm nic remove web1 0a:5c:00:00:00:03")]
    Remove { name: String, mac: String },
}

/// `--nic NETWORK[,mac=MAC][,model=MODEL]`.
pub fn parse_nic(s: &str) -> Result<kvmesh_proto::Nic, String> {
    let mut parts = s.split(',');
    let network = parts.next().unwrap_or_default().trim().to_string();
    if network.is_empty() || network.contains('=') {
        return Err(format!("{s:?}: start with the network's name, as in --nic lan,mac=0a:00:00:00:00:01"));
    }
    let mut nic = kvmesh_proto::Nic { network, ..Default::default() };
    for part in parts {
        match part.split_once('=') {
            Some(("mac", v)) => nic.mac = v.to_string(),
            Some(("model", v)) => nic.model = v.to_string(),
            _ => return Err(format!("{part:?}: a NIC takes mac=MAC and model=MODEL after its network")),
        }
    }
    Ok(nic)
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Define a network for every host to realize.
    #[command(
        after_help = "Examples:\n  kvmesh network add lan --kind bridge --bridge br0 --required\n  kvmesh network add office --kind vlan --uplink eth1 --vlan 100\n  kvmesh network add backend --kind vxlan --vni 100\n  kvmesh network add lab --kind isolated"
    )]
    Add {
        name: String,
        /// bridge (an existing host bridge), vlan (UPLINK.ID and a bridge),
        /// vxlan (an overlay between the hosts), isolated (a bridge per host).
        #[arg(long)]
        kind: String,
        /// For --kind bridge: the bridge every host has.
        #[arg(long)]
        bridge: Option<String>,
        /// For --kind vlan: the host interface the VLAN rides on.
        #[arg(long)]
        uplink: Option<String>,
        /// For --kind vlan: the VLAN id, 1-4094.
        #[arg(long)]
        vlan: Option<u32>,
        /// For --kind vxlan: the VXLAN network id, 1-16777215.
        #[arg(long)]
        vni: Option<u32>,
        /// The guests' MTU [default: the underlay's, less 50 for VXLAN].
        #[arg(long)]
        mtu: Option<u32>,
        /// Every host must have it: a host where it is not ready takes no new VMs.
        #[arg(long)]
        required: bool,
    },
    /// Networks with how many hosts have each ready.
    #[command(after_help = "Examples:\n  kvmesh network list")]
    List,
    /// One network, with its status on every host.
    #[command(after_help = "Examples:\n  kvmesh network get backend")]
    Get { name: String },
    /// Remove a network no NIC uses; every host deletes what it made for it.
    #[command(after_help = "Examples:\n  kvmesh network remove lab")]
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot every disk of a stopped VM under one name.
    #[command(after_help = "Examples:\n  kvmesh vm snapshot create web1 before-upgrade")]
    Create { name: String, snapshot: String },
    /// A VM's snapshots.
    #[command(after_help = "Examples:\n  kvmesh vm snapshot list web1")]
    List { name: String },
    /// Bring every disk back to the snapshot (the VM must be stopped).
    #[command(after_help = "Examples:\n  kvmesh vm stop web1 --wait && kvmesh vm snapshot revert web1 before-upgrade")]
    Revert { name: String, snapshot: String },
    /// Delete a snapshot (the disks stay as they are).
    #[command(after_help = "Examples:\n  kvmesh vm snapshot delete web1 before-upgrade")]
    Delete { name: String, snapshot: String },
}

#[derive(Subcommand, Debug)]
pub enum StorageCmd {
    /// Add a storage domain.
    #[command(
        after_help = "Examples:\n  kvmesh storage add shared --kind shared-dir --path /srv/kvmesh\n  kvmesh storage add nfs1 --kind nfs --server 10.0.0.9 --export /export/vms --nodes n1,n2"
    )]
    Add {
        name: String,
        /// local (a directory per host), shared-dir (a directory every host
        /// mounts from the same storage) or nfs (mounted by each host).
        #[arg(long, value_parser = ["local", "shared-dir", "nfs"])]
        kind: String,
        /// The directory (local, shared-dir).
        #[arg(long)]
        path: Option<String>,
        /// The NFS server (nfs).
        #[arg(long)]
        server: Option<String>,
        /// The exported path on the NFS server (nfs).
        #[arg(long)]
        export: Option<String>,
        /// Only these hosts have it, comma-separated [default: all].
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
    },
    /// Every domain with its status on each host.
    #[command(after_help = "Examples:\n  kvmesh storage list")]
    List,
    /// One domain with its status on each host.
    #[command(after_help = "Examples:\n  kvmesh storage get shared")]
    Get { name: String },
    /// Remove a domain (refused while disks or images live on it).
    #[command(after_help = "Examples:\n  kvmesh storage remove nfs1")]
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Upload FILE into a storage domain as image NAME.
    #[command(
        after_help = "Examples:\n  kvmesh image import debian12 debian-12.qcow2 --storage shared\n  kvmesh image import installer debian.iso --storage shared --kind iso"
    )]
    Import {
        name: String,
        file: PathBuf,
        /// The storage domain it goes to.
        #[arg(long)]
        storage: String,
        /// What it is: a disk image (cloned for boot disks), a kernel or
        /// initrd for direct boot, or an ISO.
        #[arg(long, default_value = "disk", value_parser = ["disk", "kernel", "initrd", "iso"])]
        kind: String,
    },
    /// Every image with its kind, size and storage.
    #[command(after_help = "Examples:\n  kvmesh image list")]
    List,
    /// One image.
    #[command(after_help = "Examples:\n  kvmesh image get debian12")]
    Get { name: String },
    /// Delete an image (refused while a VM uses it).
    #[command(after_help = "Examples:\n  kvmesh image delete debian12")]
    Delete { name: String },
}

/// `vm cdrom`.
#[derive(Subcommand, Debug)]
pub enum CdromCmd {
    /// Put an ISO image in the drive (`kvmesh image list`).
    #[command(
        after_help = "Examples:\n  kvmesh vm cdrom insert win1 virtio-win\n  kvmesh vm cdrom insert deb1 debian-12-netinst"
    )]
    Insert { name: String, image: String },
    /// Empty the drive.
    #[command(after_help = "Examples:\n  kvmesh vm cdrom eject win1")]
    Eject { name: String },
}

/// cloud-init's NoCloud seed (`vm create`, `vm set`).
#[derive(Args, Debug, Default)]
pub struct CloudInitArgs {
    /// cloud-init user-data: a file starting with #cloud-config (YAML) or
    /// a script (#!), checked before anything is written.
    #[arg(long = "cloud-init", value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// A file of SSH public keys (one per line) for the guest's default
    /// user (repeatable).
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// The guest's hostname (default: the VM's name).
    #[arg(long)]
    pub hostname: Option<String>,
}

impl CloudInitArgs {
    pub fn is_empty(&self) -> bool {
        self.user_data.is_none() && self.ssh_keys.is_empty() && self.hostname.is_none()
    }
}
