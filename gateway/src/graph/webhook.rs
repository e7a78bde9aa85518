//! The HTTP endpoint Graph posts change notifications to.
//!
//! - Validation: `POST …?validationToken=X` is answered at once with `X`,
//!   `text/plain`, 200 (Graph allows 10 s).
//! - Notifications: each item's `clientState` is compared with ours in
//!   constant time; matching items are queued for processing and the batch is
//!   answered with 202 straight away (Graph allows 3 s), whatever processing
//!   takes. Items with another `clientState` are dropped and counted.
//! - Lifecycle notifications (`reauthorizationRequired`, `subscriptionRemoved`,
//!   `missed`) arrive on their own path and are queued the same way.
//! - Anyone can reach this endpoint, so what it reads is bounded: a body of
//!   at most [`MAX_BODY_BYTES`] (413 beyond), JSON nested at most 128 deep
//!   (serde_json's recursion limit; 400 beyond).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::store::Store;

/// The paths under the public webhook URL.
pub const NOTIFICATIONS_PATH: &str = "/graph/notifications";
pub const LIFECYCLE_PATH: &str = "/graph/lifecycle";

/// Our subscriptions carry no resource data, so a batch is a list of short
/// items (ids and paths); 1 MiB holds thousands of them.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// One change or lifecycle notification that passed the `clientState` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub subscription_id: String,
    pub change_type: Option<String>,
    /// e.g. `chats('19:…')/messages('1732…')`.
    pub resource: Option<String>,
    pub resource_id: Option<String>,
    pub lifecycle_event: Option<String>,
    pub tenant_id: Option<String>,
}

/// A lifecycle event (subscription lifecycle notifications).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The subscription must be reauthorized (its token is about to lapse).
    ReauthorizationRequired,
    /// Graph removed the subscription: it must be created again.
    SubscriptionRemoved,
    /// Notifications were not delivered: read what changed.
    Missed,
}

impl Notification {
    /// The lifecycle event this notification carries, if it is one Graph documents.
    pub fn lifecycle(&self) -> Option<LifecycleEvent> {
        match self.lifecycle_event.as_deref()? {
            "reauthorizationRequired" => Some(LifecycleEvent::ReauthorizationRequired),
            "subscriptionRemoved" => Some(LifecycleEvent::SubscriptionRemoved),
            "missed" => Some(LifecycleEvent::Missed),
            _ => None,
        }
    }

    /// (chat id, message id) of a chat-message notification
    /// (`chats('19:…')/messages('1732…')`, or the `/chats/…/messages/…` form).
    pub fn chat_message(&self) -> Option<(String, String)> {
        parse_chat_message(self.resource.as_deref()?)
    }
}

fn parse_chat_message(resource: &str) -> Option<(String, String)> {
    let inner = |s: &str, prefix: &str| -> Option<String> {
        let rest = s.strip_prefix(prefix)?;
        let rest = rest.strip_prefix("('").or_else(|| rest.strip_prefix('/'))?;
        let end = rest.find("')").unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    };
    let resource = resource.trim_start_matches('/');
    let (chat_part, message_part) = resource.split_once("/messages")?;
    let chat = inner(chat_part, "chats")?;
    let message = inner(&format!("messages{message_part}"), "messages")?;
    Some((chat, message))
}

/// Where accepted notifications go before Graph gets its 202.
pub trait Sink: Send + Sync + 'static {
    /// Keeps one accepted notification; `Err` (why) means it was not kept,
    /// and Graph must send the batch again (no 2xx).
    fn keep(&self, notification: Notification) -> BoxFuture<'_, Result<(), String>>;

    /// A whole batch was kept.
    fn kept(&self) {}
}

/// The gateway's sink: the store's notification queue, then a wake-up for
/// the consumer, so a crash after the 202 loses nothing.
pub struct Durable {
    pub store: Arc<Store>,
    pub wake: Arc<tokio::sync::Notify>,
}

