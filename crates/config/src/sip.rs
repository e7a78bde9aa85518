//! Which route to Microsoft's side the gateway takes (`[teams]`), and the SIP
//! federation edge's settings (`[sip]`, docs/sip-federation.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{StaticRoute, is_valid_domain};

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
    /// The roots peers' certificates must chain to.
    pub ca_file: PathBuf,
    /// Where the partner's edge is, before DNS SRV (`_sipfederationtls._tcp`).
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5061))
}

pub(crate) fn validate(
    teams: &TeamsConfig,
    sip: Option<&SipConfig>,
    err: &mut impl FnMut(&str, String),
) {
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
            if !sip.routes.iter().any(|r| r.domain == sip.partner_domain) {
                err(
                    "sip.routes",
                    format!(
                        "name where {}'s edge is (DNS SRV routing is not built yet)",
                        sip.partner_domain
                    ),
                );
            }
        }
        (TeamsMode::Graph, _) => {}
    }
}
