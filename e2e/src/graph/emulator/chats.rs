//! Chats and chat messages: 1:1 chats, members, messages and their pages,
//! and the change notifications a new message makes.

use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Call, Ctx, not_found, not_implemented};
use crate::graph::tenant::{Chat, Principal, Tenant, guid};

/// The chats routes of [`super::handle`].
pub(super) fn handle(t: &mut Tenant, call: Call<'_>) -> Response {
    let Call {
        ctx,
        principal,
        method,
        segments,
        uri,
        body,
        ..
    } = call;
    match (method.as_str(), segments) {
        ("POST", ["chats"]) => create_chat(t, ctx, principal, &body),
        ("GET", ["chats", id]) => match readable_chat(t, ctx, principal, id) {
            Ok(chat) => ctx.respond(StatusCode::OK, Some(chat_resource(chat, &t.id))),
            Err(refused) => *refused,
        },
        ("GET", ["chats", id, "members"]) => list_members(t, ctx, principal, id),
        ("GET", ["chats", id, "messages"]) => list_messages(t, ctx, principal, id, uri),
        ("GET", ["chats", id, "messages", mid]) => get_message(t, ctx, principal, id, mid),
        ("POST", ["chats", id, "messages"]) => post_message(t, ctx, principal, id, &body),
        ("GET", ["users", id, "chats"]) => list_user_chats(t, ctx, principal, id, uri),
        _ => not_implemented(ctx),
    }
}

/// A chat the caller may read; 404 (as Graph answers) when there is none.
fn readable_chat<'t>(
    t: &'t Tenant,
    ctx: &Ctx,
    principal: &Principal,
    id: &str,
) -> Result<&'t Chat, Box<Response>> {
    match t.chats.iter().find(|c| c.id == id) {
        Some(chat) if may_read_chat(principal, chat) => Ok(chat),
        _ => Err(Box::new(ctx.error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Chat {id} not found."),
        ))),
    }
}

/// Microsoft's documentation: chat-list-members (aadUserConversationMember items).
fn list_members(t: &Tenant, ctx: &Ctx, principal: &Principal, id: &str) -> Response {
    let chat = match readable_chat(t, ctx, principal, id) {
        Ok(chat) => chat,
        Err(refused) => return *refused,
    };
    let value: Vec<Value> = chat.members.iter().map(|m| member_resource(t, m)).collect();
    ctx.respond(StatusCode::OK, Some(json!({"@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#chats('{id}')/members"), "@odata.count": value.len(), "value": value})))
}

/// Microsoft's documentation: chatmessage-list (`$top` up to 50, `$orderby`
/// and `$filter` on the modified or created time, pages by `@odata.nextLink`).
fn list_messages(t: &Tenant, ctx: &Ctx, principal: &Principal, id: &str, uri: &Uri) -> Response {
    let chat = match readable_chat(t, ctx, principal, id) {
        Ok(chat) => chat,
        Err(refused) => return *refused,
    };
    let query: Vec<(String, String)> = uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let text = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let number = |name: &str| text(name).and_then(|v| v.parse::<usize>().ok());
    let listing = match Listing::parse(text("$orderby"), text("$filter")) {
        Ok(listing) => listing,
        Err(why) => return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", &why),
    };
    let top = number("$top").unwrap_or(20).clamp(1, 50);
    // Pages follow `@odata.nextLink`; the skip token is opaque to callers.
    let skip = number("$skiptoken").unwrap_or(0);
    let listed = listing.list(&chat.messages);
    let value: Vec<Value> = listed.iter().skip(skip).take(top).cloned().collect();
    let mut page = json!({"@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#chats('{id}')/messages"), "@odata.count": value.len(), "value": value});
    if skip + top < listed.len() {
        let mut next = vec![
            ("$top", top.to_string()),
            ("$skiptoken", (skip + top).to_string()),
        ];
        for name in ["$orderby", "$filter"] {
            if let Some(v) = text(name) {
                next.push((name, v.to_owned()));
            }
        }
        let next = serde_urlencoded::to_string(&next).unwrap_or_default();
        page["@odata.nextLink"] = json!(format!(
            "https://graph.microsoft.com/v1.0/chats/{id}/messages?{next}"
        ));
    }
    ctx.respond(StatusCode::OK, Some(page))
}

fn get_message(t: &Tenant, ctx: &Ctx, principal: &Principal, id: &str, mid: &str) -> Response {
    let found = t
        .chats
        .iter()
        .find(|c| c.id == id)
        .filter(|c| may_read_chat(principal, c))
        .and_then(|c| c.messages.iter().find(|m| m["id"] == json!(mid)).cloned());
    match found {
        Some(m) => ctx.respond(StatusCode::OK, Some(m)),
        None => ctx.error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Message {mid} not found."),
        ),
    }
}

