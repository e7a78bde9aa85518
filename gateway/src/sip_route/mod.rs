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

mod partner;
mod typing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::receipts::{Received, Request as ReceiptRequest};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmppfed_config::{GatewayConfig, SipConfig};
use xmppfed_sipfed::edge::{EdgeError, Sink};
use xmppfed_sipfed::tls::Credentials;
use xmppfed_sipfed::{Edge, ImEvent};

use crate::clock::Epoch;
use crate::s2s::{Inbox, S2sSender, Stanza};
use crate::store::{OutboxItem, OutboxPayload, Store, ToTeams, ToXmpp};

/// How long a message is tried before it is bounced.
const EXPIRY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum SipRouteError {
    #[error("sip: {0}")]
    Tls(#[from] xmppfed_sipfed::tls::TlsError),
    #[error("sip: {0}")]
    Edge(#[from] EdgeError),
    #[error("sip.ca_file: {0}")]
    Roots(String),
}

pub struct SipRoute {
    edge: Arc<Edge>,
    store: Arc<Store>,
    domain: String,
    partner: String,
    /// Where the partner's edge is, and the edge that last took a message
    /// (typing goes there, into the session the message opened).
    edges: partner::PartnerEdges,
    last_edge: std::sync::Mutex<Option<(SocketAddr, String)>>,
    wake: Arc<Notify>,
    /// Typing and session ends from the Microsoft side, for XMPP.
    typing: tokio::sync::Mutex<mpsc::Receiver<ImEvent>>,
}

fn now() -> Epoch {
    crate::clock::now()
}

impl SipRoute {
    /// Binds the edge (mutual TLS on `sip.listen`); IM is taken only from the
    /// partner's domain, and stored before it is answered.
    pub async fn bind(
        config: &GatewayConfig,
        sip: &SipConfig,
        store: Arc<Store>,
    ) -> Result<Arc<Self>, SipRouteError> {
        let roots = crate::trust::load_roots(sip.ca_file.as_deref(), "sip").map_err(|e| {
            SipRouteError::Roots(match e {
                crate::trust::RootsError::Read(m) | crate::trust::RootsError::Invalid(m) => m,
            })
        })?;
        let credentials = Credentials::new(&sip.cert_file, &sip.key_file, roots)?;
        let wake = Arc::new(Notify::new());
        let partner = sip.partner_domain.to_ascii_lowercase();
        // Typing is a hint of the moment: when XMPP lags, it is dropped.
        let (typing_tx, typing) = mpsc::channel(256);
        let sink = inbound_sink(store.clone(), wake.clone(), partner.clone(), typing_tx);
        let edge = Edge::bind(sip.listen, &sip.edge_fqdn, credentials)
            .await?
            .allowing({
                let partner = partner.clone();
                move |domain| domain == partner
            })
            .with_sink(sink);
        tracing::info!(listen = ?edge.local_addr(), partner = %partner, "SIP federation edge started");
        Ok(Arc::new(Self {
            edge: Arc::new(edge),
            store,
            domain: config.xmpp.domain.clone(),
            partner,
            edges: partner::PartnerEdges::new(sip, crate::dns::Dns::system()),
            last_edge: std::sync::Mutex::new(None),
            wake,
            typing: tokio::sync::Mutex::new(typing),
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
        ]);
        while let Some(stanza) = inbox.recv().await {
            self.take_from_xmpp(stanza, &sender).await;
        }
    }

    /// A chat message for one of our users goes into the outbox; an IQ is
    /// answered as unavailable; presence waits for milestone 2.
    async fn take_from_xmpp(&self, stanza: Stanza, sender: &S2sSender) {
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
            self.typing_to_sip(from, to, active).await;
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
            Some(id) => format!("sip-out:{remote}:{id}"),
            None => format!("sip-out:{remote}:{}", crate::random::hex(16)),
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
            Ok(_) => self.wake.notify_one(),
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

    /// Typing from XMPP, into the session with the Microsoft side if one is up.
    async fn typing_to_sip(&self, from: &Jid, to: &Jid, active: bool) {
        let Some(local) = to.node() else {
            return;
        };
        let edge = self
            .last_edge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((addr, host)) = edge else {
            return;
        };
        let (from, to) = (
            format!("sip:{}", from.to_bare()),
            format!("sip:{local}@{}", self.partner),
        );
        if let Err(e) = self
            .edge
            .send_typing((addr, &host), &from, &to, active)
            .await
        {
            tracing::debug!(error = %e, "typing not sent");
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

    /// Delivers what is due, both ways, until aborted.
    async fn deliver(self: Arc<Self>, sender: S2sSender) {
        loop {
            match self.store.due(now(), 32).await {
                Ok(items) => {
                    for item in items {
                        self.deliver_one(&item, &sender).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    async fn deliver_one(&self, item: &OutboxItem, sender: &S2sSender) {
        let outcome = match &item.payload {
            OutboxPayload::ToTeams(p) => self.to_sip(p, sender).await,
            OutboxPayload::ToXmpp(p) => to_xmpp(&self.domain, p, sender).await,
        };
        let done = match outcome {
            Ok(()) => self.store.delivered(item.seq).await,
            Err(Failure::Final(condition, why)) => {
                if let OutboxPayload::ToTeams(p) = &item.payload {
                    self.bounce(p, condition, &why, sender).await;
                }
                self.store.expire(item.seq).await
            }
            Err(Failure::Later(why)) if now() >= item.expires_at => {
                if let OutboxPayload::ToTeams(p) = &item.payload {
                    self.bounce(p, DefinedCondition::RemoteServerTimeout, &why, sender)
                        .await;
                }
                self.store.expire(item.seq).await
            }
            Err(Failure::Later(why)) => {
                tracing::info!(seq = item.seq, %why, "SIP delivery tried again later");
                let wait = 2i64.saturating_pow(item.attempts.clamp(0, 8) as u32);
                self.store.retry_later(item.seq, now() + wait).await
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot record an outbox outcome");
        }
    }

    /// Sends one message to the partner's edge, trying each edge DNS names
    /// until one answers.
    async fn to_sip(&self, p: &ToTeams, sender: &S2sSender) -> Result<(), Failure> {
        let from = format!("sip:{}", p.remote);
        let mut why = String::new();
        for target in self.edges.targets().await.map_err(Failure::Later)? {
            let addresses = match partner::addresses(&target).await {
                Ok(addresses) => addresses,
                Err(e) => {
                    why = e;
                    continue;
                }
            };
            for addr in addresses {
                match self
                    .edge
                    .send_im((addr, &target.host), &from, &p.user_id, &p.body)
                    .await
                {
                    Ok(()) => {
                        *self.last_edge.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((addr, target.host.clone()));
                        if p.receipt
                            && let Some(id) = &p.id
                        {
                            self.receipt(p, id, sender).await;
                        }
                        return Ok(());
                    }
                    Err(EdgeError::Refused {
                        status,
                        diagnostics,
                    }) => return Err(refusal(status, &diagnostics)),
                    Err(e) => why = format!("{} ({addr}): {e}", target.host),
                }
            }
        }
        Err(Failure::Later(why))
    }

    async fn receipt(&self, p: &ToTeams, id: &str, sender: &S2sSender) {
        let (Ok(to), Ok(from)) = (
            p.remote_full.parse::<Jid>(),
            format!("{}@{}", p.local, self.domain).parse::<Jid>(),
        ) else {
            return;
        };
        let mut receipt = Message::new(Some(to));
        receipt.from = Some(from);
        receipt.payloads.push(Received { id: id.to_owned() }.into());
        let _ = sender.send(Stanza::Message(receipt)).await;
    }

    async fn bounce(
        &self,
        p: &ToTeams,
        condition: DefinedCondition,
        why: &str,
        sender: &S2sSender,
    ) {
        crate::bridge::messages::bounce(sender, &self.domain, p, condition, why).await;
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

/// RFC 7247 §7: 403 forbidden, 404/604 item-not-found, 480 and other 4xx
/// and 6xx recipient-unavailable; 408, 5xx and the rest are tried again.
fn refusal(status: u16, diagnostics: &str) -> Failure {
    if !((400..500).contains(&status) && status != 408 || status >= 600) {
        return Failure::Later(format!("{status} {diagnostics}"));
    }
    let condition = match status {
        403 | 603 => DefinedCondition::Forbidden,
        404 | 604 => DefinedCondition::ItemNotFound,
        _ => DefinedCondition::RecipientUnavailable,
    };
    Failure::Final(
        condition,
        format!("the Microsoft side refused it: {status} {diagnostics}"),
    )
}

enum Failure {
    /// Bounced to the sender now.
    Final(DefinedCondition, String),
    /// Tried again until the message expires.
    Later(String),
}

/// Stores an inbound SIP IM for XMPP before the edge answers it.
/// Typing and session ends are passed on to `typing`, never refused.
fn inbound_sink(
    store: Arc<Store>,
    wake: Arc<Notify>,
    partner: String,
    typing: mpsc::Sender<ImEvent>,
) -> Sink {
    Box::new(move |event| {
        let (store, wake, partner) = (store.clone(), wake.clone(), partner.clone());
        let typing = typing.clone();
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
                Ok(_) => {
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

/// An IM from the Microsoft side to its XMPP contact.
async fn to_xmpp(domain: &str, p: &ToXmpp, sender: &S2sSender) -> Result<(), Failure> {
    let (Ok(from), Ok(to)) = (
        format!("{}@{domain}", p.local).parse::<Jid>(),
        p.remote.parse::<Jid>(),
    ) else {
        return Err(Failure::Final(
            DefinedCondition::JidMalformed,
            "not a JID".into(),
        ));
    };
    let mut m = Message::new_with_type(MessageType::Chat, Some(to))
        .with_body(Lang::default(), p.text.clone());
    m.from = Some(from);
    m.id = Some(Id(p.graph_id.replace(' ', "-")));
    sender
        .send(Stanza::Message(m))
        .await
        .map_err(|e| Failure::Later(e.to_string()))
}
