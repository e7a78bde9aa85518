use super::*;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn licence(id: &str, nodes: u32, expires: &str) -> Licence {
    Licence {
        id: id.into(),
        licensee: "Contoso Ltd".into(),
        nodes,
        issued: at("2026-01-01T00:00:00Z"),
        expires: at(expires),
        features: vec!["sqlserver".into()],
    }
}

#[test]
fn issued_licences_verify_and_round_trip() {
    let (private, public) = generate_key().unwrap();
    let l = licence("L-1", 3, "2027-01-01T00:00:00Z");
    let text = issue(&l, &private).unwrap();
    assert!(text.starts_with("xmppfed-licence-v1."));
    assert_eq!(verify(&text, &public).unwrap(), l);
    assert_eq!(
        verify(&format!("  {text}\n"), &public).unwrap(),
        l,
        "Secret values may carry whitespace"
    );
}

#[test]
fn altered_or_foreign_licences_are_rejected() {
    let (private, public) = generate_key().unwrap();
    let (_, other_public) = generate_key().unwrap();
    let text = issue(&licence("L-1", 3, "2027-01-01T00:00:00Z"), &private).unwrap();
    assert_eq!(verify(&text, &other_public), Err(LicenceError::Signature));

    // Raise the node count in the payload and keep the signature.
    let (signed, signature) = text.rsplit_once('.').unwrap();
    let payload = signed.strip_prefix("xmppfed-licence-v1.").unwrap();
    let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let forged = URL_SAFE_NO_PAD.encode(json.replace("\"nodes\":3", "\"nodes\":300"));
    let tampered = format!("xmppfed-licence-v1.{forged}.{signature}");
    assert_eq!(verify(&tampered, &public), Err(LicenceError::Signature));

    assert_eq!(verify("hello", &public), Err(LicenceError::Format));
    assert_eq!(
        verify("other-v1.abc.def", &public),
        Err(LicenceError::Format)
    );
    assert_eq!(
        verify("xmppfed-licence-v1.abc.!!!", &public),
        Err(LicenceError::Encoding("signature"))
    );
}

#[test]
fn nonsensical_licences_are_not_issued() {
    let (private, _) = generate_key().unwrap();
    assert!(issue(&licence("L", 0, "2027-01-01T00:00:00Z"), &private).is_err());
    assert!(issue(&licence("L", 1, "2025-01-01T00:00:00Z"), &private).is_err());
    assert!(matches!(
        issue(&licence("L", 1, "2027-01-01T00:00:00Z"), "bm90IGEga2V5"),
        Err(LicenceError::Key(_))
    ));
}

#[test]
fn state_warns_before_expiry_then_expires() {
    let l = licence("L", 1, "2027-01-31T00:00:00Z");
    assert_eq!(l.state(at("2026-12-01T00:00:00Z")), LicenceState::Valid);
    assert_eq!(
        l.state(at("2027-01-05T00:00:00Z")),
        LicenceState::ExpiringSoon
    );
    assert_eq!(l.state(at("2027-01-31T00:00:00Z")), LicenceState::Expired);
}

#[test]
fn seats_come_from_unexpired_licences_longest_lived_first() {
    let now = at("2026-06-01T00:00:00Z");
    let licences = [
        licence("short", 1, "2026-09-01T00:00:00Z"),
        licence("long", 2, "2028-01-01T00:00:00Z"),
        licence("expired", 5, "2026-05-01T00:00:00Z"),
    ];
    let pods: Vec<String> = (0..4).map(|i| format!("gw-{i}")).collect();
    let a = assign(&licences, &pods, now);
    let ids: Vec<(&str, &str)> = a
        .seats
        .iter()
        .map(|(p, l)| (p.as_str(), l.id.as_str()))
        .collect();
    assert_eq!(ids, [("gw-0", "long"), ("gw-1", "long"), ("gw-2", "short")]);
    assert_eq!(a.unlicensed, ["gw-3"]);
    assert_eq!(assign(&[], &pods[..1], now).unlicensed, ["gw-0"]);
}

#[test]
fn a_licence_file_names_each_line_that_does_not_verify() {
    let (private, public) = generate_key().unwrap();
    let (other, _) = generate_key().unwrap();
    let licence = |id: &str, key: &str| {
        issue(
            &Licence {
                id: id.into(),
                licensee: "Contoso".into(),
                nodes: 1,
                issued: "2026-01-01T00:00:00Z".parse().unwrap(),
                expires: "2099-01-01T00:00:00Z".parse().unwrap(),
                features: vec![],
            },
            key,
        )
        .unwrap()
    };
    let text = format!(
        "{}\n\n  {}  \nnot a licence\n",
        licence("L-1", &private),
        licence("L-2", &other)
    );
    let file = read_file(&text, &public);
    assert_eq!(file.licences.len(), 1);
    assert_eq!(file.licences[0].id, "L-1");
    assert_eq!(file.problems.len(), 2, "{:?}", file.problems);
    assert!(
        file.problems[0].starts_with("licence 2: "),
        "{:?}",
        file.problems
    );
    assert!(
        file.problems[1].starts_with("licence 3: "),
        "{:?}",
        file.problems
    );
    assert_eq!(replicas("gw", 3), ["gw-0", "gw-1", "gw-2"]);
    assert!(replicas("gw", 0).is_empty());
}
