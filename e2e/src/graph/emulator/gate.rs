//! What every Graph call passes before its resource answers, in Graph's
//! order: the bearer token (authentication), injected faults and throttling,
//! the permissions the operation needs (authorisation), a readable body, and
//! for a user's chat calls, Teams having provisioned the user.

use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::Ctx;
use crate::graph::spec::{Operation, spec};
use crate::graph::tenant::{Principal, Tenant};

/// Graph's answer to a call it refuses (boxed: a response is large).
pub(super) type Refused = Box<Response>;

/// The caller, from its bearer token: 401 with Graph's messages for a
/// missing, unknown or expired token.
pub(super) fn authenticate(
    t: &Tenant,
    ctx: &Ctx,
    headers: &HeaderMap,
) -> Result<Principal, Refused> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refused = |message| {
        ctx.error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    };
    let Some(bearer) = bearer else {
        return Err(Box::new(refused("Access token is empty.")));
    };
    match t.tokens.get(bearer) {
        Some(token) if token.expires > Instant::now() => Ok(token.principal.clone()),
        Some(_) => Err(Box::new(refused(
            "Lifetime validation failed, the token is expired.",
        ))),
        None => Err(Box::new(refused("IDX14100: JWT is not well formed."))),
    }
}

/// A refusal that names when to come back (`Retry-After`, seconds).
fn retry_after(ctx: &Ctx, status: StatusCode, code: &str, message: &str, secs: u64) -> Response {
    let mut response = ctx.error(status, code, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// Injected faults, then throttling: Microsoft's per-category Teams limits
/// (https://learn.microsoft.com/graph/throttling-limits#microsoft-teams-service-limits)
/// and the tenant's global rate, each a 429 with `Retry-After`.
pub(super) fn admit(
    t: &mut Tenant,
    ctx: &Ctx,
    method: &Method,
    segments: &[&str],
    principal: &Principal,
) -> Result<(), Refused> {
    if let Some((status, count, secs)) = t.faults.status {
        t.faults.status = (count > 1).then_some((status, count - 1, secs));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let code = if status == StatusCode::TOO_MANY_REQUESTS {
            "TooManyRequests"
        } else {
            "ServiceUnavailable"
        };
        let message = "Injected fault: please retry after the indicated time.";
        return Err(Box::new(retry_after(ctx, status, code, message, secs)));
    }
    let throttled = |secs| {
        let message = "Too many requests. Please try again later.";
        retry_after(
            ctx,
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            message,
            secs,
        )
    };
    let now = Instant::now();
    if let Some((limited, chat)) = crate::graph::throttling::limited(method.as_str(), segments)
        && let Some(secs) = t
            .throttling
            .check(principal.client_id(), limited, chat, now)
    {
        return Err(Box::new(throttled(secs)));
    }
    match t.throttle(principal.client_id(), now) {
        Some(secs) => Err(Box::new(throttled(secs))),
        None => Ok(()),
    }
}

/// The permissions the operation needs, as the OpenAPI subset (or
/// Microsoft's documentation) lists them, held against the caller's: 403
/// when none is granted. Returns the operation, when the subset has it.
pub(super) fn authorise(
    t: &Tenant,
    ctx: &Ctx,
    method: &Method,
    path: &str,
    segments: &[&str],
    principal: &Principal,
) -> Result<Option<&'static Operation>, Refused> {
    let operation = spec().find(method.as_str(), path);
    let (application, delegated): (Vec<String>, Vec<String>) = match operation {
        Some(op) => (op.application.clone(), op.delegated.clone()),
        None => match documented_permissions(method, segments) {
            Some((a, d)) => (
                a.into_iter().map(str::to_owned).collect(),
                d.into_iter().map(str::to_owned).collect(),
            ),
            None => {
                let message = format!(
                    "Resource not found for the segment '{}'.",
                    segments.last().unwrap_or(&"")
                );
                return Err(Box::new(ctx.error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &message,
                )));
            }
        },
    };
    let granted = match principal {
        Principal::App { roles, client_id } => {
            roles.iter().any(|r| application.contains(r))
                || scoped_role_grants(t, client_id, method, segments)
        }
        Principal::User { scopes, .. } => scopes.iter().any(|s| delegated.contains(s)),
    };
    // A subscription's permissions depend on its resource: checked by its handler.
    if granted || segments.first() == Some(&"subscriptions") {
        return Ok(operation);
    }
    let code = if segments.first() == Some(&"users") && segments.len() <= 2 {
        "Authorization_RequestDenied"
    } else {
        "Forbidden"
    };
    Err(Box::new(ctx.error(
        StatusCode::FORBIDDEN,
        code,
        "Insufficient privileges to complete the operation.",
    )))
}

