//! The command line: `serve` for the daemon, everything else a gRPC client.

mod client;
mod cluster;
mod config;
mod nodes;
mod output;
mod security;
mod storage;
mod vm;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::ServeConfig;

#[derive(Parser, Debug)]
#[command(name = "kvmesh", version, about = "Peer-to-peer manager for KVM virtual machines")]
pub struct Cli {
    /// Address of any cluster node [default: the client config's, else
    /// 127.0.0.1:7100].
    #[arg(long, global = true, env = "KVMESH_ENDPOINT")]
    pub endpoint: Option<String>,
    /// API token [default: the client config's].
    #[arg(long, global = true, env = "KVMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The client config: endpoint, the cluster CA and a token, written by
    /// `cluster init` [default: ~/.config/kvmesh/config.toml].
    #[arg(long, global = true, env = "KVMESH_CLIENT_CONFIG")]
    pub client_config: Option<PathBuf>,
    /// Plaintext and no authentication, for development on one machine:
    /// `serve --insecure` refuses non-loopback addresses, and clients need
    /// it to talk to such a node.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Output format: tables for people, JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node daemon on this host.
    Serve(ServeArgs),
    /// The fence guard: started by `serve`, not by hand. Kills this host's
    /// HA guests when the daemon's lease runs out, even if the daemon is dead.
    #[command(hide = true)]
    Guard(crate::guard::process::GuardArgs),
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Hosts of the cluster.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Storage domains: where disks and images live.
    #[command(subcommand)]
    Storage(StorageCmd),
    /// Images: imported disk images, kernels, initrds and ISOs.
    #[command(subcommand)]
    Image(ImageCmd),
    /// API tokens: credentials for people and programs, with a role.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Client certificates: credentials with a role, for clients that
    /// prefer a certificate to a token.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Show cluster events.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node name, unique in the cluster [default: hostname].
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on [default: 127.0.0.1:7100].
    #[arg(long)]
    pub listen: Option<String>,
    /// Address other nodes use to reach this one [default: --listen].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Data directory [default: ./kvmesh-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Join the cluster that this member belongs to (first start only).
    #[arg(long)]
    pub join: Option<String>,
    /// Override the host's vCPU count.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Override the host's memory, in MiB.
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// libvirt URI [default: qemu:///system]; test:///default needs no daemon.
    #[arg(long)]
    pub libvirt_uri: Option<String>,
    /// Threads running the daemon's async work (Raft, gRPC, agent); libvirt
    /// calls and disk syncs run on a separate blocking pool.
    #[arg(long, env = "KVMESH_WORKER_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
    /// Domain type: kvm, or qemu (software emulation) [default: kvm].
    #[arg(long)]
    pub virt_type: Option<String>,
    /// A node label, key=value (repeatable); adds to the config file's.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Do not start the fence guard. Unsafe: a dead or stopped daemon then
    /// fences nothing, and its HA guests run twice once restarted elsewhere.
    /// For demonstrating that the guard is needed.
    #[arg(long, hide = true)]
    pub unsafe_no_guard: bool,
    /// A join token from `kvmesh cluster token create` on a member: how a
    /// new node proves it was invited and gets its certificate. It names
    /// the members to contact; --join picks one of your own.
    #[arg(long, env = "KVMESH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
}

