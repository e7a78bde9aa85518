//! This pod's own metadata, patched through the Kubernetes API with the
//! pod's service account (the operator grants `patch` on its own pods
//! only): the role label the s2s Service selects, and the tenant's sign-in
//! state the operator turns into the TenantReady condition.

use std::path::PathBuf;
use std::time::Duration;

pub struct PodMetadata {
    client: reqwest::Client,
    url: String,
    token: PathBuf,
}

impl std::fmt::Debug for PodMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodMetadata")
            .field("url", &self.url)
            .finish()
    }
}

/// Pause before a failed patch is tried again.
const RETRY: Duration = Duration::from_secs(2);

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl PodMetadata {
    /// In a pod with `POD_NAME`, `POD_NAMESPACE` and a service account token; else `None`.
    pub fn from_environment() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (host, port) = (
            var("KUBERNETES_SERVICE_HOST")?,
            var("KUBERNETES_SERVICE_PORT")?,
        );
        let (pod, namespace) = (var("POD_NAME")?, var("POD_NAMESPACE")?);
        let dir = PathBuf::from(SERVICE_ACCOUNT);
        let ca = std::fs::read(dir.join("ca.crt")).ok()?;
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).ok()?])
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(Self {
            client,
            url: format!("https://{host}:{port}/api/v1/namespaces/{namespace}/pods/{pod}"),
            token: dir.join("token"),
        })
    }

    /// The pod at `url`, authenticated by the token in `token` (tests).
    pub fn at(url: String, token: PathBuf) -> Self {
        Self {
            client: reqwest::Client::new(),
            url,
            token,
        }
    }

    pub async fn set_label(&self, key: &str, value: &str) -> Result<(), String> {
        self.patch(serde_json::json!({"metadata": {"labels": {key: value}}}))
            .await
    }

    /// Sets the annotation, or removes it with `None`.
    pub async fn set_annotation(&self, key: &str, value: Option<&str>) -> Result<(), String> {
        self.patch(serde_json::json!({"metadata": {"annotations": {key: value}}}))
            .await
    }

    /// Keeps annotation `key` equal to the latest value `state` holds, for
    /// as long as `state` has a sender; a failed patch is tried again.
    pub async fn keep_annotation(
        self,
        key: &'static str,
        mut state: tokio::sync::watch::Receiver<Option<String>>,
    ) {
        loop {
            let value = state.borrow_and_update().clone();
            if let Some(value) = value {
                while let Err(e) = self.set_annotation(key, Some(&value)).await {
                    tracing::warn!(error = %e, key, "cannot annotate this pod");
                    tokio::time::sleep(RETRY).await;
                }
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    }

    async fn patch(&self, body: serde_json::Value) -> Result<(), String> {
        // Read each time: projected tokens are rotated.
        let token = std::fs::read_to_string(&self.token).map_err(|e| e.to_string())?;
        let response = self
            .client
            .patch(&self.url)
            .bearer_auth(token.trim())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/merge-patch+json",
            )
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("PATCH {}: {}", self.url, response.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn an_annotation_follows_its_state_and_a_failed_patch_is_tried_again() {
        use axum::extract::State;
        type Seen = Arc<Mutex<Vec<serde_json::Value>>>;
        let seen: Seen = Default::default();
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods/{pod}",
                axum::routing::patch(|State(seen): State<Seen>, body: String| async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push(serde_json::from_str(&body).unwrap());
                    // The first patch fails, as when the API server is restarting.
                    if seen.len() == 1 {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::OK
                    }
                }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        let pod = PodMetadata::at(
            format!("http://{addr}/api/v1/namespaces/xmpp/pods/g-0"),
            dir.path().join("token"),
        );
        let (tx, rx) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(pod.keep_annotation("xmppfed.io/tenant-sign-in", rx));
        tx.send_replace(Some("MfaRequired: sign-in refused".to_owned()));
        tokio::time::sleep(RETRY + Duration::from_millis(500)).await;
        tx.send_replace(Some("ok".to_owned()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("ends with its state")
            .unwrap();
        let values: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                b["metadata"]["annotations"]["xmppfed.io/tenant-sign-in"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            values,
            [
                "MfaRequired: sign-in refused",
                "MfaRequired: sign-in refused",
                "ok"
            ]
        );
    }
}
