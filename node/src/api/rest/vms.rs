//! REST for VMs: list and read them; `PUT /api/v1/vms/{name}` makes a VM
//! or brings one to the spec given (idempotent, as a Terraform provider
//! needs); delete, start, stop, restart, migrate, the scheduler's
//! explanation for a spec, and the serial console's recent output.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use kvmesh_proto as pb;
use pb::vms_server::Vms;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Status};
use utoipa::{IntoParams, ToSchema};

use super::body::{
    body, check_if_match, etag, list, no_params, params, query, read, schema, wrote, NoQuery, ReadQuery, J, Q,
};
use super::spec::VmSpec;
use super::{Answer, Body, Rest, Route};
use crate::view::{self, json};

pub const LIST: Route = Route {
    method: "GET",
    path: "/api/v1/vms",
    grpc: "/kvmesh.v1.Vms/List",
    summary: "The VMs",
    handler: || get(vms),
    query: params::<ReadQuery>,
    body: Body::None,
    answer: Answer::Json(list::<view::Vm>),
};
pub const GET: Route = Route {
    method: "GET",
    path: "/api/v1/vms/{name}",
    grpc: "/kvmesh.v1.Vms/Get",
    summary: "One VM: its settings (defaults explicit), where it runs, its disks and NICs",
    handler: || get(vm),
    query: params::<ReadQuery>,
    body: Body::None,
    answer: Answer::Json(schema::<view::Vm>),
};
pub const PUT: Route = Route {
    method: "PUT",
    path: "/api/v1/vms/{name}",
    grpc: "/kvmesh.v1.Vms/Create",
    summary:
        "Makes the VM (201, placed and started) or brings it to this spec (200); the same PUT again changes nothing",
    handler: || put(put_vm),
    query: no_params,
    body: Body::Json(schema::<VmSpec>),
    answer: Answer::Json(schema::<view::Vm>),
};
pub const DELETE: Route = Route {
    method: "DELETE",
    path: "/api/v1/vms/{name}",
    grpc: "/kvmesh.v1.Vms/Delete",
    summary: "Deletes the VM (202: it is stopped and its disks removed; it is gone once GET says 404)",
    handler: || delete(delete_vm),
    query: params::<DeleteQuery>,
    body: Body::None,
    answer: Answer::Nothing,
};
pub const EXPLAIN: Route = Route {
    method: "POST",
    path: "/api/v1/vms/{name}/explain",
    grpc: "/kvmesh.v1.Vms/Explain",
    summary: "Where the scheduler would place a VM of this spec, and why (nothing is made)",
    handler: || post(explain),
    query: no_params,
    body: Body::Json(schema::<VmSpec>),
    answer: Answer::Json(schema::<view::Explanation>),
};
pub const START: Route = Route {
    method: "POST",
    path: "/api/v1/vms/{name}/start",
    grpc: "/kvmesh.v1.Vms/Start",
    summary: "Starts the VM",
    handler: || post(start),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::Vm>),
};
pub const STOP: Route = Route {
    method: "POST",
    path: "/api/v1/vms/{name}/stop",
    grpc: "/kvmesh.v1.Vms/Stop",
    summary: "Stops the VM (asks the guest; force powers it off)",
    handler: || post(stop),
    query: params::<StopQuery>,
    body: Body::None,
    answer: Answer::Json(schema::<view::Vm>),
};
pub const RESTART: Route = Route {
    method: "POST",
    path: "/api/v1/vms/{name}/restart",
    grpc: "/kvmesh.v1.Vms/Restart",
    summary: "Restarts the VM",
    handler: || post(restart),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::Vm>),
};
pub const MIGRATE: Route = Route {
    method: "POST",
    path: "/api/v1/vms/{name}/migrate",
    grpc: "/kvmesh.v1.Vms/Migrate",
    summary: "Moves the running VM live to another host (the scheduler's choice unless `to`)",
    handler: || post(migrate),
    query: no_params,
    body: Body::Json(schema::<MigrateSpec>),
    answer: Answer::Json(schema::<Migration>),
};
pub const CONSOLE: Route = Route {
    method: "GET",
    path: "/api/v1/vms/{name}/console",
    grpc: "/kvmesh.v1.Vms/Console",
    summary: "The serial console's recent output, from the host that runs the VM",
    handler: || get(console),
    query: params::<ConsoleQuery>,
    body: Body::None,
    answer: Answer::Json(schema::<ConsoleOutput>),
};

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    /// Power off at once instead of asking the guest.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Keep the VM's volumes.
    #[serde(default)]
    keep_disks: bool,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    /// At most this many of the last bytes (0: all the host keeps).
    #[serde(default)]
    bytes: u64,
}

