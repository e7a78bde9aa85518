//! Inbound streams: remote servers connecting to our domain.
//!
//! Each connection runs in its own task and reads independently of every
//! other stream: a `<db:result/>` is verified through the authoritative
//! server in a task of its own, so a pending outgoing dialback never blocks
//! verifying another (Prosody sends `<db:verify/>` for our stream on the
//! connection it opened to us).
//!
//! A connection carries one stream after another (a new one after STARTTLS
//! and after SASL). [`Conn`] is what the connection has learnt; [`Open`] is
//! one stream on it; each element read is typed once ([`Control`]) and
//! handled by one function, which says how the stream goes on ([`Flow`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_xmpp::xmlstream::{AcceptedStream, PendingFeaturesSend, StreamHeader, accept_stream};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stream_error::DefinedCondition;

use super::acks::{self, Receiving};
use super::admission::{Refusal, Ticket};
use super::dialback::{self, Dialback, Verdict, Verified};
use super::limits::{self, Received};
use super::route::{self, StreamFault};
use super::stanza::{self, Stanza};
use super::transport::{Io, ReadBudget, Transport};
use super::wire::{self, Control, ReadFailure, Whitespace};
use super::{Shared, sasl_external};

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

/// What one connection has learnt, across the streams it carries.
struct Conn {
    shared: Arc<Shared>,
    ticket: Ticket,
    tls: bool,
    /// The certificate chain the peer presented in the TLS handshake, if any.
    peer_chain: Vec<CertificateDer<'static>>,
    sasl_done: bool,
    /// The domains proven on this connection (dialback may prove several).
    authenticated: Vec<String>,
    /// Domains whose `<db:result/>` is being verified.
    verifying: HashSet<String>,
    /// The peer asked for XEP-0288: it takes our stanzas on this connection.
    bidi: bool,
    verified_tx: mpsc::Sender<Verified>,
    bidi_tx: mpsc::Sender<Stanza>,
    /// The domain's own answers in flight from this connection.
    replies: Arc<Semaphore>,
    /// Dialback or SASL must have proven a domain by then, across restarts.
    auth_deadline: Instant,
}

/// One stream on the connection.
struct Open {
    stream: wire::Stream,
    /// The id we gave it (dialback keys are bound to it).
    id: String,
    /// The domain whose certificate the peer presented, when EXTERNAL is offered.
    external_for: Option<String>,
    last_stanza: Instant,
    /// XEP-0198, once the peer enables it.
    sm: Option<Receiving>,
}

/// How the connection goes on after an element.
enum Flow {
    Continue,
    /// `<proceed/>` went out: the TLS handshake and a new stream follow.
    StartTls,
    /// SASL EXTERNAL succeeded: `<success/>` and the stream restart follow.
    SaslSucceeded,
    /// End this stream: with a stream error, or quietly.
    End(Option<StreamFault>),
    /// The connection broke: nothing more can be written.
    Gone,
}

/// How the next stream on this connection begins.
enum Next {
    /// A new header on a (new or newly secured) transport.
    Open(Transport),
    /// A header already read by a stream reset (after SASL).
    Reset(Box<AcceptedStream<Io>>),
}

/// `Flow::Gone` when a write failed.
fn written(result: std::io::Result<()>) -> Flow {
    match result {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Gone,
    }
}

fn fault(condition: DefinedCondition, text: impl Into<String>) -> Flow {
    Flow::End(Some((condition, text.into())))
}

async fn serve(shared: Arc<Shared>, tcp: TcpStream, ticket: Ticket) {
    let _open = shared.metrics.stream_open("in");
    let _ = tcp.set_nodelay(true);
    // A second handle on the socket, to answer garbage sent before any stream
    // header: the XML stream layer gives no way to write once its parse failed.
    let mut raw = dup(&tcp);
    let mut next = Next::Open(Transport::plain(tcp, unauthenticated_budget(&shared)));
    let (verified_tx, mut verified_rx) = mpsc::channel::<Verified>(64);
    let (bidi_tx, mut bidi_rx) = mpsc::channel::<Stanza>(1024);
    let mut conn = Conn {
        auth_deadline: Instant::now() + shared.settings.auth_timeout,
        shared,
        ticket,
        tls: false,
        peer_chain: Vec::new(),
        sasl_done: false,
        authenticated: Vec::new(),
        verifying: HashSet::new(),
        bidi: false,
        verified_tx,
        bidi_tx,
        replies: Arc::new(Semaphore::new(route::REPLIES_IN_FLIGHT)),
    };
    loop {
        let Some(mut open) = conn.open(next, raw.take()).await else {
            break;
        };
        let restarted = match conn.run(&mut open, &mut verified_rx, &mut bidi_rx).await {
            Flow::StartTls => conn.start_tls(open.stream).await,
            Flow::SaslSucceeded => restart_after_sasl(open.stream).await,
            Flow::End(fault) => {
                conn.withdraw_bidi(&mut bidi_rx);
                end(&conn.shared, &mut open.stream, fault).await;
                return;
            }
            Flow::Gone | Flow::Continue => None,
        };
        match restarted {
            Some(n) => next = n,
            None => break,
        }
    }
    conn.withdraw_bidi(&mut bidi_rx);
}

