//! Typed Graph calls the bridge makes: users (and shadow accounts), licences,
//! photos, presence. Paths follow Microsoft's documentation; bodies are the
//! documented shapes.

use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::{Identity, UserCredential};
use super::client::{Body, GraphClient};
use super::error::GraphError;

/// Largest batch `getPresencesByUserId` takes.
pub const PRESENCE_BATCH: usize = 650;

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub id: String,
    #[serde(default)]
    pub availability: Option<String>,
    #[serde(default)]
    pub activity: Option<String>,
    #[serde(default)]
    pub status_message: Option<Value>,
    #[serde(default)]
    pub out_of_office_settings: Option<Value>,
}

impl Presence {
    /// The status message's text, if one is set.
    pub fn status_text(&self) -> Option<&str> {
        self.status_message
            .as_ref()?
            .get("message")?
            .get("content")?
            .as_str()
            .filter(|t| !t.trim().is_empty())
    }

    /// The automatic-reply text while out of office.
    pub fn out_of_office_message(&self) -> Option<&str> {
        self.out_of_office_settings
            .as_ref()?
            .get("message")?
            .as_str()
            .filter(|t| !t.trim().is_empty())
    }

    pub fn is_out_of_office(&self) -> bool {
        self.out_of_office_settings
            .as_ref()
            .and_then(|o| o.get("isOutOfOffice"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub id: String,
    pub chat_type: String,
    /// With `$expand=members`.
    #[serde(default)]
    pub members: Option<Vec<ChatMember>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    pub content_type: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: String,
    pub created_date_time: String,
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub from: Option<Value>,
    pub body: ItemBody,
    /// Set when the message was deleted (its body is then empty).
    #[serde(default)]
    pub deleted_date_time: Option<String>,
}

impl ChatMessage {
    /// The Entra object id of the user who sent it (None for system messages).
    pub fn sender_id(&self) -> Option<&str> {
        self.from.as_ref()?.get("user")?.get("id")?.as_str()
    }
}

/// One page of a collection (all of it when there is no next page); Graph's
/// next page is a full URL.
#[derive(Deserialize)]
struct Page<T> {
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    next: Option<String>,
}

/// A member of a chat as Graph lists it (aadUserConversationMember).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMember {
    /// The member's Entra object id (absent for members from outside the tenant).
    #[serde(default)]
    pub user_id: Option<String>,
}

/// `/users/{id}` with the key escaped for a path segment.
fn user_path(key: &str) -> String {
    let escaped: String = key
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '.' | '_' | '@' | '~' => c.to_string(),
            c => {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect();
    format!("/users/{escaped}")
}

/// ISO 8601 duration, as Graph takes `expirationDuration`.
pub fn iso_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || out == "PT" {
        out.push_str(&format!("{s}S"));
    }
    out
}

const NONE: Option<&Value> = None;

/// `employeeType` of every shadow account the gateway creates.
pub const SHADOW_EMPLOYEE_TYPE: &str = "XMPP federation contact";

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

    /// PATCH of the properties given (Graph's names).
    pub async fn update_user(&self, key: &str, properties: &Value) -> Result<(), GraphError> {
        self.no_content(
            &Identity::App,
            None,
            Method::PATCH,
            &user_path(key),
            Some(properties),
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

    pub async fn get_presence(&self, key: &str) -> Result<Presence, GraphError> {
        let path = format!("{}/presence", user_path(key));
        self.json(&Identity::App, None, Method::GET, &path, NONE)
            .await
    }

    /// Presence of many users, in batches of at most 650.
    pub async fn presences_by_user_id(&self, ids: &[String]) -> Result<Vec<Presence>, GraphError> {
        let mut all = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PRESENCE_BATCH) {
            let body = json!({"ids": chunk});
            let page: Page<Presence> = self
                .json(
                    &Identity::App,
                    None,
                    Method::POST,
                    "/communications/getPresencesByUserId",
                    Some(&body),
                )
                .await?;
            all.extend(page.value);
        }
        Ok(all)
    }

    /// Our application's presence session for `key` (application permission).
    pub async fn set_presence(
        &self,
        key: &str,
        session_id: &str,
        availability: &str,
        activity: &str,
        expiration: Duration,
    ) -> Result<(), GraphError> {
        let body = json!({"sessionId": session_id, "availability": availability, "activity": activity,
                          "expirationDuration": iso_duration(expiration)});
        let path = format!("{}/presence/setPresence", user_path(key));
        self.no_content(&Identity::App, None, Method::POST, &path, Some(&body))
            .await
    }

    pub async fn clear_presence(&self, key: &str, session_id: &str) -> Result<(), GraphError> {
        let path = format!("{}/presence/clearPresence", user_path(key));
        self.no_content(
            &Identity::App,
            None,
            Method::POST,
            &path,
            Some(&json!({"sessionId": session_id})),
        )
        .await
    }

    pub async fn set_preferred_presence(
        &self,
        key: &str,
        availability: &str,
        activity: &str,
        expiration: Duration,
    ) -> Result<(), GraphError> {
        let body = json!({"availability": availability, "activity": activity, "expirationDuration": iso_duration(expiration)});
        let path = format!("{}/presence/setUserPreferredPresence", user_path(key));
        self.no_content(&Identity::App, None, Method::POST, &path, Some(&body))
            .await
    }

    pub async fn clear_preferred_presence(&self, key: &str) -> Result<(), GraphError> {
        let path = format!("{}/presence/clearUserPreferredPresence", user_path(key));
        self.no_content(&Identity::App, None, Method::POST, &path, NONE)
            .await
    }

    /// The status message shown with the user's presence (plain text).
    pub async fn set_status_message(&self, key: &str, text: &str) -> Result<(), GraphError> {
        let body = json!({"statusMessage": {"message": {"content": text, "contentType": "text"}}});
        let path = format!("{}/presence/setStatusMessage", user_path(key));
        self.no_content(&Identity::App, None, Method::POST, &path, Some(&body))
            .await
    }

    /// The same, signed in as a shadow account (delegated `Presence.ReadWrite`).
    pub async fn set_own_presence(
        &self,
        credential: &UserCredential,
        session_id: &str,
        availability: &str,
        activity: &str,
        expiration: Duration,
    ) -> Result<(), GraphError> {
        let body = json!({"sessionId": session_id, "availability": availability, "activity": activity,
                          "expirationDuration": iso_duration(expiration)});
        let path = format!("{}/presence/setPresence", user_path(&credential.upn));
        let identity = Identity::User(credential.upn.clone());
        self.no_content(
            &identity,
            Some(credential),
            Method::POST,
            &path,
            Some(&body),
        )
        .await
    }
}

/// A sub-response's header, whatever its case (Graph sends `Retry-After`,
/// `Content-Type`; HTTP header names are case-insensitive).
fn sub_header<'a>(response: &'a Value, name: &str) -> Option<&'a str> {
    response["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// Largest JSON batch Graph takes.
pub const BATCH_LIMIT: usize = 20;

impl GraphClient {
    /// Many GETs in `$batch`es of 20: one round trip instead of twenty.
    /// Each answer is its own result (a 404 for one user fails only that
    /// one), and each is throttled on its own: items answered 429/503/504
    /// are sent again, alone, after the longest Retry-After they name
    /// (https://learn.microsoft.com/graph/json-batching#handling-throttling),
    /// within the client's retry policy.
    pub async fn batch_get(
        &self,
        paths: &[String],
    ) -> Result<Vec<Result<Value, GraphError>>, GraphError> {
        let mut results: Vec<Option<Result<Value, GraphError>>> = vec![None; paths.len()];
        let policy = self.retry_policy().clone();
        let mut pending: Vec<usize> = (0..paths.len()).collect();
        let mut waited = Duration::ZERO;
        for attempt in 1..=policy.max_attempts.max(1) {
            let mut again = Vec::new();
            let mut wait = Duration::ZERO;
            for chunk in pending.chunks(BATCH_LIMIT) {
                let chunk_paths: Vec<&str> = chunk.iter().map(|&i| paths[i].as_str()).collect();
                for (&index, answer) in chunk.iter().zip(self.one_batch(&chunk_paths).await?) {
                    match answer {
                        Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                            let after = match &e {
                                GraphError::Api {
                                    retry_after: Some(after),
                                    ..
                                } => *after,
                                _ => policy.backoff * 2u32.saturating_pow(attempt - 1),
                            };
                            wait = wait.max(after);
                            again.push(index);
                            results[index] = Some(Err(e));
                        }
                        answer => results[index] = Some(answer),
                    }
                }
            }
            if again.is_empty() || waited + wait > policy.max_wait {
                break;
            }
            tracing::debug!(
                items = again.len(),
                ?wait,
                "throttled $batch items sent again"
            );
            tokio::time::sleep(wait).await;
            waited += wait;
            pending = again;
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(GraphError::Decode("a $batch item got no answer".into())))
            })
            .collect())
    }

    /// One `$batch` of at most 20 GETs, answers in the order of `paths`.
    async fn one_batch(
        &self,
        paths: &[&str],
    ) -> Result<Vec<Result<Value, GraphError>>, GraphError> {
        let requests: Vec<Value> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| json!({"id": i.to_string(), "method": "GET", "url": path}))
            .collect();
        let reply: Value = self
            .json(
                &Identity::App,
                None,
                Method::POST,
                "/$batch",
                Some(&json!({"requests": requests})),
            )
            .await?;
        let mut answers: Vec<(usize, Result<Value, GraphError>)> = reply["responses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let index = r["id"]
                    .as_str()
                    .and_then(|i| i.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                let status = r["status"].as_u64().unwrap_or(0) as u16;
                let answer = if (200..300).contains(&status) {
                    Ok(r["body"].clone())
                } else {
                    let retry_after = sub_header(r, "retry-after")
                        .and_then(|v| v.trim().parse().ok())
                        .map(Duration::from_secs);
                    let body = serde_json::to_vec(&r["body"]).unwrap_or_default();
                    Err(GraphError::from_response(status, None, retry_after, &body))
                };
                (index, answer)
            })
            .collect();
        answers.sort_by_key(|(i, _)| *i);
        if answers.len() != paths.len() || answers.iter().enumerate().any(|(n, (i, _))| n != *i) {
            return Err(GraphError::Decode(
                "a $batch answer does not match its requests".into(),
            ));
        }
        Ok(answers.into_iter().map(|(_, a)| a).collect())
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

    /// The 1:1 chat between a shadow account and a Teams user (Graph returns
    /// the existing one if they have it), created as the shadow account.
    pub async fn one_on_one_chat(
        &self,
        shadow: &UserCredential,
        shadow_id: &str,
        other_id: &str,
    ) -> Result<Chat, GraphError> {
        let member = |id: &str| {
            json!({"@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"],
                   "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{id}')")})
        };
        let body =
            json!({"chatType": "oneOnOne", "members": [member(shadow_id), member(other_id)]});
        let identity = Identity::User(shadow.upn.clone());
        self.json(&identity, Some(shadow), Method::POST, "/chats", Some(&body))
            .await
    }

    pub async fn get_chat(
        &self,
        shadow: &UserCredential,
        chat_id: &str,
    ) -> Result<Chat, GraphError> {
        let identity = Identity::User(shadow.upn.clone());
        self.json(
            &identity,
            Some(shadow),
            Method::GET,
            &format!("/chats/{}", chat_path(chat_id)),
            NONE,
        )
        .await
    }

    /// One message (what a change notification names).
    pub async fn get_chat_message(
        &self,
        shadow: &UserCredential,
        chat_id: &str,
        message_id: &str,
    ) -> Result<ChatMessage, GraphError> {
        let identity = Identity::User(shadow.upn.clone());
        let path = format!(
            "/chats/{}/messages/{}",
            chat_path(chat_id),
            chat_path(message_id)
        );
        self.json(&identity, Some(shadow), Method::GET, &path, NONE)
            .await
    }

    /// Sends HTML (already escaped by the caller) as the shadow account.
    pub async fn send_chat_message(
        &self,
        shadow: &UserCredential,
        chat_id: &str,
        html: &str,
    ) -> Result<ChatMessage, GraphError> {
        let body = json!({"body": {"contentType": "html", "content": html}});
        let identity = Identity::User(shadow.upn.clone());
        let path = format!("/chats/{}/messages", chat_path(chat_id));
        self.json(&identity, Some(shadow), Method::POST, &path, Some(&body))
            .await
    }

    /// The newest `top` messages of a chat (newest first), read as the shadow account.
    pub async fn chat_messages(
        &self,
        shadow: &UserCredential,
        chat_id: &str,
        top: u32,
    ) -> Result<Vec<ChatMessage>, GraphError> {
        let identity = Identity::User(shadow.upn.clone());
        let path = format!(
            "/chats/{}/messages?$top={}",
            chat_path(chat_id),
            top.clamp(1, 50)
        );
        let page: Page<ChatMessage> = self
            .json(&identity, Some(shadow), Method::GET, &path, NONE)
            .await?;
        Ok(page.value)
    }
}

