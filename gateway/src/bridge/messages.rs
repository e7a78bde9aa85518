//! 1:1 messages both ways, through the durable outbox: each message accepted
//! from either side is written there before anything else happens, then
//! delivered at least once by a worker that keeps each conversation in order,
//! and de-duplicated where it enters (XMPP id / origin-id, Graph message id).
//!
//! XMPP → Teams: into the 1:1 chat between the contact's shadow account and
//! the Teams user (created once, remembered), sent with the shadow account's
//! delegated token; an XEP-0184 receipt when Graph accepts it, a stanza
//! error saying why when it cannot. A retry after a crash first looks in the
//! chat for the message, so Graph's accepting it just before the crash does
//! not make it twice.
//!
//! Teams → XMPP: learned from change notifications on the shadow accounts'
//! chats and from a reconciliation poll (after missed notifications,
//! restarts, lapsed subscriptions), never echoing what the shadow account sent
//! itself; sent as a `chat` message from the Teams user's JID with the Graph
//! message id as id and origin-id. A remote server that stays unreachable
//! past the expiry makes a notice in the Teams chat: never silence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Notify;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::ns;
use xmpp_parsers::receipts::Received;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use xmpp_parsers::stanza_id::OriginId;

use super::contacts::{Contacts, ShadowSignIn};
use super::directory::Directory;
use super::metrics::BridgeMetrics;
use super::throttle::Throttle;
use super::{XmppOut, text};
use crate::graph::api::{Chat, ChatMessage, epoch_millis_of, epoch_of};
use crate::graph::subscriptions::{Subscriptions, Want};
use crate::graph::webhook::Notification;
use crate::graph::{GraphClient, GraphError, UserCredential};
use crate::s2s::{SendError, Stanza};
use crate::store::{
    Direction, Epoch, OutboxItem, OutboxPayload, Store, StoreError, ToTeams, ToXmpp, now,
};

/// Outbox items delivered at once (different conversations only).
const CONCURRENCY: usize = 8;
/// How many of a chat's newest messages the crash check reads.
const RECENT: u32 = 50;
/// How far behind the newest message read a chat's mark stays.
const MARK_LAG_MS: i64 = 10_000;
/// A chat whose read failed is read again after this.
const UNREAD_RETRY: Duration = Duration::from_secs(2);
/// How many sent message ids are remembered (forgotten all at once when full).
const SENT_REMEMBERED: usize = 10_000;
/// How far back (pages of 50) one reconciliation pass reads a chat.
const RECONCILE_PAGES: usize = 40;
/// How long a message sent to XMPP is remembered in case it bounces.
const BOUNCE_WINDOW: Duration = Duration::from_secs(600);
/// How long a claimed change notification stays ours.
const LEASE_SECS: i64 = 120;
/// How often every shadow account's chats are listed for chats Teams users
/// started (notifications name them sooner; this covers what they missed).
const DISCOVER_EVERY: Duration = Duration::from_secs(15 * 60);
/// How long a chat found not to be bridged is left alone before it is looked
/// at again (its Teams user may join the allow list).
const FOREIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// How long the dedupe key of a delivered message is kept (at least twice the
/// expiry): repeats come within minutes, and the table must not grow for ever.
const KEYS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Graph's limit for chat-message subscriptions.
const SUBSCRIPTION_LIFETIME: Duration = Duration::from_secs(55 * 60);

/// A message handed to s2s: (remote bare JID, XMPP id = Graph message id).
type InFlightKey = (String, String);

/// A message sent to XMPP, kept a while in case it bounces.
struct InFlight {
    payload: ToXmpp,
    at: Instant,
    /// Still waiting for the peer to take it: a bounce now is kept for when
    /// it does (if it does not, the outbox sends it again, and the bounce of
    /// that attempt is not acted on twice).
    sending: bool,
    bounce: Option<Message>,
}

/// A conversation: a remote contact and a Teams user (object id).
fn conversation(remote: &str, user_id: &str) -> String {
    format!("{remote}|{user_id}")
}

/// The outbox queue of one direction of a conversation: each direction keeps
/// its own order, and a message held up one way does not hold up the other.
fn queue(direction: Direction, conversation: &str) -> String {
    format!("{direction}:{conversation}")
}

