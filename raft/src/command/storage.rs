//! Commands about storage: domains, images, a VM's disks and snapshots, and
//! the volumes waiting to be deleted.
//!
//! The rules that keep data reachable live here, once: a disk and an image
//! name domains and images that exist, an image is used only as its kind,
//! an HA VM keeps all its data on shared domains, a recorded volume is never
//! recorded again, and a volume is deleted only through the trash (after
//! its VM or image is gone), by a host that reaches it.

use super::{Refusal, Response};
use crate::model::{ClusterState, Key, VmSpec, VmState};
use crate::storage::{Disk, Image, ImageKind, Snapshot, SnapshotOp, StorageDomain, Trashed, Volume, MAX_DISKS};
use crate::types::NodeId;

impl ClusterState {
    pub(super) fn add_storage(&mut self, domain: &StorageDomain, at_ms: u64) -> Response {
        if self.storage_by_name(&domain.name).is_some() {
            return Response::Refused(Refusal::StorageNameTaken { name: domain.name.clone() });
        }
        for node in &domain.nodes {
            if self.node_by_name(node).is_none() {
                return Response::Refused(Refusal::StorageChange {
                    vm: String::new(),
                    reason: format!("no node named {node:?} for storage {:?}; see `kvmesh node list`", domain.name),
                });
            }
        }
        let mut domain = domain.clone();
        domain.id = self.new_object_id(&domain.name);
        domain.created_at_ms = at_ms;
        self.storage.insert(domain.id, domain.clone());
        self.dirty.insert(Key::Storage(domain.id));
        self.push_event(
            at_ms,
            "storage",
            format!("storage {} added ({} at {})", domain.name, domain.kind.as_str(), domain.kind.location()),
        );
        Response::Done
    }

    pub(super) fn remove_storage(&mut self, name: &str, at_ms: u64) -> Response {
        let Some(id) = self.storage_by_name(name).map(|d| d.id) else {
            return Response::Refused(Refusal::UnknownStorage { name: name.to_string() });
        };
        let disks = self.vms.values().flat_map(|v| &v.spec.disks).filter(|d| d.storage == name).count();
        let images = self.images.values().filter(|i| i.storage == name).count();
        if disks + images > 0 {
            let by = format!("{disks} disk(s) and {images} image(s)");
            return Response::Refused(Refusal::StorageInUse { name: name.to_string(), by });
        }
        let trashed = self.meta.trash.iter().filter(|t| t.storage == name).count();
        if trashed > 0 {
            let by =
                format!("{trashed} deleted volume(s) its hosts have not removed yet (a host that has it is down?)");
            return Response::Refused(Refusal::StorageInUse { name: name.to_string(), by });
        }
        self.storage.remove(&id);
        self.dirty.insert(Key::Storage(id));
        self.push_event(at_ms, "storage", format!("storage {name} removed"));
        Response::Done
    }

    pub(super) fn add_image(&mut self, image: &Image, at_ms: u64) -> Response {
        // A retried record (its first answer was lost) finds itself.
        if self.images.get(&image.id).is_some_and(|i| i.name == image.name) {
            return Response::Done;
        }
        if self.image_by_name(&image.name).is_some() {
            return Response::Refused(Refusal::ImageNameTaken { name: image.name.clone() });
        }
        if self.storage_by_name(&image.storage).is_none() {
            return Response::Refused(Refusal::UnknownStorage { name: image.storage.clone() });
        }
        if self.images.contains_key(&image.id) || image.id == 0 {
            return Response::Refused(Refusal::ImageNameTaken { name: format!("#{:016x}", image.id) });
        }
        self.images.insert(image.id, image.clone());
        self.dirty.insert(Key::Image(image.id));
        self.push_event(
            at_ms,
            "image",
            format!(
                "image {} imported into {} ({}, {} bytes)",
                image.name, image.storage, image.format, image.file_bytes
            ),
        );
        Response::Done
    }

