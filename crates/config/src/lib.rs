//! The gateway's configuration: one typed document, read from TOML, with defaults
//! for everything that has a sensible one and validation that names the bad field.
//!
//! This crate is deliberately small (serde + toml): the operator renders this
//! document into a ConfigMap without compiling the gateway's XMPP, Graph or
//! database stack.

mod domain;
mod error;
mod secret;
mod sip;
mod validate;
mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use domain::{DomainPattern, is_valid_domain};
pub use error::{ConfigError, FieldError};
pub use secret::{SecretRef, SecretValue};
pub use sip::{SipConfig, SipHost, SipRoute, TeamsConfig, TeamsMode};
pub use webhook::{ChatNotifications, ListenerLimits, WebhookConfig};

/// The whole gateway configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The XMPP domain this gateway is the server of.
    pub xmpp: XmppConfig,
    #[serde(default)]
    pub s2s: S2sConfig,
    /// Microsoft Graph tenant and app registration; absent in the local sandbox.
    #[serde(default)]
    pub graph: Option<GraphConfig>,
    #[serde(default)]
    pub webhook: WebhookConfig,
    #[serde(default)]
    pub shadow_accounts: ShadowAccountConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub messages: MessagesConfig,
    #[serde(default)]
    pub leader: LeaderConfig,
    #[serde(default)]
    pub allow: AllowConfig,
    #[serde(default)]
    pub throttle: ThrottleConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Node licensing; absent for local use (the sandbox), always rendered by the operator.
    #[serde(default)]
    pub licence: Option<LicenceConfig>,
    /// The route to Microsoft's side: Graph (default) or SIP federation.
    #[serde(default)]
    pub teams: TeamsConfig,
    /// The SIP federation edge, with `teams.mode = "sip-federation"`.
    #[serde(default)]
    pub sip: Option<SipConfig>,
}

/// Where the gateway finds its licences and how it knows which node it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LicenceConfig {
    /// File with one signed licence per line (the mounted licence Secret).
    pub file: PathBuf,
    /// Base64 Ed25519 public key the licences are verified with.
    pub public_key: String,
    /// Environment variable holding this node's name, `<gateway>-<ordinal>`.
    #[serde(default = "default_node_env")]
    pub node_name_env: String,
    /// How often the licence is checked again, in seconds.
    #[serde(default = "default_licence_check")]
    pub check_interval_secs: u64,
}

fn default_node_env() -> String {
    "POD_NAME".to_owned()
}

fn default_licence_check() -> u64 {
    3600
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// The Teams-facing XMPP domain, e.g. `teams.example.com`.
    pub domain: String,
    /// Where a Teams user's JID local part comes from.
    #[serde(default)]
    pub local_part: LocalPartSource,
}

/// The Teams attribute a JID local part is made from (case-folded, XEP-0106 escaped).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LocalPartSource {
    /// `alice.smith@contoso.com` → `alice.smith`.
    #[default]
    Upn,
    /// The local part of the `mail` attribute.
    Mail,
    /// The whole UPN, escaped (`alice\\40contoso.com`): unique by construction.
    WholeUpn,
}

/// The bridge's presence and contact-list behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// How often Teams presence is read when nothing slows it down (ms); the
    /// interval adapts upwards with the number of users and after throttling.
    pub poll_interval_ms: u64,
    /// The longest the adaptive interval grows to (ms).
    pub max_poll_interval_ms: u64,
    /// Lifetime of the presence session set on a shadow account; it is
    /// renewed before it ends while the contact stays online (5–240).
    pub session_minutes: u32,
    /// How often an Available shadow account's presence session is kept
    /// alive (seconds): Graph fades an Available app session to
    /// AvailableInactive after 5 minutes without a setPresence, and to Away
    /// after 5 more, whatever its expiration.
    pub keep_alive_secs: u32,
    /// How a Teams user who is out of office shows to XMPP.
    pub out_of_office: OutOfOfficeAs,
    /// Whether subscription requests to allowed Teams users are approved.
    pub subscriptions: SubscriptionPolicy,
    /// How long a Teams user's contact card (and photo hash) is cached.
    pub card_cache_secs: u64,
    /// The resource our users' presence is sent from.
    pub resource: String,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            max_poll_interval_ms: 30_000,
            session_minutes: 60,
            keep_alive_secs: 240,
            out_of_office: OutOfOfficeAs::default(),
            subscriptions: SubscriptionPolicy::default(),
            card_cache_secs: 3600,
            resource: "teams".to_owned(),
        }
    }
}

