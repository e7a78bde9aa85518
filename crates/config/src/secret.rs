//! Secrets are named in the configuration by where they live (a file or an
//! environment variable), never written into it, and never printed.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Where a secret is read from: `{ file = "/run/secrets/x" }` or `{ env = "VAR" }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

/// A resolved secret. Its `Debug` output is redacted.
#[derive(Debug, Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret itself: call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl SecretRef {
    /// Reads the secret. A file's trailing newline is dropped (Kubernetes
    /// Secrets and `echo` both add one); an empty secret is an error.
    pub fn resolve(&self) -> Result<SecretValue, ConfigError> {
        let value = match self {
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Secret {
                    source_name: format!("file {}", path.display()),
                    reason: e.to_string(),
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            SecretRef::Env(name) => std::env::var(name).map_err(|e| ConfigError::Secret {
                source_name: format!("environment variable {name}"),
                reason: e.to_string(),
            })?,
        };
        if value.is_empty() {
            return Err(ConfigError::Secret {
                source_name: self.describe(),
                reason: "it is empty".to_owned(),
            });
        }
        Ok(SecretValue::new(value))
    }

    /// Where the secret lives, for messages (never its value).
    pub fn describe(&self) -> String {
        match self {
            SecretRef::File(path) => format!("file {}", path.display()),
            SecretRef::Env(name) => format!("environment variable {name}"),
        }
    }
}
