//! The cluster's security records, replicated with the rest of the state:
//! its certificate authority, API tokens, join tokens, the node
//! certificates it issued and those it revoked.
//!
//! Secrets are never stored: tokens are kept as SHA-256 hashes (computed by
//! the node that made them), certificates by fingerprint. The one secret
//! here is the CA's private key, which every member needs to sign the
//! certificates of joining and renewing nodes; it lives only in the
//! members' Raft stores (their data dirs) and never leaves them in an API
//! answer. The commands are applied like every other: pure, and every
//! refusal is the same on every replica.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Refusal, Response};
use crate::model::{ClusterState, Key};

/// The cluster's certificate authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Hex SHA-256 of the token's secret part.
    pub hash: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub hash: String,
    /// The only node name it may enroll, if it was bound to one.
    pub name: Option<String>,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// A node certificate the cluster issued and has not revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub name: String,
    pub not_after_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    pub ca: Option<Ca>,
    pub api_tokens: BTreeMap<String, ApiToken>,
    /// By token id (the public part of a join token).
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// Node certificates by fingerprint.
    pub issued: BTreeMap<String, IssuedCert>,
    /// Fingerprints of revoked certificates, with when they expire anyway
    /// (after which they are forgotten: an expired certificate is refused
    /// by the handshake itself).
    pub revoked: BTreeMap<String, u64>,
}

impl Security {
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked.contains_key(fingerprint)
    }
}

/// The security writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityCmd {
    /// Once, at `cluster init`.
    SetCa {
        ca: Ca,
    },
    CreateApiToken {
        name: String,
        token: ApiToken,
    },
    RevokeApiToken {
        name: String,
    },
    CreateJoinToken {
        id: String,
        token: JoinToken,
    },
    RevokeJoinToken {
        id: String,
    },
    /// Records a certificate issued to node `name`; with `join_token` (id
    /// and the hash of the secret the node presented) the token is checked
    /// and used up in the same step, so two nodes cannot both enroll with it.
    IssueNodeCert {
        join_token: Option<(String, String)>,
        fingerprint: String,
        cert: IssuedCert,
    },
    /// Revokes every certificate issued to node `name` (it was removed).
    RevokeNodeCerts {
        name: String,
    },
    /// Records a client certificate (`kvmesh cert create`); its `name` is
    /// `client:<name>`, apart from node names, which cannot hold a colon.
    IssueClientCert {
        fingerprint: String,
        cert: IssuedCert,
    },
    /// `kvmesh cert revoke NAME`: every certificate of that client.
    RevokeClientCerts {
        name: String,
    },
}

/// How a client certificate's holder is named among the issued certificates.
pub fn client_cert_name(name: &str) -> String {
    format!("client:{name}")
}

impl ClusterState {
    pub(crate) fn apply_security(&mut self, cmd: &SecurityCmd, at_ms: u64) -> Response {
        let response = self.security_change(cmd, at_ms);
        if !matches!(response, Response::Refused(_)) {
            // Forget revocations of certificates that have expired anyway.
            self.meta.security.revoked.retain(|_, not_after| *not_after > at_ms);
            self.dirty.insert(Key::Meta);
        }
        response
    }

