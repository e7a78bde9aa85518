//! An in-memory Kubernetes API server for controller tests and benchmarks
//! (kube-rs controller-rs "fixtures" style): a `kube::Client` whose requests are
//! answered from an object store keyed by path, and recorded so that a test can
//! assert on what the controller asked.
//!
//! Server-side apply stores the body and answers with it (a status the stored
//! object had is kept, as the real server keeps it); `…/status` patches set the
//! status of what is stored. GET returns what is stored or 404; a collection
//! lists its items, filtered by an equality `labelSelector`. POST creates,
//! DELETE removes, PUT replaces what exists. StatefulSets report their replicas
//! ready unless [`FakeKubeApi::set_ready_replicas`] says otherwise.
//!
//! The real API server (`../shared/kube`, operator/tests/cluster*.rs) covers
//! what this one does not: validation, RBAC, garbage collection, watches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    /// `None`: every StatefulSet reports all its replicas ready.
    ready_replicas: Option<i64>,
    /// Requests whose path contains this are answered 500.
    fail_path: Option<String>,
}

#[derive(Clone, Default)]
pub struct FakeKubeApi {
    state: Arc<Mutex<State>>,
}

impl FakeKubeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `object` at its path, e.g. `/apis/xmppfed.io/v1alpha1/namespaces/ns/federationgateways/a`.
    pub fn insert(&self, path: &str, object: Value) {
        self.lock().objects.insert(path.to_owned(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// StatefulSets applied from now on report `ready` ready replicas.
    pub fn set_ready_replicas(&self, ready: i64) {
        self.lock().ready_replicas = Some(ready);
    }

    /// Requests whose path contains `fragment` are answered 500 InternalError.
    pub fn fail_requests_to(&self, fragment: &str) {
        self.lock().fail_path = Some(fragment.to_owned());
    }

    /// Requests answered so far.
    pub fn request_count(&self) -> u64 {
        self.lock().requests.len() as u64
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The first request with `method` whose path ends with `path_suffix`.
    pub fn find(&self, method: Method, path_suffix: &str) -> Option<Recorded> {
        self.lock()
            .requests
            .iter()
            .find(|r| r.method == method && r.path.ends_with(path_suffix))
            .cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client served by this fake; answers until the runtime stops.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or_default().to_owned();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, reply) = {
                    let mut state = api.lock();
                    state.requests.push(Recorded {
                        method: method.clone(),
                        path: path.clone(),
                        query: query.clone(),
                        body: body.clone(),
                    });
                    answer(&mut state, &method, &path, &query, body)
                };
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
}

fn status_error(code: StatusCode, reason: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": reason, "reason": reason, "code": code.as_u16()}),
    )
}

fn answer(
    state: &mut State,
    method: &Method,
    path: &str,
    query: &str,
    body: Value,
) -> (StatusCode, Value) {
    if state.fail_path.as_deref().is_some_and(|f| path.contains(f)) {
        return status_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    }
    let not_found = || status_error(StatusCode::NOT_FOUND, "NotFound");
    let objects = &mut state.objects;
    match method.as_str() {
        "GET" => {
            if let Some(object) = objects.get(path) {
                return (StatusCode::OK, object.clone());
            }
            // A collection: every object directly under the path.
            let prefix = format!("{path}/");
            let selector = label_selector(query);
            let items: Vec<Value> = objects
                .iter()
                .filter(|(k, _)| {
                    k.strip_prefix(&prefix)
                        .is_some_and(|rest| !rest.contains('/'))
                })
                .map(|(_, v)| v)
                .filter(|v| {
                    selector
                        .iter()
                        .all(|(k, want)| v["metadata"]["labels"][k].as_str() == Some(want))
                })
                .cloned()
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
                let ready = state.ready_replicas.map_or(replicas.clone(), Value::from);
                object["status"] = json!({"replicas": replicas, "readyReplicas": ready});
            } else if let Some(status) = objects.get(path).map(|o| o["status"].clone())
                && !status.is_null()
            {
                object["status"] = status;
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

/// The `key=value` terms of a query's `labelSelector` (equality only, which is
/// all the operator sends).
fn label_selector(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == "labelSelector")
        .flat_map(|(_, s)| {
            s.split(',')
                .filter_map(|term| {
                    let (k, v) = term.split_once('=')?;
                    Some((k.to_owned(), v.to_owned()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Paths that name a namespaced resource collection (`…/namespaces/<ns>/<plural>`).
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    parts.len() >= 3 && parts[parts.len() - 3] == "namespaces"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_are_decoded_into_terms() {
        assert_eq!(
            label_selector("limit=5&labelSelector=app.kubernetes.io%2Finstance%3Dcontoso%2Cx%3Dy"),
            [
                (
                    "app.kubernetes.io/instance".to_owned(),
                    "contoso".to_owned()
                ),
                ("x".to_owned(), "y".to_owned())
            ]
        );
        assert!(label_selector("watch=true").is_empty());
    }
}
