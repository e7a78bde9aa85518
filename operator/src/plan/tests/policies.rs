use super::*;

#[test]
fn whitelists_that_select_or_are_named_are_merged_and_others_ignored() {
    let g = gateway(
        &format!("{}  policies: {{ domainWhitelists: [named] }}\n", sqlite()),
        "tier: prod",
    );
    let lists = [
        whitelist(
            "by-label",
            "xmpp",
            "{ matchLabels: { tier: prod } }",
            &["partner.example", "*.allies.example"],
        ),
        whitelist("named", "xmpp", "{}", &["Partner.example", "other.example"]),
        whitelist(
            "other-label",
            "xmpp",
            "{ matchLabels: { tier: test } }",
            &["test.example"],
        ),
        whitelist(
            "other-namespace",
            "elsewhere",
            "{ names: [contoso] }",
            &["leak.example"],
        ),
        whitelist(
            "empty-selector",
            "xmpp",
            "{ matchLabels: {} }",
            &["nobody.example"],
        ),
    ];
    let plan = plan(&g, &lists, &[], 1, &SETTINGS).unwrap();
    assert_eq!(plan.whitelists, ["by-label", "named"]);
    let config = GatewayConfig::from_toml_str(&plan.config_toml).unwrap();
    let domains: Vec<String> = config
        .allow
        .remote_domains
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        domains,
        ["other.example", "partner.example", "*.allies.example"]
    );
    assert_eq!(config.allow.internal_users, ["alice@contoso.example"]);
}

