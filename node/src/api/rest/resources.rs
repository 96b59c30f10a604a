//! REST for what VMs use: storage domains, images (uploaded as the request
//! body, streamed to disk as `kvmesh image import` streams it) and
//! networks. A PUT of a domain or network that exists as written changes
//! nothing (200); one that differs is refused, since neither changes in
//! place.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use futures::StreamExt;
use kvmesh_proto as pb;
use pb::images_server::Images;
use pb::networks_server::Networks;
use pb::storage_server::Storage;
use serde::Deserialize;
use tonic::{Code, Request, Status};
use utoipa::{IntoParams, ToSchema};

use super::body::{body, done, etag, list, no_params, params, query, read, schema, NoQuery, J, Q};
use super::{Answer, Body, Rest, Route};
use crate::view::{self, json};

pub const STORAGE_LIST: Route = Route {
    method: "GET",
    path: "/api/v1/storage",
    grpc: "/kvmesh.v1.Storage/List",
    summary: "The storage domains, as each host has them",
    handler: || get(storage_list),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(list::<view::StorageDomain>),
};
pub const STORAGE_GET: Route = Route {
    method: "GET",
    path: "/api/v1/storage/{name}",
    grpc: "/kvmesh.v1.Storage/Get",
    summary: "One storage domain",
    handler: || get(storage_get),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::StorageDomain>),
};
pub const STORAGE_PUT: Route = Route {
    method: "PUT",
    path: "/api/v1/storage/{name}",
    grpc: "/kvmesh.v1.Storage/Add",
    summary: "Adds a storage domain (201), or confirms it as written (200)",
    handler: || put(storage_put),
    query: no_params,
    body: Body::Json(schema::<StorageSpec>),
    answer: Answer::Json(schema::<view::StorageDomain>),
};
pub const STORAGE_DELETE: Route = Route {
    method: "DELETE",
    path: "/api/v1/storage/{name}",
    grpc: "/kvmesh.v1.Storage/Remove",
    summary: "Removes an unused storage domain",
    handler: || delete(storage_delete),
    query: no_params,
    body: Body::None,
    answer: Answer::Nothing,
};
pub const IMAGES: Route = Route {
    method: "GET",
    path: "/api/v1/images",
    grpc: "/kvmesh.v1.Images/List",
    summary: "The imported images",
    handler: || get(images),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(list::<view::Image>),
};
pub const IMAGE_GET: Route = Route {
    method: "GET",
    path: "/api/v1/images/{name}",
    grpc: "/kvmesh.v1.Images/Get",
    summary: "One image",
    handler: || get(image),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::Image>),
};
pub const IMAGE_UPLOAD: Route = Route {
    method: "PUT",
    path: "/api/v1/images/{name}",
    grpc: "/kvmesh.v1.Images/Import",
    summary: "Uploads an image: the body is the file (Content-Length required); qcow2 or raw is read from it",
    handler: || put(upload).layer(axum::extract::DefaultBodyLimit::disable()),
    query: params::<UploadQuery>,
    body: Body::Bytes,
    answer: Answer::Json(schema::<view::Image>),
};
pub const IMAGE_DELETE: Route = Route {
    method: "DELETE",
    path: "/api/v1/images/{name}",
    grpc: "/kvmesh.v1.Images/Delete",
    summary: "Deletes an image no VM uses",
    handler: || delete(image_delete),
    query: no_params,
    body: Body::None,
    answer: Answer::Nothing,
};
pub const NETWORKS: Route = Route {
    method: "GET",
    path: "/api/v1/networks",
    grpc: "/kvmesh.v1.Networks/List",
    summary: "The cluster's networks, as each host has them",
    handler: || get(networks),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(list::<view::Network>),
};
pub const NETWORK_GET: Route = Route {
    method: "GET",
    path: "/api/v1/networks/{name}",
    grpc: "/kvmesh.v1.Networks/Get",
    summary: "One network",
    handler: || get(network),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(schema::<view::Network>),
};
pub const NETWORK_PUT: Route = Route {
    method: "PUT",
    path: "/api/v1/networks/{name}",
    grpc: "/kvmesh.v1.Networks/Add",
    summary: "Adds a network (201), or confirms it as written (200)",
    handler: || put(network_put),
    query: no_params,
    body: Body::Json(schema::<NetworkSpec>),
    answer: Answer::Json(schema::<view::Network>),
};
pub const NETWORK_DELETE: Route = Route {
    method: "DELETE",
    path: "/api/v1/networks/{name}",
    grpc: "/kvmesh.v1.Networks/Remove",
    summary: "Removes a network no NIC uses",
    handler: || delete(network_delete),
    query: no_params,
    body: Body::None,
    answer: Answer::Nothing,
};

