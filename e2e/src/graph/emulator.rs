//! The Graph emulator's HTTP side: the identity platform's token endpoint,
//! Graph v1.0 (users, photos, licences, presence), and a control API for
//! tests. Graph's behaviour follows Microsoft's documentation: error bodies
//! with `innerError`, `request-id` headers, permissions per operation as the
//! OpenAPI subset lists them, 429 with `Retry-After`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::spec::spec;
use super::tenant::{Principal, Seed, Session, Tenant, Token, guid};

type Shared = Arc<Mutex<Tenant>>;

/// A running emulator on a loopback port.
pub struct GraphEmulator {
    addr: SocketAddr,
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
        let state: Shared = Arc::new(Mutex::new(Tenant::from_seed(seed)));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `graph.authority_url` should be.
    pub fn authority_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `graph.graph_url` should be.
    pub fn graph_url(&self) -> String {
        format!("http://{}/v1.0", self.addr)
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
        .route(
            "/_emulator/chats/{chat}/messages",
            post(control_chat_message),
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

// ---- the identity platform ------------------------------------------------

fn aad_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}"),
        "error_codes": [code],
        "timestamp": now_string(),
        "trace_id": guid(),
        "correlation_id": guid(),
    });
    (status, axum::Json(body)).into_response()
}

/// POST /{tenant}/oauth2/v2.0/token: client credentials (secret), password
/// (resource owner, for shadow accounts) and refresh_token (rotated).
async fn token(State(state): State<Shared>, Path(tenant): Path<String>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut t = lock(&state);
    t.token_requests += 1;
    if !tenant.eq_ignore_ascii_case(&t.id) {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let Some(app) = t
        .apps
        .iter()
        .find(|a| Some(a.client_id.as_str()) == field("client_id"))
        .cloned()
    else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    };
    if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid client_assertion_type.",
            );
        }
        if let Err(why) = verify_assertion(&app, assertion, &tenant) {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                &format!("Client assertion failed signature validation: {why}"),
            );
        }
    } else if app.client_secret.is_none() || field("client_secret") != app.client_secret.as_deref()
    {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        );
    }
    let expires_in = 3599u64;
    let expires = Instant::now() + Duration::from_secs(expires_in);
    let access = guid() + &guid();
    match field("grant_type") {
        Some("client_credentials") => {
            if field("scope") != Some("https://graph.microsoft.com/.default") {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    1002012,
                    "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
                );
            }
            t.tokens.insert(
                access.clone(),
                Token {
                    principal: Principal::App {
                        client_id: app.client_id,
                        roles: app.roles,
                    },
                    expires,
                },
            );
            axum::Json(json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access})).into_response()
        }
        Some("password") | Some("refresh_token") => {
            let user_id = if field("grant_type") == Some("password") {
                let (Some(username), Some(password)) = (field("username"), field("password"))
                else {
                    return aad_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        900144,
                        "The request body must contain the following parameter: 'username' and 'password'.",
                    );
                };
                match t.user(username) {
                    Some(u) if u.password.as_deref() == Some(password) => u.id.clone(),
                    _ => {
                        return aad_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            50126,
                            "Error validating credentials due to invalid username or password.",
                        );
                    }
                }
            } else {
                let presented = field("refresh_token").unwrap_or_default().to_owned();
                // Refresh tokens rotate: each is good for one redemption.
                match t.refresh_tokens.remove(&presented) {
                    Some((client, user)) if client == app.client_id => user,
                    _ => {
                        return aad_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            70000,
                            "The provided grant is invalid or malformed.",
                        );
                    }
                }
            };
            let refresh = guid() + &guid();
            t.refresh_tokens
                .insert(refresh.clone(), (app.client_id.clone(), user_id.clone()));
            let scope = app.scopes.join(" ");
            t.tokens.insert(
                access.clone(),
                Token {
                    principal: Principal::User {
                        client_id: app.client_id,
                        user_id,
                        scopes: app.scopes,
                    },
                    expires,
                },
            );
            axum::Json(json!({"token_type": "Bearer", "scope": scope, "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access, "refresh_token": refresh})).into_response()
        }
        other => aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!(
                "The app requested an unsupported grant type '{}'.",
                other.unwrap_or("")
            ),
        ),
    }
}

/// Checks an RFC 7523 client assertion the way Entra does: RS256, `x5t` of the
/// app's registered certificate, signature, audience, issuer and subject, time.
fn verify_assertion(app: &super::tenant::AppSeed, jwt: &str, tenant: &str) -> Result<(), String> {
    use base64::Engine as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha1::Digest as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pem = app
        .certificate_pem
        .as_deref()
        .ok_or("no certificate is registered for the app")?;
    let cert = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("registered certificate: {e}"))?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("not a JWT".into());
    };
    let decode = |s: &str| -> Result<Value, String> {
        let bytes = b64.decode(s).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let (header_json, claims_json) = (decode(header)?, decode(claims)?);
    if header_json["alg"] != json!("RS256") {
        return Err("alg must be RS256".into());
    }
    let thumbprint = b64.encode(sha1::Sha1::digest(cert.as_ref()));
    if header_json["x5t"].as_str() != Some(thumbprint.as_str()) {
        return Err("x5t does not name the registered certificate".into());
    }
    let signature = b64.decode(signature).map_err(|e| e.to_string())?;
    let end_entity = webpki::EndEntityCert::try_from(&cert).map_err(|e| e.to_string())?;
    end_entity
        .verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            format!("{header}.{claims}").as_bytes(),
            &signature,
        )
        .map_err(|e| format!("signature: {e}"))?;
    let audience = claims_json["aud"].as_str().unwrap_or_default();
    if !audience.ends_with(&format!("/{tenant}/oauth2/v2.0/token")) {
        return Err(format!("aud {audience} is not this token endpoint"));
    }
    if claims_json["iss"] != json!(app.client_id) || claims_json["sub"] != json!(app.client_id) {
        return Err("iss and sub must be the client id".into());
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let exp = claims_json["exp"].as_i64().unwrap_or(0);
    let nbf = claims_json["nbf"].as_i64().unwrap_or(0);
    if exp <= now || nbf > now + 300 {
        return Err("the assertion is expired or not yet valid".into());
    }
    Ok(())
}

// ---- Graph -----------------------------------------------------------------

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