impl GraphClient {
    /// A chat's messages changed since `since` (milliseconds since the
    /// epoch; 0 reads from the newest back), following Graph's pages; at most
    /// `max_pages` pages of 50. Newest first.
    ///
    /// Graph filters a chat's messages only on the property it orders by, and
    /// `lastModifiedDateTime` is the one that takes `gt` (chat-list-messages):
    /// a chat with nothing new since its mark answers one empty page. An edited
    /// older message comes too; the caller skips what was created before its mark.
    pub async fn chat_messages_since(
        &self,
        shadow: &UserCredential,
        chat_id: &str,
        since: i64,
        max_pages: usize,
    ) -> Result<Vec<ChatMessage>, GraphError> {
        let identity = Identity::User(shadow.upn.clone());
        let chat = chat_path(chat_id);
        if since <= 0 {
            let path = format!("/chats/{chat}/messages?$top=50&$orderby=createdDateTime%20desc");
            return self
                .pages(&identity, Some(shadow), path, max_pages, |_| false)
                .await;
        }
        // `gt` is strict: the mark's own millisecond is asked for again.
        let after = jiff::Timestamp::from_millisecond(since - 1)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .map_err(|e| GraphError::Decode(format!("chat mark {since}: {e}")))?;
        let path = format!(
            "/chats/{chat}/messages?$top=50&$orderby=lastModifiedDateTime%20desc&$filter=lastModifiedDateTime%20gt%20{after}"
        );
        // The filter bounds the listing: every page is new, none ends it early.
        self.pages(&identity, Some(shadow), path, max_pages, |_| false)
            .await
    }

