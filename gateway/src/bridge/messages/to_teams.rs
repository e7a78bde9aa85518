//! XMPP → Teams: a contact's message accepted into the outbox, posted into the
//! 1:1 chat as the contact's shadow account, and a receipt or an error back.

use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Message, MessageType};
use xmpp_parsers::ns;
use xmpp_parsers::receipts::Received;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmpp_parsers::stanza_id::OriginId;

use crate::bridge::text;
use crate::graph::GraphError;
use crate::s2s::Stanza;
use crate::store::{Direction, OutboxItem, OutboxPayload, ToTeams, now};

use super::outbox::{conversation, queue};
use super::{Messages, Outcome, graph_outcome, random_id};

/// What a contact is told when Teams is still setting up its account.
pub const PROVISIONING_NOTICE: &str = "[delivery delayed] Microsoft Teams is still setting up your account on this side (this can take up to 24 hours for a new contact). Your messages are kept and will be delivered as soon as it is ready.";

/// How many of a chat's newest messages the crash check reads.
const RECENT: u32 = 50;

/// What an administrator does when Teams refuses a cross-tenant chat.
const EXTERNAL_ACCESS_FIX: &str = "allow each tenant's domains in the other's Teams external access (Teams admin center > Users > External access)";

impl Messages {
    pub(super) async fn reply_error(
        &self,
        m: &Message,
        condition: DefinedCondition,
        type_: ErrorType,
        text: &str,
    ) {
        crate::bridge::reply_error(
            self.out.as_ref(),
            &Stanza::Message(m.clone()),
            condition,
            type_,
            text,
        )
        .await;
    }

    /// A message from a remote contact to one of our users: checked, throttled
    /// and written to the outbox; returns once it is durable (or refused).
    pub async fn from_xmpp(&self, m: Message) {
        let (Some(from), Some(to)) = (m.from.clone(), m.to.clone()) else {
            return;
        };
        let Some(body) = m.get_best_body(vec![]).map(|(_, b)| b.clone()) else {
            // Chat states, receipts and the like: nothing to carry (yet).
            return;
        };
        let local = to.node().map(|n| n.as_str().to_owned()).unwrap_or_default();
        let Some(user_id) = self.directory.id_of(&local) else {
            return self
                .reply_error(
                    &m,
                    DefinedCondition::ServiceUnavailable,
                    ErrorType::Cancel,
                    "no such user",
                )
                .await;
        };
        let remote = from.to_bare().to_string().to_lowercase();
        let origin_id = m
            .payloads
            .iter()
            .find(|p| p.is("origin-id", ns::SID))
            .and_then(|p| OriginId::try_from(p.clone()).ok())
            .map(|o| o.id);
        let id = origin_id.or_else(|| m.id.as_ref().map(|i| i.0.clone()));
        let known_key = id.as_ref().map(|id| format!("xmpp:{remote}:{id}"));
        // A repeat (a peer resending after a reconnect) is neither charged nor refused.
        if let Some(key) = &known_key
            && self.store.is_known(key).await.unwrap_or(false)
        {
            return;
        }
        if let Err(refusal) = self.throttle.message(&[&remote], body.len()) {
            self.metrics.throttled("to-teams", refusal.kind.label());
            return self
                .reply_error(
                    &m,
                    DefinedCondition::ResourceConstraint,
                    ErrorType::Wait,
                    &refusal.text,
                )
                .await;
        }
        // Nothing to recognise a repeat by: every copy is a new message.
        let dedupe_key = known_key.unwrap_or_else(|| format!("xmpp:{remote}:#{}", random_id()));
        let payload = ToTeams {
            remote: remote.clone(),
            remote_full: from.to_string(),
            user_id: user_id.clone(),
            local,
            body,
            id: m.id.as_ref().map(|i| i.0.clone()),
            receipt: m.payloads.iter().any(|p| p.is("request", ns::RECEIPTS)),
        };
        let item = OutboxItem {
            seq: 0,
            conversation: queue(Direction::ToTeams, &conversation(&remote, &user_id)),
            dedupe_key,
            payload: OutboxPayload::ToTeams(payload),
            attempts: 0,
            next_attempt_at: now(),
            expires_at: self.expires_at(),
        };
        match self.store.enqueue(&item).await {
            Ok(Some(_)) => {
                self.metrics.message("to-teams", "accepted");
                self.wake.notify_one();
            }
            Ok(None) => {
                tracing::debug!(%remote, ?id, "a message already accepted: not taken twice")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store a message");
                self.reply_error(
                    &m,
                    DefinedCondition::InternalServerError,
                    ErrorType::Wait,
                    "the message could not be stored; send it again",
                )
                .await;
            }
        }
    }

