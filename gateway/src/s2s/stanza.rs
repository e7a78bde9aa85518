//! The typed boundary between the wire and the bridge.
//!
//! On s2s streams stanzas live in `jabber:server`; xmpp-parsers binds its
//! stanza types to one namespace (`jabber:client`, or the component one under
//! that feature). Elements are rewritten between the two here, so nothing
//! past this module ever sees raw XML.

use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::{Element, Node};
use xmpp_parsers::ns;
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

pub use xmpp_parsers::stanza::Stanza;

/// The namespace of stanzas on server-to-server streams.
pub const JABBER_SERVER: &str = "jabber:server";

#[derive(Debug, thiserror::Error)]
pub enum StanzaParseError {
    #[error("not a stanza: <{0}/>")]
    NotAStanza(String),
    #[error("invalid {kind} stanza: {message}")]
    Invalid { kind: &'static str, message: String },
}

/// Renames every element in `from` to `to`, keeping the rest untouched.
fn rename_ns(element: Element, from: &str, to: &str) -> Element {
    if element.ns() != from {
        return element;
    }
    let mut element = element;
    let attrs = element.attrs().clone();
    let nodes: Vec<Node> = element
        .take_nodes()
        .into_iter()
        .map(|node| match node {
            Node::Element(child) => Node::Element(rename_ns(child, from, to)),
            text => text,
        })
        .collect();
    let mut renamed = Element::builder(element.name(), to)
        .append_all(nodes)
        .build();
    *renamed.attrs_mut() = attrs;
    renamed
}

/// Parses a stanza received on an s2s stream.
pub fn from_wire(element: Element) -> Result<Stanza, StanzaParseError> {
    let element = rename_ns(element, JABBER_SERVER, ns::DEFAULT_NS);
    let kind: &'static str = match element.name() {
        "message" => "message",
        "presence" => "presence",
        "iq" => "iq",
        other => return Err(StanzaParseError::NotAStanza(other.to_owned())),
    };
    let invalid = |e: xmpp_parsers::FromElementError| StanzaParseError::Invalid {
        kind,
        message: e.to_string(),
    };
    Ok(match kind {
        "message" => Stanza::Message(Message::try_from(element).map_err(invalid)?),
        "presence" => Stanza::Presence(Presence::try_from(element).map_err(invalid)?),
        _ => Stanza::Iq(Iq::try_from(element).map_err(invalid)?),
    })
}

/// Serialises a stanza for an s2s stream.
pub fn to_wire(stanza: Stanza) -> Element {
    let element: Element = match stanza {
        Stanza::Message(m) => m.into(),
        Stanza::Presence(p) => p.into(),
        Stanza::Iq(i) => i.into(),
    };
    rename_ns(element, ns::DEFAULT_NS, JABBER_SERVER)
}

/// A copy of a stanza (the parser's enum has no `Clone`; its variants do).
pub fn duplicate(stanza: &Stanza) -> Stanza {
    match stanza {
        Stanza::Message(m) => Stanza::Message(m.clone()),
        Stanza::Presence(p) => Stanza::Presence(p.clone()),
        Stanza::Iq(i) => Stanza::Iq(i.clone()),
    }
}

/// Whether an element on the stream is a stanza (as opposed to a nonza).
pub fn is_stanza(element: &Element) -> bool {
    element.ns() == JABBER_SERVER && matches!(element.name(), "message" | "presence" | "iq")
}

pub fn from(stanza: &Stanza) -> Option<&Jid> {
    match stanza {
        Stanza::Message(m) => m.from.as_ref(),
        Stanza::Presence(p) => p.from.as_ref(),
        Stanza::Iq(i) => i.from(),
    }
}

pub fn to(stanza: &Stanza) -> Option<&Jid> {
    match stanza {
        Stanza::Message(m) => m.to.as_ref(),
        Stanza::Presence(p) => p.to.as_ref(),
        Stanza::Iq(i) => i.to(),
    }
}