/// The request's JSON body (a photo's bytes are not JSON). The caller's
/// requests are held to Microsoft's description as our answers are: a body
/// the document's schema rejects is recorded as a violation.
pub(super) fn json_body(
    t: &mut Tenant,
    ctx: &Ctx,
    method: &Method,
    segments: &[&str],
    operation: Option<&Operation>,
    body: &Bytes,
) -> Result<Option<Value>, Refused> {
    if body.is_empty() {
        return Ok(None);
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        if *method == Method::PUT && segments.last() == Some(&"$value") {
            return Ok(None);
        }
        return Err(Box::new(ctx.error(StatusCode::BAD_REQUEST, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.")));
    };
    if let Some(op) = operation
        && let Err(e) = spec().check_request(op, &json)
    {
        t.violations.push(format!("request: {e}"));
    }
    Ok(Some(json))
}

/// Teams works only for licensed users, and only once Teams has
/// provisioned them: https://learn.microsoft.com/microsoftteams/assign-teams-licenses
/// ("it can take up to 24 hours"). Graph then refuses the user's chat calls
/// with 403 Forbidden, "Failed to get license information for the user"
/// (as reported in microsoftgraph/msgraph-sdk-powershell#1666).
pub(super) fn teams_provisioned(
    t: &Tenant,
    ctx: &Ctx,
    segments: &[&str],
    principal: &Principal,
) -> Result<(), Refused> {
    if let Principal::User { user_id, .. } = principal
        && segments.first() == Some(&"chats")
        && let Some(user) = t.user(user_id)
        && !t.teams.is_ready(user, Instant::now())
    {
        return Err(Box::new(ctx.error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Failed to get license information for the user. Ensure user has a valid Office365 license assigned to them.",
        )));
    }
    Ok(())
}

/// What User Administrator scoped to an administrative unit allows: managing
/// the unit's users and creating users in it
/// (https://learn.microsoft.com/entra/identity/role-based-access-control/admin-units-manage#role-permissions).
fn scoped_role_grants(t: &Tenant, client_id: &str, method: &Method, segments: &[&str]) -> bool {
    match (method.as_str(), segments) {
        ("POST", ["directory", "administrativeUnits", unit, "members"])
        | ("GET", ["directory", "administrativeUnits", unit]) => t.user_admin_over(client_id, unit),
        ("PATCH", ["users", user])
        | ("DELETE", ["users", user])
        | ("POST", ["users", user, "assignLicense"])
        | ("PUT", ["users", user, "photo", "$value"]) => t.user_admin_over(client_id, user),
        _ => false,
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
        // administrativeunit-post-members (a new user) and administrativeunit-get.
        ("POST", ["directory", "administrativeUnits", _, "members"]) => Some((
            vec![
                "AdministrativeUnit.ReadWrite.All",
                "Directory.ReadWrite.All",
            ],
            vec![],
        )),
        ("GET", ["directory", "administrativeUnits", _]) => Some((
            vec!["AdministrativeUnit.Read.All", "Directory.Read.All"],
            vec![],
        )),
        // domain-get: Domain.Read.All (least privileged), Directory.Read.All.
        ("GET", ["domains", _]) => Some((
            vec![
                "Domain.Read.All",
                "Directory.Read.All",
                "Domain.ReadWrite.All",
            ],
            vec![],
        )),
        // subscribedsku-list: LicenseAssignment.Read.All (least), Organization.Read.All, Directory.Read.All.
        ("GET", ["subscribedSkus"]) => Some((
            vec![
                "LicenseAssignment.Read.All",
                "LicenseAssignment.ReadWrite.All",
                "Organization.Read.All",
                "Directory.Read.All",
            ],
            vec![],
        )),
        // identitysecuritydefaultsenforcementpolicy-get and conditionalaccessroot-list-policies: Policy.Read.All.
        ("GET", ["policies", "identitySecurityDefaultsEnforcementPolicy"])
        | ("GET", ["identity", "conditionalAccess", "policies"]) => {
            Some((vec!["Policy.Read.All"], vec![]))
        }
        ("PUT", ["users", _, "photo", "$value"]) => Some((
            vec!["ProfilePhoto.ReadWrite.All", "User.ReadWrite.All"],
            vec!["User.ReadWrite"],
        )),
        _ => None,
    }
}
