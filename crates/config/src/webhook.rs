//! The webhook Graph posts change notifications to, and how the gateway
//! subscribes to chat messages.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::SecretRef;

/// The HTTPS endpoint that receives Graph change notifications.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// The URL Graph posts to (behind the ingress); notifications are off without it.
    pub public_url: Option<String>,
    /// Shared secret echoed by Graph as `clientState`.
    pub client_state: Option<SecretRef>,
    /// Which subscriptions tell the gateway of new chat messages.
    pub chat_notifications: ChatNotifications,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            public_url: None,
            client_state: None,
            chat_notifications: ChatNotifications::default(),
        }
    }
}

/// How Graph is asked for chat-message notifications. Microsoft counts every
/// Teams subscription of a tenant against one quota of 10,000
/// (https://learn.microsoft.com/graph/api/resources/change-notifications-api-overview).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChatNotifications {
    /// One subscription per shadow account (`/users/{id}/chats/getAllMessages`),
    /// made with the account's delegated `Chat.Read`: the least privilege,
    /// one subscription of the tenant's quota per contact.
    #[default]
    PerAccount,
    /// One app-only subscription for the tenant (`/chats/getAllMessages`),
    /// which needs the application permission `Chat.Read.All`: any number
    /// of contacts; notifications of chats without a shadow account are
    /// dropped unread.
    Tenant,
}
