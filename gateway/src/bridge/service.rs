//! The bridge service: takes every stanza the s2s layer hands over and does
//! what our domain's server must — subscriptions by policy (RFC 6121 §3),
//! probes answered only for subscribed contacts, remote presence driving
//! shadow accounts, vcard-temp answered from Graph, answers to our own IQs —
//! and runs the presence poller, the shadow-account presence worker and the
//! removal of unused shadow accounts.

use std::sync::Arc;
use std::time::Duration;

use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::MessageType;
use xmpp_parsers::presence::{Presence, Type};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmppfed_config::SubscriptionPolicy;

use xmppfed_config::{ChatNotifications, GatewayConfig, GraphConfig, OutOfOfficeAs};

use crate::bridge::contacts::Contacts;
use crate::bridge::contacts::cards::Cards;
use crate::bridge::contacts::credentials::CredentialCipher;
use crate::bridge::contacts::roster::{Roster, Subscription};
use crate::bridge::contacts::shadow::ShadowError;
use crate::bridge::contacts::shadow::ShadowSettings;
use crate::bridge::iq::Requests;
use crate::bridge::messages::{self, Messages};
use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::presence::OutOfOffice;
use crate::bridge::presence::XmppPresence;
use crate::bridge::presence::contact::{ContactPresence, Renewal};
use crate::bridge::presence::teams::PollInterval;
use crate::bridge::presence::teams::{self, TeamsPresence};
use crate::bridge::throttle::Throttle;
use crate::bridge::users::directory::Directory;
use crate::bridge::{Services, XmppOut, reply_error, send_patiently};
use crate::graph::GraphClient;
use crate::graph::subscriptions::Subscriptions;
use crate::s2s::stanza::Stanza;
use crate::s2s::{Inbox, Incoming};
use crate::store::now;
use crate::store::{Epoch, StoreError};

/// How often unused shadow accounts are looked for.
const JANITOR_EVERY: Duration = Duration::from_secs(3600);

/// What the bridge needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub domain: String,
    pub resource: String,
    pub policy: SubscriptionPolicy,
    /// Our application (client) id: the presence session id on shadow accounts.
    pub session_id: String,
    pub session: Duration,
    /// Keep-alive of an Available presence session (before Graph's 5-minute timeout).
    pub keep_alive: Duration,
    pub poll: PollInterval,
    pub out_of_office: OutOfOffice,
    pub card_ttl: Duration,
    /// Shadow accounts unused this long are removed (`None`: kept for ever).
    pub remove_unused_after: Option<Duration>,
    pub shadow: ShadowSettings,
    /// Shared with the configuration reload, which replaces its limits.
    pub throttle: Arc<Throttle>,
    pub message_expiry: Duration,
    /// How often chats are read for what notifications missed, and how
    /// often without notifications (none configured, or Graph refused them).
    pub reconcile: Duration,
    pub chat_poll: Duration,
    /// Least time between two chats of a reconciliation sweep.
    pub sweep_gap: Duration,
    pub chat_notifications: ChatNotifications,
}

