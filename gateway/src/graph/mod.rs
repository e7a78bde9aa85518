//! Microsoft Graph v1.0: tokens, typed calls, errors, retries and the
//! per-category request budgets.

pub mod api;
pub mod auth;
mod budget;
pub mod client;
pub mod directory;
pub mod error;
pub mod limits;
mod reply;
pub mod sign_in;
pub mod subscriptions;
pub mod webhook;

pub use auth::{Identity, RefreshTokenVault, Tokens, UserCredential};
pub use budget::{Budget, Slot};
pub use client::{GraphClient, RetryPolicy};
pub use error::GraphError;
pub use limits::Budgets;
pub use sign_in::{SignInMonitor, SignInRefusal};

/// The Graph client the configuration describes: the app's secret or
/// certificate, the authority and Graph URLs, its request budgets.
pub fn from_config(
    config: &xmppfed_config::GraphConfig,
    budget: Budgets,
) -> Result<GraphClient, GraphError> {
    let mut http = reqwest::Client::builder()
        .user_agent(concat!("xmppfed-gateway/", env!("CARGO_PKG_VERSION")))
        .timeout(std::time::Duration::from_secs(30));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            GraphError::Config(format!(
                "graph.ca_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| GraphError::Config(format!("graph.ca_file {}: {e}", path.display())))?;
        if roots.is_empty() {
            return Err(GraphError::Config(format!(
                "graph.ca_file: {} holds no PEM certificate",
                path.display()
            )));
        }
        http = http.tls_certs_merge(roots);
    }
    let http = http
        .build()
        .map_err(|e| GraphError::Config(e.to_string()))?;
    let tokens = match (&config.client_secret, &config.client_certificate) {
        (Some(secret), _) => {
            let secret = secret
                .resolve()
                .map_err(|e| GraphError::Config(format!("graph.client_secret: {e}")))?;
            Tokens::new(
                http.clone(),
                config.authority(),
                &config.tenant_id,
                &config.client_id,
                secrecy::SecretString::from(secret.expose().to_owned()),
            )
        }
        (None, Some(certificate)) => {
            let (der, key) = auth::load_certificate(&certificate.cert_file, &certificate.key_file)?;
            Tokens::with_certificate(
                http.clone(),
                config.authority(),
                &config.tenant_id,
                &config.client_id,
                &der,
                key,
            )?
        }
        (None, None) => {
            return Err(GraphError::Config(
                "graph: set client_secret or client_certificate".into(),
            ));
        }
    };
    let tokens = tokens.with_resource(config.cloud.graph_resource());
    Ok(GraphClient::new(
        http,
        config.graph(),
        tokens,
        budget,
        RetryPolicy::default(),
    ))
}
