//! Outbound streams: one per remote domain, opened on first use.
//!
//! The stream's task resolves and connects, upgrades with STARTTLS, asks for
//! XEP-0288 bidi when offered, and authenticates with dialback. Stanzas wait
//! in its queue until the peer accepts our key; `<db:verify/>` requests for
//! the inbound side go out as soon as the stream is open, independent of our
//! own dialback. A domain that cannot be reached gets a few attempts with
//! backoff, then each queued stanza is bounced with `remote-server-not-found`
//! or `remote-server-timeout`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_xmpp::xmlstream::{StreamHeader, initiate_stream};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

use super::dialback::{Dialback, Verdict};
use super::stanza::{self, Stanza};
use super::transport::Transport;
use super::wire::{self, ReadFailure, Stream, Whitespace};
use super::{Shared, acks, inbound, limits, metrics};

/// How many times a domain is tried before queued stanzas bounce.
const ATTEMPTS: u32 = 3;
/// How long a peer with stream management may take to acknowledge what we
/// sent before the stream is taken as dead (well within the bridge's wait).
const ACK_TIMEOUT: Duration = Duration::from_secs(20);

pub enum Command {
    /// A stanza, and who wants to know once it is written to the stream.
    Send(Box<Stanza>, Option<oneshot::Sender<()>>),
    Verify {
        id: String,
        key: String,
        reply: oneshot::Sender<Verdict>,
    },
}

/// Why a stanza was not queued.
pub enum Refused {
    /// The queue is full: the caller (the bridge's durable outbox) retries later.
    Full,
    /// The stream task has ended: the stanza comes back for a new one.
    Closed(Box<Stanza>, Option<oneshot::Sender<()>>),
}

/// A handle on one remote domain's outbound stream task.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Command>,
}

impl Outbound {
    pub fn spawn(shared: Arc<Shared>, domain: String) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let handle = Self { tx };
        let me = handle.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("s2s_out", peer = %domain);
            let limits = shared.settings.limits;
            let run = tracing::Instrument::instrument(run(shared, domain, rx, me), span);
            limits::scoped(limits, run).await;
        });
        handle
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub fn same(&self, other: &Outbound) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Queues a stanza without waiting; gives it back when the queue is full
    /// or this stream's task has ended.
    pub fn try_send(
        &self,
        stanza: Stanza,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), Refused> {
        use mpsc::error::TrySendError;
        self.tx
            .try_send(Command::Send(Box::new(stanza), written))
            .map_err(|e| match e {
                TrySendError::Full(Command::Send(..)) => Refused::Full,
                TrySendError::Closed(Command::Send(s, w)) => Refused::Closed(s, w),
                TrySendError::Full(Command::Verify { .. })
                | TrySendError::Closed(Command::Verify { .. }) => {
                    unreachable!("sent a Send")
                }
            })
    }

    /// Queues a stanza, waiting while the queue is full (the stream task is
    /// writing a batch); gives it back if this stream's task has ended.
    pub async fn send(&self, stanza: Stanza) -> Result<(), Box<Stanza>> {
        self.tx
            .send(Command::Send(Box::new(stanza), None))
            .await
            .map_err(|e| match e.0 {
                Command::Send(s, _) => s,
                Command::Verify { .. } => unreachable!("sent a Send"),
            })
    }

    /// Asks the remote domain (the authoritative server) whether `key` is
    /// its key for stream `id`.
    pub async fn verify(&self, id: String, key: String) -> Verdict {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Command::Verify { id, key, reply })
            .await
            .is_err()
        {
            return Verdict::Error;
        }
        answer.await.unwrap_or(Verdict::Error)
    }
}

