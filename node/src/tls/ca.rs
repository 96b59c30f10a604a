//! The cluster's certificate authority, as pure functions over PEM text:
//! make a CA, make a node key and its signing request, sign a request as
//! the CA decides (the name comes from the CA's caller, never from the
//! request), and read back who a presented certificate names.
//!
//! Names live in a URI subject-alternative name, `kvmesh://node/<name>` for
//! a node and `kvmesh://client/<name>/<role>` for a client certificate, so
//! a certificate cannot be mistaken for another kind. Every node
//! certificate also carries the DNS name [`SERVER_NAME`], the name clients
//! verify: nodes move between addresses, and the CA, not the address, is
//! what a client trusts.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The DNS name in every node certificate, and the one clients check.
pub const SERVER_NAME: &str = "kvmesh-node";

/// A CA lives ten years; it is not rotated (README, "Security").
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Who a certificate says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Node(String),
    Client { name: String, role: String },
}

/// What a presented certificate tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: Option<Subject>,
    pub fingerprint: String,
    pub not_after: SystemTime,
}

fn tls_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// A new CA: its certificate and private key, PEM.
pub fn new_ca() -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(tls_err("cannot make the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kvmesh cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + CA_LIFETIME).into();
    let cert = params.self_signed(&key).map_err(tls_err("cannot sign the CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new private key (ECDSA P-256) and a signing request for it, PEM.
pub fn new_key_and_csr() -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(tls_err("cannot make a key"))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(tls_err("cannot make a signing request"))?
        .pem()
        .map_err(tls_err("cannot encode the signing request"))?;
    Ok((key.serialize_pem(), csr))
}

/// Signs `csr_pem`'s key as `subject`, valid for `lifetime`; returns the
/// certificate PEM. Whatever names the request asks for are ignored.
pub fn sign(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    subject: &Subject,
    lifetime: Duration,
) -> Result<String> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err("the CA key is unreadable"))?;
    let ca = CertificateParams::from_ca_cert_pem(ca_cert_pem)
        .map_err(tls_err("the CA certificate is unreadable"))?
        .self_signed(&ca_key)
        .map_err(tls_err("cannot load the CA"))?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| Error::InvalidArgument(format!("not a certificate signing request: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let (common_name, uri) = match subject {
        Subject::Node(name) => (name.clone(), format!("kvmesh://node/{name}")),
        Subject::Client { name, role } => (name.clone(), format!("kvmesh://client/{name}/{role}")),
    };
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let uri = uri.try_into().map_err(tls_err("bad name"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    if matches!(subject, Subject::Node(_)) {
        params.subject_alt_names.push(SanType::DnsName(SERVER_NAME.try_into().map_err(tls_err("bad name"))?));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = SystemTime::now();
    // A little slack for clocks that differ between hosts (a tenth of the
    // life at most, so renewal at half life still comes before expiry).
    params.not_before = (now - (lifetime / 10).min(Duration::from_secs(300))).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(rand::random::<[u8; 16]>().map(|b| b & 0x7f).to_vec().into());
    let cert = params.signed_by(&csr.public_key, &ca, &ca_key).map_err(tls_err("cannot sign"))?;
    Ok(cert.pem())
}

/// Hex SHA-256 of a certificate's DER: how the cluster names certificates.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| Error::Tls(format!("not a PEM certificate: {e}")))
}

/// Reads who a (verified) certificate names, its fingerprint and expiry.
pub fn info(der: &[u8]) -> Result<CertInfo> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::Tls(format!("unreadable certificate: {e}")))?;
    let mut subject = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                subject = subject.or_else(|| parse_uri(uri));
            }
        }
    }
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    Ok(CertInfo { subject, fingerprint: fingerprint(der), not_after })
}

fn parse_uri(uri: &str) -> Option<Subject> {
    if let Some(name) = uri.strip_prefix("kvmesh://node/") {
        return (!name.is_empty() && !name.contains('/')).then(|| Subject::Node(name.to_string()));
    }
    let rest = uri.strip_prefix("kvmesh://client/")?;
    let (name, role) = rest.split_once('/')?;
    Some(Subject::Client { name: name.to_string(), role: role.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_node_certificate_names_the_node_the_ca_chose() {
        let (ca_cert, ca_key) = new_ca().unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let pem = sign(&ca_cert, &ca_key, &csr, &Subject::Node("n2".into()), Duration::from_secs(60)).unwrap();
        let info = info(&der_of(&pem).unwrap()).unwrap();
        assert_eq!(info.subject, Some(Subject::Node("n2".into())));
        let left = info.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50), "{left:?}");
        assert_eq!(info.fingerprint.len(), 64);
    }

    #[test]
    fn client_certificates_carry_their_role() {
        let (ca_cert, ca_key) = new_ca().unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let subject = Subject::Client { name: "ci".into(), role: "viewer".into() };
        let pem = sign(&ca_cert, &ca_key, &csr, &subject, Duration::from_secs(60)).unwrap();
        assert_eq!(info(&der_of(&pem).unwrap()).unwrap().subject, Some(subject));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (ca_cert, ca_key) = new_ca().unwrap();
        assert!(sign(&ca_cert, &ca_key, "nonsense", &Subject::Node("x".into()), Duration::from_secs(1)).is_err());
        assert!(info(b"\x30\x03\x02\x01").is_err());
        assert!(der_of("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
    }
}
