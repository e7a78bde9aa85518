use super::*;
use crate::policy::{PolicyRef, concerns, reads_secret, selected_gateways};
use crate::render::paths;
use xmppfed_config::{GatewayConfig, StoreConfig};

/// Policies: which apply to a gateway, and which gateways a change reaches.
mod network;
mod policies;
mod sip;

/// Any base64 text: rendering only copies the key into the configuration.
const TEST_KEY: &str = "dGVzdC1rZXk=";
const SETTINGS: Settings<'static> = Settings {
    licence_public_key: Some(TEST_KEY),
    gateway_cluster_role: "xmppfed-operator-gateway",
};

fn gateway(extra_spec: &str, labels: &str) -> FederationGateway {
    serde_yaml_ng::from_str(&format!(
        r#"
apiVersion: xmppfed.io/v1alpha1
kind: FederationGateway
metadata:
  name: contoso
  namespace: xmpp
  uid: 6f1c2b1e-0000-4000-8000-000000000001
  labels: {{{labels}}}
spec:
  domain: teams.contoso.example
  image: ghcr.io/xmppfed/gateway:0.1.0
  tenant:
    tenantId: 8f0d2a8e-1b2c-4d5e-9f00-112233445566
    clientId: 0a1b2c3d-4e5f-6789-abcd-ef0123456789
    clientSecret: {{ name: graph-app, key: client-secret }}
  shadowAccounts:
    upnDomain: xmpp.contoso.example
    licenceSku: 3b555118-da6a-4418-894f-7df1e2096870
    usageLocation: GB
  s2s:
    tlsSecret: contoso-tls
  licenceSecret: {{ name: xmppfed-licence, key: licence }}
{extra_spec}"#
    ))
    .unwrap()
}

/// The gateway's pod template.
fn pod_spec(o: &GatewayObjects) -> &k8s_openapi::api::core::v1::PodSpec {
    o.stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn sqlite() -> &'static str {
    "  database: { engine: sqlite }\n"
}

fn whitelist(name: &str, namespace: &str, selector: &str, domains: &[&str]) -> DomainWhitelist {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: xmppfed.io/v1alpha1\nkind: DomainWhitelist\nmetadata: {{ name: {name}, namespace: {namespace} }}\n\
         spec:\n  gateways: {selector}\n  remoteDomains: {domains:?}\n  internalUsers: [Alice@Contoso.example]\n"
    ))
    .unwrap()
}

fn throttle(name: &str, selector: &str, per_minute: u32) -> ThrottlePolicy {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: xmppfed.io/v1alpha1\nkind: ThrottlePolicy\nmetadata: {{ name: {name}, namespace: xmpp }}\n\
         spec:\n  gateways: {selector}\n  limits: {{ messagesPerMinute: {per_minute}, bytesPerMinute: 100000, presenceUpdatesPerMinute: 10, burst: 5 }}\n\
         \x20 overrides:\n  - user: Boss@Contoso.example\n    limits: {{ messagesPerMinute: 600, bytesPerMinute: 1000000, presenceUpdatesPerMinute: 60, burst: 50 }}\n"
    ))
    .unwrap()
}

/// The minimal gateway's pod: one replica with its volume, the config's hash
/// on the template, non-root and locked down, probed, and every secret the
/// configuration names mounted where it says.
fn pod_is_locked_down_and_mounts_what_the_config_names(plan: &Plan, config: &GatewayConfig) {
    let o = &plan.objects;
    let sts = o.stateful_set.spec.as_ref().unwrap();
    assert_eq!(sts.replicas, Some(1));
    assert_eq!(sts.volume_claim_templates.as_ref().map(Vec::len), Some(1));
    assert!(o.pod_disruption_budget.is_none(), "one replica: no PDB");
    let template = &sts.template;
    assert_eq!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[render::CONFIG_HASH_ANNOTATION],
        plan.restart_hash
    );
    let pod = template.spec.as_ref().unwrap();
    // A token: the pod keeps its role label (remote_servers_reach_the_replica_that_runs_the_bridge).
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    assert_eq!(probe_path(&c.liveness_probe), "/healthz");
    // Every secret the config names is mounted where the config says.
    let mounts: Vec<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for (_, secret) in config.secret_refs() {
        let xmppfed_config::SecretRef::File(path) = secret else {
            panic!("operator-rendered secrets are files")
        };
        let dir = path.parent().unwrap().to_str().unwrap();
        assert!(mounts.contains(&dir), "{dir} not mounted: {mounts:?}");
    }
}

