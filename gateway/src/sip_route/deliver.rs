//! The outbox, both ways. Messages for XMPP are sent inline; messages for
//! the Microsoft side go to one sender task, so a partner edge that never
//! answers (up to Timer F per attempt) holds up only its own direction.
//! After an attempt that could not reach the partner, the next ones wait
//! out a short pause instead of each waiting for their own timeout.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::receipts::Received;
use xmpp_parsers::stanza_error::DefinedCondition;
use xmppfed_sipfed::EdgeError;

use super::{SipRoute, now, partner};
use crate::s2s::{S2sSender, Stanza};
use crate::store::{OutboxItem, OutboxPayload, ToTeams, ToXmpp};

/// One message's attempt at the partner, all edges included.
const ATTEMPT_BUDGET: Duration = Duration::from_secs(45);
/// How long the partner is taken as unreachable after an attempt failed.
const PAUSE: Duration = Duration::from_secs(10);

/// Messages being sent to the Microsoft side (their outbox seq).
type Sending = Arc<Mutex<HashSet<i64>>>;

impl SipRoute {
    /// Delivers what is due, both ways, until aborted.
    pub(super) async fn deliver(self: Arc<Self>, sender: S2sSender) {
        let sending: Sending = Arc::default();
        let (to_sip, queue) = mpsc::channel(64);
        let _sender = super::AbortOnDrop(vec![tokio::spawn(self.clone().send_to_sip(
            queue,
            sending.clone(),
            sender.clone(),
        ))]);
        loop {
            match self.store.due(now(), 64).await {
                Ok(items) => {
                    for item in items {
                        if let OutboxPayload::ToXmpp(p) = &item.payload {
                            let outcome = to_xmpp(&self.domain, p, &sender).await;
                            self.record(&item, outcome, &sender).await;
                        } else if lock(&sending).insert(item.seq) {
                            let seq = item.seq;
                            if to_sip.try_send(item).is_err() {
                                lock(&sending).remove(&seq);
                            }
                        }
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

    /// Sends the messages for the Microsoft side, one at a time.
    async fn send_to_sip(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<OutboxItem>,
        sending: Sending,
        sender: S2sSender,
    ) {
        let mut unreachable: Option<(Instant, String)> = None;
        while let Some(item) = queue.recv().await {
            let OutboxPayload::ToTeams(p) = &item.payload else {
                continue;
            };
            let outcome = match &unreachable {
                Some((until, why)) if Instant::now() < *until => Err(Failure::Later(why.clone())),
                _ => tokio::time::timeout(ATTEMPT_BUDGET, self.to_sip(p, &sender))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::Later(format!("no answer in {ATTEMPT_BUDGET:?}")))
                    }),
            };
            unreachable = match &outcome {
                Err(Failure::Later(why)) => Some((Instant::now() + PAUSE, why.clone())),
                _ => None,
            };
            self.record(&item, outcome, &sender).await;
            lock(&sending).remove(&item.seq);
        }
    }

    /// Records an attempt: delivered, bounced, or tried again later.
    async fn record(&self, item: &OutboxItem, outcome: Result<(), Failure>, sender: &S2sSender) {
        let direction = match &item.payload {
            OutboxPayload::ToTeams(_) => {
                // The partner answered: if it had refused us, ask it again.
                if !matches!(outcome, Err(Failure::Later(_))) {
                    self.probe.exchanged();
                }
                "to-teams"
            }
            _ => "to-xmpp",
        };
        let expired = now() >= item.expires_at;
        let counted = match &outcome {
            Ok(()) => "delivered",
            Err(Failure::Later(_)) if !expired => "retried",
            Err(_) => "failed",
        };
        self.messages.count(direction, counted);
        let done = match outcome {
            Ok(()) => self.store.delivered(item.seq).await,
            Err(Failure::Final(condition, why)) => {
                if let OutboxPayload::ToTeams(p) = &item.payload {
                    self.bounce(p, condition, &why, sender).await;
                }
                self.store.expire(item.seq).await
            }
            Err(Failure::Later(why)) if expired => {
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
    /// until one answers; a 503 sends it to the next (RFC 3263 §4.3).
    async fn to_sip(&self, p: &ToTeams, sender: &S2sSender) -> Result<(), Failure> {
        let from = format!("sip:{}", p.remote);
        let mut why = String::new();
        let targets = self
            .edges
            .targets()
            .await
            .map_err(|e| Failure::Later(e.to_string()))?;
        for target in targets {
            let addresses = match partner::addresses(&target).await {
                Ok(addresses) => addresses,
                Err(e) => {
                    why = e.to_string();
                    continue;
                }
            };
            for addr in addresses {
                let sent = self
                    .edge
                    .send_im((addr, &target.host), &from, &p.user_id, &p.body)
                    .await;
                match sent {
                    Ok(()) => {
                        *lock(&self.last_edge) = Some((addr, target.host.clone()));
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
                    }) if status != 503 => return Err(refusal(status, &diagnostics)),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
