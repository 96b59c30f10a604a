//! Client subcommands: one gRPC call each, printed as a table or JSON.

use std::time::Duration;

use anyhow::{anyhow, Result};
use kvmesh_proto as pb;
use pb::cluster_client::ClusterClient;
use pb::vms_client::VmsClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use super::output::{
    print_capacity, print_events, print_explanation, print_nodes, print_policy, print_status, print_vm, print_vms,
    vm_json,
};
use super::{ClusterCmd, Command, NodeCmd, Output, PolicyCmd, VmCmd};

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
            let r = cluster.init(req(pb::InitRequest { max_voters })).await.map_err(status_err)?.into_inner();
            match output {
                Output::Json => {
                    println!("{}", json!({"cluster_id": r.cluster_id, "node_id": r.node_id, "node_name": r.node_name}))
                }
                Output::Table => println!("initialized cluster {} on node {}", r.cluster_id, r.node_name),
            }
        }
        Command::Cluster(ClusterCmd::Status) => {
            let s = cluster.status(req(pb::StatusRequest {})).await.map_err(status_err)?.into_inner();
            print_status(output, &s);
        }
        Command::Cluster(ClusterCmd::Remove { name, force }) => {
            cluster.remove(req(pb::RemoveRequest { name: name.clone(), force })).await.map_err(status_err)?;
            match output {
                Output::Json => println!("{}", json!({"removed": name})),
                Output::Table => println!("removed node {name}"),
            }
        }
        Command::Node(NodeCmd::List { consistent }) => {
            let r = cluster.list_nodes(req(pb::ListNodesRequest { consistent })).await.map_err(status_err)?;
            print_nodes(output, &r.into_inner().nodes);
        }
        Command::Vm(VmCmd::Create {
            name,
            vcpus,
            memory,
            ha,
            disk,
            image,
            kernel,
            initrd,
            cmdline,
            network,
            bridge,
            priority,
            pin,
            node_labels,
            prefer_labels,
            anti_affinity,
            soft_anti_affinity,
            affinity,
            dry_run,
            wait,
            timeout,
        }) => {
            let request_id = format!("{:032x}", rand::random::<u128>());
            let create = pb::CreateVmRequest {
                name,
                vcpus,
                memory_mib: memory,
                ha,
                request_id,
                disk_bytes: disk.unwrap_or(0),
                image,
                kernel,
                initrd,
                cmdline,
                network,
                bridge,
                priority,
                pin,
                required_labels: node_labels.into_iter().collect(),
                preferred_labels: prefer_labels.into_iter().collect(),
                anti_affinity,
                soft_anti_affinity,
                affinity,
            };
            if dry_run {
                let explain = pb::ExplainRequest { name: create.name.clone(), spec: Some(create) };
                let e = vms.explain(req(explain)).await.map_err(status_err)?.into_inner();
                print_explanation(output, &e);
                return Ok(());
            }
            let mut vm = vms.create(req(create)).await.map_err(status_err)?.into_inner();
            if wait {
                vm = wait_running(&mut vms, output, vm, Duration::from_secs(timeout)).await?;
            }
            match output {
                Output::Json => println!("{}", vm_json(&vm)),
                Output::Table => {
                    println!("created VM {} ({}) on {}", vm.name, vm.id, vm.node.as_deref().unwrap_or("no node"))
                }
            }
        }
        Command::Vm(VmCmd::List { consistent }) => {
            let r = vms.list(req(pb::ListVmsRequest { consistent })).await.map_err(status_err)?;
            print_vms(output, &r.into_inner().vms);
        }
        Command::Vm(VmCmd::Get { name, consistent }) => {
            let vm = vms.get(req(pb::GetVmRequest { name, consistent })).await.map_err(status_err)?.into_inner();
            print_vm(output, &vm);
        }
        Command::Vm(VmCmd::Start { name }) => {
            let vm = vms.start(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        Command::Vm(VmCmd::Stop { name, force }) => {
            let vm = vms.stop(req(pb::VmActionRequest { name, force })).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        Command::Vm(VmCmd::Restart { name }) => {
            let vm = vms.restart(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        Command::Node(NodeCmd::Drain { name }) => {
            let r = cluster.drain(req(pb::NodeActionRequest { name: name.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => println!("{}", json!({"node": name, "state": r.into_inner().state})),
                Output::Table => println!(
                    "draining {name}: its VMs move to other nodes; `kvmesh node list` shows when it is in maintenance, `kvmesh vm list` what is still pending"
                ),
            }
        }
        Command::Node(NodeCmd::Activate { name }) => {
            let r = cluster.activate(req(pb::NodeActionRequest { name: name.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => println!("{}", json!({"node": name, "state": r.into_inner().state})),
                Output::Table => println!("{name} is {}", r.into_inner().state),
            }
        }
        Command::Vm(VmCmd::Recover { name }) => {
            let vm = vms.recover(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        Command::Vm(VmCmd::Set { name, description, priority }) => {
            let r = pb::UpdateVmRequest { name, description, priority };
            let vm = vms.update(req(r)).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        Command::Vm(VmCmd::Explain { name }) => {
            let e = vms.explain(req(pb::ExplainRequest { name, spec: None })).await.map_err(status_err)?.into_inner();
            print_explanation(output, &e);
        }
        Command::Cluster(ClusterCmd::Policy(PolicyCmd::Show)) => {
            let p = cluster.get_policy(req(pb::GetPolicyRequest {})).await.map_err(status_err)?.into_inner();
            print_policy(output, &p);
        }
        Command::Cluster(ClusterCmd::Policy(PolicyCmd::Set { policy, cpu_overcommit, memory_overcommit })) => {
            let set = pb::SetPolicyRequest { policy, cpu_overcommit, memory_overcommit };
            let p = cluster.set_policy(req(set)).await.map_err(status_err)?.into_inner();
            print_policy(output, &p);
        }
        Command::Cluster(ClusterCmd::Capacity) => {
            let r = cluster.capacity(req(pb::CapacityRequest {})).await.map_err(status_err)?.into_inner();
            print_capacity(output, &r);
        }
        Command::Vm(VmCmd::Console { name, bytes }) => {
            let r = vms.console(req(pb::ConsoleRequest { name, bytes })).await.map_err(status_err)?.into_inner();
            match output {
                Output::Json => println!("{}", json!({"node": r.node, "data": String::from_utf8_lossy(&r.data)})),
                Output::Table => {
                    use std::io::Write;
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&r.data);
                    let _ = out.flush();
                }
            }
        }
        Command::Vm(VmCmd::Delete { name, keep_disks }) => {
            vms.delete(req(pb::DeleteVmRequest { name: name.clone(), keep_disks })).await.map_err(status_err)?;
            match output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted VM {name}"),
            }
        }
        Command::Events { follow } => {
            let mut after = 0;
            loop {
                let r = cluster.list_events(req(pb::ListEventsRequest { after })).await.map_err(status_err)?;
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

/// Polls until the VM runs or fails; progress goes to stderr on a terminal.
async fn wait_running(
    vms: &mut VmsClient<Channel>,
    output: Output,
    mut vm: pb::Vm,
    timeout: Duration,
) -> Result<pb::Vm> {
    use std::io::IsTerminal;
    let show = output == Output::Table && std::io::stderr().is_terminal();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if vm.state != last {
            if show {
                eprintln!("{}: {} on {}", vm.name, vm.state, vm.node.as_deref().unwrap_or("-"));
            }
            last = vm.state.clone();
        }
        match vm.state.as_str() {
            "running" => return Ok(vm),
            "failed" => {
                return Err(anyhow!(
                    "VM {} failed on {}: {}",
                    vm.name,
                    vm.node.as_deref().unwrap_or("-"),
                    vm.last_error.as_deref().unwrap_or("no error text")
                ))
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!("VM {} is still {} after {}s", vm.name, vm.state, timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let get = pb::GetVmRequest { name: vm.name.clone(), consistent: false };
        vm = vms.get(req(get)).await.map_err(status_err)?.into_inner();
    }
}
