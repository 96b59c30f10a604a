//! The client's settings: the endpoint, the cluster CA to verify nodes
//! with, and the API token, from flags and environment over the client
//! config file that `cluster init` writes
//! (`~/.config/kvmesh/config.toml`, or `--client-config`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

const DEFAULT_ENDPOINT: &str = "127.0.0.1:7100";

/// The file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// One node's address, or several separated by commas, tried in order.
    pub endpoint: Option<String>,
    /// The cluster CA's certificate, PEM.
    pub ca_cert: Option<String>,
    pub token: Option<String>,
    /// A client certificate and its key, PEM (`kvmesh cert create`).
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// What one CLI run uses.
#[derive(Debug)]
pub struct Settings {
    /// Nodes to try, in order (`--endpoint a,b,c`).
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub ca_cert: Option<String>,
    /// A client certificate and key to present.
    pub identity: Option<(String, String)>,
    pub insecure: bool,
    /// Where the config was read from (or would be written).
    pub path: PathBuf,
}

pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("kvmesh").join("config.toml")
}

impl Settings {
    pub fn resolve(
        endpoint: Option<String>,
        token: Option<String>,
        path: Option<PathBuf>,
        insecure: bool,
    ) -> Result<Settings> {
        let explicit = path.is_some();
        let path = path.unwrap_or_else(default_path);
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<ClientConfig>(&text)
                .with_context(|| format!("client config {} is not valid", path.display()))?,
            // A missing file is fine until a credential is needed (`cluster
            // init` writes it), even one named explicitly.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientConfig::default(),
            Err(e) if explicit => return Err(anyhow!("cannot read client config {}: {e}", path.display())),
            Err(_) => ClientConfig::default(),
        };
        let endpoint = endpoint.or(file.endpoint).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoints: Vec<String> =
            endpoint.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() {
            return Err(anyhow!("no endpoint: give --endpoint HOST:PORT (several separated by commas)"));
        }
        Ok(Settings {
            endpoints,
            token: token.filter(|t| !t.is_empty()).or(file.token),
            ca_cert: file.ca_cert,
            identity: file.cert.zip(file.key),
            insecure,
            path,
        })
    }
}

impl Settings {
    /// The endpoint list as the config file and flags spell it.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Writes the client config after `cluster init` (0600: it holds the token).
pub fn save(path: &Path, config: &ClientConfig) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(config)?;
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