#[test]
fn minimal_gateway_builds_objects_the_gateway_accepts() {
    let g = gateway(sqlite(), "");
    let plan = plan(&g, &[], &[], 1, &SETTINGS).unwrap();

    // The rendered file is one the gateway itself accepts.
    let config = GatewayConfig::from_toml_str(&plan.config_toml).unwrap();
    assert_eq!(config.xmpp.domain, "teams.contoso.example");
    assert_eq!(
        config.store,
        StoreConfig::Sqlite {
            path: format!("{}/xmppfed.db", paths::DATA_DIR).into()
        }
    );
    assert_eq!(
        config.s2s.tls_cert_file.as_deref(),
        Some(std::path::Path::new("/etc/xmppfed/s2s-tls/tls.crt"))
    );
    assert!(
        config.allow.remote_domains.is_empty(),
        "no whitelist: nothing allowed"
    );
    let licence = config.licence.as_ref().unwrap();
    assert_eq!(licence.public_key, TEST_KEY);
    assert_eq!(
        licence.file,
        std::path::Path::new("/etc/xmppfed/licence/licence")
    );

    pod_is_locked_down_and_mounts_what_the_config_names(&plan, &config);

    let o = &plan.objects;
    let services: Vec<(String, Option<String>)> = o
        .services
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap(),
                s.spec.as_ref().unwrap().type_.clone(),
            )
        })
        .collect();
    assert_eq!(
        services,
        [
            ("contoso-s2s".to_owned(), Some("LoadBalancer".to_owned())),
            ("contoso-webhook".to_owned(), Some("ClusterIP".to_owned())),
            ("contoso-headless".to_owned(), None),
        ]
    );

    // Sized by default (QoS Burstable, not BestEffort).
    let container = &pod_spec(o).containers[0];
    let resources = container.resources.as_ref().unwrap();
    assert_eq!(resources, &crate::render::default_resources());
    let requests = resources.requests.as_ref().unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));

    // Every child is owned by the gateway, as its controller.
    let metas = [
        &o.config_map.metadata,
        &o.stateful_set.metadata,
        &o.service_account.metadata,
        &o.services[0].metadata,
        &o.services[1].metadata,
        &o.services[2].metadata,
    ];
    for m in metas {
        let owners = m.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "6f1c2b1e-0000-4000-8000-000000000001");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(
            owners[0].block_owner_deletion,
            Some(true),
            "foreground deletion waits"
        );
        assert_eq!(m.namespace.as_deref(), Some("xmpp"));
    }
}

#[test]
fn missing_references_and_bad_specs_are_invalid_with_the_field_named() {
    let g = gateway(
        &format!("{}  policies: {{ domainWhitelists: [gone] }}\n", sqlite()),
        "",
    );
    let e = plan(&g, &[], &[], 1, &SETTINGS).unwrap_err();
    assert_eq!(e.reason(), "MissingPolicy");
    assert!(e.to_string().contains("`gone`"), "{e}");

    let mut g = gateway(sqlite(), "");
    g.spec.s2s.tls_secret = None;
    let e = plan(&g, &[], &[], 1, &SETTINGS).unwrap_err();
    assert!(
        e.to_string().starts_with("spec.s2s.tlsSecret: required"),
        "{e}"
    );

    let mut g = gateway(sqlite(), "");
    g.spec.shadow_accounts.upn_domain = None;
    assert!(
        plan(&g, &[], &[], 1, &SETTINGS)
            .unwrap_err()
            .to_string()
            .contains("spec.shadowAccounts.upnDomain")
    );

    // Teams serves only licensed users: the SKU and the usage location are required.
    let mut g = gateway(sqlite(), "");
    g.spec.shadow_accounts.licence_sku = None;
    let e = plan(&g, &[], &[], 1, &SETTINGS).unwrap_err().to_string();
    assert!(
        e.contains("spec.shadowAccounts.licenceSku") && e.contains("licensed users"),
        "{e}"
    );
    let mut g = gateway(sqlite(), "");
    g.spec.shadow_accounts.usage_location = None;
    let e = plan(&g, &[], &[], 1, &SETTINGS).unwrap_err().to_string();
    assert!(e.contains("spec.shadowAccounts.usageLocation"), "{e}");

    // What the schema cannot catch, the gateway's own validation does.
    let mut g = gateway(sqlite(), "");
    g.spec.shadow_accounts.licence_sku = Some("not-a-guid".into());
    let e = plan(&g, &[], &[], 1, &SETTINGS).unwrap_err();
    assert!(e.to_string().contains("shadow_accounts.licence_sku"), "{e}");

    let mut g = gateway(sqlite(), "");
    g.metadata.uid = None;
    assert_eq!(
        plan(&g, &[], &[], 1, &SETTINGS).unwrap_err(),
        InvalidSpec::NoUid
    );
}

