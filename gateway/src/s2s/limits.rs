//! Bounds on the trees a peer's XML makes us build.
//!
//! The byte budget of the transport bounds a stanza's size, but not its
//! shape: 3 KB of `<a>` nested a thousand deep is far below any size limit,
//! and every tree walk after the parser — xso's element builder, conversion
//! to typed stanzas, serialisation, even `Drop` — recurses once per level.
//! Elements read from a peer are therefore built here, iteratively, and the
//! build stops at the first element past the nesting depth or the element
//! count allowed per stanza, before any recursive code has seen the tree.
//!
//! xso builds elements through `FromXml::from_events`, which takes no
//! settings; each connection task sets its limits with [`scoped`] and the
//! builder reads them from the task. Outside a scope the defaults apply.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::ops::Deref;

use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio_xmpp::xmlstream::{PendingFeaturesRecv, XmlStream};
use xmpp_parsers::minidom::{Element, rxml};
use xmpp_parsers::stream_error::StreamError;
use xmpp_parsers::stream_features::StreamFeatures;
use xso::error::{Error as XsoError, FromEventsError};
use xso::{Context, FromEventsBuilder, FromXml};

use xmpp_parsers::ns::STREAM as NS_STREAM;

/// How deep and how many elements one stanza may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nesting depth, the stanza's own element being level 1.
    pub max_depth: usize,
    /// Elements in one stanza, its own element included.
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let d = xmppfed_config::S2sConfig::default();
        Self {
            max_depth: d.max_stanza_depth,
            max_elements: d.max_stanza_elements,
        }
    }
}

/// A connection's limits, and the limit its reader broke (if any).
struct Scope {
    limits: Limits,
    /// Set by the builder. tokio-xmpp treats a builder's error as a bad
    /// element to skip (it reads on to the element's end, iteratively); the
    /// transport's next read ends the stream instead (`take_broken`).
    broken: Cell<Option<LimitExceeded>>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Runs `f` (a connection's task) with these limits on every element it reads.
pub async fn scoped<F: Future>(limits: Limits, f: F) -> F::Output {
    SCOPE.scope(scope(limits), f).await
}

fn scope(limits: Limits) -> Scope {
    Scope {
        limits,
        broken: Cell::new(None),
    }
}

fn current() -> Limits {
    SCOPE.try_with(|s| s.limits).unwrap_or_default()
}

fn broke(e: &LimitExceeded) {
    let _ = SCOPE.try_with(|s| s.broken.set(Some(e.clone())));
}

/// The limit an element read by this task broke, once: the transport turns
/// it into a read error so that the stream ends without reading further.
pub fn take_broken() -> Option<LimitExceeded> {
    SCOPE.try_with(|s| s.broken.take()).ok().flatten()
}

/// The read error that means a peer's element broke a limit. It reaches the
/// stream's reader inside an `io::Error` (see `wire::classify_io`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("elements nested deeper than {0} levels")]
    Depth(usize),
    #[error("more than {0} elements in one stanza")]
    Elements(usize),
}

impl LimitExceeded {
    /// Finds this error inside the `io::Error` the XML stream hands out.
    pub fn find(e: &io::Error) -> Option<&Self> {
        let inner = e.get_ref()?;
        if let Some(found) = inner.downcast_ref::<Self>() {
            return Some(found);
        }
        Self::of_xso(inner.downcast_ref::<XsoError>()?)
    }

    /// Finds this error inside the builder's error.
    pub fn of_xso(e: &XsoError) -> Option<&Self> {
        match e {
            XsoError::TextParseError(source) => source.downcast_ref::<Self>(),
            _ => None,
        }
    }
}

/// An element a peer sent, built within the [`Limits`].
#[derive(Debug, Clone, PartialEq)]
pub struct Received(Element);

impl Received {
    pub fn into_element(self) -> Element {
        self.0
    }
}

impl Deref for Received {
    type Target = Element;

    fn deref(&self) -> &Element {
        &self.0
    }
}

impl From<Received> for Element {
    fn from(r: Received) -> Element {
        r.0
    }
}

/// Builds a [`Received`] with an explicit stack instead of recursion.
pub struct Builder {
    /// The open elements, outermost first.
    open: Vec<Element>,
    elements: usize,
    limits: Limits,
}

fn element(qname: rxml::QName, attrs: rxml::AttrMap) -> Element {
    let (namespace, name) = qname;
    let mut builder = Element::builder(name, namespace);
    for ((namespace, name), value) in attrs {
        builder = builder.attr_ns(namespace, name, value);
    }
    builder.build()
}

impl Builder {
    fn new(qname: rxml::QName, attrs: rxml::AttrMap, limits: Limits) -> Self {
        Self {
            open: vec![element(qname, attrs)],
            elements: 1,
            limits,
        }
    }

    fn refuse(e: LimitExceeded) -> XsoError {
        broke(&e);
        XsoError::text_parse_error(e)
    }
}

impl FromEventsBuilder for Builder {
    type Output = Received;

