//! The Graph emulator's HTTP side: the identity platform's token endpoint,
//! Graph v1.0 (users, photos, licences, presence), and a control API for
//! tests. Graph's behaviour follows Microsoft's documentation: error bodies
//! with `innerError`, `request-id` headers, permissions per operation as the
//! OpenAPI subset lists them, 429 with `Retry-After`.
//!
//! `gate` admits a call (authentication, faults and throttling,
//! authorisation, body, Teams provisioning); then one module per resource:
//! `token`, `users` (users, licences, photos, groups), `directory` (domains,
//! SKUs, policies, administrative units), `presence`, `chats`,
//! `subscriptions`, `batch`, and `control` for the tests; [`handle`] routes
//! a Graph call to its resource.

mod batch;
mod chats;
mod control;
mod directory;
mod gate;
mod presence;
mod subscriptions;
mod token;
mod users;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::spec::spec;
use super::tenant::{Principal, Seed, Tenant, guid};
use batch::batch;
use control::{
    control_chat_message, control_chat_messages, control_delay, control_drop, control_expire,
    control_faults, control_identity, control_lifecycle, control_presence, control_profile,
    control_start_chat, control_state,
};
use subscriptions::{create_subscription, deliver_all};
use token::token;

type Shared = Arc<Mutex<Tenant>>;

