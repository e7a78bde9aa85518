//! JSON batching (`POST /$batch`): each request answered as if sent alone.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Ctx, Shared, graph_locked, lock};
use crate::graph::tenant::guid;

/// JSON batching (`POST /$batch`): at most 20 requests, each authorised and
/// answered as if sent alone, with its own status, headers and body.
pub(super) async fn batch(
    state: &Shared,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
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
        // Sub-response headers as Graph names them, capitalised
        // (https://learn.microsoft.com/graph/json-batching, .../throttling).
        let mut out_headers = serde_json::Map::new();
        for (name, graph_name) in [
            (header::CONTENT_TYPE, "Content-Type"),
            (header::RETRY_AFTER, "Retry-After"),
        ] {
            if let Some(v) = response.headers().get(&name).and_then(|v| v.to_str().ok()) {
                out_headers.insert(graph_name.to_owned(), json!(v));
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
