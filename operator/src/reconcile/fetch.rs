//! Fetch: what a reconcile reads besides the gateway — its licence and
//! keys Secrets, and the pods it waits for.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams};

use super::Error;
use super::lenient::{self, Unreadable};
use crate::crd::{DomainWhitelist, FederationGateway, ThrottlePolicy};
use crate::render;
use crate::status;

/// What a gateway's reconcile reads before it validates: the policies of its
/// namespace and its licence.
pub(super) struct Inputs {
    pub whitelists: Vec<DomainWhitelist>,
    pub throttles: Vec<ThrottlePolicy>,
    /// Policies of the namespace that cannot be read as stored.
    pub unreadable: Vec<Unreadable>,
    /// The licence Secret's value; `None` when the Secret or its key is absent.
    pub licence_text: Option<String>,
}

pub(super) async fn inputs(
    client: &Client,
    namespace: &str,
    gateway: &FederationGateway,
) -> Result<Inputs, Error> {
    let (whitelists, mut unreadable) = lenient::list::<DomainWhitelist>(client, namespace).await?;
    let (throttles, more) = lenient::list::<ThrottlePolicy>(client, namespace).await?;
    unreadable.extend(more);
    let secret = &gateway.spec.licence_secret;
    let licence_text = read_secret_key(client, namespace, &secret.name, &secret.key).await?;
    Ok(Inputs {
        whitelists,
        throttles,
        unreadable,
        licence_text,
    })
}

/// What the gateway's pods show: those not ready and why (for Ready), and
/// what the leader reported (for TenantReady and PartnerReachable).
pub(super) async fn observe_pods(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(Vec<String>, status::Reported), Error> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&render::pod_selector(name)))
        .await?;
    Ok((
        status::waiting_pods(&pods.items),
        status::Reported::from_pods(&pods.items),
    ))
}

/// The text under `key` of Secret `name`; `None` when either is absent.
pub(super) async fn read_secret_key(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>, Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(key))
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned()))
}
