//! The `Vms` gRPC service. A create runs the scheduler on the leader and
//! commits its decision ([`NodeCtx::leader_call`]); every other write is a
//! command proposed from this node ([`NodeCtx::propose`]); reads are local
//! unless `consistent`.

use std::sync::Arc;

use crate::storage::disk_ops;
use kvmesh_proto as pb;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_raft::command::{Command, Refusal, Response as CmdResponse};
use kvmesh_raft::model::{ClusterState, Desired, Vm, VmSpec};
use kvmesh_raft::storage::{Disk, Image, ImageKind, SnapshotOp, DEFAULT_STORAGE};
use kvmesh_raft::wire::{from_pb, to_pb};
use kvmesh_scheduler::{self as scheduler, Outcome};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::ctx::{is_forwarded, now_ms, LeaderCall, NodeCtx};
use crate::error::{Error, Result};
use crate::ha::leader::Liveness;
use crate::ha::LeaderView;

/// How often a create re-plans when a concurrent placement took its spot.
const PLACEMENT_ATTEMPTS: usize = 5;

pub struct VmsService {
    ctx: Arc<NodeCtx>,
    leader: Arc<LeaderView>,
}

impl VmsService {
    pub fn new(ctx: Arc<NodeCtx>, leader: Arc<LeaderView>) -> Self {
        VmsService { ctx, leader }
    }
}

