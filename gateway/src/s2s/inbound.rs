//! Inbound streams: remote servers connecting to our domain.
//!
//! Each connection runs in its own task and reads independently of every
//! other stream: a `<db:result/>` is verified through the authoritative
//! server in a task of its own, so a pending outgoing dialback never blocks
//! verifying another (Prosody sends `<db:verify/>` for our stream on the
//! connection it opened to us).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_xmpp::xmlstream::{AcceptedStream, StreamHeader, accept_stream};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stream_error::DefinedCondition;

use super::acks::{self, Ack, Acks};
use super::admission::{Refusal, Ticket};
use super::dialback::{self, Dialback, Verdict};
use super::limits::{self, Received};
use super::services::{self, Handled};
use super::stanza::{self, Stanza};
use super::transport::{Io, ReadBudget, Transport};
use super::wire::{self, ReadFailure, Whitespace};
use super::{S2sSender, Shared, metrics};

/// What the verification tasks and bidi senders tell the connection.
enum Event {
    /// The authoritative server's verdict on a `<db:result/>` sent on the
    /// stream with this id (a later stream on the connection ignores it).
    Verified {
        stream_id: String,
        domain: String,
        verdict: Verdict,
    },
}

/// Dialback verifications one connection may have outstanding at once.
const MAX_VERIFYING: usize = 8;

/// An error that ends the stream: the condition and a text for the peer.
pub type StreamFault = (DefinedCondition, String);

pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, ticket: Ticket) {
    let span = tracing::info_span!("s2s_in", %peer, remote = tracing::field::Empty);
    let limits = shared.settings.limits;
    let serve = tracing::Instrument::instrument(serve(shared, tcp, ticket), span);
    limits::scoped(limits, serve).await;
}

/// Answers a connection that was not admitted, without waiting on it: the
/// stream error goes out if the socket takes it at once, then it closes.
pub fn refuse(domain: &str, tcp: TcpStream, refusal: Refusal) {
    let condition = match refusal {
        Refusal::Total(_) => DefinedCondition::ResourceConstraint,
        Refusal::PerAddress(_) => DefinedCondition::PolicyViolation,
    };
    let _ = tcp.try_write(raw_error_bytes(domain, &condition, &refusal.text()).as_bytes());
}

/// The read budget of a transport before the peer has authenticated.
fn unauthenticated_budget(shared: &Shared) -> ReadBudget {
    let budget = shared.settings.read_budget();
    budget.set_limit(
        shared
            .settings
            .max_stanza_bytes
            .min(super::UNAUTHENTICATED_STANZA_BYTES),
    );
    budget
}

