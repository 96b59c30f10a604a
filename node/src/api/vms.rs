//! The `Vms` gRPC service. Creates run the scheduler on the leader and commit
//! its decision; reads are local unless `consistent`.

use std::sync::Arc;

use kvmesh_proto as pb;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_raft::command::{Command, Refusal, Response as CmdResponse};
use kvmesh_raft::model::{Desired, Vm, VmSpec};
use kvmesh_raft::wire;
use kvmesh_scheduler::{self as scheduler, Decision};
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::ctx::{forward, is_forwarded, now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::placement;

/// How often a create re-plans when a concurrent placement took its spot.
const PLACEMENT_ATTEMPTS: usize = 5;

pub struct VmsService {
    ctx: Arc<NodeCtx>,
}

impl VmsService {
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        VmsService { ctx }
    }
}

fn label_map(m: &std::collections::HashMap<String, String>) -> Result<std::collections::BTreeMap<String, String>> {
    for (k, v) in m {
        if k.is_empty() || k.contains('=') || v.contains('=') {
            return Err(Error::InvalidArgument(format!("bad label {k}={v}: use key=value")));
        }
    }
    Ok(m.clone().into_iter().collect())
}

/// Checks a create request and turns it into the replicated spec.
fn validate_create(req: &pb::CreateVmRequest) -> Result<VmSpec> {
    crate::config::validate_vm_name(&req.name).map_err(Error::InvalidArgument)?;
    // Paths name files on the host that will run the VM, so they must not
    // depend on the client's working directory.
    for (flag, path) in [("--image", &req.image), ("--kernel", &req.kernel), ("--initrd", &req.initrd)] {
        if let Some(p) = path {
            if !p.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "{flag} must be an absolute path on the hosts (got {p:?})"
                )));
            }
        }
    }
    if req.initrd.is_some() && req.kernel.is_none() {
        return Err(Error::InvalidArgument("--initrd needs --kernel".into()));
    }
    if req.cmdline.is_some() && req.kernel.is_none() {
        return Err(Error::InvalidArgument("--cmdline needs --kernel".into()));
    }
    if req.network.is_some() && req.bridge.is_some() {
        return Err(Error::InvalidArgument("use --network or --bridge, not both".into()));
    }
    if req.affinity.is_some() && req.affinity == req.anti_affinity {
        return Err(Error::InvalidArgument("a group cannot be both --affinity and --anti-affinity".into()));
    }
    let spec = VmSpec {
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        ha: req.ha,
        disk_bytes: (req.disk_bytes > 0).then_some(req.disk_bytes),
        image: req.image.clone(),
        kernel: req.kernel.clone(),
        initrd: req.initrd.clone(),
        cmdline: req.cmdline.clone(),
        network: req.network.clone(),
        bridge: req.bridge.clone(),
        priority: req.priority,
        pin: req.pin.clone(),
        required_labels: label_map(&req.required_labels)?,
        preferred_labels: label_map(&req.preferred_labels)?,
        anti_affinity: req.anti_affinity.clone(),
        soft_anti_affinity: req.soft_anti_affinity.clone(),
        affinity: req.affinity.clone(),
    };
    placement::vm_request(0, &req.name, &spec).validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(spec)
}

