//! Server Dialback (XEP-0220) with keys generated per XEP-0185.
//!
//! key = HEX( HMAC-SHA256( SHA256(secret), "Receiving Originating StreamID" ) )
//!
//! The secret is shared by every replica of a gateway, so any replica can
//! answer a `<db:verify/>` for a stream another one opened.

use std::collections::HashSet;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stream_error::DefinedCondition;

use super::Shared;
use super::route::StreamFault;

pub const NS_DIALBACK: &str = "jabber:server:dialback";
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// Generates and checks dialback keys.
#[derive(Clone)]
pub struct DialbackKeys {
    /// SHA-256 of the secret in hexadecimal: XEP-0185 keys the HMAC with the hex text.
    hashed_secret: String,
}

impl std::fmt::Debug for DialbackKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialbackKeys(..)")
    }
}

impl DialbackKeys {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            hashed_secret: crate::random::hex_of(&Sha256::digest(secret)),
        }
    }

    /// A secret of this process only: fine for one replica, not for several.
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        crate::random::fill(&mut secret);
        Self::new(&secret)
    }

    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.hashed_secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        crate::random::hex_of(&mac.finalize().into_bytes())
    }

    /// Constant-time check of a key a peer presented.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        expected.len() == key.len()
            && expected
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A fresh stream id.
pub fn stream_id() -> String {
    crate::random::hex(16)
}

/// The outcome a `type` attribute carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    Error,
}

impl Verdict {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            Some("valid") => Some(Verdict::Valid),
            Some("invalid") => Some(Verdict::Invalid),
            Some("error") => Some(Verdict::Error),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Error => "error",
        }
    }
}

/// A dialback element, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialback {
    /// `<db:result from to>key</db:result>`: a request to authorise `from`.
    ResultRequest {
        from: String,
        to: String,
        key: String,
    },
    /// `<db:result from to type/>`: the answer to our request.
    ResultAnswer {
        from: String,
        to: String,
        verdict: Verdict,
    },
    /// `<db:verify from to id>key</db:verify>`: asks us, the authoritative server.
    VerifyRequest {
        from: String,
        to: String,
        id: String,
        key: String,
    },
    /// `<db:verify from to id type/>`: the authoritative server's answer.
    VerifyAnswer {
        from: String,
        to: String,
        id: String,
        verdict: Verdict,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("malformed dialback element: {0}")]
pub struct DialbackParseError(&'static str);

impl Dialback {
    pub fn is_dialback(element: &Element) -> bool {
        element.ns() == NS_DIALBACK
    }

    pub fn parse(element: &Element) -> Result<Self, DialbackParseError> {
        let attr = |name: &'static str| {
            element
                .attr(name)
                .map(|v| v.to_ascii_lowercase())
                .ok_or(DialbackParseError(name))
        };
        // Stream ids are opaque: kept as sent.
        let id = || {
            element
                .attr("id")
                .map(str::to_owned)
                .ok_or(DialbackParseError("id"))
        };
        let from = attr("from")?;
        let to = attr("to")?;
        let verdict = Verdict::parse(element.attr("type"));
        // A type we do not know is neither a request nor an answer.
        if verdict.is_none() && element.attr("type").is_some() {
            return Err(DialbackParseError("type"));
        }
        match (element.name(), verdict) {
            ("result", None) => Ok(Dialback::ResultRequest {
                from,
                to,
                key: element.text(),
            }),
            ("result", Some(verdict)) => Ok(Dialback::ResultAnswer { from, to, verdict }),
            ("verify", None) => Ok(Dialback::VerifyRequest {
                from,
                to,
                id: id()?,
                key: element.text(),
            }),
            ("verify", Some(verdict)) => Ok(Dialback::VerifyAnswer {
                from,
                to,
                id: id()?,
                verdict,
            }),
            _ => Err(DialbackParseError("element name")),
        }
    }

    /// The element as bytes, with the literal `db:` prefix (declared on our
    /// stream headers): ejabberd matches dialback elements by that name.
    pub fn to_wire(&self) -> String {
        let (name, from, to) =
            match self {
                Dialback::ResultRequest { from, to, .. }
                | Dialback::ResultAnswer { from, to, .. } => ("result", from, to),
                Dialback::VerifyRequest { from, to, .. }
                | Dialback::VerifyAnswer { from, to, .. } => ("verify", from, to),
            };
        let mut out = format!("<db:{name} from='{}' to='{}'", escape(from), escape(to));
        match self {
            Dialback::ResultRequest { key, .. } => {
                out.push_str(&format!(">{}</db:result>", escape(key)))
            }
            // XEP-0220 §2.4: an error verdict says why.
            Dialback::ResultAnswer {
                verdict: Verdict::Error,
                ..
            } => out.push_str(
                " type='error'><error type='cancel'><remote-server-not-found \
                 xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
            ),
            Dialback::ResultAnswer { verdict, .. } => {
                out.push_str(&format!(" type='{}'/>", verdict.as_str()))
            }
            Dialback::VerifyRequest { id, key, .. } => {
                out.push_str(&format!(" id='{}'>{}</db:verify>", escape(id), escape(key)))
            }
            Dialback::VerifyAnswer { id, verdict, .. } => out.push_str(&format!(
                " id='{}' type='{}'/>",
                escape(id),
                verdict.as_str()
            )),
        }
        out
    }
}

