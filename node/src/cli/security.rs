//! `kvmesh token …` (API tokens) and `kvmesh cluster token …` (join
//! tokens). A token's secret is printed once, when it is made.

use anyhow::{anyhow, Result};
use kvmesh_proto as pb;
use pb::security_client::SecurityClient;
use serde_json::json;

use super::client::{req, status_err, Ch};
use super::config::{ClientConfig, Settings};
use super::output::{format_ms, table};
use super::{CertCmd, JoinTokenCmd, Output, TokenCmd};

/// `90s`, `30m`, `1h`, `2d` (or plain seconds) as seconds.
pub fn parse_ttl(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?}: give a number and a unit: 90s, 30m, 1h, 2d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{s:?}: must be at least one second and at most a few days")),
        Some(v) => Ok(v),
    }
}

pub async fn tokens(channel: Ch, output: Output, command: TokenCmd) -> Result<()> {
    let mut client = SecurityClient::new(channel);
    match command {
        TokenCmd::Create { name, role } => {
            let r = client.create_token(req(pb::CreateTokenRequest { name, role })).await.map_err(status_err)?;
            let r = r.into_inner();
            match output {
                Output::Json => outln!("{}", json!({"name": r.name, "role": r.role, "token": r.token})),
                Output::Table => {
                    outln!("{}", r.token);
                    eprintln!("API token {} ({}); the secret is not shown again", r.name, r.role);
                }
            }
        }
        TokenCmd::List => {
            let list = client.list_tokens(req(pb::ListTokensRequest {})).await.map_err(status_err)?.into_inner();
            match output {
                Output::Json => {
                    outln!(
                        "{}",
                        crate::view::json(list.tokens.iter().map(crate::view::Token::from).collect::<Vec<_>>())
                    )
                }
                Output::Table => table(
                    &["NAME", "ROLE", "CREATED"],
                    list.tokens.iter().map(|t| vec![t.name.clone(), t.role.clone(), format_ms(t.created_ms)]).collect(),
                ),
            }
        }
        TokenCmd::Revoke { name } => {
            client.revoke_token(req(pb::RevokeTokenRequest { name: name.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"revoked": name})),
                Output::Table => outln!("revoked API token {name}"),
            }
        }
    }
    Ok(())
}

pub async fn join_tokens(channel: Ch, output: Output, command: JoinTokenCmd) -> Result<()> {
    let mut client = SecurityClient::new(channel);
    match command {
        JoinTokenCmd::Create { ttl, name } => {
            let request = pb::CreateJoinTokenRequest { ttl_s: ttl.unwrap_or(0), node_name: name.unwrap_or_default() };
            let r = client.create_join_token(req(request)).await.map_err(status_err)?.into_inner();
            match output {
                Output::Json => {
                    outln!("{}", json!({"id": r.id, "token": r.token, "expires_ms": r.expires_ms}))
                }
                Output::Table => {
                    outln!("{}", r.token);
                    eprintln!(
                        "join token {} (one use, until {}): start the new node with `kvmesh serve --join-token TOKEN …`",
                        r.id,
                        format_ms(r.expires_ms)
                    );
                }
            }
        }
        JoinTokenCmd::List => {
            let list = client.list_join_tokens(req(pb::ListTokensRequest {})).await.map_err(status_err)?.into_inner();
            match output {
                Output::Json => {
                    let all: Vec<_> = list
                        .tokens
                        .iter()
                        .map(|t| json!({"id": t.name, "node": t.node_name, "created_ms": t.created_ms, "expires_ms": t.expires_ms}))
                        .collect();
                    outln!("{}", serde_json::Value::Array(all));
                }
                Output::Table => table(
                    &["ID", "FOR NODE", "EXPIRES"],
                    list.tokens
                        .iter()
                        .map(|t| {
                            let node = if t.node_name.is_empty() { "(any)".to_string() } else { t.node_name.clone() };
                            vec![t.name.clone(), node, format_ms(t.expires_ms)]
                        })
                        .collect(),
                ),
            }
        }
        JoinTokenCmd::Revoke { id } => {
            client.revoke_join_token(req(pb::RevokeTokenRequest { name: id.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"revoked": id})),
                Output::Table => outln!("revoked join token {id}"),
            }
        }
    }
    Ok(())
}

pub async fn certs(channel: Ch, settings: &Settings, output: Output, command: CertCmd) -> Result<()> {
    let mut client = SecurityClient::new(channel);
    match command {
        CertCmd::Create { name, role, ttl, out } => {
            let (key, csr_pem) = crate::tls::ca::new_key_and_csr()?;
            let request =
                pb::IssueClientCertRequest { name: name.clone(), role: role.clone(), csr_pem, ttl_s: ttl.unwrap_or(0) };
            let r = client.issue_client_cert(req(request)).await.map_err(status_err)?.into_inner();
            let config = ClientConfig {
                endpoint: Some(settings.endpoint_list()),
                ca_cert: Some(r.ca_cert_pem),
                token: None,
                cert: Some(r.cert_pem),
                key: Some(key),
            };
            super::config::save(&out, &config)?;
            match output {
                Output::Json => outln!(
                    "{}",
                    json!({"name": name, "role": role, "expires_ms": r.expires_ms, "client_config": out.display().to_string()})
                ),
                Output::Table => outln!(
                    "client certificate for {name} ({role}) until {}, with its key, written to {}: use it with --client-config",
                    format_ms(r.expires_ms),
                    out.display()
                ),
            }
        }
        CertCmd::List => {
            let list = client.list_client_certs(req(pb::ListTokensRequest {})).await.map_err(status_err)?.into_inner();
            match output {
                Output::Json => {
                    let all: Vec<_> = list
                        .tokens
                        .iter()
                        .map(|t| json!({"name": t.name, "expires_ms": t.expires_ms, "fingerprint": t.node_name}))
                        .collect();
                    outln!("{}", serde_json::Value::Array(all));
                }
                Output::Table => table(
                    &["NAME", "EXPIRES", "FINGERPRINT"],
                    list.tokens
                        .iter()
                        .map(|t| vec![t.name.clone(), format_ms(t.expires_ms), t.node_name.clone()])
                        .collect(),
                ),
            }
        }
        CertCmd::Revoke { name } => {
            client.revoke_client_certs(req(pb::RevokeTokenRequest { name: name.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"revoked": name})),
                Output::Table => outln!("revoked the client certificates of {name}"),
            }
        }
    }
    Ok(())
}

/// Checks that the CA the node presented is the one it answered with.
pub fn same_ca(seen_der: Option<Vec<u8>>, answered_pem: &str) -> Result<()> {
    let answered = crate::tls::ca::der_of(answered_pem)?;
    match seen_der {
        Some(seen) if seen == answered => Ok(()),
        _ => Err(anyhow!("the node's TLS certificate is not from the CA it answered with; not saving it")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("45"), Ok(45));
        for bad in ["", "h", "1w", "0s", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
