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
use super::output::{print_explanation, vm_state};
use super::vm_view::{print_vm, print_vms, vm_json, ListView};
use super::wait::{self, Until};
use super::{CheckFailed, CreateArgs, Output, VmCmd, WaitArgs};

pub async fn run(channel: Ch, output: Output, wide: bool, command: VmCmd) -> Result<()> {
    let mut vms = VmsClient::new(channel.clone());
    match command {
        VmCmd::Create(args) => self::create(&mut vms, output, args).await?,
        VmCmd::List { consistent, node, state, ha, labels, sort } => {
            let view = ListView { node, state, ha: ha.then_some(true), labels, sort, wide };
            let r = vms.list(req(pb::ListVmsRequest { consistent })).await.map_err(status_err)?;
            print_vms(output, &view, &r.into_inner().vms);
        }
        VmCmd::Get { name, consistent } => {
            let vm = vms.get(req(pb::GetVmRequest { name, consistent })).await.map_err(status_err)?.into_inner();
            print_vm(output, &vm);
        }
        VmCmd::Start { name, wait } => {
            let vm = vms.start(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            finish(&mut vms, output, vm.into_inner(), wait, Until::Running).await?;
        }
        VmCmd::Stop { name, force, wait } => {
            let vm = vms.stop(req(pb::VmActionRequest { name, force })).await.map_err(status_err)?;
            finish(&mut vms, output, vm.into_inner(), wait, Until::Stopped).await?;
        }
        VmCmd::Restart { name, wait } => {
            let vm = vms.restart(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            finish(&mut vms, output, vm.into_inner(), wait, Until::Running).await?;
        }
        VmCmd::Recover { name, wait } => {
            let vm = vms.recover(req(pb::VmActionRequest { name, force: false })).await.map_err(status_err)?;
            finish(&mut vms, output, vm.into_inner(), wait, Until::Running).await?;
        }
        VmCmd::Migrate { name, to, dry_run, wait, timeout, bandwidth, copy_storage } => {
            let timeout = Duration::from_secs(timeout);
            let how = Migration { name, to, dry_run, wait, timeout, bandwidth, copy_storage };
            migrate(&mut vms, channel, output, how).await?
        }
        VmCmd::Set {
            name,
            description,
            priority,
            labels,
            unlabel,
            vcpus,
            memory,
            ha,
            no_ha,
            firmware,
            machine,
            cpu_model,
            boot_order,
            cloud_init: ci,
            no_cloud_init,
        } => {
            let labels = labels.into_iter().collect();
            // Only the parts given change; the cluster keeps the rest.
            let cloud_init = if ci.is_empty() { None } else { Some(self::cloud_init(&ci)?) };
            let reset = |v: Option<String>| v.map(|s| if s == "default" { String::new() } else { s });
            let r = pb::UpdateVmRequest {
                name,
                description,
                priority,
                labels,
                unlabel,
                vcpus,
                memory_mib: memory,
                ha: if ha {
                    Some(true)
                } else if no_ha {
                    Some(false)
                } else {
                    None
                },
                firmware,
                machine,
                cpu_model: reset(cpu_model),
                boot_order: reset(boot_order),
                cloud_init,
                no_cloud_init,
            };
            let vm = vms.update(req(r)).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        VmCmd::Explain { name } => {
            let e = vms.explain(req(pb::ExplainRequest { name, spec: None })).await.map_err(status_err)?.into_inner();
            print_explanation(output, &e);
        }
        VmCmd::Console { name, tail, bytes, linger, force } => {
            if tail || bytes.is_some() || matches!(output, Output::Json) {
                console(&mut vms, output, name, bytes.unwrap_or(16384)).await?
            } else {
                super::attach::console(channel.clone(), name, Duration::from_secs_f64(linger.max(0.0)), force).await?
            }
        }
        VmCmd::Vnc { name, listen, once } => super::attach::vnc(channel.clone(), name, listen, once).await?,
        VmCmd::Cdrom(cmd) => {
            let (vm, image) = match cmd {
                super::CdromCmd::Insert { name, image } => (name, Some(image)),
                super::CdromCmd::Eject { name } => (name, None),
            };
            let vm = vms.cdrom(req(pb::CdromRequest { vm, image })).await.map_err(status_err)?;
            print_vm(output, &vm.into_inner());
        }
        VmCmd::Disk(cmd) => super::storage::disk(&mut vms, output, cmd).await?,
        VmCmd::Nic(cmd) => super::networks::nic(&mut vms, output, cmd).await?,
        VmCmd::Snapshot(cmd) => super::storage::snapshot(&mut vms, output, cmd).await?,
        VmCmd::Template { name, image } => {
            let i = vms.template(req(pb::TemplateRequest { name, image })).await.map_err(status_err)?.into_inner();
            super::storage::print_image(output, &i);
        }
        VmCmd::Delete { name, keep_disks, yes, wait } => delete(&mut vms, output, name, keep_disks, yes, wait).await?,
    }
    Ok(())
}

/// `vm create`: with `--dry-run` prints where the VM would go instead
/// (exit 3 if nowhere); with `--wait` returns only once it runs (or fails,
/// or times out). An HA VM that breaks N+1 is a warning (refused with
/// `--strict`).
async fn create(vms: &mut VmsClient<Ch>, output: Output, args: CreateArgs) -> Result<()> {
    let (dry_run, wait, timeout) = (args.dry_run, args.wait, args.timeout);
    if args.network.is_some() || args.bridge.is_some() {
        return Err(super::UsageError(
            "--network and --bridge are gone: a NIC names one of the cluster's networks. Define it once \
             (`kvmesh network add lan --kind bridge --bridge br0`, or --kind vxlan/vlan/isolated) and use --nic lan"
                .into(),
        )
        .into());
    }
    let cloud_init = if args.cloud_init.is_empty() { None } else { Some(cloud_init(&args.cloud_init)?) };
    let mut create = create_request(args);
    create.cloud_init = cloud_init;
    if dry_run {
        let explain = pb::ExplainRequest { name: create.name.clone(), spec: Some(create) };
        let e = vms.explain(req(explain)).await.map_err(status_err)?.into_inner();
        print_explanation(output, &e);
        if e.chosen.is_none() {
            return Err(CheckFailed(format!("VM {} fits on no node (see the reasons above)", e.vm)).into());
        }
        return Ok(());
    }
    let mut vm = vms.create(req(create)).await.map_err(status_err)?.into_inner();
    if let Some(warning) = vm.warning.take() {
        eprintln!("warning: {warning}; --strict refuses such a VM");
    }
    if wait {
        vm = wait::vm(vms, output, &vm.name, Until::Running, Duration::from_secs(timeout)).await?.unwrap_or(vm);
    }
    match output {
        Output::Json => outln!("{}", vm_json(&vm)),
        Output::Table => outln!("created VM {} ({}) on {}", vm.name, vm.id, vm.node.as_deref().unwrap_or("no node")),
    }
    Ok(())
}

/// `vm delete`: asks first if the VM runs; with `--wait`, returns once its
/// host has removed it.
async fn delete(
    vms: &mut VmsClient<Ch>,
    output: Output,
    name: String,
    keep_disks: bool,
    yes: bool,
    wait: WaitArgs,
) -> Result<()> {
    let get = pb::GetVmRequest { name: name.clone(), consistent: false };
    let vm = vms.get(req(get)).await.map_err(status_err)?.into_inner();
    let on = vm.node.as_deref().unwrap_or("-");
    // Anything that runs or may run: asked. A stopped or never-placed VM
    // is deleted without a question.
    let may_run = vm.desired == pb::DesiredState::Running as i32 && vm.node.is_some();
    if may_run || vm.state != pb::VmState::Stopped as i32 && vm.node.is_some() || !vm.observed.is_empty() {
        let disks = if keep_disks { "its disks are kept" } else { "its disks are deleted" };
        wait::confirm(yes, &format!("VM {name} is running on {on}: deleting it powers it off and {disks}"))?;
    }
    vms.delete(req(pb::DeleteVmRequest { name: name.clone(), keep_disks })).await.map_err(status_err)?;
    if wait.wait {
        wait::vm(vms, output, &name, Until::Gone, Duration::from_secs(wait.timeout)).await?;
        match output {
            Output::Json => outln!("{}", json!({"deleted": name, "done": true})),
            Output::Table => outln!("deleted VM {name}"),
        }
        return Ok(());
    }
    match output {
        Output::Json => outln!("{}", json!({"deleted": name, "done": false})),
        Output::Table => outln!(
            "deleting VM {name}: its host removes it{}; `--wait` waits until it is gone",
            if vm.node.is_some() { format!(" ({on})") } else { String::new() }
        ),
    }
    Ok(())
}

/// cloud-init settings from the files named.
fn cloud_init(a: &super::CloudInitArgs) -> Result<pb::CloudInit> {
    let read = |p: &std::path::PathBuf| {
        std::fs::read_to_string(p).map_err(|e| super::UsageError(format!("cannot read {}: {e}", p.display())))
    };
    let mut ci = pb::CloudInit::default();
    if let Some(path) = &a.user_data {
        ci.user_data = Some(read(path)?);
    }
    if !a.ssh_keys.is_empty() {
        ci.ssh_keys.clear();
        for path in &a.ssh_keys {
            ci.ssh_keys.extend(
                read(path)?.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
            );
        }
    }
    if let Some(h) = &a.hostname {
        ci.hostname = Some(h.clone());
    }
    Ok(ci)
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
        nics: a.nics,
        priority: a.priority,
        pin: a.pin,
        required_labels: a.node_labels.into_iter().collect(),
        preferred_labels: a.prefer_labels.into_iter().collect(),
        anti_affinity: a.anti_affinity,
        soft_anti_affinity: a.soft_anti_affinity,
        affinity: a.affinity,
        strict: a.strict,
        labels: a.labels.into_iter().collect(),
        firmware: a.firmware.unwrap_or_default(),
        machine: a.machine.unwrap_or_default(),
        cpu_model: a.cpu_model,
        boot_order: a.boot_order,
        cdrom: a.cdrom,
        cloud_init: None,
    }
}

/// Prints the VM, after waiting for the operation to finish when asked to.
async fn finish(vms: &mut VmsClient<Ch>, output: Output, vm: pb::Vm, wait: WaitArgs, until: Until) -> Result<()> {
    let vm = if wait.wait {
        wait::vm(vms, output, &vm.name, until, Duration::from_secs(wait.timeout)).await?.unwrap_or(vm)
    } else {
        vm
    };
    print_vm(output, &vm);
    Ok(())
}

/// `vm console`: the raw bytes on a table, or the node and the text as JSON.
async fn console(vms: &mut VmsClient<Ch>, output: Output, name: String, bytes: u64) -> Result<()> {
    let r = vms.console(req(pb::ConsoleRequest { name, bytes })).await.map_err(status_err)?.into_inner();
    match output {
        Output::Json => outln!("{}", json!({"node": r.node, "data": String::from_utf8_lossy(&r.data)})),
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
            (Some(e), _) => {
                print_explanation(output, e);
                if e.chosen.is_none() {
                    return Err(CheckFailed(format!("no other host can take VM {} now", m.name)).into());
                }
            }
            (None, to) => match output {
                Output::Json => outln!("{}", json!({"vm": m.name, "to": to})),
                Output::Table => outln!("{} would move live to {}", m.name, to.as_deref().unwrap_or("-")),
            },
        }
        return Ok(());
    }
    let mut vm = reply.vm.ok_or_else(|| anyhow!("the leader answered without the VM"))?;
    if vm.migrating_to.is_none() {
        // A stopped VM: its record moved at once.
        match output {
            Output::Json => outln!("{}", vm_json(&vm)),
            Output::Table => outln!("moved {} (stopped) to {}", vm.name, vm.node.as_deref().unwrap_or("-")),
        }
        return Ok(());
    }
    let (from, target) = (vm.node.clone().unwrap_or_default(), vm.migrating_to.clone().unwrap_or_default());
    // A stopped VM whose local disks are being copied (a cold move).
    let cold = vm.desired == pb::DesiredState::Stopped as i32;
    let how = if cold { "(stopped) with its local disks" } else { "live" };
    if !m.wait {
        match output {
            Output::Json => outln!("{}", vm_json(&vm)),
            Output::Table => outln!("moving {} {how} from {from} to {target}", vm.name),
        }
        return Ok(());
    }
    use std::io::IsTerminal;
    let show = output == Output::Table && std::io::stderr().is_terminal();
    let started = tokio::time::Instant::now();
    loop {
        if let (true, Some(p)) = (show, &vm.migration_progress) {
            eprint!("\r{}: {}   ", vm.name, super::vm_view::progress_line(p));
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
        Output::Json => outln!("{}", vm_json(&vm)),
        Output::Table => {
            outln!("{} moved {how} from {from} to {target} in {:.1} s", vm.name, started.elapsed().as_secs_f64())
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
