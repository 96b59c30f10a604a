//! Multi-process test harness for kvmesh.
//!
//! Each [`Cluster`] runs real `kvmesh serve` processes on free loopback ports,
//! every node with its own data dir and log file under one temp dir. Tests
//! drive it through the real CLI (`kvmesh -o json …`), as an operator would.
//! If a test panics, the temp dir is kept and its path printed, so the node
//! logs can be read.
//!
//! The binary is `$KVMESH_BIN`, or `target/debug/kvmesh` of this workspace.

pub mod rest;
pub mod testbed;
pub mod ws;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Path of the kvmesh binary under test.
pub fn kvmesh_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KVMESH_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kvmesh");
    assert!(p.exists(), "{} is missing: run `cargo build -p kvmesh` first, or set KVMESH_BIN", p.display());
    p
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Whether something listens at `addr`. A loopback connect to a port in the
/// ephemeral range can meet itself (TCP simultaneous open: the kernel picks
/// the same port as the source), which looks like a listener that is not
/// there; such a connection does not count.
pub fn listening(addr: &str) -> bool {
    match std::net::TcpStream::connect(addr) {
        Ok(stream) => stream.local_addr().ok() != stream.peer_addr().ok(),
        Err(_) => false,
    }
}

/// Which client config (cluster CA and admin token, written by `cluster
/// init`) serves which node address: every CLI call of the harness uses the
/// config of the cluster its endpoint belongs to, so tests that run several
/// clusters side by side each talk to their own with TLS and a token.
static CLIENT_CONFIGS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Node addresses that speak plaintext (`serve --insecure`): the CLI gets
/// `--insecure` for them.
static INSECURE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records that `address` belongs to the cluster whose client config is `config`.
pub fn register_client_config(address: &str, config: &Path) {
    let mut all = CLIENT_CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(a, _)| a != address);
    all.push((address.to_string(), config.to_path_buf()));
}

/// The client config of the cluster `address` belongs to.
pub fn client_config_for(address: &str) -> Option<PathBuf> {
    let all = CLIENT_CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    all.iter().rev().find(|(a, _)| a == address).map(|(_, p)| p.clone())
}

