//! The federation edge's connections. Inbound: mutual TLS, the peer's
//! certificate checked against the host of the request's top Via or its From
//! domain (an Access Edge names its FQDN in Via and its SIP domains in its
//! certificate), OPTIONS and keep-alives answered, IM requests answered
//! through `im`.
//! Outbound: a request over mutual TLS to a peer, its response awaited for
//! Timer F (64·T1 = 32 s, RFC 3261 §17.1.2.2; over TLS nothing is resent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ezk_sip_types::Name;
use ezk_sip_types::msg::MessageLine;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::connection::Connection;
use crate::framing::{Frame, FrameError, Framer, Limits};
use crate::im::{Dialog, ImEvent, Sessions};
pub use crate::message::status_of;
use crate::message::{Message, from_host, token, via_host};
use crate::tls::{Credentials, PeerRefused, TlsError, check_peer, owned};

/// Methods this edge accepts; the others are answered 405 by RFC 3261.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, MESSAGE, INFO, OPTIONS";
/// Timer F over a reliable transport.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// A handshake, and a connection without a byte (Microsoft's edges send
/// `ms-keep-alive ... timeout=300` and CRLF pings well within it).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Inbound connections open at once: a partner edge keeps one or a few.
const MAX_INBOUND: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the peer's certificate: {0}")]
    Peer(#[from] PeerRefused),
    #[error("the stream: {0}")]
    Frame(#[from] FrameError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the message we composed does not parse: {0}")]
    Compose(String),
    #[error("refused with {status}{}", if diagnostics.is_empty() { String::new() } else { format!(" ({diagnostics})") })]
    Refused { status: u16, diagnostics: String },
}

/// What the edge answered, for logs and tests: the method, the name the
/// peer's certificate proved, and the status sent.
#[derive(Debug, Clone)]
pub struct Answered {
    pub method: String,
    pub peer: String,
    pub status: u16,
}

pub struct Edge {
    /// Our SIP domain (the host of our Via and From).
    domain: String,
    credentials: Arc<Credentials>,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    listener: TcpListener,
    limits: Limits,
    answered: broadcast::Sender<Answered>,
    sessions: Sessions,
    events: broadcast::Sender<ImEvent>,
    /// Outbound connections by peer address, reused.
    connections: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<Connection>>>,
    /// Which sender domains may start IM with us (the remote-domain allow
    /// list); every one until set.
    allowed: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// The names that speak for the partner, one of which a peer's
    /// certificate must prove; by default the request's Via host or From
    /// domain, whichever the roots certify.
    trusted: Option<Box<dyn Fn() -> Vec<String> + Send + Sync>>,
    /// Takes each inbound IM before it is answered (the durable outbox).
    sink: Option<Sink>,
}

/// What takes an inbound IM before the edge answers it: `true` once stored.
pub type Sink = Box<
    dyn Fn(ImEvent) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

impl Edge {
    pub async fn bind(
        listen: SocketAddr,
        domain: &str,
        credentials: Credentials,
    ) -> Result<Self, EdgeError> {
        let acceptor = TlsAcceptor::from(Arc::new(credentials.server_config()?));
        let connector = TlsConnector::from(Arc::new(credentials.client_config()?));
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| EdgeError::Io(format!("cannot listen on {listen}"), e))?;
        Ok(Self {
            domain: domain.to_owned(),
            credentials: Arc::new(credentials),
            acceptor,
            connector,
            listener,
            limits: Limits::default(),
            answered: broadcast::channel(256).0,
            sessions: Sessions::default(),
            events: broadcast::channel(1024).0,
            connections: std::sync::Mutex::default(),
            allowed: Box::new(|_| true),
            trusted: None,
            sink: None,
        })
    }

    /// Hands every inbound IM to `sink` before answering it.
    pub fn with_sink(mut self, sink: Sink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Lets IM in only from sender domains `allowed` accepts; others get 403
    /// with `ms-diagnostics-public` 1002, [MS-OCER]'s "From URI not
    /// authorized to communicate with federated partners".
    pub fn allowing(mut self, allowed: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.allowed = Box::new(allowed);
        self
    }

    /// Takes requests only from peers whose certificate proves one of the
    /// names `trusted` gives: with public CAs as roots, a certificate proves
    /// only that its holder is *someone*; which names speak for a partner
    /// is the route's to say (as Microsoft's edges check the partner's
    /// allowed-domain FQDN or SRV target). Others get 403 with 1010.
    pub fn trusting(mut self, trusted: impl Fn() -> Vec<String> + Send + Sync + 'static) -> Self {
        self.trusted = Some(Box::new(trusted));
        self
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// What the edge answers from now on.
    pub fn answered(&self) -> broadcast::Receiver<Answered> {
        self.answered.subscribe()
    }

    /// The messages, typing and session ends peers send.
    pub fn im_events(&self) -> broadcast::Receiver<ImEvent> {
        self.events.subscribe()
    }

    /// Our Contact: where peers send in-dialog requests.
    fn contact(&self) -> String {
        format!("sip:{};transport=tls", self.domain)
    }

    /// Accepts connections until the task is dropped, which ends every
    /// connection it accepted too; past `MAX_INBOUND` open ones, new ones
    /// are closed at once.
    pub async fn serve(self: Arc<Self>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                Some(_) = connections.join_next() => continue,
            };
            let Ok((tcp, from)) = accepted else {
                continue;
            };
            if connections.len() >= MAX_INBOUND {
                tracing::warn!(%from, "SIP connection refused: {MAX_INBOUND} open already");
                continue;
            }
            let edge = self.clone();
            connections.spawn(async move {
                if let Err(e) = edge.inbound(tcp).await {
                    tracing::info!(%from, error = %e, "SIP connection closed");
                }
            });
        }
    }

    async fn inbound(&self, tcp: TcpStream) -> Result<(), EdgeError> {
        let accept = self.acceptor.accept(tcp);
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
            .await
            .map_err(|_| EdgeError::Timeout(HANDSHAKE_TIMEOUT))?
            .map_err(|e| EdgeError::Io("TLS handshake".into(), e))?;
        let chain = owned(tls.get_ref().1.peer_certificates());
        let mut framer = Framer::new(self.limits);
        loop {
            let Some(frame) = next_frame(&mut tls, &mut framer, IDLE_TIMEOUT).await? else {
                return Ok(());
            };
            if let Some(bytes) = self.reply(frame, &chain, None).await {
                tls.write_all(&bytes)
                    .await
                    .map_err(|e| EdgeError::Io("write".into(), e))?;
            }
        }
    }

    /// What to write back for a frame read on a connection: a pong for a
    /// ping, the answer to a request. A final response goes to the
    /// transaction waiting on `ours` (a connection we opened).
    async fn reply(
        &self,
        frame: Frame,
        chain: &[CertificateDer<'_>],
        ours: Option<&Connection>,
    ) -> Option<Vec<u8>> {
        match frame {
            Frame::Ping => Some(b"\r\n".to_vec()),
            Frame::Pong => None,
            Frame::Message(m) if m.method().is_none() => {
                let delivered = status_of(&m) >= 200 && ours.is_some_and(|c| c.deliver(*m));
                if !delivered {
                    tracing::debug!("a response no transaction waits for");
                }
                None
            }
            Frame::Message(m) => self.answer(&m, chain).await.map(|r| r.to_bytes()),
        }
    }

    /// The response to an inbound request (`None` for ACK and responses),
    /// once the sink (if any) has taken what it tells: a sink that cannot
    /// store it makes the answer 500, so the peer sends it again.
    async fn answer(&self, request: &Message, chain: &[CertificateDer<'_>]) -> Option<Message> {
        let (mut response, event) = self.respond(request, chain)?;
        if let Some(event) = event {
            let taken = match &self.sink {
                Some(sink) => sink(event.clone()).await,
                None => true,
            };
            if taken {
                let _ = self.events.send(event);
            } else {
                response = request.response(500, "Server Internal Error", &token());
                response.headers.insert(Name::RETRY_AFTER, "5");
            }
        }
        Some(response)
    }

    /// The response to an inbound request and what it tells the bridge.
    fn respond(
        &self,
        request: &Message,
        chain: &[CertificateDer<'_>],
    ) -> Option<(Message, Option<ImEvent>)> {
        let method = request.method()?.to_string();
        if method == "ACK" {
            return None;
        }
        let mut event = None;
        let tag = token();
        let names: Vec<String> = match &self.trusted {
            Some(trusted) => trusted(),
            None => [via_host(request), from_host(request)]
                .into_iter()
                .flatten()
                .collect(),
        };
        let proved = names
            .iter()
            .find(|n| check_peer(chain, n, &self.credentials.roots).is_ok());
        let (response, peer) = match proved {
            None => {
                let claimed = [via_host(request), from_host(request)]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut refused = request.response(403, "Forbidden", &tag);
                // [MS-OCER] 1010: "Certificate trust with next-hop server could not be established".
                refused.headers.insert(
                    Name::custom("ms-diagnostics-public", &["ms-diagnostics-public"]),
                    format!(
                        "1010;reason=\"Certificate trust with next-hop server could not be established\";domain=\"{claimed}\""
                    ),
                );
                (refused, claimed)
            }
            Some(peer)
                if method != "OPTIONS"
                    && !from_host(request).is_some_and(|d| (self.allowed)(&d)) =>
            {
                let mut refused = request.response(403, "Forbidden", &tag);
                refused.headers.insert(
                    Name::custom("ms-diagnostics-public", &["ms-diagnostics-public"]),
                    "1002;reason=\"From URI not authorized to communicate with federated partners\"",
                );
                (refused, peer.clone())
            }
            Some(peer) => {
                let response = if method == "OPTIONS" {
                    let mut ok = request.response(200, "OK", &tag);
                    ok.headers.insert(Name::ALLOW, ALLOW);
                    ok.headers
                        .insert(Name::ACCEPT, "application/sdp, text/plain");
                    ok
                } else {
                    match self.sessions.answer(request, &self.contact(), &tag) {
                        Some(answer) => {
                            event = answer.event;
                            answer.response
                        }
                        None => request.response(400, "Bad Request", &tag),
                    }
                };
                (response, peer.clone())
            }
        };
        let status = status_of(&response);
        let _ = self.answered.send(Answered {
            method,
            peer,
            status,
        });
        Some((response, event))
    }

    /// Sends OPTIONS for `uri` to the peer at `addr` whose certificate must
    /// name `peer` (SNI and our rules); its response.
    /// `from`: a URI of one of the domains we federate as (the peer's
    /// federation policy for that domain answers), else our own domain.
    pub async fn options(
        self: &Arc<Self>,
        (addr, peer): (SocketAddr, &str),
        from: Option<&str>,
        uri: &str,
    ) -> Result<Message, EdgeError> {
        // Outside any session: a dialog of one request.
        let probe = Dialog {
            call_id: format!("{}@{}", token(), self.domain),
            local_uri: from.map_or_else(|| format!("sip:{}", self.domain), str::to_owned),
            local_tag: token(),
            remote_uri: uri.to_owned(),
            remote_tag: String::new(),
            remote_target: uri.to_owned(),
            cseq: 1,
        };
        let mut request = self.head(&probe, "OPTIONS", uri, 1)?;
        request.headers.insert(Name::ALLOW, ALLOW);
        self.request(addr, peer, &request).await
    }

    /// Sends `request` to `addr` over mutual TLS and waits for its final
    /// response (provisional ones are skipped).
    pub async fn request(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer: &str,
        request: &Message,
    ) -> Result<Message, EdgeError> {
        self.exchange(addr, peer, request, true)
            .await?
            .ok_or(EdgeError::Closed)
    }

    /// Sends `request` on the connection to `addr` (made, or reused); with
    /// `wait`, its final response. A connection found closed is made again
    /// once.
    async fn exchange(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer: &str,
        request: &Message,
        wait: bool,
    ) -> Result<Option<Message>, EdgeError> {
        let key = request.transaction_id().unwrap_or_default();
        let bytes = request.to_bytes();
        let exchange = async {
            for attempt in 0..2 {
                let connection = self.connection(addr, peer).await?;
                let answer = wait.then(|| connection.expect(key.clone()));
                if let Err(e) = connection.send(&bytes).await {
                    self.drop_connection(addr, &connection);
                    if attempt == 0 {
                        continue;
                    }
                    return Err(EdgeError::Io("write".into(), e));
                }
                let Some(answer) = answer else {
                    return Ok(None);
                };
                return match answer.await {
                    Ok(response) => Ok(Some(response)),
                    Err(_) => Err(EdgeError::Closed),
                };
            }
            Err(EdgeError::Closed)
        };
        tokio::time::timeout(TRANSACTION_TIMEOUT, exchange)
            .await
            .map_err(|_| EdgeError::Timeout(TRANSACTION_TIMEOUT))?
    }

    /// The open connection to `addr`, or a new one whose certificate proves
    /// `peer`; its reader runs until the peer closes it.
    async fn connection(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer: &str,
    ) -> Result<Arc<Connection>, EdgeError> {
        if let Some(open) = self.open_connection(addr) {
            return Ok(open);
        }
        let name = ServerName::try_from(peer.to_owned())
            .map_err(|e| EdgeError::Compose(format!("{peer}: {e}")))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| EdgeError::Io(format!("connect {addr}"), e))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| EdgeError::Io(format!("TLS to {peer}"), e))?;
        let chain = owned(tls.get_ref().1.peer_certificates());
        check_peer(&chain, peer, &self.credentials.roots)?;
        let (reader, writer) = tokio::io::split(tls);
        let connection = Arc::new(Connection::new(writer));
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        // Another task may have connected meanwhile: one connection per peer.
        if let Some(open) = connections.get(&addr).filter(|c| !c.is_closed()) {
            return Ok(open.clone());
        }
        connections.insert(addr, connection.clone());
        drop(connections);
        let (edge, reading) = (self.clone(), connection.clone());
        tokio::spawn(async move {
            if let Err(e) = edge.read_outbound(reader, &reading, &chain).await {
                tracing::info!(%addr, error = %e, "SIP connection closed");
            }
            reading.close();
            edge.drop_connection(addr, &reading);
        });
        Ok(connection)
    }

    /// Outbound connections open now (one per peer address).
    pub fn connections_open(&self) -> usize {
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.values().filter(|c| !c.is_closed()).count()
    }

    fn open_connection(&self, addr: SocketAddr) -> Option<Arc<Connection>> {
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.get(&addr).filter(|c| !c.is_closed()).cloned()
    }

    fn drop_connection(&self, addr: SocketAddr, connection: &Arc<Connection>) {
        connection.close();
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if connections
            .get(&addr)
            .is_some_and(|c| Arc::ptr_eq(c, connection))
        {
            connections.remove(&addr);
        }
    }

    /// What comes back on a connection we opened: pongs, final responses
    /// for the transactions waiting, and requests, answered.
    async fn read_outbound(
        &self,
        mut reader: tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
        connection: &Connection,
        chain: &[CertificateDer<'_>],
    ) -> Result<(), EdgeError> {
        let mut framer = Framer::new(self.limits);
        while let Some(frame) = next_frame(&mut reader, &mut framer, IDLE_TIMEOUT).await? {
            if let Some(bytes) = self.reply(frame, chain, Some(connection)).await {
                connection
                    .send(&bytes)
                    .await
                    .map_err(|e| EdgeError::Io("write".into(), e))?;
            }
        }
        Ok(())
    }
}

impl Edge {
    /// Sends `text` from `from` (our user's SIP address) to `to` at the peer
    /// `addr` / `peer`: in the session between them if one is up, else in a
    /// new session's INVITE. A stale session (408, 480, 481) is dropped and
    /// a new one started, as Microsoft's clients do.
    pub async fn send_im(
        self: &Arc<Self>,
        (addr, peer): (SocketAddr, &str),
        from: &str,
        to: &str,
        text: &str,
    ) -> Result<(), EdgeError> {
        let (from, to) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
        if let Some(dialog) = self.sessions.between(&from, &to) {
            let cseq = self.sessions.next_cseq(&dialog.call_id).unwrap_or(2);
            let message = self.in_dialog(&dialog, "MESSAGE", cseq, Some(text))?;
            let response = self.request(addr, peer, &message).await?;
            match status_of(&response) {
                200..=299 => return Ok(()),
                408 | 480 | 481 => self.sessions.forget(&dialog.call_id),
                status => return Err(refused(status, &response)),
            }
        }
        let dialog = Dialog {
            call_id: format!("{}@{}", token(), self.domain),
            local_uri: from.clone(),
            local_tag: token(),
            remote_uri: to.clone(),
            remote_tag: String::new(),
            remote_target: to.clone(),
            cseq: 1,
        };
        let mut invite = self.head(&dialog, "INVITE", &to, 1)?;
        invite.headers.insert(
            Name::custom("ms-text-format", &["ms-text-format"]),
            crate::im::text_format(text),
        );
        invite.headers.insert(
            Name::custom("Ms-Conversation-ID", &["ms-conversation-id"]),
            token(),
        );
        invite.headers.insert(Name::SUPPORTED, "ms-text-format");
        invite.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        invite.body = Bytes::from(crate::im::sdp("m=message 5061 sip null"));
        let response = self.request(addr, peer, &invite).await?;
        let status = status_of(&response);
        if !(200..300).contains(&status) {
            return Err(refused(status, &response));
        }
        let dialog = Dialog {
            remote_tag: response
                .header(&Name::TO)
                .and_then(crate::im::tag)
                .unwrap_or_default(),
            remote_target: response
                .header(&Name::CONTACT)
                .and_then(crate::im::target)
                .unwrap_or(to),
            ..dialog
        };
        self.sessions.keep(dialog.clone());
        let ack = self.in_dialog(&dialog, "ACK", 1, None)?;
        self.exchange(addr, peer, &ack, false).await?;
        let took_it = response
            .headers
            .get_raw(&Name::SUPPORTED)
            .any(|v| v.contains("ms-text-format"));
        if !took_it {
            let cseq = self.sessions.next_cseq(&dialog.call_id).unwrap_or(2);
            let message = self.in_dialog(&dialog, "MESSAGE", cseq, Some(text))?;
            let response = self.request(addr, peer, &message).await?;
            if status_of(&response) >= 300 {
                return Err(refused(status_of(&response), &response));
            }
        }
        Ok(())
    }

    /// Tells `to` that `from` is typing or stopped, as INFO with
    /// `KeyboardActivity` inside their session: Microsoft's clients send it
    /// only in one, so without a session nothing is sent (`false`).
    pub async fn send_typing(
        self: &Arc<Self>,
        (addr, peer): (SocketAddr, &str),
        from: &str,
        to: &str,
        active: bool,
    ) -> Result<bool, EdgeError> {
        let (from, to) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
        let Some(dialog) = self.sessions.between(&from, &to) else {
            return Ok(false);
        };
        let cseq = self.sessions.next_cseq(&dialog.call_id).unwrap_or(2);
        let mut info = self.in_dialog(&dialog, "INFO", cseq, None)?;
        info.headers.insert(Name::CONTENT_TYPE, "application/xml");
        info.body = Bytes::from(crate::im::keyboard_activity(active));
        let response = self.request(addr, peer, &info).await?;
        match status_of(&response) {
            200..=299 => Ok(true),
            408 | 480 | 481 => {
                self.sessions.forget(&dialog.call_id);
                Ok(false)
            }
            status => Err(refused(status, &response)),
        }
    }

    /// A request's head in `dialog` (the To tag once the peer gave one).
    fn head(
        &self,
        dialog: &Dialog,
        method: &str,
        target: &str,
        cseq: u32,
    ) -> Result<Message, EdgeError> {
        let to_tag = if dialog.remote_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={}", dialog.remote_tag)
        };
        Message::from_head(&[
            format!("{method} {target} SIP/2.0"),
            format!(
                "Via: SIP/2.0/TLS {};rport;branch=z9hG4bK{}",
                self.domain,
                token()
            ),
            "Max-Forwards: 70".into(),
            format!("From: <{}>;tag={}", dialog.local_uri, dialog.local_tag),
            format!("To: <{}>{to_tag}", dialog.remote_uri),
            format!("Call-ID: {}", dialog.call_id),
            format!("CSeq: {cseq} {method}"),
            format!("Contact: <{}>", self.contact()),
        ])
        .map_err(|e| EdgeError::Compose(e.to_string()))
    }

    /// An in-dialog request, with a plain-text body when given.
    fn in_dialog(
        &self,
        dialog: &Dialog,
        method: &str,
        cseq: u32,
        text: Option<&str>,
    ) -> Result<Message, EdgeError> {
        let mut message = self.head(dialog, method, &dialog.remote_target, cseq)?;
        if let Some(text) = text {
            message
                .headers
                .insert(Name::CONTENT_TYPE, "text/plain; charset=UTF-8");
            message.body = Bytes::from(text.to_owned());
        }
        Ok(message)
    }
}

/// A refusal, with the peer's diagnostics when it gave them.
pub fn refused(status: u16, response: &Message) -> EdgeError {
    let reason = match &response.line {
        MessageLine::Response(line) => line.reason.as_ref().map(|r| r.to_string()),
        MessageLine::Request(_) => None,
    };
    let diagnostics = ["ms-diagnostics-public", "ms-diagnostics"]
        .iter()
        .find_map(|h| response.header(&Name::custom(h, &[])))
        .map(str::to_owned)
        .or(reason)
        .unwrap_or_default();
    EdgeError::Refused {
        status,
        diagnostics,
    }
}

/// The next frame from `stream`, `None` when the peer closed it.
async fn next_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
    idle: Duration,
) -> Result<Option<Frame>, EdgeError> {
    let mut buffer = [0u8; 8192];
    loop {
        if let Some(frame) = framer.next_frame()? {
            return Ok(Some(frame));
        }
        let read = tokio::time::timeout(idle, stream.read(&mut buffer))
            .await
            .map_err(|_| EdgeError::Timeout(idle))?
            .map_err(|e| EdgeError::Io("read".into(), e))?;
        if read == 0 {
            return Ok(None);
        }
        framer.push(&buffer[..read])?;
    }
}