/// Permissions for operations Microsoft documents but the OpenAPI subset lacks.
fn documented_permissions(
    method: &Method,
    segments: &[&str],
) -> Option<(Vec<&'static str>, Vec<&'static str>)> {
    match (method.as_str(), segments) {
        ("POST", ["users"]) => Some((
            vec!["User.ReadWrite.All", "Directory.ReadWrite.All"],
            vec!["User.ReadWrite.All"],
        )),
        ("PATCH", ["users", _]) | ("DELETE", ["users", _]) => Some((
            vec!["User.ReadWrite.All", "Directory.ReadWrite.All"],
            vec!["User.ReadWrite.All"],
        )),
        ("POST", ["users", _, "assignLicense"]) => Some((
            vec![
                "LicenseAssignment.ReadWrite.All",
                "User.ReadWrite.All",
                "Directory.ReadWrite.All",
            ],
            vec!["LicenseAssignment.ReadWrite.All"],
        )),
        // Microsoft's documentation: group-list-transitivemembers.
        ("GET", ["groups", _, "transitiveMembers"]) | ("GET", ["groups", _, "members"]) => Some((
            vec![
                "GroupMember.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
            ],
            vec![
                "GroupMember.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
            ],
        )),
        ("PUT", ["users", _, "photo", "$value"]) => Some((
            vec!["ProfilePhoto.ReadWrite.All", "User.ReadWrite.All"],
            vec!["User.ReadWrite"],
        )),
        _ => None,
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

/// JSON batching (`POST /$batch`): at most 20 requests, each authorised and
/// answered as if sent alone, with its own status, headers and body.
async fn batch(state: &Shared, ctx: &Ctx, headers: &HeaderMap, body: &Bytes) -> Response {
    lock(state).log.push("POST /v1.0/$batch".into());
    let Ok(batch) = serde_json::from_slice::<Value>(body) else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid batch payload format.",
        );
    };
    let Some(requests) = batch["requests"].as_array() else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid batch payload format.",
        );
    };
    if requests.len() > 20 {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Maximum number of requests in a batch is 20.",
        );
    }
    let mut responses = Vec::new();
    for request in requests {
        let id = request["id"].as_str().unwrap_or_default().to_owned();
        let method = request["method"]
            .as_str()
            .and_then(|m| m.parse::<Method>().ok())
            .unwrap_or(Method::GET);
        let url = request["url"].as_str().unwrap_or_default();
        let Ok(uri) = format!("/v1.0/{}", url.trim_start_matches('/')).parse::<Uri>() else {
            responses.push(json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Invalid request URL."}}}));
            continue;
        };
        let mut sub_headers = headers.clone();
        sub_headers.remove(header::CONTENT_LENGTH);
        let sub_body = match request.get("body") {
            Some(b) if !b.is_null() => Bytes::from(serde_json::to_vec(b).unwrap_or_default()),
            _ => Bytes::new(),
        };
        let sub_ctx = Ctx {
            request_id: guid(),
            client_request_id: ctx.client_request_id.clone(),
        };
        let mut subscribe = None;
        let response = graph_locked(
            state,
            &sub_ctx,
            &method,
            &uri,
            &sub_headers,
            sub_body,
            &mut subscribe,
        );
        if subscribe.is_some() {
            responses.push(json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Subscriptions cannot be created in a batch."}}}));
            continue;
        }
        let status = response.status().as_u16();
        let mut out_headers = serde_json::Map::new();
        for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
            if let Some(v) = response.headers().get(&name).and_then(|v| v.to_str().ok()) {
                out_headers.insert(name.as_str().to_owned(), json!(v));
            }
        }
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut item = json!({"id": id, "status": status, "headers": out_headers});
        if !body.is_null() {
            item["body"] = body;
        }
        responses.push(item);
    }
    ctx.respond(StatusCode::OK, Some(json!({"responses": responses})))
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
    t.log.push(format!("{method} {path}"));

    // Authentication.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(bearer) = bearer else {
        return ctx.error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        );
    };
    let principal = match t.tokens.get(bearer) {
        Some(token) if token.expires > Instant::now() => token.principal.clone(),
        Some(_) => {
            return ctx.error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            );
        }
        None => {
            return ctx.error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "IDX14100: JWT is not well formed.",
            );
        }
    };

    // Injected faults, then throttling.
    if let Some((status, count, retry_after)) = t.faults.status {
        t.faults.status = (count > 1).then_some((status, count - 1, retry_after));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let code = if status == StatusCode::TOO_MANY_REQUESTS {
            "TooManyRequests"
        } else {
            "ServiceUnavailable"
        };
        let mut response = ctx.error(
            status,
            code,
            "Injected fault: please retry after the indicated time.",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
    }
    if let Some(retry_after) = t.throttle(principal.client_id(), Instant::now()) {
        let mut response = ctx.error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests. Please try again later.",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
    }

    // Authorisation, as the OpenAPI subset (or Microsoft's documentation) lists it.
    let operation = spec().find(method.as_str(), path);
    let (application, delegated): (Vec<String>, Vec<String>) = match operation {
        Some(op) => (op.application.clone(), op.delegated.clone()),
        None => match documented_permissions(method, &segments) {
            Some((a, d)) => (
                a.into_iter().map(str::to_owned).collect(),
                d.into_iter().map(str::to_owned).collect(),
            ),
            None => {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!(
                        "Resource not found for the segment '{}'.",
                        segments.last().unwrap_or(&"")
                    ),
                );
            }
        },
    };
    let granted = match &principal {
        Principal::App { roles, .. } => roles.iter().any(|r| application.contains(r)),
        Principal::User { scopes, .. } => scopes.iter().any(|s| delegated.contains(s)),
    };
    // A subscription's permissions depend on its resource: checked by its handler.
    if !granted && segments.first() != Some(&"subscriptions") {
        let code = if segments.first() == Some(&"users") && segments.len() <= 2 {
            "Authorization_RequestDenied"
        } else {
            "Forbidden"
        };
        return ctx.error(
            StatusCode::FORBIDDEN,
            code,
            "Insufficient privileges to complete the operation.",
        );
    }

    let json_body: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    if !body.is_empty()
        && json_body.is_none()
        && !(method == Method::PUT && segments.last() == Some(&"$value"))
    {
        return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.");
    }
    // The caller's requests are held to Microsoft's description as our answers
    // are: a body the document's schema rejects is recorded as a violation.
    if let (Some(op), Some(body)) = (operation, &json_body)
        && let Err(e) = spec().check_request(op, body)
    {
        t.violations.push(format!("request: {e}"));
    }
    if *method == Method::POST && segments == ["subscriptions"] {
        *subscribe = Some((principal, json_body.unwrap_or(Value::Null)));
        return StatusCode::ACCEPTED.into_response();
    }
    let response = handle(
        &mut t, ctx, &principal, method, &segments, uri, json_body, body, headers,
    );
    let outgoing = std::mem::take(&mut t.outgoing);
    drop(t);
    deliver_all(state, outgoing);
    response
}

