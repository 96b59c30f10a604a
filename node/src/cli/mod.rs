//! The command line: `serve` for the daemon, everything else a gRPC client.

mod client;
mod output;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::ServeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "kvmesh",
    version,
    about = "Peer-to-peer manager for KVM virtual machines"
)]
pub struct Cli {
    /// Address of any cluster node.
    #[arg(
        long,
        global = true,
        env = "KVMESH_ENDPOINT",
        default_value = "127.0.0.1:7100"
    )]
    pub endpoint: String,
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
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Hosts of the cluster.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
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
        Ok(c)
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Bootstrap a new cluster on the node at --endpoint.
    Init {
        /// Voters the cluster keeps (3, 5 or 7); further nodes are learners.
        #[arg(long, default_value_t = 3)]
        max_voters: u32,
    },
    /// Leader, term, commit index and members.
    Status,
    /// Remove a node from the cluster.
    Remove {
        name: String,
        /// Remove it even though VMs are placed on it (they become unplaced).
        #[arg(long)]
        force: bool,
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
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Create a VM; the leader places it.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u64,
        /// Restart it elsewhere if its host dies.
        #[arg(long)]
        ha: bool,
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
    /// Delete a VM.
    Delete { name: String },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            let config = args.into_config()?;
            crate::daemon::run(config).await?;
            Ok(())
        }
        command => client::run(&cli.endpoint, cli.output, command).await,
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KVMESH_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}