/// How 1:1 messages are carried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesConfig {
    /// A message not delivered within this time is bounced to its sender
    /// with an error (never dropped silently).
    pub expiry_secs: u64,
    /// How often the Teams chats are read for messages change notifications
    /// missed (with `webhook.public_url`): a safety net, since Graph says
    /// when it lost notifications (a `missed` event starts a sweep at once).
    pub reconcile_interval_secs: u64,
    /// How often they are read without notifications (no `webhook.public_url`,
    /// or Graph refused the subscription).
    pub poll_interval_secs: u64,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            expiry_secs: 3600,
            reconcile_interval_secs: 300,
            poll_interval_secs: 5,
        }
    }
}

/// The label each gateway pod keeps on itself in Kubernetes: `leader` on the
/// replica that runs the bridge, `standby` on the others. The operator's s2s
/// Service selects `leader`.
pub const POD_ROLE_LABEL: &str = "xmppfed.io/role";

/// The annotation the bridge's replica keeps on its pod with the tenant's
/// answer to its sign-ins: `ok`, or `<Reason>: <what to change>` (see the
/// gateway's `SignInRefusal`). The operator reports it as TenantReady.
pub const POD_TENANT_ANNOTATION: &str = "xmppfed.io/tenant-sign-in";
/// Where the SIP route's leader writes the partner edge's answer to its
/// probe: `ok`, or `Reason: message` (the PartnerReachable condition).
pub const POD_SIP_PARTNER_ANNOTATION: &str = "xmppfed.io/sip-partner";

/// Which replica runs the bridge: the holder of a lease in the shared store.
/// The others stand by and take over when it lapses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderConfig {
    /// How long the lease lasts unless renewed (renewed every third of it;
    /// 6 to 600). A replica that cannot renew stops before it lapses; a
    /// standby takes over at most this long after the holder died.
    pub lease_secs: u64,
    /// This replica's name in the lease; by default the pod name (`POD_NAME`)
    /// or the host name, with the process id.
    pub holder: Option<String>,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            lease_secs: 15,
            holder: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OutOfOfficeAs {
    /// `<show>xa</show>` with the out-of-office text.
    #[default]
    ExtendedAway,
    Unavailable,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriptionPolicy {
    /// Approve requests from allowed domains to users on the internal allow list.
    #[default]
    Approve,
    /// Refuse every request (presence stays private; cards still answer).
    Refuse,
}

/// Server-to-server federation (RFC 6120).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    pub listen: SocketAddr,
    /// Refuse to exchange stanzas on streams that are not TLS-protected.
    pub require_tls: bool,
    /// PEM certificate chain for the domain (reloaded when the file changes).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for the domain.
    pub tls_key_file: Option<PathBuf>,
    /// PEM trust roots for SASL EXTERNAL; the system roots when absent.
    pub trust_roots_file: Option<PathBuf>,
    /// Secret for XEP-0185 dialback keys; shared by all replicas of a gateway.
    pub dialback_secret: Option<SecretRef>,
    /// Largest stanza accepted from a peer, in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest nesting of elements accepted in one stanza (its own element is
    /// level 1). Deeper stanzas end the stream with `policy-violation`.
    pub max_stanza_depth: usize,
    /// Most elements accepted in one stanza.
    pub max_stanza_elements: usize,
    /// Time a stanza may take to arrive once its first byte has: a peer that
    /// drips bytes ends with `policy-violation`.
    pub stanza_timeout_secs: u64,
    /// Time an inbound stream may take to authenticate (dialback or SASL).
    pub auth_timeout_secs: u64,
    /// Inbound connections not yet authenticated, in total; more are refused.
    pub max_unauthenticated: usize,
    /// Inbound connections not yet authenticated from one source address.
    pub max_unauthenticated_per_address: usize,
    /// Close a stream that carried nothing for this long.
    pub idle_timeout_secs: u64,
    /// Interval of whitespace keepalives on outgoing streams.
    pub keepalive_interval_secs: u64,
    /// Time to establish and authenticate a stream before giving up.
    pub connect_timeout_secs: u64,
    /// Fixed routes that bypass DNS (private networks, tests).
    pub static_routes: Vec<StaticRoute>,
}