/// Checks a create request and turns it into the replicated spec.
fn validate_create(req: &pb::CreateVmRequest) -> Result<VmSpec> {
    crate::config::validate_vm_name(&req.name).map_err(Error::InvalidArgument)?;
    if let Some(ci) = &req.cloud_init {
        crate::cloud_init::check(ci).map_err(Error::InvalidArgument)?;
    }
    from_pb::vm_spec(req).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// What the leader's scheduler decides for a new VM: its id (drawn from the
/// state, so a dry-run and the create after it agree) and every node's
/// evaluation, over the one view of the cluster that includes the hosts
/// this leader has not heard from.
fn plan_new(state: &ClusterState, live: &Liveness, name: &str, spec: &VmSpec) -> (u64, Vec<scheduler::Evaluation>) {
    let id = state.new_vm_id(name);
    let nodes = state.scheduler_view(&live.host_facts(state), None);
    (id, scheduler::explain(&nodes, &state.vm_request_of(id, name, spec), &state.meta.settings.placement))
}

/// The spec with what its image-backed disks take from their images, and
/// its storage checked (domains and images exist, HA data is shared).
fn completed(state: &ClusterState, spec: &VmSpec) -> Result<VmSpec> {
    // A pin to a node that does not exist is a typo, not a placement.
    if let Some(pin) = spec.pin.as_deref().filter(|p| state.node_by_name(p).is_none()) {
        return Err(Error::NotFound(state.unknown_node(pin)));
    }
    let mut spec = spec.clone();
    state.complete_disks(&mut spec)?;
    Ok(spec)
}

/// A leader elected moments ago has not heard from every host yet; until
/// it has (or three heartbeats have passed) it places nothing, rather than
/// count a live host as dead or a dead one as live.
pub(super) fn await_liveness(state: &ClusterState, live: &Liveness) -> Result<()> {
    if live.is_new() && !live.unresponsive(state).is_empty() {
        return Err(Error::Unavailable(
            "the leader was elected moments ago and has not heard from every host yet".into(),
        ));
    }
    Ok(())
}

/// Places and records a VM. Runs on the leader.
#[instrument(skip_all, fields(node = %ctx.name, vm = %req.name))]
async fn create_on_leader(
    ctx: &NodeCtx,
    leader: &LeaderView,
    req: &pb::CreateVmRequest,
    spec: &VmSpec,
) -> Result<pb::Vm> {
    for _ in 0..PLACEMENT_ATTEMPTS {
        let live = leader.liveness();
        let planned = ctx.read(|d| {
            if let Some(existing) = d.state.vm_by_name(&req.name) {
                if !req.request_id.is_empty() && existing.request_id == req.request_id {
                    return Ok(Err(to_pb::vm(&d.state, existing)));
                }
                if existing.deleting.is_some() {
                    return Err(Error::AlreadyExists(format!(
                        "a VM named {:?} is still being deleted (its host is removing it); `kvmesh vm delete {} --wait` waits until it is gone, then create it again",
                        req.name, req.name
                    )));
                }
                return Err(Error::from(Refusal::VmNameTaken { name: req.name.clone() }));
            }
            await_liveness(&d.state, &live)?;
            let spec = completed(&d.state, spec)?;
            disks_fit_somewhere(&d.state, &live, &spec)?;
            let (id, evals) = plan_new(&d.state, &live, &req.name, &spec);
            Ok(Ok((id, evals, spec)))
        })?;
        let (id, evals, spec) = match planned {
            Err(already_created) => return Ok(already_created),
            Ok(p) => p,
        };
        let Some(chosen) = evals.iter().find(|e| e.chosen) else {
            return Err(unplaceable(req, &evals));
        };
        let warning = match spec.ha {
            true => ctx.read(|d| n_plus_1_warning(&d.state, chosen.node_id, &req.name, id, &spec)),
            false => None,
        };
        if let (true, Some(why)) = (req.strict, &warning) {
            return Err(Error::NoCapacity(format!("refused (--strict): {why}")));
        }
        let vm = Vm { request_id: req.request_id.clone(), ..Vm::placed(id, &req.name, spec, chosen.node_id, now_ms()) };
        match ctx.propose_as_leader(Command::CreateVm { vm: Box::new(vm), at_ms: now_ms() }).await? {
            CmdResponse::Vm(vm) => {
                info!(placed_on = %chosen.node, "vm created");
                let vm = ctx.read(|d| to_pb::vm(&d.state, &vm));
                return Ok(pb::Vm { warning, ..vm });
            }
            CmdResponse::Refused(r @ (Refusal::NoLongerFits { .. } | Refusal::VmIdTaken { .. })) => {
                info!(reason = %r, "placement lost a race; planning again");
            }
            CmdResponse::Refused(r) => return Err(r.into()),
            other => return Err(Error::Raft(format!("unexpected response to CreateVm: {other:?}"))),
        }
    }
    Err(Error::Unavailable(format!("VM {} lost the placement race {PLACEMENT_ATTEMPTS} times; retry", req.name)))
}

/// A new VM's disks against the most room any host reports on their
/// storage: disks bigger than that fit nowhere, however they are placed.
fn disks_fit_somewhere(state: &ClusterState, live: &Liveness, spec: &VmSpec) -> Result<()> {
    let mut need: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    // A clone of an image starts thin: not counted.
    for disk in spec.disks.iter().filter(|d| d.volume.is_none() && d.image.is_none()) {
        *need.entry(disk.storage.as_str()).or_default() += disk.size_bytes;
    }
    for (domain, bytes) in need {
        if let Some((free, host)) = live.most_free(state, domain).filter(|(free, _)| bytes > *free) {
            return Err(Error::NoCapacity(format!(
                "the VM's disks need {} GiB on storage {domain}, and no host has that much free there (the most is {} GiB, on {host})",
                gib(bytes),
                gib(free)
            )));
        }
    }
    Ok(())
}

/// Bytes in GiB with one decimal, for messages.
fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 30))
}

