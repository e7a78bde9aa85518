//! Microsoft Graph v1.0: tokens, typed calls, errors, retries and the
//! per-tenant request budget.

pub mod api;
pub mod auth;
pub mod client;
pub mod error;
pub mod subscriptions;
pub mod webhook;

pub use auth::{Identity, Tokens, UserCredential};
pub use client::{Budget, GraphClient, RetryPolicy};
pub use error::GraphError;
