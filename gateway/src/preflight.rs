//! `check-tenant`: what the Microsoft 365 tenant must allow, checked with
//! read-only calls before anything is created, each check OK, FAIL (with
//! the administrator's fix) or UNKNOWN (the app may not read it, and which
//! permission would let it). See docs/tenant-setup.md.

use std::fmt;

use xmppfed_config::GatewayConfig;

use crate::graph::directory::ConditionalAccessPolicy;
use crate::graph::{GraphClient, GraphError, SignInRefusal};

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

/// The application permissions the gateway calls with, given its configuration.
/// With an administrative unit, User Administrator scoped to it manages the
/// shadow accounts, and the app itself only reads users.
pub fn required_roles(config: &GatewayConfig) -> Vec<&'static str> {
    let mut roles = match config.shadow_accounts.administrative_unit {
        Some(_) => vec![
            "User.Read.All",
            "Presence.ReadWrite.All",
            "LicenseAssignment.Read.All",
        ],
        None => vec![
            "User.ReadWrite.All",
            "Presence.ReadWrite.All",
            "LicenseAssignment.ReadWrite.All",
            "ProfilePhoto.ReadWrite.All",
        ],
    };
    if !config.allow.internal_groups.is_empty() {
        roles.push("GroupMember.Read.All");
    }
    // One subscription for every chat of the tenant is app-only.
    if config.webhook.public_url.is_some()
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

/// Runs every check; stops after the app's own sign-in if that fails.
pub async fn check_tenant(config: &GatewayConfig, graph: &GraphClient) -> Vec<Check> {
    let mut checks = Vec::new();
    let roles = match graph.app_roles().await {
        Ok(roles) => {
            checks.push(Check::ok("app sign-in", "client credentials accepted"));
            roles
        }
        Err(e) => {
            let fix = e.sign_in_refusal().map_or(
                "check graph.tenant_id, graph.client_id and the secret",
                SignInRefusal::fix,
            );
            checks.push(Check::fail("app sign-in", e.to_string(), fix));
            return checks;
        }
    };
    checks.push(permissions(config, &roles));
    let shadow = &config.shadow_accounts;
    checks.push(match &shadow.upn_domain {
        Some(domain) => shadow_domain(graph, domain).await,
        None => Check::fail(
            "shadow domain",
            "shadow_accounts.upn_domain is not set",
            "set it to a verified, managed domain of the tenant",
        ),
    });
    if let Some(unit) = &shadow.administrative_unit {
        checks.push(administrative_unit(graph, unit).await);
    }
    checks.push(match &shadow.licence_sku {
        Some(sku) => licence(graph, sku).await,
        None => Check::fail(
            "licence",
            "shadow_accounts.licence_sku is not set",
            "set it to the SKU id of a licence that includes Teams",
        ),
    });
    checks.push(match graph.security_defaults_enabled().await {
        Ok(false) => Check::ok("Security Defaults", "off"),
        Ok(true) => Check::fail(
            "Security Defaults",
            "on: shadow accounts must register for MFA after 14 days and cannot (AADSTS50079)",
            SignInRefusal::MfaRegistrationRequired.fix(),
        ),
        Err(e) => Check::from_error("Security Defaults", &e, "Policy.Read.All"),
    });
    checks.push(match graph.conditional_access_policies().await {
        Ok(policies) => conditional_access(&policies),
        Err(e) => Check::from_error("Conditional Access", &e, "Policy.Read.All"),
    });
    checks.push(Check::unknown(
        "delegated consent",
        "not visible to the app: the first shadow-account sign-in shows it (ConsentRequired on /readyz and TenantReady)",
        "grant admin consent for Chat.Create, Chat.ReadWrite, ChatMessage.Send, Presence.ReadWrite and offline_access",
    ));
    checks
}

fn permissions(config: &GatewayConfig, roles: &[String]) -> Check {
    let granted = |r: &str| roles.iter().any(|g| g.eq_ignore_ascii_case(r));
    // X.ReadWrite.All includes X.Read.All.
    let has = |r: &str| granted(r) || granted(&r.replace(".Read.", ".ReadWrite."));
    let required = required_roles(config);
    let missing: Vec<&str> = required.iter().copied().filter(|r| !has(r)).collect();
    let mut broader: Vec<&str> = BROADER_THAN_NEEDED.to_vec();
    if config.shadow_accounts.administrative_unit.is_some() {
        // The scoped role writes users: tenant-wide write is more than needed.
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
        Check::ok("application permissions", format!("all granted{extra}"))
    } else {
        Check::fail(
            "application permissions",
            format!("missing: {}{extra}", missing.join(", ")),
            "Entra admin center > App registrations > the app > API permissions: add them as Application permissions and grant admin consent",
        )
    }
}

