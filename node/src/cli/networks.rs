//! `kvmesh network …` and a VM's NICs (`vm nic …`): networks with their
//! status on every host, and NICs with the MACs the cluster gave them.

use anyhow::Result;
use kvmesh_proto as pb;
use pb::networks_client::NetworksClient;
use pb::vms_client::VmsClient;
use serde_json::{json, Value};

use super::client::{req, status_err, Ch};
use super::output::{format_ms, table};
use super::vm_view::print_vm;
use super::{NetworkCmd, NicCmd, Output};

pub async fn network(channel: Ch, output: Output, command: NetworkCmd) -> Result<()> {
    let mut client = NetworksClient::new(channel);
    match command {
        NetworkCmd::Add { name, kind, bridge, uplink, vlan, vni, mtu, required } => {
            let r = pb::AddNetworkRequest { name, kind, bridge, uplink, vlan, vni, mtu, required };
            let n = client.add(req(r)).await.map_err(status_err)?.into_inner();
            print_networks(output, &[n], true);
        }
        NetworkCmd::List => {
            let r = client.list(req(pb::ListNetworksRequest {})).await.map_err(status_err)?.into_inner();
            print_networks(output, &r.networks, false);
        }
        NetworkCmd::Get { name } => {
            let n = client.get(req(pb::GetNetworkRequest { name })).await.map_err(status_err)?.into_inner();
            print_networks(output, &[n], true);
        }
        NetworkCmd::Remove { name } => {
            client.remove(req(pb::GetNetworkRequest { name: name.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"removed": name})),
                Output::Table => outln!("removed network {name}; every host deletes the devices it made for it"),
            }
        }
    }
    Ok(())
}

pub async fn nic(vms: &mut VmsClient<Ch>, output: Output, command: NicCmd) -> Result<()> {
    let vm = match command {
        NicCmd::List { name } => {
            let vm = vms.get(req(pb::GetVmRequest { name, consistent: false })).await.map_err(status_err)?;
            let vm = vm.into_inner();
            match output {
                Output::Json => outln!("{}", Value::Array(vm.nics.iter().map(nic_json).collect())),
                Output::Table => {
                    let rows = vm
                        .nics
                        .iter()
                        .enumerate()
                        .map(|(i, n)| vec![i.to_string(), n.network.clone(), n.mac.clone(), n.model.clone()])
                        .collect();
                    table(&["#", "NETWORK", "MAC", "MODEL"], rows);
                }
            }
            return Ok(());
        }
        NicCmd::Add { name, network, mac, model } => {
            let nic = pb::Nic { network, mac: mac.unwrap_or_default(), model: model.unwrap_or_default() };
            vms.add_nic(req(pb::AddNicRequest { vm: name, nic: Some(nic) })).await.map_err(status_err)?.into_inner()
        }
        NicCmd::Remove { name, mac } => {
            vms.remove_nic(req(pb::RemoveNicRequest { vm: name, mac })).await.map_err(status_err)?.into_inner()
        }
    };
    if let Some(w) = &vm.warning {
        eprintln!("note: {w}");
    }
    print_vm(output, &vm);
    Ok(())
}

pub fn nic_json(n: &pb::Nic) -> Value {
    crate::view::json(crate::view::Nic::from(n))
}

fn network_json(n: &pb::NetworkInfo) -> Value {
    crate::view::json(crate::view::Network::from(n))
}

/// What a network is, in a few words.
fn what(n: &pb::NetworkInfo) -> String {
    match n.kind.as_str() {
        "vlan" => format!("VLAN {} on {}", n.vlan.unwrap_or_default(), n.uplink.clone().unwrap_or_default()),
        "vxlan" => format!("VNI {}", n.vni.unwrap_or_default()),
        "bridge" => format!("host bridge {}", n.bridge),
        _ => "a bridge per host".into(),
    }
}

fn print_networks(output: Output, networks: &[pb::NetworkInfo], detail: bool) {
    if output == Output::Json {
        let all: Vec<Value> = networks.iter().map(network_json).collect();
        outln!("{}", if detail && all.len() == 1 { all[0].clone() } else { Value::Array(all) });
        return;
    }
    if !detail {
        let rows = networks
            .iter()
            .map(|n| {
                let ready = n.hosts.iter().filter(|h| h.state == "ready").count();
                let problems: Vec<String> =
                    n.hosts.iter().filter(|h| h.state != "ready").map(|h| format!("{}: {}", h.node, h.state)).collect();
                vec![
                    n.name.clone(),
                    n.kind.clone(),
                    what(n),
                    if n.required { "yes".into() } else { "no".into() },
                    format!("{ready}/{}", n.hosts.len()),
                    n.nics.to_string(),
                    if problems.is_empty() { "-".into() } else { problems.join(", ") },
                ]
            })
            .collect();
        table(&["NAME", "KIND", "WHAT", "REQUIRED", "READY", "NICS", "NOT READY ON"], rows);
        return;
    }
    for n in networks {
        outln!("name:     {}", n.name);
        outln!("kind:     {} ({})", n.kind, what(n));
        outln!("bridge:   {} (what guests attach to on every host)", n.bridge);
        outln!("mtu:      {}", n.mtu.map_or_else(|| "the underlay's".into(), |m| m.to_string()));
        outln!("required: {}", if n.required { "yes: a host without it takes no new VMs" } else { "no" });
        outln!("nics:     {}", n.nics);
        outln!("created:  {}", format_ms(n.created_at_ms));
        let rows = n
            .hosts
            .iter()
            .map(|h| {
                let mtu = if h.mtu > 0 { h.mtu.to_string() } else { "-".into() };
                vec![h.node.clone(), h.state.clone(), mtu, h.message.clone()]
            })
            .collect();
        table(&["HOST", "STATE", "MTU", "MESSAGE"], rows);
    }
}
