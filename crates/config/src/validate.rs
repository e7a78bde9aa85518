//! Semantic checks that serde cannot express. Every check names its field.

use std::collections::HashSet;

use crate::{FieldError, GatewayConfig, StoreConfig, ThrottleLimits, is_valid_domain};

/// RFC 6120 §13.12: a server must accept stanzas of at least 10,000 bytes.
const MIN_STANZA_BYTES: usize = 10_000;
/// Nesting that real traffic needs (a forwarded message with XHTML-IM is
/// about ten levels), and the most the recursive tree walks are tested with.
const MIN_STANZA_DEPTH: usize = 8;
const MAX_STANZA_DEPTH: usize = 256;
const MIN_STANZA_ELEMENTS: usize = 64;

pub(crate) fn validate(c: &GatewayConfig) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| errors.push(FieldError::new(field, message));

    if !is_valid_domain(&c.xmpp.domain) {
        err(
            "xmpp.domain",
            format!("`{}` is not a valid domain name", c.xmpp.domain),
        );
    }

    s2s(c, &mut err);
    graph(c, &mut err);
    webhook(c, &mut err);
    shadow_accounts(c, &mut err);
    presence(c, &mut err);
    messages(c, &mut err);
    allow_lists(c, &mut err);
    throttling(c, &mut err);
    store(c, &mut err);
    listeners(c, &mut err);
    licence_and_telemetry(c, &mut err);
    crate::sip::validate(&c.teams, c.sip.as_ref(), c.graph.is_some(), &mut err);
    errors
}

/// The server-to-server listener and its limits.
fn s2s(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    let s2s = &c.s2s;
    if s2s.max_stanza_bytes < MIN_STANZA_BYTES {
        err(
            "s2s.max_stanza_bytes",
            format!("must be at least {MIN_STANZA_BYTES} (RFC 6120 §13.12)"),
        );
    }
    // The stream itself (header, features) and stanzas sit below level 4;
    // past a few hundred the tree walks after the parser are what overflows.
    if !(MIN_STANZA_DEPTH..=MAX_STANZA_DEPTH).contains(&s2s.max_stanza_depth) {
        err(
            "s2s.max_stanza_depth",
            format!("must be from {MIN_STANZA_DEPTH} to {MAX_STANZA_DEPTH}"),
        );
    }
    if s2s.max_stanza_elements < MIN_STANZA_ELEMENTS {
        err(
            "s2s.max_stanza_elements",
            format!("must be at least {MIN_STANZA_ELEMENTS}"),
        );
    }
    for (field, value) in [
        ("s2s.stanza_timeout_secs", s2s.stanza_timeout_secs),
        ("s2s.auth_timeout_secs", s2s.auth_timeout_secs),
        ("s2s.max_unauthenticated", s2s.max_unauthenticated as u64),
        (
            "s2s.max_unauthenticated_per_address",
            s2s.max_unauthenticated_per_address as u64,
        ),
    ] {
        if value == 0 {
            err(field, "must be greater than 0".into());
        }
    }
    if s2s.max_unauthenticated_per_address > s2s.max_unauthenticated {
        err(
            "s2s.max_unauthenticated_per_address",
            "must not exceed s2s.max_unauthenticated".into(),
        );
    }
    if s2s.idle_timeout_secs == 0 {
        err("s2s.idle_timeout_secs", "must be greater than 0".into());
    }
    if s2s.connect_timeout_secs == 0 {
        err("s2s.connect_timeout_secs", "must be greater than 0".into());
    }
    if s2s.keepalive_interval_secs == 0 || s2s.keepalive_interval_secs >= s2s.idle_timeout_secs {
        err(
            "s2s.keepalive_interval_secs",
            "must be greater than 0 and less than s2s.idle_timeout_secs".into(),
        );
    }
    match (&s2s.tls_cert_file, &s2s.tls_key_file) {
        (Some(_), None) => err(
            "s2s.tls_key_file",
            "required when s2s.tls_cert_file is set".into(),
        ),
        (None, Some(_)) => err(
            "s2s.tls_cert_file",
            "required when s2s.tls_key_file is set".into(),
        ),
        (None, None) if s2s.require_tls => err(
            "s2s.tls_cert_file",
            "required when s2s.require_tls is true (set both tls_cert_file and tls_key_file, or require_tls = false for local tests)".into(),
        ),
        _ => {}
    }
    let mut route_domains = HashSet::new();
    for (i, route) in s2s.static_routes.iter().enumerate() {
        let field = format!("s2s.static_routes[{i}]");
        if !is_valid_domain(&route.domain) {
            err(
                &format!("{field}.domain"),
                format!("`{}` is not a valid domain name", route.domain),
            );
        } else if !route_domains.insert(route.domain.to_ascii_lowercase()) {
            err(
                &format!("{field}.domain"),
                format!("`{}` has more than one route", route.domain),
            );
        }
        if route.host.trim().is_empty() {
            err(&format!("{field}.host"), "must not be empty".into());
        }
        if route.port == 0 {
            err(&format!("{field}.port"), "must not be 0".into());
        }
    }
}

