use super::*;

const MINIMAL: &str = r#"
[xmpp]
domain = "teams.example.com"

[s2s]
require_tls = false
"#;

const FULL: &str = r#"
[xmpp]
domain = "teams.example.com"

[s2s]
listen = "127.0.0.1:5270"
tls_cert_file = "/etc/xmppfed/tls.crt"
tls_key_file = "/etc/xmppfed/tls.key"
dialback_secret = { file = "/etc/xmppfed/dialback" }
static_routes = [{ domain = "xmpp.partner.example", host = "10.1.2.3" }]

[graph]
tenant_id = "8f0d2a8e-1b2c-4d5e-9f00-112233445566"
client_id = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
client_secret = { env = "XMPPFED_GRAPH_SECRET" }

[webhook]
public_url = "https://gw.example.com/notifications"
client_state = { env = "XMPPFED_CLIENT_STATE" }

[shadow_accounts]
upn_domain = "xmpp.example.com"
licence_sku = "3b555118-da6a-4418-894f-7df1e2096870"
credential_key = { file = "/etc/xmppfed/credential-key" }
usage_location = "GB"

[presence]
poll_interval_ms = 2000
out_of_office = "unavailable"

[allow]
remote_domains = ["partner.example", "*.allies.example"]
internal_users = ["alice@example.com"]
internal_groups = ["11111111-2222-3333-4444-555555555555"]

[throttle.default]
messages_per_minute = 30

[throttle.overrides."alice@example.com"]
messages_per_minute = 600
burst = 100

[store]
engine = "sqlserver"
connection_string = { file = "/etc/xmppfed/db" }
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = GatewayConfig::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.xmpp.domain, "teams.example.com");
    assert_eq!(c.s2s.listen.port(), 5269);
    assert_eq!(c.s2s.max_stanza_bytes, 256 * 1024);
    assert_eq!(c.admin.listen.port(), 9090);
    assert_eq!(
        c.store,
        StoreConfig::Sqlite {
            path: "xmppfed.db".into()
        }
    );
    assert!(c.graph.is_none());
    assert_eq!(c.throttle.default, ThrottleLimits::default());
}

#[test]
fn full_config_parses_and_round_trips() {
    let c = GatewayConfig::from_toml_str(FULL).unwrap();
    assert_eq!(c.s2s.static_routes[0].port, 5269);
    assert_eq!(c.throttle.default.messages_per_minute, 30);
    // A partly written override keeps the defaults for the rest.
    let alice = c.throttle_for("alice@example.com");
    assert_eq!((alice.messages_per_minute, alice.burst), (600, 100));
    assert_eq!(
        alice.bytes_per_minute,
        ThrottleLimits::default().bytes_per_minute
    );
    assert_eq!(c.throttle_for("bob@example.com").messages_per_minute, 30);
    assert!(c.allow.remote_domains[1].matches("x.allies.example"));

    let rendered = c.to_toml_string().unwrap();
    assert_eq!(GatewayConfig::from_toml_str(&rendered).unwrap(), c);
}

fn fields_of(text: &str) -> Vec<String> {
    let e = GatewayConfig::from_toml_str(text).unwrap_err();
    e.field_errors().iter().map(|f| f.field.clone()).collect()
}

#[test]
fn validation_names_every_bad_field() {
    let text = r#"
[xmpp]
domain = "not a domain"
[s2s]
max_stanza_bytes = 100
max_stanza_depth = 100000
max_stanza_elements = 1
stanza_timeout_secs = 0
max_unauthenticated = 4
max_unauthenticated_per_address = 8
keepalive_interval_secs = 900
static_routes = [{ domain = "x.example", host = "", port = 0 }]
[throttle.default]
burst = 0
[allow]
internal_users = ["bob"]
internal_groups = ["not-a-guid"]
"#;
    let fields = fields_of(text);
    for expected in [
        "xmpp.domain",
        "s2s.max_stanza_bytes",
        "s2s.max_stanza_depth",
        "s2s.max_stanza_elements",
        "s2s.stanza_timeout_secs",
        "s2s.max_unauthenticated_per_address",
        "s2s.keepalive_interval_secs",
        "s2s.tls_cert_file",
        "s2s.static_routes[0].host",
        "s2s.static_routes[0].port",
        "throttle.default.burst",
        "allow.internal_users[0]",
        "allow.internal_groups[0]",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} missing from {fields:?}"
        );
    }
    let message = GatewayConfig::from_toml_str(text).unwrap_err().to_string();
    assert!(
        message.contains("xmpp.domain: `not a domain` is not a valid domain name"),
        "{message}"
    );
}