    fn security_change(&mut self, cmd: &SecurityCmd, at_ms: u64) -> Response {
        let denied = |reason: String| Response::Refused(Refusal::Denied { reason });
        // A member's name is enrolled again only with a token made for it
        // (a member whose certificate expired while it was off).
        let member_named = |name: &str| self.nodes.values().any(|n| n.name == name);
        // A renewal is recorded only for a member: a removed node's
        // certificates are revoked and stay so.
        let not_member = match cmd {
            SecurityCmd::IssueNodeCert { join_token: None, cert, .. } => !member_named(&cert.name),
            _ => false,
        };
        let taken = match cmd {
            SecurityCmd::IssueNodeCert { join_token: Some((id, _)), cert, .. } => {
                let bound = self.meta.security.join_tokens.get(id).and_then(|t| t.name.as_deref());
                member_named(&cert.name) && bound != Some(cert.name.as_str())
            }
            _ => false,
        };
        let sec = &mut self.meta.security;
        match cmd {
            SecurityCmd::SetCa { ca } => {
                if sec.ca.is_some() {
                    return denied("the cluster already has its certificate authority".into());
                }
                sec.ca = Some(ca.clone());
            }
            SecurityCmd::CreateApiToken { name, token } => {
                if sec.api_tokens.contains_key(name) {
                    return denied(format!(
                        "an API token named {name:?} exists; revoke it first (`kvmesh token revoke {name}`) or pick another name"
                    ));
                }
                sec.api_tokens.insert(name.clone(), token.clone());
                self.push_event(at_ms, "security", format!("API token {name} created with role {}", token.role));
            }
            SecurityCmd::RevokeApiToken { name } => {
                if sec.api_tokens.remove(name).is_none() {
                    return denied(format!("there is no API token named {name:?} (`kvmesh token list`)"));
                }
                self.push_event(at_ms, "security", format!("API token {name} revoked"));
            }
            SecurityCmd::CreateJoinToken { id, token } => {
                if sec.join_tokens.contains_key(id) {
                    return denied(format!("join token {id} exists"));
                }
                sec.join_tokens.insert(id.clone(), token.clone());
                let bound = token.name.as_deref().map(|n| format!(" for {n}")).unwrap_or_default();
                self.push_event(at_ms, "security", format!("join token {id} created{bound}"));
            }
            SecurityCmd::RevokeJoinToken { id } => {
                if sec.join_tokens.remove(id).is_none() {
                    return denied(format!("there is no unused join token {id} (`kvmesh cluster token list`)"));
                }
                self.push_event(at_ms, "security", format!("join token {id} revoked"));
            }
            SecurityCmd::IssueNodeCert { join_token, fingerprint, cert } => {
                if not_member {
                    return denied(format!("node {} is not a member; its certificate is not recorded", cert.name));
                }
                if let Some((id, hash)) = join_token {
                    if let Err(reason) = check_join_token(sec, id, hash, &cert.name, at_ms) {
                        return denied(reason);
                    }
                    if taken {
                        return denied(format!(
                            "node name {:?} is already taken by another node; to enroll that member again (its certificate expired while it was off), make a token bound to it: `kvmesh cluster token create --name {}`",
                            cert.name, cert.name
                        ));
                    }
                    sec.join_tokens.remove(id);
                }
                sec.issued.insert(fingerprint.clone(), cert.clone());
                let how = if join_token.is_some() { "enrolled with a join token" } else { "has a new certificate" };
                self.push_event(at_ms, "security", format!("node {} {how}", cert.name));
            }
            SecurityCmd::RevokeNodeCerts { name } => self.revoke_node_certs(name, at_ms),
            SecurityCmd::IssueClientCert { fingerprint, cert } => {
                sec.issued.insert(fingerprint.clone(), cert.clone());
                let name = cert.name.trim_start_matches("client:");
                self.push_event(at_ms, "security", format!("client certificate issued to {name}"));
            }
            SecurityCmd::RevokeClientCerts { name } => {
                let holder = client_cert_name(name);
                if !sec.issued.values().any(|c| c.name == holder) {
                    return denied(format!("no client certificate was issued to {name:?} (`kvmesh cert list`)"));
                }
                self.revoke_node_certs(&holder, at_ms);
            }
        }
        Response::Done
    }

    /// Moves every certificate issued to `name` to the revocation list.
    pub(crate) fn revoke_node_certs(&mut self, name: &str, at_ms: u64) {
        let sec = &mut self.meta.security;
        let theirs: BTreeSet<String> =
            sec.issued.iter().filter(|(_, c)| c.name == name).map(|(fp, _)| fp.clone()).collect();
        for fp in &theirs {
            if let Some(c) = sec.issued.remove(fp) {
                sec.revoked.insert(fp.clone(), c.not_after_ms);
            }
        }
        if !theirs.is_empty() {
            self.dirty.insert(Key::Meta);
            let whose = match name.strip_prefix("client:") {
                Some(client) => format!("client {client}"),
                None => format!("node {name}"),
            };
            self.push_event(at_ms, "security", format!("{} certificate(s) of {whose} revoked", theirs.len()));
        }
    }
}

