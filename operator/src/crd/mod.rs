//! The custom resources of `xmppfed.io/v1alpha1`. `crdgen` renders them into
//! `crds/`; CI fails when the two drift apart.

// kube's `printcolumn(...)` repeats keys such as `type_` per column, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

mod common;
mod domain_whitelist;
mod federation_gateway;
mod sip;
mod throttle_policy;

pub use common::{Condition, GatewaySelector, ResourceStatus, SecretKeyRef};
pub use domain_whitelist::{DomainWhitelist, DomainWhitelistSpec};
pub use federation_gateway::{
    BridgeSpec, ChatNotifications, ConfigMapKeyRef, DatabaseEngine, DatabaseSpec, EndpointOverride,
    FederationGateway, FederationGatewaySpec, FederationGatewayStatus, GraphLimitsSpec,
    LicenceAssignment, LocalPart, NetworkPolicySpec, OutOfOffice, PolicySelection, PostgresSpec,
    PostgresSslMode, S2sServiceType, S2sSpec, ShadowAccountSpec, StaticRouteSpec, Subscriptions,
    TelemetrySpec, TenantCloud, TenantSpec,
};
pub use sip::{SipHostSpec, SipRouteSpec, SipSpec, TeamsMode, TeamsSpec};
pub use throttle_policy::{
    ThrottleLimitsSpec, ThrottleOverride, ThrottlePolicy, ThrottlePolicySpec,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const GROUP: &str = "xmppfed.io";
pub const VERSION: &str = "v1alpha1";

/// CEL: an RFC 1123 DNS name (the shape of an XMPP domain's A-label form).
pub(crate) const DOMAIN_RULE: &str = r"self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$') && size(self) <= 253";

/// A Kubernetes quantity (`1Gi`, `500m`, `1e3`), as the API server parses
/// one for its own types; a CRD field gets no such check unless it says so.
pub(crate) const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// CEL: an absolute https URL with a host.
pub(crate) const HTTPS_URL_RULE: &str =
    "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != ''";

/// Every CRD with the file name it is written to under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("federationgateways.yaml", bounded(FederationGateway::crd())),
        ("domainwhitelists.yaml", bounded(DomainWhitelist::crd())),
        ("throttlepolicies.yaml", bounded(ThrottlePolicy::crd())),
    ]
}

/// The API server does not enforce an integer's `format` nor check
/// quantities in a CRD: without bounds, `4294967296` in a `uint32` field is
/// stored, and then no reconcile can decode the object. Every integer gets
/// the range of the Rust type it lands in, every quantity the quantity
/// pattern, so `kubectl apply` refuses them and names the field.
fn bounded(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    bound(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

fn bound(node: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let Value::Object(map) = node else {
        if let Value::Array(items) = node {
            items.iter_mut().for_each(bound);
        }
        return;
    };
    let range = match map.get("format").and_then(Value::as_str) {
        Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        Some("uint32") => Some((0, i64::from(u32::MAX))),
        Some("uint16") => Some((0, i64::from(u16::MAX))),
        Some("uint8") => Some((0, i64::from(u8::MAX))),
        // The API server holds integers as int64 and bounds as float64: 2^53
        // - 1, the largest integer every JSON and YAML tool holds exactly.
        Some("uint64") => Some((0, (1 << 53) - 1)),
        _ => None,
    };
    if let Some((low, high)) = range {
        // schemars writes bounds as floats (`1.0`), as the CRD types hold them.
        let bound = |key: &str| map.get(key).and_then(Value::as_f64).map(|b| b as i64);
        let min = bound("minimum").map_or(low, |m| m.max(low));
        let max = bound("maximum").map_or(high, |m| m.min(high));
        map.insert("minimum".into(), json!(min));
        map.insert("maximum".into(), json!(max));
    }
    let quantity = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        && map
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| d.starts_with("Quantity is"));
    if quantity {
        map.insert("pattern".into(), json!(QUANTITY_PATTERN));
    }
    map.values_mut().for_each(bound);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every integer field of every CRD, with its schema.
    fn integers<'a>(path: String, node: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match node {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("integer") {
                    out.push((path.clone(), node));
                }
                for (k, v) in map {
                    integers(format!("{path}.{k}"), v, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    integers(format!("{path}[{i}]"), v, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_integer_is_bounded_by_the_type_it_lands_in() {
        for (file, crd) in all() {
            let value = serde_json::to_value(&crd).unwrap();
            let mut found = Vec::new();
            integers(file.to_owned(), &value, &mut found);
            assert!(!found.is_empty());
            for (path, schema) in found {
                // Written by the operator only, or not a field at all.
                if path.contains(".status.") || path.contains("additionalPrinterColumns") {
                    continue;
                }
                let (min, max) = (schema["minimum"].as_f64(), schema["maximum"].as_f64());
                assert!(min.is_some() && max.is_some(), "{path} unbounded: {schema}");
                if schema["format"] == "uint32" {
                    assert!(max <= Some(f64::from(u32::MAX)), "{path}: {schema}");
                }
            }
        }
    }

    #[test]
    fn quantities_carry_the_quantity_pattern() {
        let (_, gateway) = &all()[0];
        let v = serde_json::to_value(gateway).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for which in ["limits", "requests"] {
            let q = &spec["resources"]["properties"][which]["additionalProperties"];
            assert_eq!(q["pattern"], QUANTITY_PATTERN, "{which}: {q}");
        }
        let storage = &spec["database"]["properties"]["storageSize"];
        assert_eq!(storage["pattern"], QUANTITY_PATTERN, "{storage}");
        // The cluster suite (tests/cluster_validation.rs) has the API
        // server apply it.
    }
}
