//! 1:1 chats and their messages and members.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{NONE, Page, chat_path, user_path};
use crate::graph::auth::{Identity, UserCredential};
use crate::graph::client::GraphClient;
use crate::graph::error::GraphError;

/// `chatType`: the gateway bridges one-on-one chats only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChatType {
    OneOnOne,
    Group,
    Meeting,
    /// `unknownFutureValue` and whatever Graph adds later.
    #[serde(other)]
    Other,
}

/// `messageType` of a chat message: only `message` carries what a person wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MessageType {
    Message,
    ChatEvent,
    Typing,
    SystemEventMessage,
    #[serde(other)]
    Other,
}

/// One identity of an identity set (`user`, `application`…).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `from` of a chat message (chatMessageFromIdentitySet): a user, or an
/// application; neither for system messages.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageFrom {
    #[serde(default)]
    pub user: Option<IdentityRef>,
    #[serde(default)]
    pub application: Option<IdentityRef>,
}

/// A Graph date-time (RFC 3339, UTC), read once where it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GraphTime(jiff::Timestamp);

impl GraphTime {
    /// Milliseconds since the epoch (Graph orders a chat's messages to the millisecond).
    pub fn millis(self) -> i64 {
        self.0.as_millisecond()
    }

    pub fn secs(self) -> i64 {
        self.0.as_second()
    }
}

impl<'de> Deserialize<'de> for GraphTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        crate::clock::timestamp_of(&text)
            .map(GraphTime)
            .ok_or_else(|| serde::de::Error::custom(format!("not a date-time: {text:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub id: String,
    pub chat_type: ChatType,
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
    pub created_date_time: GraphTime,
    #[serde(default)]
    pub message_type: Option<MessageType>,
    #[serde(default)]
    pub from: Option<MessageFrom>,
    pub body: ItemBody,
    /// Set when the message was deleted (its body is then empty).
    #[serde(default)]
    pub deleted_date_time: Option<GraphTime>,
}

impl ChatMessage {
    /// The Entra object id of the user who sent it (None for system messages).
    pub fn sender_id(&self) -> Option<&str> {
        self.from.as_ref()?.user.as_ref()?.id.as_deref()
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
    /// POST /chats as the shadow account: the 1:1 chat with `other_id`, of
    /// `other_tenant` when it is not the shadow account's tenant.
    pub async fn one_on_one_chat(
        &self,
        shadow: &UserCredential,
        shadow_id: &str,
        other_id: &str,
        other_tenant: Option<&str>,
    ) -> Result<Chat, GraphError> {
        let member = |id: &str| {
            json!({"@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"],
                   "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{id}')")})
        };
        let mut other = member(other_id);
        // A user of another tenant is bound with its tenant; out-of-tenant
        // members must be owners (chat-post, "members").
        if let Some(tenant) = other_tenant {
            other["tenantId"] = json!(tenant);
        }
        let body = json!({"chatType": "oneOnOne", "members": [member(shadow_id), other]});
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_typed_where_it_arrives() {
        let m: ChatMessage = serde_json::from_value(json!({
            "id": "1", "createdDateTime": "2026-12-06T21:00:00.1234567Z",
            "messageType": "systemEventMessage",
            "from": {"user": {"id": "u1", "displayName": "Alice"}, "application": null},
            "body": {"contentType": "html", "content": "<p>hi</p>"},
            "deletedDateTime": null
        }))
        .unwrap();
        assert_eq!(m.created_date_time.millis(), 1_796_590_800_123);
        assert_eq!(m.message_type, Some(MessageType::SystemEventMessage));
        assert_eq!(m.sender_id(), Some("u1"));
        let later: ChatMessage = serde_json::from_value(json!({
            "id": "2", "createdDateTime": "2026-12-06T21:00:01Z", "messageType": "somethingNew",
            "body": {"contentType": "text", "content": ""}, "deletedDateTime": "2026-12-06T21:00:02Z"
        }))
        .unwrap();
        assert!(later.created_date_time > m.created_date_time);
        assert_eq!(later.message_type, Some(MessageType::Other));
        assert_eq!(later.sender_id(), None);
        assert!(later.deleted_date_time.is_some());
        let chat: Chat =
            serde_json::from_value(json!({"id": "19:x", "chatType": "unknownFutureValue"}))
                .unwrap();
        assert_eq!(chat.chat_type, ChatType::Other);
        let bad = serde_json::from_value::<ChatMessage>(json!({
            "id": "3", "createdDateTime": "yesterday", "body": {"contentType": "text", "content": ""}
        }));
        assert!(bad.unwrap_err().to_string().contains("not a date-time"));
    }
}