/// Why a join token cannot enroll node `name` now, if it cannot. One
/// message for unknown and used tokens: a used token is deleted, and
/// telling them apart would tell an attacker which ids existed.
fn check_join_token(sec: &Security, id: &str, hash: &str, name: &str, at_ms: u64) -> Result<(), String> {
    let Some(token) = sec.join_tokens.get(id) else {
        return Err(format!(
            "join token {id} is unknown, already used or revoked; create a new one with `kvmesh cluster token create --name {name}`"
        ));
    };
    if token.hash != hash {
        return Err(format!("join token {id}: wrong secret"));
    }
    if token.expires_ms <= at_ms {
        return Err(format!(
            "join token {id} expired; create a new one with `kvmesh cluster token create --name {name}`"
        ));
    }
    if let Some(bound) = &token.name {
        if bound != name {
            return Err(format!("join token {id} is for node {bound:?}, not {name:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn join(state: &mut ClusterState, id: &str, hash: &str, name: &str, at_ms: u64) -> Response {
        let cert = IssuedCert { name: name.into(), not_after_ms: at_ms + 1000 };
        let cmd = SecurityCmd::IssueNodeCert {
            join_token: Some((id.into(), hash.into())),
            fingerprint: format!("fp-{name}-{at_ms}"),
            cert,
        };
        state.apply(&Command::Security { cmd, at_ms })
    }

    fn with_token(name: Option<&str>) -> ClusterState {
        let mut s = ClusterState::default();
        let token = JoinToken { hash: "h".into(), name: name.map(str::to_string), created_ms: 0, expires_ms: 100 };
        let r = s.apply(&Command::Security { cmd: SecurityCmd::CreateJoinToken { id: "t1".into(), token }, at_ms: 0 });
        assert_eq!(r, Response::Done);
        s
    }

    #[test]
    fn a_join_token_enrolls_once() {
        let mut s = with_token(None);
        assert_eq!(join(&mut s, "t1", "h", "n2", 10), Response::Done);
        let again = join(&mut s, "t1", "h", "n3", 11);
        assert!(matches!(again, Response::Refused(Refusal::Denied { reason }) if reason.contains("already used")));
        assert_eq!(s.meta.security.issued.len(), 1);
    }

    #[test]
    fn wrong_secret_expired_and_wrong_name_are_refused_and_leave_the_token() {
        let mut s = with_token(Some("n2"));
        for (hash, name, at) in [("x", "n2", 10), ("h", "n2", 100), ("h", "n3", 10)] {
            assert!(matches!(join(&mut s, "t1", hash, name, at), Response::Refused(_)), "{hash} {name} {at}");
        }
        assert!(s.meta.security.join_tokens.contains_key("t1"));
        assert_eq!(join(&mut s, "t1", "h", "n2", 99), Response::Done);
    }

    #[test]
    fn a_removed_nodes_certificates_are_revoked_until_they_expire() {
        let mut s = with_token(None);
        join(&mut s, "t1", "h", "n2", 10);
        s.revoke_node_certs("n2", 20);
        assert!(s.meta.security.is_revoked("fp-n2-10"));
        assert!(s.meta.security.issued.is_empty());
        // Past its expiry the entry is pruned by the next security write.
        let cmd = SecurityCmd::RevokeJoinToken { id: "none".into() };
        s.apply(&Command::Security { cmd, at_ms: 5000 });
        let token = ApiToken { hash: "a".into(), role: "admin".into(), created_ms: 0 };
        s.apply(&Command::Security { cmd: SecurityCmd::CreateApiToken { name: "a".into(), token }, at_ms: 5000 });
        assert!(!s.meta.security.is_revoked("fp-n2-10"));
    }

    #[test]
    fn renewals_are_recorded_for_members_only() {
        let mut s = ClusterState::default();
        let renew = |s: &mut ClusterState| {
            let cert = IssuedCert { name: "n1".into(), not_after_ms: 1000 };
            let cmd = SecurityCmd::IssueNodeCert { join_token: None, fingerprint: "fp".into(), cert };
            s.apply(&Command::Security { cmd, at_ms: 1 })
        };
        assert!(matches!(renew(&mut s), Response::Refused(Refusal::Denied { .. })));
        assert!(s.meta.security.issued.is_empty());
        let node = crate::model::Node {
            id: 1,
            name: "n1".into(),
            address: "a:1".into(),
            cpus: 1,
            memory_mib: 1,
            state: crate::model::NodeState::Up,
            joined_at_ms: 0,
            labels: Default::default(),
            resume_as: None,
            cold_drain: false,
        };
        s.nodes.insert(1, node);
        assert_eq!(renew(&mut s), Response::Done);
        assert!(s.meta.security.issued.contains_key("fp"));
    }

    #[test]
    fn client_certificates_are_revoked_by_name() {
        let mut s = ClusterState::default();
        let cert = IssuedCert { name: client_cert_name("ci"), not_after_ms: 1000 };
        let cmd = SecurityCmd::IssueClientCert { fingerprint: "c1".into(), cert };
        assert_eq!(s.apply(&Command::Security { cmd, at_ms: 1 }), Response::Done);
        let unknown = SecurityCmd::RevokeClientCerts { name: "other".into() };
        assert!(matches!(s.apply(&Command::Security { cmd: unknown, at_ms: 2 }), Response::Refused(_)));
        let revoke = SecurityCmd::RevokeClientCerts { name: "ci".into() };
        assert_eq!(s.apply(&Command::Security { cmd: revoke, at_ms: 2 }), Response::Done);
        assert!(s.meta.security.is_revoked("c1"));
    }
}