/// Work waiting for a stream.
#[derive(Default)]
struct Pending {
    stanzas: VecDeque<(Stanza, Option<oneshot::Sender<()>>)>,
    verifies: Vec<(String, String, oneshot::Sender<Verdict>)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.stanzas.is_empty() && self.verifies.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("no address for the domain answered: {0}")]
    Unreachable(String),
    #[error("timed out")]
    Timeout,
    #[error("the peer does not offer TLS, and TLS is required")]
    TlsRequired,
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("stream negotiation: {0}")]
    Negotiation(String),
}

/// How a stream ended.
enum Ended {
    /// Closed after authentication with nothing left to send.
    Done,
    /// The peer refused our dialback key.
    Refused(Verdict),
    /// Dropped; whatever is queued needs a new stream.
    Lost(String),
}

async fn run(shared: Arc<Shared>, domain: String, mut rx: mpsc::Receiver<Command>, me: Outbound) {
    let mut pending = Pending::default();
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(cmd) => take(&shared, &mut pending, cmd).await,
                None => return,
            }
        }
        let negotiated =
            tokio::time::timeout(shared.settings.connect_timeout, negotiate(&shared, &domain))
                .await
                .unwrap_or(Err(ConnectError::Timeout));
        let failure = match negotiated {
            Ok(opened) => {
                failures = 0;
                match session(&shared, &domain, opened, &mut pending, &mut rx).await {
                    Ended::Done => None,
                    Ended::Refused(verdict) => {
                        shared.metrics.auth("dialback-out", "refused");
                        Some((
                            DefinedCondition::RemoteServerNotFound,
                            format!("{domain} refused our dialback key ({verdict:?})"),
                            true,
                        ))
                    }
                    Ended::Lost(why) => {
                        failures += 1;
                        Some((DefinedCondition::RemoteServerNotFound, why, false))
                    }
                }
            }
            Err(e) => {
                failures += 1;
                tracing::info!(error = %e, attempt = failures, "cannot open s2s stream");
                let condition = match e {
                    ConnectError::Timeout => DefinedCondition::RemoteServerTimeout,
                    _ => DefinedCondition::RemoteServerNotFound,
                };
                Some((condition, format!("cannot reach {domain}: {e}"), false))
            }
        };
        let Some((condition, text, fatal)) = failure else {
            if pending.is_empty() {
                break;
            }
            continue;
        };
        if fatal || failures >= ATTEMPTS {
            // Give up on this domain for now: no stanza is left without an answer.
            shared.forget_outbound(&domain, &me);
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                take(&shared, &mut pending, cmd).await;
            }
            fail_all(&shared, &mut pending, condition, &text).await;
            return;
        }
        // Backoff with jitter: 1 s, 2 s, … while commands keep queueing.
        let mut jitter = [0u8; 1];
        super::dialback::fill_random(&mut jitter);
        let delay = Duration::from_millis(1000 * u64::from(failures) + u64::from(jitter[0]) * 2);
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => take(&shared, &mut pending, cmd).await,
                    None => break,
                },
            }
        }
    }
    shared.forget_outbound(&domain, &me);
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        take(&shared, &mut pending, cmd).await;
    }
    // Stanzas that came in as this stream was ending go out on a new one.
    if !pending.stanzas.is_empty() {
        let next = shared.outbound(&domain);
        let mut refused = VecDeque::new();
        for (stanza, written) in pending.stanzas.drain(..) {
            match next.try_send(stanza, written) {
                Ok(()) => {}
                Err(Refused::Closed(stanza, written)) => refused.push_back((*stanza, written)),
                // Full: its waiter sends again; nobody waits for the rest.
                Err(Refused::Full) => {}
            }
        }
        pending.stanzas = refused;
    }
    fail_all(
        &shared,
        &mut pending,
        DefinedCondition::RemoteServerNotFound,
        "stream closed",
    )
    .await;
}

