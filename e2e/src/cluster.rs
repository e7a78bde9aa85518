//! The Kubernetes cluster the cluster tests run against: the one `KUBECONFIG`
//! names. Without one a test skips, saying so, unless `XMPPFED_TEST_CLUSTER=
//! required` (CI sets it when it has started a control plane): then a
//! missing or silent cluster fails the test instead of passing it quietly.

use std::future::Future;
use std::time::Duration;

use kube::Client;

/// Whether the cluster tests must run (CI has started a cluster for them).
pub fn required() -> bool {
    std::env::var("XMPPFED_TEST_CLUSTER").is_ok_and(|v| v == "required")
}

/// A client for the cluster, or `None` after printing why the test skips.
pub async fn client(test: &str) -> Option<Client> {
    let required = required();
    let why = match connect().await {
        Ok(client) => return Some(client),
        Err(why) => why,
    };
    assert!(
        !required,
        "{test}: XMPPFED_TEST_CLUSTER=required but there is no cluster: {why}"
    );
    eprintln!("skipped: {test} needs a Kubernetes cluster ({why})");
    None
}

async fn connect() -> Result<Client, String> {
    let configured = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if !configured {
        return Err("KUBECONFIG is not set".into());
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = Client::try_default().await.map_err(|e| e.to_string())?;
    client
        .apiserver_version()
        .await
        .map_err(|e| format!("the API server does not answer: {e}"))?;
    Ok(client)
}

/// Polls `check` every half second until it gives a value; fails the test
/// with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match within(timeout, check).await {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every half second until it gives a value, for at most
/// `timeout`: `None` then, for a caller that says more about what it saw.
pub async fn within<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Applies `crds` (server-side, forced) and waits until each is Established.
pub async fn install_crds(
    client: &Client,
    crds: impl IntoIterator<
        Item = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::ResourceExt;
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply("xmppfed-tests").force();
    let mut names = Vec::new();
    for crd in crds {
        let name = crd.name_any();
        api.patch(&name, &apply, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        names.push(name);
    }
    for name in names {
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    api.get(&name)
                        .await
                        .ok()?
                        .status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
}
