//! 1:1 instant messaging as Skype for Business and Lync federate it: an
//! INVITE session (SDP `m=message … sip null`, no MSRP) whose first message
//! rides in the INVITE's `ms-text-format` header (base64 `ms-body`), later
//! ones as in-dialog MESSAGE, typing as INFO with a `KeyboardActivity` body,
//! and BYE. The callee says it took the first message by answering with
//! `Supported: ms-text-format`; without that the caller sends it again as a
//! MESSAGE. A MESSAGE for a dialog we do not know gets 481, and the caller
//! then starts a new session. These shapes are Microsoft's clients' and
//! servers' as captured from Skype for Business 2015 and as pidgin-sipe
//! implements them; Microsoft's open specifications do not spell them out
//! (docs/sip-federation.md).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use ezk_sip_types::Name;

use crate::message::Message;

/// The first message of a session is at most this long (Microsoft's clients
/// send short IMs; a header carries it, base64).
const MAX_FIRST_MESSAGE: usize = 8 * 1024;
/// Sessions an edge keeps at once; a new one past it is 503 with
/// Retry-After, so a peer cannot grow the table without bound.
pub const MAX_SESSIONS: usize = 10_000;

/// What the edge tells the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImEvent {
    /// A message from `from` (a SIP address of record) to `to`; `id` (its
    /// Call-ID and CSeq) is the same when the peer sends it again.
    Message {
        from: String,
        to: String,
        text: String,
        id: String,
    },
    /// `from` started or stopped typing to `to`.
    Typing {
        from: String,
        to: String,
        active: bool,
    },
    /// `from` left the conversation (BYE).
    Ended { from: String, to: String },
}

/// One IM session, from our side.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    pub local_uri: String,
    pub local_tag: String,
    pub remote_uri: String,
    pub remote_tag: String,
    /// Where in-dialog requests go (the peer's Contact).
    pub remote_target: String,
    pub cseq: u32,
}

/// The sessions of an edge, by Call-ID, and ours by (local, remote) address.
#[derive(Debug, Default)]
pub struct Sessions {
    dialogs: Mutex<HashMap<String, Dialog>>,
}

/// The address of record in a From, To or Contact value: `sip:user@host`.
pub fn address(value: &str) -> Option<String> {
    let inner = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next()?.trim(),
    };
    let aor = inner.split(';').next()?.trim();
    (aor.starts_with("sip:") || aor.starts_with("sips:")).then(|| aor.to_ascii_lowercase())
}

/// The whole URI in a Contact value (its parameters kept: `;gruu`, `;opaque`).
pub fn target(value: &str) -> Option<String> {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => Some(value[a + 1..b].to_owned()),
        _ => value.split(';').next().map(|v| v.trim().to_owned()),
    }
}

/// The `tag` parameter of a From or To value.
pub fn tag(value: &str) -> Option<String> {
    let after = value.rsplit_once('>').map_or(value, |(_, params)| params);
    after
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .map(str::to_owned)
}