/// Queues a command, bouncing stanzas beyond the queue limit.
async fn take(shared: &Arc<Shared>, pending: &mut Pending, cmd: Command) {
    match cmd {
        Command::Send(stanza, written) => {
            if pending.stanzas.len() >= shared.settings.queue_limit {
                // A waiter (the outbox) hears of it by its dropped sender and
                // sends again; a bounce as well would make it twice.
                if written.is_none() {
                    shared
                        .bounce(
                            &stanza,
                            DefinedCondition::ResourceConstraint,
                            "too many stanzas queued for this domain",
                        )
                        .await;
                }
            } else {
                pending.stanzas.push_back((*stanza, written));
            }
        }
        Command::Verify { id, key, reply } => pending.verifies.push((id, key, reply)),
    }
}

async fn fail_all(
    shared: &Arc<Shared>,
    pending: &mut Pending,
    condition: DefinedCondition,
    text: &str,
) {
    for (_, _, reply) in pending.verifies.drain(..) {
        let _ = reply.send(Verdict::Error);
    }
    // Whoever waited to hear that one went out learns it did not (and sends
    // again, or gives up itself); the others bounce.
    for (stanza, written) in pending.stanzas.drain(..) {
        if written.is_none() {
            shared.bounce(&stanza, condition.clone(), text).await;
        }
    }
}

async fn connect_tcp(shared: &Shared, domain: &str) -> Result<(TcpStream, bool), ConnectError> {
    let mut errors = Vec::new();
    for target in shared.resolver.resolve(domain).await {
        match TcpStream::connect((target.host.as_str(), target.port)).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok((tcp, target.direct_tls));
            }
            Err(e) => errors.push(format!("{}:{}: {e}", target.host, target.port)),
        }
    }
    Err(ConnectError::Unreachable(errors.join("; ")))
}

async fn start_tls(
    shared: &Shared,
    domain: &str,
    tcp: TcpStream,
) -> Result<Transport, ConnectError> {
    let name = ServerName::try_from(domain.to_owned())
        .map_err(|e| ConnectError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let tls = tokio_rustls::TlsConnector::from(shared.client_tls.clone())
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Tls)?;
    Ok(Transport::tls(
        tokio_rustls::TlsStream::Client(tls),
        shared.settings.read_budget(),
    ))
}

/// Connects and negotiates up to the point where dialback can start.
/// Returns the stream, the id the peer gave it, and whether bidi was agreed.
///
/// A peer may offer STARTTLS and then fail the handshake (Prosody does when
/// it has no certificate for its domain): where TLS is not required, the
/// stream is opened again without it and dialback alone authenticates.
async fn negotiate(shared: &Shared, domain: &str) -> Result<Opened, ConnectError> {
    match negotiate_once(shared, domain, true).await {
        Err(ConnectError::Tls(e)) if !shared.settings.require_tls => {
            tracing::info!(error = %e, "TLS handshake failed; TLS is optional, opening the stream without it");
            negotiate_once(shared, domain, false).await
        }
        other => other,
    }
}

