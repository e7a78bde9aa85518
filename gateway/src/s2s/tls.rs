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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("invalid certificate or key in {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The inbound side's certificate, reloaded when its files change.
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Mutex<(Option<SystemTime>, Arc<ServerConfig>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_server_config(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, TlsError> {
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
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid {
            path: cert_file.to_owned(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    Ok(config)
}

impl ServerTls {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let config = load_server_config(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: Mutex::new((newest(cert_file, key_file), Arc::new(config))),
        })
    }

    /// The configuration for a new connection; re-reads the files if they changed.
    /// A file that fails to load keeps the previous certificate in service.
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = newest(&self.cert_file, &self.key_file);
        if stamp != current.0 {
            match load_server_config(&self.cert_file, &self.key_file) {
                Ok(config) => {
                    tracing::info!(cert = %self.cert_file.display(), "s2s TLS certificate reloaded");
                    *current = (stamp, Arc::new(config));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "s2s TLS certificate changed but cannot be loaded; keeping the previous one");
                    current.0 = stamp;
                }
            }
        }
        current.1.clone()
    }
}

fn newest(a: &Path, b: &Path) -> Option<SystemTime> {
    modified(a).max(modified(b))
}

/// Client configuration for outbound streams: SNI = the remote domain,
/// ALPN `xmpp-server`, certificates checked and the verdict recorded.
pub fn client_config(trust_roots: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = trust_roots {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| TlsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })? {
            let cert = cert.map_err(|e| TlsError::Read {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| TlsError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, "system trust roots loaded for s2s");
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    // With no roots at all every certificate is "unverified"; dialback still authenticates.
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .ok();
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(RecordingVerifier {
        inner,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: PathBuf::from("(protocol versions)"),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    Ok(Arc::new(config))
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
