//! Live migrations in the replicated state: begin, finish, abort.
//!
//! A stopped VM moves at once, cold: its record goes to the target.
//!
//! The record on the VM ([`Migration`]) is the one truth about a migration
//! in flight. `begin` checks everything that can be checked before any
//! byte moves (a running VM, a target that is up and fits it, storage the
//! target reaches, no other migration of the VM, the concurrency limits)
//! and reserves the target's epoch and capacity. The VM stays placed on the
//! source until `finish` commits; only then may the target resume its
//! copy. `abort` leaves the placement as it was. A host that goes down
//! aborts every migration it takes part in (see `node_down`), so a
//! migration never outlives either end.

use super::{Refusal, Response};
use crate::model::{ClusterState, Desired, Migration, NodeState, Vm, VmId, VmState};
use crate::storage::Trashed;
use crate::types::NodeId;

/// At most this many migrations leave one host at a time.
pub const MAX_OUTGOING_PER_HOST: usize = 2;
/// At most this many migrations run in the whole cluster at a time.
pub const MAX_IN_CLUSTER: usize = 4;

impl ClusterState {
    pub(super) fn begin_migration(
        &mut self,
        name: &str,
        target: NodeId,
        bandwidth_mib: u64,
        copy_storage: bool,
        at_ms: u64,
    ) -> Response {
        if let Some(moved) = self.cold_move(name, target, copy_storage, at_ms) {
            return moved;
        }
        match self.migration_for(name, target, copy_storage) {
            Ok((id, source)) => {
                let target_name = self.node_name(target);
                let source_name = self.node_name(source);
                // Only worth remembering when there is a local disk to copy.
                let copy_storage =
                    copy_storage && self.vms.get(&id).is_some_and(|v| self.local_disks(v).next().is_some());
                let Some(vm) = self.vms.get_mut(&id) else { return Response::Refused(Refusal::UnknownVmId { id }) };
                vm.last_epoch += 1;
                vm.migration = Some(Migration {
                    source,
                    target,
                    epoch: vm.last_epoch,
                    started_at_ms: at_ms,
                    bandwidth_mib,
                    copy_storage,
                });
                let vm = vm.clone();
                self.touch_vm(id);
                let with = if copy_storage { " (copying its local disks)" } else { "" };
                self.push_event(
                    at_ms,
                    "migration",
                    format!("vm {name}: live migration from {source_name} to {target_name} started{with}"),
                );
                Response::Vm(Box::new(vm))
            }
            Err(refusal) => Response::Refused(refusal),
        }
    }

