//! What the cluster tests share: their own namespace, the examples, licences
//! signed with a test key, and applying documents of any kind.
#![allow(dead_code)] // each test binary uses its own part of it

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde::Deserialize;
use serde_json::{Value, json};
use xmppfed_operator::crd::{DomainWhitelist, FederationGateway, ThrottlePolicy};

/// The documents of examples/`file`.
pub fn examples(file: &str) -> Vec<Value> {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// A new namespace `{prefix}-{pid}`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", std::process::id());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    name
}

/// A licence for `nodes` replicas, signed with `private`, valid until 2099.
pub fn licence_text(private: &str, id: &str, nodes: u32) -> String {
    xmppfed_licence::issue(
        &xmppfed_licence::Licence {
            id: id.into(),
            licensee: "cluster test".into(),
            nodes,
            issued: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires: "2099-01-01T00:00:00Z".parse().unwrap(),
            features: vec![],
        },
        private,
    )
    .unwrap()
}

/// Applies each document (Secrets and our custom resources) into `ns`,
/// server-side as `manager`.
pub async fn apply_all(client: &Client, ns: &str, manager: &str, docs: Vec<Value>) {
    let apply = PatchParams::apply(manager).force();
    for mut doc in docs {
        doc["metadata"]["namespace"] = json!(ns);
        let resource = match doc["kind"].as_str().unwrap() {
            "Secret" => ApiResource::erase::<Secret>(&()),
            "FederationGateway" => ApiResource::erase::<FederationGateway>(&()),
            "DomainWhitelist" => ApiResource::erase::<DomainWhitelist>(&()),
            "ThrottlePolicy" => ApiResource::erase::<ThrottlePolicy>(&()),
            other => panic!("unexpected {other}"),
        };
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
            .patch(&name, &apply, &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", doc["kind"]));
    }
}

/// `docs` with the Secret `secret` given `key` = `value` (a real licence or
/// certificate in place of the example's placeholder).
pub fn with_secret(mut docs: Vec<Value>, secret: &str, key: &str, value: &str) -> Vec<Value> {
    for doc in &mut docs {
        if doc["kind"] == "Secret" && doc["metadata"]["name"] == secret {
            doc["stringData"][key] = json!(value);
        }
    }
    docs
}