impl ServeArgs {
    /// The file's settings (or defaults) with the flags laid over them.
    pub fn into_config(self) -> crate::error::Result<ServeConfig> {
        let mut c = match &self.config {
            Some(path) => ServeConfig::from_file(path)?,
            None => ServeConfig::default(),
        };
        if let Some(v) = self.name {
            c.name = v;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.join {
            c.join = Some(v);
        }
        if let Some(v) = self.cpus {
            c.cpus = Some(v);
        }
        if let Some(v) = self.memory_mib {
            c.memory_mib = Some(v);
        }
        if let Some(v) = self.libvirt_uri {
            c.libvirt_uri = v;
        }
        if let Some(v) = self.virt_type {
            c.virt_type = v;
        }
        c.labels.extend(self.labels);
        c.unsafe_no_guard |= self.unsafe_no_guard;
        if let Some(v) = self.join_token {
            c.join_token = Some(v);
        }
        Ok(c)
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make an API token; its secret is printed this once.
    Create {
        name: String,
        /// viewer (reads), operator (also runs VMs, migrates, drains) or
        /// admin (everything).
        #[arg(long)]
        role: String,
    },
    /// The tokens (names and roles; secrets are never shown again).
    List,
    /// Revoke a token: it stops working at once, on every node.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Make a key here, have the cluster sign it, and write a client config
    /// that uses it (the key never leaves this machine).
    Create {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// How long it lives: 30d, 12h, … [default: 90d].
        #[arg(long, value_parser = security::parse_ttl)]
        ttl: Option<u64>,
        /// The client config to write (0600): endpoint, CA, certificate and key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Client certificates issued and not revoked.
    List,
    /// Revoke every certificate of a client: refused at once, on every node.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum JoinTokenCmd {
    /// Make a one-time join token for a new node (`serve --join-token`).
    Create {
        /// How long it stays valid: 90s, 30m, 1h, 2d [default: 1h].
        #[arg(long, value_parser = security::parse_ttl)]
        ttl: Option<u64>,
        /// The only node name it may enroll.
        #[arg(long)]
        name: Option<String>,
    },
    /// Unused join tokens that have not expired.
    List,
    /// Revoke an unused join token by its id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Bootstrap a new cluster on the node at --endpoint.
    Init {
        /// Voters the cluster keeps (3, 5 or 7); further nodes are learners.
        #[arg(long, default_value_t = 3)]
        max_voters: u32,
        /// Overwrite an existing client config (it may hold another
        /// cluster's only admin token).
        #[arg(long)]
        force: bool,
    },
    /// Leader, term, commit index and members.
    Status,
    /// Show or set the placement policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// HA reservation: could every host's HA VMs restart on the others (N+1)?
    Capacity,
    /// Even out the hosts' loads with live migrations (each move explained).
    Balance {
        /// Only show the moves.
        #[arg(long)]
        dry_run: bool,
        /// How many points of load (0-100) hosts may be apart [default: 10].
        #[arg(long, value_name = "PCT", default_value_t = 0)]
        threshold: u32,
        /// At most this many moves [default: 4].
        #[arg(long, value_name = "N", default_value_t = 0)]
        max: u32,
    },
    /// Join tokens: one-time invitations for new nodes.
    #[command(subcommand)]
    Token(JoinTokenCmd),
    /// Remove a node from the cluster.
    Remove {
        name: String,
        /// Remove it even though VMs are placed on it (they become unplaced).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// The current policy and overcommit ratios.
    Show,
    /// Set the policy (and optionally the overcommit ratios).
    Set {
        #[arg(value_parser = ["spread", "pack", "balanced"])]
        policy: String,
        /// vCPUs per physical CPU (default 4.0).
        #[arg(long)]
        cpu_overcommit: Option<f64>,
        /// Memory per MiB of RAM (default 1.0).
        #[arg(long)]
        memory_overcommit: Option<f64>,
        /// Let the leader even the hosts out with live migrations every
        /// minute, as `cluster balance` does (default off).
        #[arg(long, value_parser = ["on", "off"])]
        balance: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List hosts with their resources, state and VMs.
    List {
        /// Read through the leader (linearizable).
        #[arg(long)]
        consistent: bool,
    },
    /// Move every VM off a node, then put it in maintenance: running VMs
    /// whose disks are shared migrate live, the others stop and start
    /// elsewhere.
    Drain {
        name: String,
        /// Stop and start every VM instead of migrating the running ones live.
        #[arg(long)]
        cold: bool,
    },
    /// Bring a node back from maintenance (or stop a drain).
    Activate { name: String },
    /// Show one host.
    Get {
        name: String,
        /// Read through the leader (linearizable).
        #[arg(long)]
        consistent: bool,
    },
    /// Change a host's capacity or labels (refused if its VMs would no longer fit).
    Set {
        name: String,
        /// vCPUs the host offers to guests.
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory the host offers to guests, in MiB.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Add or change a label, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove a label by key (repeatable).
        #[arg(long = "unlabel")]
        unlabel: Vec<String>,
    },
}

/// `vm create`: the VM's spec and how to run the command.
#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// Restart it elsewhere if its host dies.
    #[arg(long)]
    pub ha: bool,
    /// A blank disk: SIZE[@STORAGE], e.g. 10G or 10G@shared (repeatable;
    /// default storage: local).
    #[arg(long = "disk", value_parser = parse_disk)]
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
    /// Attach a NIC to this libvirt network.
    #[arg(long)]
    pub network: Option<String>,
    /// Attach a NIC to this host bridge.
    #[arg(long)]
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
    /// Show where it would go, per node, without creating it.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until the VM runs (or fails).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// `--wait` for commands that start a VM.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Return once the VM runs; exit non-zero with the host's error if it fails.
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
    Create(CreateArgs),
    /// Start a stopped (or failed) VM.
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a VM: ACPI shutdown, then power off after the host's timeout.
    Stop {
        name: String,
        /// Power off at once.
        #[arg(long)]
        force: bool,
    },
    /// Power-cycle a VM.
    Restart {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Each node's filter result and score for a VM, as if placed now.
    Explain { name: String },
    /// Restart a VM whose host is down on another host, on purpose.
    Recover { name: String },
    /// Move a running VM to another host without stopping it (live
    /// migration), or a stopped one's record (cold).
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
    /// Change a VM's description or restart priority (the guest is not touched).
    Set {
        name: String,
        /// Free text for operators (up to 4096 bytes).
        #[arg(long)]
        description: Option<String>,
        /// Restart order when its host dies: higher first.
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
    },
    /// Show the tail of a VM's serial console (from any node).
    Console {
        name: String,
        /// How many bytes from the end.
        #[arg(long, default_value_t = 16384)]
        bytes: u64,
    },
    /// List VMs.
    List {
        #[arg(long)]
        consistent: bool,
    },
    /// Show one VM.
    Get {
        name: String,
        #[arg(long)]
        consistent: bool,
    },
    /// Delete a VM and its volumes.
    Delete {
        name: String,
        /// Keep the VM's volumes on its host.
        #[arg(long)]
        keep_disks: bool,
    },
    /// A VM's disks: list, add and grow (live), remove (on a stopped VM).
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Snapshots of all of a VM's disks (taken and reverted while it is stopped).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Make an image from a stopped VM's boot disk.
    Template {
        name: String,
        /// The new image's name.
        image: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// A VM's disks with their storage and volumes.
    List { name: String },
    /// Add a blank disk (a running guest gets it live).
    Add {
        name: String,
        /// Its size, e.g. 10G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Its storage domain [default: local].
        #[arg(long)]
        storage: Option<String>,
    },
    /// Grow a disk, live if the VM runs (disks never shrink).
    Resize {
        name: String,
        index: u32,
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Remove a disk of a stopped VM; its volume is deleted.
    Remove { name: String, index: u32 },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    Create {
        name: String,
        snapshot: String,
    },
    List {
        name: String,
    },
    /// Bring every disk back to the snapshot (the VM must be stopped).
    Revert {
        name: String,
        snapshot: String,
    },
    Delete {
        name: String,
        snapshot: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StorageCmd {
    /// Add a storage domain.
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
    List,
    /// One domain with its status on each host.
    Get { name: String },
    /// Remove a domain (refused while disks or images live on it).
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Upload FILE into a storage domain as image NAME.
    Import {
        name: String,
        file: PathBuf,
        /// The storage domain it goes to.
        #[arg(long)]
        storage: String,
        #[arg(long, default_value = "disk", value_parser = ["disk", "kernel", "initrd", "iso"])]
        kind: String,
    },
    List,
    Get {
        name: String,
    },
    /// Delete an image (refused while a VM uses it).
    Delete {
        name: String,
    },
}

/// Parses `key=value`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.contains('=') => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Parses sizes like `2G`, `512M`, `1.5T` or plain bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    kvmesh_raft::storage::parse_size(s)
}

/// Parses `SIZE[@STORAGE]`.
pub fn parse_disk(s: &str) -> Result<(u64, String), String> {
    let (size, storage) = s.split_once('@').unwrap_or((s, ""));
    if s.contains('@') && storage.is_empty() {
        return Err(format!("{s:?}: name the storage after '@', e.g. 10G@shared"));
    }
    Ok((parse_size(size)?, storage.to_string()))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let _flush = init_tracing();
            let mut config = args.into_config()?;
            config.insecure |= cli.insecure;
            crate::daemon::run(config).await?;
            Ok(())
        }
        // main runs the guard without a runtime; never reached.
        command => {
            let settings = config::Settings::resolve(cli.endpoint, cli.token, cli.client_config, cli.insecure)?;
            client::run(settings, cli.output, command).await
        }
    }
}

/// The daemon's log goes to stderr through a lossy queue and a writer
/// thread: a log file on a frozen or full disk then drops lines instead of
/// stopping every thread that logs (the heartbeat, fencing). The guard
/// flushes what is queued when the daemon exits.
fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KVMESH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=error,sled=warn,h2=warn,tower=warn,hyper=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, flush) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(10_000)
        .finish(std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).with_writer(writer).init();
    flush
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("2G"), Ok(2 << 30));
        assert_eq!(super::parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("2X").is_err());
        assert!(super::parse_size("0").is_err());
        assert!(super::parse_size("G").is_err());
        assert_eq!(super::parse_disk("10G@shared"), Ok((10 << 30, "shared".into())));
        assert_eq!(super::parse_disk("1G"), Ok((1 << 30, String::new())));
        assert!(super::parse_disk("1G@").is_err());
        assert!(super::parse_disk("big@shared").is_err());
    }
}