impl Settings {
    pub fn from_config(config: &GatewayConfig, graph: &GraphConfig) -> Self {
        let p = &config.presence;
        let days = u64::from(config.shadow_accounts.remove_unused_after_days);
        Settings {
            domain: config.xmpp.domain.clone(),
            resource: p.resource.clone(),
            policy: p.subscriptions,
            // setPresence's session is the calling app's id: the app of the
            // tenant the shadow accounts live in.
            session_id: config
                .shadow_accounts
                .tenant
                .as_ref()
                .unwrap_or(graph)
                .client_id
                .clone(),
            session: Duration::from_secs(u64::from(p.session_minutes) * 60),
            keep_alive: Duration::from_secs(u64::from(p.keep_alive_secs)),
            poll: PollInterval::new(
                Duration::from_millis(p.poll_interval_ms),
                Duration::from_millis(p.max_poll_interval_ms),
            ),
            out_of_office: match p.out_of_office {
                OutOfOfficeAs::ExtendedAway => OutOfOffice::ExtendedAway,
                OutOfOfficeAs::Unavailable => OutOfOffice::Unavailable,
            },
            card_ttl: Duration::from_secs(p.card_cache_secs),
            remove_unused_after: (days > 0).then(|| Duration::from_secs(days * 86_400)),
            shadow: ShadowSettings {
                upn_domain: config
                    .shadow_accounts
                    .upn_domain
                    .clone()
                    .unwrap_or_else(|| format!("shadow.{}", config.xmpp.domain)),
                licence_sku: config.shadow_accounts.licence_sku.clone(),
                display_name_suffix: config.shadow_accounts.display_name_suffix.clone(),
                usage_location: config.shadow_accounts.usage_location.clone(),
                administrative_unit: config.shadow_accounts.administrative_unit.clone(),
            },
            throttle: Arc::new(Throttle::new(config.throttle.clone())),
            message_expiry: Duration::from_secs(config.messages.expiry_secs),
            reconcile: Duration::from_secs(config.messages.reconcile_interval_secs),
            chat_poll: Duration::from_secs(config.messages.poll_interval_secs),
            sweep_gap: sweep_gap(graph.limits.chat_message_read_per_second),
            chat_notifications: config.webhook.chat_notifications,
        }
    }
}

/// Half the chat-message read budget for the sweep: at 20 reads/s, one chat
/// every 100 ms, 10,000 chats in 16.7 minutes.
fn sweep_gap(reads_per_second: u32) -> Duration {
    Duration::from_secs(2) / reads_per_second.max(1)
}

/// Everything the bridge is made of.
struct Parts {
    domain: String,
    resource: String,
    policy: SubscriptionPolicy,
    graph: Arc<GraphClient>,
    directory: Directory,
    roster: Roster,
    cards: Arc<Cards>,
    out: Arc<dyn XmppOut>,
    requests: Arc<Requests>,
    teams: Arc<TeamsPresence>,
    contacts: Arc<Contacts>,
    contact_presence: Arc<ContactPresence>,
    messages: Arc<Messages>,
    remove_unused_after: Option<Duration>,
    metrics: BridgeMetrics,
    /// Work a stanza starts beside the inbox (vCard answers, probe answers,
    /// a new subscriber's follow-ups) runs at most this many at once: a
    /// flood of requests cannot turn into a flood of Graph calls.
    side_work: Arc<tokio::sync::Semaphore>,
}

/// How much side work runs at once.
const SIDE_WORK: usize = 32;

pub struct Bridge {
    p: Parts,
}

/// Aborts the task it holds when dropped (with the supervisor that owns it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one of the bridge's background loops; one that panics is logged and
/// started again after a pause, so a bug in one loop does not silently stop
/// presence or messages. A loop that returns has finished its work.
fn supervise<F, Fut>(name: &'static str, start: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    supervise_with_pause(name, Duration::from_secs(5), start)
}

fn supervise_with_pause<F, Fut>(
    name: &'static str,
    pause: Duration,
    start: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let mut task = AbortOnDrop(tokio::spawn(start()));
            match (&mut task.0).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    tracing::error!(
                        task = name,
                        ?pause,
                        "a bridge task panicked; starting it again"
                    )
                }
                Err(_) => return,
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// The parts of a presence stanza the handlers need, parsed once.
struct Addressed {
    /// The Teams user's JID local part and object id (None: not on the allow list).
    local: String,
    user: Option<String>,
    /// Our user's bare JID.
    ours: BareJid,
    /// The contact's bare JID (lower-cased) and resource.
    remote: String,
    remote_jid: Jid,
    resource: String,
}

