use super::*;
use std::collections::BTreeMap;

fn want(desired: Desired) -> Want {
    Want {
        vm_id: 7,
        name: "web".into(),
        domain: "kvmesh-7".into(),
        epoch: 1,
        desired,
        force_stop: false,
        desired_gen: 0,
        restart_gen: 0,
        deleting: None,
        reported: None,
        ha: false,
        disks: vec![(0, 1 << 30)],
        nics: vec![],
        cdrom: None,
        vcpus: 1,
        migrating_out: None,
    }
}

fn dom(state: RunState) -> Domain {
    Domain { name: "kvmesh-7".into(), vm_id: 7, epoch: 1, state, spec_gen: 0 }
}

/// VM 7, last placed at epoch 1.
fn epochs() -> BTreeMap<u64, u64> {
    [(7, 1)].into()
}

fn run(w: &Want, d: &[Domain], mem: &mut HashMap<u64, Memory>, now: u64) -> Vec<Action> {
    plan(std::slice::from_ref(w), d, &epochs(), &BTreeMap::new(), mem, now, &Timing::default(), Standing::Current)
}

#[test]
fn creates_then_reports_running_once() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    assert_eq!(run(&w, &[], &mut mem, 0), vec![Action::Create { vm_id: 7 }]);
    let running = [dom(RunState::Running)];
    let report = Action::Report { vm_id: 7, epoch: 1, state: VmState::Running, error: None, spec_gen: 0 };
    assert_eq!(run(&w, &running, &mut mem, 1), vec![report]);
    // Sent but not yet replicated: not sent again.
    assert_eq!(run(&w, &running, &mut mem, 2), vec![]);
    // Replicated: steady state writes nothing.
    w.reported = Some((VmState::Running, None));
    assert_eq!(run(&w, &running, &mut mem, 3), vec![]);
}

#[test]
fn a_guest_killed_behind_our_back_is_restarted_with_backoff_and_reported() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    w.reported = Some((VmState::Running, None));
    run(&w, &[dom(RunState::Running)], &mut mem, 0);
    let off = [dom(RunState::Off(OffReason::Destroyed))];
    let first = run(&w, &off, &mut mem, 10_000);
    assert_eq!(
        first,
        vec![
            Action::Report {
                vm_id: 7,
                epoch: 1,
                state: VmState::Crashed,
                error: Some("destroyed outside kvmesh; restarting (restart 1)".into()),
                spec_gen: 0,
            },
            Action::Start { vm_id: 7 },
        ]
    );
    // Still off right after: wait out the 1 s backoff, then 2 s.
    w.reported = Some((VmState::Crashed, Some("destroyed outside kvmesh; restarting (restart 1)".into())));
    assert_eq!(run(&w, &off, &mut mem, 10_500), vec![]);
    let second = run(&w, &off, &mut mem, 11_000);
    assert!(second.contains(&Action::Start { vm_id: 7 }), "{second:?}");
    assert_eq!(run(&w, &off, &mut mem, 12_500), vec![]);
    assert!(run(&w, &off, &mut mem, 13_000).contains(&Action::Start { vm_id: 7 }));
}

#[test]
fn a_failure_is_not_retried_until_the_operator_asks_again() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    run(&w, &[], &mut mem, 0);
    mem.get_mut(&7).unwrap().failed_gen = Some(0);
    assert_eq!(run(&w, &[], &mut mem, 1), vec![]);
    assert_eq!(run(&w, &[], &mut mem, 60_000), vec![]);
    w.desired_gen = 1; // `vm start`
    assert_eq!(run(&w, &[], &mut mem, 60_001), vec![Action::Create { vm_id: 7 }]);
}