    pub(super) async fn to_teams(&self, item: &OutboxItem, p: &ToTeams) -> Outcome {
        let (shadow_id, shadow) = match self.contacts.credential(&p.remote, &p.local).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(remote = %p.remote, error = %e, "no shadow account to send as; retrying");
                return Outcome::Retry;
            }
        };
        let chat_id = match self.chat(&p.remote, &shadow, &shadow_id, &p.user_id).await {
            Ok(id) => id,
            // A cross-tenant chat refused: the tenants' external access, which
            // an administrator fixes; the message waits until then (or expires).
            Err(e) if self.home_tenant.is_some() && e.status() == Some(403) => {
                tracing::warn!(remote = %p.remote, user = %p.user_id, error = %e,
                    fix = EXTERNAL_ACCESS_FIX, "Teams refuses the cross-tenant chat; the message waits");
                return Outcome::Retry;
            }
            Err(e) => return self.graph_failure(p, e).await,
        };
        let html = text::to_html(&p.body);
        // Tried before, or the first of its conversation since this process
        // started: Graph may have taken it just before a failure or a crash.
        // Only messages from after it was queued can be it.
        let first_since_start = self
            .checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(item.conversation.clone());
        if item.attempts > 0 || first_since_start {
            let queued_at = item.expires_at - self.settings.expiry.as_secs() as i64;
            if let Ok(recent) = self.graph.chat_messages(&shadow, &chat_id, RECENT).await
                && recent.iter().any(|m| {
                    m.sender_id() == Some(shadow_id.as_str())
                        && text::to_text(&m.body.content) == text::to_text(&html)
                        && m.created_date_time.secs() >= queued_at - 1
                })
            {
                if p.receipt {
                    self.send_receipt(p).await;
                }
                return Outcome::Delivered;
            }
        }
        match self.graph.send_chat_message(&shadow, &chat_id, &html).await {
            Ok(sent) => {
                self.remember_sent(&chat_id, &sent.id);
                if p.receipt {
                    self.send_receipt(p).await;
                }
                Outcome::Delivered
            }
            Err(e) => self.graph_failure(p, e).await,
        }
    }

    /// A refusal from Graph. A new shadow account is refused (403, 404) until
    /// Teams has provisioned it, which Microsoft documents can take up to 24
    /// hours: the message waits, and its sender hears once that it is delayed.
    async fn graph_failure(&self, p: &ToTeams, e: GraphError) -> Outcome {
        if matches!(e.status(), Some(403 | 404)) && self.contacts.is_provisioning(&p.remote).await {
            tracing::info!(remote = %p.remote, error = %e, "the shadow account is not provisioned in Teams yet; the message waits");
            let first = self
                .told_provisioning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.remote.clone());
            if first {
                self.tell_delayed(p).await;
            }
            return Outcome::Retry;
        }
        graph_outcome(e)
    }

    /// A notice from the Teams user's address (not an error: nothing is lost).
    async fn tell_delayed(&self, p: &ToTeams) {
        let (Ok(contact), Ok(ours)) = (
            p.remote_full.parse::<Jid>(),
            format!(
                "{}@{}/{}",
                p.local, self.settings.domain, self.settings.resource
            )
            .parse::<Jid>(),
        ) else {
            return;
        };
        let mut notice = Message::new_with_type(MessageType::Chat, Some(contact)).with_body(
            xmpp_parsers::message::Lang::default(),
            PROVISIONING_NOTICE.to_owned(),
        );
        notice.from = Some(ours);
        notice.id = Some(Id(random_id()));
        if let Err(e) = self.out.send(Stanza::Message(notice)).await {
            tracing::debug!(error = %e, "delay notice not sent");
        }
    }

    pub(super) async fn send_receipt(&self, p: &ToTeams) {
        let (Some(id), Ok(to), Ok(from)) = (
            p.id.as_ref(),
            p.remote_full.parse::<Jid>(),
            format!(
                "{}@{}/{}",
                p.local, self.settings.domain, self.settings.resource
            )
            .parse::<Jid>(),
        ) else {
            return;
        };
        let mut receipt = Message::new(Some(to));
        receipt.from = Some(from);
        receipt.payloads.push(Received { id: id.clone() }.into());
        if let Err(e) = self.out.send(Stanza::Message(receipt)).await {
            tracing::debug!(error = %e, "receipt not sent");
        }
    }

    /// Tells an XMPP sender that its message did not reach Teams.
    pub(super) async fn bounce_to_xmpp(&self, p: &ToTeams, condition: DefinedCondition, why: &str) {
        bounce(self.out.as_ref(), &self.settings.domain, p, condition, why).await;
    }
}

/// Tells the XMPP sender of `p` (to our user of `domain`) that it was not
/// delivered, and why: the error answers the message as the contact sent it.
pub(crate) async fn bounce(
    out: &dyn crate::bridge::XmppOut,
    domain: &str,
    p: &ToTeams,
    condition: DefinedCondition,
    why: &str,
) {
    let (Ok(contact), Ok(ours)) = (
        p.remote_full.parse::<Jid>(),
        format!("{}@{domain}", p.local).parse::<Jid>(),
    ) else {
        return;
    };
    let mut sent = Message::new_with_type(MessageType::Chat, Some(ours));
    sent.from = Some(contact);
    sent.id = p.id.clone().map(Id);
    crate::bridge::reply_error(
        out,
        &Stanza::Message(sent),
        condition,
        ErrorType::Cancel,
        why,
    )
    .await;
}
