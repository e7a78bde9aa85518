//! Which DomainWhitelists and ThrottlePolicy apply to a gateway. Pure.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::crd::{DomainWhitelist, FederationGateway, GatewaySelector, ThrottlePolicy};

impl GatewaySelector {
    /// Whether this selector picks the gateway `name` with `labels`. A gateway
    /// matches by name, or by carrying every label of a non-empty `matchLabels`.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        match &self.match_labels {
            Some(wanted) if !wanted.is_empty() => {
                wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
            _ => false,
        }
    }
}

/// The policies that apply to one gateway.
#[derive(Debug, Clone)]
pub struct AppliedPolicies<'a> {
    /// Sorted by name, so rendering is stable.
    pub whitelists: Vec<&'a DomainWhitelist>,
    pub throttle: Option<&'a ThrottlePolicy>,
}

/// Why the policies of a gateway cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("spec.policies.domainWhitelists names `{0}`, which does not exist in this namespace")]
    MissingWhitelist(String),
    #[error("spec.policies.throttlePolicy names `{0}`, which does not exist in this namespace")]
    MissingThrottlePolicy(String),
    #[error(
        "ThrottlePolicies {0} all select this gateway: name one in spec.policies.throttlePolicy"
    )]
    AmbiguousThrottlePolicy(String),
}

/// Picks the policies for `gateway` among those of its namespace: every whitelist that
/// selects it or that it names, and the one throttle policy it names or that selects it.
pub fn applied<'a>(
    gateway: &FederationGateway,
    whitelists: &'a [DomainWhitelist],
    throttles: &'a [ThrottlePolicy],
) -> Result<AppliedPolicies<'a>, PolicyError> {
    let name = gateway.name_any();
    let labels = gateway.labels();
    let namespace = gateway.namespace();
    let same_ns = |ns: Option<String>| ns == namespace;

    let mut chosen: Vec<&DomainWhitelist> = whitelists
        .iter()
        .filter(|w| same_ns(w.namespace()))
        .filter(|w| {
            w.spec.gateways.selects(&name, labels)
                || gateway
                    .spec
                    .policies
                    .domain_whitelists
                    .contains(&w.name_any())
        })
        .collect();
    for wanted in &gateway.spec.policies.domain_whitelists {
        if !chosen.iter().any(|w| &w.name_any() == wanted) {
            return Err(PolicyError::MissingWhitelist(wanted.clone()));
        }
    }
    chosen.sort_by_key(|w| w.name_any());

    let throttle = match &gateway.spec.policies.throttle_policy {
        Some(wanted) => Some(
            throttles
                .iter()
                .find(|t| same_ns(t.namespace()) && &t.name_any() == wanted)
                .ok_or_else(|| PolicyError::MissingThrottlePolicy(wanted.clone()))?,
        ),
        None => {
            let mut selecting: Vec<&ThrottlePolicy> = throttles
                .iter()
                .filter(|t| same_ns(t.namespace()) && t.spec.gateways.selects(&name, labels))
                .collect();
            selecting.sort_by_key(|t| t.name_any());
            match selecting.as_slice() {
                [] => None,
                [one] => Some(*one),
                many => {
                    let names: Vec<String> = many.iter().map(|t| t.name_any()).collect();
                    return Err(PolicyError::AmbiguousThrottlePolicy(names.join(", ")));
                }
            }
        }
    };
    Ok(AppliedPolicies {
        whitelists: chosen,
        throttle,
    })
}

/// A policy by kind and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRef<'a> {
    Whitelist(&'a str),
    Throttle(&'a str),
}

/// Whether a policy applies to `gateway`, through its selector or the
/// gateway's own reference to it.
fn applies_to(
    selector: &GatewaySelector,
    policy: PolicyRef<'_>,
    gateway: &FederationGateway,
) -> bool {
    selector.selects(&gateway.name_any(), gateway.labels())
        || match policy {
            PolicyRef::Whitelist(name) => gateway
                .spec
                .policies
                .domain_whitelists
                .iter()
                .any(|n| n == name),
            PolicyRef::Throttle(name) => {
                gateway.spec.policies.throttle_policy.as_deref() == Some(name)
            }
        }
}

/// Whether `gateway`'s applied configuration holds the policy
/// (`status.whitelists`, `status.throttlePolicy`).
fn holds(policy: PolicyRef<'_>, gateway: &FederationGateway) -> bool {
    gateway.status.as_ref().is_some_and(|s| match policy {
        PolicyRef::Whitelist(name) => s.whitelists.iter().any(|w| w == name),
        PolicyRef::Throttle(name) => s.throttle_policy.as_deref() == Some(name),
    })
}

/// The gateways among `gateways` that a policy applies to, through its selector or
/// their own references.
pub fn selected_gateways<'a>(
    selector: &GatewaySelector,
    policy: PolicyRef<'_>,
    policy_namespace: Option<&str>,
    gateways: &'a [FederationGateway],
) -> Vec<&'a FederationGateway> {
    gateways
        .iter()
        .filter(|g| g.namespace().as_deref() == policy_namespace)
        .filter(|g| applies_to(selector, policy, g))
        .collect()
}

/// Whether a change to a policy concerns `gateway`: the policy applies to
/// it now, or its applied configuration still holds it. A narrowed selector
/// or a deleted policy must reach the gateways it leaves as promptly as a
/// widened one reaches new ones: exactly what a change must re-reconcile.
pub fn concerns(
    selector: &GatewaySelector,
    policy: PolicyRef<'_>,
    policy_namespace: Option<&str>,
    gateway: &FederationGateway,
) -> bool {
    gateway.namespace().as_deref() == policy_namespace
        && (applies_to(selector, policy, gateway) || holds(policy, gateway))
}

/// Whether `gateway` reads Secret `name` of `namespace`.
pub fn reads_secret(gateway: &FederationGateway, name: &str, namespace: Option<&str>) -> bool {
    gateway.namespace().as_deref() == namespace && gateway.referenced_secrets().contains(&name)
}
