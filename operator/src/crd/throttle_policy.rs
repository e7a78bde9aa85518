use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{GatewaySelector, ResourceStatus};

/// Per-user rate limits for the selected gateways.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "xmppfed.io",
    version = "v1alpha1",
    kind = "ThrottlePolicy",
    namespaced,
    shortname = "tp",
    category = "xmppfed",
    status = "ResourceStatus",
    printcolumn(
        name = "Msgs/min",
        type_ = "integer",
        json_path = ".spec.limits.messagesPerMinute"
    ),
    printcolumn(name = "Burst", type_ = "integer", json_path = ".spec.limits.burst"),
    printcolumn(
        name = "Gateways",
        type_ = "string",
        json_path = ".status.selectedGateways"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ThrottlePolicySpec {
    /// The gateways this policy applies to.
    pub gateways: GatewaySelector,
    /// Limits for every user.
    pub limits: ThrottleLimitsSpec,
    /// Limits for particular users (UPN or bare JID), replacing `limits` for them.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["user"]))]
    pub overrides: Vec<ThrottleOverride>,
}

/// Token-bucket limits, all per user and per minute. Every value must be at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleLimitsSpec {
    #[schemars(range(min = 1))]
    pub messages_per_minute: u32,
    #[schemars(range(min = 1))]
    pub bytes_per_minute: u64,
    #[schemars(range(min = 1))]
    pub presence_updates_per_minute: u32,
    /// Events allowed at once above the steady rate.
    #[schemars(range(min = 1))]
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleOverride {
    /// A Teams UPN or a remote bare JID.
    #[schemars(length(min = 3, max = 3071))]
    pub user: String,
    pub limits: ThrottleLimitsSpec,
}
