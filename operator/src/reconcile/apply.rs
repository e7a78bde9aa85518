//! Apply: every child of a gateway by server-side apply, one field manager,
//! and the gateway's generated keys (created once, never rewritten).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::{Error, FIELD_MANAGER};
use crate::crd::FederationGateway;
use crate::plan::Plan;
use crate::render::{self, keys, names};

/// Server-side applies every child; returns the StatefulSet as the server holds it.
pub(super) async fn apply_all(
    plan: &Plan,
    namespace: &str,
    client: &Client,
) -> Result<StatefulSet, Error> {
    let o = &plan.objects;
    apply::<ServiceAccount>(client, namespace, &o.service_account).await?;
    apply::<RoleBinding>(client, namespace, &o.pod_role_binding).await?;
    apply::<ConfigMap>(client, namespace, &o.config_map).await?;
    for service in &o.services {
        apply::<Service>(client, namespace, service).await?;
    }
    let name = o.stateful_set.name_any();
    // Scaled down to one replica: a PDB left behind would block node drains.
    apply_or_delete(client, namespace, &name, o.pod_disruption_budget.as_ref()).await?;
    // Asked for no longer: an Ingress left behind would keep exposing the webhook.
    let ingress = names::webhook_service(&name);
    apply_or_delete(client, namespace, &ingress, o.webhook_ingress.as_ref()).await?;
    apply_or_delete(client, namespace, &name, o.network_policy.as_ref()).await?;
    apply::<StatefulSet>(client, namespace, &o.stateful_set).await
}

/// A namespaced object the operator applies for a gateway.
pub(super) trait Child:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Child for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// Applies `object`, or with `None` deletes the object `name` of its kind if
/// there is one (a child the spec no longer asks for).
async fn apply_or_delete<K: Child>(
    client: &Client,
    namespace: &str,
    name: &str,
    object: Option<&K>,
) -> Result<(), Error> {
    if let Some(object) = object {
        return apply(client, namespace, object).await.map(drop);
    }
    match Api::<K>::namespaced(client.clone(), namespace)
        .delete(name, &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn apply<K: Child>(
    client: &Client,
    namespace: &str,
    object: &K,
) -> Result<K, Error> {
    let api = Api::<K>::namespaced(client.clone(), namespace);
    let mut value = serde_json::to_value(object).map_err(|e| Error::Encode("object", e))?;
    // Server-side apply needs apiVersion and kind in the body.
    value["apiVersion"] = json!(K::api_version(&()));
    value["kind"] = json!(K::kind(&()));
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch(&object.name_any(), &params, &Patch::Apply(&value))
        .await?)
}

/// The gateway's own keys (dialback secret, webhook clientState, credential key):
/// generated once, owned by the gateway, never rotated by a reconcile.
pub(super) async fn ensure_keys_secret(
    gateway: &FederationGateway,
    namespace: &str,
    client: &Client,
) -> Result<(), Error> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let name = names::keys_secret(&gateway.name_any());
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let mut data = BTreeMap::new();
    for key in [keys::DIALBACK, keys::CLIENT_STATE, keys::CREDENTIAL_KEY] {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        data.insert(key.to_owned(), ByteString(hex.into_bytes()));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            labels: Some(render::labels(&gateway.name_any())),
            owner_references: render::owner_of(gateway).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Another replica of the operator created it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
