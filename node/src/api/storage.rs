//! The `Storage` and `Images` services: storage domains and images as
//! cluster objects, with every host's view of each domain.
//!
//! Domains and image records live in the replicated state and are read
//! from the local replica; how each host sees a domain (active, missing,
//! not-shared) comes from the leader's heartbeats. An import is received by
//! the node the client talks to, which must have the domain active.

use std::collections::BTreeSet;
use std::sync::Arc;

use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Response as CmdResponse};
use kvmesh_raft::storage::{StorageDomain, StorageKind};
use kvmesh_raft::wire::to_pb;
use tonic::{Request, Response, Status, Streaming};

use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::ha::LeaderView;

pub struct StorageService {
    ctx: Arc<NodeCtx>,
    leader: Arc<LeaderView>,
}

impl StorageService {
    pub fn new(ctx: Arc<NodeCtx>, leader: Arc<LeaderView>) -> Self {
        StorageService { ctx, leader }
    }

    /// Each domain with how every host that should have it sees it.
    async fn with_hosts(&self, mut domains: Vec<pb::StorageDomainInfo>) -> Vec<pb::StorageDomainInfo> {
        let reported = self.leader.observed(&self.ctx).await.map(|o| o.storage).unwrap_or_default();
        let hosts: Vec<String> = self.ctx.read(|d| d.state.nodes.values().map(|n| n.name.clone()).collect());
        for domain in &mut domains {
            for host in hosts.iter().filter(|h| domain.nodes.is_empty() || domain.nodes.contains(h)) {
                let status = reported.iter().find(|s| &s.node == host && s.domain == domain.name).cloned();
                domain.hosts.push(status.unwrap_or_else(|| pb::HostStorageStatus {
                    node: host.clone(),
                    domain: domain.name.clone(),
                    state: "unknown".into(),
                    message: "not reported yet (hosts report with every heartbeat)".into(),
                    ..Default::default()
                }));
            }
        }
        domains
    }
}

/// Checks `storage add` and turns it into the domain to record.
pub(crate) fn validate_add(req: &pb::AddStorageRequest) -> Result<StorageDomain> {
    crate::config::validate_object_name("storage", &req.name).map_err(Error::InvalidArgument)?;
    let absolute_dir = |path: &Option<String>| -> Result<String> {
        let p =
            path.clone().ok_or_else(|| Error::InvalidArgument(format!("a {} domain needs --path DIR", req.kind)))?;
        if !p.starts_with('/') || p.split('/').any(|part| part == "..") {
            return Err(Error::InvalidArgument(format!(
                "--path must be an absolute directory without '..' (got {p:?})"
            )));
        }
        Ok(p.trim_end_matches('/').to_string())
    };
    let kind = match req.kind.as_str() {
        "local" => StorageKind::Local { path: Some(absolute_dir(&req.path)?) },
        "shared-dir" => StorageKind::SharedDir { path: absolute_dir(&req.path)? },
        "nfs" => {
            let server =
                req.server.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                    Error::InvalidArgument("an nfs domain needs --server HOST and --export PATH".into())
                })?;
            let export = req.export.clone().filter(|e| e.starts_with('/')).ok_or_else(|| {
                Error::InvalidArgument("an nfs domain needs --export with an absolute path on the server".into())
            })?;
            StorageKind::Nfs { server, export }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown storage kind {other:?}: use local, shared-dir or nfs (iSCSI and RBD are not supported yet)"
            )))
        }
    };
    if req.path.is_some() && matches!(kind, StorageKind::Nfs { .. }) {
        return Err(Error::InvalidArgument("an nfs domain takes --server and --export, not --path".into()));
    }
    Ok(StorageDomain {
        id: 0,
        name: req.name.clone(),
        kind,
        nodes: req.nodes.iter().cloned().collect::<BTreeSet<_>>(),
        created_at_ms: 0,
    })
}

