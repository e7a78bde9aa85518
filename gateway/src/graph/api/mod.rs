//! Typed Graph calls the bridge makes, one file per resource: `users` (and
//! shadow accounts, licences, photos, groups), `presence`, `chats`, `batch`.
//! Paths follow Microsoft's documentation; bodies are the documented shapes.

mod batch;
mod chats;
mod presence;
mod users;

pub use batch::BATCH_LIMIT;
pub use chats::{
    Chat, ChatMember, ChatMessage, ChatType, GraphTime, IdentityRef, ItemBody, MessageFrom,
    MessageType,
};
pub use presence::{OutOfOfficeSettings, PRESENCE_BATCH, Presence, StatusMessage, StatusText};
pub use users::{NewUser, PasswordProfile, SHADOW_EMPLOYEE_TYPE, USER_SELECT, User, UserPatch};

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::auth::{Identity, UserCredential};
use super::client::GraphClient;
use super::error::GraphError;

/// One page of a collection (all of it when there is no next page); Graph's
/// next page is a full URL.
#[derive(Deserialize)]
struct Page<T> {
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    next: Option<String>,
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

pub(crate) const NONE: Option<&Value> = None;

/// Ids in paths: chat ids (`19:…@unq.gbl.spaces`) and group ids go in as
/// they are, but for `#`, `?` and spaces.
fn chat_path(id: &str) -> String {
    id.replace('%', "%25")
        .replace('#', "%23")
        .replace('?', "%3F")
        .replace(' ', "%20")
}

impl GraphClient {
    /// A collection's items page after page, until there is no next page,
    /// `max_pages` were read or `enough` says so of the page just read.
    pub(crate) async fn pages<T: serde::de::DeserializeOwned>(
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
