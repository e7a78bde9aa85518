//! TLS to PostgreSQL over rustls with aws-lc-rs (the workspace's one TLS
//! stack): tokio-postgres' `MakeTlsConnect` for `sslmode = verify-full`.
//! The server's certificate is checked against `ca_file` or the system's
//! roots, and its name against the configured host. The session exports the
//! `tls-server-end-point` channel binding (RFC 5929), so the server's
//! SCRAM-SHA-256-PLUS binds the password exchange to this very TLS session
//! (a man in the middle holding some other valid certificate cannot relay it).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lc_rs::digest;
use rustls::ClientConfig;
use rustls::pki_types::{InvalidDnsNameError, ServerName};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::trust::RootsError;

/// Makes a TLS connector per connection (SNI and the name checked: the host).
#[derive(Clone)]
pub(super) struct RustlsConnect {
    config: Arc<ClientConfig>,
    /// Where the roots came from, for handshake errors.
    roots: Arc<str>,
}

impl RustlsConnect {
    /// Trusts the CA certificates of `ca_file` (PEM), or the system's roots.
    pub(super) fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let roots = crate::trust::load_roots(ca_file, "PostgreSQL").map_err(|e| {
            let (RootsError::Read(message) | RootsError::Invalid(message)) = e;
            match ca_file {
                Some(path) => format!("ca_file {}: {message}", path.display()),
                None => message,
            }
        })?;
        let described = match ca_file {
            Some(path) if roots.is_empty() => {
                return Err(format!("ca_file {}: no certificate in it", path.display()));
            }
            Some(path) => format!("the CA of ca_file {}", path.display()),
            None => "the system's trust roots (no ca_file)".to_owned(),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // PostgreSQL 17 requires it for direct TLS; earlier servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            roots: described.into(),
        })
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnector, InvalidDnsNameError> {
        Ok(RustlsConnector {
            config: self.config.clone(),
            roots: self.roots.clone(),
            name: ServerName::try_from(host.to_owned())?,
        })
    }
}

/// One TLS handshake, with the server's name.
pub(super) struct RustlsConnector {
    config: Arc<ClientConfig>,
    roots: Arc<str>,
    name: ServerName<'static>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let name = self.name.to_str().into_owned();
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
                // rustls says what is wrong with the certificate; say against what.
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("{e} (verify-full: {name} checked against {})", self.roots),
                    )
                })
        })
    }
}

/// A TLS session to the server.
pub(super) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session.peer_certificates().and_then(|chain| chain.first()) {
            Some(end_entity) => ChannelBinding::tls_server_end_point(server_end_point(end_entity)),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate's hash, by the hash of
/// its signature algorithm, SHA-256 in place of MD5 and SHA-1 (and for any
/// other algorithm: what PostgreSQL's server computes for the common
/// RSA/ECDSA SHA-256 certificates, e.g. CloudNativePG's and cert-manager's).
fn server_end_point(cert: &[u8]) -> Vec<u8> {
    let algorithm = match signature_algorithm(cert) {
        Some(SHA384_RSA | SHA384_ECDSA) => &digest::SHA384,
        Some(SHA512_RSA | SHA512_ECDSA) => &digest::SHA512,
        _ => &digest::SHA256,
    };
    digest::digest(algorithm, cert).as_ref().to_vec()
}

// DER contents of signature algorithm OIDs (RFC 4055, RFC 5758).
const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const SHA384_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const SHA512_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// The OID of `Certificate.signatureAlgorithm` (RFC 5280 §4.1: a SEQUENCE of
/// the TBS certificate, the AlgorithmIdentifier, the signature).
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der(cert, 0x30)?;
    let (_tbs, rest) = der(certificate, 0x30)?;
    let (algorithm, _) = der(rest, 0x30)?;
    let (oid, _) = der(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element of type `tag` at the start of `input`: its contents and
/// what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length, rest) = rest.split_first()?;
    let (length, rest) = if length < 0x80 {
        (usize::from(length), rest)
    } else {
        let octets = usize::from(length & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (bytes, rest) = rest.split_at(octets);
        let length = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outline: SEQUENCE { SEQUENCE (tbs), SEQUENCE { OID }, BIT STRING }.
    fn outline(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        let mut tbs = vec![0x30, 0x82, (tbs_len >> 8) as u8, tbs_len as u8];
        tbs.resize(4 + tbs_len, 0);
        let mut alg = vec![0x30, (oid.len() + 2) as u8, 0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let body = [tbs, alg, vec![0x03, 0x01, 0x00]].concat();
        let mut cert = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
        cert.extend(body);
        cert
    }

    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        let sha256_ecdsa = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        for (oid, len) in [
            (&sha256_ecdsa[..], 32),
            (SHA384_ECDSA, 48),
            (SHA384_RSA, 48),
            (SHA512_RSA, 64),
        ] {
            let cert = outline(oid, 300);
            assert_eq!(signature_algorithm(&cert), Some(oid));
            assert_eq!(server_end_point(&cert).len(), len);
        }
        // Not a certificate: SHA-256 of whatever it is, no panic.
        assert_eq!(server_end_point(&[0x30, 0x85, 1]).len(), 32);
        assert_eq!(signature_algorithm(&[]), None);
    }
}
