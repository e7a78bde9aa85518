//! The directory: users (create, read, update, delete), their licences and
//! photos, and group membership.

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Call, Ctx, not_found, not_implemented, query_select};
use crate::graph::tenant::{Principal, Tenant, guid};

/// The users routes of [`super::handle`].
pub(super) fn handle(t: &mut Tenant, call: Call<'_>) -> Response {
    let Call {
        ctx,
        principal,
        method,
        segments,
        uri,
        body,
        raw,
        headers,
        ..
    } = call;
    match (method.as_str(), segments) {
        ("GET", ["users"]) => {
            let select = query_select(uri);
            let value: Vec<Value> = t
                .users
                .iter()
                .map(|u| readable(principal, u.resource(select.as_deref())))
                .collect();
            ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users", "value": value})))
        }
        ("GET", ["users", id]) => match t.user(id) {
            Some(u) => {
                let mut resource = u.resource(query_select(uri).as_deref());
                if !principal_is(principal, &u.id) {
                    resource = readable(principal, resource);
                }
                resource["@odata.context"] = json!(ENTITY);
                ctx.respond(StatusCode::OK, Some(resource))
            }
            None => not_found(ctx, id),
        },
        ("POST", ["users"]) => create_user(t, ctx, &body).0,
        // Microsoft's documentation (user-update, passwordProfile): an app
        // resets a password only through a directory role over the user,
        // such as User Administrator (scoped to the user's unit suffices);
        // the permission alone is refused.
        ("PATCH", ["users", id])
            if body.get("passwordProfile").is_some()
                && matches!(principal, Principal::App { client_id, .. }
                    if !t.user_admin_over(client_id, id)) =>
        {
            ctx.error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        }
        ("PATCH", ["users", id]) => patch_user(t, ctx, id, &body),
        ("DELETE", ["users", id]) => {
            let before = t.users.len();
            let key = id.to_ascii_lowercase();
            t.users.retain(|u| {
                u.id.to_ascii_lowercase() != key && u.upn().to_ascii_lowercase() != key
            });
            if t.users.len() == before {
                not_found(ctx, id)
            } else {
                ctx.respond(StatusCode::NO_CONTENT, None)
            }
        }
        ("POST", ["users", id, "assignLicense"]) => assign_licence(t, ctx, id, &body),
        ("GET", ["users", id, "photo", "$value"]) => get_photo(t, ctx, id),
        ("PUT", ["users", id, "photo", "$value"]) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("image/jpeg")
                .to_owned();
            if !content_type.starts_with("image/") {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "ErrorInvalidRequest",
                    "The photo must be an image.",
                );
            }
            match t.user_mut(id) {
                Some(u) => {
                    u.photo = Some((content_type, raw.to_vec()));
                    ctx.respond(StatusCode::OK, None)
                }
                None => not_found(ctx, id),
            }
        }
        ("GET", ["groups", id, "transitiveMembers"]) => group_members(t, ctx, id, uri, true),
        ("GET", ["groups", id, "members"]) => group_members(t, ctx, id, uri, false),
        _ => not_implemented(ctx),
    }
}

/// A user as `principal` may read it: with `User.ReadBasic.All` alone only
/// the basic profile comes back, whatever `$select` asked for.
fn readable(principal: &Principal, mut resource: Value) -> Value {
    if reads_basic_profiles_only(principal)
        && let Some(fields) = resource.as_object_mut()
    {
        fields.retain(|k, _| BASIC_PROFILE.contains(&k.as_str()) || k.starts_with('@'));
    }
    resource
}

/// Whether a delegated token speaks for user `id` (its own full profile is
/// readable with `User.Read`).
fn principal_is(principal: &Principal, id: &str) -> bool {
    matches!(principal, Principal::User { user_id, .. } if user_id == id)
}

/// The user properties `User.ReadBasic.All` reads: "display name, first and
/// last name, email address, open extensions and photo" (permissions
/// reference, https://learn.microsoft.com/graph/permissions-reference#userreadbasicall),
/// with the ids that name the user.
const BASIC_PROFILE: [&str; 6] = [
    "id",
    "displayName",
    "givenName",
    "surname",
    "mail",
    "userPrincipalName",
];

