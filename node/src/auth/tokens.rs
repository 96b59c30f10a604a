//! The formats of API tokens and join tokens, and how their secrets are
//! hashed for the replicated state. Only hashes are stored; the whole
//! token is shown once, when it is made.
//!
//! - API token: `kvm1.<name>.<secret>`; the name finds the record, the
//!   secret's hash must match it.
//! - Join token: `kvmj1.<ca fingerprint>.<id>.<secret>.<member>,<member>…`:
//!   everything a new node needs to find the cluster, check that it is the
//!   right one (the CA it pins), and prove it was invited.

use sha2::{Digest, Sha256};

use crate::tls::ca::hex;

const API_PREFIX: &str = "kvm1";
const JOIN_PREFIX: &str = "kvmj1";

/// A new random secret: 32 bytes, hex.
pub fn new_secret() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// Hex SHA-256 of a secret: what the state stores.
pub fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Token and node names: letters, digits, `-` and `_`, 1 to 63 of them.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn api_token(name: &str, secret: &str) -> String {
    format!("{API_PREFIX}.{name}.{secret}")
}

/// The name and secret of an API token.
pub fn parse_api_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(API_PREFIX)?.strip_prefix('.')?;
    let (name, secret) = rest.split_once('.')?;
    (valid_name(name) && !secret.is_empty()).then_some((name, secret))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
    pub members: Vec<String>,
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{JOIN_PREFIX}.{}.{}.{}.{}", self.ca_fingerprint, self.id, self.secret, self.members.join(","))
    }
}

impl std::str::FromStr for JoinToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            "not a kvmesh join token (it starts with kvmj1.; make one with `kvmesh cluster token create` on a member)"
                .to_string()
        };
        let mut parts = s.trim().splitn(5, '.');
        if parts.next() != Some(JOIN_PREFIX) {
            return Err(bad());
        }
        let (fp, id, secret, members) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(fp), Some(id), Some(secret), Some(members)) = (fp, id, secret, members) else { return Err(bad()) };
        let hex = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_hexdigit());
        if fp.len() != 64 || !hex(fp) || !hex(id) || !hex(secret) {
            return Err(bad());
        }
        let members: Vec<String> = members.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect();
        if members.is_empty() {
            return Err(bad());
        }
        Ok(JoinToken { ca_fingerprint: fp.to_lowercase(), id: id.into(), secret: secret.into(), members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back() {
        let secret = new_secret();
        assert_eq!(parse_api_token(&api_token("ci-bot", &secret)), Some(("ci-bot", secret.as_str())));
        assert_eq!(parse_api_token("kvm1.a.b.c"), Some(("a", "b.c")));
        for bad in ["", "kvm1.", "kvm1.x", "kvm2.x.y", "kvm1.bad name.y"] {
            assert_eq!(parse_api_token(bad), None, "{bad}");
        }
        let join = JoinToken {
            ca_fingerprint: "ab".repeat(32),
            id: "0123".into(),
            secret: new_secret(),
            members: vec!["10.0.0.1:7000".into(), "10.0.0.2:7000".into()],
        };
        assert_eq!(join.to_string().parse::<JoinToken>(), Ok(join));
        assert!("kvmj1.zz.1.2.a".parse::<JoinToken>().is_err());
        assert!("hello".parse::<JoinToken>().is_err());
    }

    #[test]
    fn hashes_compare_whole() {
        assert!(same(&hash("a"), &hash("a")));
        assert!(!same(&hash("a"), &hash("b")));
        assert!(!same("ab", "abc"));
    }
}
