//! Graph's errors, typed: the body `{"error": {"code", "message", "innerError"}}`
//! and the identity platform's `{"error", "error_description"}`.

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error.
    #[error("Graph {status} {code}: {message} (request-id {request_id})")]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: String,
        /// From `Retry-After`, on 429, 503 and 504.
        retry_after: Option<Duration>,
    },
    /// The token endpoint refused us, with a code the gateway has no fix for.
    #[error("token request refused: {error}: {description}")]
    Token { error: String, description: String },
    /// The token endpoint refused a sign-in for a reason the tenant's
    /// administrator can fix; the message says how.
    #[error("the Microsoft identity platform refuses the sign-in of {who}: {refusal} (AADSTS{code}); fix: {}", refusal.fix())]
    SignInRefused {
        who: String,
        refusal: super::sign_in::SignInRefusal,
        code: u32,
        description: String,
    },
    /// Retries used up (429/503/504 storm) or the request budget would wait too long.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        attempts: u32,
        last: Box<GraphError>,
    },
    #[error("cannot reach Graph: {0}")]
    Transport(String),
    #[error("unexpected response from Graph: {0}")]
    Decode(String),
    #[error("{0}")]
    Config(String),
}

impl GraphError {
    /// Parses an error response.
    pub fn from_response(
        status: u16,
        request_id: Option<&str>,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> Self {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let error = &value["error"];
        GraphError::Api {
            status,
            code: error["code"].as_str().unwrap_or("unknown").to_owned(),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
            request_id: request_id
                .map(str::to_owned)
                .or_else(|| {
                    error["innerError"]["request-id"]
                        .as_str()
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
            retry_after,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Api { status, .. } => Some(*status),
            GraphError::Exhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            GraphError::Api { code, .. } => Some(code),
            GraphError::Exhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// 429, 503 and 504 are worth another try, after `Retry-After`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GraphError::Api {
                status: 429 | 503 | 504,
                ..
            }
        ) || matches!(self, GraphError::Transport(_))
    }

    /// Worth trying again later, even after the client's own retries gave
    /// up: throttling, server trouble, or no answer at all.
    pub fn is_transient(&self) -> bool {
        match self {
            GraphError::Exhausted { last, .. } => last.is_transient(),
            GraphError::Transport(_) => true,
            _ => matches!(self.status(), Some(429 | 500..=599)),
        }
    }

    /// The sign-in refusal behind this error, if any.
    pub fn sign_in_refusal(&self) -> Option<super::sign_in::SignInRefusal> {
        match self {
            GraphError::SignInRefused { refusal, .. } => Some(*refusal),
            GraphError::Exhausted { last, .. } => last.sign_in_refusal(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

impl GraphError {
    /// A request that got no answer, with what went wrong underneath
    /// (reqwest says only "error sending request"; its sources say
    /// "dns error", "connection refused", "invalid peer certificate"…).
    /// URLs are left out: they may carry tokens in their query.
    pub fn transport(e: reqwest::Error) -> Self {
        GraphError::Transport(crate::said_once(&e.without_url()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_error_bodies_parse() {
        let body = br#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation.","innerError":{"date":"2026-11-25T12:00:00","request-id":"abc","client-request-id":"def"}}}"#;
        let e = GraphError::from_response(403, None, None, body);
        assert_eq!(e.code(), Some("Authorization_RequestDenied"));
        assert!(e.to_string().contains("request-id abc"));
        assert!(!e.is_retryable());
        let throttled =
            GraphError::from_response(429, Some("r"), Some(Duration::from_secs(3)), b"not json");
        assert!(throttled.is_retryable());
        assert_eq!(throttled.code(), Some("unknown"));
    }
}
