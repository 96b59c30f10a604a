//! Facts about this machine that are not the hypervisor's to tell.
//!
//! (vCPUs and memory come from libvirt's node info; see `hypervisor`.)

/// This machine's hostname, the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
