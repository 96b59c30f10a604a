//! Errors of the scheduler crate.

/// Invalid scheduler input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("a VM must ask for at least 1 vCPU and 1 MiB of memory (asked {vcpus} vCPUs, {memory_mib} MiB)")]
    EmptyRequest { vcpus: u32, memory_mib: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

impl crate::VmRequest {
    /// Rejects requests that can never be placed meaningfully.
    pub fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.memory_mib == 0 {
            return Err(Error::EmptyRequest { vcpus: self.vcpus, memory_mib: self.memory_mib });
        }
        Ok(())
    }
}