    pub(super) fn delete_image(&mut self, name: &str, at_ms: u64) -> Response {
        let Some(image) = self.image_by_name(name).cloned() else {
            return Response::Refused(Refusal::UnknownImage { name: name.to_string() });
        };
        let users: Vec<&str> =
            self.vms.values().filter(|v| uses_image(&v.spec, name)).map(|v| v.name.as_str()).collect();
        if !users.is_empty() {
            return Response::Refused(Refusal::ImageInUse { name: name.to_string(), by: users.join(", ") });
        }
        self.images.remove(&image.id);
        self.dirty.insert(Key::Image(image.id));
        self.trash(Trashed { storage: image.storage.clone(), volume: image.volume.clone(), host: image.host });
        self.push_event(at_ms, "image", format!("image {name} deleted"));
        Response::Done
    }

    /// Fills in what a new VM's image-backed disks take from their image:
    /// its domain and its size. Then checks the whole spec's storage.
    pub fn complete_disks(&self, spec: &mut VmSpec) -> Result<(), Refusal> {
        for disk in spec.disks.iter_mut() {
            if let Some(name) = &disk.image {
                let image = self.image_of_kind(name, ImageKind::Disk, false)?;
                disk.storage = image.storage.clone();
                disk.size_bytes = disk.size_bytes.max(image.virtual_bytes);
            }
        }
        self.check_storage(spec)
    }

    /// Whether `spec`'s disks and images exist, are used as their kind, and
    /// (for an HA VM) are all on shared storage.
    pub(crate) fn check_storage(&self, spec: &VmSpec) -> Result<(), Refusal> {
        for disk in &spec.disks {
            let domain = self
                .storage_by_name(&disk.storage)
                .ok_or_else(|| Refusal::UnknownStorage { name: disk.storage.clone() })?;
            if spec.ha && !domain.kind.is_shared() {
                return Err(Refusal::HaNeedsSharedStorage {
                    what: format!("disk {}", disk.index),
                    storage: domain.name.clone(),
                });
            }
            if let Some(image) = &disk.image {
                self.image_of_kind(image, ImageKind::Disk, spec.ha)?;
            }
        }
        if let Some(kernel) = &spec.kernel {
            self.image_of_kind(kernel, ImageKind::Kernel, spec.ha)?;
        }
        if let Some(initrd) = &spec.initrd {
            self.image_of_kind(initrd, ImageKind::Initrd, spec.ha)?;
        }
        if let Some(iso) = &spec.hardware.cdrom {
            self.image_of_kind(iso, ImageKind::Iso, spec.ha)?;
        }
        Ok(())
    }

    fn image_of_kind(&self, name: &str, want: ImageKind, ha: bool) -> Result<&Image, Refusal> {
        let image = self.image_by_name(name).ok_or_else(|| Refusal::UnknownImage { name: name.to_string() })?;
        if image.kind != want {
            return Err(Refusal::ImageWrongKind {
                name: name.to_string(),
                kind: image.kind.as_str().into(),
                want: want.as_str().into(),
            });
        }
        if ha && image.host.is_some() {
            return Err(Refusal::HaNeedsSharedStorage {
                what: format!("image {name}"),
                storage: image.storage.clone(),
            });
        }
        Ok(image)
    }

    /// The host of the VM's current placement reports that it created the
    /// volume of disk `index`. Recorded once; from then on it is opened.
    pub(super) fn record_volume(&mut self, id: u64, index: u32, node: NodeId, epoch: u64, at_ms: u64) -> Response {
        let local = |s: &ClusterState, name: &str| s.storage_by_name(name).is_some_and(|d| !d.kind.is_shared());
        let Some(vm) = self.vms.get(&id) else { return Response::Refused(Refusal::StaleReport) };
        if vm.placement.map(|p| (p.node, p.epoch)) != Some((node, epoch)) {
            return Response::Refused(Refusal::StaleReport);
        }
        let Some(disk) = vm.spec.disks.iter().find(|d| d.index == index) else {
            return Response::Refused(Refusal::StaleReport);
        };
        if disk.volume.is_some() {
            return Response::Done;
        }
        let host = local(self, &disk.storage).then_some(node);
        let Some(vm) = self.vms.get_mut(&id) else { return Response::Refused(Refusal::StaleReport) };
        if let Some(disk) = vm.spec.disks.iter_mut().find(|d| d.index == index) {
            disk.volume = Some(Volume { host, created_at_ms: at_ms });
        }
        self.touch_vm(id);
        Response::Done
    }

