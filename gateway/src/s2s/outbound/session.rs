//! Running an open outbound stream: dialback, verify requests for the
//! inbound side, queued stanzas with XEP-0198 acknowledgements, keepalives,
//! and (with bidi) the stanzas the peer sends back on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use xmpp_parsers::minidom::Element;

use super::super::dialback::{Dialback, Verdict};
use super::super::stanza;
use super::super::wire::{self, Control, ReadFailure, Stream, Whitespace};
use super::super::{Shared, acks, metrics, route};
use super::connect::Opened;
use super::{Command, Ended, Pending, take};

/// How long a peer with stream management may take to acknowledge what we
/// sent before the stream is taken as dead (well within the bridge's wait).
const ACK_TIMEOUT: Duration = Duration::from_secs(20);
/// Stream management on an outbound stream.
enum Sm {
    Unavailable,
    /// Offered: asked for once the stream is authenticated.
    Offered,
    /// `<enable/>` sent; stanzas wait for the answer until this instant.
    Asked(Instant),
    On(acks::Unacked),
}

/// One open outbound stream: what it has agreed with the peer, and what it
/// is waiting for.
struct Session<'a> {
    shared: &'a Arc<Shared>,
    domain: &'a str,
    stream: Stream,
    bidi: bool,
    sm: Sm,
    /// When the peer must have acknowledged something by (stream management on).
    ack_due: Option<Instant>,
    /// Ended by a stream error (ours or the peer's), not a lost connection:
    /// what it never acknowledged is not sent again, lest it end the next too.
    by_error: bool,
    /// Our `<db:verify/>` requests (for the inbound side), by stream id.
    awaiting: HashMap<String, Vec<oneshot::Sender<Verdict>>>,
    authenticated: bool,
    last_activity: Instant,
    /// A peer that never answers our dialback key must not hold the queue.
    auth_deadline: Instant,
}

/// Runs an open stream: dialback, verify requests, queued and new stanzas,
/// keepalives, and (with bidi) stanzas the peer sends back on it.
pub(super) async fn session(
    shared: &Arc<Shared>,
    domain: &str,
    opened: Opened,
    pending: &mut Pending,
    rx: &mut mpsc::Receiver<Command>,
) -> Ended {
    let _open = shared.metrics.stream_open("out");
    let stream_id = opened.stream_id.clone();
    let mut s = Session::new(shared, domain, opened);
    if !s.authenticated {
        let request = Dialback::ResultRequest {
            from: shared.domain.clone(),
            to: domain.to_owned(),
            key: shared.keys.key(domain, &shared.domain, &stream_id),
        };
        if let Err(e) = wire::send_dialback(&mut s.stream, &request).await {
            return Ended::Lost(e.to_string());
        }
    }
    let ended = loop {
        if let Some(ended) = s.write_pending(pending).await {
            break ended;
        }
        if let Some(ended) = s.step(pending, rx).await {
            break ended;
        }
    };
    s.finish(pending, ended)
}

impl<'a> Session<'a> {
    fn new(shared: &'a Arc<Shared>, domain: &'a str, opened: Opened) -> Self {
        let Opened {
            stream,
            bidi,
            sasl,
            sm_offered,
            ..
        } = opened;
        Self {
            shared,
            domain,
            stream,
            bidi,
            sm: if sm_offered {
                Sm::Offered
            } else {
                Sm::Unavailable
            },
            ack_due: None,
            by_error: false,
            awaiting: HashMap::new(),
            authenticated: sasl,
            last_activity: Instant::now(),
            auth_deadline: Instant::now() + shared.settings.connect_timeout,
        }
    }

