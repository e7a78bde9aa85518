//! What both directions of a stream share: the tokio-xmpp XML stream over our
//! transport, stream errors, keepalives, and how read failures map to RFC 6120
//! stream error conditions.

use std::borrow::Cow;
use std::time::Duration;

use futures::SinkExt;
use tokio_xmpp::xmlstream::{ReadError, Timeouts, XmlStream};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::starttls::StartTls;
use xmpp_parsers::stream_error::{DefinedCondition, StreamError};
use xmpp_parsers::stream_features::StreamFeatures;

use super::dialback::{Dialback, DialbackParseError};
use super::limits::{LimitExceeded, Received};
use super::transport::{Io, StanzaTooLarge, StanzaTooSlow};

pub const NS_STREAM: &str = xmpp_parsers::ns::STREAM;
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIDI: &str = "urn:xmpp:bidi";
pub const NS_BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
/// Stream error conditions and texts (RFC 6120 §4.9.2).
pub const NS_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// A stream-level element, typed once where it is read (RFC 6120 STARTTLS,
/// SASL and stream errors, XEP-0198, XEP-0220, XEP-0288); stanzas go on as
/// elements for [`stanza`](super::stanza) to type. Unknown elements keep
/// their name, for the error that answers them.
#[derive(Debug)]
pub enum Control {
    StartTls,
    Proceed,
    /// `<auth/>`: the mechanism asked for and the initial response (base64 text).
    SaslAuth {
        mechanism: Option<String>,
        initial: String,
    },
    SaslSuccess,
    /// `<failure/>` in the SASL namespace, with its condition's name.
    SaslFailure(Option<String>),
    /// `<bidi/>` (XEP-0288): the initiator will take stanzas on this stream.
    Bidi,
    SmEnable,
    SmEnabled,
    SmFailed,
    SmRequest,
    /// `<a h/>`; `None` when `h` is missing or not a 32-bit count.
    SmAck(Option<u32>),
    Dialback(Result<Dialback, DialbackParseError>),
    /// `<stream:error/>`: the condition's name and the text, if any.
    StreamError {
        condition: String,
        text: String,
    },
    Stanza(Element),
    Unexpected(String),
}

impl Control {
    pub fn parse(element: Element) -> Self {
        let first_child = |e: &Element| e.children().next().map(|c| c.name().to_owned());
        match (element.ns().as_str(), element.name()) {
            (NS_TLS, "starttls") => Self::StartTls,
            (NS_TLS, "proceed") => Self::Proceed,
            (NS_SASL, "auth") => Self::SaslAuth {
                mechanism: element.attr("mechanism").map(str::to_owned),
                initial: element.text().trim().to_owned(),
            },
            (NS_SASL, "success") => Self::SaslSuccess,
            (NS_SASL, "failure") => Self::SaslFailure(first_child(&element)),
            (NS_BIDI, "bidi") => Self::Bidi,
            (super::acks::NS_SM, "enable") => Self::SmEnable,
            (super::acks::NS_SM, "enabled") => Self::SmEnabled,
            (super::acks::NS_SM, "failed") => Self::SmFailed,
            (super::acks::NS_SM, "r") => Self::SmRequest,
            (super::acks::NS_SM, "a") => {
                Self::SmAck(element.attr("h").and_then(|h| h.parse::<u32>().ok()))
            }
            (NS_STREAM, "error") => Self::StreamError {
                condition: first_child(&element).unwrap_or_default(),
                text: element
                    .get_child("text", NS_STREAMS)
                    .map(|t| t.text())
                    .unwrap_or_default(),
            },
            _ if Dialback::is_dialback(&element) => Self::Dialback(Dialback::parse(&element)),
            _ if super::stanza::is_stanza(&element) => Self::Stanza(element),
            (_, name) => Self::Unexpected(name.to_owned()),
        }
    }
}

