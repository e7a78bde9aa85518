//! TLS for s2s streams (rustls with aws-lc-rs, the process-wide provider).
//!
//! Inbound: the domain's certificate and key are read from files and read
//! again when either file changes, so a renewed certificate (cert-manager,
//! ACME) is picked up by the next connection without a restart.
//!
//! Outbound: the peer's certificate is checked against the trust roots, but a
//! failure does not end the stream: peers are then authenticated by dialback
//! (XEP-0220), as RFC 6120 §13.7.2 and deployed servers allow. The outcome is
//! logged with the stream.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::trust::RootsError;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("invalid certificate or key in {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The domain's certificate, reloaded when its files change. It serves
/// inbound TLS and is our client certificate for SASL EXTERNAL outbound.
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Mutex<Loaded>,
}

struct Loaded {
    stamp: Option<SystemTime>,
    server: Arc<ServerConfig>,
    key: Arc<CertifiedKey>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

fn load(cert_file: &Path, key_file: &Path) -> Result<(ServerConfig, CertifiedKey), TlsError> {
    let read_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| read_err(cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(cert_file, e))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: cert_file.to_owned(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| read_err(key_file, e))?;
    let invalid = |e: rustls::Error| TlsError::Invalid {
        path: cert_file.to_owned(),
        message: e.to_string(),
    };
    let provider = provider();
    let certified =
        CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(invalid)?;
    // Peers may present a certificate (for SASL EXTERNAL); none is required,
    // and an untrusted one is not a handshake failure: dialback remains.
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_client_cert_verifier(Arc::new(AnyClientCertificate { provider }))
        .with_single_cert(certs, key)
        .map_err(invalid)?;
    config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    Ok((config, certified))
}

impl ServerTls {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let (server, key) = load(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: Mutex::new(Loaded {
                stamp: newest(cert_file, key_file),
                server: Arc::new(server),
                key: Arc::new(key),
            }),
        })
    }

    /// Our certificate and key, for SASL EXTERNAL on outbound streams.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.refresh().key.clone()
    }

    /// The configuration for a new connection; re-reads the files if they changed.
    /// A file that fails to load keeps the previous certificate in service.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.refresh().server.clone()
    }

    fn refresh(&self) -> std::sync::MutexGuard<'_, Loaded> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = newest(&self.cert_file, &self.key_file);
        if stamp != current.stamp {
            match load(&self.cert_file, &self.key_file) {
                Ok((server, key)) => {
                    tracing::info!(cert = %self.cert_file.display(), "s2s TLS certificate reloaded");
                    *current = Loaded {
                        stamp,
                        server: Arc::new(server),
                        key: Arc::new(key),
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "s2s TLS certificate changed but cannot be loaded; keeping the previous one");
                    current.stamp = stamp;
                }
            }
        }
        current
    }
}

fn newest(a: &Path, b: &Path) -> Option<SystemTime> {
    modified(a).max(modified(b))
}

/// The trust roots peers' certificates are checked against: a PEM file, or
/// the system's roots.
#[derive(Debug)]
pub struct TrustStore {
    roots: Arc<RootCertStore>,
}

impl TrustStore {
    pub fn load(trust_roots: Option<&Path>) -> Result<Self, TlsError> {
        let path = || trust_roots.map(Path::to_owned).unwrap_or_default();
        let roots = crate::trust::load_roots(trust_roots, "s2s").map_err(|e| match e {
            RootsError::Read(message) => TlsError::Read {
                path: path(),
                message,
            },
            RootsError::Invalid(message) => TlsError::Invalid {
                path: path(),
                message,
            },
        })?;
        Ok(Self {
            roots: Arc::new(roots),
        })
    }

    /// Whether `chain` (end entity first) is a certificate for `domain` that
    /// chains to our roots (RFC 6120 §13.7.2, XEP-0178): what SASL EXTERNAL
    /// accepts. Either the client or the server usage will do, as s2s
    /// certificates are issued for one or the other.
    pub fn valid_for(&self, chain: &[CertificateDer<'_>], domain: &str) -> bool {
        let Some((end, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(end) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain) else {
            return false;
        };
        let algs = provider().signature_verification_algorithms.all;
        let now = UnixTime::now();
        let chains = [
            webpki::KeyUsage::client_auth(),
            webpki::KeyUsage::server_auth(),
        ]
        .into_iter()
        .any(|usage| {
            cert.verify_for_usage(
                algs,
                &self.roots.roots,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .is_ok()
        });
        chains && cert.verify_is_valid_for_subject_name(&name).is_ok()
    }
}

/// Client configuration for outbound streams: SNI = the remote domain, ALPN
/// `xmpp-server`, certificates checked and the verdict recorded, and our
/// domain's certificate presented for SASL EXTERNAL when we have one.
pub fn client_config(
    trust: &TrustStore,
    ours: Option<Arc<ServerTls>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    // With no roots at all every certificate is "unverified"; dialback still authenticates.
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        trust.roots.clone(),
        provider.clone(),
    )
    .build()
    .ok();
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(RecordingVerifier {
        inner,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: PathBuf::from("(protocol versions)"),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match ours {
        Some(ours) => builder.with_client_cert_resolver(Arc::new(OurCertificate(ours))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    Ok(Arc::new(config))
}

/// Presents the domain's current certificate as our client certificate.
#[derive(Debug)]
struct OurCertificate(Arc<ServerTls>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl ResolvesClientCert for OurCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Asks peers for a certificate and takes whatever they present: whether it
/// proves their domain is decided after the handshake (`TrustStore::valid_for`).
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks the certificate, logs the verdict, and lets the stream continue:
/// dialback authenticates peers whose certificate does not verify.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.inner {
            Some(inner) => inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("no trust roots".to_owned()),
        };
        if let Err(reason) = verdict {
            tracing::info!(peer = ?server_name, %reason, "peer certificate not verified; dialback will authenticate");
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_later(path: &Path, secs: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn certificates_reload_when_their_files_change() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = xmppfed_e2e::prosody::self_signed(dir.path(), "teams.test").unwrap();
        let tls = ServerTls::load(&cert, &key).unwrap();
        let first = tls.config();
        assert!(
            Arc::ptr_eq(&first, &tls.config()),
            "unchanged files are not read again"
        );

        // A renewed certificate (same paths) is picked up by the next connection.
        let renewed = tempfile::tempdir().unwrap();
        let (cert2, key2) =
            xmppfed_e2e::prosody::self_signed(renewed.path(), "teams.test").unwrap();
        std::fs::copy(&cert2, &cert).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        touch_later(&cert, 5);
        let second = tls.config();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the renewed certificate was not loaded"
        );

        // A broken file keeps the last good certificate in service.
        std::fs::write(&cert, "not a certificate").unwrap();
        touch_later(&cert, 10);
        assert!(Arc::ptr_eq(&second, &tls.config()));
    }

    #[test]
    fn missing_or_bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ServerTls::load(&dir.path().join("none.crt"), &dir.path().join("none.key"))
            .err()
            .unwrap();
        assert!(missing.to_string().contains("none.crt"), "{missing}");
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        std::fs::write(dir.path().join("empty.key"), "").unwrap();
        let empty = ServerTls::load(&dir.path().join("empty.crt"), &dir.path().join("empty.key"))
            .err()
            .unwrap();
        assert!(empty.to_string().contains("empty.crt"), "{empty}");
    }
}
