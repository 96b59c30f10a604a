//! What this process measures as it runs, for `/metrics`: latencies as
//! histograms and events as counters, recorded where they happen (the
//! gate, the write path, the WAL, the HA controller, the fencing loop,
//! a migration's settling) and kept for the life of the process. A scrape
//! registers these same metrics (clones share their values) beside the
//! gauges it reads fresh.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

pub struct Telemetry {
    api_seconds: Histograms,
    proposal_seconds: Histogram,
    wal_fsync_seconds: Histogram,
    leader_changes: Counter,
    ha_restarts: Counter,
    fences: Counter,
    migration_seconds: Histogram,
    migration_downtime_seconds: Histogram,
    migration_failures: Counter,
}

/// 0.5 ms to ~16 s: a WAL fsync on an idle SSD to a write through an election.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 1 s to ~17 min: a small guest moved to a big one under load.
fn long() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// 1 ms to ~16 s of pause at the switch-over.
fn pause() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub fn get() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| {
        // The raft crate's WAL reports each fsync here.
        kvmesh_raft::store::on_wal_fsync(|d| get().wal_fsync_seconds.observe(d.as_secs_f64()));
        Telemetry {
            api_seconds: Family::new_with_constructor(latency),
            proposal_seconds: latency(),
            wal_fsync_seconds: latency(),
            leader_changes: Counter::default(),
            ha_restarts: Counter::default(),
            fences: Counter::default(),
            migration_seconds: long(),
            migration_downtime_seconds: pause(),
            migration_failures: Counter::default(),
        }
    })
}

impl Telemetry {
    /// One API request answered: its gRPC method and code (a REST request
    /// counts as its route's method, its answer as the code it carries).
    pub fn api_request(&self, method: &str, code: &str, took: Duration) {
        let labels = vec![("method".to_string(), method.to_string()), ("code".to_string(), code.to_string())];
        self.api_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// One write through [`NodeCtx::propose`](crate::ctx::NodeCtx::propose), committed or not.
    pub fn proposal(&self, took: Duration) {
        self.proposal_seconds.observe(took.as_secs_f64());
    }

    pub fn ha_restart(&self) {
        self.ha_restarts.inc();
    }

    /// This host's lease ran out after it had been granted: it fenced.
    pub fn fenced(&self) {
        self.fences.inc();
    }

    /// A live migration this host sent, finished (`Some` downtime if known) or failed (`None`).
    pub fn migration(&self, took: Duration, outcome: Option<Option<Duration>>) {
        match outcome {
            Some(downtime) => {
                self.migration_seconds.observe(took.as_secs_f64());
                if let Some(d) = downtime {
                    self.migration_downtime_seconds.observe(d.as_secs_f64());
                }
            }
            None => {
                self.migration_failures.inc();
            }
        }
    }

    /// Adds every measurement to a scrape's registry.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "api_request_seconds",
            "API requests this node answered, by method and code",
            self.api_seconds.clone(),
        );
        r.register(
            "raft_proposal_seconds",
            "Writes from this node until committed and applied (or refused)",
            self.proposal_seconds.clone(),
        );
        r.register("raft_wal_fsync_seconds", "fdatasyncs of this node's Raft log", self.wal_fsync_seconds.clone());
        r.register("raft_leader_changes", "Times this node saw a new leader", self.leader_changes.clone());
        r.register(
            "ha_restarts",
            "HA VMs this node, as leader, placed again after their host was lost",
            self.ha_restarts.clone(),
        );
        r.register("fences", "Times this host's lease ran out and it fenced its HA guests", self.fences.clone());
        r.register(
            "migration_seconds",
            "Live migrations this host sent, begin to finish",
            self.migration_seconds.clone(),
        );
        r.register(
            "migration_downtime_seconds",
            "The guest's pause at a live migration's switch-over",
            self.migration_downtime_seconds.clone(),
        );
        r.register("migration_failures", "Live migrations this host sent that failed", self.migration_failures.clone());
    }
}

/// Counts leader changes as this node sees them, for the life of the process.
pub async fn watch_leader(ctx: Arc<crate::ctx::NodeCtx>) {
    let mut metrics = ctx.raft.metrics();
    let mut last = metrics.borrow().current_leader;
    while metrics.changed().await.is_ok() {
        let now = metrics.borrow().current_leader;
        if now != last && now.is_some() {
            get().leader_changes.inc();
        }
        last = now;
    }
}
