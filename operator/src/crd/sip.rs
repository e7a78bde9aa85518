//! `spec.teams` and `spec.sip`: the route to Microsoft's side. Graph (shadow
//! accounts, `spec.tenant`) by default; SIP federation with a Skype for
//! Business Access Edge or a Teams tenant's federation host instead
//! (docs/sip-federation.md): no tenant, no shadow accounts, no licences.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::ConfigMapKeyRef;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamsSpec {
    /// `Graph` (shadow accounts through Microsoft Graph, `spec.tenant`) or
    /// `SipFederation` (a federated SIP domain, `spec.sip`).
    #[serde(default)]
    pub mode: TeamsMode,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TeamsMode {
    #[default]
    Graph,
    SipFederation,
}

/// The SIP federation edge (the gateway's `[sip]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.port) || !(self.port in [8443, 9090])").message("sip.port must not be the webhook's (8443) or the admin port (9090)"))]
pub struct SipSpec {
    /// The edge's FQDN: what the domain's `_sipfederationtls._tcp` SRV
    /// record names and the certificate carries, e.g. `sip.teams.example.com`.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::DOMAIN_RULE).message("sip.edgeFqdn must be a lower-case DNS name"))]
    pub edge_fqdn: String,
    /// The Microsoft side's SIP domain (the Teams tenant's or the Skype for
    /// Business deployment's), e.g. `contoso.com`: the gateway's user
    /// `alice@<domain>` is `sip:alice@<partnerDomain>` there.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::DOMAIN_RULE).message("sip.partnerDomain must be a lower-case DNS name"))]
    pub partner_domain: String,
    /// The edge's port, 5061 as Microsoft's edges expect.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret of type kubernetes.io/tls with the edge's certificate: from a
    /// public CA, naming `edgeFqdn`, valid for server and client
    /// authentication (the edge is both on a mutual-TLS connection).
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret: String,
    /// A key of a ConfigMap holding the PEM roots partners' certificates
    /// must chain to, instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_config_map: Option<ConfigMapKeyRef>,
    /// Fixed edges for SIP domains, ahead of DNS.
    #[serde(default)]
    #[schemars(length(max = 100), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["domain"]))]
    pub routes: Vec<SipRouteSpec>,
    /// Where the partner's edge is when DNS has no
    /// `_sipfederationtls._tcp.<partnerDomain>` record, e.g.
    /// `sipfed.online.lync.com` for a Teams tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<SipHostSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipRouteSpec {
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::DOMAIN_RULE).message("sip.routes[].domain must be a lower-case DNS name"))]
    pub domain: String,
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipHostSpec {
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_sip_port() -> i32 {
    5061
}
