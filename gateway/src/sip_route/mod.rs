//! The SIP federation route (`teams.mode = "sip-federation"`, issue 17):
//! instead of Graph and shadow accounts, the gateway federates with the
//! Microsoft side's SIP edge (`crates/sipfed`). Addresses: our JID
//! `alice@<xmpp.domain>` is `sip:alice@<sip.partner_domain>`, the XMPP
//! contact `bob@xmpp.example` is `sip:bob@xmpp.example`.
//!
//! Both directions go through the durable outbox: an XMPP chat message is
//! stored before anything is sent (and acknowledged to its server only then,
//! as every inbox stanza is), a SIP message is stored before the edge answers
//! 200. What cannot be delivered is bounced to the XMPP sender with the
//! reason, never dropped.

mod deliver;
mod partner;
mod probe;
mod typing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::MessageType;
use xmpp_parsers::receipts::Request as ReceiptRequest;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmppfed_config::{GatewayConfig, SipConfig};
use xmppfed_sipfed::edge::{EdgeError, Sink};
use xmppfed_sipfed::tls::Credentials;
use xmppfed_sipfed::{Edge, ImEvent};
use xmppfed_telemetry::{Health, Metrics};

use crate::bridge::metrics::MessageMetrics;
use crate::clock::Epoch;
use crate::pod::PodMetadata;
use crate::s2s::{AllowList, Inbox, S2sSender, Stanza};
use crate::store::{OutboxItem, OutboxPayload, Store, ToTeams, ToXmpp};
use crate::trust::RootsError;