#[test]
fn sqlserver_with_replicas_gets_a_pdb_and_no_volume() {
    let g = gateway(
        "  replicas: 3\n  database: { engine: sqlserver, connectionStringSecret: { name: db, key: conn } }\n",
        "",
    );
    let plan = plan(&g, &[], &[], 2, &SETTINGS).unwrap();
    let sts = plan.objects.stateful_set.spec.as_ref().unwrap();
    assert_eq!(
        sts.replicas,
        Some(2),
        "the licensed count, not the asked one"
    );
    assert!(sts.volume_claim_templates.is_none());
    let pdb = plan.objects.pod_disruption_budget.as_ref().unwrap();
    assert_eq!(
        pdb.spec.as_ref().unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let config = GatewayConfig::from_toml_str(&plan.config_toml).unwrap();
    assert_eq!(
        config.store,
        StoreConfig::Sqlserver {
            connection_string: xmppfed_config::SecretRef::File("/etc/xmppfed/database/conn".into())
        }
    );
}

#[test]
fn postgres_renders_its_server_login_and_ca_and_mounts_their_secrets() {
    let g = gateway(
        "  replicas: 2\n  database:\n    engine: postgres\n    postgres: { host: pg-rw.db.svc, database: xmppfed, \
         user: gateway, passwordSecret: { name: pg-app, key: password }, caSecret: { name: pg-ca, key: ca.crt } }\n",
        "",
    );
    assert_eq!(
        g.referenced_secrets()[..],
        [
            "xmppfed-licence",
            "graph-app",
            "contoso-tls",
            "pg-app",
            "pg-ca"
        ][..]
    );
    let plan = plan(&g, &[], &[], 2, &SETTINGS).unwrap();
    let sts = plan.objects.stateful_set.spec.as_ref().unwrap();
    assert_eq!(sts.replicas, Some(2));
    assert!(
        sts.volume_claim_templates.is_none(),
        "no volume: the data is in PostgreSQL"
    );
    let pod = sts.template.spec.as_ref().unwrap();
    let secret_of = |volume: &str| {
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == volume)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone())
    };
    assert_eq!(secret_of("database").as_deref(), Some("pg-app"));
    assert_eq!(secret_of("database-ca").as_deref(), Some("pg-ca"));
    let config = GatewayConfig::from_toml_str(&plan.config_toml).unwrap();
    assert_eq!(
        config.store,
        StoreConfig::Postgres(xmppfed_config::PostgresConfig {
            host: "pg-rw.db.svc".into(),
            port: 5432,
            database: "xmppfed".into(),
            user: "gateway".into(),
            password: xmppfed_config::SecretRef::File("/etc/xmppfed/database/password".into()),
            sslmode: xmppfed_config::PostgresSslMode::VerifyFull,
            ca_file: Some("/etc/xmppfed/database-ca/ca.crt".into()),
            pool_size: 8,
        })
    );
}