#[test]
fn graph_needs_exactly_one_credential_and_a_upn_domain() {
    let base = r#"
[xmpp]
domain = "teams.example.com"
[s2s]
require_tls = false
[graph]
tenant_id = "8f0d2a8e-1b2c-4d5e-9f00-112233445566"
client_id = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
"#;
    let fields = fields_of(base);
    assert!(
        fields.contains(&"graph.client_secret".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"shadow_accounts.upn_domain".to_owned()),
        "{fields:?}"
    );

    let both = format!(
        "{base}client_secret = {{ env = \"S\" }}\nclient_certificate = {{ cert_file = \"c\", key_file = \"k\" }}\n"
    );
    assert!(fields_of(&both).contains(&"graph.client_certificate".to_owned()));

    let limits = format!(
        "{base}client_secret = {{ env = \"S\" }}\n[graph.limits]\nchat_message_send_per_second = 0\nper_chat_interval_ms = 200\n"
    );
    let fields = fields_of(&limits);
    assert!(
        fields.contains(&"graph.limits.chat_message_send_per_second".to_owned())
            && fields.contains(&"graph.limits.per_chat_interval_ms".to_owned()),
        "{fields:?}"
    );
}

#[test]
fn plain_http_is_only_for_loopback() {
    let with_url = |url: &str| {
        format!(
            "[xmpp]\ndomain = \"t.example\"\n[s2s]\nrequire_tls = false\n[webhook]\npublic_url = \"{url}\"\nclient_state = {{ env = \"X\" }}\n"
        )
    };
    assert!(GatewayConfig::from_toml_str(&with_url("http://127.0.0.1:8443/n")).is_ok());
    assert!(GatewayConfig::from_toml_str(&with_url("http://[::1]:8443/n")).is_ok());
    assert!(GatewayConfig::from_toml_str(&with_url("https://gw.example.com/n")).is_ok());
    assert_eq!(
        fields_of(&with_url("http://gw.example.com/n")),
        ["webhook.public_url"]
    );
    assert_eq!(
        fields_of(&with_url("http://localhost.evil.example/n")),
        ["webhook.public_url"]
    );
    assert_eq!(fields_of(&with_url("ftp://x")), ["webhook.public_url"]);
}

#[test]
fn colliding_listeners_are_rejected() {
    let text =
        "[xmpp]\ndomain = \"t.example\"\n[s2s]\nrequire_tls = false\nlisten = \"127.0.0.1:9090\"\n";
    assert_eq!(fields_of(text), ["admin.listen"]);
}

#[test]
fn unknown_fields_and_wrong_types_are_parse_errors_that_point_at_the_line() {
    let e = GatewayConfig::from_toml_str("[xmpp]\ndomain = \"t.example\"\nport = 5\n").unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("unknown field `port`") && m.contains("line 3"),
        "{m}"
    );

    let e = GatewayConfig::from_toml_str(
        "[xmpp]\ndomain = \"t.example\"\n[s2s]\nmax_stanza_bytes = \"big\"\n",
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("line 4") && m.contains("max_stanza_bytes"),
        "{m}"
    );

    let e = GatewayConfig::from_toml_str(
        "[xmpp]\ndomain = \"t.example\"\n[store]\nengine = \"mysql\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("mysql"), "{e}");

    let e = GatewayConfig::from_toml_str(
        "[xmpp]\ndomain = \"t.example\"\n[store]\nengine = \"postgres\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing field `host`"), "{e}");

    let e = GatewayConfig::from_toml_str(
        "[allow]\nremote_domains = [\"*.\"]\n[xmpp]\ndomain = \"t.example\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("`*.` is not a domain name"), "{e}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "[xmpp]\ndomain = \"bad domain\"\n").unwrap();
    let m = GatewayConfig::load(&path).unwrap_err().to_string();
    assert!(m.starts_with(&format!("in {}", path.display())), "{m}");

    let missing = dir.path().join("missing.toml");
    let m = GatewayConfig::load(&missing).unwrap_err().to_string();
    assert!(m.contains("cannot read configuration file"), "{m}");
}