async fn negotiate_once(
    shared: &Shared,
    domain: &str,
    use_tls: bool,
) -> Result<Opened, ConnectError> {
    let (tcp, direct_tls) = connect_tcp(shared, domain).await?;
    let budget = || shared.settings.read_budget();
    let mut transport = if direct_tls {
        start_tls(shared, domain, tcp).await?
    } else {
        Transport::plain(tcp, budget())
    };
    let negotiation = |e: &dyn std::fmt::Display| ConnectError::Negotiation(e.to_string());
    loop {
        transport.expect_header();
        let tls = transport.is_tls();
        let mut opened = initiate_stream(
            BufStream::new(transport),
            stanza::JABBER_SERVER,
            StreamHeader {
                from: Some(shared.domain.clone().into()),
                to: Some(domain.to_owned().into()),
                id: None,
            },
            wire::timeouts(shared.settings.keepalive, wire::OUTBOUND_DEAD_AFTER),
        )
        .await
        .map_err(|e| negotiation(&e))?;
        let stream_id = opened
            .take_header()
            .id
            .map(|id| id.into_owned())
            .unwrap_or_default();
        let (features, mut stream) = limits::recv_features(opened)
            .await
            .map_err(|e| negotiation(&e))?;
        if !tls && use_tls && features.starttls.is_some() {
            stream
                .send(&Element::bare("starttls", wire::NS_TLS))
                .await
                .map_err(|e| negotiation(&e))?;
            match stream.next().await {
                Some(Ok(el)) if el.is("proceed", wire::NS_TLS) => {}
                other => {
                    return Err(ConnectError::Negotiation(format!(
                        "STARTTLS refused: {other:?}"
                    )));
                }
            }
            let tcp = stream
                .into_inner()
                .into_inner()
                .into_tcp()
                .ok_or_else(|| ConnectError::Negotiation("TLS twice".into()))?;
            transport = start_tls(shared, domain, tcp).await?;
            continue;
        }
        if !tls && shared.settings.require_tls {
            wire::close_with_error(
                &mut stream,
                xmpp_parsers::stream_error::DefinedCondition::PolicyViolation,
                "TLS is required",
            )
            .await;
            return Err(ConnectError::TlsRequired);
        }
        // SASL EXTERNAL with our certificate where the peer offers it;
        // dialback on the same stream where it refuses.
        let (mut stream, features, stream_id, sasl) = if tls
            && shared.server_tls.is_some()
            && features.sasl_mechanisms.contains("EXTERNAL")
        {
            match sasl_external(shared, domain, stream)
                .await
                .map_err(|e| negotiation(&e))?
            {
                Sasl::Success(stream, features, id) => (stream, features, id, true),
                Sasl::Refused(stream) => (stream, features, stream_id, false),
            }
        } else {
            (stream, features, stream_id, false)
        };
        // Bidi only where the stream is encrypted: stanzas the peer sends on
        // it are then taken as from the domain we resolved and connected to.
        let bidi = tls
            && features
                .others
                .iter()
                .any(|f| f.is("bidi", wire::NS_BIDI_FEATURE));
        if bidi {
            stream
                .send(&Element::bare("bidi", wire::NS_BIDI))
                .await
                .map_err(|e| negotiation(&e))?;
        }
        // XEP-0198 where offered; not with bidi, whose stanzas from the peer
        // we would have to count too.
        let sm_offered = features.stream_management.is_some() && !bidi;
        tracing::info!(tls, bidi, sasl, sm_offered, stream_id = %stream_id, "s2s stream open");
        return Ok(Opened {
            stream,
            stream_id,
            bidi,
            sasl,
            sm_offered,
        });
    }
}

/// A stream ready for authentication (or already authenticated by SASL).
struct Opened {
    stream: Stream,
    /// The id the peer gave the stream (dialback keys are bound to it).
    stream_id: String,
    bidi: bool,
    /// Authenticated by SASL EXTERNAL: no dialback needed.
    sasl: bool,
    /// The peer offers XEP-0198 stream management.
    sm_offered: bool,
}

/// Stream management on an outbound stream.
enum Sm {
    Unavailable,
    /// Offered: asked for once the stream is authenticated.
    Offered,
    /// `<enable/>` sent; stanzas wait for the answer until this instant.
    Asked(Instant),
    On(acks::Unacked),
}

enum Sasl {
    Success(
        Stream,
        xmpp_parsers::stream_features::StreamFeatures,
        String,
    ),
    Refused(Stream),
}

