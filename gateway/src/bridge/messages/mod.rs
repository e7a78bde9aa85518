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
//!
//! `outbox` (keys and the delivery worker), `to_teams`, `to_xmpp`, `chats`
//! (find, adopt, watch, catch up) and `notifications` each add their part of
//! [`Messages`]; this file holds its state and what they share.

mod chats;
mod notifications;
mod outbox;
mod to_teams;
pub(crate) use to_teams::bounce;
mod to_xmpp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use xmpp_parsers::message::Message;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::bridge::XmppOut;
use crate::bridge::contacts::Contacts;
use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::throttle::Throttle;
use crate::bridge::users::directory::Directory;
use crate::graph::subscriptions::Subscriptions;
use crate::graph::{GraphClient, GraphError};
use crate::store::{Epoch, Store, StoreError, ToXmpp, now};
use xmppfed_config::ChatNotifications;

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

/// Why a chat could not be read.
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Shadow(#[from] crate::bridge::contacts::shadow::ShadowError),
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
    /// How often chats are read for what notifications missed...
    pub reconcile: Duration,
    /// ...and how often while no notifications come (none configured, or
    /// Graph refused the subscription).
    pub poll: Duration,
    /// Least time between two chats of a sweep: the sweep keeps to half the
    /// chat-message read budget, so notified reads always find the rest.
    pub sweep_gap: Duration,
    /// Per shadow account, or one subscription for the tenant.
    pub chat_notifications: ChatNotifications,
}

pub struct Messages {
    settings: Settings,
    /// The shadow accounts' tenant, where their chats are.
    graph: Arc<GraphClient>,
    /// The Teams users' tenant id when it is not the shadow accounts'.
    home_tenant: Option<String>,
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
    /// Told once the subscriptions held before a restart are back: the
    /// first discovery waits for it, and so reads what lapsed meanwhile.
    subscriptions_restored: Notify,
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
    /// Contacts told that Teams is still provisioning their account (once each).
    told_provisioning: Mutex<std::collections::HashSet<String>>,
    /// When Graph last refused a per-account subscription for the tenant's quota.
    /// Until when no chat subscription is asked for, after Graph refused one.
    subscribe_after: Mutex<Option<Instant>>,
}

impl Messages {
    /// `notified` is what the webhook wakes when it has stored notifications.
    pub fn new(
        services: &crate::bridge::Services,
        settings: Settings,
        contacts: Arc<Contacts>,
        throttle: Arc<Throttle>,
        subscriptions: Option<Arc<Subscriptions>>,
        notified: Arc<Notify>,
    ) -> Self {
        Self {
            settings,
            graph: services.shadow_graph.clone(),
            home_tenant: services.home_tenant.clone(),
            store: services.store.clone(),
            directory: services.directory.clone(),
            contacts,
            out: services.out.clone(),
            throttle,
            subscriptions,
            metrics: services.metrics.clone(),
            wake: Notify::new(),
            notified,
            reconcile_now: Notify::new(),
            subscriptions_restored: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
            checked: Mutex::new(std::collections::HashSet::new()),
            foreign: Mutex::new(HashMap::new()),
            reading: tokio::sync::Mutex::new(()),
            sent_by_us: Mutex::new(std::collections::HashSet::new()),
            told_provisioning: Mutex::new(std::collections::HashSet::new()),
            subscribe_after: Mutex::new(None),
        }
    }

    fn expires_at(&self) -> Epoch {
        now() + self.settings.expiry.as_secs() as i64
    }
}

fn random_id() -> String {
    crate::random::hex(8)
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
