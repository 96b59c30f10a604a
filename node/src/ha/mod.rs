//! HA: heartbeats, failure detection, self-fencing, HA restarts and
//! maintenance, split by role.
//!
//! ```text
//!  every host (host.rs): heartbeat loop ──Heartbeat{domains, fencing, problem}──▶ leader (leader.rs)
//!              (newest list from health.rs)                 │ ensure_linearizable (still has quorum?)
//!              lease = send time of the latest ack ◀────────┘ ack {stale domains to destroy}
//!  every host (host.rs): fence loop, 100 ms: pet the guard (guard/) with the lease deadline;
//!              lease ran out ─▶ kill the HA domains, all at once (the guard does the same)
//!  leader (controller.rs, every 250 ms)
//!     silent > down_after ─▶ NodeDown (HA VMs unplaced)     new leader: waits down_after first
//!     unplaced & nobody runs it ─▶ plan_restarts ─▶ PlaceVm (new epoch) / SetPending(reason)
//!     drained & empty ─▶ Maintenance; back & clean ─▶ NodeUp; dead voter ─▶ promote a learner
//! ```
//!
//! Safety (DESIGN.md): a host destroys its HA domains once its last
//! acknowledged heartbeat was *sent* more than fence_after ago (the daemon,
//! and the guard even if the daemon is dead or stopped); the leader
//! declares it down only after down_after (≥ fence_after + the fencing
//! budget + a heartbeat) since it last *received* one; so the host has
//! fenced itself before its HA VMs are placed elsewhere. Every decision is a plain function of the
//! state, the heartbeats and the time passed in ([`decide`],
//! [`host::fence_targets`], [`host::lease_expired`]).

pub mod controller;
pub mod decide;
pub mod drain;
pub mod health;
pub mod host;
pub mod leader;

pub use host::{fence_loop, heartbeat_loop, Lease};
pub use leader::LeaderView;
