//! REST for the cluster: its status and event log (also as Server-Sent
//! Events), the hosts (drain, activate), the placement policy, capacity
//! (N+1), balancing, and API tokens.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use kvmesh_proto as pb;
use pb::cluster_server::Cluster;
use pb::security_server::Security;
use serde::Deserialize;
use tonic::{Request, Status};
use utoipa::{IntoParams, ToSchema};

use super::body::{body, done, list, no_params, params, query, read, schema, wrote, NoQuery, ReadQuery, J, Q};
use super::{Answer, Body, Rest, Route};
use crate::view::{self, json};

pub const STATUS: Route = Route {
    method: "GET",
    path: "/api/v1/cluster/status",
    grpc: "/kvmesh.v1.Cluster/Status",
    summary: "Who answered, who leads, the Raft log's indexes and members",
    handler: || get(status),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::Status>),
};
pub const EVENTS: Route = Route {
    method: "GET",
    path: "/api/v1/events",
    grpc: "/kvmesh.v1.Cluster/ListEvents",
    summary: "The event log, oldest first",
    handler: || get(events),
    query: params::<EventsQuery>,
    body: Body::None,
    answer: Answer::Json(list::<view::Event>),
};
pub const EVENTS_STREAM: Route = Route {
    method: "GET",
    path: "/api/v1/events/stream",
    grpc: "/kvmesh.v1.Cluster/ListEvents",
    summary: "The event log as Server-Sent Events, following it (ids are sequence numbers; Last-Event-ID resumes)",
    handler: || get(super::stream::events_stream),
    query: params::<EventsQuery>,
    body: Body::None,
    answer: Answer::Events,
};
pub const POLICY_GET: Route = Route {
    method: "GET",
    path: "/api/v1/cluster/policy",
    grpc: "/kvmesh.v1.Cluster/GetPolicy",
    summary: "The placement policy",
    handler: || get(policy),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::Policy>),
};
pub const POLICY_PUT: Route = Route {
    method: "PUT",
    path: "/api/v1/cluster/policy",
    grpc: "/kvmesh.v1.Cluster/SetPolicy",
    summary: "Sets the placement policy (the fields given; the others stay)",
    handler: || put(set_policy),
    query: no_params,
    body: Body::Json(schema::<PolicySpec>),
    answer: Answer::Json(schema::<view::Policy>),
};
pub const CAPACITY: Route = Route {
    method: "GET",
    path: "/api/v1/cluster/capacity",
    grpc: "/kvmesh.v1.Cluster/Capacity",
    summary: "Whether the HA VMs of any one host could restart on the others (N+1)",
    handler: || get(capacity),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::Capacity>),
};
pub const BALANCE: Route = Route {
    method: "POST",
    path: "/api/v1/cluster/balance",
    grpc: "/kvmesh.v1.Cluster/Balance",
    summary: "Moves VMs live to even out the hosts (or only says which, with dry_run)",
    handler: || post(balance),
    query: no_params,
    body: Body::OptionalJson(schema::<BalanceSpec>),
    answer: Answer::Json(schema::<view::Balance>),
};
pub const TOKENS: Route = Route {
    method: "GET",
    path: "/api/v1/tokens",
    grpc: "/kvmesh.v1.Security/ListTokens",
    summary: "The API tokens (never their secrets)",
    handler: || get(tokens),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(list::<view::Token>),
};
pub const TOKEN_CREATE: Route = Route {
    method: "POST",
    path: "/api/v1/tokens",
    grpc: "/kvmesh.v1.Security/CreateToken",
    summary: "Makes an API token; its secret is in this answer only",
    handler: || post(create_token),
    query: no_params,
    body: Body::Json(schema::<TokenSpec>),
    answer: Answer::Json(schema::<view::TokenCreated>),
};
pub const TOKEN_REVOKE: Route = Route {
    method: "DELETE",
    path: "/api/v1/tokens/{name}",
    grpc: "/kvmesh.v1.Security/RevokeToken",
    summary: "Revokes an API token",
    handler: || delete(revoke_token),
    query: no_params,
    body: Body::None,
    answer: Answer::Nothing,
};
pub const NODES: Route = Route {
    method: "GET",
    path: "/api/v1/nodes",
    grpc: "/kvmesh.v1.Cluster/ListNodes",
    summary: "The hosts",
    handler: || get(nodes),
    query: params::<ReadQuery>,
    body: Body::None,
    answer: Answer::Json(list::<view::Node>),
};
pub const NODE: Route = Route {
    method: "GET",
    path: "/api/v1/nodes/{name}",
    grpc: "/kvmesh.v1.Cluster/GetNode",
    summary: "One host",
    handler: || get(node),
    query: params::<ReadQuery>,
    body: Body::None,
    answer: Answer::Json(schema::<view::Node>),
};
pub const DRAIN: Route = Route {
    method: "POST",
    path: "/api/v1/nodes/{name}/drain",
    grpc: "/kvmesh.v1.Cluster/Drain",
    summary: "Moves the host's VMs away (live unless cold) and takes it out of placement",
    handler: || post(drain),
    query: params::<DrainQuery>,
    body: Body::None,
    answer: Answer::Json(schema::<view::NodeAction>),
};
pub const ACTIVATE: Route = Route {
    method: "POST",
    path: "/api/v1/nodes/{name}/activate",
    grpc: "/kvmesh.v1.Cluster/Activate",
    summary: "Takes a drained host back into placement",
    handler: || post(activate),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::NodeAction>),
};

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    pub after: u64,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
struct DrainQuery {
    /// Stop the VMs and start them elsewhere instead of moving them live.
    #[serde(default)]
    cold: bool,
}

