//! The cluster-level command groups: `cluster`, `node`, API tokens and
//! client certificates.

use std::path::PathBuf;

use clap::Subcommand;

use super::args::{parse_label, WaitArgs};
use super::{security, sizes};

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make an API token; its secret is printed this once.
    #[command(
        after_help = "Examples:\n  kvmesh token create ci --role operator\n  kvmesh token create grafana --role viewer -o json | jq -r .token"
    )]
    Create {
        name: String,
        /// viewer (reads), operator (also runs VMs, migrates, drains) or
        /// admin (everything).
        #[arg(long)]
        role: String,
    },
    /// The tokens (names and roles; secrets are never shown again).
    #[command(after_help = "Examples:\n  kvmesh token list")]
    List,
    /// Revoke a token: it stops working at once, on every node.
    #[command(after_help = "Examples:\n  kvmesh token revoke ci")]
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Make a key here, have the cluster sign it, and write a client config
    /// that uses it (the key never leaves this machine).
    #[command(
        after_help = "Examples:\n  kvmesh cert create alice --role admin --out ~/.config/kvmesh/alice.toml --ttl 30d"
    )]
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
    #[command(after_help = "Examples:\n  kvmesh cert list")]
    List,
    /// Revoke every certificate of a client: refused at once, on every node.
    #[command(after_help = "Examples:\n  kvmesh cert revoke alice")]
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum JoinTokenCmd {
    /// Make a one-time join token for a new node (`serve --join-token`).
    #[command(after_help = "Examples:\n  kvmesh cluster token create --name n4 --ttl 30m")]
    Create {
        /// How long it stays valid: 90s, 30m, 1h, 2d [default: 1h].
        #[arg(long, value_parser = security::parse_ttl)]
        ttl: Option<u64>,
        /// The only node name it may enroll.
        #[arg(long)]
        name: Option<String>,
    },
    /// Unused join tokens that have not expired.
    #[command(after_help = "Examples:\n  kvmesh cluster token list")]
    List,
    /// Revoke an unused join token by its id.
    #[command(after_help = "Examples:\n  kvmesh cluster token revoke 3f2a9c")]
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Bootstrap a new cluster on the node at --endpoint.
    #[command(
        after_help = "Examples:\n  kvmesh --endpoint 10.0.0.1:7100 cluster init\n  kvmesh cluster init --max-voters 5"
    )]
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
    #[command(after_help = "Examples:\n  kvmesh cluster status\n  kvmesh cluster status -o json | jq .leader")]
    Status,
    /// Show or set the placement policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// HA reservation: could every host's HA VMs restart on the others (N+1)?
    #[command(
        after_help = "Examples:\n  kvmesh cluster capacity\n  kvmesh cluster capacity --check || alert 'HA reserve broken'"
    )]
    Capacity {
        /// Exit 3 if not (for monitoring and scripts).
        #[arg(long)]
        check: bool,
    },
    /// Even out the hosts' loads with live migrations (each move explained).
    #[command(
        after_help = "Examples:\n  kvmesh cluster balance --dry-run\n  kvmesh cluster balance --threshold 15 --max 2"
    )]
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
    #[command(
        after_help = "Examples:\n  kvmesh cluster remove n4\n  kvmesh cluster remove n4 --force --yes   # with VMs placed on it"
    )]
    Remove {
        name: String,
        /// Remove it even though VMs are placed on it (they become
        /// unplaced); asked on a terminal, or confirmed with --yes.
        #[arg(long)]
        force: bool,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// The current policy and overcommit ratios.
    #[command(after_help = "Examples:\n  kvmesh cluster policy show")]
    Show,
    /// Set the policy (and optionally the overcommit ratios).
    #[command(
        after_help = "Examples:\n  kvmesh cluster policy set spread\n  kvmesh cluster policy set pack --cpu-overcommit 2 --balance on"
    )]
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
    #[command(after_help = "Examples:\n  kvmesh node list\n  kvmesh node list -o wide")]
    List {
        /// Read through the leader (linearizable).
        #[arg(long)]
        consistent: bool,
    },
    /// Move every VM off a node, then put it in maintenance: running VMs
    /// whose disks are shared migrate live, the others stop and start
    /// elsewhere.
    #[command(after_help = "Examples:\n  kvmesh node drain n2 --wait\n  kvmesh node drain n2 --cold")]
    Drain {
        name: String,
        /// Stop and start every VM instead of migrating the running ones live.
        #[arg(long)]
        cold: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Bring a node back from maintenance (or stop a drain).
    #[command(after_help = "Examples:\n  kvmesh node activate n2")]
    Activate { name: String },
    /// Show one host.
    #[command(after_help = "Examples:\n  kvmesh node get n2\n  kvmesh node get n2 -o json | jq .storage")]
    Get {
        name: String,
        /// Read through the leader (linearizable).
        #[arg(long)]
        consistent: bool,
    },
    /// Change a host's capacity or labels (refused if its VMs would no longer fit).
    #[command(
        after_help = "Examples:\n  kvmesh node set n2 --cpus 32 --memory-mib 64G\n  kvmesh node set n2 --label rack=r2 --unlabel zone"
    )]
    Set {
        name: String,
        /// vCPUs the host offers to guests.
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory the host offers to guests: a size, e.g. 64G (a bare number is MiB).
        #[arg(long, value_parser = sizes::parse_mib)]
        memory_mib: Option<u64>,
        /// Add or change a label, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove a label by key (repeatable).
        #[arg(long = "unlabel")]
        unlabel: Vec<String>,
    },
}
