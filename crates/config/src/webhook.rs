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
    /// What one client may hold of the listener (it faces the internet).
    pub limits: ListenerLimits,
}

/// The bounds of an HTTP listener: `[webhook.limits]`, `[admin.limits]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// A connection's request headers must arrive within this (idle
    /// keep-alive connections are closed after it too).
    pub header_read_timeout_secs: u32,
    /// A whole request, body and answer, within this.
    pub request_timeout_secs: u32,
    /// Connections held at once; more are closed as they arrive.
    pub max_connections: u32,
    /// Connections held at once from one address. Behind an ingress every
    /// connection comes from the ingress: raise it to `max_connections` there.
    pub max_connections_per_source: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 1024,
            max_connections_per_source: 256,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            public_url: None,
            client_state: None,
            chat_notifications: ChatNotifications::default(),
            limits: ListenerLimits::default(),
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
