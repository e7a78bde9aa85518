//! Server-to-server federation (RFC 6120 streams, STARTTLS, XEP-0220 dialback
//! with XEP-0185 keys, XEP-0288 bidirectional streams).
//!
//! The gateway is the XMPP server of its domain. [`S2s::bind`] listens for
//! remote servers; [`S2sSender::send`] delivers stanzas to them, opening one
//! pooled outbound stream per remote domain. Every stanza addressed to our
//! domain that the domain services here do not answer (disco, ping) reaches
//! the bridge, typed, through the receiver `bind` returns; stanzas that cannot
//! be delivered come back on it as error stanzas (bounces).
//!
//! One module per concern: `transport` (bytes, TLS, size and time budget),
//! `limits` (the bounded element builder), `admission` (unauthenticated
//! connection caps), `wire` (stream helpers), `dialback`, `tls`, `resolve`,
//! `policy`, `inbound`, `outbound`, `services`, `stanza` (the typed boundary).

pub mod acks;
mod admission;
pub(crate) mod dialback;
mod inbound;
pub mod limits;
mod metrics;
mod outbound;
mod policy;
mod resolve;
mod route;
mod sasl_external;
pub(crate) mod services;
pub mod stanza;
mod tls;
pub(crate) mod transport;
pub(crate) mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmppfed_config::GatewayConfig;
use xmppfed_telemetry::Metrics;

pub use acks::{Ack, Inbox, Incoming};
pub use dialback::DialbackKeys;
pub use policy::AllowList;
pub use stanza::{Stanza, StanzaParseError};

use self::metrics::S2sMetrics;
use self::outbound::Outbound;
use self::resolve::Resolver;
use self::tls::{ServerTls, TrustStore};

#[derive(Debug, thiserror::Error)]
pub enum S2sError {
    #[error("cannot listen for s2s on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("s2s TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("s2s.dialback_secret: {0}")]
    Secret(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the stanza has no recipient")]
    NoRecipient,
    #[error("{0} is not on the remote-domain allow list")]
    NotAllowed(String),
    #[error("{0} is our own domain")]
    LocalDomain(String),
    #[error("the sender {0} is not of our domain")]
    ForeignSender(String),
    #[error("too many stanzas are queued for {0}; try again later")]
    Busy(String),
    #[error("the s2s layer is shutting down")]
    Closed,
    #[error("the stanza was not written to the remote server's stream")]
    NotWritten,
}

/// Whether a local user exists to XMPP (the internal allow list lives in the bridge).
pub trait UserDirectory: Send + Sync + 'static {
    fn exists(&self, local_part: &str) -> bool;
}

/// Every user exists: for tests and the sandbox before the bridge decides.
pub struct AnyUser;

impl UserDirectory for AnyUser {
    fn exists(&self, _: &str) -> bool {
        true
    }
}

/// Stream settings, from `[s2s]`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub require_tls: bool,
    pub max_stanza_bytes: usize,
    pub idle_timeout: Duration,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    /// Time an inbound stream has to authenticate.
    pub auth_timeout: Duration,
    /// Time one element may take once its first byte has arrived.
    pub stanza_timeout: Duration,
    /// Depth and element count of one stanza.
    pub limits: limits::Limits,
    /// Stanzas held per remote domain while its stream opens.
    pub queue_limit: usize,
}

/// What an unauthenticated stream may send in one element: stream
/// negotiation (STARTTLS, SASL, dialback keys) is a few hundred bytes.
pub(crate) const UNAUTHENTICATED_STANZA_BYTES: usize = 16 * 1024;

impl Settings {
    /// A fresh read budget for a connection's transport.
    pub fn read_budget(&self) -> transport::ReadBudget {
        transport::ReadBudget::new(self.max_stanza_bytes, self.stanza_timeout)
    }
}