thread_local! {
    /// Set when a harness call fails, so the cluster keeps its files even
    /// when the test returns the error instead of panicking.
    static FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn failed(e: anyhow::Error) -> anyhow::Error {
    FAILED.with(|f| f.set(true));
    e
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(failed(anyhow!("timed out after {timeout:?} waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait_for`] for async checks.
pub async fn wait_async_ok<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(failed(anyhow!("timed out after {timeout:?}")));
        }
        // Fine-grained, so the benchmarks can time with it.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One node process and its files.
pub struct NodeProc {
    pub name: String,
    pub address: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    /// The client config (CA, admin token) of the cluster it belongs to.
    pub client_config: PathBuf,
    /// Member to join; used on the first start only, as an operator would.
    join: Option<String>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (STOP, CONT, …) to the node process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status();
        }
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child.as_mut().ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let status = wait_for(&format!("{} to exit", self.name), timeout, || child.try_wait().ok().flatten())?;
        self.child = None;
        Ok(status.code())
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    /// Lines appended to every node's config file (`[raft]` tuning, say).
    pub config_toml: String,
    /// The hypervisor every node uses; libvirt's embedded test driver unless
    /// a test needs real guests.
    pub libvirt_uri: String,
    /// Extra environment for every node process.
    pub env: Vec<(String, String)>,
    /// Nodes run `serve --insecure` (plaintext, no authentication): only
    /// for the benchmark's TLS-versus-plaintext rows.
    pub insecure: bool,
}

impl Cluster {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("kvmesh-test-").tempdir().expect("temp dir");
        Cluster {
            dir,
            nodes: Vec::new(),
            config_toml: String::new(),
            libvirt_uri: "test:///default".into(),
            env: Vec::new(),
            insecure: false,
        }
    }

    /// Starts a node; `join` is the address of a member to join, if any.
    pub fn spawn(&mut self, name: &str, join: Option<&str>, extra: &[&str]) -> Result<usize> {
        let address = format!("127.0.0.1:{}", free_port());
        // A fresh dir per spawn, even for a reused name.
        let slot = self.nodes.len();
        let data_dir = self.dir.path().join(format!("{name}-{slot}"));
        let log = self.dir.path().join(format!("{name}-{slot}.log"));
        let extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let join = join.map(str::to_string);
        // A joining node belongs to its target's cluster; a first node
        // founds one of its own, with its own client config.
        let config = match &join {
            Some(target) => client_config_for(target),
            None => None,
        };
        let config = config.unwrap_or_else(|| self.dir.path().join(format!("client-{name}-{slot}.toml")));
        let mut node = NodeProc {
            name: name.into(),
            address,
            data_dir,
            log,
            extra_args,
            client_config: config,
            join,
            child: None,
        };
        self.start(&mut node)?;
        node.join = None;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn start(&self, node: &mut NodeProc) -> Result<()> {
        // Also after a test moved it to another address.
        register_client_config(&node.address, &node.client_config);
        let config = node.data_dir.with_extension("toml");
        std::fs::write(&config, &self.config_toml)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        // Plenty of room by default; a test may give its own.
        let has = |flag: &str| node.extra_args.iter().any(|a| a == flag);
        let mut sizes = Vec::new();
        if !has("--cpus") {
            sizes.extend(["--cpus", "1000"]);
        }
        if !has("--memory-mib") {
            sizes.extend(["--memory-mib", "16384"]);
        }
        // A joining node needs a join token, made by a member as an
        // operator would (`cluster token create`).
        let mut join_args = Vec::new();
        if self.insecure {
            join_args.push("--insecure".to_string());
            INSECURE.lock().unwrap_or_else(|p| p.into_inner()).push(node.address.clone());
        }
        if let Some(target) = &node.join {
            join_args.extend(["--join".to_string(), target.clone()]);
            if !self.insecure && !node.extra_args.iter().any(|a| a == "--join-token") {
                let made = run_cli(target, &["cluster", "token", "create", "--name", &node.name]).json();
                match made.as_ref().ok().and_then(|v| v["token"].as_str()) {
                    Some(token) => join_args.extend(["--join-token".to_string(), token.to_string()]),
                    // The member may be down on purpose: start the node
                    // without a token and let it say what it lacks.
                    None => eprintln!("no join token from {target} for {}: {:?}", node.name, made.err()),
                }
            }
        }
        let child = Command::new(kvmesh_bin())
            .args(["serve", "--name", &node.name, "--listen", &node.address])
            .args(&sizes)
            .args(["--libvirt-uri", &self.libvirt_uri])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--config")
            .arg(&config)
            .args(&node.extra_args)
            .args(&join_args)
            .env("KVMESH_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawn kvmesh serve")?;
        node.child = Some(child);
        // Ready when the gRPC port answers (or when the process gave up).
        let addr = node.address.clone();
        // Polled every 10 ms (a connect is cheap), so start-up can be timed.
        let start = Instant::now();
        while node.is_running() && !listening(&addr) {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(failed(anyhow!("timed out after 20 s waiting for {} to listen", node.name)));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Restarts a stopped node with its data dir (and without `--join`).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.nodes[i].kill();
        let mut node = self.nodes.remove(i);
        let result = self.start(&mut node);
        self.nodes.insert(i, node);
        result
    }

    /// Starts node `i` again from its data dir as `name`, joining `join`
    /// (an operator retrying a refused join).
    pub fn retry_join(&mut self, i: usize, name: &str, join: &str) -> Result<()> {
        self.nodes[i].kill();
        let mut node = self.nodes.remove(i);
        node.name = name.to_string();
        node.join = Some(join.to_string());
        let result = self.start(&mut node);
        node.join = None;
        self.nodes.insert(i, node);
        result
    }

    /// A three-node cluster: node 0 bootstrapped, 1 and 2 joined.
    pub fn three() -> Result<Self> {
        Self::three_of(Cluster::new(), &[])
    }

    /// [`Cluster::three`] with more `serve` arguments for every node.
    pub fn three_with(extra: &[&str]) -> Result<Self> {
        Self::three_of(Cluster::new(), extra)
    }

    /// [`Cluster::three`] with plaintext and no authentication.
    pub fn three_insecure() -> Result<Self> {
        let mut c = Cluster::new();
        c.insecure = true;
        Self::three_of(c, &[])
    }

    fn three_of(mut c: Cluster, extra: &[&str]) -> Result<Self> {
        c.spawn("n1", None, extra)?;
        c.cli_ok(0, &["cluster", "init"])?;
        let first = c.nodes[0].address.clone();
        c.spawn("n2", Some(&first), extra)?;
        c.spawn("n3", Some(&first), extra)?;
        c.wait_members(0, 3, 3)?;
        // Disks go only where their storage is reported active.
        wait_storage_active(&first, "local", 3)?;
        Ok(c)
    }

    pub fn addr(&self, i: usize) -> String {
        self.nodes[i].address.clone()
    }

    /// Runs the CLI against node `i` with `-o json`.
    pub fn cli(&self, i: usize, args: &[&str]) -> CliResult {
        run_cli(&self.nodes[i].address, args)
    }

    /// Runs the CLI against node `i` with its default table output.
    pub fn cli_table(&self, i: usize, args: &[&str]) -> CliResult {
        run_cli_as(&self.nodes[i].address, "table", args)
    }

    /// Runs the CLI and parses its JSON output, failing on a non-zero exit.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> Result<Value> {
        let r = self.cli(i, args);
        if !r.success {
            return Err(failed(anyhow!(
                "kvmesh {} on {} failed: {}",
                args.join(" "),
                self.nodes[i].name,
                r.stderr.trim()
            )));
        }
        r.json().map_err(failed)
    }

    pub fn status(&self, i: usize) -> Result<Value> {
        self.cli_ok(i, &["cluster", "status"])
    }

    /// [`Cluster::leader`] for callers that only hold `&self`: every node
    /// is assumed alive.
    pub fn leader_index_no_mut(&self) -> Result<usize> {
        wait_for("a leader", Duration::from_secs(20), || {
            let s = self.status(0).ok()?;
            let addr = s["leader"]["address"].as_str()?.to_string();
            self.nodes.iter().position(|n| n.address == addr)
        })
    }

    /// Index of the node that is currently leader, as seen by a live node.
    pub fn leader(&mut self) -> Result<usize> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].is_running()).collect();
        let nodes = &self.nodes;
        wait_for("a leader", Duration::from_secs(20), || {
            for &i in &running {
                let Ok(s) = run_cli(&nodes[i].address, &["cluster", "status"]).json() else {
                    continue;
                };
                let Some(addr) = s["leader"]["address"].as_str() else {
                    continue;
                };
                if let Some(j) = nodes.iter().position(|n| n.address == addr) {
                    if running.contains(&j) {
                        return Some(j);
                    }
                }
            }
            None
        })
    }

    /// Waits until node `i` sees `voters` voters and `total` members, all caught up.
    pub fn wait_members(&self, i: usize, voters: usize, total: usize) -> Result<Value> {
        wait_for(&format!("{voters} voters / {total} members"), Duration::from_secs(60), || {
            let s = self.status(i).ok()?;
            let members = s["members"].as_array()?;
            let v = members.iter().filter(|m| m["role"] == "voter").count();
            (v == voters && members.len() == total && !s["leader"].is_null()).then_some(s)
        })
    }

    pub fn vm_names(&self, i: usize) -> Result<Vec<String>> {
        let v = self.cli_ok(i, &["vm", "list"])?;
        Ok(v.as_array()
            .ok_or_else(|| anyhow!("vm list is not an array"))?
            .iter()
            .filter_map(|vm| vm["name"].as_str().map(str::to_string))
            .collect())
    }

    /// Fetches one VM as JSON from node `i`.
    pub fn vm(&self, i: usize, name: &str) -> Result<Value> {
        self.cli_ok(i, &["vm", "get", name])
    }

    /// Waits until node `i` reports `state` for a VM.
    pub fn wait_vm_state(&self, i: usize, name: &str, state: &str, timeout: Duration) -> Result<Value> {
        wait_for(&format!("{name} to be {state}"), timeout, || {
            let vm = self.vm(i, name).ok()?;
            (vm["state"] == state).then_some(vm)
        })
    }

    /// Adds a shared-dir storage domain at `path` (created) and waits until
    /// every node of the harness reports it active.
    pub fn add_shared_storage(&self, i: usize, name: &str, path: &std::path::Path) -> Result<Value> {
        std::fs::create_dir_all(path)?;
        self.cli_ok(i, &["storage", "add", name, "--kind", "shared-dir", "--path", &path.to_string_lossy()])?;
        wait_storage_active(&self.nodes[i].address, name, self.nodes.len())
    }

    /// Imports a file as an image through node `i`.
    pub fn import(&self, i: usize, name: &str, file: &std::path::Path, storage: &str, kind: &str) -> Result<Value> {
        let file = file.to_string_lossy();
        self.cli_ok(i, &["image", "import", name, &file, "--storage", storage, "--kind", kind])
    }

    /// The node's id, from its identity file.
    pub fn node_id(&self, i: usize) -> Result<u64> {
        let text = std::fs::read_to_string(self.nodes[i].data_dir.join("kvmesh-node.json"))?;
        let v: Value = serde_json::from_str(&text)?;
        v["node_id"].as_u64().ok_or_else(|| anyhow!("no node_id in identity"))
    }

    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() || FAILED.with(|f| f.get()) {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!("test failed: node data dirs and logs kept in {}", kept.display());
        }
    }
}

