//! Certificate renewal. A member holds the cluster CA in its replicated
//! state, so it renews its own certificate without asking anyone: at half
//! its life it makes a new key, signs it, and puts it in use for the next
//! handshake; then it records the new certificate in the cluster (so a
//! removal revokes it too). A node whose certificate expired while it was
//! off renews the same way before it serves or dials anything, which is why
//! it needs no token to come back.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::security::{IssuedCert, SecurityCmd};
use kvmesh_raft::store::SharedState;
use tracing::{info, warn};

use super::ca::{self, Subject};
use super::NodeTls;
use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};

/// Whether a certificate valid over `(from, to)` is at half its life.
pub fn due(validity: (SystemTime, SystemTime), now: SystemTime) -> bool {
    let (from, to) = validity;
    let life = to.duration_since(from).unwrap_or_default();
    now >= from + life / 2
}

/// The CA this node signs with: the cluster's from its replica, or its
/// own before `cluster init`.
fn signing_ca(tls: &NodeTls, state: &SharedState) -> Result<(String, String)> {
    let from_state = state.read().unwrap_or_else(|p| p.into_inner()).state.meta.security.ca.clone();
    match (from_state, tls.own_ca_key()) {
        (Some(ca), _) => Ok((ca.cert_pem, ca.key_pem)),
        (None, Some(key)) => Ok((tls.ca_pem(), key)),
        (None, None) => Err(Error::Tls(
            "this node holds no CA to sign with yet (its replica has not caught up); it renews once it has".into(),
        )),
    }
}

/// A new key and certificate for this node, not yet in use.
struct Fresh {
    ca: String,
    key: String,
    cert: String,
    fingerprint: String,
    record: IssuedCert,
}

fn sign_fresh(tls: &NodeTls, state: &SharedState, name: &str, lifetime: Duration) -> Result<Fresh> {
    let (ca_cert, ca_key) = signing_ca(tls, state)?;
    let (key, csr) = ca::new_key_and_csr()?;
    let cert = ca::sign(&ca_cert, &ca_key, &csr, &Subject::Node(name.to_string()), lifetime)?;
    let info = ca::info(&ca::der_of(&cert)?)?;
    let record = IssuedCert { name: name.to_string(), not_after_ms: crate::api::security::ms(info.not_after) };
    Ok(Fresh { ca: ca_cert, key, cert, fingerprint: info.fingerprint, record })
}

/// Issues this node a certificate and puts it in use at once; the caller
/// records it in the cluster once it can. For a node that cannot reach
/// anyone with what it has: its certificate expired while it was off, or
/// its tls/ was lost.
pub fn issue(tls: &NodeTls, state: &SharedState, name: &str, lifetime: Duration) -> Result<(String, IssuedCert)> {
    let fresh = sign_fresh(tls, state, name, lifetime)?;
    tls.install(&fresh.ca, &fresh.key, &fresh.cert)?;
    info!(expires_in_s = lifetime.as_secs(), "renewed this node's certificate");
    Ok((fresh.fingerprint, fresh.record))
}

/// At start: renews now if the certificate is at half its life or past it.
pub fn renew_if_due(
    tls: &NodeTls,
    state: &SharedState,
    name: &str,
    lifetime: Duration,
) -> Result<Option<(String, IssuedCert)>> {
    match tls.validity() {
        Some(validity) if due(validity, SystemTime::now()) => issue(tls, state, name, lifetime).map(Some),
        _ => Ok(None),
    }
}

/// Renews this node's certificate at half its life, for as long as it runs.
/// A renewal is recorded in the cluster before it is used, so a removal
/// always finds every certificate a member uses; only when the cluster
/// cannot be reached and the certificate in use nears its end (a quarter of
/// its life left) is the new one used first and recorded later.
pub async fn run(ctx: Arc<NodeCtx>, mut unrecorded: Option<(String, IssuedCert)>) {
    let Some(tls) = ctx.tls.clone() else { return };
    let lifetime = Duration::from_secs(ctx.config.cert_lifetime_s);
    let mut pending: Option<Fresh> = None;
    loop {
        if let Some((fingerprint, cert)) = unrecorded.take() {
            if !record(&ctx, fingerprint.clone(), cert.clone()).await {
                unrecorded = Some((fingerprint, cert));
            }
        }
        if let Some(validity) = tls.validity().filter(|v| due(*v, SystemTime::now())) {
            let fresh = match pending.take() {
                Some(f) => Ok(f),
                None => sign_fresh(&tls, &ctx.state, &ctx.name, lifetime),
            };
            match fresh {
                Err(e) => warn!(error = %e, "cannot renew this node's certificate yet"),
                Ok(fresh) => {
                    let recorded = ctx.read(|d| d.state.cluster_id().is_none())
                        || record(&ctx, fresh.fingerprint.clone(), fresh.record.clone()).await;
                    let (from, to) = validity;
                    let near_end = SystemTime::now() >= from + to.duration_since(from).unwrap_or_default() * 3 / 4;
                    if recorded || near_end {
                        match tls.install(&fresh.ca, &fresh.key, &fresh.cert) {
                            Ok(()) => {
                                info!(expires_in_s = lifetime.as_secs(), recorded, "renewed this node's certificate")
                            }
                            Err(e) => warn!(error = %e, "cannot put the renewed certificate in use"),
                        }
                        if !recorded {
                            unrecorded = Some((fresh.fingerprint, fresh.record));
                        }
                    } else {
                        pending = Some(fresh);
                    }
                }
            }
        }
        // Often enough for a short test lifetime, rarely for a real one.
        let pause = (lifetime / 20).clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::time::sleep(pause).await;
    }
}

/// Writes a certificate's record to the cluster; whether that is settled
/// (done, or refused for good: this node is no longer a member).
async fn record(ctx: &NodeCtx, fingerprint: String, cert: IssuedCert) -> bool {
    // Only members have a cluster to record it in.
    if ctx.read(|d| d.state.cluster_id().is_none()) {
        return true;
    }
    let cmd = SecurityCmd::IssueNodeCert { join_token: None, fingerprint, cert };
    match ctx.propose(Command::Security { cmd, at_ms: now_ms() }).await {
        Ok(Response::Refused(r)) => {
            warn!(reason = %r, "the cluster refused the record of this node's certificate");
            true
        }
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e, "cannot record this node's certificate yet; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_half_life() {
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let to = from + Duration::from_secs(100);
        assert!(!due((from, to), from + Duration::from_secs(49)));
        assert!(due((from, to), from + Duration::from_secs(50)));
        assert!(due((from, to), to + Duration::from_secs(1000)));
    }
}