/// What a subscription to `resource` needs, and how long it may live (minutes).
fn subscription_rules(resource: &str) -> Option<(Vec<&'static str>, Vec<&'static str>, i64)> {
    let r = resource.trim_start_matches('/');
    let parts: Vec<&str> = r.split('/').collect();
    match parts.as_slice() {
        ["communications", p, ..] if p.starts_with("presences") => {
            Some((vec![], vec!["Presence.Read.All"], 60))
        }
        ["chats", "getAllMessages"] => Some((vec!["Chat.Read.All"], vec![], 60)),
        ["chats", _, "messages"] => Some((
            vec!["Chat.Read.All"],
            vec!["Chat.Read", "Chat.ReadWrite"],
            60,
        )),
        ["users", _, "chats", "getAllMessages"] => Some((
            vec!["Chat.Read.All"],
            vec!["Chat.Read", "Chat.ReadWrite"],
            60,
        )),
        ["users"] | ["users", _] => Some((
            vec!["User.Read.All", "User.ReadWrite.All"],
            vec!["User.Read.All"],
            41760,
        )),
        _ => None,
    }
}

fn subscription_resource(s: &super::tenant::Subscription) -> Value {
    json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
        "id": s.id, "resource": s.resource, "applicationId": s.application_id, "changeType": s.change_type,
        "clientState": s.client_state, "notificationUrl": s.notification_url, "notificationQueryOptions": null,
        "lifecycleNotificationUrl": s.lifecycle_url, "expirationDateTime": s.expiration.to_string(),
        "creatorId": s.creator_id, "includeResourceData": false, "latestSupportedTlsVersion": "v1_2",
        "encryptionCertificate": null, "encryptionCertificateId": null, "notificationUrlAppId": null,
    })
}

/// The validation handshake: Graph POSTs `?validationToken=…` and wants the
/// token back, as text/plain with 200, within 10 seconds.
async fn validate_endpoint(url: &str) -> Result<(), String> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        guid()
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let encoded = serde_urlencoded::to_string([("validationToken", &token)]).unwrap_or_default();
    let separator = if url.contains('?') { '&' } else { '?' };
    let response = http
        .post(format!("{url}{separator}{encoded}"))
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .send()
        .await
        .map_err(|e| format!("the endpoint did not answer: {e}"))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.text().await.unwrap_or_default();
    if status != StatusCode::OK || body != token || !content_type.starts_with("text/plain") {
        return Err(format!("answered {status} {content_type:?} {body:?}"));
    }
    Ok(())
}

async fn create_subscription(
    state: &Shared,
    ctx: &Ctx,
    principal: &Principal,
    body: Value,
) -> Response {
    let resource = body["resource"].as_str().unwrap_or_default().to_owned();
    let Some((app, delegated, max_minutes)) = subscription_rules(&resource) else {
        return ctx.error(StatusCode::BAD_REQUEST, "ExtensionError", &format!("Operation: Create; Exception: [Status Code: BadRequest; Reason: The resource '{resource}' is not supported.]"));
    };
    let granted = match principal {
        Principal::App { roles, .. } => roles.iter().any(|r| app.contains(&r.as_str())),
        Principal::User { scopes, .. } => scopes.iter().any(|s| delegated.contains(&s.as_str())),
    };
    if !granted {
        return ctx.error(StatusCode::FORBIDDEN, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: The caller does not have the permission the resource needs.]");
    }
    let (Some(url), Some(change_type), Some(expiration)) = (
        body["notificationUrl"].as_str(),
        body["changeType"].as_str(),
        body["expirationDateTime"].as_str(),
    ) else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "notificationUrl, changeType and expirationDateTime are required.",
        );
    };
    let Ok(expiration) = expiration.parse::<k8s_openapi::jiff::Timestamp>() else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "expirationDateTime is not a date and time.",
        );
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let minutes = (expiration.as_second() - now.as_second()) / 60;
    if expiration <= now || minutes > max_minutes {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("Subscription expiration can only be {max_minutes} minutes in the future."),
        );
    }
    if !url.starts_with("https://")
        && !url.starts_with("http://127.0.0.1")
        && !url.starts_with("http://localhost")
    {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "The notification URL must be https.",
        );
    }
    if let Err(why) = validate_endpoint(url).await {
        return ctx.error(StatusCode::BAD_REQUEST, "InvalidRequest", &format!("Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request: {why}"));
    }
    let lifecycle_url = body["lifecycleNotificationUrl"].as_str().map(str::to_owned);
    if let Some(lifecycle) = &lifecycle_url
        && let Err(why) = validate_endpoint(lifecycle).await
    {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!(
                "Subscription validation request failed for the lifecycle notification URL: {why}"
            ),
        );
    }
    let creator_id = match principal {
        Principal::User { user_id, .. } => user_id.clone(),
        Principal::App { client_id, .. } => client_id.clone(),
    };
    let subscription = super::tenant::Subscription {
        id: guid(),
        resource,
        change_type: change_type.to_owned(),
        notification_url: url.to_owned(),
        lifecycle_url,
        client_state: body["clientState"].as_str().map(str::to_owned),
        expiration,
        application_id: principal.client_id().to_owned(),
        creator_id,
    };
    let resource = subscription_resource(&subscription);
    lock(state).subscriptions.push(subscription);
    ctx.respond(StatusCode::CREATED, Some(resource))
}