    /// A stopped VM moves at once: its record goes to `target` at a new
    /// epoch (the old host then removes its domain, keeping the disks).
    /// With disks on local storage and `copy_storage`, it moves once the
    /// target has copied them: a migration record until then (see
    /// `node/src/agent/cold_copy.rs`). `None` when the VM is not a stopped
    /// one (a live migration, then).
    fn cold_move(&mut self, name: &str, target: NodeId, copy_storage: bool, at_ms: u64) -> Option<Response> {
        let refuse = |reason: String| Some(Response::Refused(Refusal::Migration { vm: name.to_string(), reason }));
        let id = self.vm_names.get(name).copied()?;
        let vm = self.vms.get(&id)?;
        let p = vm.placement?;
        if vm.desired != Desired::Stopped || vm.deleting.is_some() {
            return None;
        }
        if let Some(m) = vm.migration {
            let to = self.node_name(m.target);
            return refuse(format!("it is already moving to {to}; wait for it (`kvmesh vm get {name}`)"));
        }
        let stopped = vm.reported.as_ref().is_some_and(|r| r.state != VmState::Running && r.epoch == p.epoch);
        if !stopped {
            return refuse("it is stopping; move it once it has stopped (`kvmesh vm get`)".into());
        }
        if target == p.node {
            return refuse(format!("it is already on {}", self.node_name(target)));
        }
        let Some(node) = self.nodes.get(&target) else {
            return Some(Response::Refused(Refusal::UnknownNode { id: target }));
        };
        if node.state != NodeState::Up {
            return refuse(format!("{} is {}, not up; pick another host", node.name, node.state.as_str()));
        }
        let copies = self.local_disks(vm).next().is_some();
        if let Some(disk) = self.local_disks(vm).next().filter(|_| !copy_storage) {
            return refuse(format!(
                "disk {} is on {:?}, storage local to {}; move it with --copy-storage to copy its local disks",
                disk.index,
                disk.storage,
                self.node_name(p.node)
            ));
        }
        if let Err(why) = self.images_shared(vm) {
            return refuse(why);
        }
        if let Err(r) = self.check_placement(target, &self.live_request(vm, copy_storage)) {
            return refuse(r.to_string());
        }
        if copies {
            if let Err(why) = self.migration_room(p.node) {
                return refuse(why);
            }
        }
        let (from, to) = (self.node_name(p.node), node.name.clone());
        let vm = self.vms.get_mut(&id)?;
        vm.last_epoch += 1;
        if copies {
            let epoch = vm.last_epoch;
            vm.migration =
                Some(Migration { source: p.node, target, epoch, started_at_ms: at_ms, bandwidth_mib: 0, copy_storage });
        } else {
            vm.placement = Some(crate::model::Placement { node: target, epoch: vm.last_epoch });
            vm.reported = None;
        }
        let vm = vm.clone();
        self.touch_vm(id);
        let message = match copies {
            true => format!("vm {name} (stopped): copying its local disks from {from} to {to}"),
            false => format!("vm {name} (stopped) moved from {from} to {to}"),
        };
        self.push_event(at_ms, "migration", message);
        Some(Response::Vm(Box::new(vm)))
    }

    /// Why another migration may not begin now from `source`, if not: the
    /// cluster's and the host's limits.
    fn migration_room(&self, source: NodeId) -> Result<(), String> {
        let migrating: Vec<Migration> = self.vms.values().filter_map(|v| v.migration).collect();
        if migrating.len() >= MAX_IN_CLUSTER {
            return Err(format!(
                "{MAX_IN_CLUSTER} migrations are already in flight in the cluster; retry when one ends"
            ));
        }
        if migrating.iter().filter(|m| m.source == source).count() >= MAX_OUTGOING_PER_HOST {
            return Err(format!(
                "{MAX_OUTGOING_PER_HOST} migrations are already leaving {}; retry when one ends",
                self.node_name(source)
            ));
        }
        Ok(())
    }

    /// The VM's id and source host, if it may start migrating to `target`.
    fn migration_for(&self, name: &str, target: NodeId, copy_storage: bool) -> Result<(VmId, NodeId), Refusal> {
        let refuse = |reason: String| Refusal::Migration { vm: name.to_string(), reason };
        let id = self.vm_names.get(name).copied().ok_or_else(|| Refusal::UnknownVm { name: name.to_string() })?;
        let vm = self.vms.get(&id).ok_or(Refusal::UnknownVmId { id })?;
        if vm.deleting.is_some() {
            return Err(Refusal::VmBeingDeleted { name: name.to_string() });
        }
        if let Some(m) = vm.migration {
            return Err(refuse(format!(
                "a migration to {} is already in flight; wait for it (`kvmesh vm get {name}`)",
                self.node_name(m.target)
            )));
        }
        self.moves_live(vm, copy_storage).map_err(refuse)?;
        let source = vm.placement.map(|p| p.node).ok_or_else(|| refuse("it is not placed".into()))?;
        if target == source {
            return Err(refuse(format!("it already runs on {}", self.node_name(target))));
        }
        let node = self.nodes.get(&target).ok_or(Refusal::UnknownNode { id: target })?;
        if node.state != NodeState::Up {
            return Err(refuse(format!("{} is {}, not up; pick another host", node.name, node.state.as_str())));
        }
        self.migration_room(source).map_err(refuse)?;
        self.check_placement(target, &self.live_request(vm, copy_storage)).map_err(|r| refuse(r.to_string()))?;
        Ok((id, source))
    }

