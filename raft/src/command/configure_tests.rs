//! `vm set` of size and hardware, and `vm cdrom`: what fits, what waits for
//! the next start, and which running generation clears it (a start from the
//! new spec, not a live move or a definition made just before the change).

use super::tests::{initialized, node, vm};
use super::*;
use crate::hardware::{Firmware, VmChange};
use crate::model::VmState;
use crate::storage::{Image, ImageKind};

fn configure(s: &mut ClusterState, name: &str, change: VmChange) -> Response {
    s.apply(&Command::ConfigureVm { name: name.into(), change, at_ms: 10 })
}

/// A report of the guest defined from spec generation `spec_gen`.
fn report(s: &mut ClusterState, id: u64, node: u64, epoch: u64, state: VmState, spec_gen: u64) {
    let r = s.apply(&Command::ReportVm { vm: id, node, epoch, state, error: None, spec_gen, at_ms: 11 });
    assert_eq!(r, Response::Done);
}

fn image(id: u64, name: &str, kind: ImageKind) -> Image {
    Image {
        id,
        name: name.into(),
        storage: "local".into(),
        kind,
        format: "raw".into(),
        virtual_bytes: 1 << 20,
        file_bytes: 1 << 20,
        sha256: String::new(),
        volume: format!("image-{id}"),
        host: Some(1),
        created_at_ms: 1,
    }
}

/// Host a (4 CPUs, 4096 MiB) with `web` (1 vCPU, 512 MiB) on it.
fn one_vm() -> ClusterState {
    let mut s = initialized();
    assert!(matches!(
        s.apply(&Command::CreateVm { vm: Box::new(vm(10, "web", Some(1), 512)), at_ms: 3 }),
        Response::Vm(_)
    ));
    s
}

#[test]
fn a_running_vm_keeps_a_new_size_pending_until_started_from_the_new_spec() {
    let mut s = one_vm();
    report(&mut s, 10, 1, 1, VmState::Running, 0);
    let r = configure(&mut s, "web", VmChange { vcpus: Some(2), memory_mib: Some(1024), ..Default::default() });
    let Response::Vm(v) = r else { panic!("{r:?}") };
    assert_eq!((v.spec.vcpus, v.spec.memory_mib, v.spec_gen), (2, 1024, 1), "the spec changes at once");
    assert_eq!(v.pending_changes, vec!["vcpus: 1 -> 2".to_string(), "memory: 512 MiB -> 1024 MiB".to_string()]);
    // Still the old definition: still pending, whatever the state went
    // through. Defined from generation 1: applied.
    report(&mut s, 10, 1, 1, VmState::Stopped, 0);
    report(&mut s, 10, 1, 1, VmState::Running, 0);
    assert_eq!(s.vm_by_name("web").unwrap().pending_changes.len(), 2);
    report(&mut s, 10, 1, 1, VmState::Running, 1);
    assert!(s.vm_by_name("web").unwrap().pending_changes.is_empty());
}

#[test]
fn a_change_while_the_guest_is_being_started_waits_for_a_start_that_has_it() {
    let mut s = one_vm();
    // Placed and wanted running, nothing reported yet: the host may be
    // defining the guest from the old spec at this moment.
    assert_eq!(s.vm_by_name("web").unwrap().desired, Desired::Running);
    let Response::Vm(v) = configure(&mut s, "web", VmChange { memory_mib: Some(1024), ..Default::default() }) else {
        panic!()
    };
    assert_eq!(v.pending_changes, vec!["memory: 512 MiB -> 1024 MiB".to_string()]);
    report(&mut s, 10, 1, 1, VmState::Running, 0);
    assert_eq!(s.vm_by_name("web").unwrap().pending_changes.len(), 1, "it was defined before the change");
    let _ = s.apply(&Command::RestartVm { name: "web".into(), at_ms: 12 });
    report(&mut s, 10, 1, 1, VmState::Running, 1);
    assert!(s.vm_by_name("web").unwrap().pending_changes.is_empty());
}

#[test]
fn a_vcpu_change_plugged_live_is_no_longer_pending_but_memory_still_is() {
    let mut s = one_vm();
    report(&mut s, 10, 1, 1, VmState::Running, 0);
    configure(&mut s, "web", VmChange { vcpus: Some(3), memory_mib: Some(1024), ..Default::default() });
    let live = |s: &mut ClusterState, node, epoch, vcpus| {
        s.apply(&Command::VcpusLive { vm: 10, node, epoch, vcpus, at_ms: 12 })
    };
    assert_eq!(live(&mut s, 2, 1, 3), Response::Refused(Refusal::StaleReport), "not its host");
    assert_eq!(live(&mut s, 1, 1, 2), Response::Refused(Refusal::StaleReport), "not the count asked for");
    assert_eq!(live(&mut s, 1, 1, 3), Response::Done);
    assert_eq!(s.vm_by_name("web").unwrap().pending_changes, vec!["memory: 512 MiB -> 1024 MiB".to_string()]);
}

