//! The gateway's NetworkPolicy (`spec.networkPolicy`): what may reach its
//! pods and what they may reach, from what the spec says they talk to.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec as PolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ports;
use crate::crd::{DatabaseEngine, FederationGatewaySpec};

/// Where `/metrics` is scraped from when the spec does not say.
const MONITORING_NAMESPACE: &str = "monitoring";
/// SQL Server's port: its connection string is a secret the operator does not read.
const SQL_SERVER_PORT: u16 = 1433;
/// The Kubernetes API: its Service's port, and the API server's own, which
/// CNIs that apply policy after the Service's translation see.
const KUBERNETES_API_PORTS: [u16; 2] = [443, 6443];

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(i32::from(port))),
        ..NetworkPolicyPort::default()
    }
}

fn to_anywhere(ports: Vec<NetworkPolicyPort>) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        ports: Some(ports),
        to: None,
    }
}

/// The port of an http(s) URL the spec names (the CRD has checked its
/// form), its scheme's default when it has none.
fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // After an IPv6 literal's closing bracket, or after the host.
    let after_host = host_port.rsplit_once(']').map_or(host_port, |(_, p)| p);
    match after_host.rsplit_once(':') {
        Some((_, port)) => port.parse().ok(),
        None if scheme.eq_ignore_ascii_case("https") => Some(443),
        None if scheme.eq_ignore_ascii_case("http") => Some(80),
        None => None,
    }
}

/// TCP ports the gateway connects out to, besides DNS: HTTPS and the
/// Kubernetes API, s2s (5269 and every static route's), the database, and
/// the ports of the Graph endpoint overrides and the OTLP collector.
fn egress_ports(spec: &FederationGatewaySpec) -> BTreeSet<u16> {
    let mut ports: BTreeSet<u16> = KUBERNETES_API_PORTS.into_iter().collect();
    ports.insert(5269);
    ports.extend(
        spec.s2s
            .static_routes
            .iter()
            .filter_map(|r| u16::try_from(r.port).ok()),
    );
    match spec.database.engine {
        DatabaseEngine::Sqlite => {}
        DatabaseEngine::Sqlserver => {
            ports.insert(SQL_SERVER_PORT);
        }
        DatabaseEngine::Postgres => {
            let port = spec.database.postgres.as_ref().and_then(|p| p.port);
            ports.insert(port.unwrap_or(xmppfed_config::PostgresConfig::DEFAULT_PORT));
        }
    }
    let tenants = spec
        .graph_tenant()
        .into_iter()
        .chain(spec.shadow_accounts.tenant.iter())
        .filter_map(|t| t.endpoints.as_ref());
    for endpoints in tenants {
        ports.extend(url_port(&endpoints.authority_url));
        ports.extend(url_port(&endpoints.graph_url));
    }
    if let Some(otlp) = &spec.telemetry.otlp_endpoint {
        ports.extend(url_port(otlp));
    }
    // Partner SIP edges: 5061 (DNS SRV may name others: extraEgress).
    if let Some(sip) = spec.sip_edge() {
        ports.insert(5061);
        let named = sip
            .routes
            .iter()
            .map(|r| r.port)
            .chain(sip.fallback.iter().map(|f| f.port));
        ports.extend(named.filter_map(|p| u16::try_from(p).ok()));
    }
    ports
}

/// The NetworkPolicy for the pods `selector` picks, or `None` when the spec
/// turns it off.
pub fn network_policy(
    spec: &FederationGatewaySpec,
    meta: ObjectMeta,
    selector: LabelSelector,
) -> Option<NetworkPolicy> {
    let asked = &spec.network_policy;
    if asked.enabled == Some(false) {
        return None;
    }
    let s2s_port = u16::try_from(spec.s2s.port).unwrap_or(5269);
    // Remote XMPP servers and partner SIP edges, from anywhere.
    let mut federation = vec![tcp(s2s_port)];
    federation.extend(
        spec.sip_edge()
            .and_then(|sip| u16::try_from(sip.port).ok())
            .map(tcp),
    );
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(federation),
        from: None,
    }];
    if spec.webhook_url.is_some() {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![tcp(ports::WEBHOOK as u16)]),
            from: asked.webhook_from.clone(),
        });
    }
    let monitoring = || {
        vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_owned(),
                        MONITORING_NAMESPACE.to_owned(),
                    )]
                    .into(),
                ),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]
    };
    ingress.push(NetworkPolicyIngressRule {
        ports: Some(vec![tcp(ports::ADMIN as u16)]),
        from: Some(asked.admin_from.clone().unwrap_or_else(monitoring)),
    });
    let dns = ["UDP", "TCP"].map(|protocol| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(53)),
        ..NetworkPolicyPort::default()
    });
    let mut egress = vec![
        to_anywhere(dns.to_vec()),
        to_anywhere(egress_ports(spec).into_iter().map(tcp).collect()),
    ];
    egress.extend(asked.extra_egress.iter().flatten().cloned());
    Some(NetworkPolicy {
        metadata: meta,
        spec: Some(PolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_urls() {
        assert_eq!(url_port("https://graph.microsoft.com/v1.0"), Some(443));
        assert_eq!(url_port("http://otel.monitoring:4318"), Some(4318));
        assert_eq!(url_port("https://[fd00::1]:8443/x?y=z"), Some(8443));
        assert_eq!(url_port("https://[fd00::1]/x"), Some(443));
        assert_eq!(url_port("https://u:p@h:9/"), Some(9));
        assert_eq!(url_port("ftp://h"), None);
    }
}
