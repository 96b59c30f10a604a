//! The `Security` service (API tokens and join tokens), the cluster side of
//! enrolling a new node, and what `cluster init` adds to a new cluster: its
//! CA, the founding node's certificate record and the first admin token.
//!
//! Secrets are made on the node that answers and leave it once, in the
//! answer; the replicated state gets their hashes through the one write
//! path, so a create forwarded to the leader carries no secret in the log.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Response as CmdResponse};
use kvmesh_raft::security::{ApiToken, IssuedCert, JoinToken, SecurityCmd};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::{tokens, Role};
use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::tls::ca::{self, Subject};

/// Client certificates live 90 days unless asked otherwise, a year at most.
const DEFAULT_CLIENT_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
const MAX_CLIENT_CERT_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Join tokens live an hour unless asked otherwise, and a week at most.
const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(3600);
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct SecurityService {
    ctx: Arc<NodeCtx>,
}

impl SecurityService {
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        SecurityService { ctx }
    }
}

async fn write(ctx: &NodeCtx, cmd: SecurityCmd) -> Result<()> {
    match ctx.propose(Command::Security { cmd, at_ms: now_ms() }).await? {
        CmdResponse::Refused(r) => Err(r.into()),
        _ => Ok(()),
    }
}

/// Makes an API token; its whole text, shown once.
pub async fn create_api_token(ctx: &NodeCtx, name: &str, role: &str) -> Result<String> {
    if !tokens::valid_name(name) {
        return Err(Error::InvalidArgument(format!("token name {name:?}: use 1-63 letters, digits, '-' or '_'")));
    }
    if Role::parse(role).is_none() {
        return Err(Error::InvalidArgument(format!("role {role:?}: use viewer, operator or admin")));
    }
    let secret = tokens::new_secret();
    let token = ApiToken { hash: tokens::hash(&secret), role: role.to_string(), created_ms: now_ms() };
    write(ctx, SecurityCmd::CreateApiToken { name: name.to_string(), token }).await?;
    Ok(tokens::api_token(name, &secret))
}

/// The cluster's security at `cluster init`: hands this node's CA to the
/// cluster, records this node's certificate, makes the first admin token.
/// Returns the CA certificate and the token (empty under `--insecure`).
pub async fn found(ctx: &NodeCtx) -> Result<(String, String)> {
    let Some(tls) = &ctx.tls else { return Ok((String::new(), String::new())) };
    let key_pem = tls.own_ca_key().ok_or_else(|| {
        Error::FailedPrecondition("this node has no CA of its own (it enrolled in another cluster)".into())
    })?;
    let cert_pem = tls.ca_pem();
    write(ctx, SecurityCmd::SetCa { ca: kvmesh_raft::security::Ca { cert_pem: cert_pem.clone(), key_pem } }).await?;
    if let Some(key) = tls.certified_key() {
        let info = ca::info(&key.cert[0])?;
        let cert = IssuedCert { name: ctx.name.clone(), not_after_ms: ms(info.not_after) };
        write(ctx, SecurityCmd::IssueNodeCert { join_token: None, fingerprint: info.fingerprint, cert }).await?;
    }
    let token = create_api_token(ctx, "admin", "admin").await?;
    Ok((cert_pem, token))
}

