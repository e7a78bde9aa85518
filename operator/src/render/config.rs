//! Renders the gateway's configuration document from a FederationGateway and
//! the policies that apply to it, and checks it as the gateway itself will.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use sha2::{Digest, Sha256};
use xmppfed_config as cfg;

use super::{keys, paths, ports};
use crate::crd::{
    ChatNotifications, DatabaseEngine, FederationGateway, FederationGatewaySpec, LocalPart,
    OutOfOffice, PostgresSslMode, Subscriptions, TeamsMode, TenantCloud, TenantSpec,
    ThrottleLimitsSpec,
};
use crate::policy::AppliedPolicies;

/// A number the spec sets (the CRD's schema keeps it in range), else the
/// gateway's default.
fn set_or<T: TryFrom<i64>>(set: Option<i64>, default: T) -> T {
    set.and_then(|v| T::try_from(v).ok()).unwrap_or(default)
}

/// The rendered document is not one the gateway would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {message}")]
    Spec { field: String, message: String },
    #[error("the rendered gateway configuration is invalid: {0}")]
    Rendered(String),
}

fn file(dir: &str, name: &str) -> PathBuf {
    Path::new(dir).join(name)
}

fn limits(l: &ThrottleLimitsSpec) -> cfg::ThrottleLimits {
    cfg::ThrottleLimits {
        messages_per_minute: l.messages_per_minute,
        bytes_per_minute: l.bytes_per_minute,
        presence_updates_per_minute: l.presence_updates_per_minute,
        burst: l.burst,
    }
}

