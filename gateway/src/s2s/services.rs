//! What the domain itself answers: XEP-0030 service discovery for the domain
//! and its users, XEP-0199 pings, and `service-unavailable` for IQs nobody
//! handles. Everything else goes to the bridge.

use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::UserDirectory;
use super::stanza::{self, Stanza};

/// What the domain services did with a stanza.
#[derive(Debug)]
pub enum Handled {
    /// Answered (or deliberately dropped): send this reply, if any.
    Answered(Option<Stanza>),
    /// Not ours: the bridge gets it.
    Bridge(Stanza),
}

const DOMAIN_FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::PING,
    "urn:xmpp:features:dialback",
    "urn:xmpp:bidi",
];
const USER_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::PING, ns::VCARD];

pub fn handle(directory: &dyn UserDirectory, stanza: Stanza) -> Handled {
    let Some(to) = stanza::to(&stanza).cloned() else {
        return Handled::Answered(None);
    };
    let to_domain = to.node().is_none() && to.resource().is_none();
    let to_user = to.node().is_some() && to.resource().is_none();
    match &stanza {
        Stanza::Iq(Iq::Get { payload, .. }) => {
            if to_domain {
                Handled::Answered(answer_domain_get(&stanza, payload))
            } else if to_user {
                let local = to.node().map(|n| n.as_str()).unwrap_or_default();
                if !directory.exists(local) {
                    return Handled::Answered(error(
                        &stanza,
                        DefinedCondition::ServiceUnavailable,
                        "no such user",
                    ));
                }
                if payload.is("query", ns::DISCO_INFO) {
                    Handled::Answered(result(
                        &stanza,
                        Some(disco_info("account", "registered", USER_FEATURES).into()),
                    ))
                } else if payload.is("ping", ns::PING) {
                    Handled::Answered(result(&stanza, None))
                } else {
                    Handled::Bridge(stanza)
                }
            } else {
                Handled::Bridge(stanza)
            }
        }
        Stanza::Iq(Iq::Set { .. }) if to_domain => Handled::Answered(error(
            &stanza,
            DefinedCondition::ServiceUnavailable,
            "the domain accepts no IQ sets",
        )),
        // Responses to the domain (our pings) need nothing more.
        Stanza::Iq(Iq::Result { .. } | Iq::Error { .. }) if to_domain => Handled::Answered(None),
        Stanza::Message(_) if to_domain => Handled::Answered(error(
            &stanza,
            DefinedCondition::ServiceUnavailable,
            "the domain itself takes no messages",
        )),
        Stanza::Presence(_) if to_domain => Handled::Answered(None),
        _ => Handled::Bridge(stanza),
    }
}

fn answer_domain_get(stanza: &Stanza, payload: &Element) -> Option<Stanza> {
    if payload.is("query", ns::DISCO_INFO) {
        result(
            stanza,
            Some(disco_info("server", "im", DOMAIN_FEATURES).into()),
        )
    } else if payload.is("query", ns::DISCO_ITEMS) {
        let items = DiscoItemsResult {
            node: None,
            items: vec![],
            rsm: None,
        };
        result(stanza, Some(items.into()))
    } else if payload.is("ping", ns::PING) {
        result(stanza, None)
    } else {
        error(
            stanza,
            DefinedCondition::ServiceUnavailable,
            "not supported by this domain",
        )
    }
}

fn disco_info(category: &str, type_: &str, features: &[&str]) -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![Identity {
            category: category.to_owned(),
            type_: type_.to_owned(),
            lang: None,
            name: None,
        }],
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        extensions: vec![],
    }
}

fn result(stanza: &Stanza, payload: Option<Element>) -> Option<Stanza> {
    let Stanza::Iq(iq) = stanza else { return None };
    Some(Stanza::Iq(Iq::Result {
        from: iq.to().cloned(),
        to: iq.from().cloned(),
        id: iq.id().to_owned(),
        payload,
    }))
}

fn error(stanza: &Stanza, condition: DefinedCondition, text: &str) -> Option<Stanza> {
    stanza::error_reply(stanza, condition, ErrorType::Cancel, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2s::AnyUser;

    struct OnlyAlice;
    impl UserDirectory for OnlyAlice {
        fn exists(&self, local: &str) -> bool {
            local == "alice"
        }
    }

    fn iq(xml: &str) -> Stanza {
        stanza::from_wire(xml.parse().unwrap()).unwrap()
    }

    fn answered(h: Handled) -> Stanza {
        match h {
            Handled::Answered(Some(s)) => s,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn domain_disco_info_lists_features() {
        let q = iq(
            "<iq xmlns='jabber:server' type='get' id='1' from='b@x.test/r' to='teams.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let Stanza::Iq(Iq::Result {
            payload: Some(p),
            to,
            ..
        }) = answered(handle(&AnyUser, q))
        else {
            panic!("not a result")
        };
        assert_eq!(to.unwrap().to_string(), "b@x.test/r");
        let info = DiscoInfoResult::try_from(p).unwrap();
        assert!(info.features.contains(ns::PING));
        assert_eq!(info.identities[0].category, "server");
    }

    #[test]
    fn pings_and_unknown_iqs() {
        let ping = iq(
            "<iq xmlns='jabber:server' type='get' id='p' from='x.test' to='teams.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(matches!(
            answered(handle(&AnyUser, ping)),
            Stanza::Iq(Iq::Result { .. })
        ));
        let odd = iq(
            "<iq xmlns='jabber:server' type='get' id='o' from='x.test' to='teams.test'><odd xmlns='urn:example'/></iq>",
        );
        assert!(matches!(
            answered(handle(&AnyUser, odd)),
            Stanza::Iq(Iq::Error { .. })
        ));
    }

    #[test]
    fn users_off_the_directory_do_not_exist() {
        let q = |user: &str| {
            iq(&format!(
                "<iq xmlns='jabber:server' type='get' id='1' from='b@x.test/r' to='{user}@teams.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ))
        };
        assert!(matches!(
            answered(handle(&OnlyAlice, q("alice"))),
            Stanza::Iq(Iq::Result { .. })
        ));
        assert!(matches!(
            answered(handle(&OnlyAlice, q("mallory"))),
            Stanza::Iq(Iq::Error { .. })
        ));
        let vcard = iq(
            "<iq xmlns='jabber:server' type='get' id='v' from='b@x.test/r' to='alice@teams.test'><vCard xmlns='vcard-temp'/></iq>",
        );
        assert!(matches!(handle(&OnlyAlice, vcard), Handled::Bridge(_)));
    }
}