pub struct CliResult {
    pub success: bool,
    /// The exit code (`None`: killed by a signal, or timed out).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliResult {
    pub fn json(&self) -> Result<Value> {
        if !self.success {
            bail!("command failed: {}", self.stderr.trim());
        }
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {:?}", self.stdout))
    }
}

/// Runs `kvmesh --endpoint ADDR -o json ARGS…` with a 60 s bound.
/// Waits until `hosts` hosts report storage `name` active; its JSON.
pub fn wait_storage_active(endpoint: &str, name: &str, hosts: usize) -> Result<Value> {
    wait_for(&format!("storage {name} active on {hosts} hosts"), Duration::from_secs(30), || {
        let d = run_cli(endpoint, &["storage", "get", name]).json().ok()?;
        let active = d["hosts"].as_array()?.iter().filter(|h| h["state"] == "active").count();
        (active == hosts).then_some(d)
    })
}

pub fn run_cli(endpoint: &str, args: &[&str]) -> CliResult {
    run_cli_as(endpoint, "json", args)
}

/// `kvmesh --endpoint ADDR` with the credentials of ADDR's cluster, for a
/// test that runs the CLI itself (with its own stdin, or in the background).
pub fn cli_command(endpoint: &str) -> Command {
    let mut command = Command::new(kvmesh_bin());
    if let Some(config) = client_config_for(endpoint) {
        command.env("KVMESH_CLIENT_CONFIG", config);
    }
    if INSECURE.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|a| a == endpoint) {
        command.arg("--insecure");
    }
    command.args(["--endpoint", endpoint]);
    command
}

