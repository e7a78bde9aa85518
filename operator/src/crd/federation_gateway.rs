use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPeer};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, SecretKeyRef, SipSpec, TeamsMode, TeamsSpec};

/// One gateway deployment: an XMPP domain federated with one Microsoft 365 tenant.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "xmppfed.io",
    version = "v1alpha1",
    kind = "FederationGateway",
    namespaced,
    shortname = "fgw",
    category = "xmppfed",
    status = "FederationGatewayStatus",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Licensed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Licensed\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.database.engine != 'sqlite' || self.replicas <= 1").message("the sqlite engine supports one replica only: use engine postgres or sqlserver for more"))]
#[x_kube(validation = Rule::new("self.database.engine != 'sqlserver' || has(self.database.connectionStringSecret)").message("database.connectionStringSecret is required for engine sqlserver"))]
#[x_kube(validation = Rule::new("self.database.engine != 'postgres' || has(self.database.postgres)").message("database.postgres (host, database, user, passwordSecret) is required for engine postgres"))]
#[x_kube(validation = Rule::new("self.teams.mode == 'SipFederation' || has(self.tenant)").message("tenant is required with teams.mode Graph (the default)"))]
#[x_kube(validation = Rule::new("self.teams.mode != 'SipFederation' || has(self.sip)").message("sip (edgeFqdn, partnerDomain, tlsSecret) is required with teams.mode SipFederation"))]
#[x_kube(validation = Rule::new("!has(self.sip) || !has(self.sip.port) || !has(self.s2s) || !has(self.s2s.port) || self.sip.port != self.s2s.port").message("sip.port and s2s.port must differ"))]
#[x_kube(validation = Rule::new("!has(self.webhookIngress) || (has(self.webhookUrl) && url(self.webhookUrl).getHostname() == self.webhookIngress.host && url(self.webhookUrl).getEscapedPath() in ['', '/'])").message("webhookIngress needs webhookUrl to be https://<webhookIngress.host> with no path"))]
pub struct FederationGatewaySpec {
    /// The Teams-facing XMPP domain this gateway serves, e.g. `teams.example.com`.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::DOMAIN_RULE).message("domain must be a lower-case DNS name such as teams.example.com"))]
    pub domain: String,
    /// The route to Microsoft's side; Graph by default.
    #[serde(default)]
    pub teams: TeamsSpec,
    /// The Microsoft 365 tenant and app registration (teams.mode Graph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantSpec>,
    /// The SIP federation edge (teams.mode SipFederation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipSpec>,
    #[serde(default)]
    pub shadow_accounts: ShadowAccountSpec,
    /// Gateway pods; each needs a licence seat.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// The gateway container image.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The gateway container's resources; unset: requests 100m CPU and
    /// 64Mi memory, limit 512Mi memory (QoS Burstable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub s2s: S2sSpec,
    /// The HTTPS URL that Microsoft Graph posts change notifications to; polling only when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(super::HTTPS_URL_RULE).message("webhookUrl must be an https:// URL with a host"))]
    pub webhook_url: Option<String>,
    /// An Ingress for the webhook, made by the operator: Microsoft Graph
    /// posts only to a publicly trusted HTTPS URL, here `webhookUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ingress: Option<WebhookIngressSpec>,
    /// The gateway's NetworkPolicy (made unless `enabled: false`).
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    pub database: DatabaseSpec,
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// Which DomainWhitelists and ThrottlePolicies apply, beyond those that select this gateway.
    #[serde(default)]
    pub policies: PolicySelection,
    /// Secret holding the signed licence documents.
    pub licence_secret: SecretKeyRef,
    /// How the bridge behaves; every field has a default.
    #[serde(default)]
    pub bridge: BridgeSpec,
    /// Stop reconciling: children are left as they are.
    #[serde(default)]
    pub paused: bool,
    /// Seconds a rollout may take before Progressing turns False with
    /// `ProgressDeadlineExceeded`, naming the stuck pods (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub progress_deadline_seconds: Option<i64>,
}

