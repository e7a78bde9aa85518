//! The outbox's keys (conversations, queues, dedupe keys) and
//! the worker that delivers what is due, one conversation at a time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
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
/// Deliveries of one sender running at once: with others waiting, a busy
/// sender holds at most this many of the slots.
const PER_SENDER: usize = CONCURRENCY - 2;

/// Who a queued message is from: the remote contact towards Teams, the
/// Teams user towards XMPP.
fn sender(item: &OutboxItem) -> &str {
    match &item.payload {
        OutboxPayload::ToTeams(m) => &m.remote,
        OutboxPayload::ToXmpp(m) => &m.user_id,
    }
}

/// The next deliveries from the due heads (in queue order), for `free`
/// slots: senders take turns, those with fewest deliveries running first
/// (then the one waiting longest), each with at most `per_sender` running.
/// Graph's 20 messages/s for the tenant is so shared between senders, not
/// handed to whoever queued most.
fn fair_pick(
    due: Vec<OutboxItem>,
    running: &HashMap<String, usize>,
    per_sender: usize,
    free: usize,
) -> Vec<OutboxItem> {
    let mut by_sender: Vec<(String, VecDeque<OutboxItem>)> = Vec::new();
    for item in due {
        let from = sender(&item).to_owned();
        let room = per_sender.saturating_sub(running.get(&from).copied().unwrap_or(0));
        match by_sender.iter_mut().find(|(s, _)| *s == from) {
            Some((_, items)) if items.len() < room => items.push_back(item),
            Some(_) => {}
            None if room > 0 => by_sender.push((from, [item].into())),
            None => {}
        }
    }
    // Stable: among equals, the sender whose head came first.
    by_sender.sort_by_key(|(s, _)| running.get(s).copied().unwrap_or(0));
    let mut picked = Vec::new();
    while picked.len() < free && by_sender.iter().any(|(_, items)| !items.is_empty()) {
        for (_, items) in &mut by_sender {
            if picked.len() < free {
                picked.extend(items.pop_front());
            }
        }
    }
    picked
}

/// How long the dedupe key of a delivered message is kept (at least twice the
/// expiry): repeats come within minutes, and the table must not grow for ever.
const KEYS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

impl Messages {
    /// Delivers what is due, for ever: up to `CONCURRENCY` conversations
    /// at once, each in order, a freed slot going to the sender with fewest
    /// deliveries running.
    pub async fn deliver(self: Arc<Self>) {
        let mut running: JoinSet<()> = JoinSet::new();
        // Per task: its conversation and sender.
        let mut tasks: HashMap<tokio::task::Id, (String, String)> = HashMap::new();
        loop {
            let free = CONCURRENCY - running.len();
            if free > 0 {
                let due = match self.store.due(now(), HEADS).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the outbox");
                        Vec::new()
                    }
                };
                let busy: HashSet<&str> = tasks.values().map(|(c, _)| c.as_str()).collect();
                let due: Vec<OutboxItem> = due
                    .into_iter()
                    .filter(|i| !busy.contains(i.conversation.as_str()))
                    .collect();
                let mut by_sender: HashMap<String, usize> = HashMap::new();
                for (_, from) in tasks.values() {
                    *by_sender.entry(from.clone()).or_default() += 1;
                }
                for item in fair_pick(due, &by_sender, PER_SENDER, free) {
                    let key = (item.conversation.clone(), sender(&item).to_owned());
                    let this = self.clone();
                    let task = running.spawn(async move { this.deliver_one(item).await });
                    tasks.insert(task.id(), key);
                }
            }
            self.prune_in_flight();
            // Until a delivery ends or new work comes (or a second passes:
            // retries fall due by the clock).
            tokio::select! {
                Some(done) = running.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            tracing::error!(error = %e, "a delivery task failed");
                            e.id()
                        }
                    };
                    tasks.remove(&id);
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
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
        let seqs = |picked: Vec<OutboxItem>| picked.iter().map(|i| i.seq).collect::<Vec<_>>();
        // All slots free: turns, Bob (to Teams) first as he waited longest,
        // then Dave, then u7 (to XMPP: the Teams user sends); Bob at most six.
        let picked = fair_pick(due.clone(), &HashMap::new(), 6, 8);
        assert_eq!(seqs(picked), [0, 40, 41, 1, 2, 3, 4, 5]);
        // Bob has five running and one slot frees: Dave gets it.
        let running = HashMap::from([("bob@x.test".to_owned(), 5)]);
        let picked = fair_pick(due.clone(), &running, 6, 1);
        assert_eq!(seqs(picked), [40]);
        // Bob at his six: the others only.
        let running = HashMap::from([("bob@x.test".to_owned(), 6)]);
        assert_eq!(seqs(fair_pick(due, &running, 6, 8)), [40, 41]);
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(1), 2);
        assert_eq!(backoff(30), 300);
    }
}