/// State every stream shares.
pub(crate) struct Shared {
    pub domain: String,
    pub settings: Settings,
    pub allow: AllowList,
    pub keys: DialbackKeys,
    pub server_tls: Option<Arc<ServerTls>>,
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Roots that peers' certificates must chain to for SASL EXTERNAL.
    pub trust: TrustStore,
    pub resolver: Resolver,
    pub directory: Arc<dyn UserDirectory>,
    pub metrics: S2sMetrics,
    /// Inbound connections waiting to authenticate.
    pub admission: Arc<admission::Admission>,
    pub to_bridge: mpsc::Sender<Incoming>,
    /// Outbound streams by remote domain.
    pub outbound: Mutex<HashMap<String, Outbound>>,
    /// Inbound bidirectional streams (XEP-0288) we may send on, by remote domain.
    pub bidi: Mutex<HashMap<String, mpsc::Sender<Stanza>>>,
    /// Set when the layer stops: streams close, nothing new is sent.
    pub stopping: watch::Sender<bool>,
}

impl Shared {
    /// Hands an inbound stanza to the bridge, or answers it if the bridge is gone.
    pub async fn deliver(self: &Arc<Self>, stanza: Stanza, ack: Option<Ack>) {
        if self.to_bridge.send(Incoming { stanza, ack }).await.is_err() {
            tracing::warn!("bridge receiver dropped; stanza discarded");
        }
    }

    /// Bounces a stanza we could not deliver back to the bridge as an error.
    /// Delivered from a task of its own: the stream task that bounces must
    /// never wait on the bridge, which may be waiting on that stream.
    pub async fn bounce(
        self: &Arc<Self>,
        stanza: &Stanza,
        condition: DefinedCondition,
        text: &str,
    ) {
        let name = condition_name(&condition);
        if let Some(reply) = stanza::error_reply(stanza, condition, ErrorType::Cancel, text) {
            self.metrics.bounced(&name);
            let shared = self.clone();
            tokio::spawn(async move { shared.deliver(reply, None).await });
        }
    }

    /// The outbound stream to `domain`, opened on first use.
    pub fn outbound(self: &Arc<Self>, domain: &str) -> Outbound {
        let mut pool = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = pool.get(domain).filter(|o| !o.is_closed()) {
            return existing.clone();
        }
        let handle = Outbound::spawn(self.clone(), domain.to_owned());
        pool.insert(domain.to_owned(), handle.clone());
        handle
    }

    /// Forgets `handle` if it is still the pooled stream for `domain`.
    pub fn forget_outbound(&self, domain: &str, handle: &Outbound) {
        let mut pool = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        if pool.get(domain).is_some_and(|o| o.same(handle)) {
            pool.remove(domain);
        }
    }

    /// The metrics label for a remote domain: the allow-list entry it matched,
    /// so that a wildcard's owner cannot grow our label set without bound.
    pub fn domain_label(&self, domain: &str) -> String {
        self.allow
            .matching(domain)
            .unwrap_or_else(|| "other".to_owned())
    }

    pub fn bidi_route(&self, domain: &str) -> Option<mpsc::Sender<Stanza>> {
        let routes = self.bidi.lock().unwrap_or_else(|p| p.into_inner());
        routes.get(domain).filter(|tx| !tx.is_closed()).cloned()
    }

    pub fn set_bidi_route(&self, domain: &str, tx: Option<mpsc::Sender<Stanza>>) {
        let mut routes = self.bidi.lock().unwrap_or_else(|p| p.into_inner());
        match tx {
            Some(tx) => {
                routes.insert(domain.to_owned(), tx);
            }
            None => {
                routes.remove(domain);
            }
        }
    }
}

pub(crate) fn condition_name(c: &DefinedCondition) -> String {
    let el: Element = c.clone().into();
    el.name().to_owned()
}

/// Sends stanzas to remote domains; cheap to clone.
#[derive(Clone)]
pub struct S2sSender {
    shared: Arc<Shared>,
}

