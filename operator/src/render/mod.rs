//! The render step of the reconcile pipeline: pure functions from a validated
//! FederationGateway and its policies to the objects the operator applies.

mod config;
mod network_policy;
mod volumes;
mod workload;

pub use config::{ConfigError, config_hash, render_config, restart_hash};
pub use workload::{
    CONFIG_HASH_ANNOTATION, GatewayObjects, LEADER, Rendered, build_objects, default_resources,
    labels, owner_of, pod_selector,
};

/// Where the gateway pod finds what the operator mounts for it.
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/xmppfed/config";
    pub const CONFIG_FILE: &str = "gateway.toml";
    pub const S2S_TLS_DIR: &str = "/etc/xmppfed/s2s-tls";
    /// The roots remote servers' certificates are verified against (`spec.s2s.trustedCaConfigMap`).
    pub const S2S_CA_DIR: &str = "/etc/xmppfed/s2s-ca";
    pub const GRAPH_CERT_DIR: &str = "/etc/xmppfed/graph-cert";
    pub const GRAPH_SECRET_DIR: &str = "/etc/xmppfed/graph-secret";
    /// The CA of an endpoint override (`spec.tenant.endpoints.caConfigMap`).
    pub const GRAPH_CA_DIR: &str = "/etc/xmppfed/graph-ca";
    /// The shadow accounts' own tenant (`spec.shadowAccounts.tenant`): its
    /// app's secret or certificate, and its endpoint override's CA.
    pub const SHADOW_TENANT_SECRET_DIR: &str = "/etc/xmppfed/shadow-tenant-secret";
    pub const SHADOW_TENANT_CERT_DIR: &str = "/etc/xmppfed/shadow-tenant-cert";
    pub const SHADOW_TENANT_CA_DIR: &str = "/etc/xmppfed/shadow-tenant-ca";
    pub const DATABASE_SECRET_DIR: &str = "/etc/xmppfed/database";
    /// The PostgreSQL server's CA (`spec.database.postgres.caSecret`).
    pub const DATABASE_CA_DIR: &str = "/etc/xmppfed/database-ca";
    /// The SIP federation edge's certificate (`spec.sip.tlsSecret`) and the
    /// roots partners' certificates chain to (`spec.sip.trustedCaConfigMap`).
    pub const SIP_TLS_DIR: &str = "/etc/xmppfed/sip-tls";
    pub const SIP_CA_DIR: &str = "/etc/xmppfed/sip-ca";
    pub const KEYS_DIR: &str = "/etc/xmppfed/keys";
    pub const LICENCE_DIR: &str = "/etc/xmppfed/licence";
    pub const DATA_DIR: &str = "/var/lib/xmppfed";
}

/// Ports inside the gateway pod.
pub mod ports {
    pub const WEBHOOK: i32 = 8443;
    pub const ADMIN: i32 = 9090;
}

/// Names of the children of gateway `name`.
pub mod names {
    pub fn config_map(name: &str) -> String {
        format!("{name}-config")
    }
    pub fn headless_service(name: &str) -> String {
        format!("{name}-headless")
    }
    pub fn s2s_service(name: &str) -> String {
        format!("{name}-s2s")
    }
    pub fn webhook_service(name: &str) -> String {
        format!("{name}-webhook")
    }
    pub fn service_account(name: &str) -> String {
        format!("{name}-gateway")
    }
    /// The RoleBinding of the chart's gateway ClusterRole to the gateway's
    /// ServiceAccount. (Before it, a Role and RoleBinding `{name}-pod-role`:
    /// a RoleBinding's role cannot change, so the new one has a new name.)
    pub fn pod_role_binding(name: &str) -> String {
        format!("{name}-pod-label")
    }
    /// The Secret the operator generates with the gateway's own keys (dialback
    /// secret, webhook clientState, credential key); owned by the gateway.
    pub fn keys_secret(name: &str) -> String {
        format!("{name}-keys")
    }
}

/// Keys of the generated keys Secret.
pub mod keys {
    pub const DIALBACK: &str = "dialback-secret";
    pub const CLIENT_STATE: &str = "client-state";
    pub const CREDENTIAL_KEY: &str = "credential-key";
}
