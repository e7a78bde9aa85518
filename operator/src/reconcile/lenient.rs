//! What the API server stores is not always what the operator's types can
//! read: an object written under an older, looser CRD, or a value its schema
//! does not bound. A typed list or watch fails whole on one such object, and
//! every gateway behind it would stop. So the controllers watch and list our
//! resources as `DynamicObject` and decode each one on its own: an unreadable
//! object stops only what depends on it, and that says why.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::crd::{FederationGateway, GatewaySelector};
use crate::policy::{PolicyRef, concerns};

/// The API resource of one of our kinds, for dynamic Apis.
pub fn resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// One of our objects the operator cannot decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// Which gateways it selects, when that much of it can be read.
    pub selector: Option<GatewaySelector>,
    /// The decoder's words: the field and what is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} as stored cannot be read by this operator ({}); fix or re-apply it (kubectl get {} {} -o yaml)",
            self.kind,
            self.name,
            self.message,
            self.kind.to_lowercase(),
            self.name
        )
    }
}

impl Unreadable {
    /// Whether `gateway` depends on this policy: it selects the gateway, the
    /// gateway names it, or its selector cannot be read either (it may).
    pub fn concerns(&self, gateway: &FederationGateway) -> bool {
        let reference = match self.kind.as_str() {
            "DomainWhitelist" => PolicyRef::Whitelist(&self.name),
            _ => PolicyRef::Throttle(&self.name),
        };
        match &self.selector {
            Some(selector) => concerns(selector, reference, self.namespace.as_deref(), gateway),
            None => gateway.namespace() == self.namespace,
        }
    }
}

/// `object` as a `K`, or what cannot be read of it.
pub fn decode<K>(object: DynamicObject) -> Result<K, Box<Unreadable>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let name = object.name_any();
    let namespace = object.namespace();
    let selector = object
        .data
        .get("spec")
        .and_then(|spec| spec.get("gateways"))
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let failed = |message: String| {
        Box::new(Unreadable {
            kind: K::kind(&()).into_owned(),
            name: name.clone(),
            namespace: namespace.clone(),
            selector: selector.clone(),
            message,
        })
    };
    let value = serde_json::to_value(&object).map_err(|e| failed(e.to_string()))?;
    // The path of the field that fails, as kubectl names it (spec.limits.burst).
    serde_path_to_error::deserialize::<_, K>(value)
        .map_err(|e| failed(format!("{}: {}", e.path(), e.inner())))
}

/// Every `K` of `namespace`, and those that cannot be read.
pub async fn list<K>(
    client: &Client,
    namespace: &str,
) -> Result<(Vec<K>, Vec<Unreadable>), kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + DeserializeOwned,
{
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource::<K>());
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    for object in api.list(&ListParams::default()).await?.items {
        match decode::<K>(object) {
            Ok(k) => read.push(k),
            Err(u) => unreadable.push(*u),
        }
    }
    Ok((read, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ThrottlePolicy;
    use serde_json::json;

    fn stored(body: serde_json::Value) -> DynamicObject {
        serde_json::from_value(body).unwrap()
    }

    fn gateway(name: &str, labels: serde_json::Value) -> FederationGateway {
        serde_json::from_value(json!({
            "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
            "metadata": {"name": name, "namespace": "xmpp", "labels": labels},
            "spec": {"domain": "teams.contoso.example", "image": "ghcr.io/xmppfed/gateway:0.1.0",
                     "tenant": {"tenantId": "8f0d2a8e-1b2c-4d5e-9f00-112233445566",
                                "clientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                                "clientSecret": {"name": "graph-app", "key": "client-secret"}},
                     "s2s": {"tlsSecret": "contoso-tls"},
                     "licenceSecret": {"name": "xmppfed-licence", "key": "licence"},
                     "database": {"engine": "sqlite"}}
        }))
        .unwrap()
    }

    #[test]
    fn an_unreadable_policy_names_its_field_and_concerns_only_whom_it_selects() {
        let policy = stored(json!({
            "apiVersion": "xmppfed.io/v1alpha1", "kind": "ThrottlePolicy",
            "metadata": {"name": "strict", "namespace": "xmpp"},
            "spec": {"gateways": {"matchLabels": {"tier": "prod"}},
                     "limits": {"messagesPerMinute": 99_999_999_999_u64, "bytesPerMinute": 1,
                                "presenceUpdatesPerMinute": 1, "burst": 1}}
        }));
        let u = decode::<ThrottlePolicy>(policy).unwrap_err();
        assert_eq!(
            (u.kind.as_str(), u.name.as_str()),
            ("ThrottlePolicy", "strict")
        );
        assert!(u.message.contains("99999999999"), "{}", u.message);
        assert!(
            u.message.starts_with("spec.limits.messagesPerMinute: "),
            "{}",
            u.message
        );
        assert!(u.to_string().contains("ThrottlePolicy strict"), "{u}");
        assert!(u.concerns(&gateway("a", json!({"tier": "prod"}))));
        assert!(!u.concerns(&gateway("b", json!({"tier": "test"}))));
    }

    #[test]
    fn without_a_readable_selector_it_concerns_its_whole_namespace() {
        let policy = stored(json!({
            "apiVersion": "xmppfed.io/v1alpha1", "kind": "ThrottlePolicy",
            "metadata": {"name": "odd", "namespace": "xmpp"},
            "spec": {"gateways": {"matchLabels": "not a map"}}
        }));
        let u = decode::<ThrottlePolicy>(policy).unwrap_err();
        assert!(u.selector.is_none());
        assert!(u.concerns(&gateway("b", json!({}))));
    }
}