/// How the bridge behaves (the gateway's `[xmpp]`, `[presence]`, `[messages]`
/// and `[leader]` settings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeSpec {
    /// Where a Teams user's JID local part comes from.
    #[serde(default)]
    pub local_part: LocalPart,
    /// Presence subscription requests to allowed Teams users: approved, or all refused.
    #[serde(default)]
    pub subscriptions: Subscriptions,
    /// How a Teams user out of office shows in XMPP.
    #[serde(default)]
    pub out_of_office: OutOfOffice,
    /// How often Teams presence is read, at least (raised to stay within Graph's budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 60000))]
    pub presence_poll_interval_ms: Option<i64>,
    /// A message not delivered within this time is bounced to its sender with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 604800))]
    pub message_expiry_seconds: Option<i64>,
    /// The bridge lease: a standby replica takes over at most this long after the leader dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 6, max = 600))]
    pub leader_lease_seconds: Option<i64>,
    /// Graph request rates per throttling category (defaults: Microsoft's
    /// published limits less a margin; the gateway's `[graph.limits]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_limits: Option<GraphLimitsSpec>,
    /// How Graph tells the gateway of new chat messages (with `webhookUrl`):
    /// `PerAccount`, one subscription per contact made with its delegated
    /// `Chat.Read` (least privilege; Microsoft allows 10,000 Teams
    /// subscriptions per organisation, all apps together), or `Tenant`, one
    /// app-only subscription for every contact (needs the application
    /// permission `Chat.Read.All`).
    #[serde(default)]
    pub chat_notifications: ChatNotifications,
}

/// See [`BridgeSpec::chat_notifications`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ChatNotifications {
    #[default]
    PerAccount,
    Tenant,
}

/// Graph request rates, per second, per category Microsoft throttles on its
/// own (https://learn.microsoft.com/graph/throttling-limits). Unset fields
/// keep the gateway's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GraphLimitsSpec {
    /// POST chat message for the tenant (Microsoft: 20/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub chat_message_send_per_second: Option<i64>,
    /// GET chat messages for the tenant (Microsoft: 20/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub chat_message_read_per_second: Option<i64>,
    /// Least time between two sends, or two reads, in one chat (Microsoft: 1/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 60000))]
    pub per_chat_interval_ms: Option<i64>,
    /// Presence reads and writes (Microsoft: 1,500 per 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub presence_per_second: Option<i64>,
    /// `getAllMessages` reads (Microsoft: 200/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 200))]
    pub all_messages_per_second: Option<i64>,
    /// Other Teams calls (Microsoft: 30/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 30))]
    pub teams_other_per_second: Option<i64>,
    /// Directory calls (users, groups, licences, policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 800))]
    pub directory_per_second: Option<i64>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum LocalPart {
    /// The UPN's local part: `alice@contoso.com` is `alice@<domain>`.
    #[default]
    Upn,
    /// The mail address's local part.
    Mail,
    /// The whole UPN, escaped (XEP-0106): `alice\40contoso.com@<domain>`.
    WholeUpn,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Subscriptions {
    #[default]
    Approve,
    Refuse,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum OutOfOffice {
    /// `xa` with the automatic-reply text.
    #[default]
    ExtendedAway,
    Unavailable,
}

fn default_replicas() -> i32 {
    1
}

/// The Microsoft 365 tenant and the app registration the gateway signs in as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientSecret) != has(self.clientCertificate)").message("set exactly one of tenant.clientSecret and tenant.clientCertificate"))]
pub struct TenantSpec {
    /// Directory (tenant) id.
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')").message("tenant.tenantId must be a GUID"))]
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')").message("tenant.clientId must be a GUID"))]
    pub client_id: String,
    /// Secret key holding the client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretKeyRef>,
    /// Secret of type kubernetes.io/tls holding the client certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// The Microsoft cloud of the tenant: `Global` (also GCC), `USGovernment`
    /// (GCC High), `USGovernmentDoD` or `China` (21Vianet); each has its own
    /// sign-in and Graph hosts (learn.microsoft.com/graph/deployments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<TenantCloud>,
    /// Other sign-in and Graph URLs than the cloud's: a test Graph, or the
    /// cloud through a proxy. Shown in status and an Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointOverride>,
}

/// The Microsoft cloud of the tenant, as Microsoft Graph's national cloud
/// deployments name them: `Global` (the default, GCC too), `USGovernment`
/// (GCC High), `USGovernmentDoD`, `China` (21Vianet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TenantCloud {
    Global,
    /// Microsoft Graph for US Government L4 (GCC High).
    USGovernment,
    /// Microsoft Graph for US Government L5 (DoD).
    USGovernmentDoD,
    /// Microsoft Graph China operated by 21Vianet.
    China,
}

/// The webhook's Ingress: its class, the public host (the host of
/// `webhookUrl`) and the TLS Secret for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookIngressSpec {
    /// The IngressClass; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// The public host name Graph posts to.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::DOMAIN_RULE).message("webhookIngress.host must be a lower-case DNS name"))]
    pub host: String,
    /// A `kubernetes.io/tls` Secret with a publicly trusted certificate for the host.
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret: String,
}