fn spec_error(field: &str, message: &str) -> ConfigError {
    ConfigError::Spec {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// The gateway configuration for `gateway`. Secrets are referenced as the files
/// the StatefulSet mounts; their values never pass through the operator.
pub fn render_config(
    gateway: &FederationGateway,
    policies: &AppliedPolicies<'_>,
    licence_public_key: Option<&str>,
) -> Result<cfg::GatewayConfig, ConfigError> {
    let spec = &gateway.spec;
    required(spec)?;
    let sip_mode = spec.teams.mode == TeamsMode::SipFederation;
    let (messages, leader) = (cfg::MessagesConfig::default(), cfg::LeaderConfig::default());
    let bridge = &spec.bridge;
    let config = cfg::GatewayConfig {
        xmpp: cfg::XmppConfig {
            domain: spec.domain.clone(),
            local_part: match bridge.local_part {
                LocalPart::Upn => cfg::LocalPartSource::Upn,
                LocalPart::Mail => cfg::LocalPartSource::Mail,
                LocalPart::WholeUpn => cfg::LocalPartSource::WholeUpn,
            },
        },
        s2s: s2s(spec),
        graph: match sip_mode {
            true => None,
            false => Some(graph(spec)?),
        },
        webhook: webhook(spec),
        shadow_accounts: match sip_mode {
            true => cfg::ShadowAccountConfig::default(),
            false => shadow_accounts(spec)?,
        },
        presence: presence(&spec.bridge),
        messages: cfg::MessagesConfig {
            expiry_secs: set_or(bridge.message_expiry_seconds, messages.expiry_secs),
            ..messages
        },
        leader: cfg::LeaderConfig {
            lease_secs: set_or(bridge.leader_lease_seconds, leader.lease_secs),
            ..leader
        },
        allow: allow(policies)?,
        throttle: throttle(policies),
        store: store(spec)?,
        admin: cfg::AdminConfig {
            listen: any(ports::ADMIN),
            limits: cfg::ListenerLimits::default(),
        },
        licence: licence_public_key.map(|key| cfg::LicenceConfig {
            file: file(paths::LICENCE_DIR, &spec.licence_secret.key),
            public_key: key.to_owned(),
            node_name_env: "POD_NAME".to_owned(),
            check_interval_secs: 3600,
        }),
        telemetry: cfg::TelemetryConfig {
            log_level: spec
                .telemetry
                .log_level
                .clone()
                .unwrap_or_else(|| "info".to_owned()),
        },
        teams: cfg::TeamsConfig {
            mode: match sip_mode {
                true => cfg::TeamsMode::SipFederation,
                false => cfg::TeamsMode::Graph,
            },
        },
        sip: sip(spec)?,
    };

    // The gateway validates its file at startup; check it here so a bad spec
    // shows as Degraded on the resource rather than as a crash-looping pod.
    config.validate().map_err(|e| {
        ConfigError::Rendered(
            e.field_errors()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    Ok(config)
}

/// Graph's change notifications, at the URL the spec names.
fn webhook(spec: &FederationGatewaySpec) -> cfg::WebhookConfig {
    cfg::WebhookConfig {
        listen: any(ports::WEBHOOK),
        public_url: spec.webhook_url.clone(),
        client_state: spec
            .webhook_url
            .as_ref()
            .map(|_| cfg::SecretRef::File(file(paths::KEYS_DIR, keys::CLIENT_STATE))),
        chat_notifications: match spec.bridge.chat_notifications {
            ChatNotifications::PerAccount => cfg::ChatNotifications::PerAccount,
            ChatNotifications::Tenant => cfg::ChatNotifications::Tenant,
        },
        // Graph reaches the pod through an ingress or a load balancer:
        // one source address may carry every connection.
        limits: cfg::ListenerLimits {
            max_connections_per_source: cfg::ListenerLimits::default().max_connections,
            ..cfg::ListenerLimits::default()
        },
    }
}

fn presence(bridge: &crate::crd::BridgeSpec) -> cfg::PresenceConfig {
    let defaults = cfg::PresenceConfig::default();
    cfg::PresenceConfig {
        poll_interval_ms: set_or(bridge.presence_poll_interval_ms, defaults.poll_interval_ms),
        out_of_office: match bridge.out_of_office {
            OutOfOffice::ExtendedAway => cfg::OutOfOfficeAs::ExtendedAway,
            OutOfOffice::Unavailable => cfg::OutOfOfficeAs::Unavailable,
        },
        subscriptions: match bridge.subscriptions {
            Subscriptions::Approve => cfg::SubscriptionPolicy::Approve,
            Subscriptions::Refuse => cfg::SubscriptionPolicy::Refuse,
        },
        ..defaults
    }
}

/// Every address on `port` (the pod's listeners).
fn any(port: i32) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], u16::try_from(port).unwrap_or(0)))
}

/// What the CRD cannot require by itself, with how to find each value.
fn required(spec: &FederationGatewaySpec) -> Result<(), ConfigError> {
    if spec.s2s.require_tls && spec.s2s.tls_secret.is_none() {
        return Err(spec_error(
            "spec.s2s.tlsSecret",
            "required when spec.s2s.requireTls is true (a kubernetes.io/tls Secret with the domain's certificate)",
        ));
    }
    if spec.teams.mode == TeamsMode::SipFederation {
        // No tenant, no shadow accounts: `sip` is checked where it is rendered.
        return Ok(());
    }
    if spec.shadow_accounts.upn_domain.is_none() {
        return Err(spec_error(
            "spec.shadowAccounts.upnDomain",
            "required: shadow accounts for XMPP contacts are created under this tenant domain",
        ));
    }
    if spec.shadow_accounts.licence_sku.is_none() {
        return Err(spec_error(
            "spec.shadowAccounts.licenceSku",
            "required: the SKU id of a licence that includes Teams (Teams works only for licensed users; `az rest --url https://graph.microsoft.com/v1.0/subscribedSkus` lists the tenant's)",
        ));
    }
    if spec.shadow_accounts.usage_location.is_none() {
        return Err(spec_error(
            "spec.shadowAccounts.usageLocation",
            "required: a two-letter country, e.g. GB (Microsoft 365 assigns no licence to a user without one)",
        ));
    }
    Ok(())
}

/// The allow lists of every whitelist that applies, merged.
fn allow(policies: &AppliedPolicies<'_>) -> Result<cfg::AllowConfig, ConfigError> {
    let mut remote_domains = BTreeSet::new();
    let mut internal_users = BTreeSet::new();
    let mut internal_groups = BTreeSet::new();
    for w in &policies.whitelists {
        for d in &w.spec.remote_domains {
            let pattern = d
                .parse::<cfg::DomainPattern>()
                .map_err(|m| ConfigError::Spec {
                    field: format!("DomainWhitelist {}: spec.remoteDomains", w.name_any()),
                    message: m,
                })?;
            remote_domains.insert(pattern);
        }
        // UPNs and group ids compare case-insensitively in Entra ID.
        internal_users.extend(w.spec.internal_users.iter().map(|u| u.to_ascii_lowercase()));
        internal_groups.extend(
            w.spec
                .internal_groups
                .iter()
                .map(|g| g.to_ascii_lowercase()),
        );
    }
    Ok(cfg::AllowConfig {
        remote_domains: remote_domains.into_iter().collect(),
        internal_users: internal_users.into_iter().collect(),
        internal_groups: internal_groups.into_iter().collect(),
    })
}

fn throttle(policies: &AppliedPolicies<'_>) -> cfg::ThrottleConfig {
    match policies.throttle {
        Some(t) => cfg::ThrottleConfig {
            default: limits(&t.spec.limits),
            overrides: t
                .spec
                .overrides
                .iter()
                .map(|o| (o.user.to_ascii_lowercase(), limits(&o.limits)))
                .collect(),
        },
        None => cfg::ThrottleConfig::default(),
    }
}

fn s2s(spec: &FederationGatewaySpec) -> cfg::S2sConfig {
    cfg::S2sConfig {
        listen: any(spec.s2s.port),
        require_tls: spec.s2s.require_tls,
        tls_cert_file: spec
            .s2s
            .tls_secret
            .as_ref()
            .map(|_| file(paths::S2S_TLS_DIR, "tls.crt")),
        tls_key_file: spec
            .s2s
            .tls_secret
            .as_ref()
            .map(|_| file(paths::S2S_TLS_DIR, "tls.key")),
        trust_roots_file: spec
            .s2s
            .trusted_ca_config_map
            .as_ref()
            .map(|ca| file(paths::S2S_CA_DIR, &ca.key)),
        dialback_secret: Some(cfg::SecretRef::File(file(paths::KEYS_DIR, keys::DIALBACK))),
        static_routes: spec
            .s2s
            .static_routes
            .iter()
            .map(|r| cfg::StaticRoute {
                domain: r.domain.clone(),
                host: r.host.clone(),
                port: u16::try_from(r.port).unwrap_or(0),
            })
            .collect(),
        ..cfg::S2sConfig::default()
    }
}

/// The Teams users' tenant, the app's credential (as the file the Secret
/// is mounted as), the cloud or its override, and the Graph budgets.
fn graph(spec: &FederationGatewaySpec) -> Result<cfg::GraphConfig, ConfigError> {
    let Some(t) = &spec.tenant else {
        return Err(spec_error(
            "spec.tenant",
            "required with teams.mode Graph (the default)",
        ));
    };
    tenant(
        t,
        "spec.tenant",
        [
            paths::GRAPH_SECRET_DIR,
            paths::GRAPH_CERT_DIR,
            paths::GRAPH_CA_DIR,
        ],
        spec,
    )
}

/// One tenant's sign-in, with its files under `dirs` (secret, certificate, CA).
fn tenant(
    tenant: &TenantSpec,
    field: &str,
    [secret_dir, cert_dir, ca_dir]: [&str; 3],
    spec: &FederationGatewaySpec,
) -> Result<cfg::GraphConfig, ConfigError> {
    let (client_secret, client_certificate) =
        match (&tenant.client_secret, &tenant.client_certificate) {
            (Some(s), _) => (Some(cfg::SecretRef::File(file(secret_dir, &s.key))), None),
            (None, Some(_)) => (
                None,
                Some(cfg::ClientCertificate {
                    cert_file: file(cert_dir, "tls.crt"),
                    key_file: file(cert_dir, "tls.key"),
                }),
            ),
            (None, None) => {
                return Err(spec_error(
                    field,
                    "set exactly one of clientSecret and clientCertificate",
                ));
            }
        };
    Ok(cfg::GraphConfig {
        tenant_id: tenant.tenant_id.clone(),
        client_id: tenant.client_id.clone(),
        client_secret,
        client_certificate,
        cloud: match tenant.cloud {
            None | Some(TenantCloud::Global) => cfg::Cloud::Global,
            Some(TenantCloud::USGovernment) => cfg::Cloud::UsGov,
            Some(TenantCloud::USGovernmentDoD) => cfg::Cloud::UsGovDod,
            Some(TenantCloud::China) => cfg::Cloud::China,
        },
        authority_url: tenant.endpoints.as_ref().map(|e| e.authority_url.clone()),
        graph_url: tenant.endpoints.as_ref().map(|e| e.graph_url.clone()),
        ca_file: tenant
            .endpoints
            .as_ref()
            .and_then(|e| e.ca_config_map.as_ref())
            .map(|ca| file(ca_dir, &ca.key)),
        limits: graph_limits(spec.bridge.graph_limits.as_ref()),
    })
}

/// The SIP federation edge, its certificate and roots as the files their
/// Secret and ConfigMap are mounted as.
fn sip(spec: &FederationGatewaySpec) -> Result<Option<cfg::SipConfig>, ConfigError> {
    if spec.teams.mode != TeamsMode::SipFederation {
        return Ok(None);
    }
    let Some(sip) = &spec.sip else {
        return Err(spec_error(
            "spec.sip",
            "required with teams.mode SipFederation (edgeFqdn, partnerDomain, tlsSecret)",
        ));
    };
    let port = |p: i32| u16::try_from(p).unwrap_or(5061);
    Ok(Some(cfg::SipConfig {
        listen: any(sip.port),
        edge_fqdn: sip.edge_fqdn.clone(),
        partner_domain: sip.partner_domain.clone(),
        cert_file: file(paths::SIP_TLS_DIR, "tls.crt"),
        key_file: file(paths::SIP_TLS_DIR, "tls.key"),
        ca_file: sip
            .trusted_ca_config_map
            .as_ref()
            .map(|ca| file(paths::SIP_CA_DIR, &ca.key)),
        routes: sip
            .routes
            .iter()
            .map(|r| cfg::SipRoute {
                domain: r.domain.clone(),
                host: r.host.clone(),
                port: port(r.port),
            })
            .collect(),
        fallback: sip.fallback.as_ref().map(|f| cfg::SipHost {
            host: f.host.clone(),
            port: port(f.port),
        }),
    }))
}

fn shadow_accounts(spec: &FederationGatewaySpec) -> Result<cfg::ShadowAccountConfig, ConfigError> {
    let defaults = cfg::ShadowAccountConfig::default();
    let tenant = match &spec.shadow_accounts.tenant {
        None => None,
        Some(t) => Some(tenant(
            t,
            "spec.shadowAccounts.tenant",
            [
                paths::SHADOW_TENANT_SECRET_DIR,
                paths::SHADOW_TENANT_CERT_DIR,
                paths::SHADOW_TENANT_CA_DIR,
            ],
            spec,
        )?),
    };
    Ok(cfg::ShadowAccountConfig {
        tenant,
        upn_domain: spec.shadow_accounts.upn_domain.clone(),
        licence_sku: spec.shadow_accounts.licence_sku.clone(),
        display_name_suffix: spec
            .shadow_accounts
            .display_name_suffix
            .clone()
            .unwrap_or(defaults.display_name_suffix),
        remove_unused_after_days: set_or(
            spec.shadow_accounts.remove_unused_after_days,
            defaults.remove_unused_after_days,
        ),
        usage_location: spec.shadow_accounts.usage_location.clone(),
        administrative_unit: spec.shadow_accounts.administrative_unit.clone(),
        credential_key: Some(cfg::SecretRef::File(file(
            paths::KEYS_DIR,
            keys::CREDENTIAL_KEY,
        ))),
    })
}

fn store(spec: &FederationGatewaySpec) -> Result<cfg::StoreConfig, ConfigError> {
    Ok(match spec.database.engine {
        DatabaseEngine::Sqlite => cfg::StoreConfig::Sqlite {
            path: file(paths::DATA_DIR, "xmppfed.db"),
        },
        DatabaseEngine::Sqlserver => {
            let secret = spec
                .database
                .connection_string_secret
                .as_ref()
                .ok_or_else(|| {
                    spec_error(
                        "spec.database.connectionStringSecret",
                        "required for engine sqlserver",
                    )
                })?;
            cfg::StoreConfig::Sqlserver {
                connection_string: cfg::SecretRef::File(file(
                    paths::DATABASE_SECRET_DIR,
                    &secret.key,
                )),
            }
        }
        DatabaseEngine::Postgres => {
            let pg = spec.database.postgres.as_ref().ok_or_else(|| {
                spec_error("spec.database.postgres", "required for engine postgres")
            })?;
            cfg::StoreConfig::Postgres(cfg::PostgresConfig {
                host: pg.host.clone(),
                port: pg.port.unwrap_or(cfg::PostgresConfig::DEFAULT_PORT),
                database: pg.database.clone(),
                user: pg.user.clone(),
                password: cfg::SecretRef::File(file(
                    paths::DATABASE_SECRET_DIR,
                    &pg.password_secret.key,
                )),
                sslmode: match pg.ssl_mode {
                    Some(PostgresSslMode::Disable) => cfg::PostgresSslMode::Disable,
                    Some(PostgresSslMode::VerifyFull) | None => cfg::PostgresSslMode::VerifyFull,
                },
                ca_file: pg
                    .ca_secret
                    .as_ref()
                    .map(|ca| file(paths::DATABASE_CA_DIR, &ca.key)),
                pool_size: cfg::PostgresConfig::DEFAULT_POOL_SIZE,
            })
        }
    })
}

/// A stable hash of the rendered document, reported in status.
pub fn config_hash(toml: &str) -> String {
    let digest = Sha256::digest(toml.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The hash of what the pods read only at start: the configuration without
/// the sections the gateway re-reads from its mounted file and applies live
/// (the allow lists and the throttle), so that changing a DomainWhitelist or
/// a ThrottlePolicy does not roll the pods (and bounce what is in flight).
pub fn restart_hash(config: &cfg::GatewayConfig) -> Result<String, crate::plan::InvalidSpec> {
    let toml = config
        .without_live_sections()
        .to_toml_string()
        .map_err(|e| crate::plan::InvalidSpec::Render(e.to_string()))?;
    Ok(config_hash(&toml))
}

/// `spec.bridge.graphLimits` over the gateway's defaults.
fn graph_limits(spec: Option<&crate::crd::GraphLimitsSpec>) -> cfg::GraphLimits {
    let d = cfg::GraphLimits::default();
    let Some(s) = spec else { return d };
    cfg::GraphLimits {
        chat_message_send_per_second: set_or(
            s.chat_message_send_per_second,
            d.chat_message_send_per_second,
        ),
        chat_message_read_per_second: set_or(
            s.chat_message_read_per_second,
            d.chat_message_read_per_second,
        ),
        per_chat_interval_ms: set_or(s.per_chat_interval_ms, d.per_chat_interval_ms),
        presence_per_second: set_or(s.presence_per_second, d.presence_per_second),
        all_messages_per_second: set_or(s.all_messages_per_second, d.all_messages_per_second),
        teams_other_per_second: set_or(s.teams_other_per_second, d.teams_other_per_second),
        directory_per_second: set_or(s.directory_per_second, d.directory_per_second),
    }
}
