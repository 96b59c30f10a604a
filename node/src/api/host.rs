//! The internal `Host` service: heartbeats to the leader, the leader's
//! observed map, and this host's console logs.

use std::sync::Arc;

use kvmesh_proto as pb;
use tonic::{Request, Response, Status};

use crate::ctx::NodeCtx;
use crate::ha::LeaderView;

pub struct HostService {
    ctx: Arc<NodeCtx>,
    leader: Arc<LeaderView>,
}

impl HostService {
    pub fn new(ctx: Arc<NodeCtx>, leader: Arc<LeaderView>) -> Self {
        HostService { ctx, leader }
    }
}

#[tonic::async_trait]
impl pb::host_server::Host for HostService {
    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatAck>, Status> {
        Ok(Response::new(self.leader.receive(&self.ctx, request.into_inner()).await?))
    }

    async fn observed(&self, _request: Request<pb::ObservedRequest>) -> Result<Response<pb::ObservedReply>, Status> {
        if !self.ctx.is_leader() {
            return Err(Status::unavailable("not the leader"));
        }
        Ok(Response::new(self.leader.observed_pb(&self.ctx)))
    }

    async fn disk_op(&self, request: Request<pb::DiskOpRequest>) -> Result<Response<pb::DiskOpReply>, Status> {
        Ok(Response::new(crate::storage::disk_ops::run_local(&self.ctx, request.into_inner()).await?))
    }

    async fn prepare_incoming(
        &self,
        request: Request<pb::PrepareIncomingRequest>,
    ) -> Result<Response<pb::PrepareIncomingReply>, Status> {
        Ok(Response::new(crate::agent::prepare_incoming(&self.ctx, request.into_inner()).await?))
    }

    async fn get_migration_progress(
        &self,
        request: Request<pb::GetVmRequest>,
    ) -> Result<Response<pb::MigrationProgress>, Status> {
        Ok(Response::new(crate::agent::local_progress(&self.ctx, &request.into_inner().name).await?))
    }

    async fn read_volume(&self, request: Request<pb::ReadVolumeRequest>) -> Result<Response<pb::VolumeChunk>, Status> {
        Ok(Response::new(crate::agent::read_volume(&self.ctx, request.into_inner()).await?))
    }

    type AttachStream = crate::api::attach::AttachStream;

    async fn get_guest_info(&self, request: Request<pb::GetVmRequest>) -> Result<Response<pb::GuestInfo>, Status> {
        Ok(Response::new(crate::agent::local_guest_info(&self.ctx, &request.into_inner().name).await?))
    }

    async fn attach(
        &self,
        request: Request<tonic::Streaming<pb::AttachFrame>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Ok(Response::new(crate::api::attach::host_attach(&self.ctx, Box::pin(request.into_inner())).await?))
    }

    async fn read_console(&self, request: Request<pb::ConsoleRequest>) -> Result<Response<pb::ConsoleReply>, Status> {
        let req = request.into_inner();
        let reply = crate::agent::local_console(&self.ctx, &req.name, req.bytes).await?;
        Ok(Response::new(reply))
    }
}
