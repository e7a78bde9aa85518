//! The tenant's settings, read-only, for the preflight: the permissions in
//! the app's own token, a domain, the subscribed SKUs, Security Defaults and
//! Conditional Access policies.

use base64::Engine as _;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{GraphClient, GraphError, Identity};

const NONE: Option<&()> = None;

/// https://learn.microsoft.com/graph/api/resources/domain
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    pub id: String,
    /// `Managed` or `Federated`.
    pub authentication_type: String,
    pub is_verified: bool,
}

/// https://learn.microsoft.com/graph/api/resources/subscribedsku
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribedSku {
    pub sku_id: String,
    pub sku_part_number: String,
    pub consumed_units: i64,
    pub prepaid_units: PrepaidUnits,
    #[serde(default)]
    pub service_plans: Vec<ServicePlan>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepaidUnits {
    pub enabled: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    #[serde(default)]
    pub service_plan_id: String,
    pub service_plan_name: String,
}

/// Service plans a shadow account keeps: Teams itself, and what Teams chat
/// and presence rest on (Skype for Business Online's plan, Exchange
/// Foundation). Every other plan of the SKU (mailbox, OneDrive, SharePoint,
/// Office apps…) is disabled: a shadow account only chats.
pub fn is_needed_by_teams(plan_name: &str) -> bool {
    plan_name.starts_with("TEAMS") || matches!(plan_name, "MCOSTANDARD" | "EXCHANGE_S_FOUNDATION")
}

impl SubscribedSku {
    /// The ids of the SKU's service plans a shadow account does not need.
    pub fn plans_to_disable(&self) -> Vec<String> {
        self.service_plans
            .iter()
            .filter(|p| !is_needed_by_teams(&p.service_plan_name) && !p.service_plan_id.is_empty())
            .map(|p| p.service_plan_id.clone())
            .collect()
    }
}

/// https://learn.microsoft.com/graph/api/resources/conditionalaccesspolicy
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionalAccessPolicy {
    pub display_name: String,
    /// `enabled`, `disabled` or `enabledForReportingButNotEnforced`.
    pub state: String,
    #[serde(default)]
    pub conditions: Option<CaConditions>,
    #[serde(default)]
    pub grant_controls: Option<CaGrantControls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaConditions {
    #[serde(default)]
    pub users: Option<CaUsers>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaUsers {
    #[serde(default)]
    pub include_users: Vec<String>,
    #[serde(default)]
    pub exclude_users: Vec<String>,
    #[serde(default)]
    pub exclude_groups: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaGrantControls {
    #[serde(default)]
    pub built_in_controls: Vec<String>,
}

#[derive(Deserialize)]
struct List<T> {
    value: Vec<T>,
}

#[derive(Deserialize)]
struct SecurityDefaults {
    #[serde(rename = "isEnabled")]
    is_enabled: bool,
}

#[derive(Deserialize, Default)]
struct AppClaims {
    #[serde(default)]
    roles: Vec<String>,
}

impl GraphClient {
    /// The application permissions in the app's own access token (its `roles`
    /// claim): what an administrator granted and consented to.
    pub async fn app_roles(&self) -> Result<Vec<String>, GraphError> {
        let token = self.tokens().get(&Identity::App, None).await?;
        let claims = token
            .expose_secret()
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<AppClaims>(&bytes).ok())
            .ok_or_else(|| GraphError::Decode("the app's access token is not a JWT".into()))?;
        Ok(claims.roles)
    }

    /// The administrative unit's display name.
    pub async fn administrative_unit(&self, id: &str) -> Result<String, GraphError> {
        #[derive(Deserialize)]
        struct Unit {
            #[serde(rename = "displayName")]
            display_name: String,
        }
        let unit: Unit = self
            .json(
                &Identity::App,
                None,
                Method::GET,
                &format!("/directory/administrativeUnits/{id}"),
                NONE,
            )
            .await?;
        Ok(unit.display_name)
    }

    pub async fn domain(&self, id: &str) -> Result<Domain, GraphError> {
        self.json(
            &Identity::App,
            None,
            Method::GET,
            &format!("/domains/{id}"),
            NONE,
        )
        .await
    }

    pub async fn subscribed_skus(&self) -> Result<Vec<SubscribedSku>, GraphError> {
        let list: List<SubscribedSku> = self
            .json(&Identity::App, None, Method::GET, "/subscribedSkus", NONE)
            .await?;
        Ok(list.value)
    }

    pub async fn security_defaults_enabled(&self) -> Result<bool, GraphError> {
        let policy: SecurityDefaults = self
            .json(
                &Identity::App,
                None,
                Method::GET,
                "/policies/identitySecurityDefaultsEnforcementPolicy",
                NONE,
            )
            .await?;
        Ok(policy.is_enabled)
    }

    pub async fn conditional_access_policies(
        &self,
    ) -> Result<Vec<ConditionalAccessPolicy>, GraphError> {
        let list: List<ConditionalAccessPolicy> = self
            .json(
                &Identity::App,
                None,
                Method::GET,
                "/identity/conditionalAccess/policies",
                NONE,
            )
            .await?;
        Ok(list.value)
    }
}