#[test]
fn bridge_settings_render_into_the_gateway_configuration() {
    let mut g = gateway(
        &format!(
            "{}  bridge: {{ localPart: wholeUpn, subscriptions: refuse, outOfOffice: unavailable, \
             presencePollIntervalMs: 2000, messageExpirySeconds: 600, leaderLeaseSeconds: 30, \
             graphLimits: {{ chatMessageSendPerSecond: 10, perChatIntervalMs: 2000 }} }}\n",
            sqlite()
        ),
        "",
    );
    g.spec.shadow_accounts.usage_location = Some("GB".into());
    g.spec.shadow_accounts.remove_unused_after_days = Some(30);
    let config =
        GatewayConfig::from_toml_str(&plan(&g, &[], &[], 1, &SETTINGS).unwrap().config_toml)
            .unwrap();
    assert_eq!(config.shadow_accounts.usage_location.as_deref(), Some("GB"));
    assert_eq!(config.shadow_accounts.remove_unused_after_days, 30);
    assert_eq!(
        config.xmpp.local_part,
        xmppfed_config::LocalPartSource::WholeUpn
    );
    assert_eq!(
        config.presence.subscriptions,
        xmppfed_config::SubscriptionPolicy::Refuse
    );
    assert_eq!(
        config.presence.out_of_office,
        xmppfed_config::OutOfOfficeAs::Unavailable
    );
    assert_eq!(config.presence.poll_interval_ms, 2000);
    assert_eq!(config.messages.expiry_secs, 600);
    assert_eq!(config.leader.lease_secs, 30);
    let limits = &config.graph.as_ref().unwrap().limits;
    assert_eq!(
        (
            limits.chat_message_send_per_second,
            limits.per_chat_interval_ms
        ),
        (10, 2000)
    );
    assert_eq!(
        limits.presence_per_second,
        xmppfed_config::GraphLimits::default().presence_per_second,
        "unset limits keep the gateway's defaults"
    );
    // Unset: the gateway's defaults.
    let g = gateway(sqlite(), "");
    let config =
        GatewayConfig::from_toml_str(&plan(&g, &[], &[], 1, &SETTINGS).unwrap().config_toml)
            .unwrap();
    assert_eq!(config.presence, xmppfed_config::PresenceConfig::default());
    assert_eq!(config.messages, xmppfed_config::MessagesConfig::default());
    assert_eq!(config.leader, xmppfed_config::LeaderConfig::default());
    assert_eq!(config.xmpp.local_part, xmppfed_config::LocalPartSource::Upn);
    assert_eq!(config.shadow_accounts.remove_unused_after_days, 90);
}

#[test]
fn remote_servers_reach_the_replica_that_runs_the_bridge() {
    let g = gateway(
        "  replicas: 3\n  database: { engine: sqlserver, connectionStringSecret: { name: db, key: conn } }\n",
        "",
    );
    let o = plan(&g, &[], &[], 3, &SETTINGS).unwrap().objects;
    let selector = |name: &str| {
        o.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.spec.as_ref()?.selector.clone())
            .unwrap()
    };
    let pod_labels = o
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    // The s2s Service: the gateway's pods, and of those the leader only.
    let s2s = selector("contoso-s2s");
    assert_eq!(
        s2s.get("xmppfed.io/role").map(String::as_str),
        Some("leader")
    );
    assert!(
        s2s.iter()
            .all(|(k, v)| k == "xmppfed.io/role" || pod_labels.get(k) == Some(v))
    );
    // The webhook (notifications go to the shared store) and the headless
    // Service: every replica; no pod carries the role label from the template
    // (each sets its own).
    for name in ["contoso-webhook", "contoso-headless"] {
        assert!(!selector(name).contains_key("xmppfed.io/role"), "{name}");
    }
    assert!(!pod_labels.contains_key("xmppfed.io/role"));
    each_pod_may_label_itself_and_nothing_else(&o);
}