/// RFC 6120 §6 with EXTERNAL (XEP-0178): our certificate speaks for our
/// domain; on success the stream restarts and is authenticated.
async fn sasl_external(shared: &Shared, domain: &str, mut stream: Stream) -> std::io::Result<Sasl> {
    use base64::Engine as _;
    let auth = Element::builder("auth", wire::NS_SASL)
        .attr(ncname("mechanism"), "EXTERNAL")
        .append(base64::engine::general_purpose::STANDARD.encode(shared.domain.as_bytes()))
        .build();
    stream.send(&auth).await?;
    match stream.next().await {
        Some(Ok(el)) if el.is("success", wire::NS_SASL) => {
            stream.get_stream().get_ref().expect_header();
            let mut opened = stream
                .initiate_reset()
                .send_header(StreamHeader {
                    from: Some(shared.domain.clone().into()),
                    to: Some(domain.to_owned().into()),
                    id: None,
                })
                .await?;
            let id = opened
                .take_header()
                .id
                .map(|id| id.into_owned())
                .unwrap_or_default();
            let (features, stream) = limits::recv_features(opened).await?;
            shared.metrics.auth("sasl-external-out", "valid");
            Ok(Sasl::Success(stream, features, id))
        }
        Some(Ok(el)) if el.is("failure", wire::NS_SASL) => {
            shared.metrics.auth("sasl-external-out", "refused");
            tracing::info!(reason = ?el.children().next().map(|c| c.name().to_owned()), "SASL EXTERNAL refused; trying dialback");
            Ok(Sasl::Refused(stream))
        }
        other => Err(std::io::Error::other(format!(
            "unexpected answer to SASL: {other:?}"
        ))),
    }
}

fn ncname(name: &'static str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(name)
        .unwrap_or_else(|_| unreachable!("{name} is an NCName"))
}