#[test]
fn a_stopped_vm_changes_at_once_and_a_guest_arriving_live_keeps_its_pending_changes() {
    let mut s = one_vm();
    report(&mut s, 10, 1, 1, VmState::Stopped, 0);
    let _ = s.apply(&Command::SetDesired { name: "web".into(), desired: Desired::Stopped, force: false, at_ms: 4 });
    let Response::Vm(v) = configure(&mut s, "web", VmChange { firmware: Some(Firmware::Uefi), ..Default::default() })
    else {
        panic!()
    };
    assert!(v.pending_changes.is_empty(), "nothing runs the old definition");
    assert_eq!(v.spec.hardware.firmware, Firmware::Uefi);
    // A guest that arrived live on a new host runs the generation its
    // source defined: its first report there keeps the change pending.
    let mut s = one_vm();
    report(&mut s, 10, 1, 1, VmState::Running, 0);
    configure(&mut s, "web", VmChange { vcpus: Some(2), ..Default::default() });
    s.vms.get_mut(&10).unwrap().reported = None;
    report(&mut s, 10, 1, 1, VmState::Running, 0);
    assert_eq!(s.vm_by_name("web").unwrap().pending_changes, vec!["vcpus: 1 -> 2".to_string()]);
}

#[test]
fn a_size_that_fits_no_host_is_refused_and_nothing_changes() {
    let mut s = one_vm();
    assert_eq!(s.apply(&Command::AddNode { node: node(2, "b", "127.0.0.1:2"), at_ms: 2 }), Response::Done);
    let r = configure(&mut s, "web", VmChange { memory_mib: Some(64 * 1024), ..Default::default() });
    let Response::Refused(refusal @ Refusal::TooBig { .. }) = &r else { panic!("{r:?}") };
    assert!(refusal.to_string().contains("no longer fits on its host a"), "{refusal}");
    assert_eq!(s.vm_by_name("web").unwrap().spec.memory_mib, 512);
    // Unplaced: it must fit on some host.
    s.vms.get_mut(&10).unwrap().placement = None;
    let r = configure(&mut s, "web", VmChange { vcpus: Some(64), ..Default::default() });
    let Response::Refused(refusal) = &r else { panic!("{r:?}") };
    assert!(
        refusal.to_string().contains("would fit on no host: a:") && refusal.to_string().contains("b:"),
        "{refusal}"
    );
    assert!(matches!(configure(&mut s, "web", VmChange { vcpus: Some(4), ..Default::default() }), Response::Vm(_)));
    assert!(matches!(
        configure(&mut s, "nope", VmChange { vcpus: Some(1), ..Default::default() }),
        Response::Refused(Refusal::UnknownVm { .. })
    ));
    assert!(matches!(configure(&mut s, "web", VmChange::default()), Response::Refused(Refusal::VmChange { .. })));
}

#[test]
fn only_an_iso_image_goes_in_the_cdrom_and_it_is_kept_while_in_the_drive() {
    let mut s = one_vm();
    assert_eq!(s.apply(&Command::AddImage { image: image(20, "installer", ImageKind::Iso), at_ms: 2 }), Response::Done);
    assert_eq!(
        s.apply(&Command::AddImage { image: image(21, "vmlinuz", ImageKind::Kernel), at_ms: 2 }),
        Response::Done
    );
    let insert = |i: &str| VmChange { cdrom: Some(Some(i.to_string())), ..Default::default() };
    assert!(matches!(configure(&mut s, "web", insert("vmlinuz")), Response::Refused(Refusal::ImageWrongKind { .. })));
    assert!(matches!(configure(&mut s, "web", insert("missing")), Response::Refused(Refusal::UnknownImage { .. })));
    let Response::Vm(v) = configure(&mut s, "web", insert("installer")) else { panic!() };
    assert_eq!(v.spec.hardware.cdrom.as_deref(), Some("installer"));
    assert!(v.pending_changes.is_empty(), "a medium changes live");
    let r = s.apply(&Command::DeleteImage { name: "installer".into(), at_ms: 12 });
    assert!(matches!(r, Response::Refused(Refusal::ImageInUse { .. })), "{r:?}");
    let Response::Vm(v) = configure(&mut s, "web", VmChange { cdrom: Some(None), ..Default::default() }) else {
        panic!()
    };
    assert_eq!(v.spec.hardware.cdrom, None);
    assert_eq!(s.apply(&Command::DeleteImage { name: "installer".into(), at_ms: 13 }), Response::Done);
}
