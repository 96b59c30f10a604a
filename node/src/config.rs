//! `kvmesh serve` configuration: a TOML file overlaid by command-line flags.
//!
//! Every field has a documented default. [`ServeConfig::validate`] reports
//! every problem it finds, each naming the field and the offending value.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Raft timing and log compaction.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Leader heartbeat interval. Default 50 ms.
    pub heartbeat_ms: u64,
    /// Election timeout range; each node draws once from it, so keep it wide
    /// to avoid repeated split votes. Default 150–400 ms. A follower waits a
    /// leader lease (openraft sets it to `election_max_ms`) plus its own
    /// timeout before it campaigns, so a dead leader is replaced after about
    /// `election_max_ms + election_min_ms`..`2 × election_max_ms`.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log) every this many entries. Default 5000.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the latest snapshot. Default 1000.
    pub keep_logs: u64,
    /// Also snapshot once the log since the last snapshot holds this many
    /// MiB: an entry can carry hundreds of batched writes, so counting
    /// entries alone does not bound the log. Default 64.
    pub snapshot_log_mib: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 400,
            snapshot_every: 5000,
            keep_logs: 1000,
            snapshot_log_mib: 64,
        }
    }
}

/// The whole daemon configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Node name, unique in the cluster. Default: the hostname.
    pub name: String,
    /// Address the gRPC server binds. Default 127.0.0.1:7100.
    pub listen: String,
    /// Address other nodes and clients use to reach this one. Default: `listen`.
    pub advertise: Option<String>,
    /// Where the node keeps its identity and Raft data. Default ./kvmesh-data.
    pub data_dir: PathBuf,
    /// Address of any cluster member to join at first start.
    pub join: Option<String>,
    /// Override the host's vCPU count (for test clusters).
    pub cpus: Option<u32>,
    /// Override the host's memory in MiB (for test clusters).
    pub memory_mib: Option<u64>,
    /// Labels the scheduler can match (`--node-label`, `--prefer-label`),
    /// e.g. `rack = "r1"`, `ssd = "true"`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// How long a client write keeps retrying through elections. Default 10000 ms.
    pub write_timeout_ms: u64,
    /// libvirt connection: `qemu:///system` (default) on real hosts, or
    /// `test:///default`, the embedded test hypervisor that needs no daemon.
    pub libvirt_uri: String,
    /// Domain type for QEMU: `kvm` (default), or `qemu` (TCG emulation) where
    /// KVM is unusable.
    pub virt_type: String,
    /// How long `vm stop` waits for an ACPI shutdown before it destroys the
    /// guest. Default 30000 ms.
    pub shutdown_timeout_ms: u64,
    /// The agent compares libvirt with the cluster at least this often.
    /// Default 2000 ms.
    pub resync_ms: u64,
    /// Each host's agent heartbeats the leader this often. Default 1000 ms.
    pub heartbeat_ms: u64,
    /// A host whose last acknowledged heartbeat was sent longer ago than this
    /// destroys its HA domains (self-fencing). Default 5000 ms.
    pub fence_after_ms: u64,
    /// The leader declares a host down, and restarts its HA VMs elsewhere,
    /// after this long without a heartbeat. At least fence_after_ms plus the
    /// fencing budget (2000 ms) plus one heartbeat. Default 8000 ms.
    pub down_after_ms: u64,
    /// A voter down this long is replaced by a healthy learner. Default 60000 ms.
    pub voter_replace_after_ms: u64,
    /// Do not start the fence guard (unsafe; see `kvmesh serve --help`).
    pub unsafe_no_guard: bool,
    /// How this host's libvirtd reaches another host's for a live
    /// migration; `{host}` is the target's address. Default
    /// `qemu+tcp://{host}/system`; `qemu+tls://{host}/system` with libvirt's
    /// TLS set up, or `qemu+ssh://root@{host}/system`.
    pub migration_uri: String,
    /// With `cluster policy set … --balance on`, the leader evens the hosts
    /// out this often. Default 60000 ms.
    pub balance_every_ms: u64,
    /// A join token (`kvmesh cluster token create` on a member): how a new
    /// node gets its certificate. Used at first start only.
    pub join_token: Option<String>,
    /// Plaintext and no authentication, for development on one machine:
    /// refused unless `listen` and `advertise` are loopback addresses.
    pub insecure: bool,
    /// How long node certificates live; each is renewed at half its life.
    /// Default 90 days (7776000 s); at least 30 s.
    pub cert_lifetime_s: u64,
    pub raft: RaftConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            name: crate::host::hostname(),
            listen: "127.0.0.1:7100".into(),
            advertise: None,
            data_dir: PathBuf::from("kvmesh-data"),
            join: None,
            cpus: None,
            memory_mib: None,
            labels: Default::default(),
            write_timeout_ms: 10_000,
            libvirt_uri: "qemu:///system".into(),
            virt_type: "kvm".into(),
            shutdown_timeout_ms: 30_000,
            resync_ms: 2_000,
            heartbeat_ms: 1_000,
            fence_after_ms: 5_000,
            down_after_ms: 8_000,
            voter_replace_after_ms: 60_000,
            unsafe_no_guard: false,
            migration_uri: "qemu+tcp://{host}/system".into(),
            balance_every_ms: 60_000,
            join_token: None,
            insecure: false,
            cert_lifetime_s: 90 * 24 * 3600,
            raft: RaftConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Reads a TOML file; unknown keys are errors, missing keys take defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn advertise(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// Checks every field; the error lists all problems found.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if let Err(e) = validate_node_name(&self.name) {
            problems.push(format!("name: {e}"));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("listen: {:?} is not an IP:port address", self.listen));
        }
        if let Some(a) = &self.advertise {
            if !is_host_port(a) {
                problems.push(format!("advertise: {a:?} is not a host:port address"));
            }
        }
        if self.advertise.is_none()
            && self.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified())
        {
            problems.push(format!("advertise: required when listen ({}) is a wildcard address", self.listen));
        }
        if let Some(t) = &self.join_token {
            if let Err(e) = t.parse::<crate::auth::tokens::JoinToken>() {
                problems.push(format!("join_token: {e}"));
            }
        }
        if self.insecure {
            let loopback = |a: &str| {
                a.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
                    || a.rsplit_once(':').is_some_and(|(h, _)| h == "localhost")
            };
            if !loopback(&self.listen) || !loopback(self.advertise()) {
                problems.push(format!(
                    "insecure: plaintext without authentication is for one machine only; listen ({}) and advertise ({}) must be loopback addresses. Drop --insecure to use TLS",
                    self.listen,
                    self.advertise()
                ));
            }
        }
        if self.cert_lifetime_s < 30 {
            problems.push(format!("cert_lifetime_s: {} is too short (minimum 30)", self.cert_lifetime_s));
        }
        if let Some(j) = &self.join {
            if !is_host_port(j) {
                problems.push(format!("join: {j:?} is not a host:port address"));
            }
        }
        if self.cpus == Some(0) {
            problems.push("cpus: must be at least 1".into());
        }
        if self.memory_mib == Some(0) {
            problems.push("memory_mib: must be at least 1".into());
        }
        if self.write_timeout_ms < 100 {
            problems.push(format!("write_timeout_ms: {} is too short (minimum 100)", self.write_timeout_ms));
        }
        if !matches!(self.virt_type.as_str(), "kvm" | "qemu") {
            problems.push(format!("virt_type: {:?} must be kvm or qemu", self.virt_type));
        }
        if !self.libvirt_uri.contains(":///") && !self.libvirt_uri.contains("://") {
            problems.push(format!("libvirt_uri: {:?} is not a libvirt URI (e.g. qemu:///system)", self.libvirt_uri));
        }
        if self.resync_ms == 0 || self.resync_ms > 5_000 {
            problems.push(format!("resync_ms: {} must be between 1 and 5000", self.resync_ms));
        }
        if self.heartbeat_ms == 0 {
            problems.push("heartbeat_ms: must be at least 1".into());
        }
        // The safety argument: a host has finished fencing before the leader
        // may declare it down. Fencing starts when the lease runs out
        // (fence_after after the send time of the last acknowledged
        // heartbeat; the leader counts down_after from a receive time, which
        // is later) and takes at most the fencing budget, all guests at once;
        // one heartbeat more covers the fencing checks' own tick and clock-rate
        // differences between hosts.
        let budget = crate::guard::FENCE_BUDGET.as_millis() as u64;
        if self.down_after_ms < self.fence_after_ms + budget + self.heartbeat_ms {
            problems.push(format!(
                "down_after_ms: {} must be at least fence_after_ms ({}) + the fencing budget ({budget}) + heartbeat_ms ({}), or a host could be declared down before it has fenced itself",
                self.down_after_ms, self.fence_after_ms, self.heartbeat_ms
            ));
        }
        if self.fence_after_ms <= self.heartbeat_ms {
            problems.push(format!(
                "fence_after_ms: {} must exceed heartbeat_ms ({})",
                self.fence_after_ms, self.heartbeat_ms
            ));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            problems.push("raft.heartbeat_ms: must be at least 1".into());
        }
        if r.election_min_ms <= r.heartbeat_ms * 2 {
            problems.push(format!(
                "raft.election_min_ms: {} must exceed twice raft.heartbeat_ms ({})",
                r.election_min_ms, r.heartbeat_ms
            ));
        }
        if r.election_max_ms <= r.election_min_ms {
            problems.push(format!(
                "raft.election_max_ms: {} must exceed raft.election_min_ms ({})",
                r.election_max_ms, r.election_min_ms
            ));
        }
        if r.snapshot_every == 0 {
            problems.push("raft.snapshot_every: must be at least 1".into());
        }
        if r.snapshot_log_mib == 0 {
            problems.push("raft.snapshot_log_mib: must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }

    /// The openraft configuration derived from this one.
    pub fn openraft(&self) -> Result<openraft::Config> {
        let r = &self.raft;
        let cfg = openraft::Config {
            cluster_name: "kvmesh".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_min_ms,
            election_timeout_max: r.election_max_ms,
            // Snapshots go in one message; give big states time to arrive.
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every),
            max_in_snapshot_log_to_keep: r.keep_logs,
            // An entry can be a batch of up to 512 writes (~200 KiB), so a
            // catch-up message carries fewer entries than openraft's 300.
            max_payload_entries: 64,
            ..Default::default()
        };
        cfg.validate().map_err(|e| Error::Config(format!("raft: {e}")))
    }
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// Node names: 1–63 characters of letters, digits, '-', '_' and '.'.
pub fn validate_node_name(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 63 || !ok_chars {
        return Err(format!("{name:?} must be 1-63 characters of letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// VM names: 1–63 characters of `[a-z0-9-]`.
pub fn validate_vm_name(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() || name.len() > 63 || !ok_chars {
        return Err(format!("VM name {name:?} must be 1-63 characters of lowercase letters, digits and '-'"));
    }
    Ok(())
}

/// Names of storage domains and images: what `validate_vm_name` allows,
/// plus '.' and '_' (`debian-12.qcow2`), never a path.
pub fn validate_object_name(what: &str, name: &str) -> std::result::Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c));
    if name.is_empty() || name.len() > 63 || !ok_chars || name.starts_with('.') {
        return Err(format!(
            "{what} name {name:?} must be 1-63 characters of lowercase letters, digits, '-', '_' and '.', not starting with '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_never_paths() {
        assert!(validate_object_name("image", "debian-12.qcow2").is_ok());
        for bad in ["", "/etc/passwd", "../x", ".hidden", "Big", "a b"] {
            assert!(validate_object_name("image", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = ServeConfig { name: "node-1".into(), ..ServeConfig::default() };
        c.validate().unwrap();
        c.openraft().unwrap();
    }

    #[test]
    fn validate_lists_every_problem() {
        let c = ServeConfig {
            name: "bad name!".into(),
            listen: "nowhere".into(),
            join: Some("x".into()),
            cpus: Some(0),
            raft: RaftConfig { heartbeat_ms: 100, election_min_ms: 150, election_max_ms: 100, ..Default::default() },
            ..ServeConfig::default()
        };
        let Err(Error::Config(msg)) = c.validate() else { panic!("should fail") };
        for field in ["name:", "listen:", "join:", "cpus:", "raft.election_min_ms", "raft.election_max_ms"] {
            assert!(msg.contains(field), "{field} missing in {msg}");
        }
    }

    #[test]
    fn fencing_must_come_before_down() {
        let c = ServeConfig { name: "a".into(), down_after_ms: 7_999, ..ServeConfig::default() };
        let Err(Error::Config(msg)) = c.validate() else { panic!("7.999 s < 5 s + 2 s budget + 1 s must be refused") };
        assert!(msg.contains("down_after_ms") && msg.contains("fencing budget"), "{msg}");
        let c = ServeConfig { down_after_ms: 8_000, ..c };
        c.validate().unwrap();
    }

    #[test]
    fn wildcard_listen_needs_advertise() {
        let c = ServeConfig { name: "a".into(), listen: "0.0.0.0:7100".into(), ..ServeConfig::default() };
        assert!(c.validate().is_err());
        let c = ServeConfig { advertise: Some("10.0.0.1:7100".into()), ..c };
        c.validate().unwrap();
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: ServeConfig = toml::from_str("name = \"n1\"\n[raft]\nheartbeat_ms = 50\n").unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert_eq!(c.raft.election_min_ms, 150);
        assert!(toml::from_str::<ServeConfig>("nmae = \"typo\"").is_err());
    }

    #[test]
    fn vm_names() {
        assert!(validate_vm_name("web-1").is_ok());
        for bad in ["", "Web", "a_b", &"x".repeat(64)] {
            assert!(validate_vm_name(bad).is_err(), "{bad}");
        }
    }
}
