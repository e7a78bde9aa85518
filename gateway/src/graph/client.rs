//! Sending Graph requests: tokens, the per-category request budgets, retries of
//! 429/503/504 after `Retry-After` (jittered, bounded), one tracing span per
//! call carrying Graph's `request-id`.

use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::auth::{Identity, Tokens, UserCredential};
use super::error::GraphError;
use super::limits::{Budgets, classify};
use super::reply::read_body;

/// How hard to try before giving up on a call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Total time one call may spend waiting between attempts.
    pub max_wait: Duration,
    /// First backoff when Graph gives no `Retry-After`; doubles per attempt.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_wait: Duration::from_secs(120),
            backoff: Duration::from_millis(500),
        }
    }
}

/// What one request came to.
enum Exchange {
    Answered(Answer),
    /// No answer (connection refused, reset, timed out): tried again.
    Unreachable(GraphError),
}

/// One answer of Graph, read whole.
struct Answer {
    status: u16,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    content_type: Option<String>,
    body: bytes::Bytes,
}

/// A raw answer: status, `request-id`, body.
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
}

pub struct GraphClient {
    http: reqwest::Client,
    base: String,
    tokens: Tokens,
    budgets: Budgets,
    retry: RetryPolicy,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// What to send.
pub enum Body<'a> {
    None,
    Json(serde_json::Value),
    Bytes {
        content_type: &'a str,
        bytes: &'a [u8],
    },
}

impl Body<'_> {
    /// A JSON body from a typed value, or none.
    fn json(body: Option<&impl Serialize>) -> Result<Self, GraphError> {
        Ok(match body {
            Some(b) => {
                Body::Json(serde_json::to_value(b).map_err(|e| GraphError::Decode(e.to_string()))?)
            }
            None => Body::None,
        })
    }
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(crate::random::unit())
}

impl GraphClient {
    pub fn new(
        http: reqwest::Client,
        graph_url: &str,
        tokens: Tokens,
        budgets: Budgets,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            base: graph_url.trim_end_matches('/').to_owned(),
            tokens,
            budgets,
            retry,
        }
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The per-category budgets and their metrics.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Shadow accounts' refresh tokens kept in `vault`; refusals reported to `monitor`.
    pub fn with_sign_ins(
        mut self,
        vault: std::sync::Arc<dyn super::RefreshTokenVault>,
        monitor: std::sync::Arc<super::SignInMonitor>,
    ) -> Self {
        self.tokens = self.tokens.with_vault(vault).with_monitor(monitor);
        self
    }

    /// Obtains the app's token (from the cache when it has one): proves the
    /// app's credentials before the gateway calls itself ready.
    pub async fn sign_in_app(&self) -> Result<(), GraphError> {
        self.tokens.get(&Identity::App, None).await.map(|_| ())
    }

    /// Sends one call, retrying what Graph says to retry.
    pub async fn send(
        &self,
        identity: &Identity,
        credential: Option<&UserCredential>,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<Reply, GraphError> {
        let mut waited = Duration::ZERO;
        let mut refreshed_token = false;
        let mut attempt = 0;
        let route = classify(&method, path);
        loop {
            attempt += 1;
            let slot = self.budgets.acquire(&route).await;
            let token = self.tokens.get(identity, credential).await?;
            let exchanged = self.exchange(&token, &method, path, &body, attempt).await;
            self.budgets.done(&route, slot).await;
            let (error, retry_after) = match exchanged? {
                Exchange::Answered(answer) if (200..300).contains(&answer.status) => {
                    return Ok(Reply {
                        status: answer.status,
                        content_type: answer.content_type,
                        body: answer.body,
                    });
                }
                Exchange::Answered(answer) => {
                    let error = GraphError::from_response(
                        answer.status,
                        answer.request_id.as_deref(),
                        answer.retry_after,
                        &answer.body,
                    );
                    if answer.status == 401 && !refreshed_token {
                        // A token revoked before its time: get a new one, once.
                        refreshed_token = true;
                        self.tokens.invalidate(identity).await;
                        continue;
                    }
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    if answer.status == 429 {
                        let until =
                            Instant::now() + answer.retry_after.unwrap_or(self.retry.backoff);
                        self.budgets.throttled(&route, until).await;
                    }
                    (error, answer.retry_after)
                }
                Exchange::Unreachable(error) => (error, None),
            };
            let delay = retry_after.unwrap_or(self.retry.backoff * 2u32.pow(attempt.min(10) - 1))
                + jitter(self.retry.backoff);
            if attempt >= self.retry.max_attempts || waited + delay > self.retry.max_wait {
                tracing::warn!(%error, attempt, "Graph call given up");
                return Err(GraphError::Exhausted {
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            tracing::info!(%error, ?delay, attempt, "Graph call retried");
            waited += delay;
            tokio::time::sleep(delay).await;
        }
    }

    /// One request and its whole answer, in a span that records Graph's
    /// status and request id.
    async fn exchange(
        &self,
        token: &SecretString,
        method: &Method,
        path: &str,
        body: &Body<'_>,
        attempt: u32,
    ) -> Result<Exchange, GraphError> {
        let request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token.expose_secret());
        let request = match body {
            Body::None => request,
            Body::Json(value) => request.json(value),
            Body::Bytes {
                content_type,
                bytes,
            } => request
                .header(reqwest::header::CONTENT_TYPE, *content_type)
                .body(bytes.to_vec()),
        };
        let span = tracing::info_span!(
            "graph.request",
            http.method = %method,
            graph.path = %path,
            http.status_code = tracing::field::Empty,
            graph.request_id = tracing::field::Empty,
            attempt,
        );
        let response = match tracing::Instrument::instrument(request.send(), span.clone()).await {
            Ok(response) => response,
            Err(e) => return Ok(Exchange::Unreachable(GraphError::transport(e))),
        };
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = response.status().as_u16();
        let request_id = header(reqwest::header::HeaderName::from_static("request-id"));
        span.record("http.status_code", status);
        if let Some(id) = &request_id {
            span.record("graph.request_id", id.as_str());
        }
        let retry_after = header(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let body = read_body(response, path).await?;
        Ok(Exchange::Answered(Answer {
            status,
            request_id,
            retry_after,
            content_type,
            body,
        }))
    }

    /// A JSON call with a typed answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        identity: &Identity,
        credential: Option<&UserCredential>,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, GraphError> {
        let body = Body::json(body)?;
        let reply = self.send(identity, credential, method, path, body).await?;
        serde_json::from_slice(&reply.body).map_err(|e| GraphError::Decode(format!("{path}: {e}")))
    }

    /// A call whose answer has no body we need (204, or 200 with nothing useful).
    pub async fn no_content(
        &self,
        identity: &Identity,
        credential: Option<&UserCredential>,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(), GraphError> {
        let body = Body::json(body)?;
        self.send(identity, credential, method, path, body)
            .await
            .map(|_| ())
    }
}
