//! Report: the conditions the pure `crate::status` computes, written by
//! server-side apply, and the Events that say what changed.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER};
use crate::crd::{FederationGateway, FederationGatewayStatus};
use crate::licensing::LicenceOutcome;
use crate::plan::{InvalidSpec, Plan};
use crate::status::{self, Observed};

pub(super) async fn publish(
    ctx: &Context,
    gateway: &FederationGateway,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &gateway.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

/// One of our objects that cannot be read as stored: a Warning Event on it,
/// and its conditions say so (Degraded, and for a gateway not Ready), since
/// nothing else will be written to its status until it is fixed.
pub(super) async fn unreadable(
    ctx: &Context,
    object: &kube::api::DynamicObject,
    resource: &kube::api::ApiResource,
    what: &super::lenient::Unreadable,
) -> Result<(), Error> {
    tracing::warn!(kind = %what.kind, name = %what.name, reason = %what.message, "cannot read an object as stored");
    let now = status::now();
    let condition = |type_: &str| {
        json!({"type": type_, "status": if type_ == status::DEGRADED { "True" } else { "False" },
               "reason": "Unreadable", "message": what.to_string(), "lastTransitionTime": now})
    };
    let mut conditions = vec![condition(status::DEGRADED)];
    if what.kind == "FederationGateway" {
        conditions.push(condition(status::READY));
    }
    let stale = object
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["reason"] == "Unreadable" && c["message"] == what.to_string().as_str())
        });
    if stale {
        return Ok(());
    }
    let namespace = object.namespace().ok_or(Error::NoNamespace)?;
    kube::Api::<kube::api::DynamicObject>::namespaced_with(
        ctx.client.clone(),
        &namespace,
        resource,
    )
    .patch_status(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await?;
    let event = Event {
        type_: EventType::Warning,
        reason: "Unreadable".into(),
        note: Some(what.to_string()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &object.object_ref(resource))
        .await
    {
        tracing::warn!(error = %e, "cannot publish event");
    }
    Ok(())
}

pub(super) async fn patch_status(
    gateway: &FederationGateway,
    namespace: &str,
    client: &Client,
    previous: &FederationGatewayStatus,
    observed: &Observed,
    applied: Option<(&Plan, &LicenceOutcome)>,
) -> Result<(), Error> {
    let generation = gateway.metadata.generation;
    let now = status::now();
    let ready_replicas = match observed {
        Observed::Applied { ready, .. } => *ready,
        _ => previous.ready_replicas,
    };
    let status = FederationGatewayStatus {
        observed_generation: generation,
        conditions: status::progress_deadline(
            status::conditions(
                observed,
                applied.map(|(_, l)| (l.ok, l.reason, l.message.as_str())),
                generation,
                &previous.conditions,
                &now,
            ),
            &previous.conditions,
            gateway.spec.progress_deadline(),
            &now,
        ),
        ready_replicas,
        config_hash: applied
            .map(|(p, _)| p.config_hash.clone())
            .or_else(|| previous.config_hash.clone()),
        licence_assignments: applied
            .map(|(_, l)| l.assignments.clone())
            .unwrap_or_else(|| previous.licence_assignments.clone()),
        graph_endpoints: applied
            .map(|(p, _)| p.graph_endpoints.clone())
            .unwrap_or_else(|| previous.graph_endpoints.clone()),
        whitelists: applied
            .map(|(p, _)| p.whitelists.clone())
            .unwrap_or_else(|| previous.whitelists.clone()),
        throttle_policy: applied
            .map(|(p, _)| p.throttle_policy.clone())
            .unwrap_or_else(|| previous.throttle_policy.clone()),
    };
    let body = json!({
        "apiVersion": FederationGateway::api_version(&()),
        "kind": FederationGateway::kind(&()),
        "status": status,
    });
    Api::<FederationGateway>::namespaced(client.clone(), namespace)
        .patch_status(
            &gateway.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(())
}

/// An invalid spec waits for the next change, saying why.
pub(super) async fn degraded(
    gateway: &FederationGateway,
    namespace: &str,
    ctx: &Context,
    previous: &FederationGatewayStatus,
    invalid: &InvalidSpec,
) -> Result<Action, Error> {
    let observed = Observed::Invalid {
        reason: invalid.reason().to_owned(),
        message: invalid.to_string(),
    };
    let already = previous.conditions.iter().any(|c| {
        c.type_ == status::DEGRADED && c.status == "True" && c.message == invalid.to_string()
    });
    patch_status(gateway, namespace, &ctx.client, previous, &observed, None).await?;
    if !already {
        publish(
            ctx,
            gateway,
            EventType::Warning,
            invalid.reason(),
            invalid.to_string(),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Events for what this reconcile changed: a licence problem when its reason
/// is new, and the configuration when a new one was applied.
pub(super) async fn announce(
    ctx: &Context,
    gateway: &FederationGateway,
    previous: &FederationGatewayStatus,
    plan: &Plan,
    licence: &LicenceOutcome,
    updated: bool,
) {
    let licence_reason_changed = !previous
        .conditions
        .iter()
        .any(|c| c.type_ == status::LICENSED && c.reason == licence.reason);
    if licence_reason_changed && !licence.ok {
        publish(
            ctx,
            gateway,
            EventType::Warning,
            licence.reason,
            licence.message.clone(),
        )
        .await;
    }
    if updated && plan.endpoint_override {
        publish(
            ctx,
            gateway,
            EventType::Warning,
            "EndpointOverride",
            format!(
                "the gateway signs in and calls Graph through spec.tenant.endpoints, not its cloud's own hosts ({})",
                plan.graph_endpoints.as_deref().unwrap_or("")
            ),
        )
        .await;
    }
    let removed: Vec<&str> = previous
        .whitelists
        .iter()
        .filter(|w| !plan.whitelists.contains(w))
        .map(String::as_str)
        .collect();
    if !removed.is_empty() {
        publish(
            ctx,
            gateway,
            EventType::Warning,
            "WhitelistRemoved",
            format!(
                "DomainWhitelist {} no longer applies (deleted, or it no longer selects this gateway); whitelists now: {}",
                removed.join(", "),
                names_or_none(&plan.whitelists),
            ),
        )
        .await;
    }
    if updated {
        let whitelists = names_or_none(&plan.whitelists);
        publish(
            ctx,
            gateway,
            EventType::Normal,
            "Applied",
            format!(
                "applied configuration {} (whitelists: {whitelists}; throttle policy: {})",
                plan.config_hash,
                plan.throttle_policy.as_deref().unwrap_or("defaults"),
            ),
        )
        .await;
    }
}

fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