async fn shadow_domain(graph: &GraphClient, domain: &str) -> Check {
    const NAME: &str = "shadow domain";
    match graph.domain(domain).await {
        Ok(d) if !d.is_verified => Check::fail(
            NAME,
            format!("{} is not verified", d.id),
            "verify the domain (its DNS TXT record) in Entra admin center > Domain names",
        ),
        Ok(d) if !d.authentication_type.eq_ignore_ascii_case("Managed") => Check::fail(
            NAME,
            format!(
                "{} is {}: the password grant cannot sign shadow accounts in there (AADSTS50126)",
                d.id, d.authentication_type
            ),
            "use a managed (cloud-only) domain for shadow accounts",
        ),
        Ok(d) => Check::ok(NAME, format!("{} is verified and managed", d.id)),
        Err(e) if e.is_not_found() => Check::fail(
            NAME,
            format!("{domain} is not a domain of this tenant"),
            "add and verify it in Entra admin center > Domain names, or set shadow_accounts.upn_domain to one",
        ),
        Err(e) => Check::from_error(NAME, &e, "Domain.Read.All"),
    }
}

async fn administrative_unit(graph: &GraphClient, unit: &str) -> Check {
    const NAME: &str = "administrative unit";
    match graph.administrative_unit(unit).await {
        Ok(name) => Check::ok(
            NAME,
            format!("'{name}' exists and the app can see it; shadow accounts are created in it"),
        ),
        Err(e) if e.is_not_found() => Check::fail(
            NAME,
            format!("no administrative unit {unit}"),
            "create it (Entra admin center > Roles & admins > Admin units) and set shadow_accounts.administrative_unit to its object id",
        ),
        Err(e) if e.status() == Some(403) => Check::fail(
            NAME,
            "the app may not see the unit: it holds no role scoped to it",
            "assign the app's service principal the User Administrator role scoped to the unit (Admin units > the unit > Roles and administrators)",
        ),
        Err(e) => Check::fail(NAME, e.to_string(), "see the error"),
    }
}

async fn licence(graph: &GraphClient, sku_id: &str) -> Check {
    const NAME: &str = "licence";
    let skus = match graph.subscribed_skus().await {
        Ok(skus) => skus,
        Err(e) => return Check::from_error(NAME, &e, "LicenseAssignment.Read.All"),
    };
    let Some(sku) = skus.iter().find(|s| s.sku_id.eq_ignore_ascii_case(sku_id)) else {
        let known: Vec<&str> = skus.iter().map(|s| s.sku_part_number.as_str()).collect();
        return Check::fail(
            NAME,
            format!(
                "the tenant has no SKU {sku_id} (it has: {})",
                known.join(", ")
            ),
            "set shadow_accounts.licence_sku to the skuId of a licence the tenant holds",
        );
    };
    if !sku
        .service_plans
        .iter()
        .any(|p| p.service_plan_name.starts_with("TEAMS"))
    {
        return Check::fail(
            NAME,
            format!("{} contains no Teams service plan", sku.sku_part_number),
            "choose a SKU that includes Teams (e.g. Teams Essentials, Microsoft 365 Business Basic)",
        );
    }
    let free = sku.prepaid_units.enabled - sku.consumed_units;
    if free <= 0 {
        return Check::fail(
            NAME,
            format!(
                "{}: no free seats ({} of {} used)",
                sku.sku_part_number, sku.consumed_units, sku.prepaid_units.enabled
            ),
            "buy more seats: each remote contact needs one",
        );
    }
    Check::ok(
        NAME,
        format!(
            "{} includes Teams; {free} of {} seats free",
            sku.sku_part_number, sku.prepaid_units.enabled
        ),
    )
}

fn conditional_access(policies: &[ConditionalAccessPolicy]) -> Check {
    const NAME: &str = "Conditional Access";
    let mut blocking = Vec::new();
    let mut excluding = Vec::new();
    for p in policies.iter().filter(|p| p.state == "enabled") {
        let controls = p
            .grant_controls
            .as_ref()
            .map(|g| g.built_in_controls.clone())
            .unwrap_or_default();
        if !controls.iter().any(|c| c == "mfa" || c == "block") {
            continue;
        }
        let users = p
            .conditions
            .as_ref()
            .and_then(|c| c.users.clone())
            .unwrap_or_default();
        if !users.include_users.iter().any(|u| u == "All") {
            continue;
        }
        if users.exclude_users.is_empty() && users.exclude_groups.is_empty() {
            blocking.push(format!("'{}' ({})", p.display_name, controls.join(", ")));
        } else {
            excluding.push(format!("'{}'", p.display_name));
        }
    }
    if !blocking.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{} apply to all users and exclude nobody",
                blocking.join(", ")
            ),
            SignInRefusal::MfaRequired.fix(),
        );
    }
    if excluding.is_empty() {
        Check::ok(
            NAME,
            "no enabled policy requiring MFA or blocking applies to all users",
        )
    } else {
        Check::ok(
            NAME,
            format!(
                "{} require MFA or block, with exclusions: the shadow accounts must be among them",
                excluding.join(", ")
            ),
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
