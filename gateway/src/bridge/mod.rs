//! The bridge: what joins the XMPP side and the Teams side, grouped by what
//! it does. `service` dispatches what the s2s layer hands over; `presence`
//! carries presence each way (`teams`, `contact`) over the pure mapping;
//! `contacts` keeps the remote contacts: their shadow accounts, roster and
//! cards; `users` knows the Teams users (the allow list, their JIDs);
//! `messages` carries 1:1 messages through the outbox; `throttle` holds the
//! per-user limits; `iq` the IQs we send; `text` converts message bodies.

pub mod contacts;
pub mod iq;
pub mod messages;
pub mod metrics;
pub mod presence;
pub mod service;
pub mod text;
pub mod throttle;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use crate::s2s::{S2sSender, SendError, Stanza};

/// What the parts of the bridge share: Graph, the Teams directory, the store,
/// the way out to XMPP and the bridge's metrics.
#[derive(Clone)]
pub struct Services {
    /// The Teams users' tenant: their directory, profiles and presence.
    pub graph: Arc<crate::graph::GraphClient>,
    /// The shadow accounts' tenant: the accounts, their sign-ins, presence
    /// and chats. The same client as `graph` unless they have a tenant of their own.
    pub shadow_graph: Arc<crate::graph::GraphClient>,
    /// With a tenant of their own: the Teams users' tenant id, which makes
    /// a Teams user a cross-tenant member of a shadow account's chat.
    pub home_tenant: Option<String>,
    pub directory: users::directory::Directory,
    pub store: Arc<crate::store::Store>,
    pub out: Arc<dyn XmppOut>,
    pub metrics: metrics::BridgeMetrics,
}

/// Where the bridge's stanzas go: the s2s layer in the gateway (tests and
/// benchmarks bring a channel of their own).
pub trait XmppOut: Send + Sync + 'static {
    fn send(&self, stanza: Stanza) -> BoxFuture<'_, Result<(), SendError>>;

    /// Sends and waits until the stanza is written to the remote server's
    /// stream (what a message needs before its outbox entry may go).
    fn send_written(&self, stanza: Stanza) -> BoxFuture<'_, Result<(), SendError>> {
        self.send(stanza)
    }
}

/// The longest a message waits to be written before it is tried again.
const WRITE_WAIT: Duration = Duration::from_secs(60);

impl XmppOut for S2sSender {
    fn send(&self, stanza: Stanza) -> BoxFuture<'_, Result<(), SendError>> {
        Box::pin(S2sSender::send(self, stanza))
    }

    fn send_written(&self, stanza: Stanza) -> BoxFuture<'_, Result<(), SendError>> {
        Box::pin(async move {
            let written = S2sSender::send_written(self, stanza).await?;
            match tokio::time::timeout(WRITE_WAIT, written).await {
                Ok(Ok(())) => Ok(()),
                // Bounced (the sender was dropped), or still waiting.
                _ => Err(SendError::NotWritten),
            }
        })
    }
}

/// Answers `to` with a stanza error (RFC 6120 §8.3), if it may be answered.
pub async fn reply_error(
    out: &dyn XmppOut,
    to: &Stanza,
    condition: DefinedCondition,
    type_: ErrorType,
    text: &str,
) {
    if let Some(reply) = crate::s2s::stanza::error_reply(to, condition, type_, text)
        && let Err(e) = out.send(reply).await
    {
        tracing::debug!(error = %e, "error reply not sent");
    }
}

/// Sends, waiting out a full queue for a remote domain (a presence burst to
/// one domain can outrun its stream for a moment); other refusals are final.
pub async fn send_patiently(out: &dyn XmppOut, stanza: Stanza) -> Result<(), SendError> {
    let mut stanza = stanza;
    for attempt in 0..50u64 {
        let copy = crate::s2s::stanza::duplicate(&stanza);
        match out.send(stanza).await {
            Err(SendError::Busy(_)) => {
                tokio::time::sleep(Duration::from_millis(10 * (attempt + 1).min(20))).await;
                stanza = copy;
            }
            other => return other,
        }
    }
    out.send(stanza).await
}
