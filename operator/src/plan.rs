//! The pure middle of the reconcile pipeline: from the fetched resources to the
//! objects to apply, or to the reason the spec cannot be applied.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::crd::{DomainWhitelist, FederationGateway, ThrottlePolicy};
use crate::policy::{self, PolicyError};
use crate::render::{self, GatewayObjects};

/// Why a gateway's spec cannot be applied: shown in its Degraded condition, and
/// waited out until the next change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Config(#[from] render::ConfigError),
    #[error("the rendered configuration cannot be written as TOML: {0}")]
    Render(String),
    #[error("the FederationGateway has no uid yet (not read from the API server)")]
    NoUid,
    /// A policy that concerns the gateway cannot be read as stored.
    #[error("{0}")]
    UnreadablePolicy(String),
}

impl InvalidSpec {
    /// CamelCase reason for the Degraded condition.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidSpec::Policy(PolicyError::AmbiguousThrottlePolicy(_)) => {
                "AmbiguousThrottlePolicy"
            }
            InvalidSpec::Policy(_) => "MissingPolicy",
            InvalidSpec::Config(_) | InvalidSpec::Render(_) => "InvalidSpec",
            InvalidSpec::NoUid => "NotPersisted",
            InvalidSpec::UnreadablePolicy(_) => "UnreadablePolicy",
        }
    }
}

/// What the operator will apply for a gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub config_toml: String,
    pub config_hash: String,
    /// On the pod template: what the pods must restart for (no allow lists, no throttle).
    pub restart_hash: String,
    pub objects: GatewayObjects,
    /// Names of the whitelists and the throttle policy applied, for status.
    pub whitelists: Vec<String>,
    pub throttle_policy: Option<String>,
    /// The sign-in and Graph hosts the gateway uses, for status.
    pub graph_endpoints: Option<String>,
    /// Whether those are not its cloud's own (said in an Event too).
    pub endpoint_override: bool,
}

/// What the operator was started with that every gateway's objects depend on.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// Base64 Ed25519 key the pods check their licence seats with.
    pub licence_public_key: Option<&'a str>,
    /// The ClusterRole the chart ships for gateway pods (patch their own
    /// pod), bound in each gateway's namespace to its ServiceAccount.
    pub gateway_cluster_role: &'a str,
}

/// The chart's name for the gateway pods' ClusterRole with the default release name.
pub const DEFAULT_GATEWAY_CLUSTER_ROLE: &str = "xmppfed-operator-gateway";

/// Validates `gateway` against the policies of its namespace and builds its objects,
/// running `replicas` pods (the licensed count).
pub fn plan(
    gateway: &FederationGateway,
    whitelists: &[DomainWhitelist],
    throttles: &[ThrottlePolicy],
    replicas: i32,
    settings: &Settings<'_>,
) -> Result<Plan, InvalidSpec> {
    use kube::ResourceExt;

    let applied = policy::applied(gateway, whitelists, throttles)?;
    let config = render::render_config(gateway, &applied, settings.licence_public_key)?;
    let config_toml = config
        .to_toml_string()
        .map_err(|e| InvalidSpec::Render(e.to_string()))?;
    let owner: OwnerReference = render::owner_of(gateway).ok_or(InvalidSpec::NoUid)?;
    let restart_hash = render::restart_hash(&config)?;
    let rendered = render::Rendered {
        toml: &config_toml,
        restart_hash: &restart_hash,
    };
    let objects = render::build_objects(
        gateway,
        owner,
        rendered,
        replicas,
        settings.gateway_cluster_role,
    );
    let graph_endpoints = config.graph.as_ref().map(|g| {
        let hosts = format!("sign-in {}, Graph {}", g.authority(), g.graph());
        if g.overridden() {
            format!("override of the {} cloud: {hosts}", g.cloud.name())
        } else {
            format!("{} cloud: {hosts}", g.cloud.name())
        }
    });
    let endpoint_override = config.graph.as_ref().is_some_and(|g| g.overridden());
    Ok(Plan {
        graph_endpoints,
        endpoint_override,
        config_hash: render::config_hash(&config_toml),
        restart_hash,
        config_toml,
        objects,
        whitelists: applied.whitelists.iter().map(|w| w.name_any()).collect(),
        throttle_policy: applied.throttle.map(|t| t.name_any()),
    })
}

#[cfg(test)]
mod tests;
