//! 1:1 chats and their messages and members.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{NONE, Page, chat_path, user_path};
use crate::graph::auth::{Identity, UserCredential};
use crate::graph::client::GraphClient;
use crate::graph::error::GraphError;

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

/// A member of a chat as Graph lists it (aadUserConversationMember).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMember {
    /// The member's Entra object id (absent for members from outside the tenant).
    #[serde(default)]
    pub user_id: Option<String>,
}

impl GraphClient {
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
}

/// Pages read at most when listing a shadow account's chats or a chat's
/// members (50 each): a shadow account is in few chats.
const MAX_LIST_PAGES: usize = 20;