/// POSTs queued notifications, each in a task of its own.
fn deliver_all(state: &Shared, outgoing: Vec<(String, Value, String)>) {
    for (url, body, subscription) in outgoing {
        let state = state.clone();
        tokio::spawn(async move {
            let delay = {
                let mut t = lock(&state);
                if t.drop_notifications > 0 {
                    t.drop_notifications -= 1;
                    return;
                }
                t.notification_delay_ms
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let status = match reqwest::Client::new()
                .post(&url)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            lock(&state).delivered.push((subscription, status));
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    t: &mut Tenant,
    ctx: &Ctx,
    principal: &Principal,
    method: &Method,
    segments: &[&str],
    uri: &Uri,
    json: Option<Value>,
    raw: Bytes,
    headers: &HeaderMap,
) -> Response {
    let not_found = |id: &str| {
        ctx.error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."))
    };
    let body = json.unwrap_or(Value::Null);
    match (method.as_str(), segments) {
        ("GET", ["users"]) => {
            let select = query_select(uri);
            let value: Vec<Value> = t.users.iter().map(|u| u.resource(select.as_deref())).collect();
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users", "value": value})))
        }
        ("GET", ["users", id]) => match t.user(id) {
            Some(u) => {
                let mut resource = u.resource(query_select(uri).as_deref());
                resource["@odata.context"] = json!("https://graph.microsoft.com/v1.0/$metadata#users/$entity");
                ctx.respond(StatusCode::OK, Some(resource))
            }
            None => not_found(id),
        },
        ("POST", ["users"]) => {
            let required = ["accountEnabled", "displayName", "mailNickname", "userPrincipalName", "passwordProfile"];
            if let Some(missing) = required.iter().find(|f| body.get(**f).is_none()) {
                return ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", &format!("Invalid value specified for property '{missing}' of resource 'User'."));
            }
            let upn = body["userPrincipalName"].as_str().unwrap_or_default().to_owned();
            if t.user(&upn).is_some() {
                return ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", "Another object with the same value for property userPrincipalName already exists.");
            }
            let mut properties: std::collections::BTreeMap<String, Value> = body
                .as_object()
                .map(|m| m.iter().filter(|(k, _)| *k != "passwordProfile").map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            properties.entry("businessPhones".into()).or_insert(json!([]));
            let user = super::tenant::User {
                id: guid(),
                password: body["passwordProfile"]["password"].as_str().map(str::to_owned),
                properties,
                photo: None,
                licences: Vec::new(),
                presence: Default::default(),
            };
            let mut resource = user.resource(None);
            resource["@odata.context"] = json!("https://graph.microsoft.com/v1.0/$metadata#users/$entity");
            t.users.push(user);
            ctx.respond(StatusCode::CREATED, Some(resource))
        }
        ("PATCH", ["users", id]) => match t.user_mut(id) {
            Some(u) => {
                if let Some(fields) = body.as_object() {
                    for (k, v) in fields {
                        if k == "passwordProfile" {
                            u.password = v["password"].as_str().map(str::to_owned);
                        } else {
                            u.properties.insert(k.clone(), v.clone());
                        }
                    }
                }
                ctx.respond(StatusCode::NO_CONTENT, None)
            }
            None => not_found(id),
        },
        ("DELETE", ["users", id]) => {
            let before = t.users.len();
            let key = id.to_ascii_lowercase();
            t.users.retain(|u| u.id.to_ascii_lowercase() != key && u.upn().to_ascii_lowercase() != key);
            if t.users.len() == before { not_found(id) } else { ctx.respond(StatusCode::NO_CONTENT, None) }
        }
        ("POST", ["users", id, "assignLicense"]) => {
            let add: Vec<String> = body["addLicenses"].as_array().map(|a| a.iter().filter_map(|l| l["skuId"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
            let remove: Vec<String> = body["removeLicenses"].as_array().map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_owned)).collect()).unwrap_or_default();
            if body.get("addLicenses").is_none() || body.get("removeLicenses").is_none() {
                return ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", "Invalid value specified for property 'addLicenses' or 'removeLicenses'.");
            }
            for sku in &add {
                let Some(known) = t.skus.iter().find(|s| &s.sku_id == sku).cloned() else {
                    return ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", &format!("License {sku} does not correspond to a valid company License."));
                };
                let used = t.users.iter().filter(|u| u.licences.contains(sku)).count();
                if used >= known.prepaid_units as usize {
                    return ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", &format!("License assignment failed because there are no available licenses for {}.", known.sku_part_number));
                }
            }
            // Microsoft 365 licenses nobody without a usage location.
            if !add.is_empty()
                && t.user(id).is_some_and(|u| u.properties.get("usageLocation").is_none_or(Value::is_null))
            {
                return ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", "License assignment cannot be done for user with invalid usage location.");
            }
            match t.user_mut(id) {
                Some(u) => {
                    u.licences.retain(|l| !remove.contains(l));
                    for sku in add {
                        if !u.licences.contains(&sku) {
                            u.licences.push(sku);
                        }
                    }
                    let mut resource = u.resource(None);
                    resource["@odata.context"] = json!("https://graph.microsoft.com/v1.0/$metadata#users/$entity");
                    ctx.respond(StatusCode::OK, Some(resource))
                }
                None => not_found(id),
            }
        }
        ("GET", ["users", id, "photo", "$value"]) => match t.user(id) {
            Some(u) => match &u.photo {
                Some((content_type, bytes)) => {
                    let mut response = ctx.respond(StatusCode::OK, None);
                    *response.body_mut() = axum::body::Body::from(bytes.clone());
                    if let Ok(v) = HeaderValue::from_str(content_type) {
                        response.headers_mut().insert(header::CONTENT_TYPE, v);
                    }
                    response
                }
                None => ctx.error(StatusCode::NOT_FOUND, "ImageNotFound", "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown."),
            },
            None => not_found(id),
        },
        ("PUT", ["users", id, "photo", "$value"]) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("image/jpeg").to_owned();
            if !content_type.starts_with("image/") {
                return ctx.error(StatusCode::BAD_REQUEST, "ErrorInvalidRequest", "The photo must be an image.");
            }
            match t.user_mut(id) {
                Some(u) => {
                    u.photo = Some((content_type, raw.to_vec()));
                    ctx.respond(StatusCode::OK, None)
                }
                None => not_found(id),
            }
        }
        ("GET", ["users", id, "presence"]) => match t.user_mut(id) {
            Some(u) => {
                let resource = presence_resource(u);
                ctx.respond(StatusCode::OK, Some(resource))
            }
            None => not_found(id),
        },
        ("POST", ["communications", "getPresencesByUserId"]) => {
            let Some(ids) = body["ids"].as_array() else {
                return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", "The ids parameter is required.");
            };
            if ids.len() > 650 {
                return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", "Number of ids exceeds the maximum of 650.");
            }
            // Object ids only (not UPNs), as Graph; one pass over the users per call.
            let index: std::collections::HashMap<String, usize> =
                t.users.iter().enumerate().map(|(i, u)| (u.id.to_ascii_lowercase(), i)).collect();
            let value: Vec<Value> = ids
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|id| index.get(&id.to_ascii_lowercase()).copied())
                .map(|i| presence_resource(&mut t.users[i]))
                .collect();
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.presence)", "value": value})))
        }
        ("POST", ["users", id, "presence", action]) | ("POST", ["communications", "presences", id, action]) => {
            let own_user = match principal {
                Principal::User { user_id, .. } => Some(user_id.clone()),
                Principal::App { .. } => None,
            };
            let Some(u) = t.user_mut(id) else { return not_found(id) };
            if own_user.as_ref().is_some_and(|me| *me != u.id) {
                return ctx.error(StatusCode::FORBIDDEN, "Forbidden", "A delegated token may only change the signed-in user's presence.");
            }
            match presence_action(u, action, &body, principal) {
                Ok(()) => ctx.respond(StatusCode::OK, None),
                Err(message) => ctx.error(StatusCode::BAD_REQUEST, "BadRequest", &message),
            }
        }
                ("GET", ["subscriptions"]) => {
            let value: Vec<Value> = t.subscriptions.iter().filter(|s| s.application_id == principal.client_id()).map(subscription_resource).collect();
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions", "value": value})))
        }
        ("GET", ["subscriptions", id]) => match t.subscriptions.iter().find(|s| s.id == *id) {
            Some(sub) => ctx.respond(StatusCode::OK, Some(subscription_resource(sub))),
            None => ctx.error(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("The object was not found. SubscriptionId: {id}")),
        },
        ("PATCH", ["subscriptions", id]) => {
            let Some(expiration) = body["expirationDateTime"].as_str().and_then(|e| e.parse::<k8s_openapi::jiff::Timestamp>().ok()) else {
                return ctx.error(StatusCode::BAD_REQUEST, "InvalidRequest", "expirationDateTime is required.");
            };
            let Some(sub) = t.subscriptions.iter_mut().find(|s| s.id == *id) else {
                return ctx.error(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("The object was not found. SubscriptionId: {id}"));
            };
            let max = subscription_rules(&sub.resource).map_or(60, |r| r.2);
            let now = k8s_openapi::jiff::Timestamp::now();
            if expiration <= now || (expiration.as_second() - now.as_second()) / 60 > max {
                return ctx.error(StatusCode::BAD_REQUEST, "InvalidRequest", &format!("Subscription expiration can only be {max} minutes in the future."));
            }
            sub.expiration = expiration;
            let resource = subscription_resource(sub);
            ctx.respond(StatusCode::OK, Some(resource))
        }
        ("DELETE", ["subscriptions", id]) => {
            let before = t.subscriptions.len();
            t.subscriptions.retain(|s| s.id != *id);
            if t.subscriptions.len() == before {
                ctx.error(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("The object was not found. SubscriptionId: {id}"))
            } else {
                ctx.respond(StatusCode::NO_CONTENT, None)
            }
        }
        ("POST", ["subscriptions", id, "reauthorize"]) => {
            if t.subscriptions.iter().any(|s| s.id == *id) {
                ctx.respond(StatusCode::NO_CONTENT, None)
            } else {
                ctx.error(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("The object was not found. SubscriptionId: {id}"))
            }
        }
                ("GET", ["groups", id, "transitiveMembers"]) | ("GET", ["groups", id, "members"]) => {
            let Some(group) = t.groups.iter().find(|g| g.id.eq_ignore_ascii_case(id)).cloned() else {
                return not_found(id);
            };
            // Nested groups count for transitiveMembers (members lists them as groups).
            let transitive = segments[2] == "transitiveMembers";
            let mut seen = std::collections::HashSet::new();
            let mut pending = vec![group];
            let mut value = Vec::new();
            while let Some(g) = pending.pop() {
                for member in &g.members {
                    if !seen.insert(member.to_ascii_lowercase()) {
                        continue;
                    }
                    if let Some(u) = t.user(member) {
                        let mut user = u.resource(query_select(uri).as_deref());
                        user["@odata.type"] = json!("#microsoft.graph.user");
                        value.push(user);
                    } else if let Some(inner) = t.groups.iter().find(|x| x.id.eq_ignore_ascii_case(member)) {
                        if transitive {
                            pending.push(inner.clone());
                        } else {
                            value.push(json!({"@odata.type": "#microsoft.graph.group", "id": inner.id, "displayName": inner.display_name}));
                        }
                    }
                }
            }
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects", "value": value})))
        }
        ("POST", ["chats"]) => create_chat(t, ctx, principal, &body),

        ("GET", ["chats", id]) => match t.chats.iter().find(|c| c.id == *id) {
            Some(chat) if may_read_chat(principal, chat) => ctx.respond(StatusCode::OK, Some(chat_resource(chat, &t.id))),
            _ => ctx.error(StatusCode::NOT_FOUND, "NotFound", &format!("Chat {id} not found.")),
        },
        // Microsoft's documentation: chat-list-members (aadUserConversationMember items).
        ("GET", ["chats", id, "members"]) => match t.chats.iter().find(|c| c.id == *id) {
            Some(chat) if may_read_chat(principal, chat) => {
                let value: Vec<Value> = chat.members.iter().map(|m| member_resource(t, m)).collect();
                ctx.respond(StatusCode::OK, Some(json!({"@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#chats('{id}')/members"), "@odata.count": value.len(), "value": value})))
            }
            _ => ctx.error(StatusCode::NOT_FOUND, "NotFound", &format!("Chat {id} not found.")),
        },
        ("GET", ["chats", id, "messages"]) => match t.chats.iter().find(|c| c.id == *id) {
            Some(chat) if may_read_chat(principal, chat) => {
                let query: Vec<(String, String)> = uri
                    .query()
                    .and_then(|q| serde_urlencoded::from_str(q).ok())
                    .unwrap_or_default();
                let param = |name: &str| query.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse::<usize>().ok());
                let top = param("$top").unwrap_or(20).clamp(1, 50);
                // Pages follow `@odata.nextLink`; the skip token is opaque to callers.
                let skip = param("$skiptoken").unwrap_or(0);
                // Newest first, as Graph lists them.
                let value: Vec<Value> = chat.messages.iter().rev().skip(skip).take(top).cloned().collect();
                let mut page = json!({"@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#chats('{id}')/messages"), "@odata.count": value.len(), "value": value});
                if skip + top < chat.messages.len() {
                    page["@odata.nextLink"] = json!(format!("https://graph.microsoft.com/v1.0/chats/{id}/messages?$top={top}&$skiptoken={}", skip + top));
                }
                ctx.respond(StatusCode::OK, Some(page))
            }
            _ => ctx.error(StatusCode::NOT_FOUND, "NotFound", &format!("Chat {id} not found.")),
        },
        ("GET", ["chats", id, "messages", mid]) => {
            let found = t.chats.iter().find(|c| c.id == *id).filter(|c| may_read_chat(principal, c)).and_then(|c| c.messages.iter().find(|m| m["id"] == json!(mid)).cloned());
            match found {
                Some(m) => ctx.respond(StatusCode::OK, Some(m)),
                None => ctx.error(StatusCode::NOT_FOUND, "NotFound", &format!("Message {mid} not found.")),
            }
        }
        ("POST", ["chats", id, "messages"]) => {
            let Principal::User { user_id, .. } = principal else {
                return ctx.error(StatusCode::FORBIDDEN, "Forbidden", "Sending chat messages needs a delegated token (application permissions are for migration only).");
            };
            let sender = t.user(user_id).map(|u| (u.id.clone(), u.properties.get("displayName").cloned().unwrap_or(Value::Null)));
            let tenant_id = t.id.clone();
            let Some(chat) = t.chats.iter_mut().find(|c| c.id == *id) else {
                return ctx.error(StatusCode::NOT_FOUND, "NotFound", &format!("Chat {id} not found."));
            };
            if !chat.members.contains(user_id) {
                return ctx.error(StatusCode::FORBIDDEN, "Forbidden", "The caller is not a member of the chat.");
            }
            let Some(content) = body["body"]["content"].as_str() else {
                return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", "The message body is required.");
            };
            let content_type = body["body"]["contentType"].as_str().unwrap_or("text");
            let (uid, name) = sender.unwrap_or_default();
                        let message = chat_message(&chat.id, &uid, name, &tenant_id, content_type, content);
            chat.messages.push(message.clone());
            let (chat_id, members) = (chat.id.clone(), chat.members.clone());
            notify_chat_message(t, &chat_id, &members, &message);
            ctx.respond(StatusCode::CREATED, Some(message))
        }
        ("GET", ["users", id, "chats"]) => {
            let Some(uid) = t.user(id).map(|u| u.id.clone()) else { return not_found(id) };
            // Delegated: the signed-in user's own chats only.
            if let Principal::User { user_id, .. } = principal
                && *user_id != uid
            {
                return ctx.error(StatusCode::FORBIDDEN, "Forbidden", "A user can list only their own chats.");
            }
            // Microsoft's documentation: chat-list, `$expand=members`.
            let members = uri.query().is_some_and(|q| {
                serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                    .is_ok_and(|pairs| pairs.iter().any(|(k, v)| k == "$expand" && v.split(',').any(|e| e.trim() == "members")))
            });
            let value: Vec<Value> = t
                .chats
                .iter()
                .filter(|c| c.members.contains(&uid))
                .map(|c| {
                    let mut chat = chat_resource(c, &t.id);
                    if members {
                        chat["members"] = Value::Array(c.members.iter().map(|m| member_resource(t, m)).collect());
                    }
                    chat
                })
                .collect();
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#chats", "@odata.count": value.len(), "value": value})))
        }
        _ => ctx.error(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "This operation is not emulated yet."),
    }
}

