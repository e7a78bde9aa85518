//! Teams → XMPP: a Teams user's chat message queued for XMPP (never an echo of
//! what a shadow account wrote), sent, and its bounces retried or noted in Teams.

use std::time::{Duration, Instant};

use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::stanza_error::{DefinedCondition, StanzaError};
use xmpp_parsers::stanza_id::OriginId;

use crate::bridge::text;
use crate::graph::api::ChatMessage;
use crate::graph::api::MessageType as GraphMessageType;
use crate::s2s::{SendError, Stanza};
use crate::store::{Direction, OutboxItem, OutboxPayload, StoreError, ToXmpp, now};

use super::outbox::{backoff, conversation, graph_key, queue};
use super::{InFlight, Messages, Outcome, random_id};

/// How many sent message ids are remembered (forgotten all at once when full).
const SENT_REMEMBERED: usize = 10_000;
/// How long a message sent to XMPP is remembered in case it bounces.
const BOUNCE_WINDOW: Duration = Duration::from_secs(600);

impl Messages {
    /// A chat message seen in Teams: queued for XMPP if it belongs to a bridged
    /// chat and was written by the Teams user (not echoed back); `true` when
    /// it was new to the outbox.
    pub(super) async fn take_from_teams(
        &self,
        chat_id: &str,
        m: &ChatMessage,
    ) -> Result<bool, StoreError> {
        if m.message_type
            .is_some_and(|t| t != GraphMessageType::Message)
        {
            return Ok(false);
        }
        let Some(chat) = self.store.bridged_chat(chat_id).await? else {
            return Ok(false);
        };
        let (remote, user_id) = (chat.remote_jid.as_str(), chat.teams_user.as_str());
        if m.sender_id() != Some(user_id) {
            // The shadow account's own message (ours), or a system event.
            return Ok(false);
        }
        let Some(local) = self.directory.local_of(user_id) else {
            tracing::info!(%user_id, "a message from a user no longer on the allow list: not carried");
            return Ok(false);
        };
        let body = text::to_text(&m.body.content);
        if m.deleted_date_time.is_some() || body.is_empty() {
            // Deleted, or only an attachment or card: nothing to carry as text.
            return Ok(false);
        }
        // Read again (the mark's window is re-read): neither charged nor refused.
        if self.store.is_known(&graph_key(chat_id, &m.id)).await? {
            return Ok(false);
        }
        if let Err(refusal) = self.throttle.message(&[user_id, &local], body.len()) {
            self.metrics.throttled("to-xmpp", refusal.kind.label());
            self.notice_in_teams(
                remote,
                &local,
                chat_id,
                &format!("Not delivered to {remote} — {}", refusal.text),
            )
            .await;
            return Ok(false);
        }
        let payload = ToXmpp {
            local,
            user_id: user_id.to_owned(),
            remote: remote.to_owned(),
            text: body,
            graph_id: m.id.clone(),
            chat_id: chat_id.to_owned(),
            expires_at: Some(self.expires_at()),
            bounces: 0,
        };
        let item = OutboxItem {
            seq: 0,
            conversation: queue(Direction::ToXmpp, &conversation(remote, user_id)),
            dedupe_key: graph_key(chat_id, &m.id),
            payload: OutboxPayload::ToXmpp(payload),
            attempts: 0,
            next_attempt_at: now(),
            expires_at: self.expires_at(),
        };
        let new = self.store.enqueue(&item).await?.is_some();
        if new {
            self.metrics.message("to-xmpp", "accepted");
            self.wake.notify_one();
        }
        Ok(new)
    }

    pub(super) fn remember_sent(&self, chat_id: &str, message_id: &str) {
        let mut sent = self.sent_by_us.lock().unwrap_or_else(|e| e.into_inner());
        if sent.len() >= SENT_REMEMBERED {
            sent.clear();
        }
        sent.insert(graph_key(chat_id, message_id));
    }

