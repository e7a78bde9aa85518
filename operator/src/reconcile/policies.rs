//! DomainWhitelist and ThrottlePolicy: each records in its status which
//! gateways it applies to.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use super::{Context, Error, FIELD_MANAGER, backoff, random_unit};
use crate::crd::{DomainWhitelist, FederationGateway, ThrottlePolicy};
use crate::policy::{PolicyRef, selected_gateways};
use crate::status;

/// Records which gateways a DomainWhitelist or ThrottlePolicy applies to, in
/// a span naming the policy, counted and timed under its kind.
pub(super) async fn reconcile_policy<K>(
    policy: Arc<K>,
    ctx: Arc<Context>,
    selector: &crate::crd::GatewaySelector,
    reference: PolicyRef<'_>,
    previous: Option<&crate::crd::ResourceStatus>,
) -> Result<Action, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = match reference {
        PolicyRef::Whitelist(_) => "DomainWhitelist",
        PolicyRef::Throttle(_) => "ThrottlePolicy",
    };
    let span = tracing::info_span!(
        "reconcile",
        kind,
        namespace = policy.namespace().unwrap_or_default(),
        name = %policy.name_any(),
    );
    let started = std::time::Instant::now();
    let result = record_selection(policy, &ctx, selector, reference, previous)
        .instrument(span)
        .await;
    ctx.metrics.observe(kind, started.elapsed(), result.is_ok());
    result
}

async fn record_selection<K>(
    policy: Arc<K>,
    ctx: &Context,
    selector: &crate::crd::GatewaySelector,
    reference: PolicyRef<'_>,
    previous: Option<&crate::crd::ResourceStatus>,
) -> Result<Action, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let namespace = policy.namespace().ok_or(Error::NoNamespace)?;
    // A gateway that cannot be read is selected by nobody; it says so itself.
    let (gateways, _) = super::lenient::list::<FederationGateway>(&ctx.client, &namespace).await?;
    let mut selected: Vec<String> =
        selected_gateways(selector, reference, Some(&namespace), &gateways)
            .iter()
            .map(|g| g.name_any())
            .collect();
    selected.sort();
    let status = status::policy_status(
        selected,
        policy.meta().generation,
        previous.map_or(&[][..], |p| &p.conditions),
        &status::now(),
    );
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    // Gateways come and go without touching the policy: look again now and then.
    Ok(Action::requeue(Duration::from_secs(60)))
}

pub async fn reconcile_whitelist(
    w: Arc<DomainWhitelist>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = w.name_any();
    let selector = w.spec.gateways.clone();
    let previous = w.status.clone();
    reconcile_policy(
        w,
        ctx,
        &selector,
        PolicyRef::Whitelist(&name),
        previous.as_ref(),
    )
    .await
}

pub async fn reconcile_throttle(
    t: Arc<ThrottlePolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = t.name_any();
    let selector = t.spec.gateways.clone();
    let previous = t.status.clone();
    reconcile_policy(
        t,
        ctx,
        &selector,
        PolicyRef::Throttle(&name),
        previous.as_ref(),
    )
    .await
}

pub(super) fn policy_error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "policy status update failed");
    Action::requeue(backoff(3, random_unit()))
}
