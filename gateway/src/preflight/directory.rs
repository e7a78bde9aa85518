//! What the shadow accounts' tenant must hold: a managed domain, the
//! administrative unit, a Teams licence with seats, and sign-in policies
//! that let the password grant through.

use xmppfed_config::GatewayConfig;

use super::Check;
use crate::graph::directory::ConditionalAccessPolicy;
use crate::graph::{GraphClient, SignInRefusal};

/// The checks of the tenant the shadow accounts live in.
pub(super) async fn shadow_tenant(
    config: &GatewayConfig,
    graph: &GraphClient,
    checks: &mut Vec<Check>,
) {
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