pub fn ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Signs a new node's key when its join token checks out. Runs on the
/// leader, which holds every committed token: a token that is unknown or
/// wrong there is refused before anything is signed or written, so
/// anonymous callers cannot make the cluster write. The token is used up by
/// the replicated write that records the certificate (checked again at
/// apply), so it enrolls one node however many members are asked.
pub async fn enroll(ctx: &NodeCtx, r: pb::EnrollRequest) -> Result<pb::EnrollReply> {
    crate::config::validate_node_name(&r.name).map_err(Error::InvalidArgument)?;
    let hash = tokens::hash(&r.secret);
    let known = ctx.read(|d| d.state.meta.security.join_tokens.get(&r.token_id).cloned());
    match known {
        None => {
            return Err(Error::PermissionDenied(format!(
                "join token {} is unknown, already used or revoked; create a new one with `kvmesh cluster token create --name {}`",
                r.token_id, r.name
            )))
        }
        Some(t) if !tokens::same(&t.hash, &hash) => {
            return Err(Error::PermissionDenied(format!("join token {}: wrong secret", r.token_id)))
        }
        Some(_) => {}
    }
    let Some(ca) = ctx.read(|d| d.state.meta.security.ca.clone()) else {
        return Err(Error::Unavailable(format!(
            "node {} does not hold the cluster's CA yet (not initialized, or still catching up); ask another member",
            ctx.name
        )));
    };
    let lifetime = Duration::from_secs(ctx.config.cert_lifetime_s);
    let cert_pem = ca::sign(&ca.cert_pem, &ca.key_pem, &r.csr_pem, &Subject::Node(r.name.clone()), lifetime)?;
    let info = ca::info(&ca::der_of(&cert_pem)?)?;
    let cert = IssuedCert { name: r.name.clone(), not_after_ms: ms(info.not_after) };
    let join_token = Some((r.token_id.clone(), hash));
    write(ctx, SecurityCmd::IssueNodeCert { join_token, fingerprint: info.fingerprint, cert }).await?;
    info!(node = %r.name, "enrolled a new node");
    Ok(pb::EnrollReply { cert_pem, ca_cert_pem: ca.cert_pem })
}

/// The members' addresses, voters first: where a join token sends a new node.
fn member_addresses(ctx: &NodeCtx) -> Vec<String> {
    let m = ctx.metrics();
    let membership = m.membership_config.membership();
    let mut voters: Vec<String> =
        membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.address.clone())).collect();
    let learners = membership.learner_ids().filter_map(|id| membership.get_node(&id).map(|n| n.address.clone()));
    voters.extend(learners);
    voters
}

