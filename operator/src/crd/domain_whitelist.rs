use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{GatewaySelector, ResourceStatus};

/// Who may federate through the selected gateways: remote XMPP domains and
/// internal Teams users. Several whitelists selecting one gateway are merged.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "xmppfed.io",
    version = "v1alpha1",
    kind = "DomainWhitelist",
    namespaced,
    shortname = "dwl",
    category = "xmppfed",
    status = "ResourceStatus",
    printcolumn(
        name = "Domains",
        type_ = "string",
        json_path = ".spec.remoteDomains",
        description = "Allowed remote XMPP domains"
    ),
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
#[x_kube(validation = Rule::new("size(self.remoteDomains) + size(self.internalUsers) + size(self.internalGroups) > 0").message("a DomainWhitelist must allow at least one domain, user or group"))]
pub struct DomainWhitelistSpec {
    /// The gateways this whitelist applies to.
    pub gateways: GatewaySelector,
    /// Remote XMPP domains, lower case: exact (`partner.example`) or every subdomain (`*.partner.example`).
    #[serde(default)]
    #[schemars(
        length(max = 2000),
        inner(
            length(max = 255),
            regex(
                pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
            )
        )
    )]
    pub remote_domains: Vec<String>,
    /// Teams users allowed to federate, by user principal name.
    #[serde(default)]
    #[schemars(
        length(max = 10000),
        inner(
            length(min = 3, max = 113),
            regex(pattern = r"^[^@\s]+@[A-Za-z0-9.-]+$")
        )
    )]
    pub internal_users: Vec<String>,
    /// Entra ID groups whose members are allowed, by object id.
    #[serde(default)]
    #[schemars(
        length(max = 1000),
        inner(regex(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))
    )]
    pub internal_groups: Vec<String>,
}
