//! Browser sessions, pure: the signed ticket the session cookie carries and
//! the CSRF token that goes with it.
//!
//! A ticket is `kvs1.<token name>.<issued ms>.<mac>`: the MAC binds the
//! name and time to the API token's record (its secret's hash), under a
//! key derived from the cluster CA's key, which every node holds. So any
//! node checks any ticket without shared session state, revoking the
//! token ends its sessions at once (its record, and so the MAC, is gone),
//! and the cookie never holds the token's secret. The CSRF token is a MAC
//! of the ticket: a page of this origin gets it from the login answer; a
//! page of another origin, which the browser still sends the cookie for in
//! a top-level navigation, cannot read it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::tls::ca::hex;

/// How long a ticket is good for: a working day; then the UI asks for the
/// token again.
pub const LIFETIME_MS: u64 = 12 * 3600 * 1000;
/// Clocks of nodes differ a little: a ticket a node issued this far in
/// another's future still counts.
pub const SKEW_MS: u64 = 300 * 1000;
/// The cookie's name: `__Host-` makes browsers keep it to this host and
/// path `/`, sent only over TLS.
pub const COOKIE: &str = "__Host-kvmesh_session";

const VERSION: &str = "kvs1";

/// The key sessions are signed with, derived from the cluster CA's key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    pub fn from_ca(ca_key_pem: &str) -> Key {
        Key(mac(ca_key_pem.as_bytes(), &[b"kvmesh ui session v1"]))
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        hex(&mac(&self.0, parts))
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        m.update(part);
        m.update(&[0]);
    }
    m.finalize().into_bytes().into()
}

/// A new ticket for the token `name` whose record has `token_hash`.
pub fn mint(key: &Key, name: &str, token_hash: &str, issued_ms: u64) -> String {
    let issued = format!("{issued_ms:x}");
    let sig = key.sign(&[VERSION.as_bytes(), name.as_bytes(), issued.as_bytes(), token_hash.as_bytes()]);
    format!("{VERSION}.{name}.{issued}.{sig}")
}

/// Why a ticket is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    /// No such token (revoked), or signed for another record or cluster.
    Invalid,
    Expired,
}

/// The session a valid ticket stands for.
#[derive(Debug, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    pub issued_ms: u64,
}

impl Session {
    pub fn expires_ms(&self) -> u64 {
        self.issued_ms + LIFETIME_MS
    }
}

/// Checks `ticket` at `now_ms`; `token_hash` finds a token's record hash.
pub fn verify(
    key: &Key,
    ticket: &str,
    token_hash: impl FnOnce(&str) -> Option<String>,
    now_ms: u64,
) -> Result<Session, Refused> {
    let mut parts = ticket.split('.');
    let (Some(VERSION), Some(name), Some(issued), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Malformed);
    };
    let issued_ms = u64::from_str_radix(issued, 16).map_err(|_| Refused::Malformed)?;
    let hash = token_hash(name).ok_or(Refused::Invalid)?;
    let want = key.sign(&[VERSION.as_bytes(), name.as_bytes(), issued.as_bytes(), hash.as_bytes()]);
    if !crate::auth::tokens::same(&want, sig) {
        return Err(Refused::Invalid);
    }
    if issued_ms > now_ms + SKEW_MS || now_ms > issued_ms + LIFETIME_MS {
        return Err(Refused::Expired);
    }
    Ok(Session { name: name.to_string(), issued_ms })
}

/// The CSRF token of `ticket`.
pub fn csrf(key: &Key, ticket: &str) -> String {
    key.sign(&[b"csrf", ticket.as_bytes()])
}

/// Whether `given` is `ticket`'s CSRF token.
pub fn csrf_matches(key: &Key, ticket: &str, given: &str) -> bool {
    crate::auth::tokens::same(&csrf(key, ticket), given)
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` that holds `ticket` (`None`: the one that ends it).
pub fn set_cookie(ticket: Option<&str>) -> String {
    let (value, age) = match ticket {
        Some(t) => (t, LIFETIME_MS / 1000),
        None => ("", 0),
    };
    format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={age}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "aa11";

    fn lookup(name: &str) -> Option<String> {
        (name == "alice").then(|| HASH.to_string())
    }

    #[test]
    fn a_ticket_holds_for_its_lifetime_and_its_token_only() {
        let key = Key::from_ca("ca key");
        let t = mint(&key, "alice", HASH, 1_000_000);
        assert_eq!(verify(&key, &t, lookup, 1_000_000).unwrap().name, "alice");
        assert!(verify(&key, &t, lookup, 1_000_000 + LIFETIME_MS).is_ok());
        assert_eq!(verify(&key, &t, lookup, 1_000_001 + LIFETIME_MS), Err(Refused::Expired));
        assert_eq!(
            verify(&key, &t, lookup, 1_000_000 - SKEW_MS),
            Ok(Session { name: "alice".into(), issued_ms: 1_000_000 })
        );
        // Another cluster's key, a revoked token, a new secret, a forged time.
        assert_eq!(verify(&Key::from_ca("other"), &t, lookup, 1_000_000), Err(Refused::Invalid));
        assert_eq!(verify(&key, &t, |_| None, 1_000_000), Err(Refused::Invalid));
        assert_eq!(verify(&key, &t, |_| Some("bb22".into()), 1_000_000), Err(Refused::Invalid));
        let forged = t.replace(".f4240.", ".f4241.");
        assert_ne!(forged, t);
        assert_eq!(verify(&key, &forged, lookup, 1_000_000), Err(Refused::Invalid));
        assert_eq!(verify(&key, "kvs1.alice.zz.00", lookup, 0), Err(Refused::Malformed));
        assert_eq!(verify(&key, "kvs1.alice.1", lookup, 0), Err(Refused::Malformed));
    }

    #[test]
    fn a_ticket_issued_in_the_future_counts_within_the_skew_only() {
        let key = Key::from_ca("ca key");
        let t = mint(&key, "alice", HASH, 10 * SKEW_MS);
        assert!(verify(&key, &t, lookup, 9 * SKEW_MS).is_ok());
        assert_eq!(verify(&key, &t, lookup, 9 * SKEW_MS - 1), Err(Refused::Expired));
    }

    #[test]
    fn csrf_is_bound_to_the_ticket() {
        let key = Key::from_ca("ca key");
        let (a, b) = (mint(&key, "alice", HASH, 1), mint(&key, "alice", HASH, 2));
        assert!(csrf_matches(&key, &a, &csrf(&key, &a)));
        assert!(!csrf_matches(&key, &b, &csrf(&key, &a)));
        assert!(!csrf_matches(&key, &a, ""));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let headers = ["theme=dark; __Host-kvmesh_session=kvs1.a.1.ff", "x=y"];
        assert_eq!(cookie(headers), Some("kvs1.a.1.ff"));
        assert_eq!(cookie(["kvmesh_session=no"]), None);
        assert!(set_cookie(None).contains("Max-Age=0"));
        assert!(set_cookie(Some("t")).contains("HttpOnly; SameSite=Strict"));
    }
}
