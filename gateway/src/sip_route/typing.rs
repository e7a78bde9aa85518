//! Typing both ways: XEP-0085 chat states ⇄ Microsoft's `KeyboardActivity`
//! INFO (`composing` is "type", `paused`, `active`, `inactive` and `gone`
//! are "idle"), and a session the Microsoft side ends (BYE) is `gone`.
//! Typing is a hint of the moment: it is neither stored nor retried.

use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType};
use xmppfed_sipfed::ImEvent;

/// A chat-state-only message's typing: `Some(true)` for composing.
pub(super) fn from_xmpp(message: &Message) -> Option<bool> {
    if message.get_best_body(vec![]).is_some() {
        return None;
    }
    message
        .payloads
        .iter()
        .find_map(|p| ChatState::try_from(p.clone()).ok())
        .map(|state| state == ChatState::Composing)
}

/// The chat state an IM event from `sip:<local>@<partner>` to
/// `sip:<contact>` means for the XMPP contact, from `<local>@<domain>`.
pub(super) fn to_xmpp(event: &ImEvent, domain: &str, partner: &str) -> Option<Message> {
    let (from, to, state) = match event {
        ImEvent::Typing { from, to, active } => (
            from,
            to,
            if *active {
                ChatState::Composing
            } else {
                ChatState::Paused
            },
        ),
        ImEvent::Ended { from, to } => (from, to, ChatState::Gone),
        ImEvent::Message { .. } => return None,
    };
    let local = from
        .strip_prefix("sip:")?
        .strip_suffix(&format!("@{partner}"))?;
    let contact: Jid = to.strip_prefix("sip:")?.parse().ok()?;
    let mut message = Message::new_with_type(MessageType::Chat, Some(contact));
    message.from = Some(format!("{local}@{domain}").parse().ok()?);
    message.payloads.push(state.into());
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_parsers::message::Lang;

    #[test]
    fn chat_states_map_both_ways() {
        let mut composing = Message::new(None);
        composing.payloads.push(ChatState::Composing.into());
        assert_eq!(from_xmpp(&composing), Some(true));
        let mut paused = Message::new(None);
        paused.payloads.push(ChatState::Paused.into());
        assert_eq!(from_xmpp(&paused), Some(false));
        // A message's own chat state goes with the message, not as typing.
        let with_body = composing.clone().with_body(Lang::default(), "hi".into());
        assert_eq!(from_xmpp(&with_body), None);
        assert_eq!(from_xmpp(&Message::new(None)), None);

        let typing = ImEvent::Typing {
            from: "sip:alice@contoso.test".into(),
            to: "sip:bob@xmpp.test".into(),
            active: true,
        };
        let m = to_xmpp(&typing, "teams.test", "contoso.test").unwrap();
        assert_eq!(m.from.as_ref().unwrap().to_string(), "alice@teams.test");
        assert_eq!(m.to.as_ref().unwrap().to_string(), "bob@xmpp.test");
        let state = |m: &Message| {
            m.payloads
                .iter()
                .find_map(|p| ChatState::try_from(p.clone()).ok())
        };
        assert_eq!(state(&m), Some(ChatState::Composing));
        let ended = ImEvent::Ended {
            from: "sip:alice@contoso.test".into(),
            to: "sip:bob@xmpp.test".into(),
        };
        let gone = to_xmpp(&ended, "teams.test", "contoso.test").unwrap();
        assert_eq!(state(&gone), Some(ChatState::Gone));
        // Not from the partner's domain: nothing.
        let stranger = ImEvent::Typing {
            from: "sip:eve@elsewhere.test".into(),
            to: "sip:bob@xmpp.test".into(),
            active: true,
        };
        assert!(to_xmpp(&stranger, "teams.test", "contoso.test").is_none());
    }
}
