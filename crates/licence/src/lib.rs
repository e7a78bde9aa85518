//! xmppfed licences: a JSON document signed with Ed25519.
//!
//! Wire form (one line, fits in a Secret):
//! `xmppfed-licence-v1.<base64url(JSON)>.<base64url(signature)>`, where the
//! signature covers the ASCII text before the second dot. The operator assigns
//! one node seat per gateway replica; the gateway verifies its seat offline.

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jiff::SignedDuration;
pub use jiff::Timestamp;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "xmppfed-licence-v1";
/// A licence warns this long before it expires.
pub const WARNING_PERIOD: SignedDuration = SignedDuration::from_hours(30 * 24);

/// What a licence grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    /// Unique id, chosen by the issuer.
    pub id: String,
    pub licensee: String,
    /// Gateway nodes (replicas) it covers.
    pub nodes: u32,
    pub issued: Timestamp,
    pub expires: Timestamp,
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenceError {
    #[error("not an xmppfed licence (expected `{PREFIX}.<payload>.<signature>`)")]
    Format,
    #[error("the licence's {0} is not valid base64url")]
    Encoding(&'static str),
    #[error(
        "the licence's signature does not match the public key: it was altered or issued by someone else"
    )]
    Signature,
    #[error("the licence's content is malformed: {0}")]
    Content(String),
    #[error("invalid key: {0}")]
    Key(String),
}

/// A new signing key: (PKCS#8 private key, 32-byte public key), both base64.
pub fn generate_key() -> Result<(String, String), LicenceError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| LicenceError::Key("cannot generate a key".into()))?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| LicenceError::Key(e.to_string()))?;
    Ok((
        STANDARD.encode(pkcs8.as_ref()),
        STANDARD.encode(pair.public_key().as_ref()),
    ))
}

/// Signs `licence` with a base64 PKCS#8 Ed25519 private key.
pub fn issue(licence: &Licence, private_key_b64: &str) -> Result<String, LicenceError> {
    if licence.nodes == 0 || licence.expires <= licence.issued || licence.id.trim().is_empty() {
        return Err(LicenceError::Content(
            "a licence needs an id, at least one node, and an expiry after its issue date".into(),
        ));
    }
    let der = STANDARD
        .decode(private_key_b64.trim())
        .map_err(|_| LicenceError::Key("the private key is not base64".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| LicenceError::Key(e.to_string()))?;
    let json = serde_json::to_vec(licence).map_err(|e| LicenceError::Content(e.to_string()))?;
    let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
    let signature = pair.sign(signed.as_bytes());
    Ok(format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

/// Checks the signature with a base64 32-byte Ed25519 public key and returns the licence.
/// Expiry is not judged here: see [`Licence::state`].
pub fn verify(text: &str, public_key_b64: &str) -> Result<Licence, LicenceError> {
    let public_key = STANDARD
        .decode(public_key_b64.trim())
        .map_err(|_| LicenceError::Key("the public key is not base64".into()))?;
    let text = text.trim();
    let (signed, signature) = text.rsplit_once('.').ok_or(LicenceError::Format)?;
    let payload = signed
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(LicenceError::Format)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| LicenceError::Encoding("signature"))?;
    UnparsedPublicKey::new(&ED25519, &public_key)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| LicenceError::Signature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LicenceError::Encoding("payload"))?;
    serde_json::from_slice(&json).map_err(|e| LicenceError::Content(e.to_string()))
}

/// Where a licence stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicenceState {
    Valid,
    /// Within the warning period before expiry: still serving.
    ExpiringSoon,
    /// Expired: no new federation.
    Expired,
}

impl Licence {
    pub fn state(&self, now: Timestamp) -> LicenceState {
        if now >= self.expires {
            LicenceState::Expired
        } else if now >= self.expires - WARNING_PERIOD {
            LicenceState::ExpiringSoon
        } else {
            LicenceState::Valid
        }
    }
}

/// Node seats handed to pods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// Pod name → the licence whose seat it holds.
    pub seats: BTreeMap<String, Licence>,
    /// Pods that asked for a seat and got none.
    pub unlicensed: Vec<String>,
}

/// Gives each pod one seat from the licences that have not expired, longest-lived
/// first, pods in the order given (ordinal order for a StatefulSet).
pub fn assign(licences: &[Licence], pods: &[String], now: Timestamp) -> Assignment {
    let mut usable: Vec<&Licence> = licences
        .iter()
        .filter(|l| l.state(now) != LicenceState::Expired)
        .collect();
    usable.sort_by(|a, b| b.expires.cmp(&a.expires).then_with(|| a.id.cmp(&b.id)));
    let mut seats = usable
        .iter()
        .flat_map(|l| std::iter::repeat_n(*l, l.nodes as usize));
    let mut assignment = Assignment::default();
    for pod in pods {
        match seats.next() {
            Some(l) => {
                assignment.seats.insert(pod.clone(), l.clone());
            }
            None => assignment.unlicensed.push(pod.clone()),
        }
    }
    assignment
}

/// A licence file's content: one signed licence per line, blank lines aside.
#[derive(Debug, Clone, Default)]
pub struct LicenceFile {
    /// The licences that verified, in file order.
    pub licences: Vec<Licence>,
    /// Each line that did not verify, by its number among the licences ("licence 2: …").
    pub problems: Vec<String>,
}

/// Reads and verifies every licence of a licence file (the gateway's mounted
/// file and the operator's Secret value are the same text).
pub fn read_file(text: &str, public_key_b64: &str) -> LicenceFile {
    let mut file = LicenceFile::default();
    for (i, line) in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        match verify(line, public_key_b64) {
            Ok(l) => file.licences.push(l),
            Err(e) => file.problems.push(format!("licence {}: {e}", i + 1)),
        }
    }
    file
}

/// The pods of a gateway's first `count` replicas, `<gateway>-<ordinal>`, in
/// the order seats go to them.
pub fn replicas(gateway: &str, count: u32) -> Vec<String> {
    (0..count).map(|i| format!("{gateway}-{i}")).collect()
}

#[cfg(test)]
mod tests;
