//! The `Networks` service: logical networks as cluster objects, with every
//! host's view of each. Definitions live in the replicated state and are
//! read from the local replica; how each host realized a network (ready,
//! unsupported, error) comes from the leader's heartbeats.

use std::sync::Arc;

use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Response as CmdResponse};
use kvmesh_raft::wire::{from_pb, to_pb};
use tonic::{Request, Response, Status};

use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::ha::LeaderView;

pub struct NetworksService {
    ctx: Arc<NodeCtx>,
    leader: Arc<LeaderView>,
}

impl NetworksService {
    pub fn new(ctx: Arc<NodeCtx>, leader: Arc<LeaderView>) -> Self {
        NetworksService { ctx, leader }
    }

    /// Each network with how every host sees it; a host not heard from
    /// lately reads `unknown`.
    async fn with_hosts(&self, mut networks: Vec<pb::NetworkInfo>) -> Vec<pb::NetworkInfo> {
        let reported = self.leader.observed(&self.ctx).await.map(|o| o.networks).unwrap_or_default();
        let hosts: Vec<String> = self.ctx.read(|d| d.state.nodes.values().map(|n| n.name.clone()).collect());
        for net in &mut networks {
            for host in &hosts {
                let status = reported.iter().find(|s| &s.node == host && s.network == net.name).cloned();
                net.hosts.push(status.unwrap_or_else(|| pb::HostNetworkStatus {
                    node: host.clone(),
                    network: net.name.clone(),
                    state: "unknown".into(),
                    message: "not reported yet (hosts report with every heartbeat)".into(),
                    mtu: 0,
                }));
            }
        }
        networks
    }
}

fn get_network(ctx: &NodeCtx, name: &str) -> Result<pb::NetworkInfo> {
    ctx.read(|d| d.state.meta.networks.get(name).map(|n| to_pb::network(&d.state, n)))
        .ok_or_else(|| Error::NotFound(format!("no network named {name:?}; see `kvmesh network list`")))
}

#[tonic::async_trait]
impl pb::networks_server::Networks for NetworksService {
    async fn add(
        &self,
        request: Request<pb::AddNetworkRequest>,
    ) -> std::result::Result<Response<pb::NetworkInfo>, Status> {
        let req = request.into_inner();
        crate::config::validate_object_name("network", &req.name).map_err(Error::InvalidArgument)?;
        let network = from_pb::network(&req).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let CmdResponse::Refused(r) = self.ctx.propose(Command::AddNetwork { network, at_ms: now_ms() }).await? {
            return Err(Error::from(r).into());
        }
        let info = self.ctx.read_written(|d| d.state.meta.networks.get(&req.name).map(|n| to_pb::network(&d.state, n)));
        let info = info.await.ok_or_else(|| {
            Status::unavailable(format!(
                "network {} was added, but {} has not caught up with the leader yet; see `kvmesh network get {}`",
                req.name, self.ctx.name, req.name
            ))
        })?;
        Ok(Response::new(self.with_hosts(vec![info]).await.remove(0)))
    }

    async fn list(
        &self,
        _request: Request<pb::ListNetworksRequest>,
    ) -> std::result::Result<Response<pb::ListNetworksResponse>, Status> {
        let networks = self.ctx.read(|d| d.state.meta.networks.values().map(|n| to_pb::network(&d.state, n)).collect());
        Ok(Response::new(pb::ListNetworksResponse { networks: self.with_hosts(networks).await }))
    }

    async fn get(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> std::result::Result<Response<pb::NetworkInfo>, Status> {
        let info = get_network(&self.ctx, &request.into_inner().name)?;
        Ok(Response::new(self.with_hosts(vec![info]).await.remove(0)))
    }

    async fn remove(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> std::result::Result<Response<pb::RemoveNetworkReply>, Status> {
        let name = request.into_inner().name;
        match self.ctx.propose(Command::RemoveNetwork { name: name.clone(), at_ms: now_ms() }).await? {
            CmdResponse::Refused(r) => Err(Error::from(r).into()),
            _ => Ok(Response::new(pb::RemoveNetworkReply { removed: name })),
        }
    }
}