/// Microsoft Graph: tenant, credentials, endpoints, limits; the shadow
/// accounts' own tenant, when they have one, alike.
fn graph(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    if let Some(t) = &c.shadow_accounts.tenant {
        tenant("shadow_accounts.tenant", t, err);
        match &c.graph {
            None => err(
                "shadow_accounts.tenant",
                "needs graph: the Teams users' tenant".into(),
            ),
            Some(g) if g.cloud != t.cloud => err(
                "shadow_accounts.tenant.cloud",
                format!(
                    "must be graph's cloud ({:?}): Teams federates only within one cloud",
                    g.cloud
                ),
            ),
            Some(g) if g.tenant_id.eq_ignore_ascii_case(&t.tenant_id) => err(
                "shadow_accounts.tenant.tenant_id",
                "is graph's own tenant: leave shadow_accounts.tenant out for one tenant".into(),
            ),
            Some(_) => {}
        }
    }
    if let Some(g) = &c.graph {
        tenant("graph", g, err);
        if c.shadow_accounts.upn_domain.is_none() {
            err(
                "shadow_accounts.upn_domain",
                "required when graph is configured (shadow accounts are created under it)".into(),
            );
        }
    }
}

/// The change-notification receiver.
fn webhook(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    for (name, l) in [("webhook", &c.webhook.limits), ("admin", &c.admin.limits)] {
        for (field, value) in [
            ("header_read_timeout_secs", l.header_read_timeout_secs),
            ("request_timeout_secs", l.request_timeout_secs),
            ("max_connections", l.max_connections),
            ("max_connections_per_source", l.max_connections_per_source),
        ] {
            if value == 0 {
                err(
                    &format!("{name}.limits.{field}"),
                    "must be at least 1".into(),
                );
            }
        }
        if l.max_connections_per_source > l.max_connections {
            err(
                &format!("{name}.limits.max_connections_per_source"),
                format!("must not exceed {name}.limits.max_connections"),
            );
        }
    }
    if let Some(url) = &c.webhook.public_url {
        if let Err(m) = check_url(url) {
            err("webhook.public_url", m);
        }
        if c.webhook.client_state.is_none() {
            err(
                "webhook.client_state",
                "required when webhook.public_url is set".into(),
            );
        }
    }
}

/// Shadow accounts: their domain, licence, usage location, credential key.
fn shadow_accounts(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    if let Some(d) = &c.shadow_accounts.upn_domain
        && !is_valid_domain(d)
    {
        err(
            "shadow_accounts.upn_domain",
            format!("`{d}` is not a valid domain name"),
        );
    }
    if let Some(sku) = &c.shadow_accounts.licence_sku
        && !is_guid(sku)
    {
        err(
            "shadow_accounts.licence_sku",
            "must be a SKU id (a GUID)".into(),
        );
    }

    // Teams serves only licensed users, and Microsoft 365 licenses nobody
    // without a usage location: an unlicensed shadow account can never chat.
    if c.graph.is_some() && c.shadow_accounts.licence_sku.is_none() {
        err(
            "shadow_accounts.licence_sku",
            "required when graph is configured: the SKU id of a licence that includes Teams (Teams works only for licensed users)".into(),
        );
    }
    if c.graph.is_some() && c.shadow_accounts.usage_location.is_none() {
        err(
            "shadow_accounts.usage_location",
            "required when graph is configured: Microsoft 365 assigns no licence to a user without a usage location (e.g. GB)".into(),
        );
    }
    if let Some(au) = &c.shadow_accounts.administrative_unit
        && !is_guid(au)
    {
        err(
            "shadow_accounts.administrative_unit",
            "must be the administrative unit's object id (a GUID)".into(),
        );
    }
    if c.graph.is_some() && c.shadow_accounts.credential_key.is_none() {
        err(
            "shadow_accounts.credential_key",
            "required when graph is configured (it encrypts the shadow accounts' passwords)".into(),
        );
    }
    if let Some(cc) = &c.shadow_accounts.usage_location
        && !(cc.len() == 2 && cc.chars().all(|c| c.is_ascii_uppercase()))
    {
        err(
            "shadow_accounts.usage_location",
            format!("`{cc}` is not a two-letter country code (ISO 3166-1 alpha-2, e.g. GB)"),
        );
    }
}