    /// The members of a chat, read as the shadow account (one of them).
    pub async fn chat_members(
        &self,
        shadow: &UserCredential,
        chat_id: &str,
    ) -> Result<Vec<ChatMember>, GraphError> {
        let identity = Identity::User(shadow.upn.clone());
        let path = format!("/chats/{}/members", chat_path(chat_id));
        self.pages(&identity, Some(shadow), path, MAX_LIST_PAGES, |_| false)
            .await
    }

    /// The chats a shadow account is in (those a Teams user started with it too).
    pub async fn chats_of(
        &self,
        shadow: &UserCredential,
        shadow_id: &str,
    ) -> Result<Vec<Chat>, GraphError> {
        let identity = Identity::User(shadow.upn.clone());
        // Members expanded: a chat started by a Teams user needs no second call.
        let path = format!("{}/chats?$expand=members&$top=50", user_path(shadow_id));
        self.pages(&identity, Some(shadow), path, MAX_LIST_PAGES, |_| false)
            .await
    }

    /// A collection's items page after page, until there is no next page,
    /// `max_pages` were read or `enough` says so of the page just read.
    async fn pages<T: serde::de::DeserializeOwned>(
        &self,
        identity: &Identity,
        credential: Option<&UserCredential>,
        mut path: String,
        max_pages: usize,
        enough: impl Fn(&[T]) -> bool,
    ) -> Result<Vec<T>, GraphError> {
        let mut all = Vec::new();
        for _ in 0..max_pages.max(1) {
            let page: Page<T> = self
                .json(identity, credential, Method::GET, &path, NONE)
                .await?;
            let done = enough(&page.value);
            all.extend(page.value);
            match page.next.as_deref().and_then(|n| n.split_once("/v1.0")) {
                Some((_, rest)) if !done => path = rest.to_owned(),
                _ => break,
            }
        }
        Ok(all)
    }
}

/// Pages read at most when listing a shadow account's chats or a chat's
/// members (50 each): a shadow account is in few chats.
const MAX_LIST_PAGES: usize = 20;

pub use crate::clock::{epoch_millis_of, epoch_of};

/// Chat ids (`19:…@unq.gbl.spaces`) go into paths as they are, but for `#`, `?` and spaces.
fn chat_path(id: &str) -> String {
    id.replace('%', "%25")
        .replace('#', "%23")
        .replace('?', "%3F")
        .replace(' ', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_durations() {
        assert_eq!(user_path("alice@contoso.com"), "/users/alice@contoso.com");
        assert_eq!(user_path("o'brien#1@x.com"), "/users/o%27brien%231@x.com");
        assert_eq!(iso_duration(Duration::from_secs(300)), "PT5M");
        assert_eq!(iso_duration(Duration::from_secs(5400)), "PT1H30M");
        assert_eq!(iso_duration(Duration::from_secs(0)), "PT0S");
    }
}
