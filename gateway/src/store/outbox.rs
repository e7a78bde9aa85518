//! The outbox's entries, typed: which way a message goes and what it carries.
//! Backends keep a row of text columns ([`OutboxRow`]); the store's facade
//! encodes and decodes, so nothing past it handles a payload as a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Epoch, StoreError};

/// Which way an outbox entry goes (the `direction` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ToTeams,
    ToXmpp,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToTeams => "to-teams",
            Direction::ToXmpp => "to-xmpp",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "to-teams" => Ok(Direction::ToTeams),
            "to-xmpp" => Ok(Direction::ToXmpp),
            other => Err(format!("unknown outbox direction {other:?}")),
        }
    }
}

/// A message from XMPP waiting for Teams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToTeams {
    /// The sender: bare (lower-cased) and full JID.
    pub remote: String,
    pub remote_full: String,
    /// The Teams user (object id) and the localpart of their JID.
    pub user_id: String,
    pub local: String,
    pub body: String,
    /// The XMPP id (or origin-id) of the message, for the receipt.
    pub id: Option<String>,
    /// The sender asked for an XEP-0184 receipt.
    pub receipt: bool,
}

/// A message from Teams waiting for XMPP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToXmpp {
    pub local: String,
    pub user_id: String,
    pub remote: String,
    pub text: String,
    pub graph_id: String,
    pub chat_id: String,
    /// When it was first queued to expire (kept across bounces and retries).
    #[serde(default)]
    pub expires_at: Option<Epoch>,
    /// How often it bounced.
    #[serde(default)]
    pub bounces: u32,
}

/// What an outbox entry carries; its variant is its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxPayload {
    ToTeams(ToTeams),
    ToXmpp(ToXmpp),
}

impl OutboxPayload {
    pub fn direction(&self) -> Direction {
        match self {
            OutboxPayload::ToTeams(_) => Direction::ToTeams,
            OutboxPayload::ToXmpp(_) => Direction::ToXmpp,
        }
    }

    /// The `payload` column: the message's JSON (the direction is its own column).
    fn encode(&self) -> Result<String, StoreError> {
        match self {
            OutboxPayload::ToTeams(p) => serde_json::to_string(p),
            OutboxPayload::ToXmpp(p) => serde_json::to_string(p),
        }
        .map_err(StoreError::Encode)
    }

    fn decode(direction: &str, payload: &str) -> Result<Self, String> {
        let direction: Direction = direction.parse()?;
        match direction {
            Direction::ToTeams => serde_json::from_str(payload).map(OutboxPayload::ToTeams),
            Direction::ToXmpp => serde_json::from_str(payload).map(OutboxPayload::ToXmpp),
        }
        .map_err(|e| format!("{direction} payload: {e}"))
    }
}

/// A message waiting for delivery, one direction or the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub seq: i64,
    /// Messages of one conversation are delivered in order.
    pub conversation: String,
    /// Graph message id or XMPP id/origin-id: the same message is enqueued once.
    pub dedupe_key: String,
    pub payload: OutboxPayload,
    pub attempts: i64,
    pub next_attempt_at: Epoch,
    pub expires_at: Epoch,
}

impl OutboxItem {
    pub fn direction(&self) -> Direction {
        self.payload.direction()
    }

    pub(super) fn to_row(&self) -> Result<OutboxRow, StoreError> {
        Ok(OutboxRow {
            seq: self.seq,
            direction: self.direction().as_str().to_owned(),
            conversation: self.conversation.clone(),
            dedupe_key: self.dedupe_key.clone(),
            payload: self.payload.encode()?,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            expires_at: self.expires_at,
        })
    }
}

/// An outbox row as the backends read and write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub direction: String,
    pub conversation: String,
    pub dedupe_key: String,
    pub payload: String,
    pub attempts: i64,
    pub next_attempt_at: Epoch,
    pub expires_at: Epoch,
}

impl OutboxRow {
    /// The typed entry, or why the row cannot be one (a row written by a
    /// newer gateway, or damaged).
    pub(super) fn decode(self) -> Result<OutboxItem, String> {
        Ok(OutboxItem {
            payload: OutboxPayload::decode(&self.direction, &self.payload)?,
            seq: self.seq,
            conversation: self.conversation,
            dedupe_key: self.dedupe_key,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            expires_at: self.expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(payload: OutboxPayload) -> OutboxItem {
        OutboxItem {
            seq: 7,
            conversation: "c".into(),
            dedupe_key: "k".into(),
            payload,
            attempts: 1,
            next_attempt_at: 2,
            expires_at: 3,
        }
    }

    #[test]
    fn entries_survive_their_row() {
        let to_xmpp = item(OutboxPayload::ToXmpp(ToXmpp {
            local: "bob".into(),
            user_id: "u".into(),
            remote: "juliet@capulet.example".into(),
            text: "hi <b>".into(),
            graph_id: "g".into(),
            chat_id: "19:x".into(),
            expires_at: Some(9),
            bounces: 2,
        }));
        let row = to_xmpp.to_row().unwrap();
        assert_eq!(row.direction, "to-xmpp");
        assert_eq!(row.clone().decode().unwrap(), to_xmpp);
        // Rows written before `expires_at` and `bounces` existed still read.
        let old = OutboxRow {
            payload: r#"{"local":"bob","user_id":"u","remote":"r","text":"t","graph_id":"g","chat_id":"c"}"#.into(),
            ..row
        };
        let OutboxPayload::ToXmpp(p) = old.decode().unwrap().payload else {
            panic!("direction lost")
        };
        assert_eq!((p.expires_at, p.bounces), (None, 0));
    }

    #[test]
    fn unreadable_rows_say_why() {
        let row = |direction: &str, payload: &str| OutboxRow {
            seq: 1,
            direction: direction.into(),
            conversation: "c".into(),
            dedupe_key: "k".into(),
            payload: payload.into(),
            attempts: 0,
            next_attempt_at: 0,
            expires_at: 0,
        };
        let e = row("sideways", "{}").decode().unwrap_err();
        assert!(e.contains("unknown outbox direction \"sideways\""), "{e}");
        let e = row("to-teams", "{\"remote\": 1}").decode().unwrap_err();
        assert!(e.starts_with("to-teams payload:"), "{e}");
    }
}