/// Sign-in and Graph base URLs to use instead of the cloud's, and a CA to trust for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointOverride {
    /// The identity platform's base URL, e.g. `https://login.microsoftonline.com`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(super::HTTPS_URL_RULE).message("tenant.endpoints.authorityUrl must be an https:// URL with a host"))]
    pub authority_url: String,
    /// Graph's base URL with its version, e.g. `https://graph.microsoft.com/v1.0`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(super::HTTPS_URL_RULE).message("tenant.endpoints.graphUrl must be an https:// URL with a host"))]
    pub graph_url: String,
    /// A key of a ConfigMap holding PEM certificates trusted for these
    /// endpoints besides the system's (a proxy's or a test Graph's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map: Option<ConfigMapKeyRef>,
}

/// A key of a ConfigMap in the resource's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How remote XMPP contacts are represented in the tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowAccountSpec {
    /// Domain of the shadow accounts' UPNs (a verified domain of the tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::DOMAIN_RULE).message("shadowAccounts.upnDomain must be a lower-case DNS name"))]
    pub upn_domain: Option<String>,
    /// SKU id of the Teams licence assigned to each shadow account. Required:
    /// Teams works only for licensed users (the gateway is Degraded without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence_sku: Option<String>,
    /// Appended to the contact's name, e.g. " (XMPP)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name_suffix: Option<String>,
    /// Two-letter country of the shadow accounts (ISO 3166-1), e.g. `GB`:
    /// Microsoft 365 assigns no licence to a user without one. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{2}$')").message("shadowAccounts.usageLocation must be a two-letter country code in capitals, e.g. GB"))]
    pub usage_location: Option<String>,
    /// Object id of the administrative unit shadow accounts are created in;
    /// the app then needs User Administrator scoped to it instead of
    /// `User.ReadWrite.All` (docs/tenant-setup.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 36, max = 36))]
    pub administrative_unit: Option<String>,
    /// Shadow accounts unused this long, with no contact relationship left,
    /// are removed (0: never; 90 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3650))]
    pub remove_unused_after_days: Option<i64>,
    /// The tenant the shadow accounts live in, when not `spec.tenant`: a
    /// tenant kept for federation alone, with its own app registration, so
    /// that the Teams users' tenant keeps MFA for everyone. Teams users,
    /// their presence and the allow list stay in `spec.tenant`; chats are
    /// cross-tenant, which Teams external access must allow both ways
    /// (docs/tenant-setup.md, "A tenant for the shadow accounts").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantSpec>,
}