impl S2sSender {
    /// The remote domain a stanza may go to, or why it may not.
    fn destination(&self, stanza: &Stanza) -> Result<String, SendError> {
        let shared = &self.shared;
        if *shared.stopping.borrow() {
            return Err(SendError::Closed);
        }
        let to = stanza::to(stanza).ok_or(SendError::NoRecipient)?;
        let domain = wire::domain_of(to);
        if domain == shared.domain {
            return Err(SendError::LocalDomain(domain));
        }
        // A foreign sender would make the peer end the stream for everyone.
        let from = stanza::from(stanza)
            .map(wire::domain_of)
            .unwrap_or_default();
        if from != shared.domain {
            return Err(SendError::ForeignSender(from));
        }
        if !shared.allow.allows(&domain) {
            shared.metrics.refused("out");
            return Err(SendError::NotAllowed(domain));
        }
        Ok(domain)
    }

    /// Hands `stanza` to the peer's bidi stream (XEP-0288) if it has one
    /// with room; gives it back otherwise, for our own outbound stream.
    fn try_bidi(&self, domain: &str, stanza: Stanza) -> Option<Stanza> {
        let shared = &self.shared;
        let Some(route) = shared.bidi_route(domain) else {
            return Some(stanza);
        };
        let kind = metrics::kind(&stanza);
        match route.try_send(stanza) {
            Ok(()) => {
                shared
                    .metrics
                    .stanza_out(&shared.domain_label(domain), kind);
                None
            }
            Err(mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s)) => {
                Some(s)
            }
        }
    }

    /// Queues `stanza` for its recipient's domain without waiting. Delivery
    /// failures come back to the bridge as error stanzas; refusals (not
    /// allowed, a full queue) are returned here.
    pub async fn send(&self, stanza: Stanza) -> Result<(), SendError> {
        let shared = &self.shared;
        let domain = self.destination(&stanza)?;
        let Some(mut stanza) = self.try_bidi(&domain, stanza) else {
            return Ok(());
        };
        // A stream task that has just ended is replaced once.
        for _ in 0..2 {
            match shared.outbound(&domain).try_send(stanza, None) {
                Ok(()) => return Ok(()),
                Err(outbound::Refused::Full) => return Err(SendError::Busy(domain)),
                Err(outbound::Refused::Closed(s, _)) => stanza = *s,
            }
        }
        Err(SendError::Closed)
    }

    /// Like `send`, but waits (up to `patience`) for room in a full queue
    /// instead of refusing: for answers the domain itself gives, which no
    /// durable outbox sends again.
    pub async fn send_waiting(&self, stanza: Stanza, patience: Duration) -> Result<(), SendError> {
        let shared = &self.shared;
        let domain = self.destination(&stanza)?;
        let Some(mut stanza) = self.try_bidi(&domain, stanza) else {
            return Ok(());
        };
        let queued = async {
            for _ in 0..2 {
                match shared.outbound(&domain).send(stanza).await {
                    Ok(()) => return Ok(()),
                    Err(s) => stanza = *s,
                }
            }
            Err(SendError::Closed)
        };
        tokio::time::timeout(patience, queued)
            .await
            .unwrap_or(Err(SendError::Busy(domain)))
    }

    /// Like `send`, through our own outbound stream only (never a peer's bidi
    /// stream), with a receiver that fires once the peer has acknowledged the
    /// stanza (XEP-0198, where it offers stream management) or else once it
    /// has been written to the connection. It fails if neither happens (the
    /// stanza is not bounced: the caller sends it again or gives up).
    pub async fn send_written(
        &self,
        stanza: Stanza,
    ) -> Result<tokio::sync::oneshot::Receiver<()>, SendError> {
        let shared = &self.shared;
        let domain = self.destination(&stanza)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (mut stanza, mut written) = (stanza, Some(tx));
        for _ in 0..2 {
            match shared.outbound(&domain).try_send(stanza, written.take()) {
                Ok(()) => return Ok(rx),
                Err(outbound::Refused::Full) => return Err(SendError::Busy(domain)),
                Err(outbound::Refused::Closed(s, w)) => (stanza, written) = (*s, w),
            }
        }
        Err(SendError::Closed)
    }
}

