//! The controllers: FederationGateway (owning its StatefulSet and ConfigMap,
//! woken by the policies that select it and the Secrets it reads) and the two
//! policy controllers.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::policies::{policy_error_policy, reconcile_throttle, reconcile_whitelist};
use super::{Context, error_policy, reconcile};
use crate::crd::{DomainWhitelist, FederationGateway, GatewaySelector, ThrottlePolicy};
use crate::policy::{PolicyRef, concerns, reads_secret};

/// The gateways (from the controller's cache) a changed policy concerns: the
/// ones to reconcile again.
fn concerned_in<P: ResourceExt>(
    gateways: &Store<FederationGateway>,
    selector: &GatewaySelector,
    reference: PolicyRef<'_>,
    policy: &P,
) -> Vec<ObjectRef<FederationGateway>> {
    let namespace = policy.namespace();
    gateways
        .state()
        .iter()
        .filter(|g| concerns(selector, reference, namespace.as_deref(), g))
        .map(|g| ObjectRef::from(g.as_ref()))
        .collect()
}

/// The gateways (from the controller's cache) that read a changed Secret.
fn reading_in(
    gateways: &Store<FederationGateway>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<FederationGateway>> {
    let (name, namespace) = (secret.name_any(), secret.namespace());
    gateways
        .state()
        .iter()
        .filter(|g| reads_secret(g, &name, namespace.as_deref()))
        .map(|g| ObjectRef::from(g.as_ref()))
        .collect()
}

/// Runs the controllers with `ctx` (its client, licence key and metrics) until
/// `shutdown` resolves.
pub async fn run(
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt;
    let shutdown = shutdown.shared();
    let client = ctx.client.clone();
    let ctx = Arc::new(ctx);
    let whitelists = Controller::new(
        Api::<DomainWhitelist>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(reconcile_whitelist, policy_error_policy, ctx.clone())
    .for_each(|r| log_result(r.map(|(o, _)| o.to_string())));
    let throttles = Controller::new(
        Api::<ThrottlePolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(reconcile_throttle, policy_error_policy, ctx.clone())
    .for_each(|r| log_result(r.map(|(o, _)| o.to_string())));

    let gateways = Api::<FederationGateway>::all(client.clone());
    let controller = Controller::new(gateways, watcher::Config::default());
    let store = controller.store();
    let for_whitelists = store.clone();
    let for_throttles = store.clone();
    let for_secrets = store;
    let gateways_done = controller
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
        )
        .watches(
            Api::<DomainWhitelist>::all(client.clone()),
            watcher::Config::default(),
            move |w| {
                let reference = PolicyRef::Whitelist(&w.name_any());
                concerned_in(&for_whitelists, &w.spec.gateways, reference, &w)
            },
        )
        .watches(
            Api::<ThrottlePolicy>::all(client.clone()),
            watcher::Config::default(),
            move |t| {
                let reference = PolicyRef::Throttle(&t.name_any());
                concerned_in(&for_throttles, &t.spec.gateways, reference, &t)
            },
        )
        // Secrets by metadata only (an Api of PartialObjectMeta asks for no
        // data): a changed licence or credential reaches its gateways at once.
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
            move |secret| reading_in(&for_secrets, &secret),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| log_result(r.map(|(o, _)| o.to_string())));
    tokio::join!(gateways_done, whitelists, throttles);
}

pub(super) async fn log_result<E: std::fmt::Display>(result: Result<String, E>) {
    match result {
        Ok(object) => tracing::debug!(%object, "reconciled"),
        Err(e) => tracing::debug!(error = %e, "reconcile error"),
    }
}
