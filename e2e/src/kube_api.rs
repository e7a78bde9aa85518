//! An in-memory Kubernetes API server for controller tests and benchmarks: a
//! `kube::Client` whose requests are answered from an object store keyed by
//! path. Server-side apply stores the body (and answers with it), GET returns
//! what is stored or 404, list returns a collection's items, POST creates, DELETE
//! removes, PUT replaces what exists. StatefulSets report all their replicas ready.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Clone, Default)]
pub struct FakeKubeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    requests: Arc<Mutex<u64>>,
}

impl FakeKubeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `object` at its path, e.g. `/apis/xmppfed.io/v1alpha1/namespaces/ns/federationgateways/a`.
    pub fn insert(&self, path: &str, object: Value) {
        self.lock().insert(path.to_owned(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().get(path).cloned()
    }

    /// Requests answered so far.
    pub fn request_count(&self) -> u64 {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client served by this fake; answers until the runtime stops.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, reply) = api.answer(&method, &path, body);
                *api.requests.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                let response = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()));
                if let Ok(response) = response {
                    send.send_response(response);
                }
            }
        });
        Client::new(service, "default")
    }

    fn answer(&self, method: &Method, path: &str, body: Value) -> (StatusCode, Value) {
        let not_found = || {
            (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            )
        };
        let mut objects = self.lock();
        match method.as_str() {
            "GET" => {
                if let Some(object) = objects.get(path) {
                    return (StatusCode::OK, object.clone());
                }
                // A collection: every object directly under the path.
                let prefix = format!("{path}/");
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(k, _)| {
                        k.strip_prefix(&prefix)
                            .is_some_and(|rest| !rest.contains('/'))
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                if items.is_empty() && !is_collection(path) {
                    return not_found();
                }
                (
                    StatusCode::OK,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "PATCH" => {
                if let Some(object_path) = path.strip_suffix("/status") {
                    let Some(object) = objects.get_mut(object_path) else {
                        return not_found();
                    };
                    object["status"] = body["status"].clone();
                    return (StatusCode::OK, object.clone());
                }
                let mut object = body;
                if path.contains("/statefulsets/") {
                    let replicas = object["spec"]["replicas"].clone();
                    object["status"] = json!({"replicas": replicas, "readyReplicas": replicas});
                }
                objects.insert(path.to_owned(), object.clone());
                (StatusCode::OK, object)
            }
            "POST" => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or("generated")
                    .to_owned();
                objects.insert(format!("{path}/{name}"), body.clone());
                (StatusCode::CREATED, body)
            }
            "PUT" => {
                if !objects.contains_key(path) {
                    return not_found();
                }
                objects.insert(path.to_owned(), body.clone());
                (StatusCode::OK, body)
            }
            "DELETE" => match objects.remove(path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({"kind": "Status", "status": "Success"}),
                ),
                None => not_found(),
            },
            _ => not_found(),
        }
    }
}

/// Paths that name a namespaced resource collection (`…/namespaces/<ns>/<plural>`).
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    parts.len() >= 3 && parts[parts.len() - 3] == "namespaces"
}