    /// The scheduler's request for `vm` as a migration's target sees it:
    /// with its local disks copied, they no longer tie it to its host
    /// ([`Self::moves_live`] has refused local images).
    pub fn live_request(&self, vm: &Vm, copy_storage: bool) -> kvmesh_scheduler::VmRequest {
        let mut req = self.request_for(vm);
        if copy_storage {
            req.volumes_on = None;
        }
        req
    }

    /// The disks of `vm` whose storage is local to a host.
    fn local_disks<'a>(&'a self, vm: &'a Vm) -> impl Iterator<Item = &'a crate::storage::Disk> + 'a {
        vm.spec.disks.iter().filter(|d| self.storage_by_name(&d.storage).is_some_and(|s| !s.kind.is_shared()))
    }

    /// Whether `vm` can move live at all (whatever the target): it runs,
    /// and every disk is on shared storage, or on local storage with
    /// `copy_storage`; the images it boots from or was cloned from are on
    /// shared storage. Why not, if not.
    pub fn moves_live(&self, vm: &Vm, copy_storage: bool) -> Result<(), String> {
        let Some(placement) = vm.placement else {
            return Err("it is not placed on any host; start it first".into());
        };
        let running = vm.reported.as_ref().is_some_and(|r| r.state == VmState::Running && r.epoch == placement.epoch);
        if vm.desired != Desired::Running || !running {
            return Err("it is not running, and live migration moves a running guest; start it first".into());
        }
        let source = self.node_name(placement.node);
        if let Some(disk) = self.local_disks(vm).next().filter(|_| !copy_storage) {
            return Err(format!(
                "disk {} is on {:?}, storage local to {source}; move it with --copy-storage to copy its local disks \
                 as it runs, or keep its disks on shared storage",
                disk.index, disk.storage
            ));
        }
        self.images_shared(vm)
    }

    /// Whether the images `vm` boots from or was cloned from are on shared
    /// storage (a copy moves its disks, never the images). Why not, if not.
    fn images_shared(&self, vm: &Vm) -> Result<(), String> {
        let images = vm.spec.disks.iter().filter_map(|d| d.image.as_deref());
        for image in images.chain(vm.spec.kernel.as_deref()).chain(vm.spec.initrd.as_deref()) {
            if let Some(host) = self.image_by_name(image).and_then(|i| i.host) {
                return Err(format!(
                    "image {image} (a boot file or a disk's base) is on storage local to {}; \
                     import it to shared storage to move the VM",
                    self.node_name(host)
                ));
            }
        }
        Ok(())
    }

    pub(super) fn finish_migration(&mut self, id: VmId, epoch: u64, downtime_ms: Option<u64>, at_ms: u64) -> Response {
        let Some(m) = self.vms.get(&id).and_then(|v| v.migration).filter(|m| m.epoch == epoch) else {
            // Aborted meanwhile (a host went down): the record decides.
            return match self.vms.contains_key(&id) {
                true => Response::Refused(Refusal::StaleReport),
                false => Response::Refused(Refusal::UnknownVmId { id }),
            };
        };
        if m.copy_storage {
            self.move_local_volumes(id, m.source, m.target);
        }
        let Some(vm) = self.vms.get_mut(&id) else { return Response::Refused(Refusal::UnknownVmId { id }) };
        vm.migration = None;
        let stopped = vm.desired == Desired::Stopped;
        vm.placement = Some(crate::model::Placement { node: m.target, epoch });
        vm.reported = None;
        // Off a draining host: this move is done.
        if vm.moving_from == Some(m.source) {
            vm.moving_from = None;
        }
        let name = vm.name.clone();
        self.touch_vm(id);
        let took = at_ms.saturating_sub(m.started_at_ms);
        let (from, to) = (self.node_name(m.source), self.node_name(m.target));
        let downtime = downtime_ms.map(|d| format!(", downtime {d} ms")).unwrap_or_default();
        let copied = if m.copy_storage { " with its local disks" } else { "" };
        let how = if stopped { "(stopped) moved" } else { "migrated live" };
        self.push_event(
            at_ms,
            "migration",
            format!("vm {name} {how} from {from} to {to}{copied} in {took} ms{downtime}"),
        );
        Response::Done
    }

    /// A finished copy: the local disks' volumes are now the target's, and
    /// the source's files go to the trash.
    fn move_local_volumes(&mut self, id: VmId, source: NodeId, target: NodeId) {
        let local: Vec<u32> =
            self.vms.get(&id).map_or_else(Vec::new, |v| self.local_disks(v).map(|d| d.index).collect());
        let mut trash = Vec::new();
        if let Some(vm) = self.vms.get_mut(&id) {
            for disk in vm.spec.disks.iter_mut().filter(|d| local.contains(&d.index)) {
                if let Some(volume) = disk.volume.as_mut() {
                    volume.host = Some(target);
                }
                trash.push(Trashed { storage: disk.storage.clone(), volume: disk.volume_name(id), host: Some(source) });
            }
        }
        for t in trash {
            self.trash(t);
        }
    }

    /// An aborted copy: the target's copies of the local disks are garbage.
    fn trash_copies(&mut self, id: VmId, target: NodeId) {
        let Some(vm) = self.vms.get(&id) else { return };
        let copies: Vec<Trashed> = self
            .local_disks(vm)
            .filter(|d| d.volume.is_none_or(|v| v.host != Some(target)))
            .map(|d| Trashed { storage: d.storage.clone(), volume: d.volume_name(id), host: Some(target) })
            .collect();
        for t in copies {
            self.trash(t);
        }
    }

    pub(super) fn abort_migration(&mut self, id: VmId, epoch: u64, reason: &str, at_ms: u64) -> Response {
        let Some(vm) = self.vms.get_mut(&id) else { return Response::Refused(Refusal::UnknownVmId { id }) };
        let Some(m) = vm.migration.filter(|m| m.epoch == epoch) else { return Response::Done };
        vm.migration = None;
        let name = vm.name.clone();
        self.touch_vm(id);
        if m.copy_storage {
            self.trash_copies(id, m.target);
        }
        let took = at_ms.saturating_sub(m.started_at_ms);
        let (from, to) = (self.node_name(m.source), self.node_name(m.target));
        self.push_event(
            at_ms,
            "vm-error",
            format!("vm {name}: migration from {from} to {to} aborted after {took} ms: {reason}"),
        );
        // Moving off a draining host that is still there: stop it and start
        // it elsewhere instead (a host that went down is handled as down).
        let draining = self.nodes.get(&m.source).is_some_and(|n| n.state == NodeState::Draining);
        if draining && self.vms.get(&id).is_some_and(|v| v.moving_from == Some(m.source)) {
            self.unplace(id, format!("moving off {from} (drain): live migration failed; stopped to start elsewhere"));
        }
        Response::Done
    }

    /// Aborts every migration `node` takes part in: it went down, so it can
    /// neither send nor receive (what its copy did is settled by epochs).
    pub(super) fn abort_migrations_of(&mut self, node: NodeId, at_ms: u64) {
        let name = self.node_name(node);
        let involved: Vec<(VmId, u64)> = self
            .vms
            .values()
            .filter_map(|v| v.migration.filter(|m| m.source == node || m.target == node).map(|m| (v.id, m.epoch)))
            .collect();
        for (id, epoch) in involved {
            self.abort_migration(id, epoch, &format!("host {name} went down"), at_ms);
        }
    }

    /// Refuses a change to a VM that is migrating.
    pub(super) fn not_migrating(&self, name: &str, what: &str) -> Result<(), Refusal> {
        let vm = self.vm_names.get(name).and_then(|id| self.vms.get(id));
        match vm.and_then(|v| v.migration) {
            Some(m) => Err(Refusal::Migration {
                vm: name.to_string(),
                reason: format!(
                    "it is migrating to {}; {what} once the migration has finished (`kvmesh vm get {name}`)",
                    self.node_name(m.target)
                ),
            }),
            None => Ok(()),
        }
    }

    fn node_name(&self, id: NodeId) -> String {
        self.nodes.get(&id).map(|n| n.name.clone()).unwrap_or_else(|| id.to_string())
    }
}
