//! The command line: `serve` for the daemon, everything else a gRPC client.
//!
//! Exit codes, for scripts: 0 done, 1 an error (the message says which and
//! what to do), 2 wrong usage (flags, or a confirmation a script must give
//! with `--yes`), 3 a check that did not pass (`cluster capacity --check`,
//! a `--dry-run` that cannot place, `--strict`), 141 a closed stdout pipe.

/// `println!` for command output. A closed stdout (`kvmesh vm list | head`)
/// ends the CLI quietly with 141, as shells expect of a pipe; SIGPIPE itself
/// stays ignored, so a connection closed by a peer is an error with a
/// message, never a silent death.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

mod args;
mod args_cluster;
mod args_vm;
mod attach;
mod client;
mod cluster;
mod config;
mod events;
mod examples;
mod networks;
mod nodes;
pub(crate) mod output;
mod security;
mod sizes;
mod storage;
mod time;
mod vm;
mod vm_view;
mod wait;

pub use args::{parse, Cli, Command, Output, OutputFlag, WaitArgs};

/// The JSON shapes of `-o json`, which the REST API answers with too.
pub mod json {
    pub use super::output::node_state;
    pub use super::vm_view::shown_state;
}
pub use args_cluster::{CertCmd, ClusterCmd, JoinTokenCmd, NodeCmd, PolicyCmd, TokenCmd};
pub use args_vm::{
    CdromCmd, CloudInitArgs, CreateArgs, DiskCmd, ImageCmd, NetworkCmd, NicCmd, SnapshotCmd, StorageCmd, VmCmd,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let _flush = crate::logging::init();
            let mut config = args.into_config()?;
            config.insecure |= cli.insecure;
            crate::daemon::run(config).await?;
            Ok(())
        }
        // main runs the guard without a runtime; never reached.
        command => {
            let settings = config::Settings::resolve(cli.endpoint, cli.token, cli.client_config, cli.insecure)?;
            let output = match cli.output {
                OutputFlag::Json => Output::Json,
                OutputFlag::Table | OutputFlag::Wide => Output::Table,
            };
            client::run(settings, output, cli.output == OutputFlag::Wide, command).await
        }
    }
}

/// Writes one line of command output (see `outln!`).
pub fn write_line(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
    }
}

/// A check that did not pass: exit code 3, for scripts (`cluster capacity
/// --check`, an unplaceable `--dry-run`, `--strict`).
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// Wrong usage found after parsing (a confirmation a script must give with
/// `--yes`, nothing to change): exit code 2, as clap's own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The process exit code for an error.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<CheckFailed>().is_some() {
        3
    } else if e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}
