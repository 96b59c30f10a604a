//! HA: heartbeats, failure detection, self-fencing, HA restarts and
//! maintenance, split by role.
//!
//! ```text
//!  every host (host.rs): heartbeat loop ──Heartbeat{domains}──▶ leader (leader.rs)
//!              (fence first if its lease ran out)      │ ensure_linearizable (still has quorum?)
//!              lease = send time of the latest ack ◀───┘ ack {stale domains to destroy}
//!  leader (controller.rs, every 250 ms)
//!     silent > down_after ─▶ NodeDown (HA VMs unplaced)     new leader: waits down_after first
//!     unplaced & nobody runs it ─▶ plan_restarts ─▶ PlaceVm (new epoch) / SetPending(reason)
//!     drained & empty ─▶ Maintenance; back & clean ─▶ NodeUp; dead voter ─▶ promote a learner
//! ```
//!
//! Safety (DESIGN.md): a host destroys its HA domains once its last
//! acknowledged heartbeat was *sent* more than fence_after ago; the leader
//! declares it down only after down_after (> fence_after + 2 heartbeats)
//! since it last *received* one; so the host has fenced itself before its
//! HA VMs are placed elsewhere. Every decision is a plain function of the
//! state, the heartbeats and the time passed in ([`decide`],
//! [`host::fence_targets`], [`host::lease_expired`]).

pub mod controller;
pub mod decide;
pub mod host;
pub mod leader;

pub use host::{heartbeat_loop, Lease};
pub use leader::LeaderView;