/// Ends a stream: with its error (counted and logged), or with our footer.
async fn end(shared: &Shared, stream: &mut wire::Stream, fault: Option<StreamFault>) {
    match fault {
        Some((condition, text)) => {
            tracing::info!(%condition, %text, "ending inbound stream with an error");
            shared.metrics.stream_error(&condition.to_string());
            wire::close_with_error(stream, condition, &text).await;
        }
        None => {
            let _ = tokio::time::timeout(wire::WRITE_TIMEOUT, stream.shutdown()).await;
        }
    }
}

impl Conn {
    /// Reads the next stream header, answers it and sends our features.
    /// `None` when the stream never opens (already answered where it can be).
    async fn open(&mut self, next: Next, raw: Option<std::net::TcpStream>) -> Option<Open> {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let accepted = match next {
            Next::Open(transport) => {
                transport.expect_header();
                let timeouts = wire::timeouts(settings.keepalive, settings.idle_timeout);
                let accept =
                    accept_stream(BufStream::new(transport), stanza::JABBER_SERVER, timeouts);
                tokio::time::timeout(settings.connect_timeout, accept).await
            }
            Next::Reset(accepted) => Ok(Ok(*accepted)),
        };
        let mut accepted = match accepted {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "no valid stream header");
                // Garbage before the first header still gets a stream error.
                if let (Some(raw), ReadFailure::Error(condition, text)) =
                    (raw, wire::classify_io(&e))
                {
                    shared.metrics.stream_error(&condition.to_string());
                    raw_stream_error(raw, &shared.domain, &condition, &text).await;
                }
                return None;
            }
            Err(_) => {
                tracing::info!("no stream header in time");
                return None;
            }
        };
        let header = accepted.take_header();
        let from = header.from.as_deref().map(str::to_ascii_lowercase);
        let to = header.to.as_deref().map(str::to_ascii_lowercase);
        let reply = StreamHeader {
            from: Some(shared.domain.clone().into()),
            to: header.from.clone(),
            id: Some(dialback::stream_id().into()),
        };
        let id = reply.id.as_deref().unwrap_or_default().to_owned();
        let pending = match accepted.send_header(reply).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot answer the stream header");
                return None;
            }
        };
        let pending = self.admit_header(pending, to, from.as_deref()).await?;
        let external_for = from.filter(|from| {
            self.tls && !self.sasl_done && shared.trust.valid_for(&self.peer_chain, from)
        });
        let stream = match pending
            .send_features::<Received>(&self.features(external_for.is_some()))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send stream features");
                return None;
            }
        };
        // The stream is open: from here each element is timed from its first byte.
        stream.get_stream().get_ref().reset_budget();
        tracing::debug!(tls = self.tls, stream_id = %id, "inbound stream open");
        Some(Open {
            stream,
            id,
            external_for,
            last_stanza: Instant::now(),
            sm: None,
        })
    }

    /// A header for another domain, or from a domain not allowed, is answered
    /// with the stream error that says so.
    async fn admit_header(
        &self,
        pending: PendingFeaturesSend<Io>,
        to: Option<String>,
        from: Option<&str>,
    ) -> Option<PendingFeaturesSend<Io>> {
        let shared = &self.shared;
        let refusal = if to.as_deref() != Some(shared.domain.as_str()) {
            shared.metrics.stream_error("host-unknown");
            let text = format!("this server serves {}", shared.domain);
            Some(wire::stream_error(DefinedCondition::HostUnknown, &text))
        } else if let Some(from) = from {
            tracing::Span::current().record("remote", from);
            (!shared.allow.allows(from)).then(|| {
                shared.metrics.refused("in");
                shared.metrics.stream_error("policy-violation");
                let text = format!("{from} is not allowed to federate with {}", shared.domain);
                wire::stream_error(DefinedCondition::PolicyViolation, &text)
            })
        } else {
            None
        };
        match refusal {
            Some(error) => {
                let _ = pending.send_error(&error).await;
                None
            }
            None => Some(pending),
        }
    }

    /// STARTTLS while it can still be offered; dialback, bidi and stream
    /// management once the stream is as secure as required; EXTERNAL only when
    /// the certificate proves the claimed domain (XEP-0178).
    fn features(&self, external: bool) -> xmpp_parsers::stream_features::StreamFeatures {
        let settings = &self.shared.settings;
        let offer_tls = !self.tls && self.shared.server_tls.is_some();
        let mut others = Vec::new();
        if self.tls || !settings.require_tls {
            others.push(wire::dialback_feature());
            others.push(Element::bare("bidi", wire::NS_BIDI_FEATURE));
            others.push(Element::bare("sm", acks::NS_SM));
        }
        let mut features = wire::stream_features(offer_tls.then_some(settings.require_tls), others);
        if external {
            features.sasl_mechanisms.insert("EXTERNAL".to_owned());
        }
        features
    }

    /// Runs one open stream until it ends or restarts.
    async fn run(
        &mut self,
        open: &mut Open,
        verified: &mut mpsc::Receiver<Verified>,
        bidi_rx: &mut mpsc::Receiver<Stanza>,
    ) -> Flow {
        let shared = self.shared.clone();
        let mut stopping = shared.stopping.subscribe();
        loop {
            let idle_at = open.last_stanza + shared.settings.idle_timeout;
            let unauthenticated = self.authenticated.is_empty();
            let flow = tokio::select! {
                // The gateway stops: the peer learns it at once (RFC 6120 §4.9.3.20).
                _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => {
                    fault(DefinedCondition::SystemShutdown, "the gateway is shutting down")
                }
                // More of the peer's stanzas are handled: say so without being asked.
                _ = async {
                    match &open.sm {
                        Some(sm) => sm.acks.changed.notified().await,
                        None => std::future::pending().await,
                    }
                } => self.report_acks(open, false).await,
                read = open.stream.next() => match read {
                    Some(Ok(element)) => {
                        open.stream.get_stream().get_ref().reset_budget();
                        self.on_element(open, Control::parse(element.into_element())).await
                    }
                    Some(Err(e)) => on_read_error(open, wire::classify(e)).await,
                    None => Flow::End(None),
                },
                Some(verified) = verified.recv() => self.on_verified(open, verified).await,
                // Stanzas for the peer on this bidi stream (counted by the sender).
                Some(stanza) = bidi_rx.recv() => {
                    let element = stanza::to_wire(stanza::duplicate(&stanza));
                    if wire::send(&mut open.stream, &element).await.is_err() {
                        // Not lost: our own outbound stream takes it.
                        route::reroute(&shared, stanza, None);
                        Flow::End(None)
                    } else {
                        open.last_stanza = Instant::now();
                        Flow::Continue
                    }
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    tracing::info!("closing idle inbound stream");
                    Flow::End(None)
                }
                _ = tokio::time::sleep_until(self.auth_deadline), if unauthenticated => {
                    let secs = shared.settings.auth_timeout.as_secs();
                    fault(DefinedCondition::PolicyViolation, format!("not authenticated within {secs} s"))
                }
            };
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
    }

    /// One handler per kind of element.
    async fn on_element(&mut self, open: &mut Open, element: Control) -> Flow {
        match element {
            Control::StartTls => self.on_starttls(open).await,
            Control::SaslAuth { mechanism, initial } => {
                self.on_sasl(open, mechanism.as_deref(), &initial).await
            }
            Control::Bidi => {
                self.bidi = true;
                Flow::Continue
            }
            Control::SmEnable => {
                tracing::info!(
                    "peer enabled stream management (XEP-0198): stanzas acknowledged once handled"
                );
                open.sm = Some(Receiving::new());
                written(wire::send(&mut open.stream, &wire::out::sm_enabled()).await)
            }
            Control::SmRequest => self.report_acks(open, true).await,
            // Acks for what we send on a bidi stream: we keep no queue to trim.
            Control::SmAck(_) => Flow::Continue,
            Control::Dialback(parsed) => self.on_dialback(open, parsed).await,
            Control::Stanza(element) => self.on_stanza(open, element).await,
            Control::StreamError { condition, .. } => {
                tracing::info!(error = %condition, "peer sent a stream error");
                Flow::End(None)
            }
            other => fault(
                DefinedCondition::UnsupportedStanzaType,
                format!("unexpected <{}/>", other.name()),
            ),
        }
    }

    /// STARTTLS, when offered: `<proceed/>`; the handshake follows ([`Conn::start_tls`]).
    async fn on_starttls(&mut self, open: &mut Open) -> Flow {
        if self.tls || self.shared.server_tls.is_none() {
            return fault(
                DefinedCondition::PolicyViolation,
                "STARTTLS is not offered on this stream",
            );
        }
        match wire::send(&mut open.stream, &xmpp_parsers::starttls::Proceed).await {
            Ok(()) => Flow::StartTls,
            Err(_) => Flow::Gone,
        }
    }

    /// The TLS handshake, then a new stream on the new transport that
    /// remembers nothing of the old one (RFC 6120 §5.4.3.3).
    async fn start_tls(&mut self, stream: wire::Stream) -> Option<Next> {
        let shared = self.shared.clone();
        let server_tls = shared.server_tls.as_ref()?;
        let tcp = stream.into_inner().into_inner().into_tcp()?;
        let handshake = tokio_rustls::TlsAcceptor::from(server_tls.config()).accept(tcp);
        match tokio::time::timeout(shared.settings.connect_timeout, handshake)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            Ok(stream) => {
                self.peer_chain = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(<[_]>::to_vec)
                    .unwrap_or_default();
                self.tls = true;
                self.authenticated.clear();
                self.verifying.clear();
                self.bidi = false;
                Some(Next::Open(Transport::tls(
                    tokio_rustls::TlsStream::Server(stream),
                    unauthenticated_budget(&shared),
                )))
            }
            Err(e) => {
                tracing::info!(error = %e, "TLS handshake failed");
                None
            }
        }
    }

    /// SASL EXTERNAL: on success the peer's domain is proven and the stream
    /// restarts ([`restart_after_sasl`]); on failure the peer may try dialback.
    async fn on_sasl(&mut self, open: &mut Open, mechanism: Option<&str>, initial: &str) -> Flow {
        let shared = self.shared.clone();
        match sasl_external::check(&shared, mechanism, initial, open.external_for.as_deref()) {
            Ok(domain) => {
                shared.metrics.auth("sasl-external-in", "valid");
                tracing::info!(%domain, "peer authenticated by SASL EXTERNAL");
                self.proven(&open.stream, domain);
                self.sasl_done = true;
                Flow::SaslSucceeded
            }
            Err(why) => {
                shared.metrics.auth("sasl-external-in", "refused");
                tracing::info!(reason = %why, "SASL EXTERNAL refused");
                let failure = xmpp_parsers::sasl::Failure {
                    defined_condition: xmpp_parsers::sasl::DefinedCondition::NotAuthorized,
                    texts: Default::default(),
                };
                written(wire::send(&mut open.stream, &failure).await)
            }
        }
    }

    /// A domain is proven on this connection: it may send stanzas, it no
    /// longer counts as unauthenticated, its stanzas may be as large as the
    /// configuration allows, and with bidi it takes ours here.
    fn proven(&mut self, stream: &wire::Stream, domain: String) {
        if self.bidi {
            self.shared
                .set_bidi_route(&domain, Some(self.bidi_tx.clone()));
        }
        if !self.authenticated.contains(&domain) {
            self.authenticated.push(domain);
        }
        self.ticket.authenticated();
        stream
            .get_stream()
            .get_ref()
            .budget()
            .set_limit(self.shared.settings.max_stanza_bytes);
    }

    /// Dialback: a `<db:verify/>` is answered at once, a `<db:result/>`
    /// verified in a task of its own ([`Conn::on_verified`] hears the verdict).
    async fn on_dialback(
        &mut self,
        open: &mut Open,
        parsed: Result<Dialback, dialback::DialbackParseError>,
    ) -> Flow {
        if self.shared.settings.require_tls && !self.tls {
            return fault(
                DefinedCondition::PolicyViolation,
                "TLS is required before dialback",
            );
        }
        let request = match parsed {
            Ok(request) => request,
            Err(e) => return fault(DefinedCondition::InvalidXml, e.to_string()),
        };
        let shared = self.shared.clone();
        let verified_tx = self.verified_tx.clone();
        match dialback::on_inbound(
            &shared,
            request,
            &open.id,
            &verified_tx,
            &mut self.verifying,
        ) {
            Ok(Some(answer)) => written(wire::send_dialback(&mut open.stream, &answer).await),
            Ok(None) => Flow::Continue,
            Err(fault) => Flow::End(Some(fault)),
        }
    }

    /// The authoritative server's verdict on a `<db:result/>` of ours.
    async fn on_verified(&mut self, open: &mut Open, verified: Verified) -> Flow {
        let Verified {
            stream_id,
            domain,
            verdict,
        } = verified;
        self.verifying.remove(&domain);
        if stream_id != open.id {
            return Flow::Continue;
        }
        let shared = self.shared.clone();
        let answer = Dialback::ResultAnswer {
            from: shared.domain.clone(),
            to: domain.clone(),
            verdict,
        };
        if wire::send_dialback(&mut open.stream, &answer)
            .await
            .is_err()
        {
            return Flow::Gone;
        }
        if verdict != Verdict::Valid {
            shared.metrics.auth("dialback-in", "invalid");
            return fault(
                DefinedCondition::NotAuthorized,
                format!("dialback for {domain} failed"),
            );
        }
        shared.metrics.auth("dialback-in", "valid");
        tracing::info!(%domain, tls = self.tls, bidi = self.bidi, "peer authenticated by dialback");
        self.proven(&open.stream, domain);
        Flow::Continue
    }

    /// A stanza, from an authenticated domain only, routed with its XEP-0198 ack.
    async fn on_stanza(&mut self, open: &mut Open, element: Element) -> Flow {
        open.last_stanza = Instant::now();
        if self.authenticated.is_empty() {
            return fault(
                DefinedCondition::NotAuthorized,
                "authenticate before sending stanzas",
            );
        }
        let ack = open.sm.as_mut().map(Receiving::received);
        let replies = Some(&self.replies);
        match route::dispatch(&self.shared, element, &self.authenticated, ack, replies).await {
            Ok(()) => Flow::Continue,
            Err(fault) => Flow::End(Some(fault)),
        }
    }

    /// Tells the peer how many of its stanzas are handled: when asked
    /// (`<r/>`, answered even without stream management), or when it moved.
    async fn report_acks(&mut self, open: &mut Open, asked: bool) -> Flow {
        let h = match open.sm.as_mut() {
            Some(sm) => sm.report(asked),
            None => asked.then_some(0),
        };
        match h {
            Some(h) => written(wire::send(&mut open.stream, &acks::ack_element(h)).await),
            None => Flow::Continue,
        }
    }

    /// No new stanza is routed to this connection from now on; those already
    /// queued go through our own outbound stream instead.
    fn withdraw_bidi(&self, bidi_rx: &mut mpsc::Receiver<Stanza>) {
        for domain in &self.authenticated {
            if self
                .shared
                .bidi_route(domain)
                .is_some_and(|tx| tx.same_channel(&self.bidi_tx))
            {
                self.shared.set_bidi_route(domain, None);
            }
        }
        bidi_rx.close();
        while let Ok(stanza) = bidi_rx.try_recv() {
            route::reroute(&self.shared, stanza, None);
        }
    }
}

