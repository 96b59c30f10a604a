//! kvmesh: a peer-to-peer manager for KVM virtual machines.
//!
//! One binary: `kvmesh serve` runs the node daemon on every host; every other
//! subcommand is a client of any node's gRPC API.

mod agent;
mod api;
mod auth;
#[cfg(feature = "bench-seed")]
mod bench_seed;
mod cli;
mod cloud_init;
mod config;
mod ctx;
mod daemon;
mod data_dir;
mod error;
mod guard;
mod ha;
mod host;
mod hypervisor;
mod logging;
mod netconf;
mod storage;
mod telemetry;
mod tls;
mod ui;
mod view;
mod voters;

fn main() -> std::process::ExitCode {
    let args = cli::parse();
    // The guard is plain threads: no runtime, as little as can fail.
    if let cli::Command::Guard(guard) = args.command {
        return match guard::process::run(guard) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let cli::Command::Serve(serve) = &args.command {
        builder.worker_threads(serve.worker_threads.into());
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // SIGPIPE stays ignored (Rust's default): a peer closing a socket is
    // an error with a message; a closed stdout ends client commands with
    // 141 where they print (`outln!`).
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(cli::exit_code(&e))
        }
    }
}