/// Whether the stanza is itself an error (errors are never answered with errors).
pub fn is_error(stanza: &Stanza) -> bool {
    match stanza {
        Stanza::Message(m) => m.type_ == xmpp_parsers::message::MessageType::Error,
        Stanza::Presence(p) => p.type_ == xmpp_parsers::presence::Type::Error,
        Stanza::Iq(i) => matches!(i, Iq::Error { .. }),
    }
}

/// Whether the stanza is an IQ response (never answered at all).
pub fn is_iq_response(stanza: &Stanza) -> bool {
    matches!(stanza, Stanza::Iq(Iq::Result { .. } | Iq::Error { .. }))
}

/// The error reply to `stanza` (RFC 6120 §8.3): addresses swapped, same id,
/// `None` for stanzas that must not be answered with an error.
pub fn error_reply(
    stanza: &Stanza,
    condition: DefinedCondition,
    type_: ErrorType,
    text: &str,
) -> Option<Stanza> {
    if is_error(stanza) || is_iq_response(stanza) {
        return None;
    }
    let error = StanzaError::new(type_, condition, "en", text);
    let (from, to) = (to(stanza).cloned(), from(stanza).cloned());
    Some(match stanza {
        Stanza::Message(m) => {
            let mut reply = Message::new(to);
            reply.from = from;
            reply.id = m.id.clone();
            reply.type_ = xmpp_parsers::message::MessageType::Error;
            reply.payloads.push(error.into());
            Stanza::Message(reply)
        }
        Stanza::Presence(p) => {
            let mut reply = Presence::new(xmpp_parsers::presence::Type::Error);
            reply.from = from;
            reply.to = to;
            reply.id = p.id.clone();
            reply.payloads.push(error.into());
            Stanza::Presence(reply)
        }
        Stanza::Iq(i) => {
            let mut reply = Iq::from_error(i.id(), error);
            *reply.from_mut() = from;
            *reply.to_mut() = to;
            Stanza::Iq(reply)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn jabber_server_message_parses_with_its_body() {
        let el = parse(
            "<message xmlns='jabber:server' from='bob@xmpp.test/pc' to='alice@teams.test' type='chat' id='m1'>\
             <body xml:lang='en'>hello</body></message>",
        );
        let Stanza::Message(m) = from_wire(el).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(m.from.as_ref().unwrap().to_string(), "bob@xmpp.test/pc");
        assert_eq!(m.get_best_body(vec![]).unwrap().1, "hello");
    }

    #[test]
    fn round_trip_keeps_foreign_namespaces() {
        let el = parse(
            "<iq xmlns='jabber:server' from='a@x.test' to='teams.test' type='get' id='q'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let wire = to_wire(from_wire(el).unwrap());
        assert_eq!(wire.ns(), JABBER_SERVER);
        assert!(wire.has_child("query", "http://jabber.org/protocol/disco#info"));
    }

    #[test]
    fn nonzas_and_broken_stanzas_are_rejected() {
        assert!(matches!(
            from_wire(parse("<result xmlns='jabber:server:dialback'/>")),
            Err(StanzaParseError::NotAStanza(_))
        ));
        assert!(matches!(
            from_wire(parse("<iq xmlns='jabber:server' type='bogus' id='1'/>")),
            Err(StanzaParseError::Invalid { kind: "iq", .. })
        ));
    }

    #[test]
    fn error_replies_swap_addresses_and_never_answer_errors() {
        let el = parse(
            "<message xmlns='jabber:server' from='b@x.test/r' to='a@teams.test' id='7'><body>x</body></message>",
        );
        let msg = from_wire(el).unwrap();
        let reply = error_reply(
            &msg,
            DefinedCondition::ServiceUnavailable,
            ErrorType::Cancel,
            "no",
        )
        .unwrap();
        assert_eq!(to(&reply).unwrap().to_string(), "b@x.test/r");
        assert_eq!(from(&reply).unwrap().to_string(), "a@teams.test");
        assert!(is_error(&reply));
        assert!(
            error_reply(
                &reply,
                DefinedCondition::ServiceUnavailable,
                ErrorType::Cancel,
                "no"
            )
            .is_none()
        );
    }
}