    pub(super) fn was_sent_by_us(&self, chat_id: &str, message_id: &str) -> bool {
        self.sent_by_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&graph_key(chat_id, message_id))
    }

    /// Posts a notice into the Teams chat as the shadow account (it is not
    /// echoed: the shadow account wrote it).
    pub(super) async fn notice_in_teams(
        &self,
        remote: &str,
        local: &str,
        chat_id: &str,
        notice: &str,
    ) {
        match self.contacts.credential(remote, local).await {
            Ok((_, shadow)) => {
                let html = format!("<em>⚠ {}</em>", text::to_html(notice));
                if let Err(e) = self.graph.send_chat_message(&shadow, chat_id, &html).await {
                    tracing::warn!(error = %e, "cannot post a notice in Teams");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot post a notice in Teams"),
        }
    }

    pub(super) async fn to_xmpp(&self, p: &ToXmpp) -> Outcome {
        let (Ok(from), Ok(to)) = (
            format!(
                "{}@{}/{}",
                p.local, self.settings.domain, self.settings.resource
            )
            .parse::<Jid>(),
            p.remote.parse::<Jid>(),
        ) else {
            return Outcome::Failed(DefinedCondition::JidMalformed, "not a JID".into());
        };
        let mut m = Message::new_with_type(MessageType::Chat, Some(to))
            .with_body(Lang::default(), p.text.clone());
        m.from = Some(from);
        m.id = Some(Id(p.graph_id.clone()));
        m.payloads.push(
            OriginId {
                id: p.graph_id.clone(),
            }
            .into(),
        );
        // Known as in flight before it goes: its bounce may come back before the
        // peer's acknowledgement does.
        let key = (p.remote.clone(), p.graph_id.clone());
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key.clone(),
                InFlight {
                    payload: p.clone(),
                    at: Instant::now(),
                    sending: true,
                    bounce: None,
                },
            );
        // Acknowledged by the peer (XEP-0198), or at least written to the
        // stream, before the outbox lets it go: a crash before then sends it
        // again (same id and origin-id), never loses it.
        let sent = self.out.send_written(Stanza::Message(m)).await;
        let early_bounce = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match &sent {
                Ok(()) => in_flight.get_mut(&key).and_then(|f| {
                    f.sending = false;
                    f.bounce.take()
                }),
                Err(_) => {
                    in_flight.remove(&key);
                    None
                }
            }
        };
        match sent {
            Ok(()) => {
                if let Some(bounce) = early_bounce {
                    self.bounced(&bounce).await;
                }
                Outcome::Delivered
            }
            Err(SendError::Busy(_) | SendError::Closed | SendError::NotWritten) => Outcome::Retry,
            Err(e) => Outcome::Failed(DefinedCondition::NotAllowed, e.to_string()),
        }
    }

    /// An error bounced back for a message we sent to XMPP: tried again after
    /// a while if the remote server was unreachable, else noted in Teams.
    pub async fn bounced(&self, m: &Message) {
        let (Some(Id(id)), Some(from)) = (&m.id, &m.from) else {
            return;
        };
        let remote = from.to_bare().to_string().to_lowercase();
        let key = (remote, id.clone());
        let mut p = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let Some(mut f) = in_flight.remove(&key) else {
                return;
            };
            if f.sending {
                f.bounce = Some(m.clone());
                in_flight.insert(key, f);
                return;
            }
            f.payload
        };
        let condition = m
            .payloads
            .iter()
            .find_map(|e| StanzaError::try_from(e.clone()).ok())
            .map(|e| e.defined_condition);
        let transient = matches!(
            condition,
            Some(
                DefinedCondition::RemoteServerNotFound
                    | DefinedCondition::RemoteServerTimeout
                    | DefinedCondition::ResourceConstraint
            )
        );
        let expires_at = p.expires_at.unwrap_or_else(|| self.expires_at());
        if transient && now() < expires_at {
            p.bounces += 1;
            let item = OutboxItem {
                seq: 0,
                conversation: queue(Direction::ToXmpp, &conversation(&p.remote, &p.user_id)),
                // A key of its own: the first delivery's key is taken.
                dedupe_key: format!(
                    "{}#bounce-{}-{}",
                    graph_key(&p.chat_id, &p.graph_id),
                    p.bounces,
                    random_id()
                ),
                payload: OutboxPayload::ToXmpp(p.clone()),
                attempts: i64::from(p.bounces),
                next_attempt_at: now() + backoff(i64::from(p.bounces)),
                expires_at,
            };
            match self.store.enqueue(&item).await {
                Ok(Some(_)) => return,
                Ok(None) => tracing::warn!("a bounced message could not be queued again"),
                Err(e) => tracing::warn!(error = %e, "cannot queue a bounced message again"),
            }
        }
        self.metrics.message("to-xmpp", "failed");
        let why = condition.map_or_else(|| "an error".to_owned(), |c| format!("{c:?}"));
        self.not_delivered(&p, &why).await;
    }

    /// Tells the Teams user, in the chat, that a message of theirs did not reach XMPP.
    pub(super) async fn not_delivered(&self, p: &ToXmpp, why: &str) {
        let notice = format!("Not delivered to {}: {why}", p.remote);
        self.notice_in_teams(&p.remote, &p.local, &p.chat_id, &notice)
            .await;
    }

    pub(super) fn prune_in_flight(&self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, f| f.at.elapsed() < BOUNCE_WINDOW);
    }
}
