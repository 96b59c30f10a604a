//! Server verification for the two moments a client does not hold the
//! cluster's CA yet: a joining node, which pins the CA by the fingerprint
//! in its join token, and `cluster init`, which trusts the CA the new node
//! presents (its first use) and keeps it for every later call.
//!
//! Either way the presented chain must be the node certificate followed by
//! the CA that signed it, and the node certificate must verify against
//! that CA as usual; only the choice of CA differs.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::ca::fingerprint;

#[derive(Debug)]
pub struct CaFromChain {
    /// The CA's fingerprint; `None` trusts whichever CA comes (init).
    pinned: Option<String>,
    provider: Arc<CryptoProvider>,
    /// The CA that was accepted, DER.
    pub seen: Mutex<Option<Vec<u8>>>,
}

impl CaFromChain {
    pub fn pinned(fingerprint: &str) -> Arc<Self> {
        Arc::new(CaFromChain {
            pinned: Some(fingerprint.to_lowercase()),
            provider: super::provider(),
            seen: Mutex::new(None),
        })
    }

    pub fn first_use() -> Arc<Self> {
        Arc::new(CaFromChain { pinned: None, provider: super::provider(), seen: Mutex::new(None) })
    }
}

impl ServerCertVerifier for CaFromChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = match &self.pinned {
            Some(pin) => intermediates.iter().find(|c| fingerprint(c) == *pin).ok_or_else(|| {
                rustls::Error::General(
                    "the node's CA does not match the fingerprint in the join token: wrong cluster, or someone in between"
                        .into(),
                )
            })?,
            None => intermediates
                .last()
                .ok_or_else(|| rustls::Error::General("the node sent no CA certificate".into()))?,
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.to_vec());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that verifies with `verifier` and presents no
/// certificate.
pub fn client_config(verifier: Arc<dyn ServerCertVerifier>) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A client configuration that trusts the cluster CA `ca_pem` (the CLI),
/// presenting `identity` (certificate and key, PEM) if given.
pub fn ca_client_config(
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> crate::error::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let err = |e: String| crate::error::Error::Tls(format!("the client config's CA certificate: {e}"));
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| err(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let bad = |what: &str, e: String| crate::error::Error::Tls(format!("the client config's {what}: {e}"));
            let cert =
                CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| bad("certificate", e.to_string()))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| bad("key", e.to_string()))?;
            builder.with_client_auth_cert(vec![cert], key).map_err(|e| bad("certificate and key", e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
