//! The joining side of enrollment: before a new node serves anything, it
//! makes its key, pins the cluster's CA by the fingerprint in its join
//! token, and trades the token and a signing request for its certificate
//! with any member the token (or `--join`) names.

use std::time::Duration;

use kvmesh_proto as pb;
use tonic::Code;
use tracing::{info, warn};

use super::ca;
use super::dial::Dialer;
use super::verify::{client_config, CaFromChain};
use super::NodeTls;
use crate::auth::tokens::JoinToken;
use crate::error::{Error, Result};

/// How long a new node keeps trying members that do not answer.
const ENROLL_DEADLINE: Duration = Duration::from_secs(180);

pub async fn enroll(tls: &NodeTls, token: &JoinToken, name: &str, via: Option<&str>) -> Result<()> {
    let (key_pem, csr_pem) = ca::new_key_and_csr()?;
    let dialer = Dialer::Tls(client_config(CaFromChain::pinned(&token.ca_fingerprint)));
    let targets: Vec<String> = via.map(str::to_string).into_iter().chain(token.members.iter().cloned()).collect();
    let request =
        pb::EnrollRequest { token_id: token.id.clone(), secret: token.secret.clone(), name: name.to_string(), csr_pem };
    let deadline = tokio::time::Instant::now() + ENROLL_DEADLINE;
    let mut backoff = Duration::from_millis(200);
    let mut last = String::new();
    loop {
        for target in &targets {
            let channel = dialer
                .channel(target, Duration::from_secs(3))
                .map_err(|e| Error::Config(format!("join token member {target:?}: {e}")))?;
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(Duration::from_secs(30));
            match pb::cluster_client::ClusterClient::new(channel).enroll(call).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    // The CA in the answer must be the one the token pins.
                    if ca::fingerprint(&ca::der_of(&reply.ca_cert_pem)?) != token.ca_fingerprint {
                        return Err(Error::Tls(format!("{target} answered with another CA than the join token's")));
                    }
                    tls.install(&reply.ca_cert_pem, &key_pem, &reply.cert_pem)?;
                    info!(via = %target, "enrolled: this node has its certificate");
                    return Ok(());
                }
                // The member's CA is not the one the token pins: no retry
                // makes it so.
                Err(s) if root_message(&s).contains("fingerprint in the join token") => {
                    return Err(Error::Tls(format!("{target}: {}", root_message(&s))));
                }
                Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown) => {
                    last = format!("{target}: {}", root_message(&s));
                    warn!(via = %target, error = %last, "enrollment attempt failed; trying again");
                }
                Err(s) => {
                    return Err(Error::PermissionDenied(format!("enrollment refused by {target}: {}", s.message())))
                }
            }
        }
        if tokio::time::Instant::now() + backoff > deadline {
            return Err(Error::Unavailable(format!(
                "could not enroll within {} s; last error: {last}",
                ENROLL_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}

/// A transport error's innermost cause (a TLS refusal says why there).
fn root_message(s: &tonic::Status) -> String {
    let mut cur: &dyn std::error::Error = s;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if cur.to_string() == s.to_string() {
        s.message().to_string()
    } else {
        format!("{} ({cur})", s.message())
    }
}
