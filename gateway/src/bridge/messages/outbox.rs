//! The outbox's keys (conversations, queues, dedupe keys) and
//! the worker that delivers what is due, one conversation at a time.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::store::{Direction, OutboxItem, OutboxPayload, now};

use super::{Messages, Outcome};

/// A conversation: a remote contact and a Teams user (object id).
pub(super) fn conversation(remote: &str, user_id: &str) -> String {
    format!("{remote}|{user_id}")
}

/// The outbox queue of one direction of a conversation: each direction keeps
/// its own order, and a message held up one way does not hold up the other.
pub(super) fn queue(direction: Direction, conversation: &str) -> String {
    format!("{direction}:{conversation}")
}

/// The dedupe key of a Graph chat message (ids are unique within a chat only).
pub(super) fn graph_key(chat_id: &str, message_id: &str) -> String {
    format!("graph:{chat_id}:{message_id}")
}

/// Next try after `attempts` failures: 2 s doubling to 5 minutes.
pub(super) fn backoff(attempts: i64) -> i64 {
    2i64.saturating_pow(attempts.clamp(1, 20) as u32).min(300)
}

/// Outbox items delivered at once (different conversations only).
const CONCURRENCY: usize = 8;
/// Conversations' heads read per round: enough that every sender with
/// something due is in it (one row per conversation), however busy others are.
const HEADS: i64 = 1024;
/// A round takes at most this many conversations of one sender, so a round
/// lasts about (senders × this) / the tenant's send rate: a quiet sender
/// waits for its share, not for a busy one's backlog.
const PER_SENDER: usize = CONCURRENCY;

/// Who a queued message is from: the remote contact towards Teams, the
/// Teams user towards XMPP.
fn sender(item: &OutboxItem) -> &str {
    match &item.payload {
        OutboxPayload::ToTeams(m) => &m.remote,
        OutboxPayload::ToXmpp(m) => &m.user_id,
    }
}

/// One delivery round from the due heads (in queue order): senders take
/// turns, the one waiting longest first, each with at most `per_sender`
/// conversations. Graph's 20 messages/s for the tenant is so shared between
/// senders, not handed to whoever queued most.
fn fair_round(due: Vec<OutboxItem>, per_sender: usize) -> Vec<OutboxItem> {
    let mut by_sender: Vec<(String, std::collections::VecDeque<OutboxItem>)> = Vec::new();
    for item in due {
        let from = sender(&item).to_owned();
        match by_sender.iter_mut().find(|(s, _)| *s == from) {
            Some((_, items)) if items.len() < per_sender => items.push_back(item),
            Some(_) => {}
            None => by_sender.push((from, [item].into())),
        }
    }
    let mut round = Vec::new();
    while by_sender.iter().any(|(_, items)| !items.is_empty()) {
        for (_, items) in &mut by_sender {
            round.extend(items.pop_front());
        }
    }
    round
}
/// How long the dedupe key of a delivered message is kept (at least twice the
/// expiry): repeats come within minutes, and the table must not grow for ever.
const KEYS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