/// Change notifications for a new chat message: `/chats/getAllMessages`,
/// `/chats/{id}/messages` and `/users/{member}/chats/getAllMessages`.
fn notify_chat_message(t: &mut Tenant, chat_id: &str, members: &[String], message: &Value) {
    let mid = message["id"].as_str().unwrap_or_default().to_owned();
    let resource = format!("chats('{chat_id}')/messages('{mid}')");
    let data =
        json!({"id": mid, "@odata.type": "#Microsoft.Graph.chatMessage", "@odata.id": resource});
    let members = members.to_vec();
    let upns: Vec<String> = members
        .iter()
        .filter_map(|m| t.user(m).map(|u| u.upn().to_ascii_lowercase()))
        .collect();
    let chat_id = chat_id.to_owned();
    t.notify(
        move |r| {
            let parts: Vec<&str> = r.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                ["chats", "getAllMessages"] => true,
                ["chats", id, "messages"] => *id == chat_id,
                ["users", who, "chats", "getAllMessages"] => {
                    let who = who.to_ascii_lowercase();
                    members.iter().any(|m| m.eq_ignore_ascii_case(&who)) || upns.contains(&who)
                }
                _ => false,
            }
        },
        "created",
        &resource,
        data,
    );
}

fn may_read_chat(principal: &Principal, chat: &super::tenant::Chat) -> bool {
    match principal {
        Principal::App { .. } => true,
        Principal::User { user_id, .. } => chat.members.contains(user_id),
    }
}