/// Runs an open stream: dialback, verify requests, queued and new stanzas,
/// keepalives, and (with bidi) stanzas the peer sends back on it.
async fn session(
    shared: &Arc<Shared>,
    domain: &str,
    opened: Opened,
    pending: &mut Pending,
    rx: &mut mpsc::Receiver<Command>,
) -> Ended {
    let _open = shared.metrics.stream_open("out");
    let Opened {
        mut stream,
        stream_id,
        bidi,
        sasl,
        sm_offered,
    } = opened;
    let mut sm = if sm_offered {
        Sm::Offered
    } else {
        Sm::Unavailable
    };
    // When the peer must have acknowledged something by (stream management on).
    let mut ack_due: Option<Instant> = None;
    // Ended by a stream error (ours or the peer's), not a lost connection:
    // what it never acknowledged is not sent again, lest it end the next too.
    let mut by_error = false;
    if !sasl {
        let key = shared.keys.key(domain, &shared.domain, &stream_id);
        let request = Dialback::ResultRequest {
            from: shared.domain.clone(),
            to: domain.to_owned(),
            key,
        };
        if let Err(e) = wire::send_dialback(&mut stream, &request).await {
            return Ended::Lost(e.to_string());
        }
    }
    let mut awaiting: HashMap<String, Vec<oneshot::Sender<Verdict>>> = HashMap::new();
    let mut authenticated = sasl;
    let mut last_activity = Instant::now();
    // A peer that never answers our dialback key must not hold the queue.
    let auth_deadline = Instant::now() + shared.settings.connect_timeout;
    let idle = shared.settings.idle_timeout;
    let ended = loop {
        // Requests from the inbound side go out now, whatever our own state.
        for (id, key, reply) in pending.verifies.drain(..) {
            let verify = Dialback::VerifyRequest {
                from: shared.domain.clone(),
                to: domain.to_owned(),
                id: id.clone(),
                key,
            };
            if wire::send_dialback(&mut stream, &verify).await.is_err() {
                let _ = reply.send(Verdict::Error);
                break;
            }
            awaiting.entry(id).or_default().push(reply);
        }
        if authenticated && matches!(sm, Sm::Offered) {
            if wire::send(&mut stream, &Element::bare("enable", acks::NS_SM))
                .await
                .is_err()
            {
                break Ended::Lost("cannot ask for stream management".into());
            }
            sm = Sm::Asked(Instant::now() + shared.settings.connect_timeout);
        }
        if authenticated && !matches!(sm, Sm::Asked(_)) {
            let mut counted = false;
            while let Some((stanza, written)) = pending.stanzas.pop_front() {
                // No more unacknowledged than a queue's worth.
                if matches!(&sm, Sm::On(u) if u.len() >= shared.settings.queue_limit) {
                    pending.stanzas.push_front((stanza, written));
                    break;
                }
                let kind = metrics::kind(&stanza);
                if wire::send(&mut stream, &stanza::to_wire(stanza::duplicate(&stanza)))
                    .await
                    .is_err()
                {
                    pending.stanzas.push_front((stanza, written));
                    break;
                }
                match &mut sm {
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
                shared
                    .metrics
                    .stanza_out(&shared.domain_label(domain), kind);
                last_activity = Instant::now();
            }
            // One request per batch: the peer answers with its count.
            if counted {
                if wire::send(&mut stream, &Element::bare("r", acks::NS_SM))
                    .await
                    .is_err()
                {
                    break Ended::Lost("cannot request an acknowledgement".into());
                }
                ack_due.get_or_insert(Instant::now() + ACK_TIMEOUT);
            }
        }
        let idle_at = last_activity + idle;
        tokio::select! {
            read = stream.next() => match read {
                Some(Ok(element)) => {
                    stream.get_stream().get_ref().reset_budget();
                    if Dialback::is_dialback(&element) {
                        match Dialback::parse(&element) {
                            Ok(Dialback::ResultAnswer { from, verdict, .. }) if from == domain => {
                                if verdict == Verdict::Valid {
                                    authenticated = true;
                                    shared.metrics.auth("dialback-out", "valid");
                                    tracing::info!("dialback accepted: stream authenticated");
                                } else {
                                    break Ended::Refused(verdict);
                                }
                            }
                            Ok(Dialback::VerifyAnswer { id, verdict, .. }) => {
                                for reply in awaiting.remove(&id).unwrap_or_default() {
                                    let _ = reply.send(verdict);
                                }
                            }
                            other => tracing::debug!(?other, "unexpected dialback element"),
                        }
                    } else if stanza::is_stanza(&element) {
                        last_activity = Instant::now();
                        if !bidi || !authenticated {
                            wire::close_with_error(&mut stream, xmpp_parsers::stream_error::DefinedCondition::UnsupportedStanzaType, "stanzas on our outbound stream need XEP-0288 bidi and authentication").await;
                            break Ended::Lost("peer sent a stanza without bidi".into());
                        }
                        // With bidi the peer is the domain we resolved and connected to.
                        let authenticated_domains = [domain.to_owned()];
                        if let Err((condition, text)) = inbound::dispatch(shared, element.into_element(), &authenticated_domains, None, None).await {
                            shared.metrics.stream_error(&condition.to_string());
                            wire::close_with_error(&mut stream, condition, &text).await;
                            break Ended::Lost(text);
                        }
                    } else if element.ns() == acks::NS_SM {
                        match (element.name(), &mut sm) {
                            ("enabled", Sm::Asked(_)) => {
                                tracing::info!("stream management enabled: stanzas count once acknowledged");
                                sm = Sm::On(acks::Unacked::default());
                            }
                            ("failed", Sm::Asked(_)) => {
                                tracing::info!("the peer refused stream management");
                                sm = Sm::Unavailable;
                            }
                            ("a", Sm::On(unacked)) => {
                                let h = element.attr("h").and_then(|h| h.parse::<u32>().ok());
                                let text = match h.map(|h| unacked.acked(h)) {
                                    Some(Ok(newly)) => {
                                        // Progress: the next deadline counts from now.
                                        if unacked.is_empty() {
                                            ack_due = None;
                                        } else if newly > 0 {
                                            ack_due = Some(Instant::now() + ACK_TIMEOUT);
                                        }
                                        continue;
                                    }
                                    Some(Err(too_many)) => format!("acknowledged {} stanzas of {}", too_many.h, too_many.sent),
                                    None => "an acknowledgement without a valid h".to_owned(),
                                };
                                by_error = true;
                                wire::close_with_error(&mut stream, xmpp_parsers::stream_error::DefinedCondition::UndefinedCondition, &text).await;
                                break Ended::Lost(text);
                            }
                            // We take no stanzas on this stream (no bidi with SM).
                            ("r", Sm::On(_)) => {
                                if wire::send(&mut stream, &acks::ack_element(0)).await.is_err() {
                                    break Ended::Lost("cannot acknowledge".into());
                                }
                            }
                            (other, _) => tracing::debug!(element = other, "unexpected stream management element"),
                        }
                    } else if element.is("error", wire::NS_STREAM) {
                        let text = element.get_child("text", "urn:ietf:params:xml:ns:xmpp-streams").map(|t| t.text()).unwrap_or_default();
                        let condition = element.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                        tracing::warn!(%condition, %text, "peer ended our stream with an error");
                        by_error = true;
                        if !authenticated {
                            break Ended::Refused(Verdict::Error);
                        }
                        break Ended::Lost(format!("stream error {condition}"));
                    }
                }
                Some(Err(e)) => match wire::classify(e) {
                    ReadFailure::Timeout => {
                        if wire::send(&mut stream, &Whitespace).await.is_err() {
                            break Ended::Lost("keepalive failed".into());
                        }
                    }
                    ReadFailure::Closed => break Ended::Lost("peer closed the stream".into()),
                    ReadFailure::Error(condition, text) => {
                        by_error = true;
                        shared.metrics.stream_error(&condition.to_string());
                        wire::close_with_error(&mut stream, condition, &text).await;
                        break Ended::Lost(text);
                    }
                },
                None => break Ended::Lost("connection closed".into()),
            },
            cmd = rx.recv() => match cmd {
                Some(cmd) => take(shared, pending, cmd).await,
                None => {
                    let _ = tokio::time::timeout(wire::WRITE_TIMEOUT, stream.shutdown()).await;
                    break Ended::Done;
                }
            },
            _ = tokio::time::sleep_until(match sm { Sm::Asked(until) => until, _ => auth_deadline }), if matches!(sm, Sm::Asked(_)) => {
                tracing::info!("no answer to our stream management request; going on without");
                sm = Sm::Unavailable;
            }
            _ = tokio::time::sleep_until(ack_due.unwrap_or(auth_deadline)), if ack_due.is_some() => {
                tracing::warn!(timeout = ?ACK_TIMEOUT, "no acknowledgement from the peer in time");
                break Ended::Lost("the peer acknowledged nothing in time".into());
            }
            _ = tokio::time::sleep_until(auth_deadline), if !authenticated => {
                tracing::info!("no answer to our dialback key in time");
                break Ended::Lost(format!("{domain} did not answer our dialback key in time"));
            }
            _ = tokio::time::sleep_until(idle_at), if authenticated && pending.is_empty() && awaiting.is_empty() && !matches!(&sm, Sm::On(u) if !u.is_empty()) => {
                tracing::info!("closing idle s2s stream");
                let _ = tokio::time::timeout(wire::WRITE_TIMEOUT, stream.shutdown()).await;
                break Ended::Done;
            }
        }
    };
    for (_, replies) in awaiting.drain() {
        for reply in replies {
            let _ = reply.send(Verdict::Error);
        }
    }
    // What the peer never acknowledged: stanzas nobody waits for go out again
    // first on the next stream; the waiters of the others learn of the loss.
    if let Sm::On(unacked) = sm
        && !unacked.is_empty()
    {
        let unacknowledged = unacked.len();
        let mut again = unacked.lost();
        // Within the queue's limit, and not after a stream error.
        let room = shared
            .settings
            .queue_limit
            .saturating_sub(pending.stanzas.len());
        if by_error {
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
