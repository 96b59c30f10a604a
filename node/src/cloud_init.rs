//! cloud-init's NoCloud seed for a VM: what an operator may give (checked
//! where the request arrives, so a mistake is an error with its line, never
//! a guest that boots unconfigured), the seed's files, and the ISO 9660
//! image labelled `cidata` that the VM's host builds at every start.
//!
//! The operator's user-data goes into the seed byte for byte. SSH keys and
//! the hostname go into the meta-data (`public-keys`, `local-hostname`),
//! which NoCloud reads, so kvmesh never rewrites anyone's YAML. The
//! `instance-id` hashes the settings: cloud-init runs its once-per-instance
//! modules again after they change, as it does after Proxmox regenerates
//! its seed.

use std::path::Path;
use std::process::Command;

use kvmesh_proto as pb;
use kvmesh_raft::hardware::{CloudInit, MAX_USER_DATA_BYTES};

/// What is wrong with cloud-init settings, if anything: the sentence for
/// the operator.
pub fn check(ci: &pb::CloudInit) -> Result<(), String> {
    if let Some(user_data) = ci.user_data.as_deref().filter(|u| !u.is_empty()) {
        check_user_data(user_data)?;
    }
    for key in ci.ssh_keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        let kind = key.split_whitespace().next().unwrap_or_default();
        let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        if !known || key.split_whitespace().count() < 2 || key.contains('\n') {
            let shown: String = key.chars().take(40).collect();
            return Err(format!(
                "{shown:?} is not an SSH public key (one key per line, such as the contents of ~/.ssh/id_ed25519.pub)"
            ));
        }
    }
    if let Some(host) = ci.hostname.as_deref().filter(|h| !h.is_empty()) {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!(
                "hostname {host:?} is not a valid host name (letters, digits and -, dot-separated labels of at most 63)"
            ));
        }
    }
    Ok(())
}

/// User-data is what cloud-init accepts: `#cloud-config` followed by a
/// YAML mapping, or a script or other part cloud-init knows by its first
/// line.
fn check_user_data(user_data: &str) -> Result<(), String> {
    if user_data.len() > MAX_USER_DATA_BYTES {
        return Err(format!("user-data is {} bytes; the limit is {MAX_USER_DATA_BYTES}", user_data.len()));
    }
    let first = user_data.lines().next().unwrap_or_default().trim_end();
    if first == "#cloud-config" {
        let docs = yaml_rust2::YamlLoader::load_from_str(user_data).map_err(|e| {
            let at = e.marker();
            format!("user-data is not valid YAML: line {}, column {}: {}", at.line(), at.col() + 1, e.info())
        })?;
        return match docs.first() {
            None | Some(yaml_rust2::Yaml::Hash(_)) | Some(yaml_rust2::Yaml::Null) => Ok(()),
            Some(_) => Err("user-data after #cloud-config must be a YAML mapping (key: value lines)".into()),
        };
    }
    let known = ["#!", "#include", "#cloud-boothook", "#part-handler", "Content-Type:"];
    if known.iter().any(|k| first.starts_with(k)) {
        return Ok(());
    }
    Err(format!(
        "user-data starts with {first:?}; cloud-init reads `#cloud-config` (YAML) or a script (`#!`) as the first line"
    ))
}

/// The seed's files: (`meta-data`, `user-data`).
pub fn seed_files(vm_id: u64, vm_name: &str, ci: &CloudInit) -> (String, String) {
    let id = ci.fingerprint();
    let hostname = ci.hostname.as_deref().unwrap_or(vm_name);
    let mut meta = format!("instance-id: kvmesh-{vm_id:016x}-{id:016x}\nlocal-hostname: {hostname}\n");
    if !ci.ssh_keys.is_empty() {
        meta.push_str("public-keys:\n");
        for key in &ci.ssh_keys {
            // A YAML string in single quotes: a quote inside is doubled.
            meta.push_str(&format!("  - '{}'\n", key.replace('\'', "''")));
        }
    }
    // No user-data is an empty cloud-config: the meta-data still applies.
    let user = ci.user_data.clone().unwrap_or_else(|| "#cloud-config\n".into());
    (meta, user)
}