impl Control {
    /// The element's local name, for the error that answers an unexpected one.
    pub fn name(&self) -> &str {
        match self {
            Self::StartTls => "starttls",
            Self::Proceed => "proceed",
            Self::SaslAuth { .. } => "auth",
            Self::SaslSuccess => "success",
            Self::SaslFailure(_) => "failure",
            Self::Bidi => "bidi",
            Self::SmEnable => "enable",
            Self::SmEnabled => "enabled",
            Self::SmFailed => "failed",
            Self::SmRequest => "r",
            Self::SmAck(_) => "a",
            Self::Dialback(_) => "dialback",
            Self::StreamError { .. } => "error",
            Self::Stanza(element) => element.name(),
            Self::Unexpected(name) => name,
        }
    }
}

/// Elements we send that xmpp-parsers has no type for (EXTERNAL is not among
/// its SASL mechanisms; XEP-0288 is not in it), built as trees, never as text.
pub mod out {
    use xmpp_parsers::minidom::Element;
    use xmpp_parsers::minidom::rxml::NcName;

    /// `<auth mechanism='EXTERNAL'>base64(authzid)</auth>` (XEP-0178).
    pub fn sasl_external(authzid: &str) -> Element {
        use base64::Engine as _;
        Element::builder("auth", super::NS_SASL)
            .attr(ncname("mechanism"), "EXTERNAL")
            .append(base64::engine::general_purpose::STANDARD.encode(authzid.as_bytes()))
            .build()
    }

    /// `<bidi xmlns='urn:xmpp:bidi'/>` (XEP-0288).
    pub fn bidi() -> Element {
        Element::bare("bidi", super::NS_BIDI)
    }

    /// `<enable/>` and `<enabled/>` (XEP-0198) without resumption, as bare
    /// as peers have always seen them (xmpp-parsers' types add `resume`).
    pub fn sm_enable() -> Element {
        Element::bare("enable", super::super::acks::NS_SM)
    }

    pub fn sm_enabled() -> Element {
        Element::bare("enabled", super::super::acks::NS_SM)
    }

    pub(crate) fn ncname(name: &'static str) -> NcName {
        NcName::try_from(name).unwrap_or_else(|_| unreachable!("{name} is an NCName"))
    }
}

/// An established XML stream carrying any element, each built within the
/// connection's [`Limits`](super::limits::Limits).
pub type Stream = XmlStream<Io, Received>;

/// Read timeouts of a stream. After `keepalive` of silence a whitespace
/// keepalive goes out (and silence in the middle of a stanza ends the
/// stream); after `dead_after` more without a byte the stream is dead.
///
/// Inbound streams are dead after the idle timeout. Outbound streams are
/// not judged by what they read: a peer without bidi never writes on them,
/// however busy they are. Failed keepalive writes end them instead.
pub fn timeouts(keepalive: Duration, dead_after: Duration) -> Timeouts {
    Timeouts {
        read_timeout: keepalive,
        response_timeout: dead_after,
    }
}

/// `dead_after` for outbound streams: in effect never.
pub const OUTBOUND_DEAD_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn stream_error(condition: DefinedCondition, text: &str) -> StreamError {
    StreamError::new(condition, "en", text)
}

/// How long a peer may take to accept what we write before the stream is
/// considered dead: a peer that stops reading must not hold our tasks.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer does not read")
}

