//! Errors of the scheduler crate: input that can never be placed.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("a VM must ask for at least 1 vCPU and 1 MiB of memory (asked {vcpus} vCPUs, {memory_mib} MiB)")]
    EmptyRequest { vcpus: u32, memory_mib: u64 },
    #[error("--{name}-overcommit must be between 0.1 and 100 (got {value})")]
    BadOvercommit { name: &'static str, value: f64 },
    #[error("unknown policy {0:?}: use spread, pack or balanced")]
    UnknownPolicy(String),
}

pub type Result<T> = std::result::Result<T, Error>;