#[test]
fn stop_asks_acpi_then_destroys_after_the_timeout_or_at_once_when_forced() {
    let mut mem = HashMap::new();
    let w = want(Desired::Stopped);
    let on = [dom(RunState::Running)];
    assert_eq!(run(&w, &on, &mut mem, 0), vec![Action::Shutdown { domain: "kvmesh-7".into() }]);
    assert_eq!(run(&w, &on, &mut mem, 29_999), vec![]);
    let note = "forced power-off: the guest did not shut down within 30 s of the ACPI request";
    let forced_off = vec![
        Action::Report { vm_id: 7, epoch: 1, state: VmState::Running, error: Some(note.into()), spec_gen: 0 },
        Action::Destroy { domain: "kvmesh-7".into() },
    ];
    assert_eq!(run(&w, &on, &mut mem, 30_000), forced_off);
    // Still on: destroyed again, the note not sent again.
    assert_eq!(run(&w, &on, &mut mem, 30_050), vec![Action::Destroy { domain: "kvmesh-7".into() }]);
    let off = [dom(RunState::Off(OffReason::Shutdown))];
    assert_eq!(
        run(&w, &off, &mut mem, 30_100),
        vec![Action::Report { vm_id: 7, epoch: 1, state: VmState::Stopped, error: None, spec_gen: 0 }]
    );
    let mut forced = want(Desired::Stopped);
    forced.force_stop = true;
    assert_eq!(run(&forced, &on, &mut HashMap::new(), 0), vec![Action::Destroy { domain: "kvmesh-7".into() }]);
}

#[test]
fn restart_power_cycles_once_per_request() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    w.reported = Some((VmState::Running, None));
    let on = [dom(RunState::Running)];
    // First sight of a running guest: its disks, NICs and CD-ROM are checked once.
    let first_sight = vec![
        Action::SyncDisks { vm_id: 7 },
        Action::SyncNics { vm_id: 7 },
        Action::SyncCdrom { vm_id: 7 },
        Action::SyncVcpus { vm_id: 7 },
    ];
    assert_eq!(run(&w, &on, &mut mem, 0), first_sight);
    w.restart_gen = 1;
    w.desired_gen = 1;
    assert_eq!(run(&w, &on, &mut mem, 1), vec![Action::Restart { vm_id: 7 }]);
    assert_eq!(run(&w, &on, &mut mem, 2), vec![]);
}

#[test]
fn restarts_requested_before_the_agent_started_are_not_replayed() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    w.restart_gen = 4;
    w.reported = Some((VmState::Running, None));
    let first_sight = vec![
        Action::SyncDisks { vm_id: 7 },
        Action::SyncNics { vm_id: 7 },
        Action::SyncCdrom { vm_id: 7 },
        Action::SyncVcpus { vm_id: 7 },
    ];
    assert_eq!(run(&w, &[dom(RunState::Running)], &mut mem, 0), first_sight);
}

#[test]
fn stale_and_foreign_domains_are_removed_and_disks_kept_only_for_known_vms() {
    let mut mem = HashMap::new();
    let w = want(Desired::Running);
    let stale = Domain { name: "kvmesh-7".into(), vm_id: 7, epoch: 0, state: RunState::Running, spec_gen: 0 };
    let gone = Domain { name: "kvmesh-9".into(), vm_id: 9, epoch: 1, state: RunState::Running, spec_gen: 0 };
    let actions =
        plan(&[w], &[stale, gone], &epochs(), &BTreeMap::new(), &mut mem, 0, &Timing::default(), Standing::Current);
    assert_eq!(
        actions,
        vec![
            Action::Remove { domain: "kvmesh-7".into(), vm_id: 7, keep_disks: true },
            Action::Remove { domain: "kvmesh-9".into(), vm_id: 9, keep_disks: false },
            Action::Create { vm_id: 7 },
        ]
    );
}

#[test]
fn delete_removes_then_reports_deleted() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Stopped);
    w.deleting = Some(false);
    assert_eq!(
        run(&w, &[dom(RunState::Running)], &mut mem, 0),
        vec![
            Action::Remove { domain: "kvmesh-7".into(), vm_id: 7, keep_disks: false },
            Action::Report { vm_id: 7, epoch: 1, state: VmState::Deleted, error: None, spec_gen: 0 },
        ]
    );
}

