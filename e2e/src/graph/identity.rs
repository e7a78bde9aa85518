//! The tenant's identity policies as the token endpoint applies them to user
//! sign-ins (password and refresh-token grants): Security Defaults,
//! Conditional Access, password expiry and delegated consent. Each refusal
//! is the AADSTS error Microsoft documents for it, so a client is tested
//! against the refusals a real tenant gives, not only against success.

use serde::Deserialize;

use super::tenant::{AppSeed, GroupSeed, User};

/// `identity` in the seed file; the default refuses nothing.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityPolicy {
    #[serde(default)]
    pub security_defaults: SecurityDefaults,
    #[serde(default)]
    pub conditional_access: Vec<ConditionalAccessPolicy>,
    /// Days a password stays valid for users without
    /// `passwordPolicies: DisablePasswordExpiration` (absent: never expires).
    #[serde(default)]
    pub password_validity_days: Option<u32>,
}

/// Security Defaults (https://learn.microsoft.com/entra/fundamentals/security-defaults):
/// every user must register for MFA; after the 14-day grace a sign-in that
/// cannot do MFA, as ROPC cannot, is refused.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SecurityDefaults {
    #[default]
    Off,
    /// On, within the 14-day registration grace: sign-ins still pass.
    Grace,
    /// On, grace over.
    Enforced,
}

/// A Conditional Access policy that targets all users, minus exclusions
/// (https://learn.microsoft.com/entra/identity/conditional-access/concept-conditional-access-users-groups).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionalAccessPolicy {
    pub display_name: String,
    #[serde(default)]
    pub state: PolicyState,
    pub grant: Grant,
    /// Users excluded, by object id or userPrincipalName.
    #[serde(default)]
    pub exclude_users: Vec<String>,
    /// Groups whose members are excluded, by id.
    #[serde(default)]
    pub exclude_groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PolicyState {
    #[default]
    Enabled,
    Disabled,
    /// Report-only: evaluated and logged, never enforced.
    EnabledForReportingButNotEnforced,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Grant {
    /// Grant control "require multifactor authentication".
    Mfa,
    Block,
}

/// Why the token endpoint refuses a user sign-in: `(error, AADSTS code, description)`
/// as https://learn.microsoft.com/entra/identity-platform/reference-error-codes names them.
pub type Refusal = (&'static str, u32, String);

impl IdentityPolicy {
    /// The refusal, if any, for `user` signing in to `app` without MFA.
    pub fn refuse(
        &self,
        app: &AppSeed,
        user: &User,
        groups: &[GroupSeed],
        now: std::time::Instant,
    ) -> Option<Refusal> {
        // Delegated permissions nobody consented to: ROPC cannot show the
        // consent prompt (https://learn.microsoft.com/entra/identity-platform/v2-oauth-ropc).
        if app.scopes.is_empty() {
            return Some((
                "invalid_grant",
                65001,
                format!(
                    "The user or administrator has not consented to use the application with ID '{}'. Send an interactive authorization request for this user and resource.",
                    app.client_id
                ),
            ));
        }
        for policy in &self.conditional_access {
            if policy.state != PolicyState::Enabled || policy.excludes(user, groups) {
                continue;
            }
            return Some(match policy.grant {
                Grant::Block => (
                    "invalid_grant",
                    53003,
                    "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.".into(),
                ),
                Grant::Mfa => (
                    "invalid_grant",
                    50076,
                    "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.".into(),
                ),
            });
        }
        if self.security_defaults == SecurityDefaults::Enforced {
            return Some((
                "invalid_grant",
                50079,
                "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.".into(),
            ));
        }
        if let Some(days) = self.password_validity_days {
            let exempt = user
                .properties
                .get("passwordPolicies")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains("DisablePasswordExpiration"));
            let age = now.saturating_duration_since(user.password_set);
            if !exempt && age.as_secs() >= u64::from(days) * 86_400 {
                return Some(("invalid_grant", 50055, "The password is expired.".into()));
            }
        }
        None
    }
}

impl ConditionalAccessPolicy {
    fn excludes(&self, user: &User, groups: &[GroupSeed]) -> bool {
        let named = |key: &String| {
            key.eq_ignore_ascii_case(&user.id) || key.eq_ignore_ascii_case(user.upn())
        };
        self.exclude_users.iter().any(named)
            || groups
                .iter()
                .filter(|g| {
                    self.exclude_groups
                        .iter()
                        .any(|x| x.eq_ignore_ascii_case(&g.id))
                })
                .any(|g| g.members.iter().any(named))
    }
}
