//! Graph change notifications the webhook stored: each names a chat with news
//! (read from its mark), or a subscription's lifecycle; and the upkeep of the
//! subscriptions made as shadow accounts.

use std::sync::Arc;
use std::time::Duration;

use crate::graph::webhook::Notification;

use super::{CatchUpError, Messages};

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
                        if let Some((chat, message)) = n.chat_message()
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
        if self.store.bridged_chat(chat_id).await?.is_none() {
            // A group chat's every message would otherwise cost a look.
            if self.is_foreign(chat_id) {
                return Ok(0);
            }
            let account = match self.subscriber(subscription_id).await? {
                Some(account) => Some(account),
                // The tenant's subscription: the chat's id names its members.
                None => self.account_in_chat(chat_id).await?,
            };
            let Some(account) = account else {
                self.mark_foreign(chat_id);
                return Ok(0);
            };
            if !self.adopt(chat_id, &account, None).await? {
                return Ok(0);
            }
        }
        self.catch_up(chat_id).await
    }

    pub(super) async fn on_lifecycle(&self, n: &Notification) {
        let Some(subscriptions) = &self.subscriptions else {
            return;
        };
        let Some(event) = n.lifecycle() else {
            tracing::warn!(event = ?n.lifecycle_event, "unknown lifecycle event");
            return;
        };
        match subscriptions
            .on_lifecycle(&self.graph, &n.subscription_id, event)
            .await
        {
            Ok(true) => self.reconcile_now.notify_one(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, ?event, "cannot act on a lifecycle notification");
                self.reconcile_now.notify_one();
            }
        }
    }

    /// Takes back the subscriptions made as shadow accounts, then keeps
    /// them renewed (graph::subscriptions); whatever lapsed while we were
    /// away is read once they are back.
    pub async fn keep_subscriptions(self: Arc<Self>) {
        let Some(subscriptions) = self.subscriptions.clone() else {
            return;
        };
        let credentials = match self.contacts.all_credentials().await {
            Ok(credentials) => credentials,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shadow accounts");
                Default::default()
            }
        };
        let restored = || self.subscriptions_restored.notify_one();
        subscriptions
            .keep(
                self.graph.clone(),
                |upn| credentials.get(&upn.to_lowercase()).cloned(),
                restored,
            )
            .await;
    }
}