/// Places and records a VM. Runs on the leader.
#[instrument(skip_all, fields(node = %ctx.name, vm = %req.name))]
async fn create_on_leader(ctx: &NodeCtx, req: &pb::CreateVmRequest, spec: &VmSpec) -> Result<pb::Vm> {
    for _ in 0..PLACEMENT_ATTEMPTS {
        let id = rand::random::<u64>() >> 1;
        let unresponsive = crate::ha::unresponsive(ctx);
        let decision = ctx.read(|d| {
            if let Some(existing) = d.state.vm_by_name(&req.name) {
                if !req.request_id.is_empty() && existing.request_id == req.request_id {
                    return Ok(Err(wire::vm(&d.state, existing)));
                }
                return Err(Error::from(Refusal::VmNameTaken { name: req.name.clone() }));
            }
            let settings = placement::settings(&d.state.meta.settings.placement);
            let vm = placement::vm_request(id, &req.name, spec);
            Ok(Ok(scheduler::place(&placement::node_views_live(&d.state, None, &unresponsive), &vm, &settings)))
        })?;
        let decision = match decision {
            Err(already_created) => return Ok(already_created),
            Ok(d) => d,
        };
        let (node_id, node_name) = match decision {
            Decision::Place { node_id, node } => (node_id, node),
            Decision::Unplaceable { rejections } => {
                return Err(Error::NoCapacity(format!(
                    "cannot place VM {} ({} vCPUs, {} MiB): no node fits\n{}",
                    req.name,
                    req.vcpus,
                    req.memory_mib,
                    scheduler::explain_rejections(&rejections)
                )))
            }
        };
        let vm =
            Vm { request_id: req.request_id.clone(), ..Vm::placed(id, &req.name, spec.clone(), node_id, now_ms()) };
        match ctx.write(Command::CreateVm { vm: Box::new(vm), at_ms: now_ms() }).await? {
            CmdResponse::Vm(vm) => {
                info!(placed_on = %node_name, "vm created");
                return Ok(ctx.read(|d| wire::vm(&d.state, &vm)));
            }
            CmdResponse::Refused(Refusal::NoLongerFits { node })
            | CmdResponse::Refused(Refusal::AntiAffinityConflict { node, .. }) => {
                info!(%node, "placement lost a race; planning again");
            }
            CmdResponse::Refused(r) => return Err(r.into()),
            other => return Err(Error::Raft(format!("unexpected response to CreateVm: {other:?}"))),
        }
    }
    Err(Error::Unavailable(format!("VM {} lost the placement race {PLACEMENT_ATTEMPTS} times; retry", req.name)))
}

/// Fills `observed`: the hosts whose latest heartbeat reports the VM
/// running (the leader's view), so anyone can check nothing runs twice.
async fn with_observed(ctx: &NodeCtx, mut vm: pb::Vm) -> pb::Vm {
    if let Some(obs) = crate::ha::observed(ctx).await {
        vm.observed = obs.vms.into_iter().find(|o| o.vm_id == vm.id).map(|o| o.nodes).unwrap_or_default();
    }
    vm
}

async fn with_observed_list(ctx: &NodeCtx, mut r: pb::ListVmsResponse) -> pb::ListVmsResponse {
    if let Some(obs) = crate::ha::observed(ctx).await {
        let map: std::collections::HashMap<String, Vec<String>> =
            obs.vms.into_iter().map(|o| (o.vm_id, o.nodes)).collect();
        for vm in &mut r.vms {
            vm.observed = map.get(&vm.id).cloned().unwrap_or_default();
        }
    }
    r
}

/// Each node's filter result and score, for an existing VM or a spec.
fn explain(ctx: &NodeCtx, req: &pb::ExplainRequest) -> Result<pb::Explanation> {
    let spec = req.spec.as_ref().map(validate_create).transpose()?;
    ctx.read(|d| {
        let settings = placement::settings(&d.state.meta.settings.placement);
        let (vm, except) = match (&spec, &req.spec) {
            (Some(spec), Some(r)) => (placement::vm_request(0, &r.name, spec), None),
            _ => {
                let vm = d
                    .state
                    .vm_by_name(&req.name)
                    .ok_or_else(|| Error::NotFound(format!("no VM named {:?}; see `kvmesh vm list`", req.name)))?;
                (placement::vm_request(vm.id, &vm.name, &vm.spec), Some(vm.id))
            }
        };
        let evals = scheduler::explain(&placement::node_views(&d.state, except), &vm, &settings);
        Ok(placement::explanation_pb(&vm.name, &settings, &evals))
    })
}

async fn delete_on_leader(ctx: &NodeCtx, name: &str, keep_disks: bool) -> Result<pb::DeleteVmResponse> {
    match ctx.write(Command::DeleteVm { name: name.to_string(), keep_disks, at_ms: now_ms() }).await? {
        CmdResponse::Refused(r) => Err(r.into()),
        _ => Ok(pb::DeleteVmResponse {}),
    }
}