super::spec::choice!(
    /// How the scheduler places VMs.
    PolicyName { Spread = "spread", Pack = "pack", Balanced = "balanced" }
);
super::spec::choice!(
    /// What a token may do.
    RoleName { Viewer = "viewer", Operator = "operator", Admin = "admin" }
);

/// The policy fields to change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    policy: PolicyName,
    cpu_overcommit: Option<f64>,
    memory_overcommit: Option<f64>,
    /// Whether the leader evens the hosts out by itself.
    balance: Option<bool>,
}

/// How far to balance.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BalanceSpec {
    /// Only say which VMs would move.
    #[serde(default)]
    dry_run: bool,
    /// Hosts within this many percent of each other are balanced (0: the default).
    #[serde(default)]
    threshold_pct: u32,
    /// At most this many moves (0: the default).
    #[serde(default)]
    max_moves: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    name: String,
    role: RoleName,
}

async fn status(State(r): State<Rest>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json(view::Status::from(&r.cluster.status(Request::new(pb::StatusRequest {})).await?.into_inner())))
    };
    read(&headers, result.await)
}

async fn nodes(State(r): State<Rest>, headers: HeaderMap, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let nodes = r.cluster.list_nodes(Request::new(pb::ListNodesRequest { consistent })).await?.into_inner();
        Ok(json(nodes.nodes.iter().map(view::Node::from).collect::<Vec<_>>()))
    };
    read(&headers, result.await)
}

async fn node(State(r): State<Rest>, Path(name): Path<String>, headers: HeaderMap, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let node = r.cluster.get_node(Request::new(pb::GetNodeRequest { name, consistent })).await?;
        Ok(json(view::Node::from(&node.into_inner())))
    };
    read(&headers, result.await)
}

async fn drain(State(r): State<Rest>, Path(name): Path<String>, q: Q<DrainQuery>) -> Response {
    let result = async {
        let cold = query(q)?.cold;
        let reply = r.cluster.drain(Request::new(pb::NodeActionRequest { name: name.clone(), cold })).await?;
        Ok(json(view::NodeAction { node: name, state: crate::cli::json::node_state(reply.into_inner().state).into() }))
    };
    wrote(result.await)
}