#[test]
fn secrets_resolve_from_file_and_env_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "hunter2\n").unwrap();
    let s = SecretRef::File(path.clone()).resolve().unwrap();
    assert_eq!(s.expose(), "hunter2");
    assert!(!format!("{s:?}").contains("hunter2"));

    // PATH is set in every test environment; read-only use keeps this test parallel-safe.
    let path_var = SecretRef::Env("PATH".into()).resolve().unwrap();
    assert!(!path_var.expose().is_empty());

    std::fs::write(&path, "\n").unwrap();
    let e = SecretRef::File(path).resolve().unwrap_err().to_string();
    assert!(e.contains("it is empty"), "{e}");
    let e = SecretRef::Env("XMPPFED_SURELY_UNSET_VARIABLE".into())
        .resolve()
        .unwrap_err();
    assert!(
        e.to_string().contains("XMPPFED_SURELY_UNSET_VARIABLE"),
        "{e}"
    );
}

#[test]
fn rendered_config_shows_secret_references_not_values() {
    let c = GatewayConfig::from_toml_str(FULL).unwrap();
    let rendered = c.to_toml_string().unwrap();
    assert!(rendered.contains("XMPPFED_GRAPH_SECRET"), "{rendered}");
}

#[test]
fn check_secrets_names_each_unreadable_secret() {
    let c = GatewayConfig::from_toml_str(FULL).unwrap();
    let fields: Vec<&str> = c.secret_refs().iter().map(|(f, _)| *f).collect();
    assert_eq!(
        fields,
        [
            "s2s.dialback_secret",
            "graph.client_secret",
            "webhook.client_state",
            "shadow_accounts.credential_key",
            "store.connection_string"
        ]
    );
    let e = c.check_secrets().unwrap_err();
    let bad: Vec<&str> = e.field_errors().iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        bad, fields,
        "none of FULL's secrets exist on a test machine"
    );
    assert!(
        GatewayConfig::from_toml_str(MINIMAL)
            .unwrap()
            .check_secrets()
            .is_ok()
    );
}

#[test]
fn graph_needs_a_credential_key_and_presence_settings_are_checked() {
    let mut c = GatewayConfig::from_toml_str(FULL).unwrap();
    c.shadow_accounts.credential_key = None;
    c.shadow_accounts.usage_location = Some("gb".into());
    c.presence.session_minutes = 300;
    c.presence.poll_interval_ms = 50;
    let e = c.validate().unwrap_err();
    let fields: Vec<&str> = e.field_errors().iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "shadow_accounts.credential_key",
            "shadow_accounts.usage_location",
            "presence.poll_interval_ms",
            "presence.session_minutes"
        ]
    );
    // Without a licence or a usage location no shadow account can chat.
    let mut c = GatewayConfig::from_toml_str(FULL).unwrap();
    c.shadow_accounts.licence_sku = None;
    c.shadow_accounts.usage_location = None;
    let e = c.validate().unwrap_err();
    let fields: Vec<&str> = e.field_errors().iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "shadow_accounts.licence_sku",
            "shadow_accounts.usage_location"
        ]
    );
    assert!(
        e.to_string()
            .contains("Teams works only for licensed users"),
        "{e}"
    );
    let c = GatewayConfig::from_toml_str(FULL).unwrap();
    assert_eq!(c.presence.out_of_office, OutOfOfficeAs::Unavailable);
    assert_eq!(c.presence.resource, "teams");
    assert_eq!(c.xmpp.local_part, LocalPartSource::Upn);
}

#[test]
fn the_bridge_lease_has_a_default_and_a_sane_range() {
    let c = GatewayConfig::from_toml_str(FULL).unwrap();
    assert_eq!(
        (c.leader.lease_secs, c.leader.holder.as_deref()),
        (15, None)
    );
    for (secs, ok) in [(5, false), (6, true), (600, true), (601, false)] {
        let mut c = c.clone();
        c.leader.lease_secs = secs;
        match c.validate() {
            Ok(()) => assert!(ok, "{secs} accepted"),
            Err(e) => {
                assert!(!ok, "{secs} refused: {e}");
                let fields: Vec<&str> = e.field_errors().iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, ["leader.lease_secs"]);
            }
        }
    }
    let c = GatewayConfig::from_toml_str(&format!(
        "{FULL}\n[leader]\nlease_secs = 30\nholder = \"gw-0\"\n"
    ))
    .unwrap();
    assert_eq!(
        (c.leader.lease_secs, c.leader.holder.as_deref()),
        (30, Some("gw-0"))
    );
}

