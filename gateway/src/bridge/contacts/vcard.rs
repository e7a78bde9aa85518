//! Contact cards: a Teams user's Graph profile as vcard-temp (XEP-0054) for
//! XMPP clients, with the photo's SHA-1 for XEP-0153; and a remote contact's
//! vcard-temp as the properties of its shadow account.

use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::sha1::{Digest, Sha1};

use crate::graph::api::{User, UserPatch};

fn text(name: &str, value: &str) -> Element {
    Element::builder(name, ns::VCARD).append(value).build()
}

fn wrap(name: &str, children: Vec<Element>) -> Element {
    Element::builder(name, ns::VCARD)
        .append_all(children)
        .build()
}

/// A Teams user's card. `photo`: content type and bytes, if there is one.
pub fn from_profile(user: &User, photo: Option<(&str, &[u8])>) -> Element {
    let mut card = Vec::new();
    if let Some(name) = &user.display_name {
        card.push(text("FN", name));
    }
    if user.given_name.is_some() || user.surname.is_some() {
        card.push(wrap(
            "N",
            vec![
                text("FAMILY", user.surname.as_deref().unwrap_or_default()),
                text("GIVEN", user.given_name.as_deref().unwrap_or_default()),
            ],
        ));
    }
    if let Some(mail) = &user.mail {
        card.push(wrap(
            "EMAIL",
            vec![
                Element::bare("INTERNET", ns::VCARD),
                Element::bare("PREF", ns::VCARD),
                text("USERID", mail),
            ],
        ));
    }
    for phone in &user.business_phones {
        card.push(wrap(
            "TEL",
            vec![
                Element::bare("WORK", ns::VCARD),
                Element::bare("VOICE", ns::VCARD),
                text("NUMBER", phone),
            ],
        ));
    }
    if let Some(mobile) = &user.mobile_phone {
        card.push(wrap(
            "TEL",
            vec![
                Element::bare("CELL", ns::VCARD),
                Element::bare("VOICE", ns::VCARD),
                text("NUMBER", mobile),
            ],
        ));
    }
    if let Some(title) = &user.job_title {
        card.push(text("TITLE", title));
    }
    if let Some(department) = &user.department {
        card.push(wrap(
            "ORG",
            vec![text("ORGNAME", ""), text("ORGUNIT", department)],
        ));
    }
    if let Some(office) = &user.office_location {
        card.push(wrap(
            "ADR",
            vec![Element::bare("WORK", ns::VCARD), text("EXTADD", office)],
        ));
    }
    if let Some((content_type, bytes)) = photo {
        use base64::Engine as _;
        card.push(wrap(
            "PHOTO",
            vec![
                text("TYPE", content_type),
                text(
                    "BINVAL",
                    &base64::engine::general_purpose::STANDARD.encode(bytes),
                ),
            ],
        ));
    }
    wrap("vCard", card)
}

