//! `kvmesh vm …`: creating VMs (optionally only explaining where they would
//! go, or waiting until they run), listing and showing them, the lifecycle
//! actions (start, stop, restart, recover, delete), changing their settings,
//! and reading their serial console.

use std::time::Duration;

use super::client::Ch;
use anyhow::{anyhow, Result};
use kvmesh_proto as pb;
use pb::vms_client::VmsClient;
use serde_json::json;

use super::client::{req, status_err};
use super::output::{print_explanation, print_vm, print_vms, vm_json, vm_state};
use super::{CreateArgs, Output, VmCmd, WaitArgs};

pub async fn run(channel: Ch, output: Output, command: VmCmd) -> Result<()> {
    let mut vms = VmsClient::new(channel.clone());
    match command {
        VmCmd::Create(args) => self::create(&mut vms, output, args).await?,
        VmCmd::List { consistent } => {
            let r = vms.list(req(pb::ListVmsRequest { consistent })).await.map_err(status_err)?;
            print_vms(output, &r.into_inner().vms);
        }
        VmCmd::Get { name, consistent } => {
            let vm = vms.get(req(pb::GetVmRequest { name, consistent })).await.map_err(status_err)?.into_inner();
            print_vm(output, &vm);
        }
        VmCmd::Start { name, wait } => {
            let vm = vms.start(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            finish(&mut vms, output, vm.into_inner(), wait).await?;
        }
        VmCmd::Stop { name, force } => {
            let vm = vms.stop(req(pb::VmActionRequest { name, force })).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        VmCmd::Restart { name, wait } => {
            let vm = vms.restart(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            finish(&mut vms, output, vm.into_inner(), wait).await?;
        }
        VmCmd::Recover { name } => {
            let vm = vms.recover(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        VmCmd::Migrate { name, to, dry_run, wait, timeout, bandwidth, copy_storage } => {
            let timeout = Duration::from_secs(timeout);
            let how = Migration { name, to, dry_run, wait, timeout, bandwidth, copy_storage };
            migrate(&mut vms, channel, output, how).await?
        }
        VmCmd::Set { name, description, priority } => {
            let r = pb::UpdateVmRequest { name, description, priority };
            let vm = vms.update(req(r)).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        VmCmd::Explain { name } => {
            let e = vms.explain(req(pb::ExplainRequest { name, spec: None })).await.map_err(status_err)?.into_inner();
            print_explanation(output, &e);
        }
        VmCmd::Console { name, bytes } => console(&mut vms, output, name, bytes).await?,
        VmCmd::Disk(cmd) => super::storage::disk(&mut vms, output, cmd).await?,
        VmCmd::Snapshot(cmd) => super::storage::snapshot(&mut vms, output, cmd).await?,
        VmCmd::Template { name, image } => {
            let i = vms.template(req(pb::TemplateRequest { name, image })).await.map_err(status_err)?.into_inner();
            super::storage::print_image(output, &i);
        }
        VmCmd::Delete { name, keep_disks } => {
            vms.delete(req(pb::DeleteVmRequest { name: name.clone(), keep_disks })).await.map_err(status_err)?;
            match output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted VM {name}"),
            }
        }
    }
    Ok(())
}

/// `vm create`: with `--dry-run` prints where the VM would go instead;
/// with `--wait` returns only once it runs (or fails, or times out).
async fn create(vms: &mut VmsClient<Ch>, output: Output, args: CreateArgs) -> Result<()> {
    let (dry_run, wait, timeout) = (args.dry_run, args.wait, args.timeout);
    let create = create_request(args);
    if dry_run {
        let explain = pb::ExplainRequest { name: create.name.clone(), spec: Some(create) };
        let e = vms.explain(req(explain)).await.map_err(status_err)?.into_inner();
        print_explanation(output, &e);
        return Ok(());
    }
    let mut vm = vms.create(req(create)).await.map_err(status_err)?.into_inner();
    if wait {
        vm = wait_running(vms, output, vm, Duration::from_secs(timeout)).await?;
    }
    match output {
        Output::Json => println!("{}", vm_json(&vm)),
        Output::Table => println!("created VM {} ({}) on {}", vm.name, vm.id, vm.node.as_deref().unwrap_or("no node")),
    }
    Ok(())
}

/// The create request for `vm create`'s arguments; a fresh request id, so
/// the leader recognises this create if it is retried.
fn create_request(a: CreateArgs) -> pb::CreateVmRequest {
    pb::CreateVmRequest {
        name: a.name,
        vcpus: a.vcpus,
        memory_mib: a.memory,
        ha: a.ha,
        request_id: format!("{:032x}", rand::random::<u128>()),
        disks: a.disks.into_iter().map(|(size_bytes, storage)| pb::DiskSpec { size_bytes, storage }).collect(),
        image: a.image,
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        network: a.network,
        bridge: a.bridge,
        priority: a.priority,
        pin: a.pin,
        required_labels: a.node_labels.into_iter().collect(),
        preferred_labels: a.prefer_labels.into_iter().collect(),
        anti_affinity: a.anti_affinity,
        soft_anti_affinity: a.soft_anti_affinity,
        affinity: a.affinity,
    }
}

/// Prints the VM, after waiting for it to run when asked to.
async fn finish(vms: &mut VmsClient<Ch>, output: Output, vm: pb::Vm, wait: WaitArgs) -> Result<()> {
    let vm = if wait.wait { wait_running(vms, output, vm, Duration::from_secs(wait.timeout)).await? } else { vm };
    print_vm(output, &vm);
    Ok(())
}

/// Polls until the VM runs or fails; progress goes to stderr on a terminal.
async fn wait_running(vms: &mut VmsClient<Ch>, output: Output, mut vm: pb::Vm, timeout: Duration) -> Result<pb::Vm> {
    use std::io::IsTerminal;
    let show = output == Output::Table && std::io::stderr().is_terminal();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if vm_state(vm.state) != last {
            if show {
                eprintln!("{}: {} on {}", vm.name, vm_state(vm.state), vm.node.as_deref().unwrap_or("-"));
            }
            last = vm_state(vm.state).to_string();
        }
        match vm_state(vm.state) {
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
            return Err(anyhow!("VM {} is still {} after {}s", vm.name, vm_state(vm.state), timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let get = pb::GetVmRequest { name: vm.name.clone(), consistent: false };
        vm = vms.get(req(get)).await.map_err(status_err)?.into_inner();
    }
}

/// `vm console`: the raw bytes on a table, or the node and the text as JSON.
async fn console(vms: &mut VmsClient<Ch>, output: Output, name: String, bytes: u64) -> Result<()> {
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
    Ok(())
}

/// What `vm migrate` was asked.
struct Migration {
    name: String,
    to: Option<String>,
    dry_run: bool,
    wait: bool,
    timeout: Duration,
    bandwidth: u64,
    copy_storage: bool,
}

/// `vm migrate`: begins a live migration (or explains where it would go);
/// with `--wait`, returns once the VM runs on the target, or fails with the
/// reason the migration was aborted.
async fn migrate(vms: &mut VmsClient<Ch>, channel: Ch, output: Output, m: Migration) -> Result<()> {
    let request = pb::MigrateVmRequest {
        name: m.name.clone(),
        to: m.to.clone(),
        dry_run: m.dry_run,
        bandwidth_mib: m.bandwidth,
        copy_storage: m.copy_storage,
    };
    let reply = vms.migrate(req(request)).await.map_err(status_err)?.into_inner();
    if m.dry_run {
        match (&reply.explanation, &m.to) {
            (Some(e), _) => print_explanation(output, e),
            (None, to) => match output {
                Output::Json => println!("{}", json!({"vm": m.name, "to": to})),
                Output::Table => println!("{} would move live to {}", m.name, to.as_deref().unwrap_or("-")),
            },
        }
        return Ok(());
    }
    let mut vm = reply.vm.ok_or_else(|| anyhow!("the leader answered without the VM"))?;
    if vm.migrating_to.is_none() {
        // A stopped VM: its record moved at once.
        match output {
            Output::Json => println!("{}", vm_json(&vm)),
            Output::Table => println!("moved {} (stopped) to {}", vm.name, vm.node.as_deref().unwrap_or("-")),
        }
        return Ok(());
    }
    let (from, target) = (vm.node.clone().unwrap_or_default(), vm.migrating_to.clone().unwrap_or_default());
    // A stopped VM whose local disks are being copied (a cold move).
    let cold = vm.desired == pb::DesiredState::Stopped as i32;
    let how = if cold { "(stopped) with its local disks" } else { "live" };
    if !m.wait {
        match output {
            Output::Json => println!("{}", vm_json(&vm)),
            Output::Table => println!("moving {} {how} from {from} to {target}", vm.name),
        }
        return Ok(());
    }
    use std::io::IsTerminal;
    let show = output == Output::Table && std::io::stderr().is_terminal();
    let started = tokio::time::Instant::now();
    loop {
        if let (true, Some(p)) = (show, &vm.migration_progress) {
            eprint!("\r{}: {}   ", vm.name, super::output::progress_line(p));
        }
        if vm.migrating_to.is_none() {
            if vm.node.as_deref() != Some(target.as_str()) {
                let why = abort_reason(channel, &m.name).await.unwrap_or_else(|| "see `kvmesh events`".into());
                let is = if cold { "is stopped" } else { "runs" };
                return Err(anyhow!("the migration of {} to {target} was aborted; it {is} on {from}: {why}", m.name));
            }
            if cold || vm_state(vm.state) == "running" {
                break;
            }
        }
        if started.elapsed() >= m.timeout {
            return Err(anyhow!("VM {} is still migrating to {target} after {}s", m.name, m.timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let get = pb::GetVmRequest { name: m.name.clone(), consistent: false };
        vm = vms.get(req(get)).await.map_err(status_err)?.into_inner();
    }
    match output {
        Output::Json => println!("{}", vm_json(&vm)),
        Output::Table => {
            println!("{} moved {how} from {from} to {target} in {:.1} s", vm.name, started.elapsed().as_secs_f64())
        }
    }
    Ok(())
}

/// Why the latest migration of `name` was aborted, from the event log.
async fn abort_reason(channel: Ch, name: &str) -> Option<String> {
    let mut cluster = pb::cluster_client::ClusterClient::new(channel);
    let events = cluster.list_events(req(pb::ListEventsRequest { after: 0 })).await.ok()?.into_inner().events;
    let prefix = format!("vm {name}: migration ");
    events.iter().rev().find(|e| e.message.starts_with(&prefix)).map(|e| e.message.clone())
}
