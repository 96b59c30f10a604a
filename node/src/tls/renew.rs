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

/// Renews now if due; returns the record of the new certificate, which the
/// caller writes to the cluster once it can.
pub fn renew_if_due(tls: &NodeTls, state: &SharedState, name: &str, lifetime: Duration) -> Result<Option<(String, IssuedCert)>> {
    let Some(validity) = tls.validity() else { return Ok(None) };
    if !due(validity, SystemTime::now()) {
        return Ok(None);
    }
    // The cluster's CA, or the node's own before `cluster init`.
    let from_state = state.read().unwrap_or_else(|p| p.into_inner()).state.meta.security.ca.clone();
    let (ca_cert, ca_key) = match from_state {
        Some(ca) => (ca.cert_pem, ca.key_pem),
        None => match tls.own_ca_key() {
            Some(key) => (tls.ca_pem(), key),
            None => {
                return Err(Error::Tls(
                    "this node's certificate is due for renewal but it holds no CA yet; it renews once its state has caught up"
                        .into(),
                ))
            }
        },
    };
    let (key, csr) = ca::new_key_and_csr()?;
    let cert = ca::sign(&ca_cert, &ca_key, &csr, &Subject::Node(name.to_string()), lifetime)?;
    tls.install(&ca_cert, &key, &cert)?;
    let info = ca::info(&ca::der_of(&cert)?)?;
    info!(expires_in_s = lifetime.as_secs(), "renewed this node's certificate");
    let record = IssuedCert { name: name.to_string(), not_after_ms: crate::api::security::ms(info.not_after) };
    Ok(Some((info.fingerprint, record)))
}

/// Renews this node's certificate at half its life, for as long as it runs.
pub async fn run(ctx: Arc<NodeCtx>, mut unrecorded: Option<(String, IssuedCert)>) {
    let Some(tls) = ctx.tls.clone() else { return };
    let lifetime = Duration::from_secs(ctx.config.cert_lifetime_s);
    loop {
        if let Some((fingerprint, cert)) = unrecorded.take() {
            unrecorded = record(&ctx, fingerprint, cert).await;
        }
        match renew_if_due(&tls, &ctx.state, &ctx.name, lifetime) {
            Ok(Some(new)) => unrecorded = unrecorded.or(Some(new)),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot renew this node's certificate yet"),
        }
        // Often enough for a short test lifetime, rarely for a real one.
        let pause = (lifetime / 20).clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::time::sleep(pause).await;
    }
}

/// Writes a renewed certificate's record; gives it back if that failed.
async fn record(ctx: &NodeCtx, fingerprint: String, cert: IssuedCert) -> Option<(String, IssuedCert)> {
    // Only members have a cluster to record it in.
    if ctx.read(|d| d.state.cluster_id().is_none()) {
        return None;
    }
    let cmd = SecurityCmd::IssueNodeCert { join_token: None, fingerprint: fingerprint.clone(), cert: cert.clone() };
    match ctx.propose(Command::Security { cmd, at_ms: now_ms() }).await {
        Ok(Response::Refused(r)) => {
            warn!(reason = %r, "the cluster refused the record of this node's renewed certificate");
            None
        }
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "cannot record this node's renewed certificate yet; retrying");
            Some((fingerprint, cert))
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