/// The first message an INVITE carries, from `ms-text-format`.
fn first_message(invite: &Message) -> Option<String> {
    let format = invite.header(&Name::custom("ms-text-format", &["ms-text-format"]))?;
    let body = format
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ms-body="))?;
    if body.len() > MAX_FIRST_MESSAGE * 4 / 3 + 4 {
        return None;
    }
    let bytes = BASE64.decode(body.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// A MESSAGE body as text: plain text as is; others (HTML, RTF) are not
/// what federation carries, and are refused by the caller with 415.
fn text_of(message: &Message) -> Option<String> {
    let content_type = message.header(&Name::CONTENT_TYPE).unwrap_or("text/plain");
    let plain = content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"));
    plain
        .then(|| String::from_utf8(message.body.to_vec()).ok())
        .flatten()
}

/// An inbound request's answer and what it tells the bridge.
pub struct Answer {
    pub response: Message,
    pub event: Option<ImEvent>,
}

impl Sessions {
    pub fn dialog(&self, call_id: &str) -> Option<Dialog> {
        self.lock().get(call_id).cloned()
    }

    /// Our session from `local` to `remote`, if one is up.
    pub fn between(&self, local: &str, remote: &str) -> Option<Dialog> {
        self.lock()
            .values()
            .find(|d| {
                address(&d.local_uri).as_deref() == Some(local)
                    && address(&d.remote_uri).as_deref() == Some(remote)
            })
            .cloned()
    }

    pub fn keep(&self, dialog: Dialog) {
        self.lock().insert(dialog.call_id.clone(), dialog);
    }

    pub fn forget(&self, call_id: &str) {
        self.lock().remove(call_id);
    }

    /// The next CSeq of our requests in `call_id`.
    pub fn next_cseq(&self, call_id: &str) -> Option<u32> {
        let mut dialogs = self.lock();
        let dialog = dialogs.get_mut(call_id)?;
        dialog.cseq += 1;
        Some(dialog.cseq)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Dialog>> {
        self.dialogs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers an IM request (INVITE, MESSAGE, INFO, BYE, CANCEL) that the
    /// edge has already checked the sender of. `contact`: our Contact URI;
    /// `tag`: a fresh tag for a new dialog.
    pub fn answer(&self, request: &Message, contact: &str, tag: &str) -> Option<Answer> {
        let method = request.method()?.to_string();
        let from = address(request.header(&Name::FROM)?)?;
        let to = address(request.header(&Name::TO)?)?;
        let call_id = request.header(&Name::CALL_ID)?.to_owned();
        let known = self.dialog(&call_id);
        let reply = |code, reason: &str| request.response(code, reason, tag);
        let answer = match (method.as_str(), known) {
            ("INVITE", _) => return Some(self.accept_invite(request, contact, tag, from, to)),
            ("CANCEL", _) => Answer {
                response: reply(200, "OK"),
                event: None,
            },
            (_, None) => Answer {
                response: reply(481, "Call Leg/Transaction Does Not Exist"),
                event: None,
            },
            ("MESSAGE", Some(_)) => match text_of(request) {
                Some(text) => Answer {
                    response: reply(200, "OK"),
                    event: Some(ImEvent::Message {
                        id: request.transaction_id().unwrap_or_default(),
                        from,
                        to,
                        text,
                    }),
                },
                None => Answer {
                    response: reply(415, "Unsupported Media Type"),
                    event: None,
                },
            },
            ("INFO", Some(_)) => {
                let body = String::from_utf8_lossy(&request.body);
                let event = body.contains("KeyboardActivity").then(|| ImEvent::Typing {
                    from,
                    to,
                    active: body.contains("status=\"type\""),
                });
                Answer {
                    response: reply(200, "OK"),
                    event,
                }
            }
            ("BYE", Some(_)) => {
                self.forget(&call_id);
                Answer {
                    response: reply(200, "OK"),
                    event: Some(ImEvent::Ended { from, to }),
                }
            }
            _ => Answer {
                response: reply(405, "Method Not Allowed"),
                event: None,
            },
        };
        Some(answer)
    }

    fn accept_invite(
        &self,
        invite: &Message,
        contact: &str,
        tag: &str,
        from: String,
        to: String,
    ) -> Answer {
        let offer = String::from_utf8_lossy(&invite.body);
        if !offer.lines().any(|l| l.starts_with("m=message ")) {
            return Answer {
                response: invite.response(488, "Not Acceptable Here", tag),
                event: None,
            };
        }
        let known = invite
            .header(&Name::CALL_ID)
            .is_some_and(|c| self.dialog(c).is_some());
        let full = self.lock().len() >= MAX_SESSIONS;
        if full && !known {
            let mut busy = invite.response(503, "Service Unavailable", tag);
            busy.headers.insert(Name::RETRY_AFTER, "60");
            return Answer {
                response: busy,
                event: None,
            };
        }
        let (Some(from_value), Some(call_id)) =
            (invite.header(&Name::FROM), invite.header(&Name::CALL_ID))
        else {
            return Answer {
                response: invite.response(400, "Bad Request", tag),
                event: None,
            };
        };
        self.keep(Dialog {
            call_id: call_id.to_owned(),
            local_uri: to.clone(),
            local_tag: tag.to_owned(),
            remote_uri: from.clone(),
            remote_tag: self::tag(from_value).unwrap_or_default(),
            remote_target: invite
                .header(&Name::CONTACT)
                .and_then(target)
                .unwrap_or_else(|| from.clone()),
            cseq: 0,
        });
        let first = first_message(invite);
        let mut ok = invite.response(200, "OK", tag);
        ok.headers.insert(Name::CONTACT, format!("<{contact}>"));
        ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        if first.is_some() {
            // We took the first message: the caller must not send it again.
            ok.headers.insert(Name::SUPPORTED, "ms-text-format");
        }
        ok.body = Bytes::from(sdp(&format!("m=message 5061 sip {to}")));
        let id = invite.transaction_id().unwrap_or_default();
        Answer {
            response: ok,
            event: first.map(|text| ImEvent::Message { from, to, text, id }),
        }
    }
}

/// An SDP body for IM with `media` as its m= line.
pub fn sdp(media: &str) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=session\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n{media}\r\na=accept-types:text/plain\r\n"
    )
}

/// The INFO body saying the sender is typing (`type`) or stopped (`idle`),
/// as Microsoft's clients send it (the shape public client implementations
/// such as pidgin-sipe use; Microsoft's open specifications do not give it).
pub fn keyboard_activity(active: bool) -> String {
    let status = if active { "type" } else { "idle" };
    format!(
        "<?xml version=\"1.0\"?><KeyboardActivity><status status=\"{status}\" /></KeyboardActivity>"
    )
}

/// `ms-text-format` carrying `text` as the INVITE's first message.
pub fn text_format(text: &str) -> String {
    format!("text/plain; charset=UTF-8; ms-body={}", BASE64.encode(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Message {
        let frame = Bytes::from(text.replace('\n', "\r\n"));
        let mut framer = crate::framing::Framer::new(crate::framing::Limits::default());
        framer.push(&frame).unwrap();
        match framer.next_frame().unwrap() {
            Some(crate::framing::Frame::Message(m)) => *m,
            other => panic!("{other:?}"),
        }
    }

    fn invite() -> Message {
        let body = sdp("m=message 5060 sip null").replace("\r\n", "\n");
        parse(&format!(
            "INVITE sip:bob@xmpp.example SIP/2.0\n\
             Via: SIP/2.0/TLS sip.contoso.example:5061;branch=z9hG4bK1\n\
             From: \"Alice\"<sip:alice@contoso.example>;tag=9d5c2a38ba;epid=b84a59c035\n\
             To: <sip:bob@xmpp.example>\n\
             Call-ID: ce878a8b\n\
             CSeq: 1 INVITE\n\
             Contact: <sip:alice@contoso.example;opaque=user:epid:hYns;gruu>\n\
             ms-text-format: text/plain; charset=UTF-8; ms-body=cXdl\n\
             Ms-Conversation-ID: AdKjt1Xy9lDJ8KRjRYaBRsRaq4N/vw==\n\
             Content-Type: application/sdp\n\
             Content-Length: {}\n\n{body}",
            body.replace('\n', "\r\n").len()
        ))
    }

    #[test]
    fn an_invite_s_first_message_is_taken_and_said_so() {
        let sessions = Sessions::default();
        let answer = sessions
            .answer(&invite(), "sip:gw.example;transport=tls", "t1")
            .unwrap();
        assert_eq!(crate::edge::status_of(&answer.response), 200);
        assert_eq!(
            answer.response.header(&Name::SUPPORTED),
            Some("ms-text-format")
        );
        assert!(
            String::from_utf8_lossy(&answer.response.body)
                .contains("m=message 5061 sip sip:bob@xmpp.example")
        );
        assert_eq!(
            answer.event,
            Some(ImEvent::Message {
                from: "sip:alice@contoso.example".into(),
                to: "sip:bob@xmpp.example".into(),
                text: "qwe".into(),
                id: "ce878a8b 1 INVITE".into(),
            })
        );
        let dialog = sessions.dialog("ce878a8b").unwrap();
        assert_eq!(dialog.remote_tag, "9d5c2a38ba");
        assert_eq!(
            dialog.remote_target,
            "sip:alice@contoso.example;opaque=user:epid:hYns;gruu"
        );
    }

    #[test]
    fn in_dialog_messages_typing_and_bye_and_481_for_a_stale_dialog() {
        let sessions = Sessions::default();
        sessions.answer(&invite(), "sip:gw.example", "t1").unwrap();
        let in_dialog = |method: &str, call_id: &str, ctype: &str, body: &str| {
            parse(&format!(
                "{method} sip:bob@xmpp.example SIP/2.0\nVia: SIP/2.0/TLS sip.contoso.example;branch=z9hG4bK2\n\
                 From: <sip:alice@contoso.example>;tag=9d5c2a38ba\nTo: <sip:bob@xmpp.example>;tag=t1\n\
                 Call-ID: {call_id}\nCSeq: 2 {method}\nContent-Type: {ctype}\nContent-Length: {}\n\n{body}",
                body.len()
            ))
        };
        let m = sessions
            .answer(
                &in_dialog("MESSAGE", "ce878a8b", "text/plain; charset=UTF-8", "hello"),
                "c",
                "x",
            )
            .unwrap();
        assert_eq!(crate::edge::status_of(&m.response), 200);
        assert!(matches!(m.event, Some(ImEvent::Message { ref text, .. }) if text == "hello"));
        let html = sessions
            .answer(
                &in_dialog("MESSAGE", "ce878a8b", "text/html", "<b>x</b>"),
                "c",
                "x",
            )
            .unwrap();
        assert_eq!(crate::edge::status_of(&html.response), 415);
        // As SfB clients send it, then what we send (start and stop).
        let typing = "<?xml version=\"1.0\"?><KeyboardActivity><status status=\"type\" /></KeyboardActivity>";
        for (body, active) in [
            (typing.to_owned(), true),
            (keyboard_activity(true), true),
            (keyboard_activity(false), false),
        ] {
            let t = sessions
                .answer(
                    &in_dialog("INFO", "ce878a8b", "application/xml", &body),
                    "c",
                    "x",
                )
                .unwrap();
            assert_eq!(crate::edge::status_of(&t.response), 200);
            assert!(
                matches!(t.event, Some(ImEvent::Typing { active: a, .. }) if a == active),
                "{body}"
            );
        }
        let stale = sessions
            .answer(
                &in_dialog("MESSAGE", "gone", "text/plain", "late"),
                "c",
                "x",
            )
            .unwrap();
        assert_eq!(crate::edge::status_of(&stale.response), 481);
        let bye = sessions
            .answer(&in_dialog("BYE", "ce878a8b", "text/plain", ""), "c", "x")
            .unwrap();
        assert!(matches!(bye.event, Some(ImEvent::Ended { .. })));
        assert!(sessions.dialog("ce878a8b").is_none(), "BYE ends the dialog");
    }
}
