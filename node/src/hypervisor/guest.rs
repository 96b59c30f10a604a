//! What an operator reaches of a running guest through its host: the serial
//! console's pty, the VNC display's socket, the CD-ROM drive's medium, and
//! the firmware a UEFI guest boots. The pure parts (finding the pty in the
//! live XML, choosing OVMF's files) are unit-tested; the rest is a thin
//! layer over libvirt and the file system.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where distributions put OVMF (Debian and Ubuntu, Fedora, Arch).
const OVMF_DIRS: &[&str] = &["/usr/share/OVMF", "/usr/share/edk2/ovmf", "/usr/share/edk2/x64"];
/// Code and variable template pairs, preferred first. Without Secure Boot:
/// the guest's installer decides what it trusts, not a key set chosen here.
const OVMF_PAIRS: &[(&str, &str)] =
    &[("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"), ("OVMF_CODE.4m.fd", "OVMF_VARS.4m.fd")];

/// OVMF's code and variable template on this host, or why there are none
/// (what the host reports, and what the scheduler reads to keep UEFI VMs
/// off it).
pub fn find_ovmf() -> std::result::Result<(String, String), String> {
    find_ovmf_in(OVMF_DIRS.iter().map(Path::new))
}

fn find_ovmf_in<'a>(dirs: impl Iterator<Item = &'a Path>) -> std::result::Result<(String, String), String> {
    for dir in dirs {
        for (code, vars) in OVMF_PAIRS {
            let (code, vars) = (dir.join(code), dir.join(vars));
            if code.is_file() && vars.is_file() {
                return Ok((code.to_string_lossy().into_owned(), vars.to_string_lossy().into_owned()));
            }
        }
    }
    Err("no OVMF firmware on this host (install Debian's ovmf package)".into())
}

/// Where a UEFI guest's own variables live: next to its boot disk, so they
/// follow the VM wherever its disk is opened (shared storage, a copied
/// local disk's folder); a VM without disks keeps them in the host's data
/// dir.
pub fn nvram_path(boot_disk: Option<&str>, nvram_dir: &Path, domain: &str) -> PathBuf {
    beside_boot_disk(boot_disk, nvram_dir, &format!("{domain}_VARS.fd"))
}

/// Where a VM's cloud-init seed is built: in the host's consoles folder.
/// It is made again from the replicated settings at every start (and by a
/// live migration's target, whose definition `retarget` points there), so
/// it needs no storage domain and never stops a VM from moving.
pub fn seed_path(consoles_dir: &Path, domain: &str) -> PathBuf {
    consoles_dir.join(format!("{domain}_cidata.iso"))
}

fn beside_boot_disk(boot_disk: Option<&str>, fallback: &Path, file: &str) -> PathBuf {
    match boot_disk.and_then(|d| Path::new(d).parent()) {
        Some(dir) => dir.join(file),
        None => fallback.join(file),
    }
}

