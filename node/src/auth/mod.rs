//! Who may do what: the caller of each request ([`Caller`]), the policy
//! table that says what each RPC needs ([`policy`]), the gate that applies
//! it where a request arrives ([`gate`]), and the token formats
//! ([`tokens`]).
//!
//! The caller is established once, by the gate, and carried in a task-local
//! for the rest of the request: forwarding puts it in the forwarded
//! request's metadata (trusted only over a node certificate), and the write
//! path records it in the events the write causes.

pub mod gate;
pub mod policy;
pub mod tokens;

use std::fmt;

/// The header a node puts on a request it forwards for a user:
/// `<role> <name> <source address>`.
pub const PRINCIPAL_HEADER: &str = "kvmesh-principal";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A cluster node, by its certificate.
    Node(String),
    /// A user or program, by API token or client certificate.
    User { name: String, role: Role },
    /// No credential at all.
    Anonymous,
}

/// The caller of the request being handled, and where it came from.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub source: String,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.principal {
            Principal::Node(name) => write!(f, "node {name}"),
            Principal::User { name, role } => write!(f, "{name} ({}) from {}", role.as_str(), self.source),
            Principal::Anonymous => write!(f, "anonymous from {}", self.source),
        }
    }
}

tokio::task_local! {
    /// The caller of the request this task serves (set by the gate).
    pub static CALLER: Caller;
}

/// The current caller, if this task serves a request.
pub fn caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

/// What the event log records as the author of a write made now: a user
/// (directly or forwarded), or nothing for the cluster's own work.
pub fn audit_by() -> Option<String> {
    caller().filter(|c| !matches!(c.principal, Principal::Node(_))).map(|c| c.to_string())
}

/// The principal header for a request this node forwards for its caller.
pub fn forwarded_principal() -> Option<String> {
    let caller = caller()?;
    match caller.principal {
        Principal::User { name, role } => Some(format!("{} {name} {}", role.as_str(), caller.source)),
        _ => None,
    }
}

/// Reads a forwarded principal header back.
pub fn parse_forwarded(value: &str) -> Option<Caller> {
    let mut parts = value.splitn(3, ' ');
    let role = Role::parse(parts.next()?)?;
    let name = parts.next()?.to_string();
    let source = parts.next().unwrap_or("").to_string();
    Some(Caller { principal: Principal::User { name, role }, source })
}