fn chat_resource(chat: &super::tenant::Chat, tenant_id: &str) -> Value {
    let updated = chat
        .messages
        .last()
        .and_then(|m| m["createdDateTime"].as_str().map(str::to_owned))
        .unwrap_or_else(|| chat.created.clone());
    json!({
        "id": chat.id, "topic": null, "createdDateTime": chat.created, "lastUpdatedDateTime": updated,
        "chatType": chat.chat_type, "webUrl": format!("https://teams.microsoft.com/l/chat/{}/0?tenantId={tenant_id}", chat.id),
        "tenantId": tenant_id, "onlineMeetingInfo": null, "viewpoint": null,
    })
}

/// A chat member as Graph lists it (conversationMember ids are opaque).
fn member_resource(t: &Tenant, user_id: &str) -> Value {
    let user = t.user(user_id);
    let property = |name: &str| {
        user.and_then(|u| u.properties.get(name).cloned())
            .unwrap_or(Value::Null)
    };
    json!({
        "@odata.type": "#microsoft.graph.aadUserConversationMember",
        "id": format!("MCMjMCMj{}", user_id.replace('-', "")),
        "roles": ["owner"],
        "displayName": property("displayName"),
        "visibleHistoryStartDateTime": "0001-01-01T00:00:00Z",
        "userId": user_id,
        "email": property("mail"),
        "tenantId": t.id,
    })
}

fn timestamp_millis() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn chat_message(
    chat_id: &str,
    user_id: &str,
    display_name: Value,
    tenant_id: &str,
    content_type: &str,
    content: &str,
) -> Value {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = timestamp_millis();
    let id = (k8s_openapi::jiff::Timestamp::now().as_millisecond() as u64 * 1000
        + SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000)
        .to_string();
    json!({
        "id": id, "replyToId": null, "etag": id, "messageType": "message",
        "createdDateTime": now, "lastModifiedDateTime": now, "lastEditedDateTime": null, "deletedDateTime": null,
        "subject": null, "summary": null, "chatId": chat_id, "importance": "normal", "locale": "en-us", "webUrl": null,
        "channelIdentity": null, "policyViolation": null, "eventDetail": null, "onBehalfOf": null,
        "from": {"application": null, "device": null, "user": {
            "@odata.type": "#microsoft.graph.teamworkUserIdentity", "id": user_id, "displayName": display_name,
            "userIdentityType": "aadUser", "tenantId": tenant_id}},
        "body": {"contentType": content_type, "content": content},
        "attachments": [], "mentions": [], "reactions": [],
    })
}