/// Whether this token reads other users' basic profile only: it holds
/// `User.ReadBasic.All` and nothing that reads the full profile.
fn reads_basic_profiles_only(principal: &Principal) -> bool {
    const FULL: [&str; 4] = [
        "User.Read.All",
        "User.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    ];
    let granted = match principal {
        Principal::App { roles, .. } => roles,
        Principal::User { scopes, .. } => scopes,
    };
    granted.iter().any(|g| g == "User.ReadBasic.All")
        && !granted.iter().any(|g| FULL.contains(&g.as_str()))
}

const ENTITY: &str = "https://graph.microsoft.com/v1.0/$metadata#users/$entity";

/// Microsoft's documentation: user-update (a new password resets its age).
fn patch_user(t: &mut Tenant, ctx: &Ctx, id: &str, body: &Value) -> Response {
    let Some(u) = t.user_mut(id) else {
        return not_found(ctx, id);
    };
    for (k, v) in body.as_object().into_iter().flatten() {
        if k == "passwordProfile" {
            u.password = v["password"].as_str().map(str::to_owned);
            u.password_set = std::time::Instant::now();
        } else {
            u.properties.insert(k.clone(), v.clone());
        }
    }
    ctx.respond(StatusCode::NO_CONTENT, None)
}

fn bad_request(ctx: &Ctx, message: &str) -> Response {
    ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", message)
}

/// Microsoft's documentation: user-assignlicense. Both lists are required;
/// a SKU must be the tenant's with a seat free, its disabled plans its own,
/// and the user must have a usage location.
fn assign_licence(t: &mut Tenant, ctx: &Ctx, id: &str, body: &Value) -> Response {
    if body.get("addLicenses").is_none() || body.get("removeLicenses").is_none() {
        return bad_request(
            ctx,
            "Invalid value specified for property 'addLicenses' or 'removeLicenses'.",
        );
    }
    let added = body["addLicenses"].as_array().cloned().unwrap_or_default();
    let add: Vec<String> = added
        .iter()
        .filter_map(|l| l["skuId"].as_str().map(str::to_owned))
        .collect();
    let remove: Vec<String> = body["removeLicenses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut disabled = Vec::new();
    for sku in &add {
        let Some(known) = t.skus.iter().find(|s| &s.sku_id == sku) else {
            return bad_request(
                ctx,
                &format!("License {sku} does not correspond to a valid company License."),
            );
        };
        // disabledPlans: ids of the SKU's own service plans (assignedLicense resource).
        let asked = added
            .iter()
            .filter(|l| l["skuId"].as_str() == Some(sku.as_str()))
            .flat_map(|l| l["disabledPlans"].as_array().cloned().unwrap_or_default());
        for plan in asked {
            let id = plan.as_str().unwrap_or_default();
            match known.service_plans.iter().find(|p| known.plan_id(p) == id) {
                Some(name) => disabled.push(name.clone()),
                None => {
                    return bad_request(
                        ctx,
                        &format!("Invalid disabled plan {id} for license {sku}."),
                    );
                }
            }
        }
        let used = t.users.iter().filter(|u| u.licences.contains(sku)).count();
        if used >= known.prepaid_units as usize {
            return bad_request(
                ctx,
                &format!(
                    "License assignment failed because there are no available licenses for {}.",
                    known.sku_part_number
                ),
            );
        }
    }
    // Microsoft 365 licenses nobody without a usage location.
    if !add.is_empty()
        && t.user(id)
            .is_some_and(|u| u.properties.get("usageLocation").is_none_or(Value::is_null))
    {
        return bad_request(
            ctx,
            "License assignment cannot be done for user with invalid usage location.",
        );
    }
    let Some(u) = t.user_mut(id) else {
        return not_found(ctx, id);
    };
    u.licences.retain(|l| !remove.contains(l));
    if u.licences.is_empty() && !add.is_empty() {
        u.licensed_at = Some(std::time::Instant::now());
    }
    u.disabled_plans = disabled;
    for sku in add {
        if !u.licences.contains(&sku) {
            u.licences.push(sku);
        }
    }
    let mut resource = u.resource(None);
    resource["@odata.context"] = json!(ENTITY);
    ctx.respond(StatusCode::OK, Some(resource))
}

fn get_photo(t: &Tenant, ctx: &Ctx, id: &str) -> Response {
    let Some(u) = t.user(id) else {
        return not_found(ctx, id);
    };
    let Some((content_type, bytes)) = &u.photo else {
        return ctx.error(StatusCode::NOT_FOUND, "ImageNotFound", "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown.");
    };
    let mut response = ctx.respond(StatusCode::OK, None);
    *response.body_mut() = axum::body::Body::from(bytes.clone());
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// Microsoft's documentation: group-list-members and
/// group-list-transitivemembers (nested groups' users counted, not listed).
fn group_members(t: &Tenant, ctx: &Ctx, id: &str, uri: &Uri, transitive: bool) -> Response {
    let Some(group) = t
        .groups
        .iter()
        .find(|g| g.id.eq_ignore_ascii_case(id))
        .cloned()
    else {
        return not_found(ctx, id);
    };
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
            } else if let Some(inner) = t.groups.iter().find(|x| x.id.eq_ignore_ascii_case(member))
            {
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

/// POST /users (and an administrative unit's new member): the created user's
/// response and, on success, its id.
pub(super) fn create_user(t: &mut Tenant, ctx: &Ctx, body: &Value) -> (Response, Option<String>) {
    let required = [
        "accountEnabled",
        "displayName",
        "mailNickname",
        "userPrincipalName",
        "passwordProfile",
    ];
    if let Some(missing) = required.iter().find(|f| body.get(**f).is_none()) {
        return (
            ctx.error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &format!("Invalid value specified for property '{missing}' of resource 'User'."),
            ),
            None,
        );
    }
    let upn = body["userPrincipalName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if t.user(&upn).is_some() {
        return (
            ctx.error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "Another object with the same value for property userPrincipalName already exists.",
            ),
            None,
        );
    }
    let mut properties: std::collections::BTreeMap<String, Value> = body
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "passwordProfile" && *k != "@odata.type")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    properties
        .entry("businessPhones".into())
        .or_insert(json!([]));
    let id = guid();
    let user = crate::graph::tenant::User {
        id: id.clone(),
        password: body["passwordProfile"]["password"]
            .as_str()
            .map(str::to_owned),
        properties,
        photo: None,
        licences: Vec::new(),
        presence: Default::default(),
        password_set: std::time::Instant::now(),
        licensed_at: None,
        disabled_plans: Vec::new(),
    };
    let mut resource = user.resource(None);
    resource["@odata.context"] = json!("https://graph.microsoft.com/v1.0/$metadata#users/$entity");
    t.users.push(user);
    (ctx.respond(StatusCode::CREATED, Some(resource)), Some(id))
}
