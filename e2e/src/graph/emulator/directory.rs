//! What a preflight reads about the tenant, read-only: its domains, its
//! licences (subscribedSkus), Security Defaults and Conditional Access
//! policies, as Microsoft documents each resource.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Call, Ctx, not_found, not_implemented};
use crate::graph::identity::{Grant, PolicyState, SecurityDefaults};
use crate::graph::tenant::Tenant;

/// The directory-settings routes of [`super::handle`].
pub(super) fn handle(t: &mut Tenant, call: Call<'_>) -> Response {
    let Call {
        ctx,
        method,
        segments,
        body: call_body,
        ..
    } = call;
    match (method.as_str(), segments) {
        ("GET", ["domains", id]) => domain(t, ctx, id),
        ("GET", ["subscribedSkus"]) => subscribed_skus(t, ctx),
        ("GET", ["identity", "conditionalAccess", "policies"]) => conditional_access(t, ctx),
        // https://learn.microsoft.com/graph/api/identitysecuritydefaultsenforcementpolicy-get
        ("GET", ["policies", "identitySecurityDefaultsEnforcementPolicy"]) => ctx.respond(
            StatusCode::OK,
            Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/identitySecurityDefaultsEnforcementPolicy/$entity",
                "id": "00000000-0000-0000-0000-000000000005",
                "displayName": "Security Defaults",
                "description": "Security defaults is a set of basic identity security mechanisms recommended by Microsoft.",
                "isEnabled": t.identity.security_defaults != SecurityDefaults::Off})),
        ),
        // https://learn.microsoft.com/graph/api/administrativeunit-get
        ("GET", ["directory", "administrativeUnits", id]) => {
            match t.administrative_units.iter().find(|u| u.id.eq_ignore_ascii_case(id)) {
                Some(unit) => ctx.respond(
                    StatusCode::OK,
                    Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directory/administrativeUnits/$entity",
                        "id": unit.id, "displayName": unit.display_name, "visibility": null})),
                ),
                None => not_found(ctx, id),
            }
        }
        // https://learn.microsoft.com/graph/api/administrativeunit-post-members:
        // a new user (with @odata.type) is created as a member of the unit.
        ("POST", ["directory", "administrativeUnits", id, "members"]) => {
            let Some(index) = t.administrative_units.iter().position(|u| u.id.eq_ignore_ascii_case(id)) else {
                return not_found(ctx, id);
            };
            if call_body["@odata.type"] != json!("#microsoft.graph.user") {
                return ctx.error(StatusCode::BAD_REQUEST, "Request_BadRequest", "The @odata.type of the new member is required.");
            }
            let (response, created) = super::users::create_user(t, ctx, &call_body);
            if let Some(user) = created {
                t.administrative_units[index].members.push(user);
            }
            response
        }
        _ => not_implemented(ctx),
    }
}

/// https://learn.microsoft.com/graph/api/domain-get (without seeded domains,
/// those of the users' UPNs, managed and verified).
fn domain(t: &Tenant, ctx: &Ctx, id: &str) -> Response {
    let found = match &t.domains {
        Some(domains) => domains
            .iter()
            .find(|d| d.id.eq_ignore_ascii_case(id))
            .map(|d| (d.id.clone(), d.authentication_type.clone(), d.is_verified)),
        None => t
            .users
            .iter()
            .any(|u| {
                u.upn()
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(id))
            })
            .then(|| (id.to_lowercase(), "Managed".to_owned(), true)),
    };
    match found {
        Some((id, authentication_type, is_verified)) => ctx.respond(
            StatusCode::OK,
            Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#domains/$entity",
                "id": id, "authenticationType": authentication_type, "isVerified": is_verified,
                "isDefault": false, "isInitial": false, "supportedServices": ["Email", "OfficeCommunicationsOnline"]})),
        ),
        None => ctx.error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
        ),
    }
}

/// https://learn.microsoft.com/graph/api/subscribedsku-list
fn subscribed_skus(t: &Tenant, ctx: &Ctx) -> Response {
    let value: Vec<Value> = t
        .skus
        .iter()
        .map(|sku| {
            let consumed = t.users.iter().filter(|u| u.licences.contains(&sku.sku_id)).count();
            let plans: Vec<Value> = sku
                .service_plans
                .iter()
                .map(|p| json!({"servicePlanId": sku.plan_id(p), "servicePlanName": p,
                    "provisioningStatus": "Success", "appliesTo": "User"}))
                .collect();
            json!({"accountId": t.id, "accountName": "contoso", "appliesTo": "User", "capabilityStatus": "Enabled",
                "consumedUnits": consumed, "id": format!("{}_{}", t.id, sku.sku_id), "skuId": sku.sku_id,
                "skuPartNumber": sku.sku_part_number, "subscriptionIds": [],
                "prepaidUnits": {"enabled": sku.prepaid_units, "suspended": 0, "warning": 0, "lockedOut": 0},
                "servicePlans": plans})
        })
        .collect();
    ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscribedSkus", "value": value})))
}

/// https://learn.microsoft.com/graph/api/conditionalaccessroot-list-policies
fn conditional_access(t: &Tenant, ctx: &Ctx) -> Response {
    let value: Vec<Value> = t
        .identity
        .conditional_access
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let state = match p.state {
                PolicyState::Enabled => "enabled",
                PolicyState::Disabled => "disabled",
                PolicyState::EnabledForReportingButNotEnforced => "enabledForReportingButNotEnforced",
            };
            let control = match p.grant {
                Grant::Mfa => "mfa",
                Grant::Block => "block",
            };
            json!({"id": format!("0000000{i}-ca00-4000-8000-000000000000"), "displayName": p.display_name, "state": state,
                "conditions": {"clientAppTypes": ["all"], "applications": {"includeApplications": ["All"]},
                    "users": {"includeUsers": ["All"], "excludeUsers": p.exclude_users, "includeGroups": [], "excludeGroups": p.exclude_groups}},
                "grantControls": {"operator": "OR", "builtInControls": [control]}})
        })
        .collect();
    ctx.respond(StatusCode::OK, Some(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identity/conditionalAccess/policies", "value": value})))
}