/// Presence polling and sessions.
fn presence(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    let p = &c.presence;
    if p.poll_interval_ms < 200 || p.poll_interval_ms > p.max_poll_interval_ms {
        err(
            "presence.poll_interval_ms",
            "must be at least 200 and at most presence.max_poll_interval_ms".into(),
        );
    }
    if !(5..=240).contains(&p.session_minutes) {
        err(
            "presence.session_minutes",
            "must be between 5 and 240 (Graph's presence session limits)".into(),
        );
    }
    if !(1..300).contains(&p.keep_alive_secs) {
        err(
            "presence.keep_alive_secs",
            "must be between 1 and 299: Graph fades an Available presence session after 300 s without one".into(),
        );
    }
    if p.resource.trim().is_empty() || p.resource.len() > 64 {
        err("presence.resource", "must be 1 to 64 characters".into());
    }
}

/// Messages and the bridge lease.
fn messages(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    let m = &c.messages;
    for (field, value) in [
        ("messages.expiry_secs", m.expiry_secs),
        (
            "messages.reconcile_interval_secs",
            m.reconcile_interval_secs,
        ),
        ("messages.poll_interval_secs", m.poll_interval_secs),
    ] {
        if value == 0 {
            err(field, "must be greater than 0".into());
        }
    }

    // At least 6: the store counts whole seconds, and a holder that cannot
    // renew stops two thirds into the lease, a second or more before it lapses.
    if !(6..=600).contains(&c.leader.lease_secs) {
        err(
            "leader.lease_secs",
            "must be between 6 and 600 seconds".into(),
        );
    }
}

/// The internal allow list.
fn allow_lists(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    for (i, upn) in c.allow.internal_users.iter().enumerate() {
        if !is_upn(upn) {
            err(
                &format!("allow.internal_users[{i}]"),
                format!("`{upn}` is not a user principal name (name@domain)"),
            );
        }
    }
    for (i, group) in c.allow.internal_groups.iter().enumerate() {
        if !is_guid(group) {
            err(
                &format!("allow.internal_groups[{i}]"),
                format!("`{group}` is not an Entra group object id (a GUID)"),
            );
        }
    }
}

/// Per-user limits.
fn throttling(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    check_limits("throttle.default", &c.throttle.default, err);
    for (user, limits) in &c.throttle.overrides {
        check_limits(&format!("throttle.overrides.\"{user}\""), limits, err);
    }
}

/// The store.
fn store(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    match &c.store {
        StoreConfig::Sqlite { path } if path.as_os_str().is_empty() => {
            err("store.path", "must not be empty".into());
        }
        StoreConfig::Postgres(pg) => {
            for (field, value) in [
                ("store.host", &pg.host),
                ("store.database", &pg.database),
                ("store.user", &pg.user),
            ] {
                if value.trim().is_empty() {
                    err(field, "must not be empty".into());
                }
            }
            if pg.pool_size == 0 {
                err("store.pool_size", "must be at least 1".into());
            }
        }
        _ => {}
    }
}

/// Listeners must not collide.
fn listeners(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    let listeners = [
        ("s2s.listen", c.s2s.listen),
        ("webhook.listen", c.webhook.listen),
        ("admin.listen", c.admin.listen),
    ];
    for (i, (a_name, a)) in listeners.iter().enumerate() {
        for (b_name, b) in &listeners[i + 1..] {
            if a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            {
                err(b_name, format!("uses the same port as {a_name} ({a})"));
            }
        }
    }
}