/// POST /chats: a oneOnOne chat between two users (the existing one if they
/// already have it, as Graph does).
fn create_chat(t: &mut Tenant, ctx: &Ctx, principal: &Principal, body: &Value) -> Response {
    if body["chatType"] != json!("oneOnOne") && body["chatType"] != json!("group") {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "chatType must be oneOnOne or group.",
        );
    }
    let mut members = Vec::new();
    for m in body["members"].as_array().into_iter().flatten() {
        let bind = m["user@odata.bind"].as_str().unwrap_or_default();
        let key = bind
            .rsplit_once("users('")
            .and_then(|(_, rest)| rest.strip_suffix("')"))
            .or_else(|| bind.rsplit_once("/users/").map(|(_, rest)| rest))
            .unwrap_or_default();
        match t.user(key) {
            Some(u) => members.push(u.id.clone()),
            None => {
                return ctx.error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("User {key} not found."),
                );
            }
        }
    }
    if body["chatType"] == json!("oneOnOne") && members.len() != 2 {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "A oneOnOne chat needs exactly two members.",
        );
    }
    if let Principal::User { user_id, .. } = principal
        && !members.contains(user_id)
    {
        return ctx.error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The caller must be a member of the chat.",
        );
    }
    let tenant_id = t.id.clone();
    if body["chatType"] == json!("oneOnOne")
        && let Some(existing) = t
            .chats
            .iter()
            .find(|c| c.chat_type == "oneOnOne" && members.iter().all(|m| c.members.contains(m)))
    {
        return ctx.respond(
            StatusCode::CREATED,
            Some(chat_resource(existing, &tenant_id)),
        );
    }
    let mut sorted = members.clone();
    sorted.sort();
    let id = if body["chatType"] == json!("oneOnOne") {
        format!("19:{}_{}@unq.gbl.spaces", sorted[0], sorted[1])
    } else {
        format!("19:{}@thread.v2", guid().replace('-', ""))
    };
    let chat = super::tenant::Chat {
        id,
        chat_type: body["chatType"].as_str().unwrap_or("oneOnOne").to_owned(),
        members,
        created: timestamp_millis(),
        messages: Vec::new(),
    };
    let resource = chat_resource(&chat, &tenant_id);
    t.chats.push(chat);
    ctx.respond(StatusCode::CREATED, Some(resource))
}

fn presence_resource(u: &mut super::tenant::User) -> Value {
    let (availability, activity) = u.presence.aggregate(Instant::now());
    json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('{}')/presence/$entity",
        "id": u.id,
        "availability": availability,
        "activity": activity,
        "statusMessage": u.presence.status_message.clone(),
        "outOfOfficeSettings": {
            "message": u.presence.out_of_office.clone(),
            "isOutOfOffice": u.presence.out_of_office.is_some(),
        },
    })
}

/// ISO 8601 durations as Graph takes them (`PT5M`, `PT1H30M`, `PT90S`).
fn parse_duration(s: &str) -> Option<Duration> {
    let rest = s.strip_prefix("PT")?;
    let (mut total, mut number) = (0u64, String::new());
    for c in rest.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let n: u64 = number.parse().ok()?;
            number.clear();
            total += match c {
                'H' => n * 3600,
                'M' => n * 60,
                'S' => n,
                _ => return None,
            };
        }
    }
    number.is_empty().then_some(Duration::from_secs(total))
}