fn get_domain(ctx: &NodeCtx, name: &str) -> Result<pb::StorageDomainInfo> {
    ctx.read(|d| d.state.storage_by_name(name).map(|s| to_pb::storage(&d.state, s)))
        .ok_or_else(|| Error::NotFound(format!("no storage domain named {name:?}; see `kvmesh storage list`")))
}

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn add(
        &self,
        request: Request<pb::AddStorageRequest>,
    ) -> std::result::Result<Response<pb::StorageDomainInfo>, Status> {
        let req = request.into_inner();
        let domain = validate_add(&req)?;
        // The path is each host's; this one can at least check its own.
        if let StorageKind::Local { path: Some(p) } | StorageKind::SharedDir { path: p } = &domain.kind {
            let here = domain.nodes.is_empty() || domain.nodes.contains(&self.ctx.name);
            let path = std::path::Path::new(p);
            if here && path.exists() && !path.is_dir() {
                return Err(Error::InvalidArgument(format!("{p} is not a directory on {}", self.ctx.name)).into());
            }
        }
        if let CmdResponse::Refused(r) = self.ctx.propose(Command::AddStorage { domain, at_ms: now_ms() }).await? {
            return Err(Error::from(r).into());
        }
        let info = self.ctx.read_written(|d| d.state.storage_by_name(&req.name).map(|s| to_pb::storage(&d.state, s)));
        let info = info.await.ok_or_else(|| {
            Status::unavailable(format!(
                "storage {} was added, but {} has not caught up with the leader yet; see `kvmesh storage get {}`",
                req.name, self.ctx.name, req.name
            ))
        })?;
        Ok(Response::new(self.with_hosts(vec![info]).await.remove(0)))
    }

    async fn list(
        &self,
        _request: Request<pb::ListStorageRequest>,
    ) -> std::result::Result<Response<pb::ListStorageResponse>, Status> {
        let domains = self.ctx.read(|d| {
            let mut all: Vec<pb::StorageDomainInfo> =
                d.state.storage.values().map(|s| to_pb::storage(&d.state, s)).collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        });
        Ok(Response::new(pb::ListStorageResponse { domains: self.with_hosts(domains).await }))
    }

    async fn get(
        &self,
        request: Request<pb::GetStorageRequest>,
    ) -> std::result::Result<Response<pb::StorageDomainInfo>, Status> {
        let info = get_domain(&self.ctx, &request.into_inner().name)?;
        Ok(Response::new(self.with_hosts(vec![info]).await.remove(0)))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveStorageRequest>,
    ) -> std::result::Result<Response<pb::RemoveStorageReply>, Status> {
        let name = request.into_inner().name;
        match self.ctx.propose(Command::RemoveStorage { name, at_ms: now_ms() }).await? {
            CmdResponse::Refused(r) => Err(Error::from(r).into()),
            _ => Ok(Response::new(pb::RemoveStorageReply {})),
        }
    }
}

pub struct ImagesService {
    ctx: Arc<NodeCtx>,
}

impl ImagesService {
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        ImagesService { ctx }
    }
}

fn get_image(ctx: &NodeCtx, name: &str) -> Result<pb::ImageInfo> {
    ctx.read(|d| d.state.image_by_name(name).map(|i| to_pb::image(&d.state, i)))
        .ok_or_else(|| Error::NotFound(format!("no image named {name:?}; see `kvmesh image list`")))
}

#[tonic::async_trait]
impl pb::images_server::Images for ImagesService {
    async fn import(
        &self,
        request: Request<Streaming<pb::ImportChunk>>,
    ) -> std::result::Result<Response<pb::ImageInfo>, Status> {
        Ok(Response::new(crate::storage::images::import(&self.ctx, request.into_inner()).await?))
    }

    async fn list(
        &self,
        _request: Request<pb::ListImagesRequest>,
    ) -> std::result::Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.ctx.read(|d| {
            let mut all: Vec<pb::ImageInfo> = d.state.images.values().map(|i| to_pb::image(&d.state, i)).collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        });
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn get(&self, request: Request<pb::GetImageRequest>) -> std::result::Result<Response<pb::ImageInfo>, Status> {
        Ok(Response::new(get_image(&self.ctx, &request.into_inner().name)?))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> std::result::Result<Response<pb::DeleteImageReply>, Status> {
        let name = request.into_inner().name;
        match self.ctx.propose(Command::DeleteImage { name, at_ms: now_ms() }).await? {
            CmdResponse::Refused(r) => Err(Error::from(r).into()),
            _ => Ok(Response::new(pb::DeleteImageReply {})),
        }
    }
}
