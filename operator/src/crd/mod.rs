//! The custom resources of `xmppfed.io/v1alpha1`. `crdgen` renders them into
//! `crds/`; CI fails when the two drift apart.

// kube's `printcolumn(...)` repeats keys such as `type_` per column, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

mod common;
mod domain_whitelist;
mod federation_gateway;
mod throttle_policy;

pub use common::{Condition, GatewaySelector, ResourceStatus, SecretKeyRef};
pub use domain_whitelist::{DomainWhitelist, DomainWhitelistSpec};
pub use federation_gateway::{
    BridgeSpec, ChatNotifications, ConfigMapKeyRef, DatabaseEngine, DatabaseSpec, EndpointOverride,
    FederationGateway, FederationGatewaySpec, FederationGatewayStatus, GraphLimitsSpec,
    LicenceAssignment, LocalPart, OutOfOffice, PolicySelection, S2sServiceType, S2sSpec,
    ShadowAccountSpec, StaticRouteSpec, Subscriptions, TelemetrySpec, TenantCloud, TenantSpec,
};
pub use throttle_policy::{
    ThrottleLimitsSpec, ThrottleOverride, ThrottlePolicy, ThrottlePolicySpec,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const GROUP: &str = "xmppfed.io";
pub const VERSION: &str = "v1alpha1";

/// CEL: an RFC 1123 DNS name (the shape of an XMPP domain's A-label form).
pub(crate) const DOMAIN_RULE: &str = r"self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$') && size(self) <= 253";

/// Every CRD with the file name it is written to under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("federationgateways.yaml", FederationGateway::crd()),
        ("domainwhitelists.yaml", DomainWhitelist::crd()),
        ("throttlepolicies.yaml", ThrottlePolicy::crd()),
    ]
}
