//! Client subcommands: one gRPC call each, printed as a table or JSON.

use std::time::Duration;

use anyhow::{anyhow, Result};
use kvmesh_proto as pb;
use pb::cluster_client::ClusterClient;
use pb::vms_client::VmsClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use super::output::{print_events, print_nodes, print_status, print_vm, print_vms, vm_json};
use super::{ClusterCmd, Command, NodeCmd, Output, VmCmd};

/// Long enough for a write that waits out an election (10 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(endpoint: &str) -> Result<Channel> {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let ep =
        Endpoint::from_shared(uri).map_err(|e| anyhow!("invalid --endpoint {endpoint:?}: {e}"))?;
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

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(REQUEST_TIMEOUT);
    r
}

/// A gRPC error as the user should read it: the server's message alone.
fn status_err(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable && s.message().contains("transport") {
        return anyhow!("the node stopped answering: {}", s.message());
    }
    anyhow!("{}", s.message())
}

pub async fn run(endpoint: &str, output: Output, command: Command) -> Result<()> {
    let channel = connect(endpoint).await?;
    let mut cluster = ClusterClient::new(channel.clone());
    let mut vms = VmsClient::new(channel);
    match command {
        Command::Serve(_) => unreachable!("serve is handled by the caller"),
        Command::Cluster(ClusterCmd::Init { max_voters }) => {
            let r = cluster
                .init(req(pb::InitRequest { max_voters }))
                .await
                .map_err(status_err)?
                .into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"cluster_id": r.cluster_id, "node_id": r.node_id, "node_name": r.node_name})
                ),
                Output::Table => println!(
                    "initialized cluster {} on node {}",
                    r.cluster_id, r.node_name
                ),
            }
        }
        Command::Cluster(ClusterCmd::Status) => {
            let s = cluster
                .status(req(pb::StatusRequest {}))
                .await
                .map_err(status_err)?
                .into_inner();
            print_status(output, &s);
        }
        Command::Cluster(ClusterCmd::Remove { name, force }) => {
            cluster
                .remove(req(pb::RemoveRequest {
                    name: name.clone(),
                    force,
                }))
                .await
                .map_err(status_err)?;
            match output {
                Output::Json => println!("{}", json!({"removed": name})),
                Output::Table => println!("removed node {name}"),
            }
        }
        Command::Node(NodeCmd::List { consistent }) => {
            let r = cluster
                .list_nodes(req(pb::ListNodesRequest { consistent }))
                .await
                .map_err(status_err)?;
            print_nodes(output, &r.into_inner().nodes);
        }
        Command::Vm(VmCmd::Create {
            name,
            vcpus,
            memory,
            ha,
        }) => {
            let request_id = format!("{:032x}", rand::random::<u128>());
            let create = pb::CreateVmRequest {
                name,
                vcpus,
                memory_mib: memory,
                ha,
                request_id,
            };
            let vm = vms
                .create(req(create))
                .await
                .map_err(status_err)?
                .into_inner();
            match output {
                Output::Json => println!("{}", vm_json(&vm)),
                Output::Table => println!(
                    "created VM {} ({}) on {}",
                    vm.name,
                    vm.id,
                    vm.node.as_deref().unwrap_or("no node")
                ),
            }
        }
        Command::Vm(VmCmd::List { consistent }) => {
            let r = vms
                .list(req(pb::ListVmsRequest { consistent }))
                .await
                .map_err(status_err)?;
            print_vms(output, &r.into_inner().vms);
        }
        Command::Vm(VmCmd::Get { name, consistent }) => {
            let vm = vms
                .get(req(pb::GetVmRequest { name, consistent }))
                .await
                .map_err(status_err)?
                .into_inner();
            print_vm(output, &vm);
        }
        Command::Vm(VmCmd::Delete { name }) => {
            vms.delete(req(pb::DeleteVmRequest { name: name.clone() }))
                .await
                .map_err(status_err)?;
            match output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted VM {name}"),
            }
        }
        Command::Events { follow } => {
            let mut after = 0;
            loop {
                let r = cluster
                    .list_events(req(pb::ListEventsRequest { after }))
                    .await
                    .map_err(status_err)?;
                let events = r.into_inner().events;
                if let Some(last) = events.last() {
                    after = last.seq;
                }
                print_events(output, &events);
                if !follow {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}