impl Messages {
    /// Delivers what is due, for ever.
    pub async fn deliver(self: Arc<Self>) {
        loop {
            let due = match self.store.due(now(), HEADS).await {
                Ok(due) => fair_round(due, PER_SENDER),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            let busy = !due.is_empty();
            futures::stream::iter(due)
                .for_each_concurrent(CONCURRENCY, |item| {
                    let this = self.clone();
                    async move { this.deliver_one(item).await }
                })
                .await;
            self.prune_in_flight();
            if !busy {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
            }
        }
    }

    pub(super) async fn deliver_one(&self, item: OutboxItem) {
        let direction = item.direction().as_str();
        let outcome = if now() > item.expires_at && !self.held_for_provisioning(&item) {
            Outcome::Failed(
                DefinedCondition::RemoteServerTimeout,
                format!(
                    "not delivered within {} seconds",
                    self.settings.expiry.as_secs()
                ),
            )
        } else {
            match &item.payload {
                OutboxPayload::ToTeams(p) => self.to_teams(&item, p).await,
                OutboxPayload::ToXmpp(p) => self.to_xmpp(p).await,
            }
        };
        let stored = match outcome {
            Outcome::Delivered => {
                self.metrics.message(direction, "delivered");
                self.store.delivered(item.seq).await
            }
            Outcome::Retry => {
                self.metrics.message(direction, "retried");
                self.store
                    .retry_later(item.seq, now() + backoff(item.attempts + 1))
                    .await
            }
            Outcome::Failed(condition, why) => {
                self.metrics.message(direction, "failed");
                tracing::warn!(seq = item.seq, %why, direction, "message not deliverable");
                match &item.payload {
                    OutboxPayload::ToTeams(p) => self.bounce_to_xmpp(p, condition, &why).await,
                    OutboxPayload::ToXmpp(p) => self.not_delivered(p, &why).await,
                }
                self.store.expire(item.seq).await
            }
        };
        if let Err(e) = stored {
            // Delivered but not recorded: it is sent again, and de-duplicated.
            tracing::warn!(error = %e, "cannot record a delivery");
        }
    }

    /// A message to Teams from a contact told its account is still being
    /// provisioned is kept past the expiry (up to the 24 h Microsoft
    /// documents), not bounced.
    fn held_for_provisioning(&self, item: &OutboxItem) -> bool {
        let OutboxPayload::ToTeams(p) = &item.payload else {
            return false;
        };
        let queued = item.expires_at - self.settings.expiry.as_secs() as i64;
        let told = self
            .told_provisioning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&p.remote);
        told && now() < queued + crate::bridge::contacts::PROVISIONING.as_secs() as i64
    }

    /// Forgets old dedupe keys now and then, for ever.
    pub async fn forget_old_keys(self: Arc<Self>) {
        let kept = KEYS_KEPT.max(self.settings.expiry * 2).as_secs() as i64;
        loop {
            match self.store.forget_delivered(now() - kept).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(forgotten = n, "old message dedupe keys forgotten"),
                Err(e) => tracing::warn!(error = %e, "cannot forget old message dedupe keys"),
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: i64, direction: Direction, remote: &str, user: &str) -> OutboxItem {
        let payload = match direction {
            Direction::ToTeams => OutboxPayload::ToTeams(crate::store::ToTeams {
                remote: remote.into(),
                remote_full: format!("{remote}/r"),
                user_id: user.into(),
                local: user.into(),
                body: "hi".into(),
                id: None,
                receipt: false,
            }),
            Direction::ToXmpp => OutboxPayload::ToXmpp(crate::store::ToXmpp {
                local: user.into(),
                user_id: user.into(),
                remote: remote.into(),
                text: "hi".into(),
                graph_id: seq.to_string(),
                chat_id: "c".into(),
                expires_at: None,
                bounces: 0,
            }),
        };
        OutboxItem {
            seq,
            conversation: queue(direction, &conversation(remote, user)),
            dedupe_key: seq.to_string(),
            payload,
            attempts: 0,
            next_attempt_at: 0,
            expires_at: 0,
        }
    }

    #[test]
    fn a_busy_sender_does_not_hold_a_quiet_one_back() {
        // Bob's backlog in 40 chats came first; Dave's one message after it.
        let mut due: Vec<OutboxItem> = (0..40)
            .map(|n| item(n, Direction::ToTeams, "bob@x.test", &format!("u{n}")))
            .collect();
        due.push(item(40, Direction::ToTeams, "dave@x.test", "u0"));
        due.push(item(41, Direction::ToXmpp, "bob@x.test", "u7"));
        let round = fair_round(due, 8);
        let order: Vec<i64> = round.iter().map(|i| i.seq).collect();
        // Bob (to Teams), Dave, then u7 (to XMPP: the Teams user sends).
        assert_eq!(&order[..3], [0, 40, 41]);
        assert_eq!(round.len(), 10, "Bob takes eight conversations: {order:?}");
        assert_eq!(order[3..], [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(1), 2);
        assert_eq!(backoff(30), 300);
    }
}
