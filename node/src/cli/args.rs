//! The command line's shape: the top-level options, `serve`'s flags, and
//! the command groups, each defined in its own file (`args_cluster`,
//! `args_vm`). Client options are global to the client commands; `serve`
//! is parsed on its own (see `parse`), so its help shows only its flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::args_cluster::{CertCmd, ClusterCmd, NodeCmd, TokenCmd};
use super::args_vm::{ImageCmd, NetworkCmd, StorageCmd, VmCmd};
use super::{events, examples, sizes};
use crate::config::ServeConfig;

#[derive(Parser, Debug)]
#[command(name = "kvmesh", version, about = "Peer-to-peer manager for KVM virtual machines", after_help = examples::TOP)]
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
    /// Output format: tables for people (wide: more columns, for `vm list`
    /// and `node list`), JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFlag::Table)]
    pub output: OutputFlag,
    #[command(subcommand)]
    pub command: Command,
}

/// `kvmesh serve` on its own: its flags and `--insecure`, without the
/// client options, which mean nothing to the daemon.
#[derive(Parser, Debug)]
#[command(name = "kvmesh serve", version, about = "Run the node daemon on this host", after_help = examples::SERVE)]
struct ServeCli {
    #[command(flatten)]
    args: ServeArgs,
    /// Plaintext and no authentication, for development on one machine:
    /// refused unless --listen and --advertise are loopback addresses.
    #[arg(long)]
    insecure: bool,
}

/// Parses the command line. `kvmesh serve …` is parsed by its own parser,
/// so that `serve --help` lists the daemon's flags only.
pub fn parse() -> Cli {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "serve") {
        let rest = argv.into_iter().skip(2);
        let serve = ServeCli::parse_from(std::iter::once(std::ffi::OsString::from("kvmesh serve")).chain(rest));
        return Cli {
            endpoint: None,
            token: None,
            client_config: None,
            insecure: serve.insecure,
            output: OutputFlag::Table,
            command: Command::Serve(serve.args),
        };
    }
    Cli::parse()
}

/// How output is printed, as commands see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// `-o`: `wide` is a table with more columns where there are more to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFlag {
    Table,
    Wide,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node daemon on this host.
    #[command(after_help = examples::SERVE)]
    Serve(ServeArgs),
    /// The fence guard: started by `serve`, not by hand. Kills this host's
    /// HA guests when the daemon's lease runs out, even if the daemon is dead.
    #[command(hide = true)]
    Guard(crate::guard::process::GuardArgs),
    /// Cluster membership and status.
    #[command(subcommand, after_help = examples::CLUSTER)]
    Cluster(ClusterCmd),
    /// Hosts of the cluster.
    #[command(subcommand, after_help = examples::NODE)]
    Node(NodeCmd),
    /// Virtual machines.
    #[command(subcommand, after_help = examples::VM)]
    Vm(VmCmd),
    /// Storage domains: where disks and images live.
    #[command(subcommand, after_help = examples::STORAGE)]
    Storage(StorageCmd),
    /// Logical networks: defined once, realized on every host.
    #[command(subcommand, after_help = examples::NETWORK)]
    Network(NetworkCmd),
    /// Images: imported disk images, kernels, initrds and ISOs.
    #[command(subcommand, after_help = examples::IMAGE)]
    Image(ImageCmd),
    /// API tokens: credentials for people and programs, with a role.
    #[command(subcommand, after_help = examples::TOKEN)]
    Token(TokenCmd),
    /// Client certificates: credentials with a role, for clients that
    /// prefer a certificate to a token.
    #[command(subcommand, after_help = examples::CERT)]
    Cert(CertCmd),
    /// The cluster's event log: what happened, to what, and who asked.
    #[command(after_help = examples::EVENTS)]
    Events {
        /// Keep printing new events as they happen: from now on, unless
        /// --since or --limit asks for earlier ones too. Moves to the next
        /// endpoint if its node goes away.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only events about this VM.
        #[arg(long)]
        vm: Option<String>,
        /// Only events about, or mentioning, this node.
        #[arg(long)]
        node: Option<String>,
        /// Only events since then: a duration back from now (10m, 2h, 1d)
        /// or a time as the tables show it ("2026-12-07 14:00" local, or
        /// with Z, UTC or +0100).
        #[arg(long, value_parser = events::parse_since)]
        since: Option<u64>,
        /// Only the newest N (of those that match).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
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
    /// Override the host's memory: a size, e.g. 64G (a bare number is MiB).
    #[arg(long, value_parser = sizes::parse_mib)]
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

/// `--wait` for commands whose work happens after they return.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Return once the operation has finished (the VM runs, is off, is
    /// gone; the node is in maintenance); exit non-zero with the reason if
    /// it fails or the timeout passes.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Parses `key=value`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.contains('=') => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}
