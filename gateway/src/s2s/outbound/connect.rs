//! Opening an outbound stream: resolve and connect, STARTTLS (or direct
//! TLS), SASL EXTERNAL where offered, and the bidi and stream management offers.

use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::xmlstream::{StreamHeader, initiate_stream};
use xmpp_parsers::stream_features::StreamFeatures;

use super::super::stanza;
use super::super::transport::Transport;
use super::super::wire::{self, Control, Stream};
use super::super::{Shared, limits, sasl_external};

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
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
pub(super) async fn negotiate(shared: &Shared, domain: &str) -> Result<Opened, ConnectError> {
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
    let mut transport = if direct_tls {
        start_tls(shared, domain, tcp).await?
    } else {
        Transport::plain(tcp, shared.settings.read_budget())
    };
    loop {
        let tls = transport.is_tls();
        let (stream, stream_id, features) = open_stream(shared, domain, transport).await?;
        if !tls && use_tls && features.starttls.is_some() {
            transport = upgrade(shared, domain, stream).await?;
            continue;
        }
        return authenticate(shared, domain, tls, stream, stream_id, features).await;
    }
}

fn negotiation(e: &dyn std::fmt::Display) -> ConnectError {
    ConnectError::Negotiation(e.to_string())
}

/// Opens a stream on the transport: the peer's header (its stream id) and features.
async fn open_stream(
    shared: &Shared,
    domain: &str,
    transport: Transport,
) -> Result<(Stream, String, StreamFeatures), ConnectError> {
    transport.expect_header();
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
    let (features, stream) = limits::recv_features(opened)
        .await
        .map_err(|e| negotiation(&e))?;
    Ok((stream, stream_id, features))
}

/// STARTTLS: asks, and on `<proceed/>` runs the handshake on the same connection.
async fn upgrade(
    shared: &Shared,
    domain: &str,
    mut stream: Stream,
) -> Result<Transport, ConnectError> {
    stream
        .send(&xmpp_parsers::starttls::Request)
        .await
        .map_err(|e| negotiation(&e))?;
    match stream
        .next()
        .await
        .map(|r| r.map(|el| Control::parse(el.into_element())))
    {
        Some(Ok(Control::Proceed)) => {}
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
    start_tls(shared, domain, tcp).await
}

/// SASL EXTERNAL with our certificate where the peer offers it (dialback
/// follows on the same stream where it refuses), then the bidi and stream
/// management offers.
async fn authenticate(
    shared: &Shared,
    domain: &str,
    tls: bool,
    mut stream: Stream,
    stream_id: String,
    features: StreamFeatures,
) -> Result<Opened, ConnectError> {
    if !tls && shared.settings.require_tls {
        wire::close_with_error(
            &mut stream,
            xmpp_parsers::stream_error::DefinedCondition::PolicyViolation,
            "TLS is required",
        )
        .await;
        return Err(ConnectError::TlsRequired);
    }
    let (mut stream, features, stream_id, sasl) = if tls
        && shared.server_tls.is_some()
        && features.sasl_mechanisms.contains("EXTERNAL")
    {
        match sasl_external::authenticate(shared, domain, stream)
            .await
            .map_err(|e| negotiation(&e))?
        {
            sasl_external::Outcome::Success(stream, features, id) => (stream, features, id, true),
            sasl_external::Outcome::Refused(stream) => (stream, features, stream_id, false),
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
            .send(&wire::out::bidi())
            .await
            .map_err(|e| negotiation(&e))?;
    }
    // XEP-0198 where offered; not with bidi, whose stanzas from the peer
    // we would have to count too.
    let sm_offered = features.stream_management.is_some() && !bidi;
    tracing::info!(tls, bidi, sasl, sm_offered, stream_id = %stream_id, "s2s stream open");
    Ok(Opened {
        stream,
        stream_id,
        bidi,
        sasl,
        sm_offered,
    })
}

/// A stream ready for authentication (or already authenticated by SASL).
pub(super) struct Opened {
    pub(super) stream: Stream,
    /// The id the peer gave the stream (dialback keys are bound to it).
    pub(super) stream_id: String,
    pub(super) bidi: bool,
    /// Authenticated by SASL EXTERNAL: no dialback needed.
    pub(super) sasl: bool,
    /// The peer offers XEP-0198 stream management.
    pub(super) sm_offered: bool,
}
