//! Client subcommands: the connection plumbing they share and the dispatch to
//! one module per command group, each making one gRPC call per command and
//! printing it as a table or JSON.

use std::time::Duration;

use std::sync::Arc;

use anyhow::{anyhow, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{interceptor::InterceptedService, Interceptor};
use tonic::transport::Channel;
use tonic::Request;

use super::config::Settings;
use crate::tls::dial::Dialer;
use crate::tls::verify::{self, CaFromChain};

use super::{cluster, nodes, storage, vm, Command, Output};

/// Long enough for a write that waits out an election (10 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The channel every client command uses: TLS to the node, with the API
/// token on every request.
pub type Ch = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How long a connection (TCP and the TLS handshake) may take, apart from
/// the request deadline: a dead or silent endpoint is named in seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The endpoint this run talks to, for naming it in errors later.
static CONNECTED: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn connected() -> String {
    CONNECTED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Connects to the first endpoint of the settings that answers, in order.
/// `first_use` is for `cluster init` alone: it trusts the CA the new node
/// presents, and only the first endpoint is tried (init founds a cluster on
/// exactly the node named).
pub(super) async fn connect(settings: &Settings, first_use: Option<Arc<CaFromChain>>) -> Result<Ch> {
    let dialer = match (settings.insecure, &first_use, &settings.ca_cert) {
        (true, _, _) => Dialer::Plain,
        (false, Some(verifier), _) => Dialer::Tls(verify::client_config(verifier.clone())),
        (false, None, Some(ca)) => Dialer::Tls(verify::ca_client_config(ca, settings.identity.as_ref())?),
        (false, None, None) => {
            return Err(anyhow!(
                "no CA certificate for this cluster: the client config {} has none (or does not exist). `kvmesh cluster init` writes it for a new cluster; \
                 otherwise copy the client config from a machine that has it, or name one with --client-config \
                 (--insecure talks to a node started with `serve --insecure`)",
                settings.path.display()
            ))
        }
    };
    let endpoints = if first_use.is_some() { &settings.endpoints[..1] } else { &settings.endpoints[..] };
    let mut failures = Vec::new();
    let mut channel = None;
    for endpoint in endpoints {
        match dialer.connect(endpoint, CONNECT_TIMEOUT).await {
            // Plaintext has no handshake that proves a kvmesh node answers
            // (any TCP listener "connects"): a health check does.
            Ok(c) if settings.insecure => match answers_health(c.clone()).await {
                Ok(()) => {
                    *CONNECTED.lock().unwrap_or_else(|p| p.into_inner()) = endpoint.clone();
                    channel = Some(c);
                    break;
                }
                Err(why) => failures.push((endpoint.clone(), why)),
            },
            Ok(c) => {
                *CONNECTED.lock().unwrap_or_else(|p| p.into_inner()) = endpoint.clone();
                channel = Some(c);
                break;
            }
            Err(e) => failures.push((endpoint.clone(), root_cause(&e))),
        }
    }
    let Some(channel) = channel else { return Err(unreachable(settings, &failures)) };
    let token = match &settings.token {
        Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
            anyhow!("the API token has characters a header cannot carry; check --token or KVMESH_TOKEN")
        })?),
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(token)))
}

