//! Which route to Microsoft's side the gateway takes (`[teams]`), and the SIP
//! federation edge's settings (`[sip]`, docs/sip-federation.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::is_valid_domain;

/// `[teams]`: the route to Microsoft's side.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TeamsConfig {
    pub mode: TeamsMode,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TeamsMode {
    /// Microsoft Graph and shadow accounts (`[graph]`).
    #[default]
    Graph,
    /// SIP federation with a Skype for Business Access Edge or Microsoft's
    /// federation host (`[sip]`).
    SipFederation,
}

/// `[sip]`: the federation edge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// Mutual TLS; federation uses 5061.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The edge's FQDN: our Via and Contact, and what our certificate names.
    pub edge_fqdn: String,
    /// The Microsoft side's SIP domain: `alice@<xmpp.domain>` is `sip:alice@<this>`.
    pub partner_domain: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The roots peers' certificates must chain to; the system's without it
    /// (Microsoft's edges carry public CAs' certificates).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where a domain's edge is, ahead of DNS (as `[s2s] static_routes`).
    #[serde(default)]
    pub routes: Vec<SipRoute>,
    /// Where the partner's edge is when DNS has no
    /// `_sipfederationtls._tcp.<partner_domain>` record; Teams tenants'
    /// federation host is `sipfed.online.lync.com`.
    #[serde(default)]
    pub fallback: Option<SipHost>,
}

/// A fixed edge for a SIP domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SipRoute {
    pub domain: String,
    pub host: String,
    #[serde(default = "default_sip_port")]
    pub port: u16,
}

/// An edge's host name (what its certificate must prove) and port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SipHost {
    pub host: String,
    #[serde(default = "default_sip_port")]
    pub port: u16,
}

fn default_sip_port() -> u16 {
    5061
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5061))
}

pub(crate) fn validate(
    teams: &TeamsConfig,
    sip: Option<&SipConfig>,
    graph: bool,
    err: &mut impl FnMut(&str, String),
) {
    if teams.mode == TeamsMode::SipFederation && graph {
        err(
            "graph",
            "not used with teams.mode sip-federation (the route needs no tenant): remove [graph], or take mode graph".to_owned(),
        );
    }
    match (teams.mode, sip) {
        (TeamsMode::SipFederation, None) => err(
            "sip",
            "required when teams.mode is sip-federation".to_owned(),
        ),
        (TeamsMode::SipFederation, Some(sip)) => {
            for (field, value) in [
                ("sip.edge_fqdn", &sip.edge_fqdn),
                ("sip.partner_domain", &sip.partner_domain),
            ] {
                if !is_valid_domain(value) {
                    err(field, format!("`{value}` is not a valid domain name"));
                }
            }
            for (i, route) in sip.routes.iter().enumerate() {
                if !is_valid_domain(&route.domain) {
                    err(
                        &format!("sip.routes[{i}].domain"),
                        format!("`{}` is not a valid domain name", route.domain),
                    );
                }
            }
        }
        (TeamsMode::Graph, _) => {}
    }
}