fn presence_action(
    u: &mut super::tenant::User,
    action: &str,
    body: &Value,
    principal: &Principal,
) -> Result<(), String> {
    let now = Instant::now();
    let availability = body["availability"].as_str().unwrap_or_default().to_owned();
    let activity = body["activity"].as_str().unwrap_or_default().to_owned();
    let duration = |default: Duration, min: Duration, max: Duration| -> Result<Duration, String> {
        match body["expirationDuration"].as_str() {
            None => Ok(default),
            Some(s) => match parse_duration(s) {
                Some(d) if d >= min && d <= max => Ok(d),
                _ => Err(format!("expirationDuration {s} is out of range.")),
            },
        }
    };
    match action {
        "setPresence" => {
            const PAIRS: &[(&str, &str)] = &[
                ("Available", "Available"),
                ("Busy", "InACall"),
                ("Busy", "InAConferenceCall"),
                ("Away", "Away"),
                ("DoNotDisturb", "Presenting"),
            ];
            let session_id = body["sessionId"].as_str().unwrap_or_default();
            if session_id != principal.client_id() {
                return Err("The sessionId must be the application id of the caller.".into());
            }
            if !PAIRS.contains(&(availability.as_str(), activity.as_str())) {
                return Err(format!(
                    "The availability/activity pair {availability}/{activity} is not supported."
                ));
            }
            let d = duration(
                Duration::from_secs(300),
                Duration::from_secs(300),
                Duration::from_secs(4 * 3600),
            )?;
            u.presence.sessions.insert(
                session_id.to_owned(),
                Session {
                    availability,
                    activity,
                    expires: now + d,
                },
            );
            Ok(())
        }
        "clearPresence" => {
            let session_id = body["sessionId"].as_str().unwrap_or_default();
            u.presence.sessions.remove(session_id);
            Ok(())
        }
        "setUserPreferredPresence" => {
            const PAIRS: &[(&str, &str)] = &[
                ("Available", "Available"),
                ("Busy", "Busy"),
                ("DoNotDisturb", "DoNotDisturb"),
                ("BeRightBack", "BeRightBack"),
                ("Away", "Away"),
                ("Offline", "OffWork"),
            ];
            if !PAIRS.contains(&(availability.as_str(), activity.as_str())) {
                return Err(format!(
                    "The availability/activity pair {availability}/{activity} is not supported."
                ));
            }
            let d = duration(
                Duration::from_secs(24 * 3600),
                Duration::from_secs(300),
                Duration::from_secs(30 * 24 * 3600),
            )?;
            u.presence.preferred = Some(Session {
                availability,
                activity,
                expires: now + d,
            });
            Ok(())
        }
        "clearUserPreferredPresence" => {
            u.presence.preferred = None;
            Ok(())
        }
        "setStatusMessage" => {
            let message = body["statusMessage"].clone();
            if message.is_null() {
                return Err("statusMessage is required.".into());
            }
            let mut message = message;
            message["publishedDateTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
            u.presence.status_message = Some(message);
            Ok(())
        }
        other => Err(format!("Unknown presence action {other}.")),
    }
}

// ---- control API for tests ----------------------------------------------------

/// POST /_emulator/users/{user}/presence {"availability","activity",
/// "statusMessage"?: text|null, "outOfOffice"?: text|null}: the user changes
/// presence in a Teams client (a session of its own, an hour long), its
/// status message, or its automatic replies.
async fn control_presence(
    State(state): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut t = lock(&state);
    let Some(u) = t.user_mut(&user) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let session = Session {
        availability: body["availability"]
            .as_str()
            .unwrap_or("Available")
            .to_owned(),
        activity: body["activity"].as_str().unwrap_or("Available").to_owned(),
        expires: Instant::now() + Duration::from_secs(3600),
    };
    u.presence.sessions.insert("teams-client".into(), session);
    if let Some(text) = body.get("statusMessage") {
        u.presence.status_message = text.as_str().map(|t| {
            json!({"message": {"content": t, "contentType": "text"}, "publishedDateTime": k8s_openapi::jiff::Timestamp::now().to_string()})
        });
    }
    if let Some(ooo) = body.get("outOfOffice") {
        u.presence.out_of_office = ooo.as_str().map(str::to_owned);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// POST /_emulator/chats/{chat}/messages {"from": upn, "content", "contentType"}:
/// a Teams user writes in a chat (through the Teams client).
async fn control_chat_message(
    State(state): State<Shared>,
    Path(chat_id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut t = lock(&state);
    let Some((uid, name)) = t.user(body["from"].as_str().unwrap_or_default()).map(|u| {
        (
            u.id.clone(),
            u.properties
                .get("displayName")
                .cloned()
                .unwrap_or(Value::Null),
        )
    }) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let tenant_id = t.id.clone();
    let Some(chat) = t.chats.iter_mut().find(|c| c.id == chat_id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !chat.members.contains(&uid) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let message = chat_message(
        &chat.id,
        &uid,
        name,
        &tenant_id,
        body["contentType"].as_str().unwrap_or("html"),
        body["content"].as_str().unwrap_or_default(),
    );
    chat.messages.push(message.clone());
    let (chat_id, members) = (chat.id.clone(), chat.members.clone());
    notify_chat_message(&mut t, &chat_id, &members, &message);
    let outgoing = std::mem::take(&mut t.outgoing);
    drop(t);
    deliver_all(&state, outgoing);
    (StatusCode::CREATED, axum::Json(message)).into_response()
}

/// POST /_emulator/chats {"from": upn, "with": upn}: a Teams user starts a
/// 1:1 chat (through the Teams client); the existing one if they have it.
async fn control_start_chat(
    State(state): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut t = lock(&state);
    let Some(from) = t
        .user(body["from"].as_str().unwrap_or_default())
        .map(|u| u.id.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let bind = |who: &Value| {
        json!({"@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"],
        "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{}')", who.as_str().unwrap_or_default())})
    };
    let request =
        json!({"chatType": "oneOnOne", "members": [bind(&body["from"]), bind(&body["with"])]});
    let teams_client = Principal::User {
        client_id: "teams-client".into(),
        user_id: from,
        scopes: vec!["Chat.Create".into()],
    };
    let ctx = Ctx {
        request_id: guid(),
        client_request_id: guid(),
    };
    create_chat(&mut t, &ctx, &teams_client, &request)
}

/// POST /_emulator/subscriptions/{id}/lifecycle {"event": "reauthorizationRequired" | "subscriptionRemoved" | "missed"}
async fn control_lifecycle(
    State(state): State<Shared>,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let event = body["event"]
        .as_str()
        .unwrap_or("reauthorizationRequired")
        .to_owned();
    let outgoing = {
        let mut t = lock(&state);
        let tenant_id = t.id.clone();
        let Some(sub) = t.subscriptions.iter().find(|s| s.id == id).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if event == "subscriptionRemoved" {
            t.subscriptions.retain(|s| s.id != id);
        }
        let Some(url) = sub.lifecycle_url.clone() else {
            return StatusCode::CONFLICT.into_response();
        };
        let body = json!({"value": [{"subscriptionId": sub.id, "subscriptionExpirationDateTime": sub.expiration.to_string(),
            "tenantId": tenant_id, "clientState": sub.client_state, "lifecycleEvent": event}]});
        vec![(url, body, sub.id)]
    };
    deliver_all(&state, outgoing);
    StatusCode::ACCEPTED.into_response()
}

/// PATCH /_emulator/users/{user} {…}: the user edits their profile.
async fn control_profile(
    State(state): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut t = lock(&state);
    let Some(u) = t.user_mut(&user) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    for (k, v) in body.as_object().into_iter().flatten() {
        if k != "id" && k != "userPrincipalName" {
            u.properties.insert(k.clone(), v.clone());
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// GET /_emulator/state: what the tenant holds, for tests and people.
async fn control_state(State(state): State<Shared>) -> Response {
    let mut t = lock(&state);
    let now = Instant::now();
    let users: Vec<Value> = t
        .users
        .iter_mut()
        .map(|u| {
            let (availability, activity) = u.presence.aggregate(now);
            json!({"id": u.id, "userPrincipalName": u.upn(), "licences": u.licences, "hasPhoto": u.photo.is_some(),
                   "availability": availability, "activity": activity})
        })
        .collect();
    let subscriptions: Vec<Value> = t.subscriptions.iter().map(|s| json!({"id": s.id, "resource": s.resource, "expirationDateTime": s.expiration.to_string()})).collect();
    let chats: Vec<Value> = t
        .chats
        .iter()
        .map(|c| json!({"id": c.id, "members": c.members, "messages": c.messages.len()}))
        .collect();
    axum::Json(json!({"users": users, "subscriptions": subscriptions, "chats": chats,
        "tokenRequests": t.token_requests, "violations": t.violations, "delivered": t.delivered.len()}))
    .into_response()
}

/// POST /_emulator/notifications/delay {"ms": N}: every notification waits N ms.
async fn control_delay(
    State(state): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    lock(&state).notification_delay_ms = body["ms"].as_u64().unwrap_or(0);
    StatusCode::NO_CONTENT.into_response()
}

/// POST /_emulator/subscriptions/{id}/expire: the subscription lapses without
/// any lifecycle notification (as when a renewal was missed); Graph then
/// answers 404 for it.
async fn control_expire(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let mut t = lock(&state);
    let before = t.subscriptions.len();
    t.subscriptions.retain(|s| s.id != id);
    if t.subscriptions.len() == before {
        StatusCode::NOT_FOUND.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// POST /_emulator/notifications/drop {"count": N}: the next N notifications are lost.
async fn control_drop(
    State(state): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    lock(&state).drop_notifications = body["count"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(1);
    StatusCode::NO_CONTENT.into_response()
}

/// POST /_emulator/faults {"status": 429, "count": 5, "retryAfter": 2}
async fn control_faults(
    State(state): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let status = body["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(429);
    let count = body["count"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(1);
    let retry_after = body["retryAfter"].as_u64().unwrap_or(1);
    lock(&state).faults.status = (count > 0).then_some((status, count, retry_after));
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_durations() {
        use std::time::Duration;
        assert_eq!(
            super::parse_duration("PT5M"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            super::parse_duration("PT1H30M"),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(super::parse_duration("P1D"), None);
        assert_eq!(super::parse_duration("PT5"), None);
    }
}
