//! The fence guard's decisions, as plain functions of their inputs.
//!
//! The guard holds what the daemon last told it: the lease's deadline (as
//! CLOCK_BOOTTIME nanoseconds, a clock every process of this boot shares)
//! and the names of the domains that must not outlive the lease. Past the
//! deadline it kills them; while it protects any, it keeps the kernel
//! watchdog armed so that a dead or frozen guard resets the host. Nothing
//! here reads a clock or touches a file.

use std::collections::BTreeSet;

/// How a host is protected against running a guest its leader has
/// restarted elsewhere, from strongest to weakest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FencingLevel {
    /// The guard runs and keeps the kernel watchdog armed: even a dead
    /// guard resets the host.
    Watchdog,
    /// The guard runs; no watchdog device. A host whose daemon *and* guard
    /// die keeps its guests running; only disk leases stop a second copy
    /// from opening their shared disks.
    GuardOnly,
    /// No guard (disabled, or it could not be started): fencing needs a
    /// live daemon.
    DaemonOnly,
    /// libvirt's embedded test driver: the guests live inside the daemon
    /// and die with it.
    Embedded,
}

impl FencingLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            FencingLevel::Watchdog => "watchdog",
            FencingLevel::GuardOnly => "guard-only",
            FencingLevel::DaemonOnly => "daemon-only",
            FencingLevel::Embedded => "embedded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FencingLevel::Watchdog, FencingLevel::GuardOnly, FencingLevel::DaemonOnly, FencingLevel::Embedded]
            .into_iter()
            .find(|l| l.as_str() == s)
    }
}

/// What the daemon last told the guard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pet {
    /// When the lease runs out; `None`: there is no lease (the daemon has
    /// none, so neither may its guests run).
    pub deadline_ns: Option<u64>,
    /// Domains to kill once the lease ran out: the host's HA domains (placed
    /// or running) and any kvmesh domain the state does not know.
    pub targets: BTreeSet<String>,
}

impl Pet {
    /// One line of the daemon→guard protocol: `pet <deadline|-> <name>...`.
    pub fn to_line(&self) -> String {
        let mut line = format!("pet {}", self.deadline_ns.map_or("-".to_string(), |d| d.to_string()));
        for name in &self.targets {
            line.push(' ');
            line.push_str(name);
        }
        line.push('\n');
        line
    }

    /// Parses [`Pet::to_line`]'s output; `None` for anything else (the
    /// guard ignores it and keeps the last good pet).
    pub fn parse(line: &str) -> Option<Pet> {
        let mut words = line.split_whitespace();
        (words.next()? == "pet").then_some(())?;
        let deadline_ns = match words.next()? {
            "-" => None,
            n => Some(n.parse().ok()?),
        };
        let targets = words.map(str::to_string).collect::<BTreeSet<_>>();
        // Domain names only: nothing that could reach outside the pid dir.
        targets.iter().all(|n| valid_domain_name(n)).then_some(Pet { deadline_ns, targets })
    }
}

/// A kvmesh domain name: `kvmesh-` and hex digits.
pub fn valid_domain_name(name: &str) -> bool {
    name.strip_prefix("kvmesh-").is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether the guard must kill its targets now.
pub fn due(pet: &Pet, now_ns: u64) -> bool {
    !pet.targets.is_empty() && pet.deadline_ns.is_none_or(|d| now_ns > d)
}

/// What to do with the kernel watchdog on one pass of the guard's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchdogStep {
    /// Open the device (which starts it) and set its timeout.
    Arm,
    /// Write a keepalive.
    Pet,
    /// Write the magic 'V' and close: the watchdog stops.
    Disarm,
    Idle,
}

/// The watchdog is armed exactly while the guard protects HA domains: a
/// host without HA guests has nothing a reset would protect, and is not
/// reset for a guard that dies. Once armed it is petted on every pass,
/// also after the daemon died: the guard is alive and fences itself, and
/// the watchdog is for the guard's own death. A driver with `nowayout`
/// cannot be stopped (a magic close would only stop the keepalives, and the
/// host would reset): once armed, it is petted for as long as the guard
/// lives, and the guard does not exit.
pub fn watchdog_step(device: bool, armed: bool, protecting: bool, nowayout: bool) -> WatchdogStep {
    match (device, armed, protecting) {
        (false, _, _) => WatchdogStep::Idle,
        (true, false, true) => WatchdogStep::Arm,
        (true, true, true) => WatchdogStep::Pet,
        (true, true, false) if nowayout => WatchdogStep::Pet,
        (true, true, false) => WatchdogStep::Disarm,
        (true, false, false) => WatchdogStep::Idle,
    }
}