/// Whether a gRPC health check is answered within the connect timeout.
async fn answers_health(channel: tonic::transport::Channel) -> std::result::Result<(), String> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest { service: String::new() });
    match tokio::time::timeout(CONNECT_TIMEOUT, check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(format!("no kvmesh health answer: {}", s.message())),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// The error when no endpoint answered: each one with its cause, and a hint
/// for the last cause.
fn unreachable(settings: &Settings, failures: &[(String, String)]) -> anyhow::Error {
    let cause = failures.last().map(|(_, c)| c.as_str()).unwrap_or_default();
    let hint = if cause.contains("certificate") || cause.contains("CA") {
        format!(
            "the node's certificate does not check out against the CA in {}: is that the config of this cluster?",
            settings.path.display()
        )
    } else if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
        "it answered without TLS: is it a kvmesh node? A node started with `serve --insecure` needs --insecure here too"
            .to_string()
    } else if failures.len() > 1 {
        "Is `kvmesh serve` running on any of them? Set --endpoint or KVMESH_ENDPOINT".to_string()
    } else {
        "Is `kvmesh serve` running there? Set --endpoint or KVMESH_ENDPOINT (several, comma-separated, are tried in order)"
            .to_string()
    };
    let each: Vec<String> = failures.iter().map(|(e, c)| format!("{e} ({c})")).collect();
    anyhow!("cannot reach kvmesh at {}. {hint}", each.join(", "))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A request with the client's timeout set.
pub(super) fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(REQUEST_TIMEOUT);
    r
}

/// A gRPC error as the user should read it: the server's message alone,
/// or, for a connection that broke or a node that did not answer in time,
/// which endpoint that was.
pub(super) fn status_err(s: tonic::Status) -> anyhow::Error {
    let endpoint = connected();
    let message = s.message();
    if s.code() == tonic::Code::Cancelled && message.contains("Timeout expired") {
        return anyhow!(
            "kvmesh at {endpoint} did not answer within {} s; it may be overloaded or cut off from its cluster (`kvmesh cluster status` on another node says more)",
            REQUEST_TIMEOUT.as_secs()
        );
    }
    // A status the client's own transport made (it carries the hyper or h2
    // error as its source), or CANCELLED, which nodes never answer: on the
    // client it is a connection the other end dropped mid-call. A node's
    // own refusals, whatever their words, pass through as they are.
    let broken = std::error::Error::source(&s).is_some() || s.code() == tonic::Code::Cancelled;
    if broken {
        return anyhow!(
            "the connection to kvmesh at {endpoint} failed: {message}. If the node stopped, start it again or name another with --endpoint; \
             is it a kvmesh node? (a node started without --insecure speaks only TLS)"
        );
    }
    if s.code() == tonic::Code::FailedPrecondition && message.starts_with(kvmesh_proto::NOT_INITIALIZED) {
        let why = message[kvmesh_proto::NOT_INITIALIZED.len()..].trim_start_matches(':').trim();
        return anyhow!("kvmesh at {endpoint}: {why}");
    }
    // Nothing can take it (no node fits, N+1 with --strict): exit 3.
    if let Some(why) = message.strip_prefix(kvmesh_proto::NOT_PLACEABLE) {
        return super::CheckFailed(why.trim_start_matches(':').trim().to_string()).into();
    }
    anyhow!("{message}")
}

pub async fn run(settings: Settings, output: Output, wide: bool, command: Command) -> Result<()> {
    if let Command::Cluster(super::ClusterCmd::Init { max_voters, force }) = command {
        return cluster::init(&settings, output, max_voters, force).await;
    }
    // Following events may move between endpoints: it connects itself.
    if let Command::Events { follow, vm, node, since, limit } = command {
        let filter = super::events::Filter { vm, node, since_ms: since, limit };
        return super::events::run(&settings, output, filter, follow).await;
    }
    let channel = connect(&settings, None).await?;
    match command {
        Command::Serve(_) | Command::Guard(_) => unreachable!("serve and guard are handled by the caller"),
        Command::Cluster(c) => cluster::run(channel, output, c).await,
        Command::Node(c) => nodes::run(channel, output, wide, c).await,
        Command::Vm(c) => vm::run(channel, output, wide, c).await,
        Command::Storage(c) => storage::storage(channel, output, c).await,
        Command::Image(c) => storage::image(channel, output, c).await,
        Command::Network(c) => super::networks::network(channel, output, c).await,
        Command::Events { .. } => unreachable!("events connect on their own"),
        Command::Token(c) => super::security::tokens(channel, output, c).await,
        Command::Cert(c) => super::security::certs(channel, &settings, output, c).await,
    }
}