impl Default for S2sConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5269)),
            require_tls: true,
            tls_cert_file: None,
            tls_key_file: None,
            trust_roots_file: None,
            dialback_secret: None,
            max_stanza_bytes: 256 * 1024,
            max_stanza_depth: 32,
            max_stanza_elements: 8192,
            stanza_timeout_secs: 60,
            auth_timeout_secs: 90,
            max_unauthenticated: 512,
            max_unauthenticated_per_address: 16,
            idle_timeout_secs: 600,
            keepalive_interval_secs: 60,
            connect_timeout_secs: 30,
            static_routes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub domain: String,
    pub host: String,
    #[serde(default = "default_s2s_port")]
    pub port: u16,
}

fn default_s2s_port() -> u16 {
    5269
}

/// The Microsoft 365 tenant and the app registration the gateway acts as.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    pub tenant_id: String,
    pub client_id: String,
    /// Client secret; exactly one of this and `client_certificate` is required.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    #[serde(default)]
    pub client_certificate: Option<ClientCertificate>,
    /// Which Microsoft cloud the tenant lives in: its identity platform and
    /// Graph hosts, and the resource tokens are asked for.
    #[serde(default)]
    pub cloud: Cloud,
    /// The identity platform's base URL; the cloud's when absent. Set it
    /// only to reach the cloud through another host (a test Graph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_url: Option<String>,
    /// Graph's base URL with its version; the cloud's `/v1.0` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_url: Option<String>,
    /// PEM trust roots added to the system's for the identity platform and
    /// Graph: a TLS-inspecting proxy's CA, or a test Graph's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Request rates the gateway keeps to, per Graph throttling category.
    #[serde(default)]
    pub limits: GraphLimits,
}

impl GraphConfig {
    /// The identity platform's base URL in use.
    pub fn authority(&self) -> &str {
        self.authority_url
            .as_deref()
            .unwrap_or(self.cloud.authority_url())
    }

    /// Graph's base URL in use.
    pub fn graph(&self) -> &str {
        self.graph_url.as_deref().unwrap_or(self.cloud.graph_url())
    }

    /// Whether either base URL is not the cloud's own (said at startup, and
    /// by the operator in status).
    pub fn overridden(&self) -> bool {
        self.authority_url.is_some() || self.graph_url.is_some()
    }
}

/// Microsoft's clouds, as Microsoft Graph's national cloud deployments list
/// them (https://learn.microsoft.com/graph/deployments): each has its own
/// identity platform, Graph host and app registrations. GCC (moderate) tenants
/// use the global service; GCC High uses `us-gov`, DoD `us-gov-dod`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    #[default]
    Global,
    /// Microsoft Graph for US Government L4 (GCC High).
    UsGov,
    /// Microsoft Graph for US Government L5 (DoD).
    UsGovDod,
    /// Microsoft Graph China operated by 21Vianet.
    China,
}

impl Cloud {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::UsGov => "us-gov",
            Cloud::UsGovDod => "us-gov-dod",
            Cloud::China => "china",
        }
    }

    /// The cloud's Microsoft Entra ID endpoint.
    pub fn authority_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::UsGov | Cloud::UsGovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// The cloud's Graph service root, without the version.
    pub fn graph_resource(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::UsGov => "https://graph.microsoft.us",
            Cloud::UsGovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// The cloud's Graph v1.0 base URL.
    pub fn graph_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com/v1.0",
            Cloud::UsGov => "https://graph.microsoft.us/v1.0",
            Cloud::UsGovDod => "https://dod-graph.microsoft.us/v1.0",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn/v1.0",
        }
    }
}

