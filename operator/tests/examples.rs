//! Every file in examples/ is what the API server would accept: each custom
//! resource parses into the Rust types, passes the generated CRD's OpenAPI schema
//! and its CEL rules (evaluated locally), and plans into a gateway configuration
//! the gateway accepts. The CEL rules reject the bad specs they are there for,
//! within the API server's cost budget.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::{Value, json};
use xmppfed_operator::crd::{DomainWhitelist, FederationGateway, ThrottlePolicy};
use xmppfed_operator::plan::{Settings, plan};

/// Any base64 text: rendering only copies the key into the configuration.
const TEST_KEY: &str = "dGVzdC1rZXk=";
const SETTINGS: Settings<'static> = Settings {
    licence_public_key: Some(TEST_KEY),
    gateway_cluster_role: "xmppfed-operator-gateway",
};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every YAML document of every file in examples/ (not the local gateway TOML).
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "examples missing: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}#{i}: {e}", file.display()));
            docs.push((
                format!("{}#{i}", file.file_name().unwrap().to_string_lossy()),
                value,
            ));
        }
    }
    docs
}

/// The openAPIV3Schema the API server validates `kind` with.
fn schema_of(kind: &str) -> Value {
    let crd = match kind {
        "FederationGateway" => FederationGateway::crd(),
        "DomainWhitelist" => DomainWhitelist::crd(),
        "ThrottlePolicy" => ThrottlePolicy::crd(),
        other => panic!("no CRD for {other}"),
    };
    let version = &crd.spec.versions[0];
    serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

/// What the API server would say about `object`: schema errors, then CEL errors.
fn api_server_errors(object: &Value) -> Vec<String> {
    let schema = schema_of(object["kind"].as_str().unwrap());
    // The server checks spec and status; metadata is validated by its own rules.
    let mut checked = object.clone();
    checked.as_object_mut().unwrap().remove("metadata");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut errors: Vec<String> = validator
        .iter_errors(&checked)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(cel) = kube_cel::validate(&schema, &checked, None) {
        errors.extend(cel.iter().map(ToString::to_string));
    }
    errors
}

#[test]
fn every_example_is_accepted_and_plans_into_a_valid_gateway() {
    let docs = documents();
    let mut gateways = Vec::new();
    let mut whitelists = Vec::new();
    let mut throttles = Vec::new();
    for (name, doc) in &docs {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no kind"));
        if kind == "Secret" {
            let secret: Secret =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let text = serde_json::to_string(&secret.string_data).unwrap();
            assert!(
                text.contains("PLACEHOLDER"),
                "{name}: secrets in examples must be marked PLACEHOLDER"
            );
            continue;
        }
        let errors = api_server_errors(doc);
        assert!(errors.is_empty(), "{name} would be rejected: {errors:#?}");
        // Give it what the API server would: a namespace and a uid.
        let mut doc = doc.clone();
        doc["metadata"]["namespace"] = json!("xmpp");
        doc["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", gateways.len()));
        match kind {
            "FederationGateway" => {
                gateways.push(serde_json::from_value::<FederationGateway>(doc).unwrap())
            }
            "DomainWhitelist" => {
                whitelists.push(serde_json::from_value::<DomainWhitelist>(doc).unwrap())
            }
            "ThrottlePolicy" => {
                throttles.push(serde_json::from_value::<ThrottlePolicy>(doc).unwrap())
            }
            other => panic!("{name}: unexpected kind {other}"),
        }
    }
    assert_eq!(
        (gateways.len(), whitelists.len(), throttles.len()),
        (4, 1, 1)
    );
    for g in &gateways {
        let p = plan(g, &whitelists, &throttles, g.spec.replicas, &SETTINGS)
            .unwrap_or_else(|e| panic!("{}: {e}", g.metadata.name.as_deref().unwrap_or_default()));
        let config = xmppfed_config::GatewayConfig::from_toml_str(&p.config_toml).unwrap();
        assert!(
            config
                .allow
                .remote_domains
                .iter()
                .any(|d| d.matches("xmpp.partner.example")),
            "the whitelist selects every production gateway"
        );
    }
}

fn example(kind: &str) -> Value {
    documents()
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == kind
                && (kind != "FederationGateway" || d["spec"]["database"]["engine"] == "sqlite")
        })
        .unwrap()
}

fn rejected_with(object: &Value, needle: &str) {
    let errors = api_server_errors(object);
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errors:#?}"
    );
}