async fn activate(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let reply = r.cluster.activate(Request::new(pb::NodeActionRequest { name: name.clone(), cold: false })).await?;
        Ok(json(view::NodeAction { node: name, state: crate::cli::json::node_state(reply.into_inner().state).into() }))
    };
    wrote(result.await)
}

async fn events(State(r): State<Rest>, headers: HeaderMap, q: Q<EventsQuery>) -> Response {
    let result = async {
        let after = query(q)?.after;
        let events = r.cluster.list_events(Request::new(pb::ListEventsRequest { after })).await?.into_inner();
        let known = known_nodes(&r).await;
        Ok(json(events.events.iter().map(|e| view::Event::new(e, &known)).collect::<Vec<_>>()))
    };
    read(&headers, result.await)
}

/// The cluster's node names, to say which host an event is about.
pub async fn known_nodes(r: &Rest) -> Vec<String> {
    match r.cluster.list_nodes(Request::new(pb::ListNodesRequest { consistent: false })).await {
        Ok(n) => n.into_inner().nodes.into_iter().map(|n| n.name).collect(),
        Err(_) => Vec::new(),
    }
}

async fn policy(State(r): State<Rest>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json(view::Policy::from(&r.cluster.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner())))
    };
    read(&headers, result.await)
}

async fn set_policy(State(r): State<Rest>, q: Q<NoQuery>, b: J<PolicySpec>) -> Response {
    let result = async {
        query(q)?;
        let b = body(b)?;
        let set = pb::SetPolicyRequest {
            policy: b.policy.as_str().into(),
            cpu_overcommit: b.cpu_overcommit,
            memory_overcommit: b.memory_overcommit,
            balance: b.balance,
        };
        Ok(json(view::Policy::from(&r.cluster.set_policy(Request::new(set)).await?.into_inner())))
    };
    wrote(result.await)
}

async fn capacity(State(r): State<Rest>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json(view::Capacity::from(&r.cluster.capacity(Request::new(pb::CapacityRequest {})).await?.into_inner())))
    };
    read(&headers, result.await)
}

async fn balance(State(r): State<Rest>, q: Q<NoQuery>, b: J<BalanceSpec>) -> Response {
    let result = async {
        query(q)?;
        let b = body(b)?;
        let ask = pb::BalanceRequest { dry_run: b.dry_run, threshold_pct: b.threshold_pct, max_moves: b.max_moves };
        Ok(json(view::Balance::from(&r.cluster.balance(Request::new(ask)).await?.into_inner())))
    };
    wrote(result.await)
}

async fn tokens(State(r): State<Rest>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let list = r.security.list_tokens(Request::new(pb::ListTokensRequest {})).await?.into_inner();
        Ok(json(list.tokens.iter().map(view::Token::from).collect::<Vec<_>>()))
    };
    read(&headers, result.await)
}

async fn create_token(State(r): State<Rest>, q: Q<NoQuery>, b: J<TokenSpec>) -> Response {
    let result = async {
        query(q)?;
        let b = body(b)?;
        let made = r
            .security
            .create_token(Request::new(pb::CreateTokenRequest { name: b.name, role: b.role.as_str().into() }))
            .await?;
        let made = made.into_inner();
        Ok(json(view::TokenCreated { name: made.name, role: made.role, token: made.token }))
    };
    // A secret is no cacheable object: no ETag.
    match result.await {
        Ok(v) => {
            let no_store = [(axum::http::header::CACHE_CONTROL, "no-store")];
            (axum::http::StatusCode::CREATED, no_store, axum::Json(v)).into_response()
        }
        Err(status) => super::problem(&status),
    }
}

async fn revoke_token(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        r.security.revoke_token(Request::new(pb::RevokeTokenRequest { name })).await?;
        Ok::<_, Status>(())
    };
    done(result.await)
}