/// A broken file is an error, never a crash: nesting far past anything a
/// configuration needs (arrays, inline tables, dotted keys) is refused by the
/// toml parser's own recursion limit (about 80 levels), and a file of garbage
/// names where it went wrong.
#[test]
fn hostile_documents_are_errors_not_crashes() {
    let depth = 100_000;
    let documents = [
        format!("x = {}{}", "[".repeat(depth), "]".repeat(depth)),
        format!("x = {}{}", "{ a = ".repeat(depth), "}".repeat(depth)),
        format!("{} = 1", vec!["a"; depth].join(".")),
        format!("[{}]", vec!["t"; depth].join(".")),
        "\u{0}\u{ffff}garbage = = [".to_owned(),
    ];
    for text in documents {
        // On a thread with Rust's default 2 MiB stack, the smallest any of
        // our binaries parses configuration on (256 KiB is too little for a
        // debug build at the limit): a recursion without a bound overflows it.
        let result = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                GatewayConfig::from_toml_str(&text)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap()
            .join()
            .expect("the parser returns instead of overflowing its stack");
        let message = result.expect_err("not a valid configuration");
        eprintln!("{message}");
        assert!(
            message.contains("TOML parse error") || message.contains("recursion limit"),
            "{message}"
        );
    }
}

#[test]
fn each_cloud_has_its_own_hosts_and_an_override_wins() {
    let graph = |extra: &str| {
        let marker = "client_secret = { env = \"XMPPFED_GRAPH_SECRET\" }\n";
        let text = FULL.replace(marker, &format!("{marker}{extra}"));
        GatewayConfig::from_toml_str(&text).map(|c| c.graph.unwrap())
    };
    let global = graph("").unwrap();
    assert_eq!(global.cloud, Cloud::Global);
    assert_eq!(global.authority(), "https://login.microsoftonline.com");
    assert_eq!(global.graph(), "https://graph.microsoft.com/v1.0");
    assert!(!global.overridden());
    let dod = graph("cloud = \"us-gov-dod\"\n").unwrap();
    assert_eq!(dod.authority(), "https://login.microsoftonline.us");
    assert_eq!(dod.graph(), "https://dod-graph.microsoft.us/v1.0");
    assert_eq!(dod.cloud.graph_resource(), "https://dod-graph.microsoft.us");
    let china = graph("cloud = \"china\"\n").unwrap();
    assert_eq!(
        china.graph(),
        "https://microsoftgraph.chinacloudapi.cn/v1.0"
    );
    let proxied =
        graph("cloud = \"us-gov\"\ngraph_url = \"https://graph-proxy.example/v1.0\"\n").unwrap();
    assert!(proxied.overridden());
    assert_eq!(proxied.graph(), "https://graph-proxy.example/v1.0");
    assert_eq!(proxied.authority(), "https://login.microsoftonline.us");
    assert!(
        graph("cloud = \"mars\"\n").is_err(),
        "an unknown cloud is refused"
    );
    assert!(graph("graph_url = \"http://graph-proxy.example/v1.0\"\n").is_err());
}

#[test]
fn a_shadow_tenant_is_checked_like_graph_and_must_be_another_tenant() {
    let with = |tenant: &str| format!("{FULL}\n[shadow_accounts.tenant]\n{tenant}");
    let good = with(
        "tenant_id = \"9e0d2a8e-1b2c-4d5e-9f00-112233445577\"\n\
         client_id = \"1a1b2c3d-4e5f-6789-abcd-ef0123456789\"\n\
         client_secret = { env = \"XMPPFED_SHADOW_SECRET\" }\n",
    );
    let c = GatewayConfig::from_toml_str(&good).unwrap();
    let tenant = c.shadow_accounts.tenant.as_ref().unwrap();
    assert_eq!(tenant.tenant_id, "9e0d2a8e-1b2c-4d5e-9f00-112233445577");
    assert!(
        c.secret_refs()
            .iter()
            .any(|(f, _)| *f == "shadow_accounts.tenant.client_secret")
    );

    // Each of the shadow tenant's fields is named under its own path.
    let fields = fields_of(&with(
        "tenant_id = \"not a tenant\"\nclient_id = \"nor a client\"\n[shadow_accounts.tenant.limits]\nper_chat_interval_ms = 10\n",
    ));
    for field in [
        "shadow_accounts.tenant.tenant_id",
        "shadow_accounts.tenant.client_id",
        "shadow_accounts.tenant.client_secret",
        "shadow_accounts.tenant.limits.per_chat_interval_ms",
    ] {
        assert!(fields.contains(&field.to_owned()), "{field}: {fields:?}");
    }
    assert!(
        !fields.iter().any(|f| f.starts_with("graph.")),
        "{fields:?}"
    );

    // The same tenant twice is one tenant; another cloud cannot federate.
    let same = with(
        "tenant_id = \"8f0d2a8e-1b2c-4d5e-9f00-112233445566\"\n\
         client_id = \"1a1b2c3d-4e5f-6789-abcd-ef0123456789\"\n\
         client_secret = { env = \"S\" }\ncloud = \"us-gov\"\n",
    );
    let fields = fields_of(&same);
    assert!(
        fields.contains(&"shadow_accounts.tenant.cloud".to_owned()),
        "{fields:?}"
    );
    let same = same.replace("cloud = \"us-gov\"\n", "");
    assert_eq!(fields_of(&same), ["shadow_accounts.tenant.tenant_id"]);
}