#[test]
fn a_fenced_host_destroys_its_ha_guests_and_starts_none() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    w.ha = true;
    w.reported = Some((VmState::Running, None));
    let on = [dom(RunState::Running)];
    let fenced = |w: &Want, d: &[Domain], mem: &mut HashMap<u64, Memory>| {
        plan(std::slice::from_ref(w), d, &epochs(), &BTreeMap::new(), mem, 0, &Timing::default(), Standing::Fenced)
    };
    assert_eq!(fenced(&w, &on, &mut mem), vec![Action::Destroy { domain: "kvmesh-7".into() }]);
    assert_eq!(fenced(&w, &[], &mut mem), vec![]);
    // Non-HA guests are not destroyed, and not started either.
    w.ha = false;
    assert_eq!(fenced(&w, &on, &mut mem), vec![]);
    assert_eq!(fenced(&w, &[], &mut mem), vec![]);
}

/// Every standing, every desired state, with and without a domain: while
/// behind or fenced, the only actions are removals of domains the state
/// proves superseded, destroys of HA guests when fenced, and the cleanup of
/// VMs being deleted. Nothing is defined, started, stopped or reported.
#[test]
fn behind_or_fenced_nothing_starts_and_only_superseded_domains_go() {
    let states = [RunState::Running, RunState::Paused, RunState::Changing, RunState::Off(OffReason::Destroyed)];
    for standing in [Standing::Behind, Standing::Fenced] {
        for desired in [Desired::Running, Desired::Stopped] {
            for ha in [false, true] {
                for reported in [None, Some((VmState::Running, None)), Some((VmState::Stopped, None))] {
                    let mut w = want(desired);
                    w.ha = ha;
                    w.reported = reported.clone();
                    let mut cases: Vec<Vec<Domain>> = vec![vec![]];
                    cases.extend(states.iter().map(|s| vec![dom(*s)]));
                    for domains in cases {
                        let actions = plan(
                            std::slice::from_ref(&w),
                            &domains,
                            &epochs(),
                            &BTreeMap::new(),
                            &mut HashMap::new(),
                            0,
                            &Timing::default(),
                            standing,
                        );
                        let live = domains.iter().any(|d| d.state.is_live());
                        let allowed = standing == Standing::Fenced && ha && live;
                        let expected =
                            if allowed { vec![Action::Destroy { domain: "kvmesh-7".into() }] } else { vec![] };
                        assert_eq!(actions, expected, "{standing:?} {desired:?} ha={ha} {reported:?} {domains:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn behind_a_domain_is_removed_only_when_its_vm_was_placed_again_since() {
    let mut mem = HashMap::new();
    // The local (stale) state places nothing here. VM 7 was placed again at
    // epoch 3 (proof), VM 9 is unknown to it (perhaps created after it).
    let superseded = Domain { name: "kvmesh-7".into(), vm_id: 7, epoch: 2, state: RunState::Running, spec_gen: 0 };
    let unknown = Domain { name: "kvmesh-9".into(), vm_id: 9, epoch: 1, state: RunState::Running, spec_gen: 0 };
    let current_epoch = Domain { name: "kvmesh-8".into(), vm_id: 8, epoch: 4, state: RunState::Running, spec_gen: 0 };
    let last: BTreeMap<u64, u64> = [(7, 3), (8, 4)].into();
    let domains = [superseded, unknown, current_epoch];
    let behind = plan(&[], &domains, &last, &BTreeMap::new(), &mut mem, 0, &Timing::default(), Standing::Behind);
    assert_eq!(behind, vec![Action::Remove { domain: "kvmesh-7".into(), vm_id: 7, keep_disks: true }]);
    // Caught up, the same state is trusted: all three go.
    let current = plan(&[], &domains, &last, &BTreeMap::new(), &mut mem, 0, &Timing::default(), Standing::Current);
    assert_eq!(current.len(), 3, "{current:?}");
}

#[test]
fn a_replicated_failure_holds_across_a_daemon_restart_until_the_operator_asks_again() {
    let mut w = want(Desired::Running);
    w.reported = Some((VmState::Failed, Some("no such network".into())));
    // A fresh agent (no memory): no retry, nothing reported again.
    let mut mem = HashMap::new();
    assert_eq!(run(&w, &[], &mut mem, 0), vec![]);
    assert_eq!(run(&w, &[dom(RunState::Off(OffReason::Shutdown))], &mut mem, 60_000), vec![]);
    // `vm start`: a new generation (the state forgets the failure).
    w.desired_gen += 1;
    w.reported = None;
    assert_eq!(run(&w, &[], &mut mem, 60_001), vec![Action::Create { vm_id: 7 }]);
}

#[test]
fn a_guest_between_states_is_left_alone_and_its_final_reason_is_reported() {
    // `virsh destroy` first shows "in shutdown" (QEMU's SHUTDOWN event), then
    // shut off with reason "destroyed": nothing may be started in between,
    // and the crash note names the real reason.
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    w.reported = Some((VmState::Running, None));
    run(&w, &[dom(RunState::Running)], &mut mem, 0);
    assert_eq!(run(&w, &[dom(RunState::Changing)], &mut mem, 10_000), vec![]);
    let after = run(&w, &[dom(RunState::Off(OffReason::Destroyed))], &mut mem, 10_100);
    assert!(
        after.contains(&Action::Report {
            vm_id: 7,
            epoch: 1,
            state: VmState::Crashed,
            error: Some("destroyed outside kvmesh; restarting (restart 1)".into()),
            spec_gen: 0,
        }),
        "{after:?}"
    );
}

#[test]
fn a_nic_added_or_removed_while_the_guest_runs_is_plugged_live_once() {
    let mut w = want(Desired::Running);
    w.nics = vec![("0a:00:00:00:00:01".into(), "blue".into())];
    let mut mem = HashMap::new();
    assert_eq!(run(&w, &[], &mut mem, 0), vec![Action::Create { vm_id: 7 }]);
    w.reported = Some((VmState::Running, None));
    let running = [dom(RunState::Running)];
    assert!(!run(&w, &running, &mut mem, 10).contains(&Action::SyncNics { vm_id: 7 }), "created with its NICs");
    w.nics.push(("0a:00:00:00:00:02".into(), "red".into()));
    assert!(run(&w, &running, &mut mem, 20).contains(&Action::SyncNics { vm_id: 7 }));
    assert!(!run(&w, &running, &mut mem, 30).contains(&Action::SyncNics { vm_id: 7 }), "once per change");
    w.nics.remove(0);
    assert!(run(&w, &running, &mut mem, 40).contains(&Action::SyncNics { vm_id: 7 }));
}

#[test]
fn a_cdrom_inserted_or_ejected_while_the_guest_runs_is_changed_live_once() {
    let mut w = want(Desired::Running);
    let mut mem = HashMap::new();
    assert_eq!(run(&w, &[], &mut mem, 0), vec![Action::Create { vm_id: 7 }]);
    w.reported = Some((VmState::Running, None));
    let running = [dom(RunState::Running)];
    assert!(!run(&w, &running, &mut mem, 10).contains(&Action::SyncCdrom { vm_id: 7 }), "created with its medium");
    w.cdrom = Some("installer".into());
    assert!(run(&w, &running, &mut mem, 20).contains(&Action::SyncCdrom { vm_id: 7 }));
    assert!(!run(&w, &running, &mut mem, 30).contains(&Action::SyncCdrom { vm_id: 7 }), "once per change");
    w.cdrom = None;
    assert!(run(&w, &running, &mut mem, 40).contains(&Action::SyncCdrom { vm_id: 7 }));
    w.vcpus = 2;
    assert!(run(&w, &running, &mut mem, 50).contains(&Action::SyncVcpus { vm_id: 7 }), "vCPUs plugged live");
    assert!(!run(&w, &running, &mut mem, 60).contains(&Action::SyncVcpus { vm_id: 7 }), "once per change");
}

#[test]
fn a_disk_added_or_grown_while_the_guest_runs_is_given_to_it_live_once() {
    let mut w = want(Desired::Running);
    let mut mem = HashMap::new();
    assert_eq!(run(&w, &[], &mut mem, 0), vec![Action::Create { vm_id: 7 }]);
    w.reported = Some((VmState::Running, None));
    let running = [dom(RunState::Running)];
    assert!(!run(&w, &running, &mut mem, 10).contains(&Action::SyncDisks { vm_id: 7 }), "created with its disks");
    w.disks.push((1, 1 << 20));
    assert!(run(&w, &running, &mut mem, 20).contains(&Action::SyncDisks { vm_id: 7 }));
    assert!(!run(&w, &running, &mut mem, 30).contains(&Action::SyncDisks { vm_id: 7 }), "once per change");
    w.disks[0].1 = 2 << 30;
    assert!(run(&w, &running, &mut mem, 40).contains(&Action::SyncDisks { vm_id: 7 }));
    // A restarted agent checks a running guest once.
    let mut fresh = HashMap::new();
    assert!(run(&w, &running, &mut fresh, 50).contains(&Action::SyncDisks { vm_id: 7 }));
}

#[test]
fn a_start_refused_by_a_held_lease_waits_and_is_retried_not_failed() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    assert_eq!(run(&w, &[], &mut mem, 0), vec![Action::Create { vm_id: 7 }]);
    // The shell found the disk's lease held: it reported waiting-for-lease
    // and set when to try again.
    mem.get_mut(&7).unwrap().lease_retry_at_ms = Some(2_000);
    w.reported = Some((VmState::WaitingForLease, Some("Failed to get \"write\" lock".into())));
    let defined = [dom(RunState::Off(OffReason::Shutdown))];
    assert_eq!(run(&w, &defined, &mut mem, 1_999), vec![]);
    assert_eq!(run(&w, &defined, &mut mem, 2_000), vec![Action::Start { vm_id: 7 }]);
    assert_eq!(mem[&7].failed_gen, None, "a held lease is not a failure");
}

#[test]
fn a_migrating_guest_is_sent_once_running_and_never_recreated_when_gone() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    w.reported = Some((VmState::Running, None));
    w.migrating_out = Some(2);
    let running = [dom(RunState::Running)];
    assert_eq!(run(&w, &running, &mut mem, 0), vec![Action::MigrateOut { vm_id: 7, epoch: 2 }]);
    // libvirt paused it for the last round, then took it away: neither is a
    // crash, and nothing is started in its place; the shell, which sends
    // once, settles the record.
    assert_eq!(run(&w, &[dom(RunState::Paused)], &mut mem, 10), vec![]);
    assert_eq!(run(&w, &[], &mut mem, 20), vec![Action::MigrateOut { vm_id: 7, epoch: 2 }]);
}

#[test]
fn the_target_keeps_its_incoming_copy_and_resumes_it_once_placed_there() {
    let mut mem = HashMap::new();
    // Epoch 2 is the migration's: VM 7 still runs elsewhere at epoch 1.
    let incoming = Domain { epoch: 2, ..dom(RunState::Paused) };
    let last: BTreeMap<u64, u64> = [(7, 2)].into();
    let migrating: BTreeMap<u64, u64> = [(7, 2)].into();
    let t = Timing::default();
    let kept = plan(&[], std::slice::from_ref(&incoming), &last, &migrating, &mut mem, 0, &t, Standing::Current);
    assert_eq!(kept, vec![], "the incoming copy is not stale");
    // Aborted: the copy is stale now (its disks are kept).
    let aborted =
        plan(&[], std::slice::from_ref(&incoming), &last, &BTreeMap::new(), &mut mem, 0, &t, Standing::Current);
    assert_eq!(aborted, vec![Action::Remove { domain: "kvmesh-7".into(), vm_id: 7, keep_disks: true }]);
    // Finished: placed here at epoch 2, nothing reported yet: resume it.
    let w = Want { epoch: 2, ..want(Desired::Running) };
    let placed = plan(
        std::slice::from_ref(&w),
        std::slice::from_ref(&incoming),
        &last,
        &BTreeMap::new(),
        &mut mem,
        0,
        &t,
        Standing::Current,
    );
    assert_eq!(placed, vec![Action::Resume { domain: "kvmesh-7".into() }]);
    // A guest paused after it ran (an I/O error) is left alone.
    let ran = Want { reported: Some((VmState::Running, None)), ..w };
    let later =
        plan(std::slice::from_ref(&ran), &[incoming], &last, &BTreeMap::new(), &mut mem, 0, &t, Standing::Current);
    assert_eq!(later, vec![]);
}