/// The request rates the gateway keeps to, one budget per category Microsoft
/// throttles on its own (https://learn.microsoft.com/graph/throttling-limits:
/// Microsoft Teams service limits, cloud communications (presence), identity
/// and access). Each is the most requests Graph may see in any one second:
/// the gateway counts a request from its sending until a second after its
/// answer, so network delays cannot bunch them past it. Defaults are
/// Microsoft's published limits less a margin, so that the gateway runs at
/// the ceiling without finding it through 429s; for chat messages the
/// margin is that round trip, counted in each request's second.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphLimits {
    /// POST chat message, per second for the tenant (Microsoft: 20).
    pub chat_message_send_per_second: u32,
    /// GET chat message(s), per second for the tenant (Microsoft: 20).
    pub chat_message_read_per_second: u32,
    /// Least time between two POSTs, or two GETs, in one chat (Microsoft: 1 per second).
    pub per_chat_interval_ms: u32,
    /// Presence reads and writes, per second (Microsoft: 1,500 per 30 s).
    pub presence_per_second: u32,
    /// `getAllMessages` reads, per second (Microsoft: 200).
    pub all_messages_per_second: u32,
    /// Every other Teams call (chats, members, subscriptions), per second (Microsoft: 30).
    pub teams_other_per_second: u32,
    /// Directory calls (users, groups, licences, policies), per second
    /// (Microsoft: 3,500 resource units per 10 s for the smallest tenants).
    pub directory_per_second: u32,
}

impl Default for GraphLimits {
    fn default() -> Self {
        Self {
            chat_message_send_per_second: 20,
            chat_message_read_per_second: 20,
            per_chat_interval_ms: 1_050,
            presence_per_second: 45,
            all_messages_per_second: 180,
            teams_other_per_second: 27,
            directory_per_second: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Tenant users that stand for remote XMPP contacts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowAccountConfig {
    /// Domain of the UPNs created for shadow accounts, e.g. `xmpp.contoso.com`.
    pub upn_domain: Option<String>,
    /// SKU id of the Teams licence assigned to each shadow account.
    pub licence_sku: Option<String>,
    pub display_name_suffix: String,
    /// Remove shadow accounts unused for this many days (0 keeps them forever).
    pub remove_unused_after_days: u32,
    /// Key that encrypts shadow-account credentials at rest.
    pub credential_key: Option<SecretRef>,
    /// Two-letter country code Graph requires before a licence can be assigned.
    pub usage_location: Option<String>,
    /// Object id of the administrative unit shadow accounts are created in:
    /// the app then needs only the User Administrator role scoped to it, not
    /// `User.ReadWrite.All` over the whole directory.
    pub administrative_unit: Option<String>,
    /// The tenant the shadow accounts live in, when not `graph`'s: a tenant
    /// kept for federation alone (its own app registration), so that the
    /// Teams users' tenant keeps MFA for everyone. Teams users, their
    /// presence and the allow list stay in `graph`'s tenant; chats are
    /// cross-tenant, which Teams external access must allow both ways.
    pub tenant: Option<GraphConfig>,
}

impl Default for ShadowAccountConfig {
    fn default() -> Self {
        Self {
            upn_domain: None,
            licence_sku: None,
            display_name_suffix: " (XMPP)".to_owned(),
            remove_unused_after_days: 90,
            credential_key: None,
            usage_location: None,
            administrative_unit: None,
            tenant: None,
        }
    }
}

/// Who may federate: remote XMPP domains and internal Teams users.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AllowConfig {
    /// Exact domains (`example.org`) and suffix wildcards (`*.example.org`).
    pub remote_domains: Vec<DomainPattern>,
    /// Teams users by UPN.
    pub internal_users: Vec<String>,
    /// Entra group object ids whose members are allowed.
    pub internal_groups: Vec<String>,
}

/// Per-user token buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub default: ThrottleLimits,
    /// Per-user limits, keyed by UPN or bare JID.
    pub overrides: BTreeMap<String, ThrottleLimits>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleLimits {
    pub messages_per_minute: u32,
    pub bytes_per_minute: u64,
    pub presence_updates_per_minute: u32,
    pub burst: u32,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            messages_per_minute: 60,
            bytes_per_minute: 256 * 1024,
            presence_updates_per_minute: 30,
            burst: 20,
        }
    }
}

/// The durable store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "engine", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// The embedded default: one file, one replica.
    Sqlite { path: PathBuf },
    /// Microsoft SQL Server 2022, for replicated production gateways.
    Sqlserver { connection_string: SecretRef },
    /// PostgreSQL 13 or later, for replicated production gateways.
    Postgres(PostgresConfig),
}