/// Each pod may label itself: a token, its namespace, and a Role that lets
/// the gateway's account patch the StatefulSet's pods, by name, and nothing else.
fn each_pod_may_label_itself_and_nothing_else(o: &GatewayObjects) {
    let pod = pod_spec(o);
    assert_eq!(pod.automount_service_account_token, Some(true));
    let env = pod.containers[0].env.as_ref().unwrap();
    let from_field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(from_field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(from_field("POD_UID").as_deref(), Some("metadata.uid"));
    assert_eq!(
        from_field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let binding = &o.pod_role_binding;
    assert_eq!(binding.metadata.name.as_deref(), Some("contoso-pod-label"));
    assert_eq!(binding.metadata.namespace.as_deref(), Some("xmpp"));
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "xmppfed-operator-gateway"),
        "the chart's gateway ClusterRole, which the operator may bind but does not hold"
    );
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        (
            "ServiceAccount",
            pod.service_account_name.as_deref().unwrap(),
            Some("xmpp")
        )
    );
}

#[test]
fn a_national_cloud_and_an_endpoint_override_reach_the_gateway_and_status() {
    use crate::crd::{ConfigMapKeyRef, EndpointOverride, TenantCloud};
    let mut g = gateway(sqlite(), "");
    let plain = plan(&g, &[], &[], 1, &SETTINGS).unwrap();
    assert_eq!(
        plain.graph_endpoints.as_deref(),
        Some(
            "global cloud: sign-in https://login.microsoftonline.com, Graph https://graph.microsoft.com/v1.0"
        )
    );
    assert!(!plain.endpoint_override);

    g.spec.tenant.as_mut().unwrap().cloud = Some(TenantCloud::USGovernment);
    let gcc_high = plan(&g, &[], &[], 1, &SETTINGS).unwrap();
    let config = GatewayConfig::from_toml_str(&gcc_high.config_toml).unwrap();
    let graph = config.graph.unwrap();
    assert_eq!(graph.authority(), "https://login.microsoftonline.us");
    assert_eq!(graph.graph(), "https://graph.microsoft.us/v1.0");
    assert!(!gcc_high.endpoint_override);

    g.spec.tenant.as_mut().unwrap().endpoints = Some(EndpointOverride {
        authority_url: "https://10.96.0.50".into(),
        graph_url: "https://10.96.0.50/v1.0".into(),
        ca_config_map: Some(ConfigMapKeyRef {
            name: "graph-ca".into(),
            key: "ca.crt".into(),
        }),
    });
    let overridden = plan(&g, &[], &[], 1, &SETTINGS).unwrap();
    assert!(overridden.endpoint_override);
    assert_eq!(
        overridden.graph_endpoints.as_deref(),
        Some(
            "override of the us-gov cloud: sign-in https://10.96.0.50, Graph https://10.96.0.50/v1.0"
        )
    );
    let config = GatewayConfig::from_toml_str(&overridden.config_toml).unwrap();
    let graph = config.graph.unwrap();
    assert_eq!(graph.graph(), "https://10.96.0.50/v1.0");
    let ca = format!("{}/ca.crt", paths::GRAPH_CA_DIR);
    assert_eq!(graph.ca_file.as_deref(), Some(std::path::Path::new(&ca)));
    // The CA's ConfigMap is mounted where the configuration names it.
    assert!(mounts_config_map(
        &overridden,
        "graph-ca",
        "graph-ca",
        paths::GRAPH_CA_DIR
    ));
    assert!(
        config.s2s.trust_roots_file.is_none(),
        "the system's roots for s2s"
    );
}

/// Whether the plan's pod mounts ConfigMap `config_map` as `volume` at `dir`.
fn mounts_config_map(plan: &Plan, volume: &str, config_map: &str, dir: &str) -> bool {
    let Some(pod) = plan
        .objects
        .stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
    else {
        return false;
    };
    let has_volume =
        pod.volumes.iter().flatten().any(|v| {
            v.name == volume && v.config_map.as_ref().is_some_and(|c| c.name == config_map)
        });
    let mounted = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == volume && m.mount_path == dir);
    has_volume && mounted
}