/// The longest description `vm set` accepts.
const MAX_DESCRIPTION_BYTES: usize = 4096;

fn validate_update(req: &pb::UpdateVmRequest) -> Result<Command> {
    if req.description.is_none() && req.priority.is_none() {
        return Err(Error::InvalidArgument("nothing to change: give --description and/or --priority".into()));
    }
    if let Some(d) = &req.description {
        if d.len() > MAX_DESCRIPTION_BYTES {
            return Err(Error::InvalidArgument(format!(
                "description is {} bytes; the limit is {MAX_DESCRIPTION_BYTES}",
                d.len()
            )));
        }
        if d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(Error::InvalidArgument("description may not hold control characters".into()));
        }
    }
    Ok(Command::UpdateVm { name: req.name.clone(), description: req.description.clone(), priority: req.priority })
}

fn list(ctx: &NodeCtx) -> pb::ListVmsResponse {
    // By name, through the name index.
    ctx.read(|d| pb::ListVmsResponse {
        vms: d.state.vm_names().filter_map(|id| d.state.vms.get(&id)).map(|v| wire::vm(&d.state, v)).collect(),
    })
}

fn get(ctx: &NodeCtx, name: &str) -> Result<pb::Vm> {
    ctx.read(|d| d.state.vm_by_name(name).map(|v| wire::vm(&d.state, v)))
        .ok_or_else(|| Error::NotFound(format!("no VM named {name:?}; see `kvmesh vm list`")))
}