    fn feed(&mut self, ev: rxml::Event, _: &Context<'_>) -> Result<Option<Received>, XsoError> {
        match ev {
            rxml::Event::XmlDeclaration(..) => Ok(None),
            rxml::Event::StartElement(_, qname, attrs) => {
                if self.open.len() >= self.limits.max_depth {
                    return Err(Self::refuse(LimitExceeded::Depth(self.limits.max_depth)));
                }
                if self.elements >= self.limits.max_elements {
                    return Err(Self::refuse(LimitExceeded::Elements(
                        self.limits.max_elements,
                    )));
                }
                self.elements += 1;
                self.open.push(element(qname, attrs));
                Ok(None)
            }
            rxml::Event::Text(_, text) => {
                if let Some(top) = self.open.last_mut() {
                    top.append_text_node(text);
                }
                Ok(None)
            }
            rxml::Event::EndElement(_) => {
                let Some(done) = self.open.pop() else {
                    return Err(XsoError::Other("end of an element that was not open"));
                };
                match self.open.last_mut() {
                    Some(parent) => {
                        parent.append_child(done);
                        Ok(None)
                    }
                    None => Ok(Some(Received(done))),
                }
            }
        }
    }
}

impl FromXml for Received {
    type Builder = Builder;

    fn from_events(
        qname: rxml::QName,
        attrs: rxml::AttrMap,
        _: &Context<'_>,
    ) -> Result<Builder, FromEventsError> {
        Ok(Builder::new(qname, attrs, current()))
    }
}

/// Parses one element from text within `limits` (for tests and fuzzing; the
/// streams read through [`Received`] directly).
pub fn parse(xml: &[u8], limits: Limits) -> Result<Element, ParseError> {
    SCOPE
        .sync_scope(scope(limits), || xso::from_bytes::<Received>(xml))
        .map(Received::into_element)
        .map_err(|e| match LimitExceeded::of_xso(&e) {
            Some(limit) => ParseError::Limit(limit.clone()),
            None => ParseError::Xml(e.to_string()),
        })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not well-formed: {0}")]
    Xml(String),
    #[error("{0}")]
    Limit(LimitExceeded),
}

/// Reads the peer's stream features as a bounded element (tokio-xmpp's own
/// `recv_features` builds them with xso's recursive element builder).
pub async fn recv_features<Io: AsyncBufRead + AsyncWrite + Unpin>(
    pending: PendingFeaturesRecv<Io>,
) -> io::Result<(StreamFeatures, XmlStream<Io, Received>)> {
    use futures::StreamExt;
    use tokio_xmpp::xmlstream::ReadError;
    let mut stream = pending.skip_features::<Received>();
    loop {
        match stream.next().await {
            Some(Ok(el)) if el.is("features", NS_STREAM) => {
                let features = StreamFeatures::try_from(el.into_element())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                return Ok((features, stream));
            }
            Some(Ok(el)) if el.is("error", NS_STREAM) => {
                let text = StreamError::try_from(el.into_element())
                    .map(|e| e.to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(io::Error::other(format!(
                    "stream error instead of features: {text}"
                )));
            }
            Some(Ok(el)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("<{}/> instead of stream features", el.name()),
                ));
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(ReadError::HardError(e))) => return Err(e),
            Some(Err(ReadError::ParseError(e))) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            Some(Err(ReadError::StreamFooterReceived)) | None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream closed before its features",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_depth: 8,
        max_elements: 100,
    };

    fn nested(depth: usize) -> String {
        format!("{}{}", "<a xmlns='x'>".repeat(depth), "</a>".repeat(depth))
    }

    #[test]
    fn nesting_up_to_the_limit_builds_and_beyond_it_is_refused() {
        let el = parse(nested(8).as_bytes(), LIMITS).unwrap();
        assert_eq!(el.name(), "a");
        let err = parse(nested(9).as_bytes(), LIMITS).unwrap_err();
        assert_eq!(err, ParseError::Limit(LimitExceeded::Depth(8)));
        assert_eq!(err.to_string(), "elements nested deeper than 8 levels");
        // Deep enough to overflow any recursive builder: refused, not crashed.
        assert!(parse(nested(100_000).as_bytes(), LIMITS).is_err());
    }

    #[test]
    fn element_count_is_bounded() {
        let wide = |n: usize| format!("<a xmlns='x'>{}</a>", "<b/>".repeat(n));
        let el = parse(wide(99).as_bytes(), LIMITS).unwrap();
        assert_eq!(el.children().count(), 99);
        assert_eq!(
            parse(wide(100).as_bytes(), LIMITS).unwrap_err(),
            ParseError::Limit(LimitExceeded::Elements(100))
        );
    }

    #[test]
    fn the_built_tree_is_the_one_minidom_builds() {
        let xml = "<message xmlns='jabber:server' to='a@b' xml:lang='en'>\
                   <body>hi &amp; bye</body><x xmlns='urn:y' k='v'><z/>tail</x></message>";
        let ours = parse(xml.as_bytes(), LIMITS).unwrap();
        let theirs: Element = xso::from_bytes(xml.as_bytes()).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_error_is_found_inside_an_io_error() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            XsoError::text_parse_error(LimitExceeded::Depth(3)),
        );
        assert_eq!(LimitExceeded::find(&e), Some(&LimitExceeded::Depth(3)));
        assert_eq!(LimitExceeded::find(&io::Error::other("x")), None);
    }
}