/// Server-to-server federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S2sSpec {
    #[serde(default = "default_s2s_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret of type kubernetes.io/tls with the domain's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    #[serde(default = "default_true")]
    pub require_tls: bool,
    /// How remote XMPP servers reach the gateway; they must, so LoadBalancer by default.
    #[serde(default)]
    pub service_type: S2sServiceType,
    /// Fixed routes for remote domains that DNS does not resolve (private networks).
    #[serde(default)]
    #[schemars(length(max = 1000), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["domain"]))]
    pub static_routes: Vec<StaticRouteSpec>,
    /// A key of a ConfigMap holding the PEM roots that remote servers'
    /// certificates are verified against (SASL EXTERNAL), instead of the
    /// system's: a private PKI's CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_config_map: Option<ConfigMapKeyRef>,
}

impl Default for S2sSpec {
    fn default() -> Self {
        Self {
            port: default_s2s_port(),
            tls_secret: None,
            require_tls: true,
            service_type: S2sServiceType::default(),
            static_routes: Vec::new(),
            trusted_ca_config_map: None,
        }
    }
}

/// The type of the s2s Service.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum S2sServiceType {
    ClusterIP,
    NodePort,
    #[default]
    LoadBalancer,
}

impl S2sServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            S2sServiceType::ClusterIP => "ClusterIP",
            S2sServiceType::NodePort => "NodePort",
            S2sServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

fn default_s2s_port() -> i32 {
    5269
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticRouteSpec {
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::DOMAIN_RULE).message("staticRoutes[].domain must be a lower-case DNS name"))]
    pub domain: String,
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[serde(default = "default_s2s_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// The gateway's NetworkPolicy: s2s from anywhere, the webhook from where
/// Graph's notifications come in, the admin port from monitoring; egress to
/// DNS, HTTPS (Microsoft's sign-in and Graph, the Kubernetes API), s2s
/// peers, the database and the telemetry collector only. A NetworkPolicy
/// cannot name hosts: narrowing HTTPS to Microsoft's endpoints needs a CNI
/// with FQDN policies (Cilium, Calico Enterprise), added beside this one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Make the NetworkPolicy (default true; false removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Who may reach the webhook (with `webhookUrl`): your ingress
    /// controller's pods, e.g. `[{namespaceSelector: {matchLabels:
    /// {kubernetes.io/metadata.name: ingress-nginx}}}]`. Not given: any
    /// source (every notification must carry the gateway's clientState).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_from: Option<Vec<NetworkPolicyPeer>>,
    /// Who may read `/metrics` and the health endpoints. Not given: pods of
    /// the namespace `monitoring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_from: Option<Vec<NetworkPolicyPeer>>,
    /// More egress, appended (an HTTP proxy, an SMTP relay…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_egress: Option<Vec<NetworkPolicyEgressRule>>,
}

/// The durable store. Its engine is chosen once: the data does not move
/// between engines (and the StatefulSet's volume cannot change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.engine == oldSelf.engine").message("database.engine cannot change: the data does not move between engines; create a new FederationGateway (its queued messages are delivered by the old one until you delete it)"))]
pub struct DatabaseSpec {
    pub engine: DatabaseEngine,
    /// Secret key with the SQL Server connection string (engine sqlserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string_secret: Option<SecretKeyRef>,
    /// Size of the volume for engine sqlite, e.g. `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(super::QUANTITY_PATTERN))]
    pub storage_size: Option<String>,
    /// The PostgreSQL server (engine postgres).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
}

/// A PostgreSQL server (13 or later) and the gateway's login on it, e.g. a
/// CloudNativePG cluster's `-rw` Service, its app user's Secret and its CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Host name or address of the server (its certificate must name it
    /// when `sslMode` is `verify-full`).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port (5432 when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Database the gateway owns (its tables are created there).
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    #[schemars(length(min = 1, max = 63))]
    pub user: String,
    /// Secret key holding the user's password.
    pub password_secret: SecretKeyRef,
    /// `verify-full` (default: TLS, the server's certificate and name
    /// checked) or `disable` (plain TCP, e.g. inside a mesh that encrypts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<PostgresSslMode>,
    /// Secret key holding the PEM CA that signed the server's certificate
    /// (CloudNativePG: `<cluster>-ca`, key `ca.crt`); the public roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresSslMode {
    Disable,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    /// Embedded, one replica.
    Sqlite,
    /// Microsoft SQL Server 2022, any number of replicas.
    Sqlserver,
    /// PostgreSQL 13 or later, any number of replicas.
    Postgres,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// OTLP/HTTP endpoint for traces (sets OTEL_EXPORTER_OTLP_ENDPOINT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("telemetry.otlpEndpoint must be an http:// or https:// URL with a host"))]
    pub otlp_endpoint: Option<String>,
    /// Log filter, e.g. `info` or `info,xmppfed_gateway=debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Policies referenced by name, in addition to those whose selectors pick this gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySelection {
    #[serde(default)]
    pub domain_whitelists: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_policy: Option<String>,
}

