//! `kvmesh node …`: listing and showing the cluster's hosts, changing their
//! capacity and labels, draining one into maintenance and bringing it back.

use super::client::Ch;
use anyhow::Result;
use kvmesh_proto as pb;
use pb::cluster_client::ClusterClient;
use serde_json::json;

use super::client::{req, status_err};
use super::output::{node_state, print_node, print_nodes};
use super::{NodeCmd, Output};

pub async fn run(channel: Ch, output: Output, wide: bool, command: NodeCmd) -> Result<()> {
    let mut cluster = ClusterClient::new(channel);
    match command {
        NodeCmd::List { consistent } => {
            let r = cluster.list_nodes(req(pb::ListNodesRequest { consistent })).await.map_err(status_err)?;
            print_nodes(output, wide, &r.into_inner().nodes);
        }
        NodeCmd::Drain { name, cold, wait } => {
            let r = cluster.drain(req(pb::NodeActionRequest { name: name.clone(), cold })).await.map_err(status_err)?;
            let mut state = node_state(r.into_inner().state).to_string();
            if wait.wait {
                let timeout = std::time::Duration::from_secs(wait.timeout);
                state = node_state(super::wait::node(&mut cluster, output, &name, "maintenance", timeout).await?.state)
                    .to_string();
            }
            match output {
                Output::Json => outln!("{}", json!({"node": name, "state": state})),
                Output::Table if wait.wait => outln!("{name} is in maintenance: no VMs left on it"),
                Output::Table => outln!(
                    "draining {name}: its VMs move to other nodes (running ones live unless --cold); --wait waits until it is in maintenance, `kvmesh events --node {name}` says which VM went where and why"
                ),
            }
        }
        NodeCmd::Get { name, consistent } => {
            let n = cluster.get_node(req(pb::GetNodeRequest { name, consistent })).await.map_err(status_err)?;
            print_node(output, &n.into_inner());
        }
        NodeCmd::Set { name, cpus, memory_mib, labels, unlabel } => {
            if cpus.is_none() && memory_mib.is_none() && labels.is_empty() && unlabel.is_empty() {
                anyhow::bail!("nothing to change: give --cpus, --memory-mib, --label or --unlabel");
            }
            let r = pb::SetNodeRequest { name, cpus, memory_mib, labels: labels.into_iter().collect(), unlabel };
            let n = cluster.set_node(req(r)).await.map_err(status_err)?;
            print_node(output, &n.into_inner());
        }
        NodeCmd::Activate { name } => {
            let r = cluster
                .activate(req(pb::NodeActionRequest { name: name.clone(), cold: false }))
                .await
                .map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"node": name, "state": node_state(r.into_inner().state)})),
                Output::Table => outln!("{name} is {}", node_state(r.into_inner().state)),
            }
        }
    }
    Ok(())
}
