use super::*;

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
    }
}

fn dom(state: RunState) -> Domain {
    Domain { name: "kvmesh-7".into(), vm_id: 7, epoch: 1, state }
}

fn run(w: &Want, d: &[Domain], mem: &mut HashMap<u64, Memory>, now: u64) -> Vec<Action> {
    plan(std::slice::from_ref(w), d, &[7].into(), mem, now, &Timing::default(), false)
}

#[test]
fn creates_then_reports_running_once() {
    let mut mem = HashMap::new();
    let mut w = want(Desired::Running);
    assert_eq!(run(&w, &[], &mut mem, 0), vec![Action::Create { vm_id: 7 }]);
    let running = [dom(RunState::Running)];
    let report = Action::Report { vm_id: 7, epoch: 1, state: VmState::Running, error: None };
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
                error: Some("destroyed outside kvmesh; restarting (restart 1)".into())
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
    assert_eq!(run(&w, &on, &mut mem, 30_000), vec![Action::Destroy { domain: "kvmesh-7".into() }]);
    let off = [dom(RunState::Off(OffReason::Shutdown))];
    assert_eq!(
        run(&w, &off, &mut mem, 30_100),
        vec![Action::Report { vm_id: 7, epoch: 1, state: VmState::Stopped, error: None }]
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
    assert_eq!(run(&w, &on, &mut mem, 0), vec![]);
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
    assert_eq!(run(&w, &[dom(RunState::Running)], &mut mem, 0), vec![]);
}

#[test]
fn stale_and_foreign_domains_are_removed_and_disks_kept_only_for_known_vms() {
    let mut mem = HashMap::new();
    let w = want(Desired::Running);
    let stale = Domain { name: "kvmesh-7".into(), vm_id: 7, epoch: 0, state: RunState::Running };
    let gone = Domain { name: "kvmesh-9".into(), vm_id: 9, epoch: 1, state: RunState::Running };
    let actions = plan(&[w], &[stale, gone], &[7].into(), &mut mem, 0, &Timing::default(), false);
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
            Action::Report { vm_id: 7, epoch: 1, state: VmState::Deleted, error: None },
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
    let fenced = plan(std::slice::from_ref(&w), &on, &[7].into(), &mut mem, 0, &Timing::default(), true);
    assert_eq!(fenced, vec![Action::Destroy { domain: "kvmesh-7".into() }]);
    assert_eq!(plan(std::slice::from_ref(&w), &[], &[7].into(), &mut mem, 1, &Timing::default(), true), vec![]);
    // Non-HA guests are not fenced.
    w.ha = false;
    assert_eq!(plan(std::slice::from_ref(&w), &on, &[7].into(), &mut mem, 2, &Timing::default(), true), vec![]);
}