fn pod_template_hash(plan: &crate::plan::Plan) -> String {
    plan.objects
        .stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(crate::render::CONFIG_HASH_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_whitelist_change_changes_the_config_hash() {
    let g = gateway(sqlite(), "tier: prod");
    let before = plan(
        &g,
        &[whitelist(
            "w",
            "xmpp",
            "{ names: [contoso] }",
            &["a.example"],
        )],
        &[],
        1,
        &SETTINGS,
    )
    .unwrap();
    let after = plan(
        &g,
        &[whitelist(
            "w",
            "xmpp",
            "{ names: [contoso] }",
            &["b.example"],
        )],
        &[],
        1,
        &SETTINGS,
    )
    .unwrap();
    assert_ne!(before.config_hash, after.config_hash);
    // The gateway applies allow lists live: the pods do not roll for them.
    assert_eq!(
        pod_template_hash(&before),
        pod_template_hash(&after),
        "a whitelist change must not roll the pods"
    );
    // Nor do they for a throttle policy; what is read only at start does.
    let throttled = plan(
        &g,
        &[],
        &[throttle("strict", "{ matchLabels: { tier: prod } }", 10)],
        1,
        &SETTINGS,
    )
    .unwrap();
    assert_eq!(pod_template_hash(&throttled), pod_template_hash(&before));
    let mut moved = g.clone();
    moved.spec.domain = "teams.elsewhere.example".into();
    let rolled = plan(&moved, &[], &[], 1, &SETTINGS).unwrap();
    assert_ne!(
        pod_template_hash(&rolled),
        pod_template_hash(&before),
        "another domain is read at start: the pods roll"
    );
    let same = plan(
        &g,
        &[whitelist(
            "w",
            "xmpp",
            "{ names: [contoso] }",
            &["a.example"],
        )],
        &[],
        1,
        &SETTINGS,
    )
    .unwrap();
    assert_eq!(
        before.config_hash, same.config_hash,
        "rendering is deterministic"
    );
}

#[test]
fn throttle_policy_is_the_named_one_or_the_single_selecting_one() {
    let g = gateway(sqlite(), "tier: prod");
    let one = [throttle("strict", "{ matchLabels: { tier: prod } }", 10)];
    let config =
        GatewayConfig::from_toml_str(&plan(&g, &[], &one, 1, &SETTINGS).unwrap().config_toml)
            .unwrap();
    assert_eq!(config.throttle.default.messages_per_minute, 10);
    assert_eq!(
        config
            .throttle_for("boss@contoso.example")
            .messages_per_minute,
        600
    );

    let two = [
        throttle("strict", "{ matchLabels: { tier: prod } }", 10),
        throttle("loose", "{ names: [contoso] }", 100),
    ];
    let e = plan(&g, &[], &two, 1, &SETTINGS).unwrap_err();
    assert_eq!(e.reason(), "AmbiguousThrottlePolicy");
    assert!(e.to_string().contains("loose, strict"), "{e}");

    let named = gateway(
        &format!("{}  policies: {{ throttlePolicy: loose }}\n", sqlite()),
        "tier: prod",
    );
    let p = plan(&named, &[], &two, 1, &SETTINGS).unwrap();
    assert_eq!(p.throttle_policy.as_deref(), Some("loose"));
}

#[test]
fn policy_changes_reach_exactly_the_gateways_they_apply_to() {
    let a = gateway(
        &format!("{}  policies: {{ throttlePolicy: shared }}\n", sqlite()),
        "tier: prod",
    );
    let mut b = gateway(
        &format!("{}  policies: {{ domainWhitelists: [shared] }}\n", sqlite()),
        "",
    );
    b.metadata.name = Some("fabrikam".into());
    let mut c = gateway(sqlite(), "tier: prod");
    c.metadata.name = Some("elsewhere".into());
    c.metadata.namespace = Some("other".into());
    let gateways = [a, b, c];
    let names = |v: Vec<&FederationGateway>| -> Vec<String> {
        v.iter().map(|g| g.metadata.name.clone().unwrap()).collect()
    };
    let none = crate::crd::GatewaySelector::default();
    assert_eq!(
        names(selected_gateways(
            &none,
            PolicyRef::Whitelist("shared"),
            Some("xmpp"),
            &gateways
        )),
        ["fabrikam"]
    );
    assert_eq!(
        names(selected_gateways(
            &none,
            PolicyRef::Throttle("shared"),
            Some("xmpp"),
            &gateways
        )),
        ["contoso"]
    );
    let by_label: crate::crd::GatewaySelector =
        serde_json::from_str(r#"{"matchLabels":{"tier":"prod"}}"#).unwrap();
    assert_eq!(
        names(selected_gateways(
            &by_label,
            PolicyRef::Whitelist("x"),
            Some("xmpp"),
            &gateways
        )),
        ["contoso"]
    );

    // Narrowed away from contoso, whose applied configuration still holds it:
    // contoso is concerned too, so that it drops the whitelist at once.
    let mut gateways = gateways;
    gateways[0].status = Some(crate::crd::FederationGatewayStatus {
        whitelists: vec!["x".into()],
        ..Default::default()
    });
    let by_name: crate::crd::GatewaySelector =
        serde_json::from_str(r#"{"names":["fabrikam"]}"#).unwrap();
    let whitelist_x = PolicyRef::Whitelist("x");
    let concerned = |selector: &crate::crd::GatewaySelector, policy, namespace: Option<&str>| {
        let hit = gateways
            .iter()
            .filter(|g| concerns(selector, policy, namespace, g));
        names(hit.collect())
    };
    assert_eq!(
        concerned(&by_name, whitelist_x, Some("xmpp")),
        ["contoso", "fabrikam"]
    );
    assert_eq!(
        concerned(&by_name, whitelist_x, Some("other")),
        Vec::<String>::new(),
        "another namespace's gateway is never concerned"
    );
    assert_eq!(
        concerned(&none, PolicyRef::Throttle("x"), Some("xmpp")),
        Vec::<String>::new(),
        "a whitelist's name says nothing of throttle policies"
    );
}

#[test]
fn a_secret_concerns_the_gateways_of_its_namespace_that_read_it() {
    let mut a = gateway(sqlite(), "");
    a.spec.s2s.tls_secret = Some("contoso-tls".into());
    let mut b = a.clone();
    b.metadata.namespace = Some("other".into());
    let gateways = [a, b];
    let licence = gateways[0].spec.licence_secret.name.clone();
    let readers = |secret: &str| {
        let hit = gateways
            .iter()
            .filter(|g| reads_secret(g, secret, Some("xmpp")));
        hit.count()
    };
    for secret in [licence.as_str(), "contoso-tls", "graph-app"] {
        assert_eq!(
            readers(secret),
            1,
            "{secret} of {:?}",
            gateways[0].referenced_secrets()
        );
    }
    assert_eq!(readers("unrelated"), 0);
}