/// The pty of a running domain's first serial port, from its live XML
/// (`<serial type='pty'><source path='/dev/pts/N'/>`).
pub fn serial_pty(live_xml: &str) -> Option<String> {
    let start = live_xml.find("<serial type='pty'").or_else(|| live_xml.find("<serial type=\"pty\""))?;
    let block = &live_xml[start..start + live_xml[start..].find("</serial>")?];
    let at = block.find("path=")? + "path=".len();
    let quote = block[at..].chars().next()?;
    let rest = &block[at + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

/// The guest agent commands `vm get` sends, and how long each may take:
/// an agent that does not answer at once is reported as absent, never
/// waited for.
pub const AGENT_OS: &str = r#"{"execute":"guest-get-osinfo"}"#;
pub const AGENT_HOST: &str = r#"{"execute":"guest-get-host-name"}"#;
pub const AGENT_INTERFACES: &str = r#"{"execute":"guest-network-get-interfaces"}"#;
pub const AGENT_TIMEOUT_S: i32 = 2;

/// What the agent's answers say: (OS, hostname, interfaces as (name, MAC,
/// addresses)). Unparseable parts are left empty.
pub fn parse_agent(os: &str, host: &str, interfaces: &str) -> kvmesh_proto::GuestInfo {
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    let os = json(os);
    let os = os["return"]["pretty-name"].as_str().or(os["return"]["name"].as_str()).unwrap_or_default().to_string();
    let hostname = json(host)["return"]["host-name"].as_str().unwrap_or_default().to_string();
    let interfaces = json(interfaces)["return"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|i| i["name"] != "lo")
                .map(|i| kvmesh_proto::GuestInterface {
                    name: i["name"].as_str().unwrap_or_default().to_string(),
                    mac: i["hardware-address"].as_str().unwrap_or_default().to_string(),
                    addresses: i["ip-addresses"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| {
                                    Some(format!("{}/{}", x["ip-address"].as_str()?, x["prefix"].as_u64()?))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    kvmesh_proto::GuestInfo { os, hostname, interfaces }
}

/// Opens a guest's serial pty for a console session: non-blocking (the
/// session's tasks wait on it through tokio) and raw, so every byte goes
/// through unchanged: the guest's own terminal echoes and edits lines.
pub fn open_pty(path: &str) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::Hypervisor(format!("open the serial console {path}: {e}")))?;
    // SAFETY: the descriptor is open for the whole call and `termios` is a
    // plain C struct that tcgetattr fills in.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(file.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(file.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pty_is_read_from_the_live_definition() {
        let xml = "<devices><disk/><serial type='pty'>\n  <source path='/dev/pts/7'/>\n  <log file='/d/c.log'/>\n  <target port='0'/></serial><console type='pty' tty='/dev/pts/7'/></devices>";
        assert_eq!(serial_pty(xml).as_deref(), Some("/dev/pts/7"));
        let dq = "<serial type=\"pty\"><source path=\"/dev/pts/3\"/></serial>";
        assert_eq!(serial_pty(dq).as_deref(), Some("/dev/pts/3"));
        assert_eq!(serial_pty("<serial type='file'><source path='/x'/></serial>"), None);
        assert_eq!(serial_pty("<serial type='pty'><target port='0'/></serial>"), None, "not started");
    }

    #[test]
    fn agent_answers_become_the_guests_os_and_addresses() {
        let os =
            r#"{"return":{"id":"debian","name":"Debian GNU/Linux","pretty-name":"Debian GNU/Linux 12 (bookworm)"}}"#;
        let ifs = r#"{"return":[{"name":"lo","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"127.0.0.1","prefix":8}]},
            {"name":"eth0","hardware-address":"0a:00:00:00:00:01","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"10.0.0.5","prefix":24}]}]}"#;
        let g = parse_agent(os, r#"{"return":{"host-name":"web1"}}"#, ifs);
        assert_eq!(g.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(g.hostname, "web1");
        assert_eq!(g.interfaces.len(), 1, "loopback left out");
        assert_eq!(g.interfaces[0].addresses, vec!["10.0.0.5/24".to_string()]);
        assert_eq!(g.interfaces[0].mac, "0a:00:00:00:00:01");
        let nothing = parse_agent("garbage", "", "{}");
        assert!(nothing.os.is_empty() && nothing.interfaces.is_empty());
    }

    #[test]
    fn ovmf_is_found_as_a_pair_or_its_absence_explained() {
        let dir = std::env::temp_dir().join(format!("kvmesh-ovmf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("OVMF_CODE_4M.fd"), b"c").unwrap();
        let missing = find_ovmf_in([dir.as_path()].into_iter()).unwrap_err();
        assert!(missing.contains("install Debian's ovmf"), "code without its variables is no firmware");
        std::fs::write(dir.join("OVMF_VARS_4M.fd"), b"v").unwrap();
        let (code, vars) = find_ovmf_in([dir.as_path()].into_iter()).unwrap();
        assert!(code.ends_with("OVMF_CODE_4M.fd") && vars.ends_with("OVMF_VARS_4M.fd"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn uefi_variables_live_next_to_the_boot_disk_and_seeds_in_the_consoles_folder() {
        assert_eq!(seed_path(Path::new("/d/consoles"), "kvmesh-01"), PathBuf::from("/d/consoles/kvmesh-01_cidata.iso"));
        let p = nvram_path(Some("/srv/shared/kvmesh-01-disk0.qcow2"), Path::new("/var/lib/kvmesh/nvram"), "kvmesh-01");
        assert_eq!(p, PathBuf::from("/srv/shared/kvmesh-01_VARS.fd"));
        let p = nvram_path(None, Path::new("/var/lib/kvmesh/nvram"), "kvmesh-01");
        assert_eq!(p, PathBuf::from("/var/lib/kvmesh/nvram/kvmesh-01_VARS.fd"));
    }
}
