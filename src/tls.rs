//! TLS in one place: the process-wide crypto provider, PEM loading, the
//! upstream client configuration (webpki roots plus optional extra anchors,
//! always verifying) and server configurations for HTTPS listeners.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsIdentity;

/// Installs ring as rustls' process-wide crypto provider. Idempotent: later
/// calls (tests start many gateways in one process) are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

/// Reads a certificate chain and its key and checks that they belong together.
pub fn load_identity(cert: &Path, key: &Path) -> Result<TlsIdentity, String> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let id = TlsIdentity {
        chain,
        key: Arc::new(key_der),
        cert_path: cert.to_owned(),
    };
    server_config(&id, &[b"http/1.1"])?;
    Ok(id)
}

/// A server configuration for an HTTPS listener.
pub fn server_config(id: &TlsIdentity, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| {
            format!(
                "{}: certificate and key do not form a usable identity: {e}",
                id.cert_path.display()
            )
        })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The client configuration for PayMongo: webpki roots plus `extra_roots`,
/// full chain and hostname validation. There is deliberately no way to turn
/// verification off.
pub fn client_config(extra_roots: &[CertificateDer<'static>]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for c in extra_roots {
        roots
            .add(c.clone())
            .map_err(|e| format!("upstream.ca_file: unusable trust anchor: {e}"))?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}
