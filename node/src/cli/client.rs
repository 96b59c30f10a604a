//! Client subcommands: the connection plumbing they share and the dispatch to
//! one module per command group, each making one gRPC call per command and
//! printing it as a table or JSON.

use std::time::Duration;

use anyhow::{anyhow, Result};
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use super::{cluster, nodes, storage, vm, Command, Output};

/// Long enough for a write that waits out an election (10 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(endpoint: &str) -> Result<Channel> {
    let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let ep = Endpoint::from_shared(uri).map_err(|e| anyhow!("invalid --endpoint {endpoint:?}: {e}"))?;
    ep.connect_timeout(Duration::from_secs(3)).connect().await.map_err(|e| {
        anyhow!(
            "cannot reach kvmesh at {endpoint} ({}). Is `kvmesh serve` running there? Set --endpoint or KVMESH_ENDPOINT",
            root_cause(&e)
        )
    })
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
        return anyhow!("the node stopped answering: {}", s.message());
    }
    anyhow!("{}", s.message())
}

pub async fn run(endpoint: &str, output: Output, command: Command) -> Result<()> {
    let channel = connect(endpoint).await?;
    match command {
        Command::Serve(_) | Command::Guard(_) => unreachable!("serve and guard are handled by the caller"),
        Command::Cluster(c) => cluster::run(channel, output, c).await,
        Command::Node(c) => nodes::run(channel, output, c).await,
        Command::Vm(c) => vm::run(channel, output, c).await,
        Command::Storage(c) => storage::storage(channel, output, c).await,
        Command::Image(c) => storage::image(channel, output, c).await,
        Command::Events { follow } => cluster::events(channel, output, follow).await,
    }
}
