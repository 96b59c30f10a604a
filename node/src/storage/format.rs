//! What an imported file is, from its first bytes: pure checks that refuse
//! a file that cannot be what it claims before it is recorded as an image.
//!
//! A qcow2 header is checked field by field (magic, version, cluster size,
//! a virtual size that fits), because a broken one would only fail later,
//! at a guest's start on some host. Raw disks have no header; kernels,
//! initrds and ISOs are recognised by their well-known magic numbers.

use kvmesh_raft::storage::ImageKind;

/// What the first bytes (up to 64 KiB) of an image say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// The size a guest sees.
    pub virtual_bytes: u64,
}

/// How many leading bytes [`inspect`] wants.
pub const HEADER_BYTES: usize = 64 * 1024;

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Checks a file of `file_len` bytes starting with `head` as an image of
/// `kind`; the error says what is wrong and what was expected.
pub fn inspect(kind: ImageKind, head: &[u8], file_len: u64) -> Result<Inspected, String> {
    if file_len == 0 {
        return Err("the file is empty".into());
    }
    match kind {
        ImageKind::Disk if head.starts_with(QCOW2_MAGIC) => qcow2(head),
        ImageKind::Disk => Ok(Inspected { format: "raw", virtual_bytes: file_len }),
        ImageKind::Kernel => {
            // x86 boot protocol: "HdrS" at 0x202 (bzImage); or an ELF vmlinux.
            let bzimage = head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS";
            if bzimage || head.starts_with(b"\x7fELF") {
                Ok(Inspected { format: "raw", virtual_bytes: file_len })
            } else {
                Err("not a Linux kernel (no bzImage header and not ELF)".into())
            }
        }
        ImageKind::Initrd => {
            let known: [&[u8]; 7] =
                [b"\x1f\x8b", b"070701", b"070702", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ", b"BZh", b"\x02\x21\x4c\x18"];
            if known.iter().any(|m| head.starts_with(m)) {
                Ok(Inspected { format: "raw", virtual_bytes: file_len })
            } else {
                Err("not an initramfs (neither a cpio archive nor gzip, zstd, xz, bzip2 or lz4 compressed)".into())
            }
        }
        ImageKind::Iso => {
            // ISO 9660: "CD001" in the first volume descriptor, at 32 KiB + 1.
            if head.len() >= 0x8006 && &head[0x8001..0x8006] == b"CD001" {
                Ok(Inspected { format: "raw", virtual_bytes: file_len })
            } else {
                Err("not an ISO 9660 image (no CD001 volume descriptor at 32 KiB)".into())
            }
        }
    }
}

fn qcow2(h: &[u8]) -> Result<Inspected, String> {
    if h.len() < 72 {
        return Err("qcow2 header is cut short".into());
    }
    let version = be32(h, 4);
    if !(2..=3).contains(&version) {
        return Err(format!("qcow2 header has version {version}; only versions 2 and 3 exist"));
    }
    let cluster_bits = be32(h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("qcow2 header has cluster_bits {cluster_bits}; valid values are 9 to 21"));
    }
    let size = be64(h, 24);
    if size == 0 || size > 1 << 55 {
        return Err(format!("qcow2 header has virtual size {size}; the header is damaged"));
    }
    if be32(h, 32) != 0 {
        return Err("qcow2 image is encrypted; import an unencrypted image".into());
    }
    // Version 3 flags features a reader must understand. An external data
    // file (bit 2) names a host path QEMU would open for the guest: refused
    // like a backing file. Dirty (0) and corrupt (1) images need a repair
    // first; compression type (3) and extended L2 (4) are safe.
    if version == 3 {
        if h.len() < 80 {
            return Err("qcow2 v3 header is cut short".into());
        }
        let incompatible = be64(h, 72);
        if incompatible & 0b100 != 0 {
            return Err("qcow2 image uses an external data file; convert it to a self-contained image first (`qemu-img convert -O qcow2 IN OUT`)".into());
        }
        if incompatible & 0b11 != 0 {
            return Err("qcow2 image is marked dirty or corrupt; repair it first (`qemu-img check -r all FILE`)".into());
        }
        if incompatible & !0b11111 != 0 {
            return Err(format!("qcow2 image uses unknown incompatible features ({incompatible:#x})"));
        }
    }
    // A backing file would point at a path on the machine it came from.
    if be64(h, 8) != 0 {
        return Err("qcow2 image has a backing file; flatten it first (`qemu-img convert -O qcow2 IN OUT`)".into());
    }
    Ok(Inspected { format: "qcow2", virtual_bytes: size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(version: u32, cluster_bits: u32, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h
    }

    #[test]
    fn a_good_qcow2_gives_its_virtual_size_and_raw_its_length() {
        let h = qcow2_header(3, 16, 5 << 30);
        assert_eq!(inspect(ImageKind::Disk, &h, 200_000), Ok(Inspected { format: "qcow2", virtual_bytes: 5 << 30 }));
        assert_eq!(inspect(ImageKind::Disk, b"anything", 4096), Ok(Inspected { format: "raw", virtual_bytes: 4096 }));
    }

    #[test]
    fn a_damaged_qcow2_header_is_refused_with_what_is_wrong() {
        assert!(inspect(ImageKind::Disk, &qcow2_header(7, 16, 1 << 30), 1000).unwrap_err().contains("version 7"));
        assert!(inspect(ImageKind::Disk, &qcow2_header(3, 40, 1 << 30), 1000).unwrap_err().contains("cluster_bits"));
        assert!(inspect(ImageKind::Disk, &qcow2_header(3, 16, 0), 1000).unwrap_err().contains("virtual size"));
        assert!(inspect(ImageKind::Disk, &QCOW2_MAGIC[..], 4).unwrap_err().contains("cut short"));
        let mut backed = qcow2_header(3, 16, 1 << 30);
        backed[8..16].copy_from_slice(&512u64.to_be_bytes());
        assert!(inspect(ImageKind::Disk, &backed, 1000).unwrap_err().contains("backing file"));
        assert!(inspect(ImageKind::Disk, b"", 0).is_err());
        let mut data_file = qcow2_header(3, 16, 1 << 30);
        data_file[72..80].copy_from_slice(&4u64.to_be_bytes());
        assert!(inspect(ImageKind::Disk, &data_file, 1000).unwrap_err().contains("external data file"));
        data_file[72..80].copy_from_slice(&1u64.to_be_bytes());
        assert!(inspect(ImageKind::Disk, &data_file, 1000).unwrap_err().contains("dirty"));
        data_file[72..80].copy_from_slice(&(1u64 << 3).to_be_bytes());
        assert!(inspect(ImageKind::Disk, &data_file, 1000).is_ok(), "zstd compression is fine");
    }

    #[test]
    fn kernels_initrds_and_isos_are_recognised_by_their_magic() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(inspect(ImageKind::Kernel, &bz, 0x300).is_ok());
        assert!(inspect(ImageKind::Kernel, b"#!/bin/sh\n", 10).is_err());
        assert!(inspect(ImageKind::Initrd, b"\x1f\x8b\x08\x00", 4).is_ok());
        assert!(inspect(ImageKind::Initrd, b"root:x:0:0", 10).is_err());
        let mut iso = vec![0u8; 0x8010];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert!(inspect(ImageKind::Iso, &iso, 0x8010).is_ok());
        assert!(inspect(ImageKind::Iso, &bz, 0x300).is_err());
    }
}