/// Writes the seed ISO (volume label `cidata`) at `out`, with xorriso or
/// genisoimage, whichever the host has.
pub fn build_seed(out: &Path, meta_data: &str, user_data: &str) -> Result<(), String> {
    let dir = tempdir_for(out)?;
    let result = (|| {
        std::fs::write(dir.join("meta-data"), meta_data).map_err(|e| format!("write the seed's meta-data: {e}"))?;
        std::fs::write(dir.join("user-data"), user_data).map_err(|e| format!("write the seed's user-data: {e}"))?;
        let partial = out.with_extension("iso.partial");
        let tools: [(&str, &[&str]); 2] = [
            ("xorriso", &["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-R", "-o"]),
            ("genisoimage", &["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"]),
        ];
        let mut last = String::from("neither xorriso nor genisoimage is installed on this host (install xorriso)");
        for (tool, args) in tools {
            let run = Command::new(tool).args(args).arg(&partial).arg(&dir).output();
            match run {
                Ok(o) if o.status.success() => {
                    return std::fs::rename(&partial, out)
                        .map_err(|e| format!("put the seed at {}: {e}", out.display()));
                }
                Ok(o) => last = format!("{tool} failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => last = format!("run {tool}: {e}"),
            }
        }
        Err(last)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir_for(out: &Path) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "kvmesh-seed-{}-{}",
        std::process::id(),
        out.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("make {}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci(user_data: &str) -> pb::CloudInit {
        pb::CloudInit { user_data: Some(user_data.into()), ..Default::default() }
    }

    #[test]
    fn user_data_is_cloud_config_yaml_or_a_script_and_mistakes_name_their_line() {
        assert!(check(&ci("#cloud-config\npackages:\n  - nginx\n")).is_ok());
        assert!(check(&ci("#!/bin/sh\necho hi\n")).is_ok());
        let e = check(&ci("#cloud-config\nusers:\n  - name: a\n   bad: [\n")).unwrap_err();
        assert!(e.starts_with("user-data is not valid YAML: line "), "{e}");
        let line: usize = e["user-data is not valid YAML: line ".len()..].split(',').next().unwrap().parse().unwrap();
        assert!((3..=5).contains(&line), "the line of the mistake: {e}");
        assert!(check(&ci("#cloud-config\n- a list\n")).unwrap_err().contains("mapping"));
        assert!(check(&ci("packages: [nginx]\n")).unwrap_err().contains("#cloud-config"));
        let big = format!("#!/bin/sh\n{}", "x".repeat(MAX_USER_DATA_BYTES));
        assert!(check(&ci(&big)).unwrap_err().contains("limit"));
    }

    #[test]
    fn keys_and_hostnames_are_checked() {
        let keys = |k: &str| pb::CloudInit { ssh_keys: vec![k.into()], ..Default::default() };
        assert!(check(&keys("ssh-ed25519 AAAAC3Nza me@host")).is_ok());
        assert!(check(&keys("-----BEGIN OPENSSH PRIVATE KEY-----")).unwrap_err().contains("not an SSH public key"));
        let host = |h: &str| pb::CloudInit { hostname: Some(h.into()), ..Default::default() };
        assert!(check(&host("web-1.example.org")).is_ok());
        assert!(check(&host("web_1")).is_err());
        assert!(check(&host("-web")).is_err());
    }

    #[test]
    fn the_seed_carries_keys_and_hostname_in_meta_data_and_user_data_as_given() {
        let c = CloudInit {
            user_data: Some("#cloud-config\nx: 1\n".into()),
            ssh_keys: vec!["ssh-ed25519 AAA it's me".into()],
            hostname: None,
        };
        let (meta, user) = seed_files(0xab, "web1", &c);
        assert!(meta.starts_with("instance-id: kvmesh-00000000000000ab-"), "{meta}");
        assert!(meta.contains("local-hostname: web1\n"));
        assert!(meta.contains("public-keys:\n  - 'ssh-ed25519 AAA it''s me'\n"), "{meta}");
        assert_eq!(user, "#cloud-config\nx: 1\n");
        let changed = CloudInit { hostname: Some("other".into()), ..c };
        let (meta2, _) = seed_files(0xab, "web1", &changed);
        assert_ne!(meta.lines().next(), meta2.lines().next(), "a new instance-id after a change");
    }
}