/// XML-escapes text and single-quoted attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The authoritative server's verdict on a `<db:result/>` received on the
/// inbound stream with this id (a later stream on the connection ignores it).
pub struct Verified {
    pub stream_id: String,
    pub domain: String,
    pub verdict: Verdict,
}

/// Dialback verifications one inbound connection may have outstanding at once.
const MAX_VERIFYING: usize = 8;

/// Handles a dialback element: answers `<db:verify/>` at once, starts the
/// verification of a `<db:result/>` in its own task.
pub fn on_inbound(
    shared: &Arc<Shared>,
    request: Dialback,
    stream_id: &str,
    events: &mpsc::Sender<Verified>,
    verifying: &mut HashSet<String>,
) -> Result<Option<Dialback>, StreamFault> {
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
                    .send(Verified {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep_0185_example_key() {
        // XEP-0185 §3: secret s3cr3tf0rd14lb4ck, receiving xmpp.example.com,
        // originating example.org, stream id D60000229F.
        let keys = DialbackKeys::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            keys.key("xmpp.example.com", "example.org", "D60000229F"),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
    }

    #[test]
    fn keys_bind_domains_and_stream() {
        let keys = DialbackKeys::new(b"secret");
        let k = keys.key("a.test", "b.test", "id1");
        assert!(keys.verify("a.test", "b.test", "id1", &k));
        assert!(!keys.verify("a.test", "b.test", "id2", &k));
        assert!(!keys.verify("b.test", "a.test", "id1", &k));
        assert!(!DialbackKeys::new(b"other").verify("a.test", "b.test", "id1", &k));
    }

    #[test]
    fn elements_round_trip() {
        for db in [
            Dialback::ResultRequest {
                from: "a.test".into(),
                to: "b.test".into(),
                key: "k".into(),
            },
            Dialback::ResultAnswer {
                from: "a.test".into(),
                to: "b.test".into(),
                verdict: Verdict::Invalid,
            },
            Dialback::VerifyRequest {
                from: "a.test".into(),
                to: "b.test".into(),
                id: "i".into(),
                key: "k".into(),
            },
            Dialback::VerifyAnswer {
                from: "a.test".into(),
                to: "b.test".into(),
                id: "i".into(),
                verdict: Verdict::Valid,
            },
        ] {
            let wire = format!(
                "<s xmlns='urn:test' xmlns:db='{NS_DIALBACK}'>{}</s>",
                db.to_wire()
            );
            let parsed: Element = wire.parse().unwrap();
            assert_eq!(
                Dialback::parse(parsed.children().next().unwrap()).unwrap(),
                db,
                "{wire}"
            );
        }
        let el: Element = "<verify xmlns='jabber:server:dialback' from='a' to='b'>k</verify>"
            .parse()
            .unwrap();
        assert!(Dialback::parse(&el).is_err(), "verify without id");
    }
}
