//! The control API tests drive the emulated tenant with (`/_emulator/…`):
//! presence and messages from Teams users, faults, lifecycle events, state.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::chats::{chat_message, create_chat, notify_chat_message};
use super::subscriptions::deliver_all;
use super::{Ctx, Shared, lock};
use crate::graph::tenant::{Principal, Session, guid};

/// POST /_emulator/users/{user}/presence {"availability","activity",
/// "statusMessage"?: text|null, "outOfOffice"?: text|null}: the user changes
/// presence in a Teams client (a session of its own, an hour long), its
/// status message, or its automatic replies.
pub(super) async fn control_presence(
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
        // A Teams client in use keeps its session alive.
        keep_alive: None,
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

/// What the Teams client puts in `body` for what its user typed: always
/// HTML, each paragraph a `<p>`, the text escaped. A message read through
/// Graph is therefore never the bytes the sender typed ("chatMessage: body is
/// an itemBody", https://learn.microsoft.com/graph/api/resources/chatmessage;
/// messages from the Teams clients come as `contentType: html`).
fn as_the_teams_client_sends(content_type: &str, content: &str) -> String {
    let paragraphs: Vec<String> = if content_type == "text" {
        content
            .split('\n')
            .map(|line| {
                line.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            })
            .collect()
    } else if content.trim_start().starts_with('<') {
        return content.to_owned();
    } else {
        vec![content.to_owned()]
    };
    paragraphs.iter().map(|p| format!("<p>{p}</p>")).collect()
}

/// POST /_emulator/chats/{chat}/messages {"from": upn, "content", "contentType"}:
/// a Teams user writes in a chat (through the Teams client).
pub(super) async fn control_chat_message(
    State(state): State<Shared>,
    Path(chat_id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut t = lock(&state);
    let from = body["from"].as_str().unwrap_or_default();
    // A user of this tenant, or of another through external access.
    let sender = t
        .user(from)
        .map(|u| {
            (
                u.id.clone(),
                u.properties
                    .get("displayName")
                    .cloned()
                    .unwrap_or(Value::Null),
                t.id.clone(),
            )
        })
        .or_else(|| {
            t.foreign(from)
                .map(|u| (u.id.clone(), json!(u.display_name), u.tenant_id.clone()))
        });
    let Some((uid, name, tenant_id)) = sender else {
        return StatusCode::NOT_FOUND.into_response();
    };
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
        "html",
        &as_the_teams_client_sends(
            body["contentType"].as_str().unwrap_or("html"),
            body["content"].as_str().unwrap_or_default(),
        ),
    );
    chat.messages.push(message.clone());
    let (chat_id, members) = (chat.id.clone(), chat.members.clone());
    notify_chat_message(&mut t, &chat_id, &members, &message);
    let outgoing = std::mem::take(&mut t.outgoing);
    drop(t);
    deliver_all(&state, outgoing);
    (StatusCode::CREATED, axum::Json(message)).into_response()
}

/// GET /_emulator/chats/{chat}/messages: the chat's messages, oldest first,
/// as `{"from": user id, "content": body}` (for tests that count deliveries).
pub(super) async fn control_chat_messages(
    State(state): State<Shared>,
    Path(chat_id): Path<String>,
) -> Response {
    let t = lock(&state);
    let Some(chat) = t.chats.iter().find(|c| c.id == chat_id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let messages: Vec<Value> = chat
        .messages
        .iter()
        .map(|m| json!({"from": m["from"]["user"]["id"], "content": m["body"]["content"]}))
        .collect();
    axum::Json(json!({ "value": messages })).into_response()
}

/// POST /_emulator/chats {"from": upn, "with": upn}: a Teams user starts a
/// 1:1 chat (through the Teams client); the existing one if they have it.
pub(super) async fn control_start_chat(
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
pub(super) async fn control_lifecycle(
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
pub(super) async fn control_profile(
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
pub(super) async fn control_state(State(state): State<Shared>) -> Response {
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
pub(super) async fn control_delay(
    State(state): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    lock(&state).notification_delay_ms = body["ms"].as_u64().unwrap_or(0);
    StatusCode::NO_CONTENT.into_response()
}

/// POST /_emulator/subscriptions/{id}/expire: the subscription lapses without
/// any lifecycle notification (as when a renewal was missed); Graph then
/// answers 404 for it.
pub(super) async fn control_expire(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
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
pub(super) async fn control_drop(
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
pub(super) async fn control_faults(
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

/// POST /_emulator/identity {…}: replaces the tenant's identity policies
/// (the seed's `identity`), as an administrator changing Security Defaults
/// or Conditional Access in the Entra admin center.
pub(super) async fn control_identity(
    State(state): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    match serde_json::from_value(body) {
        Ok(policy) => {
            lock(&state).identity = policy;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
