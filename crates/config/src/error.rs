use std::fmt;
use std::path::{Path, PathBuf};

/// One field that failed validation, named by its dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field, or a value of the wrong type.
    #[error("{rendered}")]
    Parse {
        message: String,
        span: Option<std::ops::Range<usize>>,
        rendered: String,
    },
    #[error("invalid configuration:{}", list(errors))]
    Invalid { errors: Vec<FieldError> },
    #[error("in {path}: {inner}")]
    InFile {
        path: PathBuf,
        inner: Box<ConfigError>,
    },
    #[error("cannot read secret from {source_name}: {reason}")]
    Secret { source_name: String, reason: String },
    #[error("cannot render configuration: {0}")]
    Render(String),
}

impl ConfigError {
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            e @ ConfigError::Read { .. } => e,
            inner => ConfigError::InFile {
                path: path.to_owned(),
                inner: Box::new(inner),
            },
        }
    }

    /// The field errors, if this is a validation failure (in a file or not).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors } => errors,
            ConfigError::InFile { inner, .. } => inner.field_errors(),
            _ => &[],
        }
    }
}

fn list(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("\n  - {e}")).collect()
}