impl Bridge {
    /// Builds the bridge on its Graph client, directory, store and XMPP
    /// output; the contact relationships are read from the store here.
    /// `notified` is what the webhook wakes when it has stored notifications.
    pub async fn build(
        settings: Settings,
        services: Services,
        cipher: CredentialCipher,
        subscriptions: Option<Arc<Subscriptions>>,
        notified: Arc<tokio::sync::Notify>,
    ) -> Result<Arc<Self>, StoreError> {
        let Services {
            graph,
            shadow_graph,
            directory,
            store,
            out,
            metrics,
            ..
        } = services.clone();
        let roster = Roster::load(store.clone()).await?;
        let cards = Arc::new(Cards::new(directory.clone(), settings.card_ttl));
        let requests = Arc::new(Requests::default());
        let throttle = settings.throttle.clone();
        let contacts = Arc::new(Contacts::new(
            &services,
            cipher,
            settings.shadow.clone(),
            requests.clone(),
            &settings.domain,
        ));
        let teams = Arc::new(TeamsPresence::new(
            graph.clone(),
            directory.clone(),
            roster.clone(),
            cards.clone(),
            out.clone(),
            teams::Settings {
                domain: settings.domain.clone(),
                resource: settings.resource.clone(),
                out_of_office: settings.out_of_office,
                interval: settings.poll.clone(),
            },
            metrics.clone(),
        ));
        let contact_presence = Arc::new(ContactPresence::new(
            shadow_graph,
            contacts.clone(),
            &settings.session_id,
            Renewal {
                session: settings.session,
                keep_alive: settings.keep_alive,
            },
            throttle.clone(),
            metrics.clone(),
        ));
        let messages = Arc::new(Messages::new(
            &services,
            messages::Settings {
                domain: settings.domain.clone(),
                resource: settings.resource.clone(),
                expiry: settings.message_expiry,
                reconcile: settings.reconcile,
                poll: settings.chat_poll,
                sweep_gap: settings.sweep_gap,
                chat_notifications: settings.chat_notifications,
            },
            contacts.clone(),
            throttle,
            subscriptions,
            notified,
        ));
        Ok(Arc::new(Self {
            p: Parts {
                domain: settings.domain,
                resource: settings.resource,
                policy: settings.policy,
                graph,
                directory,
                roster,
                cards,
                out,
                requests,
                teams,
                contacts,
                contact_presence,
                messages,
                remove_unused_after: settings.remove_unused_after,
                metrics,
                side_work: Arc::new(tokio::sync::Semaphore::new(SIDE_WORK)),
            },
        }))
    }

    /// Runs the bridge until the s2s layer closes `inbox`. Dropping the
    /// future (the bridge lease lost) stops every background loop with it:
    /// nothing of this bridge outlives it beside another replica's.
    pub async fn run(self: Arc<Self>, mut inbox: Inbox) {
        self.p.metrics.contacts(self.p.roster.len());
        let (teams, contacts, m) = (
            self.p.teams.clone(),
            self.p.contact_presence.clone(),
            self.p.messages.clone(),
        );
        let this = self.clone();
        let (m1, m2, m3, m4, m5) = (m.clone(), m.clone(), m.clone(), m.clone(), m);
        let tasks = [
            supervise("presence-poll", move || teams.clone().run()),
            supervise("shadow-presence", move || contacts.clone().run()),
            supervise("shadow-removal", move || {
                this.clone().remove_unused_shadows()
            }),
            supervise("message-delivery", move || m1.clone().deliver()),
            supervise("notifications", move || m2.clone().consume_notifications()),
            supervise("chat-reconciliation", move || m3.clone().reconcile()),
            supervise("graph-subscriptions", move || {
                m4.clone().keep_subscriptions()
            }),
            supervise("dedupe-keys", move || m5.clone().forget_old_keys()),
        ]
        .map(AbortOnDrop);
        self.probe_watched().await;
        while let Some(Incoming { stanza, ack }) = inbox.next().await {
            use futures::FutureExt;
            match std::panic::AssertUnwindSafe(self.handle(stanza))
                .catch_unwind()
                .await
            {
                // Handled (a message is in the outbox): the peer may forget it.
                Ok(()) => {
                    if let Some(ack) = ack {
                        ack.handled();
                    }
                }
                // Not acknowledged: the peer sends it again on its next stream.
                Err(_) => tracing::error!("handling a stanza panicked; it is not acknowledged"),
            }
        }
        drop(tasks);
    }

