//! kvmesh: a peer-to-peer manager for KVM virtual machines.
//!
//! One binary: `kvmesh serve` runs the node daemon on every host; every other
//! subcommand is a client of any node's gRPC API.

mod agent;
mod api;
mod cli;
mod config;
mod ctx;
mod daemon;
mod data_dir;
mod error;
mod host;
mod hypervisor;
mod placement;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`kvmesh vm list | head`), like other CLIs,
    // instead of panicking in println!.
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
