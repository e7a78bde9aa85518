use super::*;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn policy(extra_spec: &str) -> Option<NetworkPolicy> {
    policy_of(&gateway(extra_spec, ""))
}

fn policy_of(g: &FederationGateway) -> Option<NetworkPolicy> {
    plan(g, &[], &[], 1, &SETTINGS)
        .unwrap()
        .objects
        .network_policy
}

fn egress_ports(p: &NetworkPolicy) -> Vec<i32> {
    let mut ports: Vec<i32> = p
        .spec
        .as_ref()
        .unwrap()
        .egress
        .iter()
        .flatten()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| match p.port {
            Some(IntOrString::Int(n)) if p.protocol.as_deref() == Some("TCP") => Some(n),
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[test]
fn the_network_policy_follows_what_the_gateway_talks_to() {
    let p = policy(sqlite()).expect("made by default");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    // No webhookUrl: no webhook rule; s2s from anywhere; admin from monitoring.
    let ingress = spec.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    assert!(ingress[0].from.is_none());
    assert_eq!(egress_ports(&p), [53, 443, 5269, 6443]);

    let mut g = gateway(
        "  replicas: 2\n  webhookUrl: https://hooks.contoso.example\n  \
         telemetry: { otlpEndpoint: 'http://otel.monitoring:4318' }\n  \
         database: { engine: postgres, postgres: { host: pg, port: 6432, database: x, user: u, \
         passwordSecret: { name: pg, key: p } } }\n  \
         networkPolicy:\n    webhookFrom: [{ namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: ingress-nginx } } }]\n    \
         extraEgress: [{ ports: [{ port: 3128 }] }]\n",
        "",
    );
    g.spec.s2s.static_routes = vec![crate::crd::StaticRouteSpec {
        domain: "partner.example".into(),
        host: "10.0.0.9".into(),
        port: 5270,
    }];
    let p = policy_of(&g).unwrap();
    assert_eq!(egress_ports(&p), [53, 443, 4318, 5269, 5270, 6432, 6443]);
    let rules = p.spec.as_ref().unwrap().egress.as_ref().unwrap();
    assert!(
        serde_json::to_string(rules).unwrap().contains("3128"),
        "extra egress appended"
    );
    let webhook = &p.spec.as_ref().unwrap().ingress.as_ref().unwrap()[1];
    assert_eq!(
        webhook.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(8443))
    );
    assert!(
        serde_json::to_string(&webhook.from)
            .unwrap()
            .contains("ingress-nginx")
    );

    assert!(
        policy(&format!(
            "{}  networkPolicy: {{ enabled: false }}\n",
            sqlite()
        ))
        .is_none()
    );
}
