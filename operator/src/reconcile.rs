//! The FederationGateway controller: fetch → validate → build → apply → status.
//! Validate and build are the pure `plan`; this module does the I/O around it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::build::{self, keys, names};
use crate::crd::{DomainWhitelist, FederationGateway, FederationGatewayStatus, ThrottlePolicy};
use crate::licensing::{self, LicenceOutcome};
use crate::plan::{InvalidSpec, Plan, plan};
use crate::policy::{PolicyRef, selected_gateways};
use crate::status::{self, Observed};

/// The one field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "xmppfed-operator";
/// How often a healthy gateway is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot encode {0}: {1}")]
    Encode(&'static str, serde_json::Error),
    #[error("no randomness for the gateway's keys: {0}")]
    Random(String),
    #[error("the FederationGateway has no namespace")]
    NoNamespace,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Base64 Ed25519 key that licences are verified with; without it nothing is licensed.
    pub licence_public_key: Option<String>,
    /// Consecutive failures per gateway, for backoff; cleared on success.
    failures: Mutex<HashMap<ObjectRef<FederationGateway>, u32>>,
}

impl Context {
    pub fn new(client: Client, licence_public_key: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            licence_public_key,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Consecutive failed reconciles of `gateway` (what its backoff is computed from).
    pub fn failures_of(&self, gateway: &FederationGateway) -> u32 {
        self.failures()
            .get(&ObjectRef::from(gateway))
            .copied()
            .unwrap_or(0)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<FederationGateway>, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub async fn reconcile(
    gateway: Arc<FederationGateway>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = gateway.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let previous = gateway.status.clone().unwrap_or_default();

    // Being deleted: owner references let the garbage collector remove every
    // child; applying them again now would only fight it.
    if gateway.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    if gateway.spec.paused {
        patch_status(
            &gateway,
            &namespace,
            client,
            &previous,
            &Observed::Paused,
            None,
        )
        .await?;
        return Ok(Action::await_change());
    }

    // Fetch.
    let whitelists = Api::<DomainWhitelist>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let throttles = Api::<ThrottlePolicy>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items;

    // Validate and build (pure). Licensing will cap the replicas it hands in here.
    let licence_text = read_secret_key(
        client,
        &namespace,
        &gateway.spec.licence_secret.name,
        &gateway.spec.licence_secret.key,
    )
    .await?;
    let licence = licensing::evaluate(
        &gateway.name_any(),
        gateway.spec.replicas,
        licence_text.as_deref(),
        ctx.licence_public_key.as_deref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    // Only licensed replicas run.
    let plan = match plan(
        &gateway,
        &whitelists,
        &throttles,
        licence.licensed,
        ctx.licence_public_key.as_deref(),
    ) {
        Ok(plan) => plan,
        Err(invalid) => return degraded(&gateway, &namespace, &ctx, &previous, &invalid).await,
    };

    // Apply.
    ensure_keys_secret(&gateway, &namespace, client).await?;
    let stateful_set = apply_all(&plan, &namespace, client).await?;

    // Status.
    let ready = stateful_set
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let updated = previous.config_hash.as_deref() != Some(plan.config_hash.as_str());
    let waiting = if ready < licence.licensed {
        waiting_pods(client, &namespace, &gateway.name_any()).await?
    } else {
        Vec::new()
    };
    let observed = Observed::Applied {
        asked: gateway.spec.replicas,
        desired: licence.licensed,
        ready,
        updated,
        waiting,
    };
    patch_status(
        &gateway,
        &namespace,
        client,
        &previous,
        &observed,
        Some((&plan, &licence)),
    )
    .await?;
    let licence_reason_changed = !previous
        .conditions
        .iter()
        .any(|c| c.type_ == status::LICENSED && c.reason == licence.reason);
    if licence_reason_changed && !licence.ok {
        publish(
            &ctx,
            &gateway,
            EventType::Warning,
            licence.reason,
            licence.message.clone(),
        )
        .await;
    }
    if updated {
        publish(
            &ctx,
            &gateway,
            EventType::Normal,
            "Applied",
            format!(
                "applied configuration {} (whitelists: {}; throttle policy: {})",
                plan.config_hash,
                if plan.whitelists.is_empty() {
                    "none".to_owned()
                } else {
                    plan.whitelists.join(", ")
                },
                plan.throttle_policy.as_deref().unwrap_or("defaults"),
            ),
        )
        .await;
    }
    ctx.failures().remove(&ObjectRef::from(gateway.as_ref()));
    Ok(if ready < licence.licensed {
        Action::requeue(Duration::from_secs(15))
    } else {
        Action::requeue(RESYNC)
    })
}

/// An invalid spec waits for the next change, saying why.
async fn degraded(
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

/// Transient errors back off exponentially per gateway (1 s … 5 min), with jitter.
pub fn error_policy(gateway: Arc<FederationGateway>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = {
        let mut failures = ctx.failures();
        let n = failures
            .entry(ObjectRef::from(gateway.as_ref()))
            .or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempt, random_unit());
    tracing::warn!(gateway = %gateway.name_any(), %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// `base · 2^(attempt-1)`, capped, then scaled by a jitter factor in [0.5, 1.0).
pub fn backoff(attempt: u32, unit_random: f64) -> Duration {
    let base = Duration::from_secs(1);
    let cap = Duration::from_secs(300);
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    exp.mul_f64(0.5 + unit_random.clamp(0.0, 1.0) / 2.0)
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

async fn publish(
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

/// Server-side applies every child; returns the StatefulSet as the server holds it.
async fn apply_all(plan: &Plan, namespace: &str, client: &Client) -> Result<StatefulSet, Error> {
    let o = &plan.objects;
    apply::<ServiceAccount>(client, namespace, &o.service_account).await?;
    apply::<Role>(client, namespace, &o.pod_role).await?;
    apply::<RoleBinding>(client, namespace, &o.pod_role_binding).await?;
    apply::<ConfigMap>(client, namespace, &o.config_map).await?;
    for service in &o.services {
        apply::<Service>(client, namespace, service).await?;
    }
    match &o.pod_disruption_budget {
        Some(pdb) => {
            apply::<PodDisruptionBudget>(client, namespace, pdb).await?;
        }
        None => {
            // Scaled down to one replica: a PDB left behind would block node drains.
            let api = Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace);
            let name = o.stateful_set.name_any();
            match api.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    apply::<StatefulSet>(client, namespace, &o.stateful_set).await
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
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

/// The text under `key` of Secret `name`; `None` when either is absent.
/// The gateway's pods that are not ready, and why, for the Ready condition.
async fn waiting_pods(client: &Client, namespace: &str, name: &str) -> Result<Vec<String>, Error> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&build::pod_selector(name)))
        .await?;
    Ok(status::waiting_pods(&pods.items))
}

async fn read_secret_key(
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

/// The gateway's own keys (dialback secret, webhook clientState, credential key):
/// generated once, owned by the gateway, never rotated by a reconcile.
async fn ensure_keys_secret(
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
            labels: Some(build::labels(&gateway.name_any())),
            owner_references: gateway.controller_owner_ref(&()).map(|o| vec![o]),
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

async fn patch_status(
    gateway: &FederationGateway,
    namespace: &str,
    client: &Client,
    previous: &FederationGatewayStatus,
    observed: &Observed,
    applied: Option<(&Plan, &LicenceOutcome)>,
) -> Result<(), Error> {
    let generation = gateway.metadata.generation;
    let ready_replicas = match observed {
        Observed::Applied { ready, .. } => *ready,
        _ => previous.ready_replicas,
    };
    let status = FederationGatewayStatus {
        observed_generation: generation,
        conditions: status::conditions(
            observed,
            applied.map(|(_, l)| (l.ok, l.reason, l.message.as_str())),
            generation,
            &previous.conditions,
            &status::now(),
        ),
        ready_replicas,
        config_hash: applied
            .map(|(p, _)| p.config_hash.clone())
            .or_else(|| previous.config_hash.clone()),
        licence_assignments: applied
            .map(|(_, l)| l.assignments.clone())
            .unwrap_or_else(|| previous.licence_assignments.clone()),
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

/// Records which gateways a DomainWhitelist or ThrottlePolicy applies to.
async fn reconcile_policy<K>(
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
    let namespace = policy.namespace().ok_or(Error::NoNamespace)?;
    let gateways = Api::<FederationGateway>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items;
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

fn policy_error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "policy status update failed");
    Action::requeue(backoff(3, random_unit()))
}

/// Runs the FederationGateway controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    licence_public_key: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt;
    let shutdown = shutdown.shared();
    let ctx = Arc::new(Context::new(client.clone(), licence_public_key));
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
    let for_throttles = store;
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
                let all: Vec<FederationGateway> = for_whitelists
                    .state()
                    .iter()
                    .map(|g| (**g).clone())
                    .collect();
                selected_gateways(
                    &w.spec.gateways,
                    PolicyRef::Whitelist(&w.name_any()),
                    w.namespace().as_deref(),
                    &all,
                )
                .into_iter()
                .map(ObjectRef::from)
                .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<ThrottlePolicy>::all(client.clone()),
            watcher::Config::default(),
            move |t| {
                let all: Vec<FederationGateway> = for_throttles
                    .state()
                    .iter()
                    .map(|g| (**g).clone())
                    .collect();
                selected_gateways(
                    &t.spec.gateways,
                    PolicyRef::Throttle(&t.name_any()),
                    t.namespace().as_deref(),
                    &all,
                )
                .into_iter()
                .map(ObjectRef::from)
                .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| log_result(r.map(|(o, _)| o.to_string())));
    tokio::join!(gateways_done, whitelists, throttles);
}

async fn log_result<E: std::fmt::Display>(result: Result<String, E>) {
    match result {
        Ok(object) => tracing::debug!(%object, "reconciled"),
        Err(e) => tracing::debug!(error = %e, "reconcile error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(150));
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
