//! Presence: read one or many users', and set a session's or a user's own.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{NONE, Page, iso_duration, user_path};
use crate::graph::auth::{Identity, UserCredential};
use crate::graph::client::GraphClient;
use crate::graph::error::GraphError;

/// Largest batch `getPresencesByUserId` takes.
pub const PRESENCE_BATCH: usize = 650;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub id: String,
    #[serde(default)]
    pub availability: Option<String>,
    #[serde(default)]
    pub activity: Option<String>,
    #[serde(default)]
    pub status_message: Option<StatusMessage>,
    #[serde(default)]
    pub out_of_office_settings: Option<OutOfOfficeSettings>,
}

/// `presenceStatusMessage`: what a user wrote for others to see.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessage {
    #[serde(default)]
    pub message: Option<StatusText>,
}

/// The `itemBody` of a status message.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusText {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// `outOfOfficeSettings` of a presence.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutOfOfficeSettings {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub is_out_of_office: bool,
}

impl Presence {
    /// The status message's text, if one is set.
    pub fn status_text(&self) -> Option<&str> {
        let text = self.status_message.as_ref()?.message.as_ref()?;
        Some(text.content.as_str()).filter(|t| !t.trim().is_empty())
    }

    /// The automatic-reply text while out of office.
    pub fn out_of_office_message(&self) -> Option<&str> {
        self.out_of_office_settings
            .as_ref()?
            .message
            .as_deref()
            .filter(|t| !t.trim().is_empty())
    }

    pub fn is_out_of_office(&self) -> bool {
        self.out_of_office_settings
            .as_ref()
            .is_some_and(|o| o.is_out_of_office)
    }
}

impl GraphClient {
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