/// What a new HA VM on `node` does to N+1 (every host's HA VMs can
/// restart on the others): `None` if the cluster stays N+1, else a warning
/// that says whether this VM broke it or it was broken before.
fn n_plus_1_warning(state: &ClusterState, node: u64, name: &str, id: u64, spec: &VmSpec) -> Option<String> {
    let settings = &state.meta.settings.placement;
    let mut nodes = state.scheduler_view(&Default::default(), None);
    let mut ha = state.ha_requests();
    let before = scheduler::ha_reservation(&nodes, &ha, settings);
    let host = nodes.iter_mut().find(|n| n.id == node)?;
    host.allocated_vcpus += u64::from(spec.vcpus);
    host.allocated_memory_mib += spec.memory_mib;
    ha.entry(node).or_default().push(state.vm_request_of(id, name, spec));
    let after = scheduler::ha_reservation(&nodes, &ha, settings);
    if after.n_plus_1 {
        return None;
    }
    let losing =
        after.worst.map(|w| format!(": losing {w} would leave HA VMs with nowhere to restart")).unwrap_or_default();
    Some(match before.n_plus_1 {
        true => format!(
            "with HA VM {name} the cluster is no longer N+1{losing}; `kvmesh cluster capacity` shows the reserve"
        ),
        false => format!(
            "the cluster is not N+1, before HA VM {name} as after{losing}; `kvmesh cluster capacity` shows the reserve"
        ),
    })
}

/// Why no node took the VM: one line per node.
fn unplaceable(req: &pb::CreateVmRequest, evals: &[scheduler::Evaluation]) -> Error {
    let rejections: Vec<scheduler::NodeRejection> = evals
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Rejected(reason) => {
                Some(scheduler::NodeRejection { node: e.node.clone(), reason: reason.clone() })
            }
            Outcome::Feasible(_) => None,
        })
        .collect();
    Error::NoCapacity(format!(
        "cannot place VM {} ({} vCPUs, {} MiB): no node fits\n{}",
        req.name,
        req.vcpus,
        req.memory_mib,
        scheduler::explain_rejections(&rejections)
    ))
}

/// Each node's filter result and score, for an existing VM or a spec. Runs
/// on the leader, which alone knows which hosts are live.
fn explain(ctx: &NodeCtx, leader: &LeaderView, req: &pb::ExplainRequest) -> Result<pb::Explanation> {
    let spec = req.spec.as_ref().map(validate_create).transpose()?;
    let live = leader.liveness();
    ctx.read(|d| {
        await_liveness(&d.state, &live)?;
        let settings = &d.state.meta.settings.placement;
        let (name, evals) = match (&spec, &req.spec) {
            (Some(spec), Some(r)) => {
                let spec = completed(&d.state, spec)?;
                disks_fit_somewhere(&d.state, &live, &spec)?;
                (r.name.clone(), plan_new(&d.state, &live, &r.name, &spec).1)
            }
            _ => {
                let vm = d.state.vm_by_name(&req.name).ok_or_else(|| Error::NotFound(d.state.unknown_vm(&req.name)))?;
                let nodes = d.state.scheduler_view(&live.host_facts(&d.state), Some(vm.id));
                (vm.name.clone(), scheduler::explain(&nodes, &d.state.request_for(vm), settings))
            }
        };
        Ok(to_pb::explanation(&name, settings, &evals))
    })
}

/// The longest description `vm set` accepts.
const MAX_DESCRIPTION_BYTES: usize = 4096;

