//! TLS for every connection a node makes or accepts.
//!
//! A node's identity is its key and a certificate signed by the cluster CA,
//! kept in `<data-dir>/tls/` (`ca.crt`, `node.key`, `node.crt`; keys 0600).
//! The certificate in use sits behind one lock that the server's
//! certificate resolver and the client's certificate resolver both read at
//! every handshake, so a renewal ([`renew`]) takes effect without a restart
//! and without dropping connections: tonic's own server TLS is fixed at
//! start, which is why the listener does its own handshakes ([`listen`]).
//!
//! A first node makes a CA of its own when it starts with an empty data
//! dir (the CA becomes the cluster's at `cluster init`); a joining node
//! gets its certificate from the cluster with a join token ([`enroll`])
//! before it serves anything.

pub mod ca;
pub mod dial;
pub mod enroll;
pub mod listen;
pub mod renew;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::error::{Error, Result};

/// The crypto the node and the CLI use (ring). rustls marks ring's provider
/// deprecated for its lack of post-quantum key exchange; aws-lc-rs would
/// need cmake and a C toolchain on every build host, and the cluster's
/// traffic is between its own nodes under its own CA.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate in use, and what the renewal needs to know about it.
struct Current {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// This node's TLS identity.
pub struct NodeTls {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    ca_pem: RwLock<String>,
    current: RwLock<Option<Current>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("dir", &self.dir).finish()
    }
}

impl NodeTls {
    /// Loads the identity under `<data_dir>/tls`, if there is one.
    pub fn open(data_dir: &Path) -> Result<Arc<NodeTls>> {
        let dir = data_dir.join("tls");
        let tls = NodeTls { dir, provider: provider(), ca_pem: RwLock::new(String::new()), current: RwLock::new(None) };
        if tls.dir.join("node.crt").exists() {
            let read = |f: &str| {
                std::fs::read_to_string(tls.dir.join(f))
                    .map_err(|e| Error::Tls(format!("cannot read {}: {e}", tls.dir.join(f).display())))
            };
            let (ca, key, cert) = (read("ca.crt")?, read("node.key")?, read("node.crt")?);
            tls.use_identity(&ca, &key, &cert)?;
        }
        Ok(Arc::new(tls))
    }

    pub fn has_identity(&self) -> bool {
        self.current.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub fn ca_pem(&self) -> String {
        self.ca_pem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The CA key this node made when it started first with an empty data
    /// dir (before `cluster init` hands it to the cluster).
    pub fn own_ca_key(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("ca.key")).ok()
    }

    /// When the certificate in use was issued and expires.
    pub fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|c| (c.not_before, c.not_after))
    }

    /// The certificate in use, for resolvers.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|c| c.key.clone())
    }

    /// Makes a CA and this node's first certificate, for a node that will
    /// found a cluster.
    pub fn bootstrap(&self, name: &str, lifetime: Duration) -> Result<()> {
        let (ca_cert, ca_key) = ca::new_ca()?;
        let (key, csr) = ca::new_key_and_csr()?;
        let cert = ca::sign(&ca_cert, &ca_key, &csr, &ca::Subject::Node(name.to_string()), lifetime)?;
        self.write_file("ca.key", &ca_key, true)?;
        self.install(&ca_cert, &key, &cert)
    }

    /// Writes a new identity to disk and puts it in use.
    pub fn install(&self, ca_pem: &str, key_pem: &str, cert_pem: &str) -> Result<()> {
        // Checked before anything is written: a bad answer leaves the old
        // identity in place.
        let current = self.parse(ca_pem, key_pem, cert_pem)?;
        self.write_file("ca.crt", ca_pem, false)?;
        self.write_file("node.key", key_pem, true)?;
        self.write_file("node.crt", cert_pem, false)?;
        *self.ca_pem.write().unwrap_or_else(|p| p.into_inner()) = ca_pem.to_string();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(current);
        Ok(())
    }

    fn use_identity(&self, ca_pem: &str, key_pem: &str, cert_pem: &str) -> Result<()> {
        let current = self.parse(ca_pem, key_pem, cert_pem)?;
        *self.ca_pem.write().unwrap_or_else(|p| p.into_inner()) = ca_pem.to_string();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(current);
        Ok(())
    }

    fn parse(&self, ca_pem: &str, key_pem: &str, cert_pem: &str) -> Result<Current> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("bad node certificate: {e}")))?;
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Tls(format!("bad node key: {e}")))?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| Error::Tls(format!("unusable node key: {e}")))?;
        let info = ca::info(&cert)?;
        let not_before = {
            use x509_parser::prelude::*;
            let (_, x) = X509Certificate::from_der(&cert).map_err(|e| Error::Tls(format!("bad certificate: {e}")))?;
            SystemTime::UNIX_EPOCH + Duration::from_secs(x.validity().not_before.timestamp().max(0) as u64)
        };
        // The chain carries the CA, so a joining node can check it against
        // the fingerprint in its token.
        let key = Arc::new(CertifiedKey::new(vec![cert, ca], signing));
        Ok(Current { key, not_before, not_after: info.not_after })
    }

    fn write_file(&self, name: &str, text: &str, secret: bool) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let err = |e: std::io::Error| Error::Tls(format!("cannot write {}: {e}", self.dir.join(name).display()));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(err)?;
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, self.dir.join(name)).map_err(err)
    }

    /// The roots: this cluster's CA.
    pub fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_pem().as_bytes())
            .map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
        roots.add(ca).map_err(|e| Error::Tls(format!("unusable CA certificate: {e}")))?;
        Ok(roots)
    }

    /// The server side: presents the node certificate in use; asks for a
    /// client certificate but takes connections without one (API tokens
    /// and join tokens come that way).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), self.provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Tls(format!("cannot build the client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        // gRPC is HTTP/2; the REST API and the web UI also take HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The client side of node-to-node connections: the cluster CA, and
    /// this node's certificate as the client certificate.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>> {
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Hands out the certificate in use at each handshake.
#[derive(Debug)]
struct Resolver(Arc<NodeTls>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.has_identity()
    }
}