#[tonic::async_trait]
impl pb::vms_server::Vms for VmsService {
    async fn create(&self, request: Request<pb::CreateVmRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let spec = validate_create(&req)?;
        let ctx = &self.ctx;
        let vm = ctx
            .on_leader(
                forwarded,
                || create_on_leader(ctx, &req, &spec),
                |ch, t| {
                    let req = req.clone();
                    async move { VmsClient::new(ch).create(forward(req, t)).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        Ok(Response::new(vm))
    }

    async fn list(
        &self,
        request: Request<pb::ListVmsRequest>,
    ) -> std::result::Result<Response<pb::ListVmsResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let ctx = &self.ctx;
        if !req.consistent {
            return Ok(Response::new(with_observed_list(ctx, list(ctx)).await));
        }
        let r = ctx
            .on_leader(
                forwarded,
                || async {
                    ctx.ensure_linearizable().await?;
                    Ok(list(ctx))
                },
                |ch, t| async move { VmsClient::new(ch).list(forward(req, t)).await.map(|r| r.into_inner()) },
            )
            .await?;
        Ok(Response::new(with_observed_list(ctx, r).await))
    }

    async fn get(&self, request: Request<pb::GetVmRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let ctx = &self.ctx;
        if !req.consistent {
            return Ok(Response::new(with_observed(ctx, get(ctx, &req.name)?).await));
        }
        let r = ctx
            .on_leader(
                forwarded,
                || async {
                    ctx.ensure_linearizable().await?;
                    get(ctx, &req.name)
                },
                |ch, t| {
                    let req = req.clone();
                    async move { VmsClient::new(ch).get(forward(req, t)).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        Ok(Response::new(with_observed(ctx, r).await))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteVmRequest>,
    ) -> std::result::Result<Response<pb::DeleteVmResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let ctx = &self.ctx;
        let r = ctx
            .on_leader(
                forwarded,
                || delete_on_leader(ctx, &req.name, req.keep_disks),
                |ch, t| {
                    let req = req.clone();
                    async move { VmsClient::new(ch).delete(forward(req, t)).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        Ok(Response::new(r))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> std::result::Result<Response<pb::Explanation>, Status> {
        Ok(Response::new(explain(&self.ctx, &request.into_inner())?))
    }

    async fn recover(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        self.action(request, VmAction::Recover).await
    }

    async fn update(&self, request: Request<pb::UpdateVmRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let req = request.into_inner();
        let cmd = validate_update(&req)?;
        let ctx = &self.ctx;
        // Built without the leader's state, so it is submitted from here:
        // a follower forwards it to the leader batched with other writes.
        let vm = match ctx.submit(cmd).await? {
            CmdResponse::Vm(vm) => ctx.read(|d| wire::vm(&d.state, &vm)),
            CmdResponse::Refused(r) => return Err(Error::from(r).into()),
            other => return Err(Error::Raft(format!("unexpected response to UpdateVm: {other:?}")).into()),
        };
        Ok(Response::new(vm))
    }

    async fn start(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        self.action(request, VmAction::Start).await
    }

    async fn stop(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        self.action(request, VmAction::Stop).await
    }

    async fn restart(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        self.action(request, VmAction::Restart).await
    }

    async fn console(
        &self,
        request: Request<pb::ConsoleRequest>,
    ) -> std::result::Result<Response<pb::ConsoleReply>, Status> {
        let req = request.into_inner();
        let ctx = &self.ctx;
        let owner = ctx
            .read(|d| {
                let vm = d.state.vm_by_name(&req.name)?;
                let node = vm.placement.and_then(|p| d.state.nodes.get(&p.node))?;
                Some(Ok((node.id, node.address.clone(), node.name.clone())))
            })
            .unwrap_or_else(|| {
                Err(Error::NotFound(format!("no VM named {:?}, or it is not placed on any node", req.name)))
            })?;
        if owner.0 == ctx.id {
            return Ok(Response::new(crate::agent::local_console(ctx, &req.name, req.bytes).await?));
        }
        // Served by the host that runs the guest.
        let mut client = pb::host_client::HostClient::new(ctx.channel(&owner.1)?);
        let mut r = Request::new(req);
        r.set_timeout(std::time::Duration::from_secs(10));
        client.read_console(r).await.map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                Status::unavailable(format!(
                    "host {} ({}) that runs this VM does not answer: {}",
                    owner.2,
                    owner.1,
                    s.message()
                ))
            } else {
                s
            }
        })
    }
}

#[derive(Clone, Copy)]
enum VmAction {
    Start,
    Stop,
    Restart,
    Recover,
}

impl VmsService {
    async fn action(
        &self,
        request: Request<pb::VmActionRequest>,
        action: VmAction,
    ) -> std::result::Result<Response<pb::Vm>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let ctx = &self.ctx;
        let cmd = match action {
            VmAction::Start => {
                Command::SetDesired { name: req.name.clone(), desired: Desired::Running, force: false, at_ms: now_ms() }
            }
            VmAction::Stop => Command::SetDesired {
                name: req.name.clone(),
                desired: Desired::Stopped,
                force: req.force,
                at_ms: now_ms(),
            },
            VmAction::Restart => Command::RestartVm { name: req.name.clone(), at_ms: now_ms() },
            VmAction::Recover => Command::RecoverVm { name: req.name.clone(), at_ms: now_ms() },
        };
        let vm = ctx
            .on_leader(
                forwarded,
                || async {
                    match ctx.write(cmd.clone()).await? {
                        CmdResponse::Vm(vm) => Ok(ctx.read(|d| wire::vm(&d.state, &vm))),
                        CmdResponse::Refused(r) => Err(r.into()),
                        CmdResponse::Done | CmdResponse::Batch(_) => ctx
                            .read(|d| d.state.vm_by_name(&req.name).map(|v| wire::vm(&d.state, v)))
                            .ok_or_else(|| Error::NotFound(format!("no VM named {:?}", req.name))),
                    }
                },
                |ch, t| {
                    let req = req.clone();
                    async move {
                        let mut client = VmsClient::new(ch);
                        let r = match action {
                            VmAction::Start => client.start(forward(req, t)).await,
                            VmAction::Stop => client.stop(forward(req, t)).await,
                            VmAction::Restart => client.restart(forward(req, t)).await,
                            VmAction::Recover => client.recover(forward(req, t)).await,
                        };
                        r.map(|r| r.into_inner())
                    }
                },
            )
            .await?;
        Ok(Response::new(vm))
    }
}