    /// Waits for the next thing to happen: an element from the peer, a
    /// command, or a deadline (stream management's answer, an
    /// acknowledgement, our dialback key's answer, idleness).
    async fn step(
        &mut self,
        pending: &mut Pending,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Option<Ended> {
        let shared = self.shared;
        let idle_at = self.last_activity + shared.settings.idle_timeout;
        let asked_until = match self.sm {
            Sm::Asked(until) => Some(until),
            _ => None,
        };
        let idle = self.authenticated
            && pending.is_empty()
            && self.awaiting.is_empty()
            && !matches!(&self.sm, Sm::On(u) if !u.is_empty());
        let (ack_due, auth_deadline) = (self.ack_due, self.auth_deadline);
        tokio::select! {
            read = self.stream.next() => match read {
                Some(Ok(element)) => {
                    self.stream.get_stream().get_ref().reset_budget();
                    self.on_element(Control::parse(element.into_element())).await
                }
                Some(Err(e)) => self.on_read_error(wire::classify(e)).await,
                None => Some(Ended::Lost("connection closed".into())),
            },
            cmd = rx.recv() => match cmd {
                Some(cmd) => {
                    take(shared, pending, cmd).await;
                    None
                }
                None => {
                    let _ = tokio::time::timeout(wire::WRITE_TIMEOUT, self.stream.shutdown()).await;
                    Some(Ended::Done)
                }
            },
            _ = tokio::time::sleep_until(asked_until.unwrap_or(auth_deadline)), if asked_until.is_some() => {
                tracing::info!("no answer to our stream management request; going on without");
                self.sm = Sm::Unavailable;
                None
            }
            _ = tokio::time::sleep_until(ack_due.unwrap_or(auth_deadline)), if ack_due.is_some() => {
                tracing::warn!(timeout = ?ACK_TIMEOUT, "no acknowledgement from the peer in time");
                Some(Ended::Lost("the peer acknowledged nothing in time".into()))
            }
            _ = tokio::time::sleep_until(auth_deadline), if !self.authenticated => {
                tracing::info!("no answer to our dialback key in time");
                Some(Ended::Lost(format!("{} did not answer our dialback key in time", self.domain)))
            }
            _ = tokio::time::sleep_until(idle_at), if idle => {
                tracing::info!("closing idle s2s stream");
                let _ = tokio::time::timeout(wire::WRITE_TIMEOUT, self.stream.shutdown()).await;
                Some(Ended::Done)
            }
        }
    }
}

impl Session<'_> {
    /// Verify requests go out at once, whatever our own state; once we are
    /// authenticated, stream management is asked for, then queued stanzas go.
    async fn write_pending(&mut self, pending: &mut Pending) -> Option<Ended> {
        for (id, key, reply) in pending.verifies.drain(..) {
            let verify = Dialback::VerifyRequest {
                from: self.shared.domain.clone(),
                to: self.domain.to_owned(),
                id: id.clone(),
                key,
            };
            if wire::send_dialback(&mut self.stream, &verify)
                .await
                .is_err()
            {
                let _ = reply.send(Verdict::Error);
                break;
            }
            self.awaiting.entry(id).or_default().push(reply);
        }
        if self.authenticated && matches!(self.sm, Sm::Offered) {
            if wire::send(&mut self.stream, &wire::out::sm_enable())
                .await
                .is_err()
            {
                return Some(Ended::Lost("cannot ask for stream management".into()));
            }
            self.sm = Sm::Asked(Instant::now() + self.shared.settings.connect_timeout);
        }
        if self.authenticated && !matches!(self.sm, Sm::Asked(_)) {
            return self.write_stanzas(pending).await;
        }
        None
    }

    /// Queued stanzas, as many as stream management lets be unacknowledged;
    /// then one request for the peer's count per batch.
    async fn write_stanzas(&mut self, pending: &mut Pending) -> Option<Ended> {
        let limit = self.shared.settings.queue_limit;
        let mut counted = false;
        while let Some((stanza, written)) = pending.stanzas.pop_front() {
            if matches!(&self.sm, Sm::On(u) if u.len() >= limit) {
                pending.stanzas.push_front((stanza, written));
                break;
            }
            let kind = metrics::kind(&stanza);
            let element = stanza::to_wire(stanza::duplicate(&stanza));
            if wire::send(&mut self.stream, &element).await.is_err() {
                pending.stanzas.push_front((stanza, written));
                break;
            }
            match &mut self.sm {
                // Its waiter hears once the peer has handled it.
                Sm::On(unacked) => {
                    unacked.sent(stanza, written);
                    counted = true;
                }
                _ => {
                    if let Some(written) = written {
                        let _ = written.send(());
                    }
                }
            }
            let label = self.shared.domain_label(self.domain);
            self.shared.metrics.stanza_out(&label, kind);
            self.last_activity = Instant::now();
        }
        if counted {
            if wire::send(&mut self.stream, &xmpp_parsers::sm::R)
                .await
                .is_err()
            {
                return Some(Ended::Lost("cannot request an acknowledgement".into()));
            }
            self.ack_due.get_or_insert(Instant::now() + ACK_TIMEOUT);
        }
        None
    }

    /// One handler per kind of element the peer sends on our stream.
    async fn on_element(&mut self, element: Control) -> Option<Ended> {
        match element {
            Control::Dialback(Ok(Dialback::ResultAnswer { from, verdict, .. }))
                if from == self.domain =>
            {
                if verdict != Verdict::Valid {
                    return Some(Ended::Refused(verdict));
                }
                self.authenticated = true;
                self.shared.metrics.auth("dialback-out", "valid");
                tracing::info!("dialback accepted: stream authenticated");
                None
            }
            Control::Dialback(Ok(Dialback::VerifyAnswer { id, verdict, .. })) => {
                for reply in self.awaiting.remove(&id).unwrap_or_default() {
                    let _ = reply.send(verdict);
                }
                None
            }
            Control::Dialback(other) => {
                tracing::debug!(?other, "unexpected dialback element");
                None
            }
            Control::Stanza(element) => self.on_stanza(element).await,
            Control::SmEnabled if matches!(self.sm, Sm::Asked(_)) => {
                tracing::info!("stream management enabled: stanzas count once acknowledged");
                self.sm = Sm::On(acks::Unacked::default());
                None
            }
            Control::SmFailed if matches!(self.sm, Sm::Asked(_)) => {
                tracing::info!("the peer refused stream management");
                self.sm = Sm::Unavailable;
                None
            }
            Control::SmAck(h) if matches!(self.sm, Sm::On(_)) => self.on_ack(h).await,
            // We take no stanzas on this stream (no bidi with SM).
            Control::SmRequest if matches!(self.sm, Sm::On(_)) => {
                match wire::send(&mut self.stream, &acks::ack_element(0)).await {
                    Ok(()) => None,
                    Err(_) => Some(Ended::Lost("cannot acknowledge".into())),
                }
            }
            Control::StreamError { condition, text } => {
                tracing::warn!(%condition, %text, "peer ended our stream with an error");
                self.by_error = true;
                Some(if self.authenticated {
                    Ended::Lost(format!("stream error {condition}"))
                } else {
                    Ended::Refused(Verdict::Error)
                })
            }
            other => {
                tracing::debug!(
                    element = other.name(),
                    "unexpected element on an outbound stream"
                );
                None
            }
        }
    }