/// Microsoft's documentation: chat-post-messages (delegated only, by a member).
fn post_message(
    t: &mut Tenant,
    ctx: &Ctx,
    principal: &Principal,
    id: &str,
    body: &Value,
) -> Response {
    let Principal::User { user_id, .. } = principal else {
        return ctx.error(StatusCode::FORBIDDEN, "Forbidden", "Sending chat messages needs a delegated token (application permissions are for migration only).");
    };
    let sender = t.user(user_id).map(|u| {
        (
            u.id.clone(),
            u.properties
                .get("displayName")
                .cloned()
                .unwrap_or(Value::Null),
        )
    });
    let tenant_id = t.id.clone();
    let Some(chat) = t.chats.iter_mut().find(|c| c.id == id) else {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Chat {id} not found."),
        );
    };
    if !chat.members.contains(user_id) {
        return ctx.error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The caller is not a member of the chat.",
        );
    }
    let Some(content) = body["body"]["content"].as_str() else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The message body is required.",
        );
    };
    let content_type = body["body"]["contentType"].as_str().unwrap_or("text");
    let (uid, name) = sender.unwrap_or_default();
    let message = chat_message(&chat.id, &uid, name, &tenant_id, content_type, content);
    chat.messages.push(message.clone());
    let (chat_id, members) = (chat.id.clone(), chat.members.clone());
    notify_chat_message(t, &chat_id, &members, &message);
    ctx.respond(StatusCode::CREATED, Some(message))
}

/// Microsoft's documentation: chat-list (a user's own chats when delegated),
/// with `$expand=members`.
fn list_user_chats(t: &Tenant, ctx: &Ctx, principal: &Principal, id: &str, uri: &Uri) -> Response {
    let Some(uid) = t.user(id).map(|u| u.id.clone()) else {
        return not_found(ctx, id);
    };
    if let Principal::User { user_id, .. } = principal
        && *user_id != uid
    {
        return ctx.error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "A user can list only their own chats.",
        );
    }
    let members = uri.query().is_some_and(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q).is_ok_and(|pairs| {
            pairs
                .iter()
                .any(|(k, v)| k == "$expand" && v.split(',').any(|e| e.trim() == "members"))
        })
    });
    let value: Vec<Value> = t
        .chats
        .iter()
        .filter(|c| c.members.contains(&uid))
        .map(|c| {
            let mut chat = chat_resource(c, &t.id);
            if members {
                chat["members"] =
                    Value::Array(c.members.iter().map(|m| member_resource(t, m)).collect());
            }
            chat
        })
        .collect();
    ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#chats", "@odata.count": value.len(), "value": value})))
}

