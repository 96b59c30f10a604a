//! The host's side of storage: the status of each domain (`probe`), a VM's
//! volumes (`volumes`), image files (`format`, `images`) and disk
//! operations that run where the VM lives (`disk_ops`).

pub mod disk_ops;
pub mod format;
pub mod images;
pub mod probe;
pub mod volumes;
