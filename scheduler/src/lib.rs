//! Pure VM placement for kvmesh.
//!
//! The leader adapts the replicated state into these small input types,
//! asks for a decision, and commits it through Raft. Nothing here does I/O,
//! reads a clock or draws random numbers: the same inputs always give the
//! same answer, and every rejection and score comes back as data that the
//! CLI shows (`vm explain`, refusals with one reason per node).
//!
//! The design follows Nomad's scheduler: [`filter`] rules a node out with a
//! reason (feasibility), [`score`] ranks what is left under the cluster's
//! [`Policy`], and ties are broken by a hash seeded from the VM id.
//! [`plan`] places many VMs at once (HA restarts, evacuations), reserving
//! capacity as it goes; [`capacity`] answers whether every host's HA VMs
//! could be restarted on the others (N+1).
//!
//! ```text
//!   nodes ──▶ filter (up? pinned? labels? cpu/mem after overcommit? (anti-)affinity?)
//!               │ rejected: NodeRejection { node, reason }
//!               ▼
//!            score (spread | pack | balanced, + preferred labels, − soft anti-affinity)
//!               ▼
//!            best (score, then seeded tie-break) ──▶ Decision
//! ```

pub mod balance;
pub mod capacity;
mod error;
pub mod filter;
pub mod model;
pub mod place;
pub mod plan;
pub mod score;

pub use balance::{plan_balance, Move, Placed};
pub use capacity::{ha_reservation, HostReservation, Reservation};
pub use error::{Error, Result};
pub use filter::{admits, check, fits, ClusterFacts, Rejection};
pub use model::{NetworkDown, NodeState, NodeView, Policy, Settings, StorageState, VmRequest, OVERCOMMIT_MILLI};
pub use place::{explain, explain_rejections, place, Decision, Evaluation, NodeRejection, Outcome};
pub use plan::{plan_evacuation, plan_restarts, Plan, Unplaced};

#[cfg(test)]
mod tests;
