//! Presence: reading it, one user or many, and the session, preferred and
//! status-message actions that set it, with their expiry.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Call, not_found, not_implemented};
use crate::graph::tenant::{Principal, Session, Tenant};

/// The presence routes of [`super::handle`].
pub(super) fn handle(t: &mut Tenant, call: Call<'_>) -> Response {
    let Call {
        ctx,
        principal,
        method,
        segments,
        body,
        ..
    } = call;
    let not_found = |id: &str| not_found(ctx, id);
    match (method.as_str(), segments) {
        ("GET", ["users", id, "presence"]) => match t.user_mut(id) {
            Some(u) => {
                let resource = presence_resource(u);
                ctx.respond(StatusCode::OK, Some(resource))
            }
            None => not_found(id),
        },
        ("POST", ["communications", "getPresencesByUserId"]) => {
            let Some(ids) = body["ids"].as_array() else {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The ids parameter is required.",
                );
            };
            if ids.len() > 650 {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Number of ids exceeds the maximum of 650.",
                );
            }
            // Object ids only (not UPNs), as Graph; one pass over the users per call.
            let index: std::collections::HashMap<String, usize> = t
                .users
                .iter()
                .enumerate()
                .map(|(i, u)| (u.id.to_ascii_lowercase(), i))
                .collect();
            let value: Vec<Value> = ids
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|id| index.get(&id.to_ascii_lowercase()).copied())
                .map(|i| presence_resource(&mut t.users[i]))
                .collect();
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.presence)", "value": value})))
        }
        ("POST", ["users", id, "presence", action])
        | ("POST", ["communications", "presences", id, action]) => {
            let own_user = match principal {
                Principal::User { user_id, .. } => Some(user_id.clone()),
                Principal::App { .. } => None,
            };
            let (timeout, app_status_message) = (t.presence_timeout, t.app_status_message);
            let Some(u) = t.user_mut(id) else {
                return not_found(id);
            };
            if own_user.as_ref().is_some_and(|me| *me != u.id) {
                return ctx.error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "A delegated token may only change the signed-in user's presence.",
                );
            }
            if *action == "setStatusMessage" && own_user.is_none() && !app_status_message {
                return ctx.error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "Application is not allowed to set the status message in this tenant.",
                );
            }
            match presence_action(u, action, &body, principal, timeout) {
                Ok(()) => ctx.respond(StatusCode::OK, None),
                Err(message) => ctx.error(StatusCode::BAD_REQUEST, "BadRequest", &message),
            }
        }
        _ => not_implemented(ctx),
    }
}

pub(super) fn presence_resource(u: &mut crate::graph::tenant::User) -> Value {
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
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
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

/// A presence action (presence-setpresence, presence-clearpresence,
/// presence-setuserpreferredpresence, presence-clearuserpreferredpresence,
/// presence-setstatusmessage); `Err` is Graph's 400 message.
pub(super) fn presence_action(
    u: &mut crate::graph::tenant::User,
    action: &str,
    body: &Value,
    principal: &Principal,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        "setPresence" => set_presence(u, body, principal, timeout),
        "clearPresence" => {
            let session_id = body["sessionId"].as_str().unwrap_or_default();
            u.presence.sessions.remove(session_id);
            Ok(())
        }
        "setUserPreferredPresence" => set_preferred(u, body),
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

/// The body's availability and activity, when they are one of `pairs`.
fn pair(body: &Value, pairs: &[(&str, &str)]) -> Result<(String, String), String> {
    let availability = body["availability"].as_str().unwrap_or_default();
    let activity = body["activity"].as_str().unwrap_or_default();
    if !pairs.contains(&(availability, activity)) {
        return Err(format!(
            "The availability/activity pair {availability}/{activity} is not supported."
        ));
    }
    Ok((availability.to_owned(), activity.to_owned()))
}

/// The body's `expirationDuration` within [min, max], else `default`.
fn expiration(
    body: &Value,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    match body["expirationDuration"].as_str() {
        None => Ok(default),
        Some(s) => match parse_duration(s) {
            Some(d) if d >= min && d <= max => Ok(d),
            _ => Err(format!("expirationDuration {s} is out of range.")),
        },
    }
}

/// An app's presence session for the user, kept alive by each call.
fn set_presence(
    u: &mut crate::graph::tenant::User,
    body: &Value,
    principal: &Principal,
    timeout: Duration,
) -> Result<(), String> {
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
    let (availability, activity) = pair(body, PAIRS)?;
    let d = expiration(
        body,
        Duration::from_secs(300),
        Duration::from_secs(300),
        Duration::from_secs(4 * 3600),
    )?;
    let now = Instant::now();
    u.presence.sessions.insert(
        session_id.to_owned(),
        Session {
            availability,
            activity,
            expires: now + d,
            // Each setPresence is the session's keep-alive.
            keep_alive: Some((now, timeout)),
        },
    );
    Ok(())
}

/// The user's preferred presence, which does not time out.
fn set_preferred(u: &mut crate::graph::tenant::User, body: &Value) -> Result<(), String> {
    const PAIRS: &[(&str, &str)] = &[
        ("Available", "Available"),
        ("Busy", "Busy"),
        ("DoNotDisturb", "DoNotDisturb"),
        ("BeRightBack", "BeRightBack"),
        ("Away", "Away"),
        ("Offline", "OffWork"),
    ];
    let (availability, activity) = pair(body, PAIRS)?;
    let d = expiration(
        body,
        Duration::from_secs(24 * 3600),
        Duration::from_secs(300),
        Duration::from_secs(30 * 24 * 3600),
    )?;
    u.presence.preferred = Some(Session {
        availability,
        activity,
        expires: Instant::now() + d,
        keep_alive: None,
    });
    Ok(())
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