fn chat_key(conversation: &str) -> String {
    format!("chat:{conversation}")
}

const CONV_PREFIX: &str = "conv:";
fn conv_key(chat_id: &str) -> String {
    format!("{CONV_PREFIX}{chat_id}")
}

fn seen_key(chat_id: &str) -> String {
    format!("seen:{chat_id}")
}

/// The dedupe key of a Graph chat message (ids are unique within a chat only).
fn graph_key(chat_id: &str, message_id: &str) -> String {
    format!("graph:{chat_id}:{message_id}")
}

/// Next try after `attempts` failures: 2 s doubling to 5 minutes.
fn backoff(attempts: i64) -> i64 {
    2i64.saturating_pow(attempts.clamp(1, 20) as u32).min(300)
}

/// Why a chat could not be read.
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Shadow(#[from] super::shadow::ShadowError),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// What became of one delivery attempt.
enum Outcome {
    Delivered,
    Retry,
    /// Cannot be delivered: tell the sender.
    Failed(DefinedCondition, String),
}

pub struct Settings {
    pub domain: String,
    pub resource: String,
    pub expiry: Duration,
    /// How often chats are read for what notifications missed.
    pub reconcile: Duration,
}

pub struct Messages {
    settings: Settings,
    graph: Arc<GraphClient>,
    store: Arc<Store>,
    directory: Directory,
    contacts: Arc<Contacts>,
    out: Arc<dyn XmppOut>,
    throttle: Arc<Throttle>,
    subscriptions: Option<Arc<Subscriptions>>,
    metrics: BridgeMetrics,
    /// Wakes the delivery worker (new outbox items).
    wake: Notify,
    /// Wakes the notification consumer (the webhook stored some).
    notified: Arc<Notify>,
    /// Wakes the reconciliation poll (a lifecycle `missed`).
    reconcile_now: Notify,
    /// Messages recently handed to s2s, by id, in case they bounce.
    in_flight: Mutex<HashMap<InFlightKey, InFlight>>,
    /// Graph ids of messages the shadow accounts sent lately: their change
    /// notifications are not worth a read of the chat.
    sent_by_us: Mutex<std::collections::HashSet<String>>,
    /// One chat is read at a time (notifications and the poll alike).
    reading: tokio::sync::Mutex<()>,
    /// Conversations whose first delivery since the start was checked
    /// against the chat (a crash may have come between Graph and the store).
    checked: Mutex<std::collections::HashSet<String>>,
    /// Chats of shadow accounts that are not a bridged 1:1 chat (group chats,
    /// users off the allow list), and when that was found.
    foreign: Mutex<HashMap<String, Instant>>,
}

impl Messages {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        graph: Arc<GraphClient>,
        store: Arc<Store>,
        directory: Directory,
        contacts: Arc<Contacts>,
        out: Arc<dyn XmppOut>,
        throttle: Arc<Throttle>,
        subscriptions: Option<Arc<Subscriptions>>,
        notified: Arc<Notify>,
        metrics: BridgeMetrics,
    ) -> Self {
        Self {
            settings,
            graph,
            store,
            directory,
            contacts,
            out,
            throttle,
            subscriptions,
            metrics,
            wake: Notify::new(),
            notified,
            reconcile_now: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
            checked: Mutex::new(std::collections::HashSet::new()),
            foreign: Mutex::new(HashMap::new()),
            reading: tokio::sync::Mutex::new(()),
            sent_by_us: Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn expires_at(&self) -> Epoch {
        now() + self.settings.expiry.as_secs() as i64
    }

    async fn reply_error(
        &self,
        m: &Message,
        condition: DefinedCondition,
        type_: ErrorType,
        text: &str,
    ) {
        super::reply_error(
            self.out.as_ref(),
            &Stanza::Message(m.clone()),
            condition,
            type_,
            text,
        )
        .await;
    }

    // XMPP → Teams ------------------------------------------------------------------

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

    /// The chat between a contact's shadow account and a Teams user.
    async fn chat(
        &self,
        conv: &str,
        shadow: &UserCredential,
        shadow_id: &str,
        user_id: &str,
    ) -> Result<String, GraphError> {
        if let Ok(Some(chat_id)) = self.store.get_cursor(&chat_key(conv)).await {
            return Ok(chat_id);
        }
        let chat = self
            .graph
            .one_on_one_chat(shadow, shadow_id, user_id)
            .await?;
        // Graph answers with the chat the Teams user may have started first:
        // what they wrote before the contact did is read too.
        if let Err(e) = self.remember_chat(&chat.id, conv).await {
            tracing::warn!(error = %e, "cannot remember a chat");
        }
        self.watch(shadow, shadow_id).await;
        Ok(chat.id)
    }

    /// Records a bridged chat: its conversation both ways, and — unless the
    /// chat is read already — the mark from which its messages are read: the
    /// expiry back (older ones would have been given up on by now).
    async fn remember_chat(&self, chat_id: &str, conv: &str) -> Result<(), StoreError> {
        if self.store.get_cursor(&seen_key(chat_id)).await?.is_none() {
            let read_from = (now() - self.settings.expiry.as_secs() as i64) * 1000;
            self.store
                .set_cursor(&seen_key(chat_id), &read_from.to_string())
                .await?;
        }
        self.store.set_cursor(&conv_key(chat_id), conv).await?;
        self.store.set_cursor(&chat_key(conv), chat_id).await
    }

    fn is_foreign(&self, chat_id: &str) -> bool {
        self.foreign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(chat_id)
            .is_some_and(|at| at.elapsed() < FOREIGN_FOR)
    }

    fn mark_foreign(&self, chat_id: &str) {
        let mut foreign = self.foreign.lock().unwrap_or_else(|e| e.into_inner());
        foreign.retain(|_, at| at.elapsed() < FOREIGN_FOR);
        foreign.insert(chat_id.to_owned(), Instant::now());
    }

    /// Takes on a chat a Teams user started with a shadow account, when it
    /// is the 1:1 chat of a Teams user on the allow list and the account's
    /// contact; `Ok(true)` when the chat is (now) bridged. `listed`: the chat
    /// as a listing gave it (with its members), else it is read.
    async fn adopt(
        &self,
        chat_id: &str,
        account: &ShadowSignIn,
        listed: Option<&Chat>,
    ) -> Result<bool, CatchUpError> {
        if self.store.get_cursor(&conv_key(chat_id)).await?.is_some() {
            return Ok(true);
        }
        if self.is_foreign(chat_id) {
            return Ok(false);
        }
        let user_id = match self.other_member(chat_id, account, listed).await {
            Ok(user_id) => user_id.filter(|id| self.directory.local_of(id).is_some()),
            // Gone, or not the shadow account's to read: not ours.
            Err(e) if matches!(e.status(), Some(403 | 404)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(user_id) = user_id else {
            self.mark_foreign(chat_id);
            return Ok(false);
        };
        self.remember_chat(chat_id, &conversation(&account.jid, &user_id))
            .await?;
        tracing::info!(%chat_id, remote = %account.jid, %user_id, "a chat started in Teams is bridged");
        Ok(true)
    }

    /// The other member of a 1:1 chat of the shadow account (None for any
    /// other kind of chat).
    async fn other_member(
        &self,
        chat_id: &str,
        account: &ShadowSignIn,
        listed: Option<&Chat>,
    ) -> Result<Option<String>, GraphError> {
        let chat = match listed {
            Some(chat) => chat.clone(),
            None => self.graph.get_chat(&account.credential, chat_id).await?,
        };
        if chat.chat_type != "oneOnOne" {
            return Ok(None);
        }
        let members = match chat.members {
            Some(members) => members,
            None => {
                self.graph
                    .chat_members(&account.credential, chat_id)
                    .await?
            }
        };
        Ok(members
            .into_iter()
            .filter_map(|m| m.user_id)
            .find(|id| !id.eq_ignore_ascii_case(&account.object_id)))
    }

    /// The shadow account a chat-message subscription was made as.
    async fn subscriber(
        &self,
        subscription_id: &str,
    ) -> Result<Option<ShadowSignIn>, CatchUpError> {
        let Some(subscriptions) = &self.subscriptions else {
            return Ok(None);
        };
        let Some(shadow_id) = subscriptions
            .held()
            .await
            .into_iter()
            .find(|s| s.id == subscription_id)
            .and_then(|s| {
                s.resource
                    .strip_prefix("/users/")?
                    .strip_suffix("/chats/getAllMessages")
                    .map(str::to_owned)
            })
        else {
            return Ok(None);
        };
        Ok(self
            .contacts
            .all_sign_ins()
            .await?
            .into_iter()
            .find(|a| a.object_id.eq_ignore_ascii_case(&shadow_id)))
    }

    /// Watches the chats of a contact's shadow account (a Teams user may
    /// write to it first).
    pub async fn watch_contact(&self, remote: &str) {
        match self.contacts.existing_credential(remote).await {
            Ok(Some((shadow_id, shadow))) => self.watch(&shadow, &shadow_id).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(%remote, error = %e, "cannot read the shadow account"),
        }
    }

    /// Lists every shadow account's chats for chats Teams users started (each
    /// taken on by `adopt`, which knows the ones already bridged), and
    /// watches each account's chats.
    pub async fn discover(&self) {
        let accounts = match self.contacts.all_sign_ins().await {
            Ok(accounts) => accounts,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shadow accounts");
                return;
            }
        };
        for account in accounts {
            self.watch(&account.credential, &account.object_id).await;
            let chats = match self
                .graph
                .chats_of(&account.credential, &account.object_id)
                .await
            {
                Ok(chats) => chats,
                Err(e) => {
                    tracing::warn!(upn = %account.credential.upn, error = %e, "cannot list a shadow account's chats");
                    continue;
                }
            };
            for chat in chats.iter().filter(|c| c.chat_type == "oneOnOne") {
                if let Err(e) = self.adopt(&chat.id, &account, Some(chat)).await {
                    tracing::warn!(chat = %chat.id, error = %e, "cannot look at a chat");
                }
            }
        }
    }

    /// Subscribes to the shadow account's chats (once), when notifications are on.
    async fn watch(&self, shadow: &UserCredential, shadow_id: &str) {
        let Some(subscriptions) = &self.subscriptions else {
            return;
        };
        let resource = format!("/users/{shadow_id}/chats/getAllMessages");
        if subscriptions
            .held()
            .await
            .iter()
            .any(|s| s.resource == resource)
        {
            return;
        }
        let want = Want {
            resource,
            change_type: "created".into(),
            lifetime: SUBSCRIPTION_LIFETIME,
            as_user: Some(shadow.clone()),
        };
        if let Err(e) = subscriptions.create(&self.graph, want).await {
            tracing::warn!(upn = %shadow.upn, error = %e, "no change notifications for the shadow account's chats; the poll stands in");
        }
    }

    async fn to_teams(&self, item: &OutboxItem, p: &ToTeams) -> Outcome {
        let (shadow_id, shadow) = match self.contacts.credential(&p.remote, &p.local).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(remote = %p.remote, error = %e, "no shadow account to send as; retrying");
                return Outcome::Retry;
            }
        };
        let chat_id = match self
            .chat(
                &conversation(&p.remote, &p.user_id),
                &shadow,
                &shadow_id,
                &p.user_id,
            )
            .await
        {
            Ok(id) => id,
            Err(e) => return graph_outcome(e),
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
                        && epoch_of(&m.created_date_time) >= queued_at - 1
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
            Err(e) => graph_outcome(e),
        }
    }

    async fn send_receipt(&self, p: &ToTeams) {
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
    async fn bounce_to_xmpp(&self, p: &ToTeams, condition: DefinedCondition, why: &str) {
        let (Ok(contact), Ok(ours)) = (
            p.remote_full.parse::<Jid>(),
            format!("{}@{}", p.local, self.settings.domain).parse::<Jid>(),
        ) else {
            return;
        };
        // The error answers the message as the contact sent it.
        let mut sent = Message::new_with_type(MessageType::Chat, Some(ours));
        sent.from = Some(contact);
        sent.id = p.id.clone().map(Id);
        super::reply_error(
            self.out.as_ref(),
            &Stanza::Message(sent),
            condition,
            ErrorType::Cancel,
            why,
        )
        .await;
    }

    // Teams → XMPP ------------------------------------------------------------------

    /// A chat message seen in Teams: queued for XMPP if it belongs to a bridged
    /// chat and was written by the Teams user (not echoed back); `true` when
    /// it was new to the outbox.
    async fn take_from_teams(&self, chat_id: &str, m: &ChatMessage) -> Result<bool, StoreError> {
        if m.message_type.as_deref().is_some_and(|t| t != "message") {
            return Ok(false);
        }
        let Some(conv) = self.store.get_cursor(&conv_key(chat_id)).await? else {
            return Ok(false);
        };
        let Some((remote, user_id)) = conv.split_once('|') else {
            return Ok(false);
        };
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
            conversation: queue(Direction::ToXmpp, &conv),
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

    fn remember_sent(&self, chat_id: &str, message_id: &str) {
        let mut sent = self.sent_by_us.lock().unwrap_or_else(|e| e.into_inner());
        if sent.len() >= SENT_REMEMBERED {
            sent.clear();
        }
        sent.insert(graph_key(chat_id, message_id));
    }

    fn was_sent_by_us(&self, chat_id: &str, message_id: &str) -> bool {
        self.sent_by_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&graph_key(chat_id, message_id))
    }

    /// Posts a notice into the Teams chat as the shadow account (it is not
    /// echoed: the shadow account wrote it).
    async fn notice_in_teams(&self, remote: &str, local: &str, chat_id: &str, notice: &str) {
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

    async fn to_xmpp(&self, p: &ToXmpp) -> Outcome {
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
        self.notice_in_teams(
            &p.remote,
            &p.local,
            &p.chat_id,
            &format!("Not delivered to {}: {why}", p.remote),
        )
        .await;
    }

    // Workers -----------------------------------------------------------------------

    /// Delivers what is due, for ever.
    pub async fn deliver(self: Arc<Self>) {
        loop {
            let due = match self.store.due(now(), 64).await {
                Ok(due) => due,
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

    fn prune_in_flight(&self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, f| f.at.elapsed() < BOUNCE_WINDOW);
    }

    async fn deliver_one(&self, item: OutboxItem) {
        let direction = item.direction().as_str();
        let outcome = if now() > item.expires_at {
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
                    OutboxPayload::ToXmpp(p) => {
                        self.notice_in_teams(
                            &p.remote,
                            &p.local,
                            &p.chat_id,
                            &format!("Not delivered to {}: {why}", p.remote),
                        )
                        .await;
                    }
                }
                self.store.expire(item.seq).await
            }
        };
        if let Err(e) = stored {
            // Delivered but not recorded: it is sent again, and de-duplicated.
            tracing::warn!(error = %e, "cannot record a delivery");
        }
    }

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
    async fn read_notified(
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

    async fn on_lifecycle(&self, n: &Notification) {
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

    /// Reads every bridged chat for messages not seen yet, for ever.
    /// Chats Teams users started are looked for at the start, after
    /// notifications may have been missed, and every `DISCOVER_EVERY`.
    pub async fn reconcile(self: Arc<Self>) {
        let mut discovered: Option<Instant> = None;
        loop {
            if discovered.is_none_or(|at| at.elapsed() >= DISCOVER_EVERY) {
                self.discover().await;
                discovered = Some(Instant::now());
            }
            self.reconcile_once().await;
            if tokio::time::timeout(self.settings.reconcile, self.reconcile_now.notified())
                .await
                .is_ok()
            {
                discovered = None;
            }
        }
    }

    /// One pass over every bridged chat; returns how many messages it queued.
    pub async fn reconcile_once(&self) -> usize {
        let chats = match self.store.cursors_with_prefix(CONV_PREFIX).await {
            Ok(chats) => chats,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the bridged chats");
                return 0;
            }
        };
        let mut queued = 0;
        for (key, _) in chats {
            let chat_id = &key[CONV_PREFIX.len()..];
            match self.catch_up(chat_id).await {
                Ok(n) => queued += n,
                Err(e) => tracing::warn!(error = %e, %chat_id, "cannot read a chat"),
            }
        }
        queued
    }

    /// Queues a chat's messages from where it was last read, oldest first,
    /// and moves the mark; one chat read at a time, so that the outbox
    /// takes them in the chat's order. Returns how many were new.
    async fn catch_up(&self, chat_id: &str) -> Result<usize, CatchUpError> {
        let _one_reader = self.reading.lock().await;
        let Some(conv) = self.store.get_cursor(&conv_key(chat_id)).await? else {
            return Ok(0);
        };
        let Some((remote, user_id)) = conv.split_once('|') else {
            return Ok(0);
        };
        // A user off the allow list is not read for.
        if self.directory.local_of(user_id).is_none() {
            return Ok(0);
        }
        let Some((_, shadow)) = self.contacts.existing_credential(remote).await? else {
            return Ok(0);
        };
        let seen: i64 = self
            .store
            .get_cursor(&seen_key(chat_id))
            .await?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let messages = self
            .graph
            .chat_messages_since(&shadow, chat_id, seen, RECONCILE_PAGES)
            .await?;
        let mut newest = seen;
        let mut queued = 0;
        // Queued oldest first, by creation (ties by id, which Graph makes from the time).
        let mut messages = messages;
        messages.sort_by(|a, b| {
            (epoch_millis_of(&a.created_date_time), &a.id)
                .cmp(&(epoch_millis_of(&b.created_date_time), &b.id))
        });
        for m in &messages {
            let at = epoch_millis_of(&m.created_date_time);
            // The mark's own millisecond is read again: the outbox knows what it has.
            if at < seen {
                continue;
            }
            newest = newest.max(at);
            if self.take_from_teams(chat_id, m).await? {
                queued += 1;
            }
        }
        // The mark stays ten seconds behind the newest message seen: a message
        // Graph lists a little late is still read (the outbox knows the rest).
        let mark = (newest - MARK_LAG_MS).max(seen);
        if mark > seen {
            self.store
                .set_cursor(&seen_key(chat_id), &mark.to_string())
                .await?;
        }
        Ok(queued)
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

/// `chats('19:…')/messages('1732…')` → (chat id, message id).
fn parse_resource(resource: &str) -> Option<(String, String)> {
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

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    crate::s2s::fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a Graph failure means for a message: try again, or tell the sender.
fn graph_outcome(e: GraphError) -> Outcome {
    if e.is_transient() {
        return Outcome::Retry;
    }
    match e.status() {
        Some(404) => Outcome::Failed(
            DefinedCondition::ItemNotFound,
            "the Teams user or chat does not exist".into(),
        ),
        Some(403) => Outcome::Failed(
            DefinedCondition::Forbidden,
            "Teams refused the message".into(),
        ),
        Some(401) => Outcome::Retry,
        Some(_) => Outcome::Failed(
            DefinedCondition::ServiceUnavailable,
            format!("Teams refused the message: {e}"),
        ),
        None => Outcome::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_resources_and_timestamps() {
        assert_eq!(
            parse_resource("chats('19:abc@unq.gbl.spaces')/messages('1732551817000')"),
            Some(("19:abc@unq.gbl.spaces".into(), "1732551817000".into()))
        );
        assert_eq!(
            parse_resource("/chats/19:abc/messages/17"),
            Some(("19:abc".into(), "17".into()))
        );
        assert_eq!(parse_resource("users('x')"), None);
        assert_eq!(epoch_of("1970-01-01T00:00:00Z"), 0);
        assert_eq!(epoch_of("2026-12-31T23:59:59.123Z"), 1_798_761_599);
        assert_eq!(epoch_of("2000-02-29T00:00:00Z"), 951_782_400);
        assert_eq!(epoch_millis_of("2000-02-29T00:00:00.5Z"), 951_782_400_500);
        assert_eq!(
            epoch_millis_of("2000-02-29T00:00:00.1234567Z"),
            951_782_400_123
        );
        assert_eq!(backoff(1), 2);
        assert_eq!(backoff(30), 300);
    }
}
