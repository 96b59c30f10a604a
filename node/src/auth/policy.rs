//! What each RPC needs, in one table, and the pure decision over it.
//!
//! Roles nest: `viewer` reads, `operator` also runs VMs (lifecycle,
//! consoles, migration, drains, images), `admin` also changes the cluster
//! (membership, storage, policy, tokens). Internal RPCs (Raft, host reports,
//! node-to-node data, joins) take only node certificates. An RPC missing
//! from the table needs `admin`, so a new one is closed until placed here.

use tonic::Status;

use super::{Caller, Principal, Role};

/// What a caller must be to make a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone: health checks.
    Open,
    /// Anyone; the handler checks a credential of its own (`cluster init`
    /// on a node that is not initialized, `Enroll` with a join token).
    Bootstrap,
    /// Only cluster nodes.
    Internal,
    Role(Role),
}

/// `(service, methods, need)`; `*` is every method of the service.
const TABLE: &[(&str, &[&str], Need)] = &[
    ("grpc.health.v1.Health", &["*"], Need::Open),
    ("grpc.reflection.v1.ServerReflection", &["*"], Need::Role(Role::Viewer)),
    ("grpc.reflection.v1alpha.ServerReflection", &["*"], Need::Role(Role::Viewer)),
    ("kvmesh.v1.Raft", &["*"], Need::Internal),
    ("kvmesh.v1.Host", &["*"], Need::Internal),
    ("kvmesh.v1.Cluster", &["Init", "Enroll"], Need::Bootstrap),
    // `OpenApi` is no RPC: it is the REST API's description, public as any API's reference is.
    ("kvmesh.v1.Cluster", &["OpenApi"], Need::Open),
    // The web UI's pages and login: what they show comes from REST calls,
    // each checked as its own route.
    ("kvmesh.ui", &["Page"], Need::Open),
    ("kvmesh.v1.Cluster", &["Join", "UpdateAddress"], Need::Internal),
    (
        "kvmesh.v1.Cluster",
        // `Metrics` is no RPC: it is `GET /metrics`, read like the rest.
        &["Status", "ListNodes", "ListEvents", "GetPolicy", "Capacity", "GetNode", "Metrics"],
        Need::Role(Role::Viewer),
    ),
    ("kvmesh.v1.Cluster", &["Drain", "Activate", "Balance"], Need::Role(Role::Operator)),
    ("kvmesh.v1.Cluster", &["Remove", "SetPolicy", "SetNode"], Need::Role(Role::Admin)),
    ("kvmesh.v1.Vms", &["List", "Get", "Explain"], Need::Role(Role::Viewer)),
    ("kvmesh.v1.Vms", &["*"], Need::Role(Role::Operator)),
    ("kvmesh.v1.Storage", &["List", "Get"], Need::Role(Role::Viewer)),
    ("kvmesh.v1.Storage", &["*"], Need::Role(Role::Admin)),
    ("kvmesh.v1.Networks", &["List", "Get"], Need::Role(Role::Viewer)),
    ("kvmesh.v1.Networks", &["*"], Need::Role(Role::Admin)),
    ("kvmesh.v1.Images", &["List", "Get"], Need::Role(Role::Viewer)),
    ("kvmesh.v1.Images", &["*"], Need::Role(Role::Operator)),
    ("kvmesh.v1.Security", &["*"], Need::Role(Role::Admin)),
];

/// What `path` (`/package.Service/Method`) needs: the first row that matches.
pub fn need(path: &str) -> Need {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Need::Role(Role::Admin);
    };
    TABLE
        .iter()
        .find(|(s, methods, _)| *s == service && methods.iter().any(|m| *m == "*" || *m == method))
        .map_or(Need::Role(Role::Admin), |(_, _, need)| *need)
}

/// Whether `caller` may call `path`; the error says what is missing.
pub fn decide(path: &str, caller: &Caller) -> Result<(), Status> {
    let method = path.rsplit('/').next().unwrap_or(path);
    match (need(path), &caller.principal) {
        (Need::Open | Need::Bootstrap, _) | (_, Principal::Node(_)) => Ok(()),
        (Need::Internal, _) => Err(Status::permission_denied(format!(
            "{method} is internal to the cluster: only its nodes, with their node certificates, may call it"
        ))),
        (Need::Role(_), Principal::Anonymous) => Err(Status::unauthenticated(
            "this cluster needs a credential: give an API token with --token or KVMESH_TOKEN, or use the client \
             config that `kvmesh cluster init` wrote (--client-config, KVMESH_CLIENT_CONFIG); an admin makes tokens \
             with `kvmesh token create NAME --role viewer|operator|admin`",
        )),
        (Need::Role(needed), Principal::User { name, role }) if role < &needed => {
            Err(Status::permission_denied(format!(
                "{method} needs the {} role; {name} has the {} role (an admin can make a token with `kvmesh token create NAME --role {}`)",
                needed.as_str(),
                role.as_str(),
                needed.as_str()
            )))
        }
        (Need::Role(_), Principal::User { .. }) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> Caller {
        Caller { principal: Principal::User { name: "u".into(), role }, source: "127.0.0.1:1".into() }
    }

    #[test]
    fn roles_nest_and_internal_calls_take_nodes_only() {
        let node = Caller { principal: Principal::Node("n1".into()), source: String::new() };
        let anon = Caller { principal: Principal::Anonymous, source: String::new() };
        let cases: &[(&str, [bool; 5])] = &[
            // path: anonymous, viewer, operator, admin, node
            ("/kvmesh.v1.Vms/List", [false, true, true, true, true]),
            ("/kvmesh.v1.Vms/Delete", [false, false, true, true, true]),
            ("/kvmesh.v1.Vms/Console", [false, false, true, true, true]),
            ("/kvmesh.v1.Vms/Attach", [false, false, true, true, true]),
            ("/kvmesh.v1.Host/Attach", [false, false, false, false, true]),
            ("/kvmesh.v1.Cluster/Remove", [false, false, false, true, true]),
            ("/kvmesh.v1.Cluster/Drain", [false, false, true, true, true]),
            ("/kvmesh.v1.Storage/Add", [false, false, false, true, true]),
            ("/kvmesh.v1.Security/CreateToken", [false, false, false, true, true]),
            ("/kvmesh.v1.Raft/AppendEntries", [false, false, false, false, true]),
            ("/kvmesh.v1.Host/Heartbeat", [false, false, false, false, true]),
            ("/kvmesh.v1.Cluster/Join", [false, false, false, false, true]),
            ("/kvmesh.v1.Cluster/Enroll", [true, true, true, true, true]),
            ("/grpc.health.v1.Health/Check", [true, true, true, true, true]),
            ("/kvmesh.v1.Cluster/SomethingNew", [false, false, false, true, true]),
            ("garbage", [false, false, false, true, true]),
        ];
        for (path, expect) in cases {
            let callers = [&anon, &user(Role::Viewer), &user(Role::Operator), &user(Role::Admin), &node];
            for (caller, want) in callers.iter().zip(expect) {
                assert_eq!(decide(path, caller).is_ok(), *want, "{path} by {caller}");
            }
        }
    }

    #[test]
    fn a_refusal_names_the_role_needed() {
        let e = decide("/kvmesh.v1.Vms/Delete", &user(Role::Viewer)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("needs the operator role"), "{}", e.message());
        let e = decide("/kvmesh.v1.Vms/List", &Caller { principal: Principal::Anonymous, source: String::new() });
        assert_eq!(e.unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
