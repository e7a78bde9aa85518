//! `check-tenant`: what the Microsoft 365 tenant must allow, checked with
//! read-only calls before anything is created, each check OK, FAIL (with
//! the administrator's fix) or UNKNOWN (the app may not read it, and which
//! permission would let it). See docs/tenant-setup.md.

use std::fmt;

use xmppfed_config::GatewayConfig;

use crate::graph::{GraphClient, GraphError};

mod canary;
mod directory;

pub use canary::{DELEGATED_SCOPES, canary, first_shadow_account};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
    /// Could not be checked (a permission the gateway itself does not need).
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to change, for FAIL and UNKNOWN.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn unknown(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Unknown,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A call refused with 403 means the app may not read it; anything else fails.
    fn from_error(name: &'static str, e: &GraphError, permission: &str) -> Self {
        if e.status() == Some(403) {
            Self::unknown(
                name,
                "the app may not read this",
                format!(
                    "grant {permission} (read-only) to let check-tenant see it, or check it by hand"
                ),
            )
        } else {
            Self::fail(name, e.to_string(), "see the error")
        }
    }
}

/// Which tenant an app registration serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// One tenant holds the Teams users and the shadow accounts.
    Both,
    /// The Teams users' tenant, when the shadow accounts have their own:
    /// the directory, the allow list, Teams users' presence.
    Home,
    /// The shadow accounts' own tenant: the accounts, their licences,
    /// presence and chats.
    Shadow,
}

/// The application permissions the gateway calls with in one tenant, given
/// its configuration. With an administrative unit, User Administrator scoped
/// to it manages the shadow accounts, and the app itself only reads users.
pub fn required_roles(config: &GatewayConfig, side: Side) -> Vec<&'static str> {
    let mut roles = Vec::new();
    if side == Side::Home {
        roles.extend(["User.Read.All", "Presence.Read.All"]);
    } else if config.shadow_accounts.administrative_unit.is_some() {
        roles.extend([
            "User.Read.All",
            "Presence.ReadWrite.All",
            "LicenseAssignment.Read.All",
        ]);
    } else {
        roles.extend([
            "User.ReadWrite.All",
            "Presence.ReadWrite.All",
            "LicenseAssignment.ReadWrite.All",
            "ProfilePhoto.ReadWrite.All",
        ]);
    }
    if side != Side::Shadow && !config.allow.internal_groups.is_empty() {
        roles.push("GroupMember.Read.All");
    }
    // One subscription for every chat of the (shadow accounts') tenant is app-only.
    if side != Side::Home
        && config.webhook.public_url.is_some()
        && config.webhook.chat_notifications == xmppfed_config::ChatNotifications::Tenant
    {
        roles.push("Chat.Read.All");
    }
    roles
}

/// Broad permissions that grant more than the gateway needs.
const BROADER_THAN_NEEDED: &[&str] = &[
    "Directory.ReadWrite.All",
    "Directory.Read.All",
    "Chat.ReadWrite.All",
    "Group.ReadWrite.All",
];

/// Runs every check of a one-tenant gateway; stops after the app's own
/// sign-in if that fails.
pub async fn check_tenant(config: &GatewayConfig, graph: &GraphClient) -> Vec<Check> {
    check_tenants(config, graph, None).await
}

/// Runs every check: the Teams users' tenant (`graph`) and, when the shadow
/// accounts live in a tenant of their own, that one (`shadow`). Each
/// tenant's checks stop after its app's sign-in if that fails.
pub async fn check_tenants(
    config: &GatewayConfig,
    graph: &GraphClient,
    shadow: Option<&GraphClient>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let side = if shadow.is_some() {
        Side::Home
    } else {
        Side::Both
    };
    if !app(config, graph, side, &mut checks).await {
        return checks;
    }
    let shadow = match shadow {
        None => graph,
        Some(shadow) => {
            if !app(config, shadow, Side::Shadow, &mut checks).await {
                return checks;
            }
            checks.push(Check::unknown(
                "external access",
                "Teams external access is not in Graph (it is Teams' tenant federation configuration)",
                "in both tenants' Teams admin center > Users > External access, allow the other tenant's domains (Set-CsTenantFederationConfiguration -AllowedDomains); a cross-tenant chat the other side refuses is logged with this fix",
            ));
            shadow
        }
    };
    directory::shadow_tenant(config, shadow, &mut checks).await;
    checks.extend(canary(shadow, first_shadow_account(config).await).await);
    checks
}

/// The app's sign-in and permissions in one tenant; false when it cannot sign in.
async fn app(
    config: &GatewayConfig,
    graph: &GraphClient,
    side: Side,
    checks: &mut Vec<Check>,
) -> bool {
    let (sign_in, permissions_name, fields) = match side {
        Side::Shadow => (
            "shadow tenant: app sign-in",
            "shadow tenant: application permissions",
            "shadow_accounts.tenant",
        ),
        _ => ("app sign-in", "application permissions", "graph"),
    };
    match graph.app_roles().await {
        Ok(roles) => {
            checks.push(Check::ok(sign_in, "client credentials accepted"));
            checks.push(permissions(config, side, permissions_name, &roles));
            true
        }
        Err(e) => {
            let fix = match e.sign_in_refusal() {
                Some(refusal) => refusal.fix().to_owned(),
                None => format!("check {fields}.tenant_id, {fields}.client_id and the secret"),
            };
            checks.push(Check::fail(sign_in, e.to_string(), fix));
            false
        }
    }
}

fn permissions(config: &GatewayConfig, side: Side, name: &'static str, roles: &[String]) -> Check {
    let granted = |r: &str| roles.iter().any(|g| g.eq_ignore_ascii_case(r));
    // X.ReadWrite.All includes X.Read.All.
    let has = |r: &str| granted(r) || granted(&r.replace(".Read.", ".ReadWrite."));
    let required = required_roles(config, side);
    let missing: Vec<&str> = required.iter().copied().filter(|r| !has(r)).collect();
    let mut broader: Vec<&str> = BROADER_THAN_NEEDED.to_vec();
    if side == Side::Home || config.shadow_accounts.administrative_unit.is_some() {
        // The Teams users' tenant is only read; with a unit, the scoped role
        // writes users: tenant-wide write is more than needed.
        broader.extend(["User.ReadWrite.All", "ProfilePhoto.ReadWrite.All"]);
    }
    let broad: Vec<&str> = broader
        .into_iter()
        .filter(|r| granted(r) && !required.contains(r))
        .collect();
    let extra = if broad.is_empty() {
        String::new()
    } else {
        format!("; more than needed also granted: {}", broad.join(", "))
    };
    if missing.is_empty() {
        Check::ok(name, format!("all granted{extra}"))
    } else {
        Check::fail(
            name,
            format!("missing: {}{extra}", missing.join(", ")),
            "Entra admin center > App registrations > the app > API permissions: add them as Application permissions and grant admin consent",
        )
    }
}

/// Whether the tenant is ready: no check failed.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.verdict != Verdict::Fail)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "OK",
            Verdict::Fail => "FAIL",
            Verdict::Unknown => "UNKNOWN",
        })
    }
}

/// The table `check-tenant` prints: one line per check, its fix below it.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<7} {:<width$}  {}\n",
            c.verdict.to_string(),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<7} {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    out
}