#[test]
fn bad_gateways_are_rejected_with_a_clear_message() {
    let mut g = example("FederationGateway");
    g["spec"]["replicas"] = json!(3);
    rejected_with(&g, "the sqlite engine supports one replica only");

    let mut g = example("FederationGateway");
    g["spec"]["domain"] = json!("Teams Contoso");
    rejected_with(&g, "domain must be a lower-case DNS name");

    let mut g = example("FederationGateway");
    g["spec"]["tenant"]["clientCertificate"] = json!("also-a-cert");
    rejected_with(
        &g,
        "set exactly one of tenant.clientSecret and tenant.clientCertificate",
    );

    let mut g = example("FederationGateway");
    g["spec"]["database"] = json!({"engine": "sqlserver"});
    rejected_with(
        &g,
        "database.connectionStringSecret is required for engine sqlserver",
    );

    let mut g = example("FederationGateway");
    g["spec"]["database"]["engine"] = json!("postgres");
    rejected_with(&g, "postgres");

    let mut g = example("FederationGateway");
    g["spec"]["webhookUrl"] = json!("http://insecure.example/notify");
    rejected_with(&g, "webhookUrl must be an https:// URL");

    let mut g = example("FederationGateway");
    g["spec"]["shadowAccounts"]["usageLocation"] = json!("gb");
    rejected_with(
        &g,
        "shadowAccounts.usageLocation must be a two-letter country code",
    );

    let mut g = example("FederationGateway");
    g["spec"]["bridge"] = json!({"leaderLeaseSeconds": 1});
    rejected_with(&g, "leaderLeaseSeconds");

    // Graph's own ceilings cannot be configured away.
    let mut g = example("FederationGateway");
    g["spec"]["bridge"] = json!({"graphLimits": {"chatMessageSendPerSecond": 25}});
    rejected_with(&g, "chatMessageSendPerSecond");
    let mut g = example("FederationGateway");
    g["spec"]["bridge"] = json!({"graphLimits": {"perChatIntervalMs": 500}});
    rejected_with(&g, "perChatIntervalMs");

    let mut g = example("FederationGateway");
    g["spec"]["bridge"] = json!({"localPart": "nickname"});
    rejected_with(&g, "nickname");

    // Each route names what it needs.
    let mut g = example("FederationGateway");
    g["spec"].as_object_mut().unwrap().remove("tenant");
    rejected_with(&g, "tenant is required with teams.mode Graph");
    let mut g = example("FederationGateway");
    g["spec"]["teams"] = json!({"mode": "SipFederation"});
    rejected_with(&g, "sip (edgeFqdn, partnerDomain, tlsSecret) is required");
    g["spec"]["sip"] =
        json!({"edgeFqdn": "SIP.Contoso", "partnerDomain": "contoso.com", "tlsSecret": "t"});
    rejected_with(&g, "sip.edgeFqdn must be a lower-case DNS name");
    g["spec"]["sip"] = json!({"edgeFqdn": "sip.contoso.example", "partnerDomain": "contoso.com", "tlsSecret": "t", "port": 9090});
    rejected_with(
        &g,
        "sip.port must not be the webhook's (8443) or the admin port (9090)",
    );
    g["spec"]["sip"]["port"] = json!(5269);
    rejected_with(&g, "sip.port and s2s.port must differ");
}

#[test]
fn bad_policies_are_rejected_with_a_clear_message() {
    let mut t = example("ThrottlePolicy");
    t["spec"]["limits"]["burst"] = json!(0);
    rejected_with(&t, "/spec/limits/burst");
    let mut t = example("ThrottlePolicy");
    t["spec"]["limits"]["messagesPerMinute"] = json!(-5);
    rejected_with(&t, "/spec/limits/messagesPerMinute");

    let mut w = example("DomainWhitelist");
    w["spec"]["remoteDomains"] = json!(["not a domain"]);
    rejected_with(&w, "/spec/remoteDomains/0");
    let w = json!({"apiVersion": "xmppfed.io/v1alpha1", "kind": "DomainWhitelist",
                   "spec": {"gateways": {"names": ["x"]}}});
    rejected_with(&w, "must allow at least one domain, user or group");
}

#[test]
fn every_cel_rule_compiles_and_fits_the_cost_budget() {
    for kind in ["FederationGateway", "DomainWhitelist", "ThrottlePolicy"] {
        let schema = schema_of(kind);
        let compiled = kube_cel::compile_schema(&schema);
        let mut rules = Vec::new();
        collect_rules(&schema, &mut rules);
        for rule in &rules {
            let warnings = kube_cel::estimate_rule_cost(rule, &compiled);
            assert!(warnings.is_empty(), "{kind}: `{rule}`: {warnings:?}");
        }
        if kind != "ThrottlePolicy" {
            assert!(!rules.is_empty(), "{kind} has CEL rules");
        }
    }
}

fn collect_rules(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                out.extend(
                    rules
                        .iter()
                        .filter_map(|r| r["rule"].as_str().map(str::to_owned)),
                );
            }
            map.values().for_each(|v| collect_rules(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rules(v, out)),
        _ => {}
    }
}
