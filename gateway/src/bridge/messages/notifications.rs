//! Graph change notifications the webhook stored: each names a chat with news
//! (read from its mark), or a subscription's lifecycle; and the upkeep of the
//! subscriptions made as shadow accounts.

use std::sync::Arc;
use std::time::Duration;

use crate::graph::webhook::Notification;

use super::outbox::conv_key;
use super::{CatchUpError, Messages};

/// `chats('19:…')/messages('1732…')` → (chat id, message id).
pub(super) fn parse_resource(resource: &str) -> Option<(String, String)> {
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

/// A chat whose read failed is read again after this.
const UNREAD_RETRY: Duration = Duration::from_secs(2);
/// How long a claimed change notification stays ours.
const LEASE_SECS: i64 = 120;

impl Messages {
    /// Takes the webhook's stored notifications, for ever. A notification
    /// only says that a chat has news: the chat is then read from where it
    /// was last read, so messages are queued in the chat's order whatever
    /// order (or loss) notifications come in.
    pub async fn consume_notifications(self: Arc<Self>) {
        // Chats whose read failed (Graph throttling, an outage): read again
        // soon. Their notifications are acknowledged all the same — they only
        // said the chat had news, and a restart reads every chat anyway.
        let mut unread: Vec<(String, String)> = Vec::new();
        loop {
            let mut chats = std::mem::take(&mut unread);
            let claimed = match self.store.claim_notifications(64, LEASE_SECS).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the notification queue");
                    Vec::new()
                }
            };
            let got_some = !claimed.is_empty();
            let mut done = Vec::new();
            for queued in claimed {
                match serde_json::from_str::<Notification>(&queued.body) {
                    Ok(n) if n.lifecycle_event.is_some() => self.on_lifecycle(&n).await,
                    Ok(n) => {
                        // Our own messages need no reading: only the Teams
                        // user's can be news.
                        if let Some((chat, message)) =
                            n.resource.as_deref().and_then(parse_resource)
                            && !self.was_sent_by_us(&chat, &message)
                            && !chats.iter().any(|(c, _)| *c == chat)
                        {
                            chats.push((chat, n.subscription_id.clone()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "an unreadable stored notification; dropped")
                    }
                }
                done.push(queued.seq);
            }
            for (chat, subscription) in chats {
                if let Err(e) = self.read_notified(&chat, &subscription).await {
                    tracing::warn!(error = %e, %chat, "cannot read a notified chat now; trying again shortly");
                    unread.push((chat, subscription));
                }
            }
            for seq in done {
                if let Err(e) = self.store.ack_notification(seq).await {
                    tracing::warn!(error = %e, "cannot acknowledge a notification");
                }
            }
            if got_some {
                continue;
            }
            let wait = if unread.is_empty() {
                Duration::from_secs(5)
            } else {
                UNREAD_RETRY
            };
            let _ = tokio::time::timeout(wait, self.notified.notified()).await;
        }
    }

    /// Reads a chat a notification named; a chat not known yet may be one a
    /// Teams user just started with the subscribing shadow account.
    pub(super) async fn read_notified(
        &self,
        chat_id: &str,
        subscription_id: &str,
    ) -> Result<usize, CatchUpError> {
        if self.store.get_cursor(&conv_key(chat_id)).await?.is_none() {
            // A group chat's every message would otherwise cost a look.
            if self.is_foreign(chat_id) {
                return Ok(0);
            }
            match self.subscriber(subscription_id).await? {
                Some(account) => {
                    if !self.adopt(chat_id, &account, None).await? {
                        return Ok(0);
                    }
                }
                None => return Ok(0),
            }
        }
        self.catch_up(chat_id).await
    }

    pub(super) async fn on_lifecycle(&self, n: &Notification) {
        let (Some(subscriptions), Some(event)) = (&self.subscriptions, &n.lifecycle_event) else {
            return;
        };
        match subscriptions
            .on_lifecycle(&self.graph, &n.subscription_id, event)
            .await
        {
            Ok(true) => self.reconcile_now.notify_one(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, %event, "cannot act on a lifecycle notification");
                self.reconcile_now.notify_one();
            }
        }
    }

    /// Takes back the subscriptions made as shadow accounts, then renews
    /// them before they lapse, for ever.
    pub async fn keep_subscriptions(self: Arc<Self>) {
        let Some(subscriptions) = self.subscriptions.clone() else {
            return;
        };
        match self.contacts.all_credentials().await {
            Ok(credentials) => {
                if let Err(e) = subscriptions
                    .restore(|upn| credentials.get(&upn.to_lowercase()).cloned())
                    .await
                {
                    tracing::warn!(error = %e, "cannot take back the Graph subscriptions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the shadow accounts"),
        }
        // Whatever lapsed while we were away is read now.
        self.reconcile_now.notify_one();
        loop {
            subscriptions
                .renew_due(&self.graph, Duration::from_secs(15 * 60))
                .await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_resources() {
        assert_eq!(
            parse_resource("chats('19:abc@unq.gbl.spaces')/messages('1732551817000')"),
            Some(("19:abc@unq.gbl.spaces".into(), "1732551817000".into()))
        );
        assert_eq!(
            parse_resource("/chats/19:abc/messages/17"),
            Some(("19:abc".into(), "17".into()))
        );
        assert_eq!(parse_resource("users('x')"), None);
    }
}
