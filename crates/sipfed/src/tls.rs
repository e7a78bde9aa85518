//! Mutual TLS as federation edges speak it. Microsoft: "All SIP
//! communications between servers occur over MTLS" and "in federated
//! scenarios, the issuing CA must be trusted by both federated partners"
//! (Skype for Business Server, "TLS and MTLS"); the edge's certificate names
//! its FQDN and `sip.<domain>` of each SIP domain in the SAN ("Edge Server
//! environmental requirements", certificate table). We require of a peer's
//! certificate: a chain to our roots, valid for both server and client
//! authentication (it is used in both directions), and a name it was issued
//! for exactly: a wildcard certificate does not prove a SIP domain.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Why a peer's certificate does not prove it is who it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefused {
    #[error("no certificate")]
    NoCertificate,
    #[error("the certificate does not chain to a trusted root for {0} authentication")]
    Untrusted(&'static str),
    #[error("the certificate is not issued for {0}")]
    NotFor(String),
    #[error("the certificate is a wildcard for {0}; an exact name is required")]
    Wildcard(String),
}

/// Our certificate chain, key and the roots peers must chain to.
pub struct Credentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
}

impl Credentials {
    /// Our certificate and key from PEM files, and `roots`.
    pub fn new(cert: &Path, key: &Path, roots: RootCertStore) -> Result<Self, TlsError> {
        let read = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| read(cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read(cert, e))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, e))?;
        Ok(Self {
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    /// As [`Credentials::new`], with the roots of a PEM file.
    pub fn from_pem(cert: &Path, key: &Path, roots: &Path) -> Result<Self, TlsError> {
        let read = |e: rustls::pki_types::pem::Error| TlsError::Read {
            path: roots.display().to_string(),
            message: e.to_string(),
        };
        let mut store = RootCertStore::empty();
        for root in CertificateDer::pem_file_iter(roots).map_err(read)? {
            store
                .add(root.map_err(read)?)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        }
        Self::new(cert, key, store)
    }

    /// Accepts connections only from peers with a certificate from our roots.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder(self.roots.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// Connects presenting our certificate; the server's is checked by rustls
    /// for the name connected to, and by [`check_peer`] for our rules.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// Whether `chain` (end entity first) proves `name` under our rules.
pub fn check_peer(
    chain: &[CertificateDer<'_>],
    name: &str,
    roots: &RootCertStore,
) -> Result<(), PeerRefused> {
    let (end, intermediates) = chain.split_first().ok_or(PeerRefused::NoCertificate)?;
    let cert = webpki::EndEntityCert::try_from(end).map_err(|_| PeerRefused::NoCertificate)?;
    let algs = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    let now = UnixTime::now();
    for (usage, label) in [
        (webpki::KeyUsage::server_auth(), "server"),
        (webpki::KeyUsage::client_auth(), "client"),
    ] {
        cert.verify_for_usage(algs, &roots.roots, intermediates, now, usage, None, None)
            .map_err(|_| PeerRefused::Untrusted(label))?;
    }
    let valid_for = |n: &str| {
        ServerName::try_from(n.to_owned())
            .is_ok_and(|server| cert.verify_is_valid_for_subject_name(&server).is_ok())
    };
    if !valid_for(name) {
        return Err(PeerRefused::NotFor(name.to_owned()));
    }
    // webpki accepts a wildcard for one label: a name no one would issue
    // beside `name` tells whether that is how it matched.
    if let Some((_, parent)) = name.split_once('.')
        && valid_for(&format!("xmppfed-wildcard-probe.{parent}"))
    {
        return Err(PeerRefused::Wildcard(name.to_owned()));
    }
    Ok(())
}

/// The peer's certificate chain, kept past the handshake's borrow.
pub(crate) fn owned(chain: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    chain
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmppfed_e2e::prosody::TestCa;

    fn chain_of(
        ca: &TestCa,
        name: &str,
        san: &str,
    ) -> (Vec<CertificateDer<'static>>, Arc<RootCertStore>) {
        let (cert, key) = ca.issue_for(name, san).unwrap();
        let c = Credentials::from_pem(&cert, &key, &ca.cert).unwrap();
        (c.chain, c.roots)
    }

    #[test]
    fn a_peer_proves_exact_names_of_its_certificate_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path()).unwrap();
        let (chain, roots) = chain_of(
            &ca,
            "edge.contoso.test",
            "DNS:edge.contoso.test,DNS:sip.contoso.test",
        );
        assert_eq!(check_peer(&chain, "edge.contoso.test", &roots), Ok(()));
        assert_eq!(check_peer(&chain, "sip.contoso.test", &roots), Ok(()));
        assert_eq!(
            check_peer(&chain, "sip.fabrikam.test", &roots),
            Err(PeerRefused::NotFor("sip.fabrikam.test".into()))
        );
        assert_eq!(
            check_peer(&[], "edge.contoso.test", &roots),
            Err(PeerRefused::NoCertificate)
        );

        let (wild, roots) = chain_of(&ca, "wild.contoso.test", "DNS:*.contoso.test");
        assert_eq!(
            check_peer(&wild, "sip.contoso.test", &roots),
            Err(PeerRefused::Wildcard("sip.contoso.test".into()))
        );

        // Another CA's certificate for the right name proves nothing.
        let other_dir = tempfile::tempdir().unwrap();
        let other = TestCa::new(other_dir.path()).unwrap();
        let (foreign, _) = chain_of(&other, "edge.contoso.test", "DNS:edge.contoso.test");
        assert_eq!(
            check_peer(&foreign, "edge.contoso.test", &roots),
            Err(PeerRefused::Untrusted("server"))
        );
    }
}