#[tonic::async_trait]
impl pb::security_server::Security for SecurityService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateTokenReply>, Status> {
        let r = request.into_inner();
        let token = create_api_token(&self.ctx, &r.name, &r.role).await?;
        Ok(Response::new(pb::CreateTokenReply { name: r.name, role: r.role, token }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> std::result::Result<Response<pb::ListTokensReply>, Status> {
        let tokens = self.ctx.read(|d| {
            d.state
                .meta
                .security
                .api_tokens
                .iter()
                .map(|(name, t)| pb::TokenInfo {
                    name: name.clone(),
                    role: t.role.clone(),
                    created_ms: t.created_ms,
                    ..Default::default()
                })
                .collect()
        });
        Ok(Response::new(pb::ListTokensReply { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> std::result::Result<Response<pb::RevokeTokenReply>, Status> {
        let name = request.into_inner().name;
        write(&self.ctx, SecurityCmd::RevokeApiToken { name }).await?;
        Ok(Response::new(pb::RevokeTokenReply {}))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateJoinTokenReply>, Status> {
        let r = request.into_inner();
        let ttl = if r.ttl_s == 0 { DEFAULT_JOIN_TTL } else { Duration::from_secs(r.ttl_s) };
        if ttl > MAX_JOIN_TTL {
            return Err(
                Error::InvalidArgument(format!("--ttl: at most {} hours", MAX_JOIN_TTL.as_secs() / 3600)).into()
            );
        }
        let name = (!r.node_name.is_empty()).then_some(r.node_name);
        if let Some(n) = &name {
            crate::config::validate_node_name(n).map_err(Error::InvalidArgument)?;
        }
        let Some(ca_pem) = self.ctx.read(|d| d.state.meta.security.ca.as_ref().map(|c| c.cert_pem.clone())) else {
            return Err(Error::FailedPrecondition(
                "this cluster has no CA: its nodes run with --insecure (plaintext), where nodes join with --join alone"
                    .into(),
            )
            .into());
        };
        let ca_fingerprint = ca::fingerprint(&ca::der_of(&ca_pem)?);
        let id = ca::hex(&rand::random::<[u8; 6]>());
        let secret = tokens::new_secret();
        let created_ms = now_ms();
        let expires_ms = created_ms + ttl.as_millis() as u64;
        let record = JoinToken { hash: tokens::hash(&secret), name, created_ms, expires_ms };
        write(&self.ctx, SecurityCmd::CreateJoinToken { id: id.clone(), token: record }).await?;
        let members = member_addresses(&self.ctx);
        let token = tokens::JoinToken { ca_fingerprint, id: id.clone(), secret, members }.to_string();
        Ok(Response::new(pb::CreateJoinTokenReply { id, token, expires_ms }))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> std::result::Result<Response<pb::ListJoinTokensReply>, Status> {
        let now = now_ms();
        let tokens = self.ctx.read(|d| {
            d.state
                .meta
                .security
                .join_tokens
                .iter()
                .filter(|(_, t)| t.expires_ms > now)
                .map(|(id, t)| pb::TokenInfo {
                    name: id.clone(),
                    created_ms: t.created_ms,
                    expires_ms: t.expires_ms,
                    node_name: t.name.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .collect()
        });
        Ok(Response::new(pb::ListJoinTokensReply { tokens }))
    }

    async fn issue_client_cert(
        &self,
        request: Request<pb::IssueClientCertRequest>,
    ) -> std::result::Result<Response<pb::IssueClientCertReply>, Status> {
        let r = request.into_inner();
        if !tokens::valid_name(&r.name) {
            return Err(Error::InvalidArgument(format!(
                "client name {:?}: use 1-63 letters, digits, '-' or '_'",
                r.name
            ))
            .into());
        }
        if Role::parse(&r.role).is_none() {
            return Err(Error::InvalidArgument(format!("role {:?}: use viewer, operator or admin", r.role)).into());
        }
        let ttl = if r.ttl_s == 0 { DEFAULT_CLIENT_CERT_TTL } else { Duration::from_secs(r.ttl_s) };
        if ttl > MAX_CLIENT_CERT_TTL {
            return Err(Error::InvalidArgument("--ttl: at most 366 days".into()).into());
        }
        let Some(ca) = self.ctx.read(|d| d.state.meta.security.ca.clone()) else {
            return Err(Error::FailedPrecondition("this cluster has no CA (it runs with --insecure)".into()).into());
        };
        let subject = Subject::Client { name: r.name.clone(), role: r.role.clone() };
        let cert_pem = ca::sign(&ca.cert_pem, &ca.key_pem, &r.csr_pem, &subject, ttl)?;
        let info = ca::info(&ca::der_of(&cert_pem)?)?;
        let expires_ms = ms(info.not_after);
        let cert = IssuedCert { name: kvmesh_raft::security::client_cert_name(&r.name), not_after_ms: expires_ms };
        write(&self.ctx, SecurityCmd::IssueClientCert { fingerprint: info.fingerprint, cert }).await?;
        Ok(Response::new(pb::IssueClientCertReply { cert_pem, ca_cert_pem: ca.cert_pem, expires_ms }))
    }

    async fn list_client_certs(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> std::result::Result<Response<pb::ListTokensReply>, Status> {
        let tokens = self.ctx.read(|d| {
            d.state
                .meta
                .security
                .issued
                .iter()
                .filter_map(|(fingerprint, c)| {
                    let name = c.name.strip_prefix("client:")?;
                    Some(pb::TokenInfo {
                        name: name.to_string(),
                        expires_ms: c.not_after_ms,
                        node_name: fingerprint.clone(),
                        ..Default::default()
                    })
                })
                .collect()
        });
        Ok(Response::new(pb::ListTokensReply { tokens }))
    }

    async fn revoke_client_certs(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> std::result::Result<Response<pb::RevokeTokenReply>, Status> {
        let name = request.into_inner().name;
        write(&self.ctx, SecurityCmd::RevokeClientCerts { name }).await?;
        Ok(Response::new(pb::RevokeTokenReply {}))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> std::result::Result<Response<pb::RevokeTokenReply>, Status> {
        let id = request.into_inner().name;
        write(&self.ctx, SecurityCmd::RevokeJoinToken { id }).await?;
        Ok(Response::new(pb::RevokeTokenReply {}))
    }
}