    /// The stopped VM a disk or snapshot change acts on.
    fn stopped_vm(&mut self, name: &str, what: &str) -> Result<&mut crate::model::Vm, Refusal> {
        // A stopped VM's local disks may be being copied (a cold move).
        self.not_migrating(name, &format!("retry {what}"))?;
        let vm = self.live_vm(name)?;
        let running = vm.desired == crate::model::Desired::Running
            || vm.reported.as_ref().is_some_and(|r| r.state == VmState::Running);
        if running {
            return Err(Refusal::StorageChange {
                vm: name.to_string(),
                reason: format!("{what} needs the VM stopped; run `kvmesh vm stop {name} --wait` first"),
            });
        }
        Ok(vm)
    }

    pub(super) fn add_disk(&mut self, name: &str, disk: &Disk, at_ms: u64) -> Response {
        let Some(spec) = self.vm_by_name(name).map(|v| v.spec.clone()) else {
            return Response::Refused(Refusal::UnknownVm { name: name.to_string() });
        };
        let Some(vm_id) = self.vm_by_name(name).map(|v| v.id) else {
            return Response::Refused(Refusal::UnknownVm { name: name.to_string() });
        };
        if let Err(r) = self.not_migrating(name, "add the disk") {
            return Response::Refused(r);
        }
        let next = self.vms.get(&vm_id).map_or(0, |v| v.next_disk);
        let mut disk = disk.clone();
        disk.index = spec.disks.iter().map(|d| d.index + 1).max().unwrap_or(0).max(next);
        disk.volume = None;
        let mut next = spec.clone();
        next.disks.push(disk.clone());
        if let Err(r) = self.check_storage(&next) {
            return Response::Refused(r);
        }
        if disk.index >= MAX_DISKS {
            let reason = format!("a VM has at most {MAX_DISKS} disks (vda to vdz)");
            return Response::Refused(Refusal::StorageChange { vm: name.to_string(), reason });
        }
        // A running guest gets it live (its host attaches it).
        let vm = match self.live_vm(name) {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        if !vm.snapshots.is_empty() {
            let reason = "it has snapshots, which cover all its disks; delete them first".to_string();
            return Response::Refused(Refusal::StorageChange { vm: name.to_string(), reason });
        }
        vm.spec.disks.push(disk.clone());
        vm.next_disk = disk.index + 1;
        let (id, vm) = (vm.id, Box::new(vm.clone()));
        self.touch_vm(id);
        self.push_event(at_ms, "vm", format!("vm {name}: disk {} added on {}", disk.index, disk.storage));
        Response::Vm(vm)
    }

    pub(super) fn resize_disk(&mut self, name: &str, index: u32, size_bytes: u64, at_ms: u64) -> Response {
        // A running guest's disk grows live (its host resizes the block device).
        if let Err(r) = self.not_migrating(name, "resize the disk") {
            return Response::Refused(r);
        }
        let vm = match self.live_vm(name) {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        let Some(disk) = vm.spec.disks.iter_mut().find(|d| d.index == index) else {
            let reason = format!("it has no disk {index}; see `kvmesh vm disk list {name}`");
            return Response::Refused(Refusal::StorageChange { vm: name.to_string(), reason });
        };
        if size_bytes < disk.size_bytes {
            let reason = format!(
                "disk {index} is {} bytes; disks only grow (shrinking would cut off the guest's data)",
                disk.size_bytes
            );
            return Response::Refused(Refusal::StorageChange { vm: name.to_string(), reason });
        }
        disk.size_bytes = size_bytes;
        let (id, vm) = (vm.id, Box::new(vm.clone()));
        self.touch_vm(id);
        self.push_event(at_ms, "vm", format!("vm {name}: disk {index} grown to {size_bytes} bytes"));
        Response::Vm(vm)
    }

    pub(super) fn remove_disk(&mut self, name: &str, index: u32, at_ms: u64) -> Response {
        let vm = match self.stopped_vm(name, "removing a disk") {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        let Some(pos) = vm.spec.disks.iter().position(|d| d.index == index) else {
            let reason = format!("it has no disk {index}; see `kvmesh vm disk list {name}`");
            return Response::Refused(Refusal::StorageChange { vm: name.to_string(), reason });
        };
        if !vm.snapshots.is_empty() {
            let reason = "it has snapshots, which cover all its disks; delete them first".to_string();
            return Response::Refused(Refusal::StorageChange { vm: name.to_string(), reason });
        }
        let disk = vm.spec.disks.remove(pos);
        let placed_on = vm.placement.map(|p| p.node);
        let (id, vm) = (vm.id, Box::new(vm.clone()));
        self.touch_vm(id);
        self.trash_disk(id, &disk, placed_on);
        self.push_event(at_ms, "vm", format!("vm {name}: disk {index} removed"));
        Response::Vm(vm)
    }

    /// Records a snapshot operation its host has carried out on every disk.
    pub(super) fn snapshot(&mut self, name: &str, snapshot: &str, op: SnapshotOp, at_ms: u64) -> Response {
        let vm = match self.stopped_vm(name, "a snapshot") {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        let exists = vm.snapshots.iter().any(|s| s.name == snapshot);
        let refuse = |reason: String| Response::Refused(Refusal::StorageChange { vm: name.to_string(), reason });
        match op {
            SnapshotOp::Create if exists => return refuse(format!("it already has a snapshot named {snapshot:?}")),
            SnapshotOp::Create => vm.snapshots.push(Snapshot {
                name: snapshot.to_string(),
                created_at_ms: at_ms,
                description: String::new(),
            }),
            _ if !exists => {
                return refuse(format!("it has no snapshot named {snapshot:?}; see `kvmesh vm snapshot list {name}`"))
            }
            SnapshotOp::Revert => {}
            SnapshotOp::Delete => vm.snapshots.retain(|s| s.name != snapshot),
        }
        let (id, vm) = (vm.id, Box::new(vm.clone()));
        self.touch_vm(id);
        let verb = match op {
            SnapshotOp::Create => "taken",
            SnapshotOp::Revert => "reverted to",
            SnapshotOp::Delete => "deleted",
        };
        self.push_event(at_ms, "vm", format!("vm {name}: snapshot {snapshot} {verb}"));
        Response::Vm(vm)
    }

    /// Volumes a host has deleted leave the trash.
    pub(super) fn volumes_deleted(&mut self, volumes: &[Trashed]) -> Response {
        let before = self.meta.trash.len();
        self.meta.trash.retain(|t| !volumes.contains(t));
        if self.meta.trash.len() != before {
            self.dirty.insert(Key::Meta);
        }
        Response::Done
    }

    /// Queues the volume of a disk that is gone. A volume never recorded
    /// may still exist (created, then the VM moved on before the record):
    /// any host with the domain deletes it.
    pub(super) fn trash_disk(&mut self, vm: u64, disk: &Disk, placed_on: Option<NodeId>) {
        let local = self.storage_by_name(&disk.storage).is_some_and(|d| !d.kind.is_shared());
        let host = match disk.volume {
            Some(v) => v.host,
            // Never recorded: if anywhere, on the local storage of the host
            // it was placed on.
            None if local => placed_on,
            None => None,
        };
        self.trash(Trashed { storage: disk.storage.clone(), volume: disk.volume_name(vm), host });
    }

    pub(super) fn trash(&mut self, t: Trashed) {
        // A volume on a host that left the cluster went with it: nobody
        // could ever delete it, and it would block `storage remove`.
        if t.host.is_some_and(|h| !self.nodes.contains_key(&h)) {
            return;
        }
        if !self.meta.trash.contains(&t) {
            self.meta.trash.push(t);
            self.dirty.insert(Key::Meta);
        }
    }

    /// A fresh id for a storage domain or image, drawn from the state like
    /// VM ids, so every replica draws the same.
    fn new_object_id(&mut self, name: &str) -> u64 {
        self.meta.objects_created += 1;
        self.dirty.insert(Key::Meta);
        let seed = format!("{}\0{name}\0{}", self.meta.cluster_id.as_deref().unwrap_or(""), self.meta.objects_created);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h >> 1
    }
}

/// Whether a VM's disks or boot use the image.
pub fn uses_image(spec: &VmSpec, image: &str) -> bool {
    spec.disks.iter().any(|d| d.image.as_deref() == Some(image))
        || spec.kernel.as_deref() == Some(image)
        || spec.initrd.as_deref() == Some(image)
        || spec.hardware.cdrom.as_deref() == Some(image)
}