/// The s2s layer: a bound listener and what it shares with its streams.
pub struct S2s {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl S2s {
    /// Binds the s2s listener. Stanzas for the bridge arrive on the receiver.
    pub async fn bind(
        config: &GatewayConfig,
        directory: Arc<dyn UserDirectory>,
        metrics: &Metrics,
    ) -> Result<(Self, Inbox), S2sError> {
        let s2s = &config.s2s;
        let server_tls = match (&s2s.tls_cert_file, &s2s.tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(cert, key)?)),
            _ => None,
        };
        let keys = match &s2s.dialback_secret {
            Some(secret) => {
                let value = secret
                    .resolve()
                    .map_err(|e| S2sError::Secret(e.to_string()))?;
                DialbackKeys::new(value.expose().as_bytes())
            }
            None => DialbackKeys::random(),
        };
        let trust = TrustStore::load(s2s.trust_roots_file.as_deref())?;
        let client_tls = tls::client_config(&trust, server_tls.clone())?;
        let listener = TcpListener::bind(s2s.listen)
            .await
            .map_err(|source| S2sError::Bind {
                addr: s2s.listen,
                source,
            })?;
        let (to_bridge, from_s2s) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            domain: config.xmpp.domain.to_ascii_lowercase(),
            settings: Settings {
                require_tls: s2s.require_tls,
                max_stanza_bytes: s2s.max_stanza_bytes,
                idle_timeout: Duration::from_secs(s2s.idle_timeout_secs),
                keepalive: Duration::from_secs(s2s.keepalive_interval_secs),
                connect_timeout: Duration::from_secs(s2s.connect_timeout_secs),
                auth_timeout: Duration::from_secs(s2s.auth_timeout_secs),
                stanza_timeout: Duration::from_secs(s2s.stanza_timeout_secs),
                limits: limits::Limits {
                    max_depth: s2s.max_stanza_depth,
                    max_elements: s2s.max_stanza_elements,
                },
                queue_limit: 10_000,
            },
            allow: AllowList::new(config.allow.remote_domains.clone()),
            keys,
            server_tls,
            client_tls,
            trust,
            resolver: Resolver::new(&s2s.static_routes),
            directory,
            metrics: S2sMetrics::register(metrics),
            admission: admission::Admission::new(
                s2s.max_unauthenticated,
                s2s.max_unauthenticated_per_address,
            ),
            to_bridge,
            outbound: Mutex::new(HashMap::new()),
            bidi: Mutex::new(HashMap::new()),
            stopping: watch::channel(false).0,
        });
        Ok((Self { shared, listener }, Inbox { rx: from_s2s }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn sender(&self) -> S2sSender {
        S2sSender {
            shared: self.shared.clone(),
        }
    }

    /// The live remote-domain allow list; replacing it applies to every stream.
    pub fn allow_list(&self) -> AllowList {
        self.shared.allow.clone()
    }

    /// Accepts connections until `shutdown` resolves. Each connection runs in
    /// its own task, so one slow or hostile peer never holds up another.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    // Inbound streams end with `system-shutdown`; outbound
                    // streams close once their queues are dropped.
                    self.shared.stopping.send_replace(true);
                    self.shared.outbound.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    self.shared.bidi.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    break;
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => match self.shared.admission.admit(peer.ip()) {
                        Ok(ticket) => {
                            let shared = self.shared.clone();
                            tokio::spawn(inbound::run(shared, tcp, peer, ticket));
                        }
                        Err(refusal) => {
                            self.shared.metrics.connection_refused(refusal.reason());
                            self.shared.admission.log_refusal(refusal, peer.ip());
                            inbound::refuse(&self.shared.domain, tcp, refusal);
                        }
                    },
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "s2s accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}