/// How long a message is tried before it is bounced.
const EXPIRY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum SipRouteError {
    #[error("sip: {0}")]
    Tls(#[from] xmppfed_sipfed::tls::TlsError),
    #[error("sip: {0}")]
    Edge(#[from] EdgeError),
    /// The roots peers' certificates must chain to: `sip.ca_file`'s, or
    /// the system's without it.
    #[error("sip.ca_file ({from}): {message}")]
    Roots { from: String, message: String },
}

pub struct SipRoute {
    edge: Arc<Edge>,
    store: Arc<Store>,
    domain: String,
    partner: String,
    edge_fqdn: String,
    /// The remote-domain allow list, live: the domains the probe asks as.
    allow: AllowList,
    probe: probe::PartnerProbe,
    messages: MessageMetrics,
    /// Where the partner's edge is, and the edge that last took a message
    /// (typing goes there, into the session the message opened).
    edges: partner::PartnerEdges,
    last_edge: std::sync::Mutex<Option<(SocketAddr, String)>>,
    wake: Arc<Notify>,
    /// Typing and session ends from the Microsoft side, for XMPP.
    typing: tokio::sync::Mutex<mpsc::Receiver<ImEvent>>,
    /// Typing INFOs in flight: beyond these, typing is dropped, never queued.
    typing_out: Arc<tokio::sync::Semaphore>,
}

/// Typing INFOs in flight at once, and how long one may take.
const TYPING_IN_FLIGHT: usize = 16;
const TYPING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the partner's edges are looked up again (who may speak for it).
const PARTNER_REFRESH: Duration = Duration::from_secs(600);

fn now() -> Epoch {
    crate::clock::now()
}

impl SipRoute {
    /// Binds the edge (mutual TLS on `sip.listen`); IM is taken only from the
    /// partner's domain, and stored before it is answered.
    pub async fn bind(
        (config, sip): (&GatewayConfig, &SipConfig),
        store: Arc<Store>,
        allow: AllowList,
        (metrics, health): (&Metrics, &Health),
    ) -> Result<Arc<Self>, SipRouteError> {
        // As the PostgreSQL store's roots: the file named, and no empty store
        // (every peer would be refused, saying only that no root is trusted).
        let from = sip.ca_file.as_ref().map_or_else(
            || "unset: the system's roots".to_owned(),
            |path| path.display().to_string(),
        );
        let roots = crate::trust::load_roots(sip.ca_file.as_deref(), "sip").map_err(|e| {
            let (RootsError::Read(message) | RootsError::Invalid(message)) = e;
            SipRouteError::Roots {
                from: from.clone(),
                message,
            }
        })?;
        if roots.is_empty() {
            return Err(SipRouteError::Roots {
                from,
                message: "no certificate in it: no partner could be trusted".to_owned(),
            });
        }
        let credentials = Credentials::new(&sip.cert_file, &sip.key_file, roots)?;
        let wake = Arc::new(Notify::new());
        let partner = sip.partner_domain.to_ascii_lowercase();
        // Typing is a hint of the moment: when XMPP lags, it is dropped.
        let (typing_tx, typing) = mpsc::channel(256);
        let messages = MessageMetrics::register(metrics);
        let sink = inbound_sink(
            (store.clone(), wake.clone()),
            partner.clone(),
            typing_tx,
            messages.clone(),
        );
        let edges = partner::PartnerEdges::new(sip, crate::dns::Dns::system());
        let edge = Edge::bind(sip.listen, &sip.edge_fqdn, credentials)
            .await?
            .allowing({
                let partner = partner.clone();
                move |domain| domain == partner
            })
            .trusting(edges.trusts())
            .with_sink(sink);
        tracing::info!(listen = ?edge.local_addr(), partner = %partner, "SIP federation edge started");
        let probe = probe::PartnerProbe::new(metrics, health.component("sip-partner"), &partner);
        if let Some(pod) = PodMetadata::from_environment() {
            // The partner's answer, for the operator's PartnerReachable condition.
            let key = xmppfed_config::POD_SIP_PARTNER_ANNOTATION;
            tokio::spawn(pod.keep_annotation(key, probe.watch()));
        }
        Ok(Arc::new(Self {
            edge: Arc::new(edge),
            store,
            domain: config.xmpp.domain.clone(),
            partner,
            edge_fqdn: sip.edge_fqdn.clone(),
            allow,
            probe,
            messages,
            edges,
            last_edge: std::sync::Mutex::new(None),
            wake,
            typing: tokio::sync::Mutex::new(typing),
            typing_out: Arc::new(tokio::sync::Semaphore::new(TYPING_IN_FLIGHT)),
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.edge.local_addr()
    }

    /// Serves the edge, the outbox and the inbox until the inbox closes or
    /// this future is dropped (the gateway stopping): the edge and the
    /// outbox worker stop with it, so no second worker ever delivers.
    pub async fn run(self: Arc<Self>, mut inbox: Inbox, sender: S2sSender) {
        let _tasks = AbortOnDrop(vec![
            tokio::spawn(self.edge.clone().serve()),
            tokio::spawn(self.clone().deliver(sender.clone())),
            tokio::spawn(self.clone().relay_typing(sender.clone())),
            tokio::spawn(self.clone().refresh_partner()),
            tokio::spawn(self.clone().probe_partner()),
        ]);
        while let Some(stanza) = inbox.recv().await {
            self.take_from_xmpp(stanza, &sender).await;
        }
    }

    /// A chat message for one of our users goes into the outbox; an IQ is
    /// answered as unavailable; presence waits for milestone 2.
    async fn take_from_xmpp(self: &Arc<Self>, stanza: Stanza, sender: &S2sSender) {
        let message = match &stanza {
            Stanza::Message(m) if matches!(m.type_, MessageType::Chat | MessageType::Normal) => m,
            Stanza::Iq(_) => {
                crate::bridge::reply_error(
                    sender,
                    &stanza,
                    DefinedCondition::ServiceUnavailable,
                    ErrorType::Cancel,
                    "not offered over SIP federation",
                )
                .await;
                return;
            }
            _ => return,
        };
        let (Some(from), Some(to)) = (&message.from, &message.to) else {
            return;
        };
        if let Some(active) = typing::from_xmpp(message) {
            self.typing_to_sip(from, to, active);
            return;
        }
        let Some((_, body)) = message.get_best_body(vec![]) else {
            return;
        };
        let Some(local) = to.node().map(|n| n.as_str().to_owned()) else {
            return;
        };
        let remote = from.to_bare().to_string();
        let id = message.id.as_ref().map(|i| i.0.clone());
        let dedupe_key = match &id {
            Some(id) => format!("sip-out:{remote}>{local}:{id}"),
            None => format!("sip-out:{remote}>{local}:{}", crate::random::hex(16)),
        };
        let receipt = message
            .payloads
            .iter()
            .any(|p| ReceiptRequest::try_from(p.clone()).is_ok());
        let item = OutboxItem {
            seq: 0,
            conversation: format!("sip:{remote}>{local}"),
            dedupe_key,
            payload: OutboxPayload::ToTeams(ToTeams {
                remote,
                remote_full: from.to_string(),
                user_id: format!("sip:{local}@{}", self.partner),
                local,
                body: body.clone(),
                id,
                receipt,
            }),
            attempts: 0,
            next_attempt_at: now(),
            expires_at: now() + EXPIRY.as_secs() as Epoch,
        };
        match self.store.enqueue(&item).await {
            Ok(stored) => {
                // A resent stanza (same id) is stored once, and counted once.
                if stored.is_some() {
                    self.messages.count("to-teams", "accepted");
                }
                self.wake.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store a message for SIP");
                crate::bridge::reply_error(
                    sender,
                    &stanza,
                    DefinedCondition::InternalServerError,
                    ErrorType::Wait,
                    "the gateway cannot store the message now",
                )
                .await;
            }
        }
    }

    /// Typing from XMPP, into the session with the Microsoft side if one is
    /// up: sent beside the inbox (never holding it up), bounded in number
    /// and time. It goes to the edge that last took a message, else the
    /// partner's first.
    fn typing_to_sip(self: &Arc<Self>, from: &Jid, to: &Jid, active: bool) {
        let Some(local) = to.node() else {
            return;
        };
        let Ok(permit) = self.typing_out.clone().try_acquire_owned() else {
            return;
        };
        let (from, to) = (
            format!("sip:{}", from.to_bare()),
            format!("sip:{local}@{}", self.partner),
        );
        let route = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let send = async {
                let (addr, host) = route.typing_edge().await?;
                let sent = route.edge.send_typing((addr, &host), &from, &to, active);
                sent.await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(TYPING_TIMEOUT, send).await {
                Ok(Ok(_)) => {}
                Ok(Err(why)) => tracing::debug!(%why, "typing not sent"),
                Err(_) => tracing::debug!("typing not sent in {TYPING_TIMEOUT:?}"),
            }
        });
    }

    async fn typing_edge(&self) -> Result<(SocketAddr, String), String> {
        let last = self
            .last_edge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(edge) = last {
            return Ok(edge);
        }
        let target = self
            .edges
            .targets()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or("no edge")?;
        let addr = partner::addresses(&target)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or("no address")?;
        Ok((addr, target.host))
    }

    /// Looks the partner's edges up now and then, so that an edge DNS names
    /// is trusted inbound before anything was sent to it.
    async fn refresh_partner(self: Arc<Self>) {
        loop {
            if let Err(e) = self.edges.targets().await {
                tracing::warn!(error = %e, "the partner's edges cannot be looked up");
            }
            tokio::time::sleep(PARTNER_REFRESH).await;
        }
    }

    /// Typing and session ends from the Microsoft side, as XEP-0085 chat states.
    async fn relay_typing(self: Arc<Self>, sender: S2sSender) {
        let mut typing = self.typing.lock().await;
        while let Some(event) = typing.recv().await {
            if let Some(message) = typing::to_xmpp(&event, &self.domain, &self.partner) {
                let _ = sender.send(Stanza::Message(message)).await;
            }
        }
    }
}

/// Tasks that end when their owner does.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Stores an inbound SIP IM for XMPP before the edge answers it.
/// Typing and session ends are passed on to `typing`, never refused.
fn inbound_sink(
    (store, wake): (Arc<Store>, Arc<Notify>),
    partner: String,
    typing: mpsc::Sender<ImEvent>,
    messages: MessageMetrics,
) -> Sink {
    Box::new(move |event| {
        let (store, wake, partner) = (store.clone(), wake.clone(), partner.clone());
        let (typing, messages) = (typing.clone(), messages.clone());
        Box::pin(async move {
            let ImEvent::Message { from, to, text, id } = event else {
                let _ = typing.try_send(event);
                return true;
            };
            let Some(local) = from
                .strip_prefix("sip:")
                .and_then(|a| a.strip_suffix(&format!("@{partner}")))
            else {
                return false;
            };
            let Some(remote) = to.strip_prefix("sip:") else {
                return false;
            };
            let item = OutboxItem {
                seq: 0,
                conversation: format!("sip:{local}>{remote}"),
                dedupe_key: format!("sip-in:{id}"),
                payload: OutboxPayload::ToXmpp(ToXmpp {
                    local: local.to_owned(),
                    user_id: from.clone(),
                    remote: remote.to_owned(),
                    text,
                    graph_id: id.clone(),
                    chat_id: id,
                    expires_at: None,
                    bounces: 0,
                }),
                attempts: 0,
                next_attempt_at: now(),
                expires_at: now() + EXPIRY.as_secs() as Epoch,
            };
            match store.enqueue(&item).await {
                Ok(stored) => {
                    if stored.is_some() {
                        messages.count("to-xmpp", "accepted");
                    }
                    wake.notify_one();
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store a message from SIP");
                    false
                }
            }
        })
    })
}