/// What the operator applied and observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederationGatewayStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and Licensed.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Gateway pods ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Hash of the rendered gateway configuration now applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Licence seats assigned, by pod name.
    #[serde(default)]
    pub licence_assignments: BTreeMap<String, LicenceAssignment>,
    /// The sign-in and Graph hosts the gateway uses: its cloud's, or an override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_endpoints: Option<String>,
    /// The DomainWhitelists in the applied configuration, by name.
    #[serde(default)]
    pub whitelists: Vec<String>,
    /// The ThrottlePolicy in the applied configuration; none: the gateway's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_policy: Option<String>,
}

impl FederationGatewaySpec {
    /// The SIP edge, when the route is SIP federation (a `sip` left beside
    /// `teams.mode: Graph` is ignored: nothing listens for it).
    pub fn sip_edge(&self) -> Option<&SipSpec> {
        match self.teams.mode {
            TeamsMode::SipFederation => self.sip.as_ref(),
            TeamsMode::Graph => None,
        }
    }

    /// The tenant, when the route is Graph.
    pub fn graph_tenant(&self) -> Option<&TenantSpec> {
        match self.teams.mode {
            TeamsMode::Graph => self.tenant.as_ref(),
            TeamsMode::SipFederation => None,
        }
    }

    /// How long a rollout may take before it is reported stuck.
    pub fn progress_deadline(&self) -> std::time::Duration {
        let secs = self
            .progress_deadline_seconds
            .unwrap_or(600)
            .clamp(30, 86_400);
        std::time::Duration::from_secs(secs.unsigned_abs())
    }
}

impl FederationGateway {
    /// The Secrets of its namespace the gateway reads (licence, credentials,
    /// certificates, database): a change to any of them is reconciled at once.
    pub fn referenced_secrets(&self) -> Vec<&str> {
        let spec = &self.spec;
        let postgres = spec.database.postgres.as_ref();
        let tenant = spec.graph_tenant();
        [
            Some(spec.licence_secret.name.as_str()),
            tenant
                .and_then(|t| t.client_secret.as_ref())
                .map(|s| s.name.as_str()),
            tenant.and_then(|t| t.client_certificate.as_deref()),
            spec.s2s.tls_secret.as_deref(),
            spec.sip_edge().map(|s| s.tls_secret.as_str()),
            spec.database
                .connection_string_secret
                .as_ref()
                .map(|s| s.name.as_str()),
            postgres.map(|p| p.password_secret.name.as_str()),
            postgres
                .and_then(|p| p.ca_secret.as_ref())
                .map(|s| s.name.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LicenceAssignment {
    /// Id of the licence the seat comes from.
    pub licence_id: String,
    /// RFC 3339 expiry of that licence.
    pub expires: String,
}