impl Sink for Durable {
    fn keep(&self, notification: Notification) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let body = serde_json::to_string(&notification).map_err(|e| e.to_string())?;
            self.store
                .push_notification(&body)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn kept(&self) {
        self.wake.notify_one();
    }
}

#[derive(Clone)]
struct Receiver {
    client_state: SecretString,
    sink: Arc<dyn Sink>,
}

#[derive(Deserialize)]
struct Validation {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

/// The webhook's routes; accepted notifications go into `sink`.
pub fn router(client_state: SecretString, sink: Arc<dyn Sink>) -> Router {
    let receiver = Receiver { client_state, sink };
    Router::new()
        .route(NOTIFICATIONS_PATH, post(receive))
        .route(LIFECYCLE_PATH, post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(receiver)
}

/// Constant-time equality, so a forger learns nothing from our timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A notification collection as posted: those whose clientState is ours,
/// and how many were not.
pub struct Batch {
    pub accepted: Vec<Notification>,
    pub rejected: usize,
}

/// Reads a posted body (`{"value": [...]}`), or `None` if it is not one.
/// Pure, so the fuzz target runs exactly what the endpoint runs.
pub fn parse_batch(body: &[u8], client_state: &[u8]) -> Option<Batch> {
    let batch = serde_json::from_slice::<Value>(body).ok()?;
    let items = batch["value"].as_array()?;
    let mut accepted = Vec::with_capacity(items.len());
    let mut rejected = 0usize;
    for item in items {
        let theirs = item["clientState"].as_str().unwrap_or_default().as_bytes();
        if !same(client_state, theirs) {
            rejected += 1;
            continue;
        }
        let text = |k: &str| item[k].as_str().map(str::to_owned);
        accepted.push(Notification {
            subscription_id: text("subscriptionId").unwrap_or_default(),
            change_type: text("changeType"),
            resource: text("resource"),
            resource_id: item["resourceData"]["id"].as_str().map(str::to_owned),
            lifecycle_event: text("lifecycleEvent"),
            tenant_id: text("tenantId"),
        });
    }
    Some(Batch { accepted, rejected })
}

async fn receive(
    State(receiver): State<Receiver>,
    Query(validation): Query<Validation>,
    body: Bytes,
) -> Response {
    if let Some(token) = validation.validation_token {
        // Echo the token, plain text; nothing in it is interpreted.
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            token,
        )
            .into_response();
    }
    let Some(Batch { accepted, rejected }) =
        parse_batch(&body, receiver.client_state.expose_secret().as_bytes())
    else {
        return (
            StatusCode::BAD_REQUEST,
            "not a change notification collection",
        )
            .into_response();
    };
    for notification in accepted {
        if let Err(e) = receiver.sink.keep(notification).await {
            // Not kept: Graph must send it again, so no 2xx.
            tracing::error!(error = %e, "cannot keep a change notification");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    if rejected > 0 {
        tracing::warn!(
            rejected,
            "change notifications with a wrong clientState dropped"
        );
    }
    receiver.sink.kept();
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_equality() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"ab"));
    }

    fn about(resource: &str, lifecycle: Option<&str>) -> Notification {
        Notification {
            subscription_id: "s".into(),
            change_type: None,
            resource: Some(resource.into()),
            resource_id: None,
            lifecycle_event: lifecycle.map(str::to_owned),
            tenant_id: None,
        }
    }

    #[test]
    fn resources_and_lifecycle_events_are_typed() {
        assert_eq!(
            about(
                "chats('19:abc@unq.gbl.spaces')/messages('1732551817000')",
                None
            )
            .chat_message(),
            Some(("19:abc@unq.gbl.spaces".into(), "1732551817000".into()))
        );
        assert_eq!(
            about("/chats/19:abc/messages/17", None).chat_message(),
            Some(("19:abc".into(), "17".into()))
        );
        assert_eq!(about("users('x')", None).chat_message(), None);
        assert_eq!(
            about("x", Some("subscriptionRemoved")).lifecycle(),
            Some(LifecycleEvent::SubscriptionRemoved)
        );
        assert_eq!(about("x", Some("somethingNew")).lifecycle(), None);
    }
}