/// `vm set` as commands: the size and hardware change (checked against the
/// VM's host), then the rest, in one entry.
fn validate_update(req: &pb::UpdateVmRequest) -> Result<Vec<Command>> {
    let relabel = !req.labels.is_empty() || !req.unlabel.is_empty();
    if let Some(ci) = &req.cloud_init {
        crate::cloud_init::check(ci).map_err(Error::InvalidArgument)?;
    }
    let change = from_pb::vm_change(req).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if req.description.is_none() && req.priority.is_none() && !relabel && change.is_none() {
        return Err(Error::InvalidArgument(
            "nothing to change: give --vcpus, --memory, --ha/--no-ha, --firmware, --machine, --cpu-model, --boot-order, --cloud-init, --ssh-key, --hostname, --no-cloud-init, --description, --priority, --label or --unlabel".into(),
        ));
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
    let set = from_pb::labels(&req.labels).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut cmds = Vec::new();
    if let Some(change) = change {
        cmds.push(Command::ConfigureVm { name: req.name.clone(), change, at_ms: now_ms() });
    }
    if req.description.is_some() || req.priority.is_some() {
        let (description, priority) = (req.description.clone(), req.priority);
        cmds.push(Command::UpdateVm { name: req.name.clone(), description, priority });
    }
    if relabel {
        cmds.push(Command::LabelVm { name: req.name.clone(), set, unset: req.unlabel.clone() });
    }
    Ok(cmds)
}

fn list(ctx: &NodeCtx) -> pb::ListVmsResponse {
    // By name, through the name index.
    ctx.read(|d| pb::ListVmsResponse {
        vms: d.state.vm_names().filter_map(|id| d.state.vms.get(&id)).map(|v| to_pb::vm(&d.state, v)).collect(),
    })
}

fn get(ctx: &NodeCtx, name: &str) -> Result<pb::Vm> {
    ctx.read(|d| d.state.vm_by_name(name).map(|v| to_pb::vm(&d.state, v)).ok_or_else(|| d.state.unknown_vm(name)))
        .map_err(Error::NotFound)
}

/// The VM a write answered with, as the API shows it.
fn answered_vm(ctx: &NodeCtx, name: &str, response: CmdResponse) -> Result<pb::Vm> {
    match response {
        CmdResponse::Vm(vm) => Ok(ctx.read(|d| to_pb::vm(&d.state, &vm))),
        CmdResponse::Refused(r) => Err(ctx.refused(r)),
        CmdResponse::Batch(answers) => match answers.into_iter().find(|a| matches!(a, CmdResponse::Refused(_))) {
            Some(CmdResponse::Refused(r)) => Err(ctx.refused(r)),
            _ => get(ctx, name),
        },
        CmdResponse::Done => get(ctx, name),
    }
}

/// The leader-only requests of this service, each forwarded to the same RPC.
#[derive(Clone)]
struct Create(pb::CreateVmRequest, VmSpec, Arc<LeaderView>);
#[derive(Clone)]
struct Explain(pb::ExplainRequest, Arc<LeaderView>);
#[derive(Clone)]
struct ConsistentList(pb::ListVmsRequest);
#[derive(Clone)]
struct ConsistentGet(pb::GetVmRequest);

impl LeaderCall for Create {
    type Reply = pb::Vm;
    async fn on_leader(&self, ctx: &NodeCtx) -> Result<pb::Vm> {
        create_on_leader(ctx, &self.2, &self.0, &self.1).await
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> std::result::Result<pb::Vm, Status> {
        VmsClient::new(ch).create(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
}

impl LeaderCall for Explain {
    type Reply = pb::Explanation;
    async fn on_leader(&self, ctx: &NodeCtx) -> Result<pb::Explanation> {
        explain(ctx, &self.1, &self.0)
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> std::result::Result<pb::Explanation, Status> {
        VmsClient::new(ch).explain(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
}

impl LeaderCall for ConsistentList {
    type Reply = pb::ListVmsResponse;
    async fn on_leader(&self, ctx: &NodeCtx) -> Result<pb::ListVmsResponse> {
        ctx.ensure_linearizable().await?;
        Ok(list(ctx))
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> std::result::Result<pb::ListVmsResponse, Status> {
        VmsClient::new(ch).list(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
}

impl LeaderCall for ConsistentGet {
    type Reply = pb::Vm;
    async fn on_leader(&self, ctx: &NodeCtx) -> Result<pb::Vm> {
        ctx.ensure_linearizable().await?;
        get(ctx, &self.0.name)
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> std::result::Result<pb::Vm, Status> {
        VmsClient::new(ch).get(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
}

#[tonic::async_trait]
impl pb::vms_server::Vms for VmsService {
    async fn create(&self, request: Request<pb::CreateVmRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let spec = validate_create(&req)?;
        let vm = self.ctx.leader_call(forwarded, Create(req, spec, self.leader.clone())).await?;
        Ok(Response::new(vm))
    }

    async fn list(
        &self,
        request: Request<pb::ListVmsRequest>,
    ) -> std::result::Result<Response<pb::ListVmsResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let r =
            if req.consistent { self.ctx.leader_call(forwarded, ConsistentList(req)).await? } else { list(&self.ctx) };
        Ok(Response::new(self.with_observed_list(r).await))
    }

    async fn get(&self, request: Request<pb::GetVmRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let r = if req.consistent {
            self.ctx.leader_call(forwarded, ConsistentGet(req)).await?
        } else {
            get(&self.ctx, &req.name)?
        };
        Ok(Response::new(self.with_observed(r).await))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteVmRequest>,
    ) -> std::result::Result<Response<pb::DeleteVmResponse>, Status> {
        let req = request.into_inner();
        let cmd = Command::DeleteVm { name: req.name.clone(), keep_disks: req.keep_disks, at_ms: now_ms() };
        match self.ctx.propose(cmd).await? {
            CmdResponse::Refused(r) => Err(self.ctx.refused(r).into()),
            _ => Ok(Response::new(pb::DeleteVmResponse {})),
        }
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> std::result::Result<Response<pb::Explanation>, Status> {
        let forwarded = is_forwarded(&request);
        let e = self.ctx.leader_call(forwarded, Explain(request.into_inner(), self.leader.clone())).await?;
        Ok(Response::new(e))
    }

    async fn migrate(
        &self,
        request: Request<pb::MigrateVmRequest>,
    ) -> std::result::Result<Response<pb::MigrateVmReply>, Status> {
        let forwarded = is_forwarded(&request);
        let call = super::migrate::Migrate(request.into_inner(), self.leader.clone());
        Ok(Response::new(self.ctx.leader_call(forwarded, call).await?))
    }

    async fn recover(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let name = request.into_inner().name;
        self.action(&name, Command::RecoverVm { name: name.clone(), at_ms: now_ms() }).await
    }

    async fn update(&self, request: Request<pb::UpdateVmRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let req = request.into_inner();
        let mut cmds = validate_update(&req)?;
        if req.firmware.as_deref() == Some("uefi") {
            self.host_boots_uefi(&req.name).await?;
        }
        // A size or hardware change the VM's host cannot take is refused
        // before anything else of the request is written.
        if matches!(cmds.first(), Some(Command::ConfigureVm { .. })) && cmds.len() > 1 {
            let configure = cmds.remove(0);
            answered_vm(&self.ctx, &req.name, self.ctx.propose(configure).await?)?;
        }
        let cmd = if cmds.len() == 1 { cmds.remove(0) } else { Command::Batch(cmds) };
        self.action(&req.name, cmd).await
    }

    async fn start(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let name = request.into_inner().name;
        let cmd = Command::SetDesired { name: name.clone(), desired: Desired::Running, force: false, at_ms: now_ms() };
        self.action(&name, cmd).await
    }

    async fn stop(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let req = request.into_inner();
        let cmd = Command::SetDesired {
            name: req.name.clone(),
            desired: Desired::Stopped,
            force: req.force,
            at_ms: now_ms(),
        };
        self.action(&req.name, cmd).await
    }

    async fn restart(&self, request: Request<pb::VmActionRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let name = request.into_inner().name;
        self.action(&name, Command::RestartVm { name: name.clone(), at_ms: now_ms() }).await
    }

    async fn add_disk(&self, request: Request<pb::AddDiskRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let req = request.into_inner();
        let spec = req.disk.unwrap_or_default();
        if spec.size_bytes == 0 {
            return Err(Error::InvalidArgument("a disk needs a size, such as --size 10G".into()).into());
        }
        let storage = if spec.storage.is_empty() { DEFAULT_STORAGE.to_string() } else { spec.storage };
        let disk = Disk { index: 0, size_bytes: spec.size_bytes, storage, image: None, volume: None };
        self.action(&req.name, Command::AddDisk { name: req.name.clone(), disk, at_ms: now_ms() }).await
    }

    async fn add_nic(&self, request: Request<pb::AddNicRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let nic = kvmesh_raft::wire::from_pb::nic(&r.nic.unwrap_or_default())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // A running guest gets it live (the agent's `SyncNics`).
        self.action(&r.vm, Command::AddNic { name: r.vm.clone(), nic, at_ms: now_ms() }).await
    }

    async fn remove_nic(
        &self,
        request: Request<pb::RemoveNicRequest>,
    ) -> std::result::Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let mac = r.mac.parse::<kvmesh_raft::networks::Mac>().map_err(Error::InvalidArgument)?;
        self.action(&r.vm, Command::RemoveNic { name: r.vm.clone(), mac, at_ms: now_ms() }).await
    }

    async fn resize_disk(
        &self,
        request: Request<pb::ResizeDiskRequest>,
    ) -> std::result::Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let cmd =
            Command::ResizeDisk { name: r.name.clone(), index: r.index, size_bytes: r.size_bytes, at_ms: now_ms() };
        self.action(&r.name, cmd).await
    }

    async fn remove_disk(
        &self,
        request: Request<pb::RemoveDiskRequest>,
    ) -> std::result::Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        self.action(&r.name, Command::RemoveDisk { name: r.name.clone(), index: r.index, at_ms: now_ms() }).await
    }

    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let req = request.into_inner();
        crate::config::validate_object_name("snapshot", &req.snapshot).map_err(Error::InvalidArgument)?;
        // qemu-img takes an all-digit name for a snapshot's ID first.
        if !req.snapshot.chars().any(|c| c.is_ascii_lowercase()) {
            return Err(Error::InvalidArgument(format!("snapshot name {:?} needs a letter", req.snapshot)).into());
        }
        let (op, kind) = match pb::SnapshotAction::try_from(req.action) {
            Ok(pb::SnapshotAction::Create) => (SnapshotOp::Create, pb::DiskOpKind::DiskOpSnapshotCreate),
            Ok(pb::SnapshotAction::Revert) => (SnapshotOp::Revert, pb::DiskOpKind::DiskOpSnapshotRevert),
            Ok(pb::SnapshotAction::Delete) => (SnapshotOp::Delete, pb::DiskOpKind::DiskOpSnapshotDelete),
            _ => return Err(Error::InvalidArgument("give a snapshot action: create, revert or delete".into()).into()),
        };
        // Checked against the record first, so nothing runs on the disks
        // for a name that is taken or unknown.
        self.ctx.read(|d| {
            let vm = d.state.vm_by_name(&req.name).ok_or_else(|| Error::NotFound(d.state.unknown_vm(&req.name)))?;
            let exists = vm.snapshots.iter().any(|s| s.name == req.snapshot);
            match op {
                SnapshotOp::Create if exists => Err(Error::AlreadyExists(format!(
                    "VM {} already has a snapshot named {:?}",
                    req.name, req.snapshot
                ))),
                SnapshotOp::Revert | SnapshotOp::Delete if !exists => Err(Error::NotFound(format!(
                    "VM {} has no snapshot named {:?}; see `kvmesh vm snapshot list {}`",
                    req.name, req.snapshot, req.name
                ))),
                _ => Ok(()),
            }
        })?;
        let disk_op = pb::DiskOpRequest { vm: req.name.clone(), op: kind as i32, name: req.snapshot.clone() };
        disk_ops::run(&self.ctx, disk_op).await?;
        let cmd = Command::Snapshot { name: req.name.clone(), snapshot: req.snapshot, op, at_ms: now_ms() };
        self.action(&req.name, cmd).await
    }

    async fn template(
        &self,
        request: Request<pb::TemplateRequest>,
    ) -> std::result::Result<Response<pb::ImageInfo>, Status> {
        let req = request.into_inner();
        crate::config::validate_object_name("image", &req.image).map_err(Error::InvalidArgument)?;
        let boot_storage = self.ctx.read(|d| {
            if d.state.image_by_name(&req.image).is_some() {
                return Err(Error::AlreadyExists(format!("an image named {:?} already exists", req.image)));
            }
            let vm = d.state.vm_by_name(&req.name).ok_or_else(|| Error::NotFound(d.state.unknown_vm(&req.name)))?;
            let boot = vm.spec.disks.iter().find(|d| d.index == 0).ok_or_else(|| {
                Error::FailedPrecondition(format!("VM {} has no boot disk (disk 0) to make a template of", req.name))
            })?;
            let shared = d.state.storage_by_name(&boot.storage).is_some_and(|s| s.kind.is_shared());
            Ok((boot.storage.clone(), shared))
        })?;
        let disk_op = pb::DiskOpRequest {
            vm: req.name.clone(),
            op: pb::DiskOpKind::DiskOpTemplate as i32,
            name: req.image.clone(),
        };
        let (made, host) = disk_ops::run(&self.ctx, disk_op).await?;
        let image = Image {
            id: made.image_id,
            name: req.image.clone(),
            storage: boot_storage.0,
            kind: ImageKind::Disk,
            format: made.format,
            virtual_bytes: made.virtual_bytes,
            file_bytes: made.file_bytes,
            sha256: made.sha256,
            volume: made.volume,
            host: (!boot_storage.1).then_some(host),
            created_at_ms: now_ms(),
        };
        if let CmdResponse::Refused(r) =
            self.ctx.propose(Command::AddImage { image: image.clone(), at_ms: now_ms() }).await?
        {
            // The file stays unrecorded; put it in the trash through a
            // record-less delete is not possible, so say where it is.
            return Err(Error::from(r).into());
        }
        Ok(Response::new(self.ctx.read(|d| to_pb::image(&d.state, &image))))
    }

    type AttachStream = crate::api::attach::AttachStream;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<pb::AttachFrame>>,
    ) -> std::result::Result<Response<Self::AttachStream>, Status> {
        Ok(Response::new(crate::api::attach::attach(&self.ctx, Box::pin(request.into_inner())).await?))
    }

    async fn cdrom(&self, request: Request<pb::CdromRequest>) -> std::result::Result<Response<pb::Vm>, Status> {
        let req = request.into_inner();
        let change = kvmesh_raft::hardware::VmChange {
            cdrom: Some(req.image.clone().filter(|i| !i.is_empty())),
            ..Default::default()
        };
        self.action(&req.vm, Command::ConfigureVm { name: req.vm.clone(), change, at_ms: now_ms() }).await
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

/// The id and address of the host `pick` names for VM `name`.
fn host_of(ctx: &NodeCtx, name: &str, pick: impl Fn(&kvmesh_raft::model::Vm) -> Option<u64>) -> Option<(u64, String)> {
    ctx.read(|d| {
        let node = d.state.vm_by_name(name).and_then(&pick).and_then(|id| d.state.nodes.get(&id))?;
        Some((node.id, node.address.clone()))
    })
}

impl VmsService {
    /// A write about one VM, from any node; answered with the VM.
    /// Answers `name`'s VM after `cmd`.
    async fn action(&self, name: &str, cmd: Command) -> std::result::Result<Response<pb::Vm>, Status> {
        let response = self.ctx.propose(cmd).await?;
        Ok(Response::new(answered_vm(&self.ctx, name, response)?))
    }

    /// The VM's record as the leader has it now, without what its host and
    /// guest report: what a writer compares its spec with (REST's PUT),
    /// without a call to the host for each write.
    pub async fn record(&self, name: &str) -> std::result::Result<pb::Vm, Status> {
        let req = pb::GetVmRequest { name: name.into(), consistent: true };
        Ok(self.ctx.leader_call(false, ConsistentGet(req)).await?)
    }

    /// Fills `observed`: the hosts whose latest heartbeat reports the VM
    /// running (the leader's view), so anyone can check nothing runs twice.
    async fn with_observed(&self, mut vm: pb::Vm) -> pb::Vm {
        if vm.migrating_to.is_some() {
            vm.migration_progress = self.migration_progress(&vm.name).await;
        }
        if vm.state == pb::VmState::Running as i32 {
            vm.guest = self.guest_info(&vm.name).await;
        }
        if let Some(obs) = self.leader.observed(&self.ctx).await {
            vm.lease_holder = obs.lease_holder.get(&vm.id).cloned();
            vm.observed = obs.vms.into_iter().find(|o| o.vm_id == vm.id).map(|o| o.nodes).unwrap_or_default();
            vm.observed_known = true;
        }
        vm
    }

    /// Refuses UEFI for a VM whose host has said it cannot boot it (no
    /// OVMF): its next start, a restart included, would fail there.
    async fn host_boots_uefi(&self, name: &str) -> std::result::Result<(), Status> {
        let Some((id, _)) = host_of(&self.ctx, name, |vm| vm.placement.map(|p| p.node)) else { return Ok(()) };
        let host = self.ctx.read(|d| d.state.nodes.get(&id).map(|n| n.name.clone())).unwrap_or_default();
        let Some(obs) = self.leader.observed(&self.ctx).await else { return Ok(()) };
        match obs.uefi_missing.get(&host) {
            Some(why) => Err(Status::failed_precondition(format!(
                "VM {name}'s host {host} cannot boot UEFI guests ({why}); install ovmf there, or move the VM to a host that can (`kvmesh vm migrate {name}`) first"
            ))),
            None => Ok(()),
        }
    }

    /// What the guest agent says, from the VM's host (briefly: no answer
    /// within 3 s leaves it out).
    async fn guest_info(&self, name: &str) -> Option<pb::GuestInfo> {
        let ctx = &self.ctx;
        let host = host_of(ctx, name, |vm| vm.placement.map(|p| p.node))?;
        if host.0 == ctx.id {
            let asked = crate::agent::local_guest_info(ctx, name);
            return tokio::time::timeout(std::time::Duration::from_secs(3), asked).await.ok()?.ok();
        }
        let mut client = pb::host_client::HostClient::new(ctx.channel(&host.1).ok()?);
        let mut r = Request::new(pb::GetVmRequest { name: name.to_string(), consistent: false });
        r.set_timeout(std::time::Duration::from_secs(3));
        client.get_guest_info(r).await.ok().map(|r| r.into_inner())
    }

    /// How far a VM's live migration is, from its source host (briefly: a
    /// source that does not answer leaves it out).
    async fn migration_progress(&self, name: &str) -> Option<pb::MigrationProgress> {
        let ctx = &self.ctx;
        let source = host_of(ctx, name, |vm| vm.migration.map(|m| m.source))?;
        if source.0 == ctx.id {
            return crate::agent::local_progress(ctx, name).await.ok();
        }
        let mut client = pb::host_client::HostClient::new(ctx.channel(&source.1).ok()?);
        let mut r = Request::new(pb::GetVmRequest { name: name.to_string(), consistent: false });
        r.set_timeout(std::time::Duration::from_secs(1));
        client.get_migration_progress(r).await.ok().map(|r| r.into_inner())
    }

    async fn with_observed_list(&self, mut r: pb::ListVmsResponse) -> pb::ListVmsResponse {
        if let Some(obs) = self.leader.observed(&self.ctx).await {
            let map: std::collections::HashMap<String, Vec<String>> =
                obs.vms.into_iter().map(|o| (o.vm_id, o.nodes)).collect();
            for vm in &mut r.vms {
                vm.observed = map.get(&vm.id).cloned().unwrap_or_default();
                vm.observed_known = true;
                vm.lease_holder = obs.lease_holder.get(&vm.id).cloned();
            }
        }
        r
    }
}