/// Whether an idle guard may exit: its daemon has been gone for
/// `idle_limit`, and nothing it protects is still alive (it fenced, or
/// there was nothing to fence). A restarted daemon starts a new guard.
pub fn may_exit(pet: &Pet, now_ns: u64, daemon_gone_ns: Option<u64>, idle_limit_ns: u64, any_alive: bool) -> bool {
    let gone_long = daemon_gone_ns.is_some_and(|gone| now_ns.saturating_sub(gone) >= idle_limit_ns);
    let nothing_to_guard = pet.targets.is_empty() || (due(pet, now_ns) && !any_alive);
    gone_long && nothing_to_guard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pet(deadline: Option<u64>, names: &[&str]) -> Pet {
        Pet { deadline_ns: deadline, targets: names.iter().map(|n| n.to_string()).collect() }
    }

    #[test]
    fn pets_round_trip_and_bad_lines_are_ignored() {
        let p = pet(Some(42), &["kvmesh-00ab", "kvmesh-01"]);
        assert_eq!(Pet::parse(&p.to_line()), Some(p));
        let none = pet(None, &[]);
        assert_eq!(Pet::parse(&none.to_line()), Some(none));
        for bad in ["", "pet", "pet x kvmesh-1", "hello 1", "pet 1 ../etc/passwd", "pet 1 kvmesh-", "pet 1 kvmesh-zz"] {
            assert_eq!(Pet::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn targets_die_only_after_the_deadline_or_without_a_lease() {
        let p = pet(Some(1_000), &["kvmesh-1"]);
        assert!(!due(&p, 999));
        assert!(!due(&p, 1_000));
        assert!(due(&p, 1_001));
        assert!(due(&pet(None, &["kvmesh-1"]), 0), "no lease: nothing may run");
        assert!(!due(&pet(None, &[]), 5_000), "nothing to kill");
    }

    #[test]
    fn the_watchdog_is_armed_while_ha_domains_are_protected() {
        use WatchdogStep::*;
        assert_eq!(watchdog_step(false, false, true, false), Idle, "no device");
        assert_eq!(watchdog_step(true, false, true, false), Arm);
        assert_eq!(watchdog_step(true, true, true, false), Pet);
        assert_eq!(watchdog_step(true, true, false, false), Disarm);
        assert_eq!(watchdog_step(true, false, false, false), Idle);
        // A watchdog that cannot be stopped is kept fed instead.
        assert_eq!(watchdog_step(true, true, false, true), Pet, "nowayout: never disarmed");
        assert_eq!(watchdog_step(true, false, false, true), Idle, "nowayout: not armed without HA guests");
        assert_eq!(watchdog_step(true, false, true, true), Arm);
    }

    #[test]
    fn an_idle_guard_exits_only_with_nothing_left_to_guard() {
        let s = 1_000_000_000;
        let p = pet(Some(10 * s), &["kvmesh-1"]);
        // The daemon is connected: never.
        assert!(!may_exit(&p, 100 * s, None, 30 * s, false));
        // Gone, but not long enough.
        assert!(!may_exit(&p, 40 * s, Some(20 * s), 30 * s, false));
        // Gone long enough, lease over, target dead.
        assert!(may_exit(&p, 60 * s, Some(20 * s), 30 * s, false));
        // ... but not while a target still runs (a kill that failed).
        assert!(!may_exit(&p, 60 * s, Some(20 * s), 30 * s, true));
        // Nothing to guard at all.
        assert!(may_exit(&pet(Some(10 * s), &[]), 60 * s, Some(20 * s), 30 * s, true));
    }

    #[test]
    fn levels_parse_back() {
        for l in [FencingLevel::Watchdog, FencingLevel::GuardOnly, FencingLevel::DaemonOnly, FencingLevel::Embedded] {
            assert_eq!(FencingLevel::parse(l.as_str()), Some(l));
        }
    }
}