super::spec::choice!(
    /// A storage domain's kind.
    StorageKind { Local = "local", SharedDir = "shared-dir", Nfs = "nfs" }
);
super::spec::choice!(
    /// A network's kind.
    NetworkKind { Isolated = "isolated", Bridge = "bridge", Vlan = "vlan", Vxlan = "vxlan" }
);
super::spec::choice!(
    /// An image's kind.
    ImageKind { Disk = "disk", Iso = "iso", Kernel = "kernel", Initrd = "initrd" }
);

/// A storage domain.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    kind: StorageKind,
    /// The folder (local: default the data dir's images; shared-dir: required).
    #[serde(default)]
    path: Option<String>,
    /// nfs: the server and its export.
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    export: Option<String>,
    /// The hosts that have it; empty: every host.
    #[serde(default)]
    nodes: Vec<String>,
}

/// A network.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    kind: NetworkKind,
    /// bridge: the host bridge's name.
    #[serde(default)]
    bridge: Option<String>,
    /// vlan: the uplink and VLAN id.
    #[serde(default)]
    uplink: Option<String>,
    #[serde(default)]
    vlan: Option<u32>,
    /// vxlan: the VNI.
    #[serde(default)]
    vni: Option<u32>,
    #[serde(default)]
    mtu: Option<u32>,
    /// A host without it is not up.
    #[serde(default)]
    required: bool,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// The storage domain to keep it on.
    storage: String,
    /// Default: disk.
    #[serde(default)]
    kind: Option<ImageKind>,
}

/// A PUT's answer: 201 with its location when it made the object, else
/// 200 (an image upload always makes one); `x-kvmesh-changed` says which.
fn made(result: Result<(bool, serde_json::Value), Status>, location: String) -> Response {
    use super::vms::CHANGED;
    match result {
        Ok((true, v)) => {
            let headers = [(header::ETAG, etag(&v)), (header::LOCATION, location), (CHANGED, "true".into())];
            (StatusCode::CREATED, headers, axum::Json(v)).into_response()
        }
        Ok((false, v)) => {
            (StatusCode::OK, [(header::ETAG, etag(&v)), (CHANGED, "false".into())], axum::Json(v)).into_response()
        }
        Err(status) => super::problem(&status),
    }
}

/// Refuses a PUT of an existing object that differs from it.
fn differs(what: &str, name: &str, field: &str) -> Status {
    Status::already_exists(format!(
        "{what} {name} exists with another {field}; it cannot change in place: remove it and PUT it again"
    ))
}

async fn storage_list(State(r): State<Rest>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let all = r.storage.list(Request::new(pb::ListStorageRequest {})).await?.into_inner();
        Ok(json(all.domains.iter().map(view::StorageDomain::from).collect::<Vec<_>>()))
    };
    read(&headers, result.await)
}

async fn storage_get(State(r): State<Rest>, Path(name): Path<String>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json(view::StorageDomain::from(
            &r.storage.get(Request::new(pb::GetStorageRequest { name })).await?.into_inner(),
        )))
    };
    read(&headers, result.await)
}

async fn storage_put(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>, b: J<StorageSpec>) -> Response {
    let location = format!("/api/v1/storage/{name}");
    let result = async {
        query(q)?;
        let s = body(b)?;
        let add = pb::AddStorageRequest {
            name: name.clone(),
            kind: s.kind.as_str().into(),
            path: s.path,
            server: s.server,
            export: s.export,
            nodes: s.nodes,
        };
        // Compared as the cluster stores it (a trailing '/' cut, hosts a set).
        let wanted = crate::api::storage::validate_add(&add)?;
        match r.storage.get(Request::new(pb::GetStorageRequest { name: name.clone() })).await {
            Ok(now) => {
                let now = now.into_inner();
                if now.kind != s.kind.as_str() {
                    return Err(differs("storage", &name, "kind"));
                }
                if now.location != wanted.kind.location() {
                    return Err(differs("storage", &name, "location"));
                }
                if now.nodes.iter().cloned().collect::<std::collections::BTreeSet<_>>() != wanted.nodes {
                    return Err(differs("storage", &name, "set of hosts"));
                }
                Ok((false, json(view::StorageDomain::from(&now))))
            }
            Err(e) if e.code() == Code::NotFound => {
                Ok((true, json(view::StorageDomain::from(&r.storage.add(Request::new(add)).await?.into_inner()))))
            }
            Err(e) => Err(e),
        }
    };
    made(result.await, location)
}

async fn storage_delete(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        r.storage.remove(Request::new(pb::RemoveStorageRequest { name })).await?;
        Ok(())
    };
    done(result.await)
}