/// Change notifications for a new chat message: `/chats/getAllMessages`,
/// `/chats/{id}/messages` and `/users/{member}/chats/getAllMessages`.
pub(super) fn notify_chat_message(
    t: &mut Tenant,
    chat_id: &str,
    members: &[String],
    message: &Value,
) {
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

pub(super) fn may_read_chat(principal: &Principal, chat: &crate::graph::tenant::Chat) -> bool {
    match principal {
        Principal::App { .. } => true,
        Principal::User { user_id, .. } => chat.members.contains(user_id),
    }
}

pub(super) fn chat_resource(chat: &crate::graph::tenant::Chat, tenant_id: &str) -> Value {
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
pub(super) fn member_resource(t: &Tenant, user_id: &str) -> Value {
    let user = t.user(user_id);
    let property = |name: &str| {
        user.and_then(|u| u.properties.get(name).cloned())
            .unwrap_or(Value::Null)
    };
    // A user of this tenant, or of another one through external access
    // (whose mail federation does not show).
    let (display_name, email, tenant_id) = match t.foreign(user_id).filter(|_| user.is_none()) {
        Some(foreign) => (
            json!(foreign.display_name),
            Value::Null,
            foreign.tenant_id.as_str(),
        ),
        None => (property("displayName"), property("mail"), t.id.as_str()),
    };
    json!({
        "@odata.type": "#microsoft.graph.aadUserConversationMember",
        "id": format!("MCMjMCMj{}", user_id.replace('-', "")),
        "roles": ["owner"],
        "displayName": display_name,
        "visibleHistoryStartDateTime": "0001-01-01T00:00:00Z",
        "userId": user_id,
        "email": email,
        "tenantId": tenant_id,
    })
}

pub(super) fn timestamp_millis() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub(super) fn chat_message(
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
pub(super) fn create_chat(
    t: &mut Tenant,
    ctx: &Ctx,
    principal: &Principal,
    body: &Value,
) -> Response {
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
        // A member of another tenant (chat-post: "Out-of-tenant external
        // users must be assigned with owner role"), through Teams external
        // access. What Graph answers when external access refuses is not
        // documented; 403 here, to be confirmed on a real tenant.
        if let Some(other) = m["tenantId"].as_str().filter(|o| *o != t.id) {
            let Some(user) = t.foreign(key).filter(|u| u.tenant_id == other) else {
                return ctx.error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("User {key} of tenant {other} not found."),
                );
            };
            if !t.federation.allowed_tenants.iter().any(|a| a == other) {
                return ctx.error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!("External access does not allow chats with tenant {other}."),
                );
            }
            if m["roles"] != json!(["owner"]) {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Out-of-tenant external users must be assigned the owner role.",
                );
            }
            members.push(user.id.clone());
            continue;
        }
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
    let chat = crate::graph::tenant::Chat {
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

/// How `GET /chats/{id}/messages` lists, as Microsoft documents it
/// (chat-list-messages, "Optional query parameters"): `$orderby` takes
/// `lastModifiedDateTime` (the default) or `createdDateTime`, descending only;
/// `$filter` is a date range on `lastModifiedDateTime` (`gt`, `lt`) or
/// `createdDateTime` (`lt`), and filters only when `$orderby` names the same
/// property — otherwise it is ignored.
#[derive(Debug)]
struct Listing {
    order: &'static str,
    /// (property, operator, bound), each bound in milliseconds since the epoch.
    filter: Vec<(&'static str, &'static str, i64)>,
}

impl Listing {
    fn parse(orderby: Option<&str>, filter: Option<&str>) -> Result<Self, String> {
        let order = match orderby.map(str::trim) {
            None | Some("lastModifiedDateTime desc") => "lastModifiedDateTime",
            Some("createdDateTime desc") => "createdDateTime",
            Some(other) => {
                return Err(format!(
                    "$orderby '{other}' is not supported: lastModifiedDateTime desc or createdDateTime desc."
                ));
            }
        };
        let mut clauses = Vec::new();
        if let Some(filter) = filter {
            for clause in filter.split(" and ") {
                let parts: Vec<&str> = clause.split_whitespace().collect();
                let [property, operator, bound] = parts[..] else {
                    return Err(format!("Invalid filter clause '{clause}'."));
                };
                let (property, operator) = match (property, operator) {
                    ("lastModifiedDateTime", "gt") => ("lastModifiedDateTime", "gt"),
                    ("lastModifiedDateTime", "lt") => ("lastModifiedDateTime", "lt"),
                    ("createdDateTime", "lt") => ("createdDateTime", "lt"),
                    _ => {
                        return Err(format!(
                            "Filter '{property} {operator}' is not supported on chat messages."
                        ));
                    }
                };
                let bound = millis(bound).ok_or_else(|| format!("Invalid date-time '{bound}'."))?;
                clauses.push((property, operator, bound));
            }
        }
        // A filter on another property than the order is ignored, as documented.
        clauses.retain(|(property, _, _)| *property == order);
        Ok(Self {
            order,
            filter: clauses,
        })
    }

    /// The messages this listing returns, newest first by its order.
    fn list(&self, messages: &[Value]) -> Vec<Value> {
        let at = |m: &Value, property: &str| m[property].as_str().and_then(millis).unwrap_or(0);
        let mut listed: Vec<(usize, &Value)> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                self.filter.iter().all(|(property, operator, bound)| {
                    let t = at(m, property);
                    if *operator == "gt" {
                        t > *bound
                    } else {
                        t < *bound
                    }
                })
            })
            .collect();
        // Newest first; messages of one millisecond in the order they came.
        listed.sort_by(|(i, a), (j, b)| (at(b, self.order), j).cmp(&(at(a, self.order), i)));
        listed.into_iter().map(|(_, m)| m.clone()).collect()
    }
}

fn millis(stamp: &str) -> Option<i64> {
    stamp
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    fn message(id: &str, created: &str, modified: &str) -> Value {
        json!({"id": id, "createdDateTime": created, "lastModifiedDateTime": modified})
    }

    fn ids(listed: &[Value]) -> Vec<&str> {
        listed
            .iter()
            .map(|m| m["id"].as_str().unwrap_or(""))
            .collect()
    }

    #[test]
    fn a_filter_on_the_ordered_property_filters_and_another_is_ignored() {
        let messages = vec![
            message("1", "2026-12-01T10:00:00.000Z", "2026-12-01T12:00:00.000Z"),
            message("2", "2026-12-01T11:00:00.000Z", "2026-12-01T11:00:00.000Z"),
            message("3", "2026-12-01T11:30:00.000Z", "2026-12-01T11:30:00.000Z"),
        ];
        let by_modified = Listing::parse(
            Some("lastModifiedDateTime desc"),
            Some("lastModifiedDateTime gt 2026-12-01T11:00:00.000Z"),
        )
        .unwrap();
        // The edited old message comes first: it was modified last.
        assert_eq!(ids(&by_modified.list(&messages)), ["1", "3"]);
        let by_created = Listing::parse(
            Some("createdDateTime desc"),
            Some("lastModifiedDateTime gt 2026-12-01T11:00:00.000Z"),
        )
        .unwrap();
        assert_eq!(ids(&by_created.list(&messages)), ["3", "2", "1"]);
        let default = Listing::parse(None, None).unwrap();
        assert_eq!(ids(&default.list(&messages)), ["1", "3", "2"]);
    }

    #[test]
    fn what_graph_does_not_support_is_refused() {
        assert!(Listing::parse(Some("createdDateTime asc"), None).is_err());
        assert!(Listing::parse(None, Some("createdDateTime gt 2026-12-01T11:00:00Z")).is_err());
        assert!(Listing::parse(None, Some("lastModifiedDateTime gt yesterday")).is_err());
    }
}