#[test]
fn a_private_pki_for_s2s_is_mounted_and_named_in_the_configuration() {
    use crate::crd::ConfigMapKeyRef;
    let mut g = gateway(sqlite(), "");
    g.spec.s2s.trusted_ca_config_map = Some(ConfigMapKeyRef {
        name: "partner-roots".into(),
        key: "roots.pem".into(),
    });
    let planned = plan(&g, &[], &[], 1, &SETTINGS).unwrap();
    let config = GatewayConfig::from_toml_str(&planned.config_toml).unwrap();
    let roots = format!("{}/roots.pem", paths::S2S_CA_DIR);
    assert_eq!(
        config.s2s.trust_roots_file.as_deref(),
        Some(std::path::Path::new(&roots))
    );
    assert!(mounts_config_map(
        &planned,
        "s2s-ca",
        "partner-roots",
        paths::S2S_CA_DIR
    ));
}

#[test]
fn a_tenant_of_their_own_for_the_shadow_accounts_reaches_the_gateway_with_its_secret() {
    let mut g = gateway(sqlite(), "");
    g.spec.shadow_accounts.tenant = Some(
        serde_yaml_ng::from_str(
            "tenantId: 9e0d2a8e-1b2c-4d5e-9f00-112233445577\n\
             clientId: 1a1b2c3d-4e5f-6789-abcd-ef0123456789\n\
             clientSecret: { name: shadow-tenant-app, key: client-secret }\n\
             endpoints: { authorityUrl: 'https://10.96.0.51', graphUrl: 'https://10.96.0.51/v1.0',\n\
             \x20 caConfigMap: { name: shadow-graph-ca, key: ca.crt } }\n",
        )
        .unwrap(),
    );
    let plan = plan(&g, &[], &[], 1, &SETTINGS).unwrap();
    let config = GatewayConfig::from_toml_str(&plan.config_toml).unwrap();
    config.validate().unwrap();
    let tenant = config.shadow_accounts.tenant.as_ref().unwrap();
    assert_eq!(tenant.tenant_id, "9e0d2a8e-1b2c-4d5e-9f00-112233445577");
    assert_eq!(tenant.graph(), "https://10.96.0.51/v1.0");
    let secret = format!("{}/client-secret", paths::SHADOW_TENANT_SECRET_DIR);
    assert_eq!(
        tenant.client_secret,
        Some(xmppfed_config::SecretRef::File(secret.into()))
    );
    // The home tenant is untouched.
    assert_eq!(
        config.graph.as_ref().unwrap().tenant_id,
        "8f0d2a8e-1b2c-4d5e-9f00-112233445566"
    );
    pod_is_locked_down_and_mounts_what_the_config_names(&plan, &config);
    assert!(mounts_config_map(
        &plan,
        "shadow-tenant-ca",
        "shadow-graph-ca",
        paths::SHADOW_TENANT_CA_DIR
    ));
}

#[test]
fn a_webhook_ingress_is_made_only_when_asked() {
    let mut g = gateway(sqlite(), "");
    let plain = plan(&g, &[], &[], 1, &SETTINGS).unwrap();
    assert!(plain.objects.webhook_ingress.is_none());
    g.spec.webhook_url = Some("https://graph-hooks.contoso.example".into());
    g.spec.webhook_ingress = Some(
        serde_yaml_ng::from_str("{host: graph-hooks.contoso.example, tlsSecret: graph-hooks-tls}")
            .unwrap(),
    );
    let planned = plan(&g, &[], &[], 1, &SETTINGS).unwrap();
    let ingress = planned.objects.webhook_ingress.as_ref().unwrap();
    assert_eq!(ingress.metadata.name.as_deref(), Some("contoso-webhook"));
    assert!(ingress.metadata.owner_references.is_some());
    let spec = ingress.spec.as_ref().unwrap();
    assert_eq!(spec.ingress_class_name, None, "the cluster's default class");
    let rule = &spec.rules.as_ref().unwrap()[0];
    let path = &rule.http.as_ref().unwrap().paths[0];
    let backend = path.backend.service.as_ref().unwrap();
    // The Service and port the webhook is served on, under the paths it serves.
    assert_eq!(backend.name, render::names::webhook_service("contoso"));
    assert_eq!(
        backend.port.as_ref().unwrap().name.as_deref(),
        Some("webhook")
    );
    // The gateway serves /graph/notifications and /graph/lifecycle.
    assert_eq!(path.path.as_deref(), Some("/graph/"));
}
