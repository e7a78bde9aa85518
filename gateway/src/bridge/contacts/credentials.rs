//! Shadow-account passwords: generated here, kept only encrypted (AES-256-GCM
//! under a key derived from `shadow_accounts.credential_key`), never logged.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

use futures::future::BoxFuture;
use xmpp_parsers::sha2::{Digest, Sha256};

use crate::graph::RefreshTokenVault;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot encrypt a credential")]
    Encrypt,
    #[error(
        "a stored credential does not decrypt with this key (wrong shadow_accounts.credential_key?)"
    )]
    Decrypt,
}

/// Format version of what [`CredentialCipher::seal`] writes.
const VERSION: u8 = 1;

pub struct CredentialCipher {
    key: LessSafeKey,
}

impl std::fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCipher(..)")
    }
}

impl CredentialCipher {
    /// The key is SHA-256 of the configured secret.
    pub fn new(secret: &str) -> Self {
        let digest = Sha256::digest(secret.as_bytes());
        let key =
            UnboundKey::new(&AES_256_GCM, &digest).unwrap_or_else(|_| unreachable!("32-byte key"));
        Self {
            key: LessSafeKey::new(key),
        }
    }

    /// `version ‖ nonce ‖ ciphertext+tag`; the account's JID is bound as
    /// associated data, so a credential cannot be moved to another account.
    pub fn seal(&self, jid: &str, password: &SecretString) -> Result<Vec<u8>, CredentialError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::random::fill(&mut nonce);
        let mut data = password.expose_secret().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(jid.as_bytes()),
                &mut data,
            )
            .map_err(|_| CredentialError::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    pub fn open(&self, jid: &str, sealed: &[u8]) -> Result<SecretString, CredentialError> {
        let [VERSION, rest @ ..] = sealed else {
            return Err(CredentialError::Decrypt);
        };
        if rest.len() < NONCE_LEN {
            return Err(CredentialError::Decrypt);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CredentialError::Decrypt)?;
        let mut data = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(jid.as_bytes()), &mut data)
            .map_err(|_| CredentialError::Decrypt)?;
        String::from_utf8(plain.to_vec())
            .map(SecretString::from)
            .map_err(|_| CredentialError::Decrypt)
    }
}

/// Shadow accounts' refresh tokens in the store, sealed like their passwords
/// (bound to the UPN), so that a restart or a new leader goes on with them
/// instead of signing every account in again with its password.
pub struct SealedRefreshTokens {
    store: Arc<Store>,
    cipher: CredentialCipher,
}

impl SealedRefreshTokens {
    pub fn new(store: Arc<Store>, cipher: CredentialCipher) -> Self {
        Self { store, cipher }
    }

    fn bound(upn: &str) -> String {
        format!("refresh-token:{}", upn.to_lowercase())
    }
}

impl RefreshTokenVault for SealedRefreshTokens {
    fn load<'a>(&'a self, upn: &'a str) -> BoxFuture<'a, Option<SecretString>> {
        Box::pin(async move {
            let sealed = match self.store.refresh_token(upn).await {
                Ok(sealed) => sealed?,
                Err(e) => {
                    tracing::warn!(%upn, error = %e, "cannot read a refresh token");
                    return None;
                }
            };
            match self.cipher.open(&Self::bound(upn), &sealed) {
                Ok(token) => Some(token),
                Err(e) => {
                    tracing::warn!(%upn, error = %e, "a stored refresh token does not open");
                    None
                }
            }
        })
    }

    fn save<'a>(&'a self, upn: &'a str, token: Option<&'a SecretString>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let sealed = match token.map(|t| self.cipher.seal(&Self::bound(upn), t)) {
                Some(Ok(sealed)) => Some(sealed),
                Some(Err(e)) => {
                    tracing::warn!(%upn, error = %e, "cannot seal a refresh token");
                    None
                }
                None => None,
            };
            if let Err(e) = self.store.set_refresh_token(upn, sealed).await {
                // Kept in memory for this process; the next restart signs in once.
                tracing::warn!(%upn, error = %e, "cannot store a refresh token");
            }
        })
    }
}

/// A password Entra accepts (upper, lower, digit, symbol; 32 characters).
pub fn generate_password() -> SecretString {
    const SETS: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"!#%+-.:=?@^_~",
    ];
    let mut random = [0u8; 32];
    crate::random::fill(&mut random);
    let password: String = random
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // The first four characters cover every class; the rest are drawn from all.
            let set = if i < 4 {
                SETS[i]
            } else {
                SETS[usize::from(*r) % 4]
            };
            char::from(set[usize::from(*r) % set.len()])
        })
        .collect();
    SecretString::from(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_only_with_their_key_and_account() {
        let cipher = CredentialCipher::new("key material");
        let password = generate_password();
        let sealed = cipher.seal("bob@xmpp.test", &password).unwrap();
        assert!(
            !sealed.windows(8).any(|w| password
                .expose_secret()
                .as_bytes()
                .windows(8)
                .any(|p| p == w)),
            "no clear text"
        );
        assert_eq!(
            cipher
                .open("bob@xmpp.test", &sealed)
                .unwrap()
                .expose_secret(),
            password.expose_secret()
        );
        assert!(
            cipher.open("eve@xmpp.test", &sealed).is_err(),
            "bound to the account"
        );
        assert!(
            CredentialCipher::new("other key")
                .open("bob@xmpp.test", &sealed)
                .is_err()
        );
        assert!(cipher.open("bob@xmpp.test", &sealed[..10]).is_err());
        assert_ne!(
            cipher.seal("bob@xmpp.test", &password).unwrap(),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn generated_passwords_meet_the_complexity_rules() {
        let p = generate_password();
        let p = p.expose_secret();
        assert_eq!(p.len(), 32);
        assert!(
            p.chars().any(|c| c.is_ascii_uppercase()) && p.chars().any(|c| c.is_ascii_lowercase())
        );
        assert!(
            p.chars().any(|c| c.is_ascii_digit()) && p.chars().any(|c| !c.is_ascii_alphanumeric())
        );
        assert_ne!(p, generate_password().expose_secret());
    }
}