    /// After a start, asks every contact whose presence we receive for it, so
    /// that their shadow accounts show it again without them doing anything.
    async fn probe_watched(&self) {
        for (user, remote) in self.p.roster.watched_remotes() {
            let Some(local) = self.p.directory.local_of(&user) else {
                continue;
            };
            let (Ok(from), Ok(to)) = (
                format!("{local}@{}", self.p.domain).parse::<Jid>(),
                remote.parse::<Jid>(),
            ) else {
                continue;
            };
            let mut probe = Presence::new(Type::Probe);
            probe.from = Some(from);
            probe.to = Some(to);
            if let Err(e) = send_patiently(self.p.out.as_ref(), Stanza::Presence(probe)).await {
                tracing::debug!(%remote, error = %e, "probe not sent");
            }
        }
    }

    async fn remove_unused_shadows(self: Arc<Self>) {
        let Some(after) = self.p.remove_unused_after else {
            return;
        };
        loop {
            let before = now() - after.as_secs() as i64;
            match self.remove_unused_since(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "unused shadow accounts removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove unused shadow accounts"),
            }
            tokio::time::sleep(JANITOR_EVERY).await;
        }
    }

    /// Removes the shadow accounts not used since `before`; returns how many.
    pub async fn remove_unused_since(&self, before: Epoch) -> Result<usize, ShadowError> {
        // A contact someone still has a relationship with keeps its account
        // (and its chats), however long it has been offline.
        let roster = self.p.roster.clone();
        self.p
            .contacts
            .remove_unused(before, move |jid| roster.has_any(jid))
            .await
    }

    /// One stanza from a remote server to our domain.
    pub async fn handle(self: &Arc<Self>, stanza: Stanza) {
        match stanza {
            Stanza::Iq(iq) => self.on_iq(iq).await,
            Stanza::Presence(p) => self.on_presence(p).await,
            Stanza::Message(m) => match m.type_ {
                MessageType::Chat | MessageType::Normal => self.p.messages.from_xmpp(m).await,
                MessageType::Error => self.p.messages.bounced(&m).await,
                // Group chat and headlines have no place in a 1:1 chat.
                MessageType::Groupchat | MessageType::Headline => {}
            },
        }
    }

    async fn on_iq(self: &Arc<Self>, iq: Iq) {
        let Some(iq) = self.p.requests.resolve(iq) else {
            return;
        };
        match &iq {
            Iq::Result { .. } | Iq::Error { .. } => {}
            Iq::Get { payload, .. } if payload.is("vCard", xmpp_parsers::ns::VCARD) => {
                // A Graph read may take a while: the other stanzas do not
                // wait. Beyond the side-work limit the asker is told to wait.
                let Ok(permit) = self.p.side_work.clone().try_acquire_owned() else {
                    self.p.metrics.throttled("to-xmpp", "vcard");
                    reply_error(
                        self.p.out.as_ref(),
                        &Stanza::Iq(iq),
                        DefinedCondition::ResourceConstraint,
                        ErrorType::Wait,
                        "too many requests at once; ask again shortly",
                    )
                    .await;
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = this.p.cards.answer(&this.p.graph, &Stanza::Iq(iq)).await
                        && let Err(e) = this.p.out.send(reply).await
                    {
                        tracing::debug!(error = %e, "vCard answer not sent");
                    }
                });
            }
            _ => {
                reply_error(
                    self.p.out.as_ref(),
                    &Stanza::Iq(iq),
                    DefinedCondition::ServiceUnavailable,
                    ErrorType::Cancel,
                    "not supported for Teams users",
                )
                .await
            }
        }
    }

    fn address(&self, p: &Presence) -> Option<Addressed> {
        let to = p.to.as_ref()?;
        let from = p.from.as_ref()?;
        let local = to.node()?.as_str().to_owned();
        let remote_bare = from.to_bare();
        Some(Addressed {
            user: self.p.directory.id_of(&local),
            ours: to.to_bare(),
            remote: remote_bare.to_string().to_lowercase(),
            remote_jid: Jid::from(remote_bare),
            resource: from
                .resource()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            local,
        })
    }

    async fn on_presence(self: &Arc<Self>, p: Presence) {
        let Some(a) = self.address(&p) else {
            return;
        };
        match p.type_ {
            Type::Subscribe => self.on_subscribe(&a).await,
            Type::Subscribed => self.on_subscribed(&a).await,
            Type::Unsubscribe => self.on_unsubscribe(&a).await,
            Type::Unsubscribed => self.on_unsubscribed(&a).await,
            Type::Probe => self.on_probe(&a).await,
            Type::None | Type::Unavailable => {
                if let Some(user) = &a.user
                    && self.p.roster.get(user, &a.remote).to
                {
                    self.p
                        .contact_presence
                        .observe(&a.remote, &a.resource, &p, &a.local);
                }
            }
            Type::Error => {
                tracing::debug!(remote = %a.remote, local = %a.local, "presence error from a contact")
            }
        }
    }

    /// Sends a subscription-management presence from our user's bare JID.
    async fn send_typed(&self, type_: Type, a: &Addressed) {
        let mut p = Presence::new(type_);
        p.from = Some(Jid::from(a.ours.clone()));
        p.to = Some(a.remote_jid.clone());
        if let Err(e) = send_patiently(self.p.out.as_ref(), Stanza::Presence(p)).await {
            tracing::debug!(remote = %a.remote, error = %e, "presence not sent");
        }
    }

    async fn save(&self, user: &str, a: &Addressed, sub: Subscription) -> bool {
        match self.p.roster.set(user, &a.remote, sub).await {
            Ok(()) => {
                self.p.metrics.contacts(self.p.roster.len());
                true
            }
            Err(e) => {
                // Not recorded, not answered: the contact's server asks again.
                tracing::warn!(remote = %a.remote, local = %a.local, error = %e, "cannot record a contact relationship");
                false
            }
        }
    }

    /// A contact asks for our user's presence: approved by policy (for users
    /// on the allow list), recorded, answered from the bare JID, followed by
    /// the current presence and a request for the contact's own.
    async fn on_subscribe(self: &Arc<Self>, a: &Addressed) {
        let user = match (&a.user, self.p.policy) {
            (Some(user), SubscriptionPolicy::Approve) => user.clone(),
            // Off the allow list or refused: the same answer, nothing leaks.
            _ => return self.send_typed(Type::Unsubscribed, a).await,
        };
        let mut sub = self.p.roster.get(&user, &a.remote);
        // Asked again while still pending: our request may have been lost.
        let ask_back = !sub.to;
        sub.from = true;
        sub.pending_out |= ask_back;
        if !self.save(&user, a, sub).await {
            return;
        }
        self.send_typed(Type::Subscribed, a).await;
        // Graph may be slow: the other stanzas do not wait for what follows.
        let this = self.clone();
        let (remote, remote_jid, local) = (a.remote.clone(), a.remote_jid.clone(), a.local.clone());
        let ours = a.ours.clone();
        tokio::spawn(async move {
            // Waits its turn: this work must happen, only not all at once.
            let Ok(_permit) = this.p.side_work.clone().acquire_owned().await else {
                return;
            };
            if let Err(e) = this.p.teams.send_current(&user, &remote_jid).await {
                tracing::warn!(%local, error = %e, "cannot read presence for a new subscriber");
            }
            if ask_back {
                let mut p = Presence::new(Type::Subscribe);
                p.from = Some(Jid::from(ours));
                p.to = Some(remote_jid);
                let _ = send_patiently(this.p.out.as_ref(), Stanza::Presence(p)).await;
            }
            // Whoever subscribes to a Teams user gets a shadow account.
            match this.p.contacts.shadow_of(&remote, &local).await {
                // Its chats are watched: a Teams user may write first.
                Ok(_) => this.p.messages.watch_contact(&remote).await,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "cannot create the contact's shadow account")
                }
            }
        });
    }

    /// The contact approved our request for its presence.
    async fn on_subscribed(&self, a: &Addressed) {
        let Some(user) = &a.user else { return };
        let mut sub = self.p.roster.get(user, &a.remote);
        // Only an answer to our own request counts (RFC 6121 §3.1.6): an
        // unrequested `subscribed` must not make anyone a watched contact.
        if !sub.pending_out {
            return;
        }
        sub.to = true;
        sub.pending_out = false;
        self.save(user, a, sub).await;
    }

    /// The contact no longer wants our user's presence.
    async fn on_unsubscribe(&self, a: &Addressed) {
        let Some(user) = &a.user else { return };
        let mut sub = self.p.roster.get(user, &a.remote);
        if !sub.from {
            return;
        }
        sub.from = false;
        if self.save(user, a, sub).await {
            let mut gone = Presence::new(Type::Unavailable);
            gone.from = format!("{}/{}", a.ours, self.p.resource).parse().ok();
            gone.to = Some(a.remote_jid.clone());
            let _ = send_patiently(self.p.out.as_ref(), Stanza::Presence(gone)).await;
        }
    }

    /// The contact refused, or withdrew, its presence.
    async fn on_unsubscribed(&self, a: &Addressed) {
        let Some(user) = &a.user else { return };
        let mut sub = self.p.roster.get(user, &a.remote);
        if !sub.to && !sub.pending_out {
            return;
        }
        sub.to = false;
        sub.pending_out = false;
        if self.save(user, a, sub).await && !self.p.roster.is_watched_remote(&a.remote) {
            self.p.contact_presence.forget(&a.remote);
        }
    }

    /// Presence only for subscribed contacts; everyone else (and anyone asking
    /// about a user off the allow list) gets the same `unsubscribed`.
    async fn on_probe(self: &Arc<Self>, a: &Addressed) {
        match &a.user {
            Some(user) if self.p.roster.get(user, &a.remote).from => {
                // Beyond the side-work limit a probe goes unanswered: the
                // contact gets the user's next change anyway.
                let Ok(permit) = self.p.side_work.clone().try_acquire_owned() else {
                    tracing::debug!(remote = %a.remote, "too busy to answer a probe");
                    return;
                };
                let this = self.clone();
                let (user, remote_jid) = (user.clone(), a.remote_jid.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = this.p.teams.send_current(&user, &remote_jid).await {
                        tracing::warn!(%user, error = %e, "cannot read presence for a probe");
                    }
                });
            }
            _ => self.send_typed(Type::Unsubscribed, a).await,
        }
    }

    /// The Teams presence poller (tests and benchmarks drive it directly).
    pub fn teams_presence(&self) -> &Arc<TeamsPresence> {
        &self.p.teams
    }

    /// The contacts' shadow accounts.
    pub fn contacts(&self) -> &Arc<Contacts> {
        &self.p.contacts
    }

    /// The message carrier (tests drive its reconciliation directly).
    pub fn messages(&self) -> &Arc<Messages> {
        &self.p.messages
    }

    /// The contact relationships.
    pub fn roster(&self) -> &Roster {
        &self.p.roster
    }

    /// Sends a presence to every subscriber of a user now (the benchmark's entry).
    pub async fn fan_out(&self, user: &str, presence: &XmppPresence) -> usize {
        self.p.teams.fan_out(user, presence).await
    }
}

#[cfg(test)]
mod tests;