/// Where to move a VM.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct MigrateSpec {
    /// The target host; unset: the scheduler's choice.
    #[serde(default)]
    to: Option<String>,
    /// Only say where it would go.
    #[serde(default)]
    dry_run: bool,
    /// Bandwidth cap in MiB/s (0: none).
    #[serde(default)]
    bandwidth_mib: u64,
    /// Copy local disks along (a move off local storage).
    #[serde(default)]
    copy_storage: bool,
}

/// A migration begun (the VM), or where it would go (a dry run).
#[derive(Serialize, ToSchema)]
pub struct Migration {
    vm: Option<view::Vm>,
    explanation: Option<view::Explanation>,
}

/// The serial console's recent output.
#[derive(Serialize, ToSchema)]
pub struct ConsoleOutput {
    /// The host that answered (the one running the VM).
    node: String,
    /// The bytes as text (invalid UTF-8 replaced).
    data: String,
}

async fn vms(State(r): State<Rest>, headers: HeaderMap, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let vms = r.vms.list(Request::new(pb::ListVmsRequest { consistent })).await?.into_inner();
        Ok(json(vms.vms.iter().map(view::Vm::from).collect::<Vec<_>>()))
    };
    read(&headers, result.await)
}

async fn vm(State(r): State<Rest>, Path(name): Path<String>, headers: HeaderMap, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let vm = r.vms.get(Request::new(pb::GetVmRequest { name, consistent })).await?;
        Ok(json(view::Vm::from(&vm.into_inner())))
    };
    read(&headers, result.await)
}

/// Whether a PUT wrote anything (`true`) or found the object as written
/// (`false`): what an Ansible module reports as `changed`.
pub const CHANGED: header::HeaderName = header::HeaderName::from_static("x-kvmesh-changed");

