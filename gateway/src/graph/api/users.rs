//! Users and shadow accounts: read, create, update, delete; licences and
//! photos; groups and batched reads of users.

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{NONE, chat_path, user_path};
use crate::graph::auth::Identity;
use crate::graph::client::{Body, GraphClient};
use crate::graph::error::GraphError;

/// The user properties the gateway reads (a Graph user has many more).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub office_location: Option<String>,
    #[serde(default)]
    pub mobile_phone: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub business_phones: Vec<String>,
}

/// Graph sends `[]` for empty collections; a `null` is taken as the same.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The `$select` that fills [`User`].
pub const USER_SELECT: &str = "id,userPrincipalName,displayName,givenName,surname,mail,jobTitle,department,officeLocation,mobilePhone,businessPhones";

/// A shadow account to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub upn: String,
    pub display_name: String,
    pub mail_nickname: String,
    pub usage_location: Option<String>,
    pub password: SecretString,
    /// Created as a member of this administrative unit (object id).
    pub administrative_unit: Option<String>,
}

/// The properties of a user to change (`PATCH /users/{id}`); only those set
/// are sent. Limits: https://learn.microsoft.com/graph/api/resources/user
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_phones: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_profile: Option<PasswordProfile>,
}

impl UserPatch {
    /// Nothing to change: no request is needed.
    pub fn is_empty(&self) -> bool {
        serde_json::to_value(self).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
    }
}

/// A new password the user keeps (the gateway signs in with it).
#[derive(Debug, Clone)]
pub struct PasswordProfile {
    pub password: SecretString,
}

impl Serialize for PasswordProfile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut profile = s.serialize_struct("passwordProfile", 2)?;
        profile.serialize_field("forceChangePasswordNextSignIn", &false)?;
        profile.serialize_field("password", self.password.expose_secret())?;
        profile.end()
    }
}

/// `employeeType` of every shadow account the gateway creates.
pub const SHADOW_EMPLOYEE_TYPE: &str = "XMPP federation contact";

/// `extensionAttribute15` of every shadow account the gateway creates.
pub const SHADOW_EXTENSION_MARK: &str = "xmppfed-shadow-account";

impl GraphClient {
    pub async fn get_user(&self, key: &str) -> Result<User, GraphError> {
        let path = format!("{}?$select={USER_SELECT}", user_path(key));
        self.json(&Identity::App, None, Method::GET, &path, NONE)
            .await
    }

    /// Creates a shadow account (app-only), with a password that never expires.
    pub async fn create_user(&self, new: &NewUser) -> Result<User, GraphError> {
        let mut body = json!({
            "accountEnabled": true,
            "displayName": new.display_name,
            "mailNickname": new.mail_nickname,
            "userPrincipalName": new.upn,
            "passwordProfile": {"forceChangePasswordNextSignIn": false, "password": new.password.expose_secret()},
            // The gateway holds the password and cannot change it when the
            // tenant's expiry comes (AADSTS50055 from then on):
            // https://learn.microsoft.com/graph/api/resources/user (passwordPolicies).
            "passwordPolicies": "DisablePasswordExpiration",
            // A mark admins can filter on to keep shadow accounts out of
            // dynamic groups and policies.
            "employeeType": SHADOW_EMPLOYEE_TYPE,
            // And one a dynamic group rule can use (`user.extensionAttribute15
            // -eq "xmppfed-shadow-account"`): a group of every shadow account
            // to exclude from MFA policies. Cloud-only users take it at creation
            // (https://learn.microsoft.com/graph/api/resources/onpremisesextensionattributes).
            "onPremisesExtensionAttributes": {"extensionAttribute15": SHADOW_EXTENSION_MARK},
        });
        if let Some(location) = &new.usage_location {
            body["usageLocation"] = json!(location);
        }
        match &new.administrative_unit {
            // Created inside the unit, so that a role scoped to it suffices:
            // https://learn.microsoft.com/graph/api/administrativeunit-post-members
            Some(unit) => {
                body["@odata.type"] = json!("#microsoft.graph.user");
                let path = format!("/directory/administrativeUnits/{unit}/members");
                self.json(&Identity::App, None, Method::POST, &path, Some(&body))
                    .await
            }
            None => {
                self.json(&Identity::App, None, Method::POST, "/users", Some(&body))
                    .await
            }
        }
    }

    /// Changes the properties the patch sets.
    pub async fn update_user(&self, key: &str, patch: &UserPatch) -> Result<(), GraphError> {
        self.no_content(
            &Identity::App,
            None,
            Method::PATCH,
            &user_path(key),
            Some(patch),
        )
        .await
    }

    pub async fn delete_user(&self, key: &str) -> Result<(), GraphError> {
        self.no_content(&Identity::App, None, Method::DELETE, &user_path(key), NONE)
            .await
    }

    /// Assigns the SKU with `disabled_plans` (service plan ids) turned off.
    pub async fn assign_licence(
        &self,
        key: &str,
        sku_id: &str,
        disabled_plans: &[String],
    ) -> Result<(), GraphError> {
        let body = json!({"addLicenses": [{"skuId": sku_id, "disabledPlans": disabled_plans}], "removeLicenses": []});
        let path = format!("{}/assignLicense", user_path(key));
        self.no_content(&Identity::App, None, Method::POST, &path, Some(&body))
            .await
    }

    /// The user's photo (content type, bytes), `None` when there is none.
    pub async fn get_photo(&self, key: &str) -> Result<Option<(String, Vec<u8>)>, GraphError> {
        let path = format!("{}/photo/$value", user_path(key));
        match self
            .send(&Identity::App, None, Method::GET, &path, Body::None)
            .await
        {
            Ok(reply) => Ok(Some((
                reply.content_type.unwrap_or_else(|| "image/jpeg".into()),
                reply.body.to_vec(),
            ))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put_photo(
        &self,
        key: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<(), GraphError> {
        let path = format!("{}/photo/$value", user_path(key));
        self.send(
            &Identity::App,
            None,
            Method::PUT,
            &path,
            Body::Bytes {
                content_type,
                bytes,
            },
        )
        .await
        .map(|_| ())
    }

    /// Every user in an Entra group, nested groups included (the internal allow list).
    pub async fn group_users(&self, group_id: &str) -> Result<Vec<User>, GraphError> {
        #[derive(Deserialize)]
        struct Member {
            #[serde(rename = "@odata.type", default)]
            odata_type: String,
            #[serde(flatten)]
            user: User,
        }
        let path = format!(
            "/groups/{}/transitiveMembers?$select={USER_SELECT}",
            chat_path(group_id)
        );
        let members: Vec<Member> = self
            .pages(&Identity::App, None, path, usize::MAX, |_| false)
            .await?;
        Ok(members
            .into_iter()
            .filter(|m| m.odata_type == "#microsoft.graph.user")
            .map(|m| m.user)
            .collect())
    }

    /// Users by id or UPN, batched.
    pub async fn get_users(
        &self,
        keys: &[String],
    ) -> Result<Vec<Result<User, GraphError>>, GraphError> {
        let paths: Vec<String> = keys
            .iter()
            .map(|k| format!("{}?$select={USER_SELECT}", user_path(k)))
            .collect();
        Ok(self
            .batch_get(&paths)
            .await?
            .into_iter()
            .map(|r| {
                r.and_then(|v| {
                    serde_json::from_value(v).map_err(|e| GraphError::Decode(e.to_string()))
                })
            })
            .collect())
    }
}