async fn serve(shared: Arc<Shared>, tcp: TcpStream, mut ticket: Ticket) {
    let _open = shared.metrics.stream_open("in");
    let _ = tcp.set_nodelay(true);
    // A second handle on the socket, to answer garbage sent before any stream
    // header: the XML stream layer gives no way to write once its parse failed.
    let raw = dup(&tcp);
    let mut next = Next::Open(Transport::plain(tcp, unauthenticated_budget(&shared)));
    // Dialback or SASL must have proven a domain by then, across restarts.
    let auth_deadline = Instant::now() + shared.settings.auth_timeout;
    let mut tls = false;
    // The certificate chain the peer presented in the TLS handshake, if any.
    let mut peer_chain: Vec<CertificateDer<'static>> = Vec::new();
    let mut sasl_done = false;
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let (bidi_tx, mut bidi_rx) = mpsc::channel::<Stanza>(1024);
    let mut verifying: HashSet<String> = HashSet::new();
    let mut authenticated: Vec<String> = Vec::new();
    let replies = Arc::new(Semaphore::new(REPLIES_IN_FLIGHT));
    let mut bidi = false;
    let mut first_header = true;

    'restart: loop {
        let accepted = match next {
            Next::Open(transport) => {
                transport.expect_header();
                tokio::time::timeout(
                    shared.settings.connect_timeout,
                    accept_stream(
                        BufStream::new(transport),
                        stanza::JABBER_SERVER,
                        wire::timeouts(shared.settings.keepalive, shared.settings.idle_timeout),
                    ),
                )
                .await
            }
            Next::Reset(accepted) => Ok(Ok(*accepted)),
        };
        let mut accepted = match accepted {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "no valid stream header");
                if let (true, Some(raw), ReadFailure::Error(condition, text)) =
                    (first_header, raw, wire::classify_io(&e))
                {
                    shared.metrics.stream_error(&condition.to_string());
                    raw_stream_error(raw, &shared.domain, &condition, &text).await;
                }
                return;
            }
            Err(_) => {
                tracing::info!("no stream header in time");
                return;
            }
        };
        first_header = false;
        let header = accepted.take_header();
        let to = header.to.as_deref().map(str::to_ascii_lowercase);
        let from = header.from.as_deref().map(str::to_ascii_lowercase);
        let reply = StreamHeader {
            from: Some(shared.domain.clone().into()),
            to: header.from.clone(),
            id: Some(dialback::stream_id().into()),
        };
        let stream_id = reply.id.as_deref().unwrap_or_default().to_owned();
        let pending = match accepted.send_header(reply).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot answer the stream header");
                return;
            }
        };
        if to.as_deref() != Some(shared.domain.as_str()) {
            shared.metrics.stream_error("host-unknown");
            let text = format!("this server serves {}", shared.domain);
            let _ = pending
                .send_error(&wire::stream_error(DefinedCondition::HostUnknown, &text))
                .await;
            return;
        }
        if let Some(from) = &from {
            tracing::Span::current().record("remote", from.as_str());
            if !shared.allow.allows(from) {
                shared.metrics.refused("in");
                shared.metrics.stream_error("policy-violation");
                let text = format!("{from} is not allowed to federate with {}", shared.domain);
                let _ = pending
                    .send_error(&wire::stream_error(
                        DefinedCondition::PolicyViolation,
                        &text,
                    ))
                    .await;
                return;
            }
        }
        let offer_tls = !tls && shared.server_tls.is_some();
        let mut others = Vec::new();
        if tls || !shared.settings.require_tls {
            others.push(wire::dialback_feature());
            others.push(Element::bare("bidi", wire::NS_BIDI_FEATURE));
            others.push(Element::bare("sm", acks::NS_SM));
        }
        let mut features =
            wire::stream_features(offer_tls.then_some(shared.settings.require_tls), others);
        // XEP-0178: EXTERNAL only when the certificate proves the claimed domain.
        let external_for = from
            .clone()
            .filter(|from| tls && !sasl_done && shared.trust.valid_for(&peer_chain, from));
        if external_for.is_some() {
            features.sasl_mechanisms.insert("EXTERNAL".to_owned());
        }
        let mut stream = match pending.send_features::<Received>(&features).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send stream features");
                return;
            }
        };
        // The stream is open: from here each element is timed from its first byte.
        stream.get_stream().get_ref().reset_budget();
        tracing::debug!(tls, stream_id = %stream_id, "inbound stream open");
        let mut last_stanza = Instant::now();
        let mut stopping = shared.stopping.subscribe();
        // XEP-0198, once the peer enables it: stanzas received, and the last h reported.
        let mut sm: Option<(Arc<Acks>, u64, u32)> = None;

        let fault: Option<StreamFault> = loop {
            let idle_at = last_stanza + shared.settings.idle_timeout;
            tokio::select! {
                // The gateway stops: the peer learns it at once (RFC 6120 §4.9.3.20).
                _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => {
                    break Some((DefinedCondition::SystemShutdown, "the gateway is shutting down".into()));
                }
                // More of the peer's stanzas are handled: say so without being asked.
                _ = async {
                    match &sm {
                        Some((acks, _, _)) => acks.changed.notified().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((acks, _, reported)) = &mut sm {
                        let h = acks.h();
                        if h != *reported {
                            *reported = h;
                            if wire::send(&mut stream, &acks::ack_element(h)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                read = stream.next() => match read {
                    Some(Ok(element)) => {
                        stream.get_stream().get_ref().reset_budget();
                        if element.is("starttls", wire::NS_TLS) {
                            let Some(server_tls) = shared.server_tls.as_ref().filter(|_| !tls) else {
                                break Some((DefinedCondition::PolicyViolation, "STARTTLS is not offered on this stream".into()));
                            };
                            if wire::send(&mut stream, &Element::bare("proceed", wire::NS_TLS)).await.is_err() {
                                return;
                            }
                            let Some(tcp) = stream.into_inner().into_inner().into_tcp() else { return };
                            let handshake = tokio_rustls::TlsAcceptor::from(server_tls.config()).accept(tcp);
                            match tokio::time::timeout(shared.settings.connect_timeout, handshake).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
                                Ok(stream) => {
                                    peer_chain = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
                                    tls = true;
                                    // RFC 6120 §5.4.3.3: nothing learnt before TLS carries over.
                                    authenticated.clear();
                                    verifying.clear();
                                    bidi = false;
                                    next = Next::Open(Transport::tls(
                                        tokio_rustls::TlsStream::Server(stream),
                                        unauthenticated_budget(&shared),
                                    ));
                                    continue 'restart;
                                }
                                Err(e) => {
                                    tracing::info!(error = %e, "TLS handshake failed");
                                    return;
                                }
                            }
                        } else if element.is("auth", wire::NS_SASL) {
                            match sasl_external(&shared, &element, external_for.as_deref()) {
                                Ok(domain) => {
                                    shared.metrics.auth("sasl-external-in", "valid");
                                    tracing::info!(%domain, "peer authenticated by SASL EXTERNAL");
                                    if bidi {
                                        shared.set_bidi_route(&domain, Some(bidi_tx.clone()));
                                    }
                                    if !authenticated.contains(&domain) {
                                        authenticated.push(domain);
                                    }
                                    admitted(&shared, &stream, &mut ticket);
                                    sasl_done = true;
                                    // RFC 6120 §6.4.6: success, then the initiator restarts the stream.
                                    stream.get_stream().get_ref().expect_header();
                                    match stream.accept_reset(&Element::bare("success", wire::NS_SASL)).await {
                                        Ok(accepted) => {
                                            next = Next::Reset(Box::new(accepted));
                                            continue 'restart;
                                        }
                                        Err(e) => {
                                            tracing::debug!(error = %e, "stream restart after SASL failed");
                                            return;
                                        }
                                    }
                                }
                                Err(why) => {
                                    shared.metrics.auth("sasl-external-in", "refused");
                                    tracing::info!(reason = %why, "SASL EXTERNAL refused");
                                    let failure = Element::builder("failure", wire::NS_SASL)
                                        .append(Element::bare("not-authorized", wire::NS_SASL))
                                        .build();
                                    if wire::send(&mut stream, &failure).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        } else if element.is("bidi", wire::NS_BIDI) {
                            bidi = true;
                        } else if element.is("enable", acks::NS_SM) {
                            // No resumption: a new stream counts from zero.
                            tracing::info!("peer enabled stream management (XEP-0198): stanzas acknowledged once handled");
                            sm = Some((Arc::new(Acks::default()), 0, 0));
                            if wire::send(&mut stream, &Element::bare("enabled", acks::NS_SM)).await.is_err() {
                                return;
                            }
                        } else if element.is("r", acks::NS_SM) {
                            let h = sm.as_ref().map_or(0, |(acks, _, _)| acks.h());
                            if let Some((_, _, reported)) = &mut sm {
                                *reported = h;
                            }
                            if wire::send(&mut stream, &acks::ack_element(h)).await.is_err() {
                                return;
                            }
                        } else if element.is("a", acks::NS_SM) {
                            // Acks for what we send on a bidi stream: we keep no queue to trim.
                        } else if Dialback::is_dialback(&element) {
                            if shared.settings.require_tls && !tls {
                                break Some((DefinedCondition::PolicyViolation, "TLS is required before dialback".into()));
                            }
                            match on_dialback(&shared, &element, &stream_id, &events_tx, &mut verifying) {
                                Ok(Some(answer)) => {
                                    if wire::send_dialback(&mut stream, &answer).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => {}
                                Err(fault) => break Some(fault),
                            }
                        } else if stanza::is_stanza(&element) {
                            last_stanza = Instant::now();
                            if authenticated.is_empty() {
                                break Some((DefinedCondition::NotAuthorized, "authenticate before sending stanzas".into()));
                            }
                            let ack = sm.as_mut().map(|(acks, received, _)| {
                                *received += 1;
                                Ack::new(acks.clone(), *received)
                            });
                            if let Err(fault) = dispatch(&shared, element.into_element(), &authenticated, ack, Some(&replies)).await {
                                break Some(fault);
                            }
                        } else if element.is("error", wire::NS_STREAM) {
                            tracing::info!(error = ?element.children().next().map(|c| c.name().to_owned()), "peer sent a stream error");
                            break None;
                        } else {
                            break Some((DefinedCondition::UnsupportedStanzaType, format!("unexpected <{}/>", element.name())));
                        }
                    }
                    Some(Err(e)) => match wire::classify(e) {
                        // Silence inside a start tag is not "mid-stanza" to the
                        // parser: the element's clock still runs.
                        ReadFailure::Timeout if stream.get_stream().get_ref().budget().overdue().is_some() => {
                            let slow = stream.get_stream().get_ref().budget().overdue().map(|s| s.to_string()).unwrap_or_default();
                            break Some((DefinedCondition::PolicyViolation, slow));
                        }
                        ReadFailure::Timeout => {
                            if wire::send(&mut stream, &Whitespace).await.is_err() {
                                break None;
                            }
                        }
                        ReadFailure::Closed => break None,
                        ReadFailure::Error(condition, text) => break Some((condition, text)),
                    },
                    None => break None,
                },
                Some(event) = events.recv() => match event {
                    Event::Verified { stream_id: for_stream, domain, verdict } => {
                        verifying.remove(&domain);
                        if for_stream != stream_id {
                            continue;
                        }
                        let answer = Dialback::ResultAnswer { from: shared.domain.clone(), to: domain.clone(), verdict };
                        if wire::send_dialback(&mut stream, &answer).await.is_err() {
                            return;
                        }
                        if verdict == Verdict::Valid {
                            shared.metrics.auth("dialback-in", "valid");
                            tracing::info!(%domain, tls, bidi, "peer authenticated by dialback");
                            if !authenticated.contains(&domain) {
                                authenticated.push(domain.clone());
                            }
                            admitted(&shared, &stream, &mut ticket);
                            if bidi {
                                shared.set_bidi_route(&domain, Some(bidi_tx.clone()));
                            }
                        } else {
                            shared.metrics.auth("dialback-in", "invalid");
                            break Some((DefinedCondition::NotAuthorized, format!("dialback for {domain} failed")));
                        }
                    }
                },
                // Stanzas for the peer on this bidi stream (counted by the sender).
                Some(stanza) = bidi_rx.recv() => {
                    let element = stanza::to_wire(stanza::duplicate(&stanza));
                    if wire::send(&mut stream, &element).await.is_err() {
                        // Not lost: our own outbound stream takes it.
                        reroute(&shared, stanza, None);
                        break None;
                    }
                    last_stanza = Instant::now();
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    tracing::info!("closing idle inbound stream");
                    break None;
                }
                _ = tokio::time::sleep_until(auth_deadline), if authenticated.is_empty() => {
                    let secs = shared.settings.auth_timeout.as_secs();
                    break Some((DefinedCondition::PolicyViolation, format!("not authenticated within {secs} s")));
                }
            }
        };
        // No new stanza is routed here from now on; those already queued go
        // through our own outbound stream instead.
        for domain in &authenticated {
            if shared
                .bidi_route(domain)
                .is_some_and(|tx| tx.same_channel(&bidi_tx))
            {
                shared.set_bidi_route(domain, None);
            }
        }
        bidi_rx.close();
        while let Ok(stanza) = bidi_rx.try_recv() {
            reroute(&shared, stanza, None);
        }
        match fault {
            Some((condition, text)) => {
                tracing::info!(%condition, %text, "ending inbound stream with an error");
                shared.metrics.stream_error(&condition.to_string());
                wire::close_with_error(&mut stream, condition, &text).await;
            }
            None => {
                let _ = tokio::time::timeout(wire::WRITE_TIMEOUT, stream.shutdown()).await;
            }
        }
        return;
    }
}

/// The peer has proven a domain: it no longer counts as unauthenticated,
/// and its stanzas may be as large as the configuration allows.
fn admitted(shared: &Shared, stream: &wire::Stream, ticket: &mut Ticket) {
    ticket.authenticated();
    stream
        .get_stream()
        .get_ref()
        .budget()
        .set_limit(shared.settings.max_stanza_bytes);
}

/// How the next stream on this connection begins.
enum Next {
    /// A new header on a (new or newly secured) transport.
    Open(Transport),
    /// A header already read by a stream reset (after SASL).
    Reset(Box<AcceptedStream<Io>>),
}

/// Checks an `<auth mechanism='EXTERNAL'/>`: the authorization identity (or,
/// when empty, the stream's `from`) must be the domain the certificate proved.
fn sasl_external(shared: &Shared, auth: &Element, proven: Option<&str>) -> Result<String, String> {
    if auth.attr("mechanism") != Some("EXTERNAL") {
        return Err(format!(
            "mechanism {:?} is not offered",
            auth.attr("mechanism")
        ));
    }
    let Some(proven) = proven else {
        return Err("no certificate valid for the stream's domain".into());
    };
    let text = auth.text();
    let text = text.trim();
    let authzid = if text.is_empty() || text == "=" {
        proven.to_owned()
    } else {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("authorization identity is not base64: {e}"))?;
        String::from_utf8(bytes)
            .map_err(|_| "authorization identity is not UTF-8".to_owned())?
            .to_ascii_lowercase()
    };
    if authzid != proven {
        return Err(format!("the certificate is for {proven}, not {authzid}"));
    }
    if !shared.allow.allows(&authzid) {
        return Err(format!("{authzid} is not allowed"));
    }
    Ok(authzid)
}

/// Handles a dialback element: answers `<db:verify/>` at once, starts the
/// verification of a `<db:result/>` in its own task.
fn on_dialback(
    shared: &Arc<Shared>,
    element: &Element,
    stream_id: &str,
    events: &mpsc::Sender<Event>,
    verifying: &mut HashSet<String>,
) -> Result<Option<Dialback>, StreamFault> {
    let request =
        Dialback::parse(element).map_err(|e| (DefinedCondition::InvalidXml, e.to_string()))?;
    match request {
        Dialback::VerifyRequest { from, to, id, key } => {
            // We are the authoritative server for `to`: was this our key?
            let verdict = if to == shared.domain && shared.keys.verify(&from, &to, &id, &key) {
                Verdict::Valid
            } else {
                Verdict::Invalid
            };
            Ok(Some(Dialback::VerifyAnswer {
                from: to,
                to: from,
                id,
                verdict,
            }))
        }
        Dialback::ResultRequest { from, to, key } => {
            if to != shared.domain {
                return Err((
                    DefinedCondition::HostUnknown,
                    format!("this server serves {}", shared.domain),
                ));
            }
            if !shared.allow.allows(&from) {
                shared.metrics.refused("in");
                return Err((
                    DefinedCondition::PolicyViolation,
                    format!("{from} is not allowed to federate with {to}"),
                ));
            }
            // One verification per domain at a time, and a few per connection:
            // each costs a round trip to the authoritative server.
            if verifying.contains(&from) {
                return Ok(None);
            }
            if verifying.len() >= MAX_VERIFYING {
                return Err((
                    DefinedCondition::PolicyViolation,
                    "too many dialback requests at once".into(),
                ));
            }
            verifying.insert(from.clone());
            let outbound = shared.outbound(&from);
            let id = stream_id.to_owned();
            let events = events.clone();
            let deadline = shared.settings.connect_timeout * 2;
            tokio::spawn(async move {
                let verdict = tokio::time::timeout(deadline, outbound.verify(id.clone(), key))
                    .await
                    .unwrap_or(Verdict::Error);
                let _ = events
                    .send(Event::Verified {
                        stream_id: id,
                        domain: from,
                        verdict,
                    })
                    .await;
            });
            Ok(None)
        }
        other => {
            tracing::debug!(?other, "unexpected dialback answer on an inbound stream");
            Ok(None)
        }
    }
}

/// Routes one stanza from an authenticated stream: addressing checks, the
/// allow list (which may have changed since the stream opened), the domain
/// services, then the bridge.
/// `ack` (XEP-0198) goes with the stanza to the bridge, or is dropped — the
/// stanza counted as handled — when the stanza is answered here or refused.
pub async fn dispatch(
    shared: &Arc<Shared>,
    element: Element,
    authenticated: &[String],
    ack: Option<Ack>,
    replies: Option<&Arc<Semaphore>>,
) -> Result<(), StreamFault> {
    let from_domain = element.attr("from").map(bare_domain);
    let Some(from_domain) = from_domain else {
        return Err((
            DefinedCondition::ImproperAddressing,
            "stanza without a from address".into(),
        ));
    };
    if !authenticated.contains(&from_domain) {
        return Err((
            DefinedCondition::InvalidFrom,
            format!("{from_domain} was not authenticated on this stream"),
        ));
    }
    let Some(to_domain) = element.attr("to").map(bare_domain) else {
        return Err((
            DefinedCondition::ImproperAddressing,
            "stanza without a to address".into(),
        ));
    };
    if to_domain != shared.domain {
        return Err((
            DefinedCondition::HostUnknown,
            format!("this server serves {}", shared.domain),
        ));
    }
    if !shared.allow.allows(&from_domain) {
        shared.metrics.refused("in");
        return Err((
            DefinedCondition::PolicyViolation,
            format!("{from_domain} is no longer allowed"),
        ));
    }
    let stanza = match stanza::from_wire(element) {
        Ok(s) => s,
        Err(e) => {
            // One bad stanza does not end a stream that carries others.
            tracing::info!(error = %e, domain = %from_domain, "dropping an invalid stanza");
            if let Some(ack) = ack {
                ack.handled();
            }
            return Ok(());
        }
    };
    shared
        .metrics
        .stanza_in(&shared.domain_label(&from_domain), metrics::kind(&stanza));
    match services::handle(shared.directory.as_ref(), stanza) {
        Handled::Answered(reply) => {
            if let Some(reply) = reply {
                // Answers in flight are bounded per stream: a peer that floods
                // us with pings waits (its stream is not read) rather than
                // losing answers or growing our memory.
                let permit = match replies {
                    Some(replies) => replies.clone().acquire_owned().await.ok(),
                    None => None,
                };
                reroute(shared, reply, permit);
            }
            if let Some(ack) = ack {
                ack.handled();
            }
        }
        Handled::Bridge(stanza) => shared.deliver(stanza, ack).await,
    }
    Ok(())
}

/// Answers in flight per stream before the stream stops being read.
const REPLIES_IN_FLIGHT: usize = 1024;

/// Sends a stanza from a task of its own: the stream task that calls this
/// must never wait on a queue that only it (or the bridge) empties. The task
/// waits for room in a full outbound queue (no outbox sends these again);
/// `permit`, if any, is released once the stanza is queued.
pub fn reroute(shared: &Arc<Shared>, stanza: Stanza, permit: Option<OwnedSemaphorePermit>) {
    let sender = S2sSender {
        shared: shared.clone(),
    };
    let patience = shared.settings.connect_timeout * 2;
    tokio::spawn(async move {
        if let Err(e) = sender.send_waiting(stanza, patience).await {
            tracing::info!(error = %e, "stanza not sent");
        }
        drop(permit);
    });
}

/// `user@domain/resource` → `domain`, lower-cased.
fn bare_domain(jid: &str) -> String {
    let without_resource = jid.split('/').next().unwrap_or(jid);
    without_resource
        .rsplit('@')
        .next()
        .unwrap_or(without_resource)
        .to_ascii_lowercase()
}

fn dup(tcp: &TcpStream) -> Option<std::net::TcpStream> {
    let borrowed = socket2::SockRef::from(tcp);
    borrowed.try_clone().ok().map(std::net::TcpStream::from)
}

/// RFC 6120 §4.9.1.1: an error before the stream opened still gets a header,
/// then the error, then the close.
async fn raw_stream_error(
    raw: std::net::TcpStream,
    domain: &str,
    condition: &DefinedCondition,
    text: &str,
) {
    let Ok(mut tcp) = TcpStream::from_std(raw) else {
        return;
    };
    let bytes = raw_error_bytes(domain, condition, text);
    let _ = tcp.write_all(bytes.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// A stream header, a stream error and the close, as bytes.
fn raw_error_bytes(domain: &str, condition: &DefinedCondition, text: &str) -> String {
    let text = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='{domain}' version='1.0'>\
         <stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{text}</text></stream:error></stream:stream>"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_domains() {
        assert_eq!(super::bare_domain("Bob@Xmpp.Test/phone"), "xmpp.test");
        assert_eq!(super::bare_domain("xmpp.test"), "xmpp.test");
        assert_eq!(super::bare_domain("xmpp.test/res@x"), "xmpp.test");
    }
}