/// A PostgreSQL server and the gateway's login on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub host: String,
    #[serde(default = "PostgresConfig::default_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: SecretRef,
    /// `verify-full` (the default: TLS, the server's certificate checked
    /// against `ca_file` or the system's roots and its name against `host`)
    /// or `disable` (plain TCP: loopback or a mesh that encrypts for us).
    #[serde(default)]
    pub sslmode: PostgresSslMode,
    /// PEM file of the CA that signed the server's certificate (e.g. the
    /// `ca.crt` of a CloudNativePG cluster); the system's roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Connections open at once, at most.
    #[serde(default = "PostgresConfig::default_pool_size")]
    pub pool_size: u16,
}

impl PostgresConfig {
    pub const DEFAULT_PORT: u16 = 5432;
    pub const DEFAULT_POOL_SIZE: u16 = 8;

    fn default_port() -> u16 {
        Self::DEFAULT_PORT
    }
    fn default_pool_size() -> u16 {
        Self::DEFAULT_POOL_SIZE
    }
}

/// How the connection to PostgreSQL is protected. libpq's `require` and
/// `verify-ca` (encryption without checking whom it reaches, or without the
/// name) are left out on purpose: a store of credentials is not sent to a
/// server nobody checked.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresSslMode {
    Disable,
    #[default]
    VerifyFull,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sqlite {
            path: PathBuf::from("xmppfed.db"),
        }
    }
}

/// The admin HTTP port: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub limits: ListenerLimits,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            limits: ListenerLimits::default(),
        }
    }
}

/// Logging; traces go over OTLP as the standard `OTEL_*` variables say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An env-filter directive; `RUST_LOG` overrides it.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".to_owned(),
        }
    }
}

impl GatewayConfig {
    /// The configuration without the sections a running gateway applies
    /// live from its re-read file (`[allow]`, `[throttle]`): what a restart
    /// is needed for. The operator rolls pods only when this changes.
    pub fn without_live_sections(&self) -> Self {
        let mut at_start = self.clone();
        at_start.allow = AllowConfig::default();
        at_start.throttle = ThrottleConfig::default();
        at_start
    }

    /// Parses and validates a configuration document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: GatewayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            message: e.message().to_owned(),
            span: e.span(),
            rendered: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| e.in_file(path))
    }

    /// Checks every field, returning all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { errors })
        }
    }

    /// The configuration as TOML, secrets shown only by reference.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Render(e.to_string()))
    }

    /// Every secret the configuration names, with the field that names it.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretRef)> {
        let mut refs = Vec::new();
        if let Some(s) = &self.s2s.dialback_secret {
            refs.push(("s2s.dialback_secret", s));
        }
        if let Some(s) = self.graph.as_ref().and_then(|g| g.client_secret.as_ref()) {
            refs.push(("graph.client_secret", s));
        }
        let shadow = self.shadow_accounts.tenant.as_ref();
        if let Some(s) = shadow.and_then(|g| g.client_secret.as_ref()) {
            refs.push(("shadow_accounts.tenant.client_secret", s));
        }
        if let Some(s) = &self.webhook.client_state {
            refs.push(("webhook.client_state", s));
        }
        if let Some(s) = &self.shadow_accounts.credential_key {
            refs.push(("shadow_accounts.credential_key", s));
        }
        match &self.store {
            StoreConfig::Sqlserver { connection_string } => {
                refs.push(("store.connection_string", connection_string));
            }
            StoreConfig::Postgres(pg) => refs.push(("store.password", &pg.password)),
            StoreConfig::Sqlite { .. } => {}
        }
        refs
    }

    /// Resolves every secret, reporting each one that cannot be read.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        let errors: Vec<FieldError> = self
            .secret_refs()
            .into_iter()
            .filter_map(|(field, r)| {
                r.resolve()
                    .err()
                    .map(|e| FieldError::new(field, e.to_string()))
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { errors })
        }
    }

    /// The limits that apply to one user (an override, or the default).
    pub fn throttle_for(&self, user: &str) -> ThrottleLimits {
        self.throttle
            .overrides
            .get(user)
            .copied()
            .unwrap_or(self.throttle.default)
    }
}

#[cfg(test)]
mod tests;
