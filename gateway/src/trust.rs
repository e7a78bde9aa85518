//! Trust roots: the CA certificates of a PEM file, or the system's roots.
//! Shared by the s2s streams (`s2s.trusted_ca_file`) and the PostgreSQL
//! store (`store.ca_file`); each names its own file in its errors.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a PEM file gave no roots (the message, without the path).
#[derive(Debug)]
pub enum RootsError {
    /// The file cannot be read, or is not PEM.
    Read(String),
    /// A certificate in it is not one rustls accepts as a root.
    Invalid(String),
}

/// Every certificate of `pem`, or with `None` the system's roots (`used_by`
/// names who asked, in the debug log).
pub fn load_roots(pem: Option<&Path>, used_by: &str) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    match pem {
        Some(path) => {
            let read = |e: rustls::pki_types::pem::Error| RootsError::Read(e.to_string());
            for cert in CertificateDer::pem_file_iter(path).map_err(read)? {
                roots
                    .add(cert.map_err(read)?)
                    .map_err(|e| RootsError::Invalid(e.to_string()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, used_by, "system trust roots loaded");
        }
    }
    Ok(roots)
}