#[test]
fn a_postgres_store_takes_its_password_from_a_secret_and_verifies_tls_by_default() {
    let c = GatewayConfig::from_toml_str(
        "[xmpp]\ndomain = \"t.example\"\n[s2s]\nrequire_tls = false\n[store]\nengine = \"postgres\"\n\
         host = \"db.example\"\ndatabase = \"xmppfed\"\nuser = \"gateway\"\npassword = { env = \"PGPASS\" }\n",
    )
    .unwrap();
    let StoreConfig::Postgres(pg) = &c.store else {
        panic!("{:?}", c.store)
    };
    assert_eq!((pg.port, pg.pool_size), (5432, 8));
    assert_eq!(pg.sslmode, crate::PostgresSslMode::VerifyFull);
    assert!(
        c.secret_refs()
            .iter()
            .any(|(field, r)| *field == "store.password" && **r == SecretRef::Env("PGPASS".into()))
    );
    let e = GatewayConfig::from_toml_str(
        "[xmpp]\ndomain = \"t.example\"\n[store]\nengine = \"postgres\"\nhost = \"\"\ndatabase = \"d\"\n\
         user = \"u\"\npassword = { env = \"P\" }\npool_size = 0\nsslmode = \"disable\"\n",
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("store.host") && m.contains("store.pool_size"),
        "{m}"
    );
}

#[test]
fn sip_federation_needs_its_section_and_valid_domains() {
    let mode = format!("{MINIMAL}\n[teams]\nmode = \"sip-federation\"\n");
    assert_eq!(fields_of(&mode), vec!["sip".to_owned()]);
    let section = |edge: &str, partner: &str, routes: &str| {
        format!(
            "{mode}\n[sip]\nedge_fqdn = \"{edge}\"\npartner_domain = \"{partner}\"\n\
             cert_file = \"/c\"\nkey_file = \"/k\"\nca_file = \"/ca\"\nroutes = [{routes}]\n"
        )
    };
    let good = section(
        "sip.gw.example",
        "contoso.com",
        "{ domain = \"contoso.com\", host = \"sipfed.online.lync.com\", port = 5061 }",
    );
    let config = GatewayConfig::from_toml_str(&good).unwrap();
    assert_eq!(config.teams.mode, TeamsMode::SipFederation);
    assert_eq!(config.sip.unwrap().listen.port(), 5061);
    // No route: DNS SRV finds the partner's edge, a fallback may name one.
    let srv = format!(
        "{}fallback = {{ host = \"sipfed.online.lync.com\" }}\n",
        section("sip.gw.example", "contoso.com", "")
    );
    let sip = GatewayConfig::from_toml_str(&srv).unwrap().sip.unwrap();
    assert!(sip.routes.is_empty());
    assert_eq!(
        sip.fallback.unwrap().port,
        5061,
        "SIP routes default to 5061"
    );
    assert_eq!(
        fields_of(&section(
            "not a domain",
            "contoso.com",
            "{ domain = \"no way\", host = \"h\" }"
        )),
        vec![
            "sip.edge_fqdn".to_owned(),
            "sip.routes[0].domain".to_owned()
        ]
    );
    // One route at a time: [graph] beside sip-federation is named.
    let both = format!(
        "{good}\n[graph]\ntenant_id = \"8f0d2a8e-1b2c-4d5e-9f00-112233445566\"\nclient_id = \"0a1b2c3d-4e5f-6789-abcd-ef0123456789\"\nclient_secret = {{ env = \"S\" }}\n"
    );
    assert!(
        fields_of(&both).contains(&"graph".to_owned()),
        "{:?}",
        fields_of(&both)
    );
    // Graph is the default route, and needs no [sip].
    assert_eq!(
        GatewayConfig::from_toml_str(MINIMAL).unwrap().teams.mode,
        TeamsMode::Graph
    );
}