/// Writes one element (and flushes), within [`WRITE_TIMEOUT`].
pub async fn send<T: xso::AsXml>(stream: &mut Stream, item: &T) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, stream.send(item))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// Sends a stream error and closes our side of the stream.
pub async fn close_with_error(stream: &mut Stream, condition: DefinedCondition, text: &str) {
    let error = stream_error(condition, text);
    if let Err(e) = send(stream, &error).await {
        tracing::debug!(error = %e, "stream error not delivered");
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
}

/// Sends a dialback element with its literal `db:` prefix (see `Injector`).
pub async fn send_dialback(
    stream: &mut Stream,
    element: &super::dialback::Dialback,
) -> std::io::Result<()> {
    let write = async {
        // Everything the XML writer holds goes out first, so the order is kept.
        SinkExt::<&Element>::flush(stream).await?;
        stream
            .get_stream()
            .get_ref()
            .injector()
            .push(element.to_wire().as_bytes());
        SinkExt::<&Element>::flush(stream).await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// One space between stanzas: RFC 6120 §4.6.1 whitespace keepalive.
pub struct Whitespace;

impl xso::AsXml for Whitespace {
    type ItemIter<'x> = std::iter::Once<Result<xso::Item<'x>, xso::error::Error>>;

    fn as_xml_iter(&self) -> Result<Self::ItemIter<'_>, xso::error::Error> {
        Ok(std::iter::once(Ok(xso::Item::Text(Cow::Borrowed(" ")))))
    }
}

/// What ended reading a stream, as the stream error we answer with (if any).
#[derive(Debug)]
pub enum ReadFailure {
    /// The peer closed the stream or the connection.
    Closed,
    /// Nothing arrived for too long.
    Timeout,
    /// We must answer with this stream error.
    Error(DefinedCondition, String),
}

/// Maps a read error: oversized stanzas, DTDs and malformed XML each get
/// their own condition, and only this stream ends.
pub fn classify(error: ReadError) -> ReadFailure {
    match error {
        ReadError::StreamFooterReceived => ReadFailure::Closed,
        ReadError::SoftTimeout => ReadFailure::Timeout,
        // A bad element the parser skipped to its end: one past our limits
        // still ends the stream.
        ReadError::ParseError(e) => match LimitExceeded::of_xso(&e) {
            Some(limit) => ReadFailure::Error(DefinedCondition::PolicyViolation, limit.to_string()),
            None => ReadFailure::Error(DefinedCondition::NotWellFormed, e.to_string()),
        },
        ReadError::HardError(e) => classify_io(&e),
    }
}

pub fn classify_io(e: &std::io::Error) -> ReadFailure {
    if e.kind() == std::io::ErrorKind::TimedOut {
        // The hard timeout: the peer did not answer our keepalive either.
        return ReadFailure::Error(
            DefinedCondition::ConnectionTimeout,
            "no data from the peer".into(),
        );
    }
    // RFC 6120 §4.9.3.12: a peer past our limits gets policy-violation.
    if let Some(limit) = LimitExceeded::find(e) {
        return ReadFailure::Error(DefinedCondition::PolicyViolation, limit.to_string());
    }
    if let Some(inner) = e.get_ref() {
        if let Some(too_large) = inner.downcast_ref::<StanzaTooLarge>() {
            return ReadFailure::Error(DefinedCondition::PolicyViolation, too_large.to_string());
        }
        if let Some(too_slow) = inner.downcast_ref::<StanzaTooSlow>() {
            return ReadFailure::Error(DefinedCondition::PolicyViolation, too_slow.to_string());
        }
        if let Some(xml) = inner.downcast_ref::<xmpp_parsers::minidom::rxml::Error>() {
            return match xml {
                // The connection ended mid-stanza: nothing to answer.
                xmpp_parsers::minidom::rxml::Error::InvalidEof(_) => ReadFailure::Closed,
                xmpp_parsers::minidom::rxml::Error::RestrictedXml(_) => {
                    ReadFailure::Error(DefinedCondition::RestrictedXml, xml.to_string())
                }
                _ => classify_xml_text(xml.to_string()),
            };
        }
    }
    match e.kind() {
        std::io::ErrorKind::InvalidData => {
            ReadFailure::Error(DefinedCondition::NotWellFormed, e.to_string())
        }
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => ReadFailure::Closed,
        _ => ReadFailure::Closed,
    }
}

/// Our stream features: STARTTLS when it can still be offered, and the
/// authentication and bidi features (as raw elements: xmpp-parsers has no type for them).
/// The parser's error by its text, for errors that reach us through another
/// copy of the parser crate than the one we can downcast to.
fn classify_xml_text(text: String) -> ReadFailure {
    if text.contains("invalid eof") {
        ReadFailure::Closed
    } else if text.contains("restricted xml") || text.contains("cdata or comment") {
        // `<!DOCTYPE …>`: rxml has no DTD support and stops at the `<!`.
        ReadFailure::Error(DefinedCondition::RestrictedXml, text)
    } else {
        ReadFailure::Error(DefinedCondition::NotWellFormed, text)
    }
}

pub fn stream_features(starttls: Option<bool>, others: Vec<Element>) -> StreamFeatures {
    StreamFeatures {
        starttls: starttls.map(|required| StartTls { required }),
        others,
        ..StreamFeatures::default()
    }
}

pub fn dialback_feature() -> Element {
    Element::builder("dialback", super::dialback::NS_DIALBACK_FEATURE)
        .append(Element::bare(
            "errors",
            super::dialback::NS_DIALBACK_FEATURE,
        ))
        .build()
}

/// Domain part of a JID-ish address, lower-cased.
pub fn domain_of(jid: &xmpp_parsers::jid::Jid) -> String {
    jid.domain().as_str().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(xml: &str) -> Control {
        Control::parse(xml.parse::<Element>().unwrap())
    }

    #[test]
    fn every_stream_level_element_is_typed_once() {
        assert!(matches!(
            control("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
            Control::StartTls
        ));
        assert!(matches!(
            control("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'> = </auth>"),
            Control::SaslAuth { mechanism: Some(m), initial } if m == "EXTERNAL" && initial == "="
        ));
        assert!(matches!(
            control("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"),
            Control::SaslFailure(Some(c)) if c == "not-authorized"
        ));
        assert!(matches!(
            control("<bidi xmlns='urn:xmpp:bidi'/>"),
            Control::Bidi
        ));
        assert!(matches!(
            control("<a xmlns='urn:xmpp:sm:3' h='7'/>"),
            Control::SmAck(Some(7))
        ));
        assert!(matches!(
            control("<a xmlns='urn:xmpp:sm:3' h='-1'/>"),
            Control::SmAck(None)
        ));
        assert!(matches!(
            control("<r xmlns='urn:xmpp:sm:3'/>"),
            Control::SmRequest
        ));
        assert!(matches!(
            control(
                "<db:result xmlns:db='jabber:server:dialback' from='a.example' to='b.example'>k</db:result>"
            ),
            Control::Dialback(Ok(Dialback::ResultRequest { .. }))
        ));
        assert!(matches!(
            control("<stream:error xmlns:stream='http://etherx.jabber.org/streams'><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no</text></stream:error>"),
            Control::StreamError { condition, text } if condition == "host-unknown" && text == "no"
        ));
        assert!(matches!(
            control("<message xmlns='jabber:server' to='a@b'/>"),
            Control::Stanza(_)
        ));
        let unknown = control("<proceed xmlns='urn:example'/>");
        assert_eq!(unknown.name(), "proceed");
        assert!(matches!(unknown, Control::Unexpected(_)));
    }

    #[test]
    fn what_we_send_keeps_its_wire_shape() {
        let auth = out::sasl_external("teams.example");
        assert_eq!(auth.attr("mechanism"), Some("EXTERNAL"));
        assert_eq!(auth.text(), "dGVhbXMuZXhhbXBsZQ==");
        assert!(matches!(Control::parse(out::bidi()), Control::Bidi));
        assert!(matches!(
            Control::parse(out::sm_enable()),
            Control::SmEnable
        ));
        assert!(matches!(
            Control::parse(out::sm_enabled()),
            Control::SmEnabled
        ));
    }

    #[test]
    fn read_failures_map_to_stream_conditions() {
        let big = std::io::Error::new(std::io::ErrorKind::InvalidData, StanzaTooLarge(10));
        assert!(matches!(
            classify_io(&big),
            ReadFailure::Error(DefinedCondition::PolicyViolation, _)
        ));
        let dtd = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            xmpp_parsers::minidom::rxml::Error::RestrictedXml("DTD"),
        );
        assert!(matches!(
            classify_io(&dtd),
            ReadFailure::Error(DefinedCondition::RestrictedXml, _)
        ));
        let deep = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            xso::error::Error::text_parse_error(LimitExceeded::Depth(32)),
        );
        assert!(matches!(
            classify_io(&deep),
            ReadFailure::Error(DefinedCondition::PolicyViolation, text) if text.contains("32 levels")
        ));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(matches!(classify_io(&eof), ReadFailure::Closed));
    }
}