/// XEP-0153: the photo's SHA-1, hex, for `<x xmlns='vcard-temp:x:update'><photo/>`.
pub fn photo_hash(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `<x xmlns='vcard-temp:x:update'/>` presence payload: `Some(None)`
/// says "no photo" (an empty `<photo/>`), `None` "not known yet" (no `<photo/>`).
pub fn update_element(photo_hash: Option<Option<&str>>) -> Element {
    let Some(hash) = photo_hash else {
        return Element::builder("x", "vcard-temp:x:update").build();
    };
    let mut photo_el = Element::builder("photo", "vcard-temp:x:update");
    if let Some(hash) = hash {
        photo_el = photo_el.append(hash);
    }
    Element::builder("x", "vcard-temp:x:update")
        .append(photo_el.build())
        .build()
}

fn child_text(card: &Element, path: &[&str]) -> Option<String> {
    let mut el = card;
    for name in path {
        el = el.get_child(name, ns::VCARD)?;
    }
    let t = el.text();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// Graph's longest displayName.
const DISPLAY_NAME_MAX: usize = 256;

/// Text from a remote card made safe to show in Teams: no control or
/// bidirectional-formatting characters, whitespace collapsed, at most `max`
/// characters.
fn clean(text: &str, max: usize) -> String {
    let visible: String = text
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
        })
        .collect();
    visible
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// A remote contact's card as its shadow account's properties: the display
/// name "Bob (XMPP)" (from FN, or the JID's local part), names, title,
/// department, phones, and the photo (content type, bytes).
pub fn to_shadow_profile(
    card: &Element,
    jid_local: &str,
    suffix: &str,
) -> (UserPatch, Option<(String, Vec<u8>)>) {
    // The suffix always shows: the name is cut to leave room for it, and
    // cannot hide it with direction overrides or control characters.
    let name = child_text(card, &["FN"])
        .map(|n| clean(&n, DISPLAY_NAME_MAX.saturating_sub(suffix.chars().count())))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| jid_local.to_owned());
    // Graph's maximum lengths (https://learn.microsoft.com/graph/api/resources/user).
    let field = |path: &[&str], max: usize| {
        child_text(card, path)
            .map(|v| clean(&v, max))
            .filter(|v| !v.is_empty())
    };
    let mut patch = UserPatch {
        display_name: Some(format!("{name}{suffix}")),
        given_name: field(&["N", "GIVEN"], 64),
        surname: field(&["N", "FAMILY"], 64),
        job_title: field(&["TITLE"], 128),
        department: field(&["ORG", "ORGUNIT"], 64),
        company_name: field(&["ORG", "ORGNAME"], 64),
        ..UserPatch::default()
    };
    for tel in card.children().filter(|c| c.is("TEL", ns::VCARD)) {
        let Some(number) = child_text(tel, &["NUMBER"]) else {
            continue;
        };
        if tel.has_child("CELL", ns::VCARD) {
            patch.mobile_phone.get_or_insert(number);
        } else {
            patch.business_phones.get_or_insert_with(|| vec![number]);
        }
    }
    let photo = card.get_child("PHOTO", ns::VCARD).and_then(|p| {
        use base64::Engine as _;
        let binval: String = child_text(p, &["BINVAL"])?.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(binval)
            .ok()?;
        Some((
            child_text(p, &["TYPE"]).unwrap_or_else(|| "image/jpeg".into()),
            bytes,
        ))
    });
    (patch, photo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The patch as Graph receives it.
    fn wire(patch: &UserPatch) -> serde_json::Value {
        serde_json::to_value(patch).unwrap()
    }

    #[test]
    fn a_profile_becomes_a_card_clients_read() {
        let alice = User {
            id: "1".into(),
            display_name: Some("Alice Teams".into()),
            given_name: Some("Alice".into()),
            surname: Some("Teams".into()),
            mail: Some("alice@contoso.com".into()),
            job_title: Some("Engineer".into()),
            department: Some("R&D".into()),
            office_location: Some("Building 7".into()),
            mobile_phone: Some("+1 555 0199".into()),
            business_phones: vec!["+1 555 0100".into()],
            ..User::default()
        };
        let card = from_profile(&alice, Some(("image/png", b"png-bytes")));
        // xmpp-parsers reads it as a vcard-temp vCard (with its photo).
        let parsed = xmpp_parsers::vcard::VCard::try_from(card.clone()).unwrap();
        assert_eq!(parsed.photo.unwrap().binval.data, b"png-bytes");
        assert_eq!(child_text(&card, &["FN"]).as_deref(), Some("Alice Teams"));
        assert_eq!(
            child_text(&card, &["ORG", "ORGUNIT"]).as_deref(),
            Some("R&D")
        );
        assert_eq!(
            child_text(&card, &["EMAIL", "USERID"]).as_deref(),
            Some("alice@contoso.com")
        );
        assert_eq!(
            card.children().filter(|c| c.is("TEL", ns::VCARD)).count(),
            2
        );
        assert_eq!(photo_hash(b"png-bytes").len(), 40);
        let hash = photo_hash(b"png-bytes");
        let x = update_element(Some(Some(&hash)));
        assert_eq!(
            x.get_child("photo", "vcard-temp:x:update").unwrap().text(),
            photo_hash(b"png-bytes")
        );
    }

    #[test]
    fn a_remote_card_becomes_a_shadow_profile() {
        let card: Element = "<vCard xmlns='vcard-temp'><FN>Bob Builder</FN><N><FAMILY>Builder</FAMILY><GIVEN>Bob</GIVEN></N>\
             <TITLE>Foreman</TITLE><TEL><WORK/><NUMBER>+44 20 7946 0000</NUMBER></TEL><TEL><CELL/><NUMBER>+44 7700 900000</NUMBER></TEL>\
             <PHOTO><TYPE>image/jpeg</TYPE><BINVAL>anBl\\n Zw==</BINVAL></PHOTO></vCard>"
            .replace("\\n", "\n")
            .parse()
            .unwrap();
        let (patch, photo) = to_shadow_profile(&card, "bob", " (XMPP)");
        let props = wire(&patch);
        assert_eq!(props["displayName"], "Bob Builder (XMPP)");
        assert_eq!(
            (props["givenName"].as_str(), props["surname"].as_str()),
            (Some("Bob"), Some("Builder"))
        );
        assert_eq!(props["jobTitle"], "Foreman");
        assert_eq!(props["businessPhones"], json!(["+44 20 7946 0000"]));
        assert_eq!(props["mobilePhone"], "+44 7700 900000");
        assert_eq!(photo, Some(("image/jpeg".into(), b"jpeg".to_vec())));
        let empty: Element = "<vCard xmlns='vcard-temp'/>".parse().unwrap();
        assert_eq!(
            wire(&to_shadow_profile(&empty, "carol", " (XMPP)").0)["displayName"],
            "carol (XMPP)"
        );
    }

    #[test]
    fn a_card_cannot_hide_the_suffix_or_overflow_graph() {
        let card = |fn_: &str, title: &str| {
            format!("<vCard xmlns='vcard-temp'><FN>{fn_}</FN><TITLE>{title}</TITLE></vCard>")
                .parse::<Element>()
                .unwrap()
        };
        let props = wire(
            &to_shadow_profile(
                &card("Alice\u{202E}PPMX( \n Liddell", &"t".repeat(300)),
                "bob",
                " (XMPP)",
            )
            .0,
        );
        assert_eq!(props["displayName"], "AlicePPMX( Liddell (XMPP)");
        assert_eq!(props["jobTitle"].as_str().unwrap().len(), 128);
        let long = wire(&to_shadow_profile(&card(&"n".repeat(400), ""), "bob", " (XMPP)").0);
        let name = long["displayName"].as_str().unwrap();
        assert_eq!(name.chars().count(), 256);
        assert!(name.ends_with(" (XMPP)"), "the suffix survives the cut");
        let blank = wire(&to_shadow_profile(&card("\u{200B} \u{202E}", ""), "carol", " (XMPP)").0);
        assert_eq!(blank["displayName"], "carol (XMPP)");
        assert!(blank.get("jobTitle").is_none(), "empty fields are not sent");
    }
}