/// Licence checks and telemetry.
fn licence_and_telemetry(c: &GatewayConfig, err: &mut impl FnMut(&str, String)) {
    if let Some(l) = &c.licence {
        if l.public_key.trim().is_empty() {
            err("licence.public_key", "must not be empty".into());
        }
        if l.check_interval_secs == 0 {
            err(
                "licence.check_interval_secs",
                "must be greater than 0".into(),
            );
        }
    }

    if c.telemetry.log_level.trim().is_empty() {
        err("telemetry.log_level", "must not be empty".into());
    }
}

fn check_limits(field: &str, l: &ThrottleLimits, err: &mut impl FnMut(&str, String)) {
    for (name, value) in [
        ("messages_per_minute", u64::from(l.messages_per_minute)),
        ("bytes_per_minute", l.bytes_per_minute),
        (
            "presence_updates_per_minute",
            u64::from(l.presence_updates_per_minute),
        ),
        ("burst", u64::from(l.burst)),
    ] {
        if value == 0 {
            err(&format!("{field}.{name}"), "must be greater than 0".into());
        }
    }
}

/// Accepts `https://…`, and `http://` only towards loopback (the Graph emulator, local tests).
fn check_url(url: &str) -> Result<(), String> {
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        let loopback = ["localhost", "127.0.0.1", "[::1]"].iter().any(|host| {
            rest.strip_prefix(host)
                .is_some_and(|tail| tail.is_empty() || tail.starts_with([':', '/']))
        });
        if !loopback {
            return Err(format!(
                "`{url}` must use https:// (plain http is allowed only towards localhost or 127.0.0.1)"
            ));
        }
        rest
    } else {
        return Err(format!("`{url}` is not an http(s) URL"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_upn(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !local.contains(char::is_whitespace) && is_valid_domain(domain)
        }
        None => false,
    }
}

/// One tenant's sign-in, endpoints and limits, its fields under `prefix`.
fn tenant(prefix: &str, g: &crate::GraphConfig, err: &mut impl FnMut(&str, String)) {
    if !is_guid(&g.tenant_id) && !is_valid_domain(&g.tenant_id) {
        err(
            &format!("{prefix}.tenant_id"),
            "must be the tenant's id (a GUID) or its primary domain".into(),
        );
    }
    if !is_guid(&g.client_id) {
        err(
            &format!("{prefix}.client_id"),
            "must be the app registration's application (client) id, a GUID".into(),
        );
    }
    match (&g.client_secret, &g.client_certificate) {
        (None, None) => err(
            &format!("{prefix}.client_secret"),
            format!("one of {prefix}.client_secret and {prefix}.client_certificate is required"),
        ),
        (Some(_), Some(_)) => err(
            &format!("{prefix}.client_certificate"),
            format!("set only one of {prefix}.client_secret and {prefix}.client_certificate"),
        ),
        _ => {}
    }
    for (field, url) in [
        (format!("{prefix}.authority_url"), &g.authority_url),
        (format!("{prefix}.graph_url"), &g.graph_url),
    ] {
        if let Some(Err(m)) = url.as_deref().map(check_url) {
            err(&field, m);
        }
    }
    let l = &g.limits;
    for (field, rate) in [
        (
            format!("{prefix}.limits.chat_message_send_per_second"),
            l.chat_message_send_per_second,
        ),
        (
            format!("{prefix}.limits.chat_message_read_per_second"),
            l.chat_message_read_per_second,
        ),
        (
            format!("{prefix}.limits.presence_per_second"),
            l.presence_per_second,
        ),
        (
            format!("{prefix}.limits.all_messages_per_second"),
            l.all_messages_per_second,
        ),
        (
            format!("{prefix}.limits.teams_other_per_second"),
            l.teams_other_per_second,
        ),
        (
            format!("{prefix}.limits.directory_per_second"),
            l.directory_per_second,
        ),
    ] {
        if rate == 0 {
            err(&field, "must be at least 1: 0 would stop every call".into());
        }
    }
    if l.per_chat_interval_ms < 1_000 {
        err(
            &format!("{prefix}.limits.per_chat_interval_ms"),
            "must be at least 1000: Microsoft throttles more than one message per second in a chat"
                .into(),
        );
    }
}
