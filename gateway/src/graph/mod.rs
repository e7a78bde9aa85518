//! Microsoft Graph v1.0: tokens, typed calls, errors, retries and the
//! per-category request budgets.

pub mod api;
pub mod auth;
pub mod client;
pub mod directory;
pub mod error;
pub mod limits;
mod reply;
pub mod sign_in;
pub mod subscriptions;
pub mod webhook;

pub use auth::{Identity, RefreshTokenVault, Tokens, UserCredential};
pub use client::{Budget, GraphClient, RetryPolicy};
pub use error::GraphError;
pub use limits::Budgets;
pub use sign_in::{SignInMonitor, SignInRefusal};

/// The Graph client the configuration describes: the app's secret or
/// certificate, the authority and Graph URLs, its request budgets.
pub fn from_config(
    config: &xmppfed_config::GraphConfig,
    budget: Budgets,
) -> Result<GraphClient, GraphError> {
    let http = reqwest::Client::builder()
        .user_agent(concat!("xmppfed-gateway/", env!("CARGO_PKG_VERSION")))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| GraphError::Config(e.to_string()))?;
    let tokens = match (&config.client_secret, &config.client_certificate) {
        (Some(secret), _) => {
            let secret = secret
                .resolve()
                .map_err(|e| GraphError::Config(format!("graph.client_secret: {e}")))?;
            Tokens::new(
                http.clone(),
                &config.authority_url,
                &config.tenant_id,
                &config.client_id,
                secrecy::SecretString::from(secret.expose().to_owned()),
            )
        }
        (None, Some(certificate)) => {
            let (der, key) = auth::load_certificate(&certificate.cert_file, &certificate.key_file)?;
            Tokens::with_certificate(
                http.clone(),
                &config.authority_url,
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
    Ok(GraphClient::new(
        http,
        &config.graph_url,
        tokens,
        budget,
        RetryPolicy::default(),
    ))
}
