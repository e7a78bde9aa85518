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

use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::Action;

use super::lenient;
use super::policies::{policy_error_policy, reconcile_throttle, reconcile_whitelist};
use super::{Context, Error, object_error_policy, reconcile};
use crate::crd::{DomainWhitelist, FederationGateway, GatewaySelector, ThrottlePolicy};
use crate::policy::{PolicyRef, concerns, reads_secret};

/// The gateways of `namespace` in the controller's cache that can be read:
/// policies and Secrets concern only their own namespace's, so only those
/// are decoded on each watch event.
fn readable(gateways: &Store<DynamicObject>, namespace: Option<&str>) -> Vec<FederationGateway> {
    gateways
        .state()
        .iter()
        .filter(|g| g.metadata.namespace.as_deref() == namespace)
        .filter_map(|g| lenient::decode::<FederationGateway>(g.as_ref().clone()).ok())
        .collect()
}

/// The gateways a changed policy concerns: the ones to reconcile again. A
/// policy that cannot be read concerns every gateway of its namespace (its
/// readers say why they wait).
fn concerned_in<P: Resource<DynamicType = ()> + serde::de::DeserializeOwned>(
    gateways: &Store<DynamicObject>,
    policy: DynamicObject,
    reference: for<'a> fn(&'a str) -> PolicyRef<'a>,
    selector_of: impl Fn(&P) -> &GatewaySelector,
) -> Vec<ObjectRef<DynamicObject>> {
    let namespace = policy.namespace();
    let name = policy.name_any();
    let decoded = lenient::decode::<P>(policy);
    readable(gateways, namespace.as_deref())
        .iter()
        .filter(|g| match &decoded {
            Ok(p) => concerns(selector_of(p), reference(&name), namespace.as_deref(), g),
            Err(u) => u.concerns(g),
        })
        .map(|g| ObjectRef::from(g).erase())
        .collect()
}

/// The gateways that read a changed Secret.
fn reading_in(
    gateways: &Store<DynamicObject>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DynamicObject>> {
    let (name, namespace) = (secret.name_any(), secret.namespace());
    readable(gateways, namespace.as_deref())
        .iter()
        .filter(|g| reads_secret(g, &name, namespace.as_deref()))
        .map(|g| ObjectRef::from(g).erase())
        .collect()
}

/// Decodes what a controller watched as `DynamicObject` and reconciles it
/// as a `K`; what cannot be read is reported on the object and waited out.
async fn decoded<K, F, Fut>(
    object: Arc<DynamicObject>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    match lenient::decode::<K>(object.as_ref().clone()) {
        Ok(k) => reconcile(Arc::new(k), ctx).await,
        Err(unreadable) => {
            super::report::unreadable(&ctx, &object, &lenient::resource::<K>(), &unreadable)
                .await?;
            Ok(Action::await_change())
        }
    }
}

/// Runs the controllers with `ctx` (its client, licence key and metrics) until
/// `shutdown` resolves: over every namespace, or one set of controllers per
/// namespace of `ctx.namespaces` (the namespaced mode, where the operator may
/// not list anything cluster-wide).
pub async fn run(
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt;
    let shutdown = shutdown.shared();
    let namespaces = ctx.namespaces.clone();
    let ctx = Arc::new(ctx);
    if namespaces.is_empty() {
        run_in(Scope::All, ctx, shutdown).await;
    } else {
        tracing::info!(?namespaces, "watching these namespaces only");
        let scopes = namespaces
            .iter()
            .map(|ns| run_in(Scope::Namespace(ns), ctx.clone(), shutdown.clone()));
        futures::future::join_all(scopes).await;
    }
}

/// Where a set of controllers watches.
#[derive(Clone, Copy)]
enum Scope<'a> {
    All,
    Namespace(&'a str),
}

impl Scope<'_> {
    fn api<K>(self, client: &kube::Client) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    /// One of our kinds, read leniently (see `lenient`).
    fn ours<K: Resource<DynamicType = ()>>(
        self,
        client: &kube::Client,
    ) -> (Api<DynamicObject>, ApiResource) {
        let resource = lenient::resource::<K>();
        let api = match self {
            Scope::All => Api::all_with(client.clone(), &resource),
            Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        };
        (api, resource)
    }
}

async fn run_in(
    scope: Scope<'_>,
    ctx: Arc<Context>,
    shutdown: futures::future::Shared<
        impl std::future::Future<Output = ()> + Send + Sync + 'static,
    >,
) {
    let client = ctx.client.clone();
    let (api, resource) = scope.ours::<DomainWhitelist>(&client);
    let whitelists = Controller::new_with(api, watcher::Config::default(), resource)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |o, ctx| decoded(o, ctx, reconcile_whitelist),
            policy_error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result(r.map(|(o, _)| o.to_string())));
    let (api, resource) = scope.ours::<ThrottlePolicy>(&client);
    let throttles = Controller::new_with(api, watcher::Config::default(), resource)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |o, ctx| decoded(o, ctx, reconcile_throttle),
            policy_error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result(r.map(|(o, _)| o.to_string())));

    let (gateways, resource) = scope.ours::<FederationGateway>(&client);
    let controller = Controller::new_with(gateways, watcher::Config::default(), resource);
    let store = controller.store();
    let for_whitelists = store.clone();
    let for_throttles = store.clone();
    let for_secrets = store;
    let (whitelist_api, whitelist_resource) = scope.ours::<DomainWhitelist>(&client);
    let (throttle_api, throttle_resource) = scope.ours::<ThrottlePolicy>(&client);
    let gateways_done = controller
        .owns_with(
            scope.api::<StatefulSet>(&client),
            (),
            watcher::Config::default(),
        )
        .owns_with(
            scope.api::<ConfigMap>(&client),
            (),
            watcher::Config::default(),
        )
        .watches_with(
            whitelist_api,
            whitelist_resource,
            watcher::Config::default(),
            move |w| {
                concerned_in::<DomainWhitelist>(
                    &for_whitelists,
                    w,
                    |n| PolicyRef::Whitelist(n),
                    |p| &p.spec.gateways,
                )
            },
        )
        .watches_with(
            throttle_api,
            throttle_resource,
            watcher::Config::default(),
            move |t| {
                concerned_in::<ThrottlePolicy>(
                    &for_throttles,
                    t,
                    |n| PolicyRef::Throttle(n),
                    |p| &p.spec.gateways,
                )
            },
        )
        // Secrets by metadata only (an Api of PartialObjectMeta asks for no
        // data): a changed licence or credential reaches its gateways at once.
        .watches(
            scope.api::<PartialObjectMeta<Secret>>(&client),
            watcher::Config::default(),
            move |secret| reading_in(&for_secrets, &secret),
        )
        .graceful_shutdown_on(shutdown)
        .run(
            |o, ctx| decoded(o, ctx, reconcile),
            object_error_policy,
            ctx,
        )
        .for_each(|r| log_result(r.map(|(o, _)| o.to_string())));
    tokio::join!(gateways_done, whitelists, throttles);
}

pub(super) async fn log_result<E: std::fmt::Display>(result: Result<String, E>) {
    match result {
        Ok(object) => tracing::debug!(%object, "reconciled"),
        Err(e) => tracing::debug!(error = %e, "reconcile error"),
    }
}
