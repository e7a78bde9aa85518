//! The fake edge's mutual TLS: a client certificate chaining to the test
//! CA is required (rustls checks its client usage), a partner edge's
//! server certificate is checked for the name connected to (server usage),
//! and a partner's certificate must carry its FQDN exactly (no wildcard).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .context("edge certificate")?
            .collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key).context("edge key")?;
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_file_iter(ca)? {
            roots.add(root?)?;
        }
        let roots = Arc::new(roots);
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }

    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        self.connector.connect(name, tcp).await
    }
}

pub fn chain(certs: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    certs
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

fn valid_for(end: &webpki::EndEntityCert<'_>, name: &str) -> bool {
    ServerName::try_from(name.to_owned())
        .is_ok_and(|n| end.verify_is_valid_for_subject_name(&n).is_ok())
}

/// The partner's certificate must name `fqdn` exactly: one that would also
/// be valid for a made-up sibling name matched through a wildcard.
pub fn names_exactly(chain: &[CertificateDer<'static>], fqdn: &str) -> anyhow::Result<()> {
    let end = chain.first().context("no certificate")?;
    let end = webpki::EndEntityCert::try_from(end).context("not a certificate")?;
    if !valid_for(&end, fqdn) {
        bail!("the certificate does not name {fqdn}");
    }
    if let Some((_, parent)) = fqdn.split_once('.')
        && valid_for(&end, &format!("fake-edge-sibling-probe.{parent}"))
    {
        bail!("{fqdn} is proven only by a wildcard");
    }
    Ok(())
}