/// Runs `kvmesh --endpoint ADDR -o FORMAT ARGS…` with a 60 s bound.
pub fn run_cli_as(endpoint: &str, format: &str, args: &[&str]) -> CliResult {
    let mut command = cli_command(endpoint);
    let child = command
        .args(["-o", format])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn kvmesh cli");
    let pid = child.id();
    // Read the output while waiting: a full pipe would block the CLI.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("cli output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            return CliResult {
                success: false,
                code: None,
                stdout: String::new(),
                stderr: format!("kvmesh {} did not finish within 60 s", args.join(" ")),
            };
        }
    };
    CliResult {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A gRPC channel with the API token on every request.
pub type TokenChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Puts `authorization: Bearer <token>` on each request.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// A TLS client configuration trusting `ca_pem` (the cluster CA), with
/// ring as the nodes use, offering `alpn` (`h2`, or `http/1.1` as browsers
/// open WebSockets).
pub fn tls_client_config(ca_pem: &str, alpn: &[u8]) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut pem = ca_pem.as_bytes();
    for cert in rustls::pki_types::pem::PemObject::pem_reader_iter(&mut pem) {
        roots.add(cert.context("the CA")?)?;
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// The CA certificate and token of the client config serving `address`.
pub fn client_credentials(address: &str) -> Result<(String, String)> {
    let path = client_config_for(address).ok_or_else(|| anyhow!("no client config is registered for {address}"))?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let config: toml::Table = text.parse().with_context(|| format!("parse {}", path.display()))?;
    let field = |k: &str| config.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Ok((
        field("ca_cert").ok_or_else(|| anyhow!("no ca_cert in {}", path.display()))?,
        field("token").ok_or_else(|| anyhow!("no token in {}", path.display()))?,
    ))
}

async fn tls_channel(
    address: &str,
    ca: &str,
    identity: Option<tonic::transport::Identity>,
) -> Result<tonic::transport::Channel> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("kvmesh-node");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Channel::from_shared(format!("https://{address}"))?.tls_config(tls)?.connect().await?)
}

/// A TLS channel to the node at `address` as the cluster's admin (the
/// token `cluster init` wrote), like any gRPC client of the API.
pub async fn api_channel(address: &str) -> Result<TokenChannel> {
    let (ca, token) = client_credentials(address)?;
    let channel = tls_channel(address, &ca, None).await?;
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    Ok(tonic::service::interceptor::InterceptedService::new(channel, bearer))
}

/// A TLS channel to the node at `address` that presents the certificate of
/// the node whose data dir is `as_node`: for tests that play a node.
pub async fn node_channel(address: &str, as_node: &Path) -> Result<tonic::transport::Channel> {
    let tls = as_node.join("tls");
    let read =
        |f: &str| std::fs::read_to_string(tls.join(f)).with_context(|| format!("read {f} of {}", as_node.display()));
    let identity = tonic::transport::Identity::from_pem(read("node.crt")?, read("node.key")?);
    tls_channel(address, &read("ca.crt")?, Some(identity)).await
}

/// A plaintext channel to a `serve --insecure` node, typed like
/// [`api_channel`]'s (the token it sends is ignored there).
pub async fn plain_channel(address: &str) -> Result<TokenChannel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))?.connect().await?;
    Ok(tonic::service::interceptor::InterceptedService::new(channel, Bearer("Bearer none".parse()?)))
}