    /// A stanza on our own stream: only with bidi, once authenticated, and
    /// then from the domain we resolved and connected to.
    async fn on_stanza(&mut self, element: Element) -> Option<Ended> {
        self.last_activity = Instant::now();
        if !self.bidi || !self.authenticated {
            wire::close_with_error(
                &mut self.stream,
                xmpp_parsers::stream_error::DefinedCondition::UnsupportedStanzaType,
                "stanzas on our outbound stream need XEP-0288 bidi and authentication",
            )
            .await;
            return Some(Ended::Lost("peer sent a stanza without bidi".into()));
        }
        let authenticated_domains = [self.domain.to_owned()];
        let routed =
            route::dispatch(self.shared, element, &authenticated_domains, None, None).await;
        let (condition, text) = routed.err()?;
        self.shared.metrics.stream_error(&condition.to_string());
        wire::close_with_error(&mut self.stream, condition, &text).await;
        Some(Ended::Lost(text))
    }

    /// `<a h/>`: what the peer has handled; more than we sent ends the stream.
    async fn on_ack(&mut self, h: Option<u32>) -> Option<Ended> {
        let Sm::On(unacked) = &mut self.sm else {
            return None;
        };
        let text = match h.map(|h| unacked.acked(h)) {
            Some(Ok(newly)) => {
                // Progress: the next deadline counts from now.
                if unacked.is_empty() {
                    self.ack_due = None;
                } else if newly > 0 {
                    self.ack_due = Some(Instant::now() + ACK_TIMEOUT);
                }
                return None;
            }
            Some(Err(too_many)) => {
                format!("acknowledged {} stanzas of {}", too_many.h, too_many.sent)
            }
            None => "an acknowledgement without a valid h".to_owned(),
        };
        self.by_error = true;
        let condition = xmpp_parsers::stream_error::DefinedCondition::UndefinedCondition;
        wire::close_with_error(&mut self.stream, condition, &text).await;
        Some(Ended::Lost(text))
    }

    async fn on_read_error(&mut self, failure: ReadFailure) -> Option<Ended> {
        match failure {
            ReadFailure::Timeout => match wire::send(&mut self.stream, &Whitespace).await {
                Ok(()) => None,
                Err(_) => Some(Ended::Lost("keepalive failed".into())),
            },
            ReadFailure::Closed => Some(Ended::Lost("peer closed the stream".into())),
            ReadFailure::Error(condition, text) => {
                self.by_error = true;
                self.shared.metrics.stream_error(&condition.to_string());
                wire::close_with_error(&mut self.stream, condition, &text).await;
                Some(Ended::Lost(text))
            }
        }
    }

    /// Verify requests never answered learn so; what the peer never
    /// acknowledged goes out again first on the next stream (not after a
    /// stream error, and within the queue's limit), and a lost stream with
    /// nothing left to send is simply done.
    fn finish(self, pending: &mut Pending, ended: Ended) -> Ended {
        for (_, replies) in self.awaiting {
            for reply in replies {
                let _ = reply.send(Verdict::Error);
            }
        }
        if let Sm::On(unacked) = self.sm
            && !unacked.is_empty()
        {
            let unacknowledged = unacked.len();
            let mut again = unacked.lost();
            let room = self
                .shared
                .settings
                .queue_limit
                .saturating_sub(pending.stanzas.len());
            if self.by_error {
                again.clear();
            }
            again.truncate(room);
            tracing::info!(
                unacknowledged,
                sent_again = again.len(),
                "stream ended with stanzas not acknowledged"
            );
            for stanza in again.into_iter().rev() {
                pending.stanzas.push_front((stanza, None));
            }
        }
        match ended {
            Ended::Lost(why) if pending.is_empty() => {
                tracing::info!(reason = %why, "s2s stream closed");
                Ended::Done
            }
            other => other,
        }
    }
}
