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

/// Connects to the node at the settings' endpoint. `first_use` is for
/// `cluster init` alone: it trusts the CA the new node presents.
pub(super) async fn connect(settings: &Settings, first_use: Option<Arc<CaFromChain>>) -> Result<Ch> {
    let endpoint = &settings.endpoint;
    let dialer = match (settings.insecure, first_use, &settings.ca_cert) {
        (true, _, _) => Dialer::Plain,
        (false, Some(verifier), _) => Dialer::Tls(verify::client_config(verifier)),
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
    let channel = dialer.connect(endpoint, Duration::from_secs(3)).await.map_err(|e| {
        let cause = root_cause(&e);
        let hint = if cause.contains("certificate") || cause.contains("CA") {
            format!(
                "the node's certificate does not check out against the CA in {}: is that the config of this cluster?",
                settings.path.display()
            )
        } else if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
            "the node speaks plaintext: was it started with --insecure? Then pass --insecure too".to_string()
        } else {
            "Is `kvmesh serve` running there? Set --endpoint or KVMESH_ENDPOINT".to_string()
        };
        anyhow!("cannot reach kvmesh at {endpoint} ({cause}). {hint}")
    })?;
    let token = match &settings.token {
        Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
            anyhow!("the API token has characters a header cannot carry; check --token or KVMESH_TOKEN")
        })?),
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(token)))
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

/// A gRPC error as the user should read it: the server's message alone.
pub(super) fn status_err(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable && s.message().contains("transport") {
        return anyhow!(
            "the connection to the node failed: {}. If it stopped, start it again; a node started without --insecure speaks only TLS",
            s.message()
        );
    }
    anyhow!("{}", s.message())
}

pub async fn run(settings: Settings, output: Output, command: Command) -> Result<()> {
    if let Command::Cluster(super::ClusterCmd::Init { max_voters, force }) = command {
        return cluster::init(&settings, output, max_voters, force).await;
    }
    let channel = connect(&settings, None).await?;
    match command {
        Command::Serve(_) | Command::Guard(_) => unreachable!("serve and guard are handled by the caller"),
        Command::Cluster(c) => cluster::run(channel, output, c).await,
        Command::Node(c) => nodes::run(channel, output, c).await,
        Command::Vm(c) => vm::run(channel, output, c).await,
        Command::Storage(c) => storage::storage(channel, output, c).await,
        Command::Image(c) => storage::image(channel, output, c).await,
        Command::Events { follow } => cluster::events(channel, output, follow).await,
        Command::Token(c) => super::security::tokens(channel, output, c).await,
        Command::Cert(c) => super::security::certs(channel, &settings, output, c).await,
    }
}