/// The VM as the leader has it now, if it exists: as GET shows it when
/// `as_read` (an `If-Match` compares with GET's ETag), else its record
/// alone (no call to its host).
async fn current(r: &Rest, name: &str, as_read: bool) -> Result<Option<pb::Vm>, Status> {
    let found = match as_read {
        true => r
            .vms
            .get(Request::new(pb::GetVmRequest { name: name.into(), consistent: true }))
            .await
            .map(|v| v.into_inner()),
        false => r.vms.record(name).await,
    };
    match found {
        Ok(vm) => Ok(Some(vm)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

async fn put_vm(
    State(r): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Q<NoQuery>,
    b: J<VmSpec>,
) -> Response {
    let result = async {
        query(q)?;
        let spec = body(b)?.normalized();
        let mut now = current(&r, &name, headers.contains_key(header::IF_MATCH)).await?;
        check_if_match(&headers, now.as_ref().map(|v| json(view::Vm::from(v))).as_ref())?;
        let mut created = false;
        if now.is_none() {
            match r.vms.create(Request::new(spec.create_request(&name))).await {
                Ok(vm) => {
                    now = Some(vm.into_inner());
                    created = true;
                }
                // Another PUT made it meanwhile: bring that one to the spec.
                Err(s) if s.code() == Code::AlreadyExists => now = current(&r, &name, false).await?,
                Err(s) => return Err(s),
            }
        }
        let mut vm =
            now.ok_or_else(|| Status::not_found(format!("VM {name} was deleted while it was being written")))?;
        // Also after a create: what creating does not set (the description)
        // is set by the same update as any change.
        let changes = spec.changes(&vm)?;
        let changed =
            created || changes.reset_cloud_init.is_some() || changes.update.is_some() || changes.cdrom.is_some();
        {
            if let Some(reset) = changes.reset_cloud_init {
                r.vms.update(Request::new(reset)).await?;
            }
            if let Some(update) = changes.update {
                vm = r.vms.update(Request::new(update)).await?.into_inner();
            }
            if let Some(image) = changes.cdrom {
                vm = r.vms.cdrom(Request::new(pb::CdromRequest { vm: name.clone(), image })).await?.into_inner();
            }
        }
        Ok((created, changed, json(view::Vm::from(&vm))))
    };
    match result.await {
        Ok((true, _, v)) => {
            let location = format!("/api/v1/vms/{name}");
            let headers = [(header::ETAG, etag(&v)), (header::LOCATION, location), (CHANGED, "true".into())];
            (StatusCode::CREATED, headers, axum::Json(v)).into_response()
        }
        Ok((false, changed, v)) => {
            let mut response = wrote(Ok(v));
            response.headers_mut().insert(CHANGED, if changed { "true" } else { "false" }.parse().expect("ascii"));
            response
        }
        Err(status) => super::problem(&status),
    }
}

async fn delete_vm(State(r): State<Rest>, Path(name): Path<String>, headers: HeaderMap, q: Q<DeleteQuery>) -> Response {
    let result = async {
        let keep_disks = query(q)?.keep_disks;
        if headers.contains_key(header::IF_MATCH) {
            let now = current(&r, &name, true).await?;
            check_if_match(&headers, now.as_ref().map(|v| json(view::Vm::from(v))).as_ref())?;
        }
        r.vms.delete(Request::new(pb::DeleteVmRequest { name, keep_disks })).await?;
        Ok::<_, Status>(())
    };
    match result.await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(status) => super::problem(&status),
    }
}

async fn explain(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>, b: J<VmSpec>) -> Response {
    let result = async {
        query(q)?;
        let spec = body(b)?.normalized().create_request(&name);
        let e = r.vms.explain(Request::new(pb::ExplainRequest { name, spec: Some(spec) })).await?;
        Ok(json(view::Explanation::from(&e.into_inner())))
    };
    wrote(result.await)
}

async fn start(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let vm = r.vms.start(Request::new(pb::VmActionRequest { name, force: false })).await?;
        Ok(json(view::Vm::from(&vm.into_inner())))
    };
    wrote(result.await)
}

async fn stop(State(r): State<Rest>, Path(name): Path<String>, q: Q<StopQuery>) -> Response {
    let result = async {
        let force = query(q)?.force;
        let vm = r.vms.stop(Request::new(pb::VmActionRequest { name, force })).await?;
        Ok(json(view::Vm::from(&vm.into_inner())))
    };
    wrote(result.await)
}

async fn restart(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let vm = r.vms.restart(Request::new(pb::VmActionRequest { name, force: false })).await?;
        Ok(json(view::Vm::from(&vm.into_inner())))
    };
    wrote(result.await)
}

async fn migrate(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>, b: J<MigrateSpec>) -> Response {
    let result = async {
        query(q)?;
        let b = body(b)?;
        let ask = pb::MigrateVmRequest {
            name,
            to: b.to,
            dry_run: b.dry_run,
            bandwidth_mib: b.bandwidth_mib,
            copy_storage: b.copy_storage,
        };
        let reply = r.vms.migrate(Request::new(ask)).await?.into_inner();
        Ok(json(Migration {
            vm: reply.vm.as_ref().map(view::Vm::from),
            explanation: reply.explanation.as_ref().map(view::Explanation::from),
        }))
    };
    wrote(result.await)
}

async fn console(State(r): State<Rest>, Path(name): Path<String>, headers: HeaderMap, q: Q<ConsoleQuery>) -> Response {
    let result = async {
        let bytes = query(q)?.bytes;
        let out = r.vms.console(Request::new(pb::ConsoleRequest { name, bytes })).await?.into_inner();
        Ok(json(ConsoleOutput { node: out.node, data: String::from_utf8_lossy(&out.data).into_owned() }))
    };
    read(&headers, result.await)
}