/// TLS in front of the emulator's listener. A handshake that fails or takes
/// longer than 10 s drops that connection only.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await
            {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A running emulator on a loopback port (or, run as a Pod, any address
/// over HTTPS).
pub struct GraphEmulator {
    addr: SocketAddr,
    scheme: &'static str,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GraphEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GraphEmulator {
    pub async fn start(seed: Seed) -> anyhow::Result<Self> {
        Self::start_on(seed, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(seed: Seed, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(seed, addr, None).await
    }

    /// Serves HTTPS with `tls` when given (the emulator as a Pod behind a
    /// Service: the gateway takes plain http only towards loopback).
    pub async fn start_with(
        seed: Seed,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        let state: Shared = Arc::new(Mutex::new(Tenant::from_seed(seed)));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(state.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            let _ = match tls {
                Some(tls) => {
                    let listener = TlsListener {
                        tcp: listener,
                        acceptor: tokio_rustls::TlsAcceptor::from(tls),
                    };
                    axum::serve(listener, app).await
                }
                None => axum::serve(listener, app).await,
            };
        });
        Ok(Self {
            addr,
            scheme,
            state,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `graph.authority_url` should be.
    pub fn authority_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// What `graph.graph_url` should be.
    pub fn graph_url(&self) -> String {
        format!("{}://{}/v1.0", self.scheme, self.addr)
    }

    /// The tenant, to inspect or change directly.
    pub fn tenant(&self) -> MutexGuard<'_, Tenant> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// POSTs to the control API (`/_emulator/…`) over HTTP, as a test or a
    /// person driving the emulator from outside would; an answer other than
    /// 2xx is an error.
    /// POSTs to a control route; its JSON answer (null when it has none).
    pub async fn control(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.authority_url()))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "POST {path}: {}",
            response.status()
        );
        let body = response.bytes().await?;
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/_emulator/users/{user}/presence", post(control_presence))
        .route("/_emulator/faults", post(control_faults))
        .route("/_emulator/identity", post(control_identity))
        .route(
            "/_emulator/chats/{chat}/messages",
            post(control_chat_message).get(control_chat_messages),
        )
        .route("/_emulator/chats", post(control_start_chat))
        .route(
            "/_emulator/subscriptions/{id}/lifecycle",
            post(control_lifecycle),
        )
        .route("/_emulator/notifications/drop", post(control_drop))
        .route("/_emulator/notifications/delay", post(control_delay))
        .route(
            "/_emulator/users/{user}",
            axum::routing::patch(control_profile),
        )
        .route("/_emulator/state", axum::routing::get(control_state))
        .route("/_emulator/subscriptions/{id}/expire", post(control_expire))
        .fallback(graph)
        .with_state(state)
}

fn lock(state: &Shared) -> MutexGuard<'_, Tenant> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_string() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

struct Ctx {
    request_id: String,
    client_request_id: String,
}

impl Ctx {
    fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        let body = json!({"error": {"code": code, "message": message, "innerError": {
            "date": now_string(), "request-id": self.request_id, "client-request-id": self.client_request_id}}});
        self.respond(status, Some(body))
    }

    fn respond(&self, status: StatusCode, body: Option<Value>) -> Response {
        let mut response = match body {
            Some(body) => (status, axum::Json(body)).into_response(),
            None => status.into_response(),
        };
        let headers = response.headers_mut();
        for (name, value) in [
            ("request-id", &self.request_id),
            ("client-request-id", &self.client_request_id),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        if status.is_success() && headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"),
            );
        }
        response
    }
}

fn query_select(uri: &Uri) -> Option<Vec<String>> {
    let query = uri.query()?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "$select")
        .map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
}

async fn graph(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = Ctx {
        request_id: guid(),
        client_request_id: headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map_or_else(guid, str::to_owned),
    };
    if method == Method::POST && uri.path().trim_end_matches('/') == "/v1.0/$batch" {
        return batch(&state, &ctx, &headers, &body).await;
    }
    // Everything under the tenant's lock happens in a plain function; creating
    // a subscription (which calls the subscriber back) happens after it.
    let mut subscribe = None;
    let response = graph_locked(&state, &ctx, &method, &uri, &headers, body, &mut subscribe);
    let response = match subscribe {
        Some((principal, body)) => create_subscription(&state, &ctx, &principal, body).await,
        None => response,
    };
    check_response(&state, &method, uri.path(), response).await
}

/// Holds our own answers to Microsoft's description too: a JSON body that
/// does not match the operation's schema is recorded as a violation.
async fn check_response(
    state: &Shared,
    method: &Method,
    path: &str,
    response: Response,
) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let op = if is_json {
        spec().find(method.as_str(), path)
    } else {
        None
    };
    let Some(op) = op else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    if let Ok(value) = serde_json::from_slice::<Value>(&bytes)
        && let Err(e) = spec().check_response(op, parts.status.as_u16(), &value)
    {
        lock(state).violations.push(format!("emulator answer: {e}"));
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

fn graph_locked(
    state: &Shared,
    ctx: &Ctx,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    subscribe: &mut Option<(Principal, Value)>,
) -> Response {
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/v1.0/") else {
        return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid version.");
    };
    // Unqualified and qualified action names are the same operation.
    let segments: Vec<&str> = rest
        .trim_end_matches('/')
        .split('/')
        .map(|s| s.strip_prefix("microsoft.graph.").unwrap_or(s))
        .map(|s| s.strip_suffix("()").unwrap_or(s))
        .collect();
    let mut t = lock(state);
    t.log.push(match uri.query() {
        Some(query) => format!("{method} {path}?{query}"),
        None => format!("{method} {path}"),
    });

    let principal = match gate::authenticate(&t, ctx, headers) {
        Ok(principal) => principal,
        Err(refused) => return *refused,
    };
    if let Err(refused) = gate::admit(&mut t, ctx, method, &segments, &principal) {
        return *refused;
    }
    let operation = match gate::authorise(&t, ctx, method, path, &segments, &principal) {
        Ok(operation) => operation,
        Err(refused) => return *refused,
    };
    let json_body = match gate::json_body(&mut t, ctx, method, &segments, operation, &body) {
        Ok(json_body) => json_body,
        Err(refused) => return *refused,
    };
    if *method == Method::POST && segments == ["subscriptions"] {
        *subscribe = Some((principal, json_body.unwrap_or(Value::Null)));
        return StatusCode::ACCEPTED.into_response();
    }
    if let Err(refused) = gate::teams_provisioned(&t, ctx, &segments, &principal) {
        return *refused;
    }
    let call = Call {
        ctx,
        principal: &principal,
        method,
        segments: &segments,
        uri,
        body: json_body.unwrap_or(Value::Null),
        raw: body,
        headers,
    };
    let response = handle(&mut t, call);
    let outgoing = std::mem::take(&mut t.outgoing);
    drop(t);
    deliver_all(state, outgoing);
    response
}

/// A Graph call, authenticated and authorised, as a resource module answers it.
struct Call<'a> {
    ctx: &'a Ctx,
    principal: &'a Principal,
    method: &'a Method,
    segments: &'a [&'a str],
    uri: &'a Uri,
    body: Value,
    raw: Bytes,
    headers: &'a HeaderMap,
}

fn not_found(ctx: &Ctx, id: &str) -> Response {
    ctx.error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."))
}

fn not_implemented(ctx: &Ctx) -> Response {
    ctx.error(
        StatusCode::NOT_IMPLEMENTED,
        "NotImplemented",
        "This operation is not emulated yet.",
    )
}

/// The routing table: each path to the module of its resource.
fn handle(t: &mut Tenant, call: Call<'_>) -> Response {
    match call.segments {
        ["users", _, "presence", ..] | ["communications", ..] => presence::handle(t, call),
        ["users", _, "chats"] | ["chats", ..] => chats::handle(t, call),
        ["subscriptions", ..] => subscriptions::handle(t, call),
        ["users", ..] | ["groups", ..] => users::handle(t, call),
        ["domains", ..]
        | ["subscribedSkus"]
        | ["policies", ..]
        | ["identity", ..]
        | ["directory", ..] => directory::handle(t, call),
        _ => not_implemented(call.ctx),
    }
}
