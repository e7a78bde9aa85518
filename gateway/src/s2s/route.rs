//! Where a stanza from a peer goes: addressing and allow-list checks, the
//! domain's own services, then the bridge; and how the domain's answers leave
//! without the stream task ever waiting on a queue only it empties.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stream_error::DefinedCondition;

use super::acks::Ack;
use super::services::{self, Handled};
use super::stanza::{self, Stanza};
use super::{S2sSender, Shared, metrics};

/// An error that ends the stream: the condition and a text for the peer.
pub type StreamFault = (DefinedCondition, String);

/// Routes one stanza from an authenticated stream: addressing checks, the
/// allow list (which may have changed since the stream opened), the domain
/// services, then the bridge.
/// `ack` (XEP-0198) goes with the stanza to the bridge, or is dropped — the
/// stanza counted as handled — when the stanza is answered here or refused.
pub async fn dispatch(
    shared: &Arc<Shared>,
    element: Element,
    authenticated: &[String],
    ack: Option<Ack>,
    replies: Option<&Arc<Semaphore>>,
) -> Result<(), StreamFault> {
    let from_domain = element.attr("from").map(bare_domain);
    let Some(from_domain) = from_domain else {
        return Err((
            DefinedCondition::ImproperAddressing,
            "stanza without a from address".into(),
        ));
    };
    if !authenticated.contains(&from_domain) {
        return Err((
            DefinedCondition::InvalidFrom,
            format!("{from_domain} was not authenticated on this stream"),
        ));
    }
    let Some(to_domain) = element.attr("to").map(bare_domain) else {
        return Err((
            DefinedCondition::ImproperAddressing,
            "stanza without a to address".into(),
        ));
    };
    if to_domain != shared.domain {
        return Err((
            DefinedCondition::HostUnknown,
            format!("this server serves {}", shared.domain),
        ));
    }
    if !shared.allow.allows(&from_domain) {
        shared.metrics.refused("in");
        return Err((
            DefinedCondition::PolicyViolation,
            format!("{from_domain} is no longer allowed"),
        ));
    }
    let stanza = match stanza::from_wire(element) {
        Ok(s) => s,
        Err(e) => {
            // One bad stanza does not end a stream that carries others.
            tracing::info!(error = %e, domain = %from_domain, "dropping an invalid stanza");
            if let Some(ack) = ack {
                ack.handled();
            }
            return Ok(());
        }
    };
    shared
        .metrics
        .stanza_in(&shared.domain_label(&from_domain), metrics::kind(&stanza));
    match services::handle(shared.directory.as_ref(), stanza) {
        Handled::Answered(reply) => {
            if let Some(reply) = reply {
                // Answers in flight are bounded per stream: a peer that floods
                // us with pings waits (its stream is not read) rather than
                // losing answers or growing our memory.
                let permit = match replies {
                    Some(replies) => replies.clone().acquire_owned().await.ok(),
                    None => None,
                };
                reroute(shared, reply, permit);
            }
            if let Some(ack) = ack {
                ack.handled();
            }
        }
        Handled::Bridge(stanza) => shared.deliver(stanza, ack).await,
    }
    Ok(())
}

/// Answers in flight per stream before the stream stops being read.
pub const REPLIES_IN_FLIGHT: usize = 1024;

/// Sends a stanza from a task of its own: the stream task that calls this
/// must never wait on a queue that only it (or the bridge) empties. The task
/// waits for room in a full outbound queue (no outbox sends these again);
/// `permit`, if any, is released once the stanza is queued.
pub fn reroute(shared: &Arc<Shared>, stanza: Stanza, permit: Option<OwnedSemaphorePermit>) {
    let sender = S2sSender {
        shared: shared.clone(),
    };
    let patience = shared.settings.connect_timeout * 2;
    tokio::spawn(async move {
        if let Err(e) = sender.send_waiting(stanza, patience).await {
            tracing::info!(error = %e, "stanza not sent");
        }
        drop(permit);
    });
}

/// `user@domain/resource` → `domain`, lower-cased.
fn bare_domain(jid: &str) -> String {
    let without_resource = jid.split('/').next().unwrap_or(jid);
    without_resource
        .rsplit('@')
        .next()
        .unwrap_or(without_resource)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_domains() {
        assert_eq!(super::bare_domain("Bob@Xmpp.Test/phone"), "xmpp.test");
        assert_eq!(super::bare_domain("xmpp.test"), "xmpp.test");
        assert_eq!(super::bare_domain("xmpp.test/res@x"), "xmpp.test");
    }
}