/// `<success/>`, then the initiator restarts the stream (RFC 6120 §6.4.6).
async fn restart_after_sasl(stream: wire::Stream) -> Option<Next> {
    stream.get_stream().get_ref().expect_header();
    let success = xmpp_parsers::sasl::Success { data: Vec::new() };
    match stream.accept_reset(&success).await {
        Ok(accepted) => Some(Next::Reset(Box::new(accepted))),
        Err(e) => {
            tracing::debug!(error = %e, "stream restart after SASL failed");
            None
        }
    }
}

/// A read that yielded no element: a keepalive is due, or the stream ends.
async fn on_read_error(open: &mut Open, failure: ReadFailure) -> Flow {
    let budget = open.stream.get_stream().get_ref().budget();
    match failure {
        // Silence inside a start tag is not "mid-stanza" to the parser: the
        // element's clock still runs.
        ReadFailure::Timeout if budget.overdue().is_some() => {
            let slow = budget.overdue().map(|s| s.to_string()).unwrap_or_default();
            fault(DefinedCondition::PolicyViolation, slow)
        }
        ReadFailure::Timeout => match wire::send(&mut open.stream, &Whitespace).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::End(None),
        },
        ReadFailure::Closed => Flow::End(None),
        ReadFailure::Error(condition, text) => fault(condition, text),
    }
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