async fn images(State(r): State<Rest>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let all = r.images.list(Request::new(pb::ListImagesRequest {})).await?.into_inner();
        Ok(json(all.images.iter().map(view::Image::from).collect::<Vec<_>>()))
    };
    read(&headers, result.await)
}

async fn image(State(r): State<Rest>, Path(name): Path<String>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json(view::Image::from(&r.images.get(Request::new(pb::GetImageRequest { name })).await?.into_inner())))
    };
    read(&headers, result.await)
}

/// The body streams into the same import a gRPC client's chunks feed: a
/// header with the announced size, then the bytes as they arrive; a body
/// that ends short or runs long keeps nothing.
async fn upload(
    State(r): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Q<UploadQuery>,
    file: axum::body::Body,
) -> Response {
    let location = format!("/api/v1/images/{name}");
    let size = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let (q, size) =
        match (query(q), size) {
            (Ok(q), Some(size)) => (q, size),
            (refused, _) => {
                // Refused before a byte is stored; read it anyway (see read_first).
                super::drain(file).await;
                return super::problem(&refused.err().unwrap_or_else(|| {
                    Status::invalid_argument("an upload needs its Content-Length (the file's size)")
                }));
            }
        };
    let result = async {
        let header = pb::ImportHeader {
            name,
            storage: q.storage,
            kind: q.kind.unwrap_or(ImageKind::Disk).as_str().into(),
            size_bytes: size,
        };
        let first =
            futures::stream::once(
                async move { Ok(pb::ImportChunk { part: Some(pb::import_chunk::Part::Header(header)) }) },
            );
        let data = file.into_data_stream().map(|chunk| match chunk {
            Ok(bytes) => Ok(pb::ImportChunk { part: Some(pb::import_chunk::Part::Data(bytes.to_vec())) }),
            Err(e) => Err(Status::unavailable(format!("the upload broke off: {e}"))),
        });
        let mut chunks = Box::pin(first.chain(data));
        let image = crate::storage::images::import(&r.ctx, &mut chunks).await;
        if image.is_err() {
            // Refused part way (a name taken, a full disk): read on a little
            // so that the client sees why (see read_first).
            let mut left = 16 * super::JSON_LIMIT;
            while let Some(Ok(pb::ImportChunk { part: Some(pb::import_chunk::Part::Data(d)) })) = chunks.next().await {
                left = left.saturating_sub(d.len());
                if left == 0 {
                    break;
                }
            }
        }
        Ok((true, json(view::Image::from(&image?))))
    };
    made(result.await, location)
}

async fn image_delete(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        r.images.delete(Request::new(pb::DeleteImageRequest { name })).await?;
        Ok(())
    };
    done(result.await)
}

async fn networks(State(r): State<Rest>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let all = r.networks.list(Request::new(pb::ListNetworksRequest {})).await?.into_inner();
        Ok(json(all.networks.iter().map(view::Network::from).collect::<Vec<_>>()))
    };
    read(&headers, result.await)
}

async fn network(State(r): State<Rest>, Path(name): Path<String>, headers: HeaderMap, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json(view::Network::from(&r.networks.get(Request::new(pb::GetNetworkRequest { name })).await?.into_inner())))
    };
    read(&headers, result.await)
}

async fn network_put(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>, b: J<NetworkSpec>) -> Response {
    let location = format!("/api/v1/networks/{name}");
    let result = async {
        query(q)?;
        let s = body(b)?;
        match r.networks.get(Request::new(pb::GetNetworkRequest { name: name.clone() })).await {
            Ok(now) => {
                let now = now.into_inner();
                let same = now.kind == s.kind.as_str()
                    && s.bridge.as_ref().is_none_or(|b| *b == now.bridge)
                    && s.uplink == now.uplink
                    && s.vlan == now.vlan
                    && s.vni.is_none_or(|v| Some(v) == now.vni)
                    && s.mtu.is_none_or(|m| Some(m) == now.mtu)
                    && s.required == now.required;
                if !same {
                    return Err(differs("network", &name, "kind, bridge, uplink, VLAN, VNI, MTU or required flag"));
                }
                Ok((false, json(view::Network::from(&now))))
            }
            Err(e) if e.code() == Code::NotFound => {
                let add = pb::AddNetworkRequest {
                    name,
                    kind: s.kind.as_str().into(),
                    bridge: s.bridge,
                    uplink: s.uplink,
                    vlan: s.vlan,
                    vni: s.vni,
                    mtu: s.mtu,
                    required: s.required,
                };
                Ok((true, json(view::Network::from(&r.networks.add(Request::new(add)).await?.into_inner()))))
            }
            Err(e) => Err(e),
        }
    };
    made(result.await, location)
}

async fn network_delete(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        r.networks.remove(Request::new(pb::GetNetworkRequest { name })).await?;
        Ok(())
    };
    done(result.await)
}
