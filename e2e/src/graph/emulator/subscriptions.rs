//! Change-notification subscriptions: their rules per resource, the
//! validation handshake with the subscriber, and delivery of notifications.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Call, Ctx, Shared, lock, not_found, not_implemented};
use crate::graph::tenant::{Principal, Tenant, guid};

/// The subscriptions routes of [`super::handle`].
pub(super) fn handle(t: &mut Tenant, call: Call<'_>) -> Response {
    let Call {
        ctx,
        principal,
        method,
        segments,
        body,
        ..
    } = call;
    let _not_found = |id: &str| not_found(ctx, id);
    match (method.as_str(), segments) {
        ("GET", ["subscriptions"]) => {
            let value: Vec<Value> = t
                .subscriptions
                .iter()
                .filter(|s| s.application_id == principal.client_id())
                .map(subscription_resource)
                .collect();
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions", "value": value})))
        }
        ("GET", ["subscriptions", id]) => match t.subscriptions.iter().find(|s| s.id == *id) {
            Some(sub) => ctx.respond(StatusCode::OK, Some(subscription_resource(sub))),
            None => ctx.error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("The object was not found. SubscriptionId: {id}"),
            ),
        },
        ("PATCH", ["subscriptions", id]) => {
            let Some(expiration) = body["expirationDateTime"]
                .as_str()
                .and_then(|e| e.parse::<k8s_openapi::jiff::Timestamp>().ok())
            else {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "expirationDateTime is required.",
                );
            };
            let Some(sub) = t.subscriptions.iter_mut().find(|s| s.id == *id) else {
                return ctx.error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!("The object was not found. SubscriptionId: {id}"),
                );
            };
            let max = subscription_rules(&sub.resource).map_or(60, |r| r.2);
            let now = k8s_openapi::jiff::Timestamp::now();
            if expiration <= now || (expiration.as_second() - now.as_second()) / 60 > max {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    &format!("Subscription expiration can only be {max} minutes in the future."),
                );
            }
            sub.expiration = expiration;
            let resource = subscription_resource(sub);
            ctx.respond(StatusCode::OK, Some(resource))
        }
        ("DELETE", ["subscriptions", id]) => {
            let before = t.subscriptions.len();
            t.subscriptions.retain(|s| s.id != *id);
            if t.subscriptions.len() == before {
                ctx.error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!("The object was not found. SubscriptionId: {id}"),
                )
            } else {
                ctx.respond(StatusCode::NO_CONTENT, None)
            }
        }
        ("POST", ["subscriptions", id, "reauthorize"]) => {
            if t.subscriptions.iter().any(|s| s.id == *id) {
                ctx.respond(StatusCode::NO_CONTENT, None)
            } else {
                ctx.error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!("The object was not found. SubscriptionId: {id}"),
                )
            }
        }
        _ => not_implemented(ctx),
    }
}

/// What a subscription to `resource` needs, and how long it may live (minutes).
pub(super) fn subscription_rules(
    resource: &str,
) -> Option<(Vec<&'static str>, Vec<&'static str>, i64)> {
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

pub(super) fn subscription_resource(s: &crate::graph::tenant::Subscription) -> Value {
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
pub(super) async fn validate_endpoint(url: &str) -> Result<(), String> {
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

pub(super) async fn create_subscription(
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
    if let Some(refused) =
        refuse_duplicate_or_over_quota(&lock(state), ctx, principal, &resource, &body)
    {
        return refused;
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
    let subscription = crate::graph::tenant::Subscription {
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

/// Microsoft's rules on how many subscriptions may exist: one per app,
/// resource and change type — a duplicate gets 409 Conflict, "Subscription
/// Id … already exists for the requested combination"
/// (https://learn.microsoft.com/graph/api/subscription-post-subscriptions);
/// and Teams subscriptions of all apps share the organisation's quota — past
/// it, 403 Forbidden
/// (https://learn.microsoft.com/graph/api/resources/change-notifications-api-overview).
fn refuse_duplicate_or_over_quota(
    t: &Tenant,
    ctx: &Ctx,
    principal: &Principal,
    resource: &str,
    body: &Value,
) -> Option<Response> {
    let change_type = body["changeType"].as_str().unwrap_or_default();
    let same = |s: &&crate::graph::tenant::Subscription| {
        s.application_id == principal.client_id()
            && s.resource
                .trim_start_matches('/')
                .eq_ignore_ascii_case(resource.trim_start_matches('/'))
            && s.change_type == change_type
    };
    if let Some(existing) = t.subscriptions.iter().find(same) {
        return Some(ctx.error(
            StatusCode::CONFLICT,
            "ExtensionError",
            &format!("Operation: Create; Exception: [Status Code: Conflict; Reason: Subscription Id {} already exists for the requested combination]", existing.id),
        ));
    }
    let teams = t
        .subscriptions
        .iter()
        .filter(|s| is_teams(&s.resource))
        .count();
    if is_teams(resource) && teams >= t.teams_subscription_quota {
        return Some(ctx.error(
            StatusCode::FORBIDDEN,
            "ExtensionError",
            &format!("Operation: Create; Exception: [Status Code: Forbidden; Reason: The maximum number of subscriptions for Teams resources in the organization ({}) has been reached.]", t.teams_subscription_quota),
        ));
    }
    None
}

/// A Teams resource: chats, chat messages, channels, teams and their members
/// count against the organisation's Teams quota (presence does not).
fn is_teams(resource: &str) -> bool {
    let r = resource.trim_start_matches('/');
    r.starts_with("chats") || r.starts_with("teams") || r.contains("/chats")
}

/// POSTs queued notifications, each in a task of its own.
pub(super) fn deliver_all(state: &Shared, outgoing: Vec<(String, Value, String)>) {
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
